//! Secrets (the database URL, the admin token, the etcd password, what a job file reads with
//! `{ env: NAME }` or `{ file: PATH }`): a wrapper that never prints its value, reading a secret
//! from a file the way Kubernetes and Docker mount them or from tenure's environment as it was
//! at start ([`keep_environment`], [`from_environment`]), and URLs with their secrets masked for
//! pages, logs and error messages ([`redact_url`], [`mask_url`]). Owns no policy about which
//! secrets exist; `cli` and `config` decide that.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;

/// A value that must not appear in logs, `Debug` output or error messages: both `Debug` and
/// `Display` print `[redacted]`; only `expose` gives the value, at the place that uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Read a secret from a mounted file. One trailing line break is dropped (editors and
    /// `echo` add one; Kubernetes secrets created from literals have none); an empty file is an
    /// error rather than an empty password.
    pub fn from_file(path: &Path) -> anyhow::Result<Secret> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read secret file {}", path.display()))?;
        let value = text.strip_suffix('\n').map(|text| text.strip_suffix('\r').unwrap_or(text)).unwrap_or(&text);
        if value.is_empty() {
            anyhow::bail!("secret file {} is empty", path.display());
        }
        Ok(Secret(value.to_owned()))
    }

    /// The secret given inline or in a file (clap keeps the two exclusive).
    pub fn inline_or_file(inline: Option<&Secret>, file: Option<&Path>) -> anyhow::Result<Option<Secret>> {
        match (inline, file) {
            (Some(secret), _) => Ok(Some(secret.clone())),
            (None, Some(path)) => Secret::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// tenure's environment as it was when it started, but for its own `TENURE_*` settings.
static ENVIRONMENT: OnceLock<HashMap<String, Secret>> = OnceLock::new();

/// Keep tenure's environment as it is now, for [`from_environment`]. The binary calls it first
/// thing, before anything may remove a variable from the process's environment (tenure's own
/// settings are scrubbed from it once read); later calls keep the first copy. Its `TENURE_*`
/// variables are left out: they are tenure's own settings, and a job file never reads them.
pub fn keep_environment() {
    ENVIRONMENT.get_or_init(|| {
        std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .filter(|(name, _)| !name.starts_with("TENURE_"))
            .map(|(name, value)| (name, Secret(value)))
            .collect()
    });
}

/// The variable `name` of tenure's environment as it was at start ([`keep_environment`]; the
/// environment now, if nothing kept it yet), unless empty. Never a `TENURE_*` variable.
pub fn from_environment(name: &str) -> Option<Secret> {
    keep_environment();
    ENVIRONMENT.get()?.get(name).filter(|value| !value.0.is_empty()).cloned()
}

/// What is shown in place of a secret value.
pub const REDACTED: &str = "[redacted]";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(value.to_owned()))
    }
}

/// A URL fit to show or log: its password, every query value and its fragment replaced by
/// `***`; the scheme, user, host, port, path and the query's parameter names kept, so a reader
/// still sees which server and endpoint. The one redaction of URLs: HTTP jobs' URLs on the
/// pages, in the API and in run errors, and the client's server address.
pub fn redact_url(url: &str) -> String {
    redact_url_keeping(url, &[])
}

/// libpq's connection settings that are not secrets: a database URL shows their values.
const LIBPQ_SETTINGS_SHOWN: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "connect_timeout",
    "target_session_attrs",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "statement_cache_capacity",
];

/// A database URL fit for a log line: [`redact_url`], except that libpq's settings that are not
/// secrets (`sslmode`, `sslrootcert`, ...) keep their values, so the operator sees the options.
pub fn mask_url(url: &str) -> String {
    redact_url_keeping(url, LIBPQ_SETTINGS_SHOWN)
}

/// [`redact_url`], showing the values of the query parameters named in `shown`.
fn redact_url_keeping(url: &str, shown: &[&str]) -> String {
    let (url, fragment) = match url.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (url, None),
    };
    let (before_query, query) = match url.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (url, None),
    };
    let mut masked = match before_query.split_once("://") {
        Some((scheme, rest)) => {
            // The authority ends at the first `/`; user info ends at its last `@`.
            let (authority, path) = match rest.find('/') {
                Some(at) => rest.split_at(at),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((user_info, host)) => match user_info.split_once(':') {
                    Some((user, _password)) => format!("{user}:***@{host}"),
                    None => format!("{user_info}@{host}"),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => return "[unparsable url]".to_owned(),
    };
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if shown.iter().any(|name| key.eq_ignore_ascii_case(name)) => pair.to_owned(),
                Some((key, _)) => format!("{key}=***"),
                None => pair.to_owned(),
            })
            .collect();
        masked.push('?');
        masked.push_str(&parameters.join("&"));
    }
    if fragment.is_some_and(|fragment| !fragment.is_empty()) {
        masked.push_str("#***");
    }
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = Secret::new("hunter2-distinctive");
        assert_eq!(format!("{secret:?} {secret} {:?}", Some(&secret)), "[redacted] [redacted] Some([redacted])");
        assert_eq!(secret.expose(), "hunter2-distinctive");
    }

    #[test]
    fn urls_lose_their_passwords_and_keep_the_rest() {
        let check = |url: &str, expected: &str| assert_eq!(mask_url(url), expected, "{url}");
        check("postgres://tenure:pa:ss@word@db:5432/tenure", "postgres://tenure:***@db:5432/tenure");
        check(
            "postgres://tenure:pw@db/tenure?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgres://tenure:***@db/tenure?sslmode=verify-full&sslrootcert=/ca.pem",
        );
        check(
            "postgres://tenure@db/tenure?password=pw&sslmode=require",
            "postgres://tenure@db/tenure?password=***&sslmode=require",
        );
        check("postgres://db", "postgres://db");
        check(
            "postgres://tenure@db/tenure?sslmode=require&password=pw&sslpassword=x",
            "postgres://tenure@db/tenure?sslmode=require&password=***&sslpassword=***",
        );
        check("not a url with a password", "[unparsable url]");
    }

    #[test]
    fn shown_urls_lose_the_password_every_query_value_and_the_fragment() {
        let check = |url: &str, expected: &str| assert_eq!(redact_url(url), expected, "{url}");
        check("http://admin:Pass@host/hook?token=Tok", "http://admin:***@host/hook?token=***");
        check(
            "https://hooks.example.com:8443/a/b?token=Tok&sig=abc&flag#access_token=xyz",
            "https://hooks.example.com:8443/a/b?token=***&sig=***&flag#***",
        );
        check("http://user@host", "http://user@host");
        check("http://host/p?sslmode=require", "http://host/p?sslmode=***");
        check("http://host/path#", "http://host/path");
        check("no scheme?token=Tok", "[unparsable url]");
    }

    #[test]
    fn secret_files_drop_one_line_break_and_refuse_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), "abc");
        std::fs::write(&path, "abc\r\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), "abc");
        std::fs::write(&path, "\n").unwrap();
        let error = Secret::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("is empty"), "{error}");
        let missing = Secret::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(format!("{missing:#}").contains("read secret file"), "{missing:#}");
    }
}
