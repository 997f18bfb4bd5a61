//! Secrets (the database URL, the admin token, the etcd password): a wrapper that never prints
//! its value, reading a secret from a file the way Kubernetes and Docker mount them, and the
//! database URL with its password masked for logs and error messages. Owns no policy about
//! which secrets exist; `cli` decides that.

use std::fmt;
use std::path::Path;

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

/// A database URL fit for a log line: the password (and any query parameter named like one)
/// replaced by `***`, everything else kept so the operator sees which server and options.
pub fn mask_url(url: &str) -> String {
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
        None => "[unparsable url]".to_owned(),
    };
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword") => {
                    format!("{key}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        masked.push('?');
        masked.push_str(&parameters.join("&"));
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
        check("not a url with a password", "[unparsable url]");
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
