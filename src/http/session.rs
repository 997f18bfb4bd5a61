//! Signed, expiring values the browser or the CLI carries for tenure, verified by any replica
//! with the key they share (derived from the ledger's web key, `Auth::keyed`): the session of a
//! principal signed in through the identity provider (a cookie, or a bearer token for the CLI),
//! and a sign-in under way (its state, nonce and PKCE verifier, for the callback). A value is
//! `<purpose>.<base64url JSON>.<base64url HMAC-SHA-256 of purpose and JSON>`: the purpose keeps
//! a sign-in's cookie from passing as a session. Pure: no IO, the clock is the caller's.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::identity::Role;

/// The cookie of a signed-in browser (the CSRF binding is another: `tenure_session`).
pub const IDENTITY_COOKIE: &str = "tenure_identity";
/// The cookie of a sign-in under way, from `/auth/login` to `/auth/callback`.
pub const SIGNIN_COOKIE: &str = "tenure_signin";
/// What a session's bearer form starts with (`tenure login` stores it).
pub const SESSION_PREFIX: &str = "tenure_s1.";

/// The replicas' shared key for these values.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// A principal signed in through the identity provider, until `expires` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The provider's subject.
    pub sub: String,
    /// What the audit trail and the pages call them: `preferred_username`, else `email`, else
    /// the subject.
    pub name: String,
    pub role: Role,
    pub teams: Vec<String>,
    pub expires: i64,
}

/// A sign-in under way: what the callback checks the provider's answer against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// The page to go back to (a path of this site).
    pub back: String,
    pub expires: i64,
}

/// Why a value was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("it is not one of tenure's signed values")]
    Malformed,
    #[error("its signature is not tenure's")]
    Forged,
    #[error("it has expired")]
    Expired,
}

/// What each kind of value signs as, so one kind never passes as another.
trait Purpose: Serialize + DeserializeOwned {
    const PURPOSE: &'static str;
    fn expires(&self) -> i64;
}

impl Purpose for Session {
    const PURPOSE: &'static str = "session";
    fn expires(&self) -> i64 {
        self.expires
    }
}

impl Purpose for Attempt {
    const PURPOSE: &'static str = "signin";
    fn expires(&self) -> i64 {
        self.expires
    }
}

impl SessionKey {
    /// Derived from the replicas' shared web key, apart from the forms' key.
    pub fn derive(shared: &[u8]) -> SessionKey {
        let mut mac = Hmac::<Sha256>::new_from_slice(shared).expect("HMAC takes any key length");
        mac.update(b"tenure session key v1");
        SessionKey(mac.finalize().into_bytes().into())
    }

    fn mac(&self, purpose: &str, body: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        mac
    }

    fn seal_any<T: Purpose>(&self, value: &T) -> String {
        let json = serde_json::to_vec(value).expect("a session serializes");
        let body = URL_SAFE_NO_PAD.encode(json);
        let tag = URL_SAFE_NO_PAD.encode(self.mac(T::PURPOSE, &body).finalize().into_bytes());
        format!("{}.{body}.{tag}", T::PURPOSE)
    }

    fn open_any<T: Purpose>(&self, text: &str, now: i64) -> Result<T, Refused> {
        let mut parts = text.splitn(3, '.');
        let (Some(purpose), Some(body), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Refused::Malformed);
        };
        if purpose != T::PURPOSE {
            return Err(Refused::Malformed);
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Refused::Malformed)?;
        // `verify_slice` compares in constant time.
        self.mac(purpose, body).verify_slice(&tag).map_err(|_| Refused::Forged)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| Refused::Malformed)?;
        let value: T = serde_json::from_slice(&json).map_err(|_| Refused::Malformed)?;
        if value.expires() <= now {
            return Err(Refused::Expired);
        }
        Ok(value)
    }

    pub fn seal_session(&self, session: &Session) -> String {
        self.seal_any(session)
    }

    pub fn open_session(&self, text: &str, now: i64) -> Result<Session, Refused> {
        self.open_any(text, now)
    }

    pub fn seal_attempt(&self, attempt: &Attempt) -> String {
        self.seal_any(attempt)
    }

    pub fn open_attempt(&self, text: &str, now: i64) -> Result<Attempt, Refused> {
        self.open_any(text, now)
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax (the provider's redirect back is a top-level
/// GET from another site, which must carry it), `Secure` when browsers come over HTTPS; gone
/// after `max_age` seconds (0: now).
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}", max_age.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(expires: i64) -> Session {
        Session {
            sub: "u1".into(),
            name: "alice".into(),
            role: Role::Operator,
            teams: vec!["payments".into()],
            expires,
        }
    }

    #[test]
    fn a_session_opens_with_the_same_key_until_it_expires_and_never_with_another_or_altered() {
        let key = SessionKey::derive(b"shared by the replicas");
        let sealed = key.seal_session(&session(100));
        assert_eq!(key.open_session(&sealed, 99), Ok(session(100)));
        assert_eq!(key.open_session(&sealed, 100), Err(Refused::Expired));
        // Another replica derives the same key from the same shared key.
        assert_eq!(SessionKey::derive(b"shared by the replicas").open_session(&sealed, 0), Ok(session(100)));
        assert_eq!(SessionKey::derive(b"another cluster").open_session(&sealed, 0), Err(Refused::Forged));
        // The body changed (an admin role written in) with the old signature: forged.
        let (head, tag) = sealed.rsplit_once('.').unwrap();
        let admin = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Session { role: Role::Admin, ..session(100) }).unwrap());
        let altered = format!("session.{admin}.{tag}");
        assert_ne!(head, format!("session.{admin}"));
        assert_eq!(key.open_session(&altered, 0), Err(Refused::Forged));
        assert_eq!(key.open_session("session.e30", 0), Err(Refused::Malformed));
    }

    #[test]
    fn the_cookie_is_http_only_lax_expiring_and_secure_over_https() {
        assert_eq!(set_cookie("c", "v", 60, false), "c=v; Path=/; HttpOnly; SameSite=Lax; Max-Age=60");
        assert_eq!(set_cookie("c", "v", 60, true), "c=v; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure");
        assert_eq!(set_cookie("c", "", -5, true), "c=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; Secure");
    }

    #[test]
    fn a_sign_in_under_way_never_passes_as_a_session() {
        let key = SessionKey::derive(b"k");
        let attempt =
            Attempt { state: "s".into(), nonce: "n".into(), verifier: "v".into(), back: "/".into(), expires: 10 };
        let sealed = key.seal_attempt(&attempt);
        assert_eq!(key.open_attempt(&sealed, 0), Ok(attempt));
        assert_eq!(key.open_session(&sealed, 0), Err(Refused::Malformed));
        let relabelled = sealed.replacen("signin.", "session.", 1);
        assert_eq!(key.open_session(&relabelled, 0), Err(Refused::Forged));
    }
}
