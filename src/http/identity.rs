//! Who is asking, and what they may do: the one place the web decides both. `gate` turns a
//! request's credentials into a `Principal` (the break-glass admin token, a named API token
//! looked up in the ledger on every request, or nobody); handlers then ask `authorize` whether
//! that principal may take an `Action` on a job of some team, and record the answer in the audit
//! trail (`AppState::permit`). Pure: no IO here but for the token's hashing.
//!
//! Roles: a viewer reads; an operator also triggers, cancels, pauses, resumes and backfills; an
//! admin does everything, on every team's jobs, and manages tokens and reads the audit trail.
//! A principal scoped to teams acts only on jobs whose `team:` is one of them (a job without a
//! team is no team's: only unscoped principals and admins act on it); an unscoped principal
//! (no teams) acts on every job its role allows.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a principal may do, in increasing power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const NAMES: [(&'static str, Role); 3] =
        [("viewer", Role::Viewer), ("operator", Role::Operator), ("admin", Role::Admin)];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::NAMES.iter().find(|(name, _)| *name == text).map(|(_, role)| *role)
    }
}

/// How the caller showed who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// No credentials (reads only, and only where reads are open).
    Anonymous,
    /// The shared `--admin-token`: break-glass.
    AdminToken,
    /// A named API token from the ledger.
    ApiToken,
    /// A session signed by the cluster after a sign-in through the identity provider (the
    /// browser's cookie, or `tenure login`'s bearer token).
    Session,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Anonymous => "anonymous",
            Via::AdminToken => "admin-token",
            Via::ApiToken => "api-token",
            Via::Session => "session",
        }
    }
}

/// The caller as the web decided it: a name (a token's name; `admin-token` for the break-glass
/// token; `anonymous`), a role (`None` for nobody), the teams it is scoped to (empty: every
/// team), and how it authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub name: String,
    pub role: Option<Role>,
    pub teams: Vec<String>,
    pub via: Via,
}

/// The name the break-glass admin token acts under.
pub const ADMIN_TOKEN_NAME: &str = "admin-token";

impl Principal {
    pub fn anonymous() -> Principal {
        Principal { name: "anonymous".to_owned(), role: None, teams: Vec::new(), via: Via::Anonymous }
    }

    pub fn admin_token() -> Principal {
        Principal {
            name: ADMIN_TOKEN_NAME.to_owned(),
            role: Some(Role::Admin),
            teams: Vec::new(),
            via: Via::AdminToken,
        }
    }

    pub fn is_signed_in(&self) -> bool {
        self.via != Via::Anonymous
    }

    /// Whether a job of `team` is within this principal's teams.
    pub fn covers(&self, team: Option<&str>) -> bool {
        if self.role == Some(Role::Admin) || self.teams.is_empty() {
            return true;
        }
        team.is_some_and(|team| self.teams.iter().any(|own| own == team))
    }
}

/// What a request asks to do. Every write endpoint and page form names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read a job, its runs, the cluster (only asked under `--protect-reads`).
    Read,
    Trigger,
    Cancel,
    Pause,
    Resume,
    Backfill,
    /// Create, list and revoke API tokens.
    CreateToken,
    ListTokens,
    RevokeToken,
    /// Read the audit trail.
    ReadAudit,
    /// Sign in through the identity provider (audited, never authorized: the provider decides).
    SignIn,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Trigger => "trigger",
            Action::Cancel => "cancel",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Backfill => "backfill",
            Action::CreateToken => "token-create",
            Action::ListTokens => "token-list",
            Action::RevokeToken => "token-revoke",
            Action::ReadAudit => "audit",
            Action::SignIn => "sign-in",
        }
    }

    /// The least role that may take it.
    pub fn needs(self) -> Role {
        match self {
            Action::Read | Action::SignIn => Role::Viewer,
            Action::Trigger | Action::Cancel | Action::Pause | Action::Resume | Action::Backfill => Role::Operator,
            Action::CreateToken | Action::ListTokens | Action::RevokeToken | Action::ReadAudit => Role::Admin,
        }
    }

    /// Whether it acts on one job (and so on that job's team).
    fn on_a_job(self) -> bool {
        !matches!(
            self,
            Action::CreateToken | Action::ListTokens | Action::RevokeToken | Action::ReadAudit | Action::SignIn
        )
    }
}

/// Why `authorize` refused, worded for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("sign in first: {0} needs a token (bearer, or the password of basic auth)")]
    NotSignedIn(&'static str),
    #[error("{who} is a {role}: {action} needs the {needed} role or more", needed = .needed.as_str())]
    Role { who: String, role: &'static str, action: &'static str, needed: Role },
    #[error("{who} acts on the jobs of {teams} only; job `{job}` is {owner}")]
    Team { who: String, teams: String, job: String, owner: String },
}

/// Whether `principal` may take `action` on `job` (its name and `team:`; `None` for actions on
/// no job). The one decision every write endpoint and form, and the pages' buttons, ask.
pub fn authorize(principal: &Principal, action: Action, job: Option<(&str, Option<&str>)>) -> Result<(), Denied> {
    let Some(role) = principal.role else { return Err(Denied::NotSignedIn(action.as_str())) };
    if role < action.needs() {
        return Err(Denied::Role {
            who: principal.name.clone(),
            role: role.as_str(),
            action: action.as_str(),
            needed: action.needs(),
        });
    }
    if let (true, Some((name, team))) = (action.on_a_job(), job)
        && !principal.covers(team)
    {
        return Err(Denied::Team {
            who: principal.name.clone(),
            teams: principal.teams.join(", "),
            job: name.to_owned(),
            owner: team.map_or_else(|| "no team's".to_owned(), |team| format!("team {team}'s")),
        });
    }
    Ok(())
}

/// A named API token's text: `tenure_<id>_<secret>` (16 and 64 hex digits). The id is public
/// (it finds the row); the secret is stored only as `token_hash(salt, secret)`.
pub const TOKEN_PREFIX: &str = "tenure_";

/// The id and secret of a presented token, if it has a named token's shape.
pub fn split_token(text: &str) -> Option<(&str, &str)> {
    let (id, secret) = text.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    let hex = |part: &str, len: usize| part.len() == len && part.bytes().all(|byte| byte.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

/// SHA-256 of the salt and the secret: what the ledger keeps.
pub fn token_hash(salt: &[u8], secret: &str) -> [u8; 32] {
    Sha256::new().chain_update(salt).chain_update(secret.as_bytes()).finalize().into()
}

/// A new token: its id, secret and salt, from the kernel's randomness.
pub fn new_token() -> std::io::Result<(String, String, [u8; 16])> {
    use std::io::Read;
    let mut bytes = [0u8; 8 + 32 + 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let salt: [u8; 16] = bytes[40..].try_into().expect("16 bytes");
    Ok((hex::encode(&bytes[..8]), hex::encode(&bytes[8..40]), salt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, teams: &[&str]) -> Principal {
        Principal {
            name: "p".into(),
            role: Some(role),
            teams: teams.iter().map(|team| (*team).to_owned()).collect(),
            via: Via::ApiToken,
        }
    }

    #[test]
    fn roles_and_teams_decide_every_action() {
        let payments = Some(("charge", Some("payments")));
        let untagged = Some(("sweep", None));
        let viewer = principal(Role::Viewer, &[]);
        assert!(authorize(&viewer, Action::Read, payments).is_ok());
        assert!(matches!(authorize(&viewer, Action::Trigger, payments), Err(Denied::Role { .. })));
        let operator = principal(Role::Operator, &["payments"]);
        for action in [Action::Trigger, Action::Cancel, Action::Pause, Action::Resume, Action::Backfill] {
            assert!(authorize(&operator, action, payments).is_ok(), "{action:?}");
            assert!(matches!(authorize(&operator, action, untagged), Err(Denied::Team { .. })), "{action:?}");
            assert!(
                matches!(authorize(&operator, action, Some(("x", Some("search")))), Err(Denied::Team { .. })),
                "{action:?}"
            );
        }
        assert!(matches!(authorize(&operator, Action::CreateToken, None), Err(Denied::Role { .. })));
        let unscoped = principal(Role::Operator, &[]);
        assert!(authorize(&unscoped, Action::Pause, untagged).is_ok());
        let admin = principal(Role::Admin, &["search"]);
        assert!(authorize(&admin, Action::Pause, payments).is_ok(), "an admin acts on every team's jobs");
        assert!(authorize(&admin, Action::RevokeToken, None).is_ok());
        assert!(matches!(authorize(&Principal::anonymous(), Action::Read, payments), Err(Denied::NotSignedIn(_))));
    }

    #[test]
    fn a_token_is_its_id_and_secret_and_only_that_shape() {
        let (id, secret, salt) = new_token().unwrap();
        let text = format!("{TOKEN_PREFIX}{id}_{secret}");
        assert_eq!(split_token(&text), Some((id.as_str(), secret.as_str())));
        assert_eq!(split_token("tenure_abc_def"), None);
        assert_eq!(split_token(&format!("tenure_{id}_{secret}x")), None);
        assert_ne!(token_hash(&salt, &secret), token_hash(&[0; 16], &secret), "salted");
    }
}
