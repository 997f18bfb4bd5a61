//! Values that may be secrets, shared by HTTP jobs (`http.url`, `http.headers`) and `notify:`
//! webhooks (`url`, `headers`, `secret`): [`Sourced`], a value written in the job file or read,
//! when it is used, from tenure's environment (`{ env: NAME }`) or a file (`{ file: PATH }`);
//! and the readers of such fields. What a page, the API or a log may show of one:
//! [`Sourced::shown_url`], and `[redacted]` for a header value.
//!
//! `{ env: NAME }` reads tenure's environment as it was at start (`secret::from_environment`),
//! so scrubbing the process's environment later changes nothing; it never reads a `TENURE_*`
//! variable (tenure's own settings), which the file is refused for naming. No message here
//! repeats a value or a URL.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::is_variable_name;
use super::node::Node;
use super::validate::Validator;
use crate::secret::{REDACTED, Secret, redact_url};

/// A value written in the job file, or read from the environment or a file when it is used.
#[derive(Clone, PartialEq, Eq)]
pub enum Sourced {
    Inline(String),
    Env(String),
    File(PathBuf),
}

impl std::fmt::Debug for Sourced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sourced::Inline(_) => f.write_str("Inline([redacted])"),
            Sourced::Env(name) => write!(f, "Env({name})"),
            Sourced::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

impl Sourced {
    /// The value, read now. The error names where it was looked for, never the value.
    pub fn resolve(&self) -> Result<Secret, String> {
        match self {
            Sourced::Inline(value) => Ok(Secret::new(value.clone())),
            Sourced::Env(name) => crate::secret::from_environment(name)
                .ok_or_else(|| format!("environment variable {name} is not set on this replica")),
            Sourced::File(path) => Secret::from_file(path).map_err(|e| format!("{e:#}")),
        }
    }

    /// The value of header `name`, read now, fit for a request (marked sensitive). The error
    /// names the header and where its value was looked for, never the value.
    pub fn header_value(&self, name: &str) -> Result<reqwest::header::HeaderValue, String> {
        let value = self.resolve().map_err(|e| format!("header {name}: {e}"))?;
        let mut header = reqwest::header::HeaderValue::from_str(value.expose()).map_err(|_| {
            format!("header {name}: the value read from {} is not a valid header value", self.origin_words())
        })?;
        header.set_sensitive(true);
        Ok(header)
    }

    /// The URL, read now: http:// or https://, with a host. The error names where it was looked
    /// for, never the URL.
    pub fn url_value(&self) -> Result<reqwest::Url, String> {
        let url = self.resolve().map_err(|e| format!("url: {e}"))?;
        match reqwest::Url::parse(url.expose()) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(parsed),
            _ => Err(format!(
                "url: the value read from {} is not an http:// or https:// URL with a host",
                self.origin_words()
            )),
        }
    }

    /// Where the value is read from, for messages: never the value.
    pub fn origin_words(&self) -> String {
        match self {
            Sourced::Inline(_) => "the job file".to_owned(),
            Sourced::Env(name) => format!("environment variable {name}"),
            Sourced::File(path) => format!("file {}", path.display()),
        }
    }

    /// A URL as pages, the API, logs and run errors show it: written in the file, without its
    /// password, query values and fragment; read from elsewhere, `[redacted]`.
    pub fn shown_url(&self) -> String {
        match self {
            Sourced::Inline(url) => redact_url(url),
            Sourced::Env(_) | Sourced::File(_) => REDACTED.to_owned(),
        }
    }

    /// Where the value comes from, for a fingerprint: never a value read from elsewhere.
    pub(super) fn origin(&self) -> String {
        match self {
            Sourced::Inline(value) => format!("inline:{value}"),
            Sourced::Env(name) => format!("env:{name}"),
            Sourced::File(path) => format!("file:{}", path.display()),
        }
    }
}

/// Whether `url` is one an HTTP job or a webhook may send to: http:// or https://, with a host.
pub fn is_http_url(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|parsed| matches!(parsed.scheme(), "http" | "https") && parsed.has_host())
}

impl Validator<'_> {
    /// `{ env: NAME }` or `{ file: PATH }`.
    pub(super) fn sourced(&mut self, node: &Spanned<Node>, job: Option<&str>, field: &str) -> Option<Sourced> {
        let what = format!("`{field}`");
        let entries = self.mapping(node, job, &what, &["env", "file"])?;
        match entries {
            [(key, value)] if key.value == "env" => {
                let field = format!("{field}.env");
                let name = self.string(value, job, &field, "an environment variable name")?;
                if !is_variable_name(name) {
                    let message = format!(
                        "`{field}`: `{name}` is not a variable name (letters, digits and `_`, not starting with a digit)"
                    );
                    self.error(&value.referenced, job, message);
                    return None;
                }
                if name.starts_with("TENURE_") {
                    let message = format!("`{field}`: `{name}` is tenure's own setting; a job file never reads it");
                    self.error(&value.referenced, job, message);
                    return None;
                }
                Some(Sourced::Env(name.to_owned()))
            }
            [(key, value)] if key.value == "file" => {
                let path = self.string(value, job, &format!("{field}.file"), "a file path")?;
                if path.is_empty() {
                    self.error(&value.referenced, job, format!("`{field}.file`: the path is empty"));
                    return None;
                }
                Some(Sourced::File(PathBuf::from(path)))
            }
            [(_, _)] => None,
            _ => {
                let message = format!("{what}: expected exactly one of `env:` or `file:`");
                self.error(&node.referenced, job, message);
                None
            }
        }
    }

    /// A URL (`http.url`, `notify.webhook.url`): written out (checked now, never repeated in a
    /// message), or `{ env }` / `{ file }` (checked when read).
    pub(super) fn url(&mut self, node: &Spanned<Node>, job: Option<&str>, field: &str) -> Option<Sourced> {
        if let Node::Map(_) = &node.value {
            return self.sourced(node, job, field);
        }
        let expected = "an http:// or https:// URL, or { env: NAME } or { file: PATH }";
        let url = self.string(node, job, field, expected)?;
        if is_http_url(url) {
            return Some(Sourced::Inline(url.to_owned()));
        }
        let message = format!("`{field}`: expected an http:// or https:// URL with a host");
        self.error(&node.referenced, job, message);
        None
    }

    /// `headers:` of a request (`http.headers`, `notify.webhook.headers`): names HTTP takes, each
    /// to a value written out (a valid header value) or `{ env }` / `{ file }` (checked when read).
    pub(super) fn headers(
        &mut self,
        node: &Spanned<Node>,
        job: Option<&str>,
        field: &str,
        headers: &mut BTreeMap<String, Sourced>,
    ) {
        let Some(entries) = self.entries(node, job, &format!("`{field}`")) else {
            return;
        };
        for (name, value) in entries {
            if reqwest::header::HeaderName::from_bytes(name.value.as_bytes()).is_err() {
                let message = format!("`{field}`: `{}` is not a header name", name.value);
                self.error(&name.referenced, job, message);
            }
            let value = if let Node::Map(_) = &value.value {
                let Some(sourced) = self.sourced(value, job, &format!("{field}.{}", name.value)) else {
                    continue;
                };
                sourced
            } else {
                let expected = "a header value, or { env: NAME } or { file: PATH }";
                let Some(text) = self.string(value, job, field, expected) else {
                    continue;
                };
                if reqwest::header::HeaderValue::from_str(text).is_err() {
                    let message = format!("`{field}.{}`: the value is not a valid header value", name.value);
                    self.error(&name.referenced, job, message);
                }
                Sourced::Inline(text.to_owned())
            };
            headers.insert(name.value.clone(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::Sourced;
    use crate::config::tests::errors;
    use crate::config::{Target, parse};

    #[test]
    fn http_urls_and_header_values_may_be_read_from_the_environment_or_a_file() {
        let text = "jobs:
  - name: billing
    schedule: '@hourly'
    http:
      url: { env: HOOK_URL }
      headers:
        Authorization: { env: BILLING_TOKEN }
        X-Key: { file: /run/secrets/billing }
        X-Plain: text
  - name: plain
    schedule: '@hourly'
    http: { url: { file: /run/secrets/url } }
";
        let set = parse(text, "jobs.yaml").unwrap_or_else(|e| panic!("{e}"));
        let Target::Http(http) = &set.jobs()[0].target else { panic!("an http target") };
        assert_eq!(http.url, Sourced::Env("HOOK_URL".into()));
        assert_eq!(http.headers["Authorization"], Sourced::Env("BILLING_TOKEN".into()));
        assert_eq!(http.headers["X-Key"], Sourced::File(PathBuf::from("/run/secrets/billing")));
        assert_eq!(http.headers["X-Plain"], Sourced::Inline("text".into()));
        assert_eq!(http.url.shown_url(), "[redacted]");
        let Target::Http(plain) = &set.jobs()[1].target else { panic!("an http target") };
        assert_eq!(plain.url, Sourced::File(PathBuf::from("/run/secrets/url")));
    }

    #[test]
    fn sourced_values_are_checked_at_load_with_located_errors_that_repeat_no_secret() {
        let text = "jobs:
  - name: a
    schedule: '@hourly'
    http:
      url: 'ftp://admin:pa55@host/x?token=t0k'
      headers:
        A: { env: X, file: /y }
        B: { environment: X }
        C: { env: TENURE_ADMIN_TOKEN }
        D: { env: 9LIVES }
        E: {}
        F: { file: '' }
        G: [list]
  - name: b
    schedule: '@hourly'
    http: { url: { env: HOOK_URL, file: /x } }
  - name: c
    schedule: '@hourly'
    http: { url: 'not a url' }
";
        let got = errors(text);
        let want = [
            "jobs.yaml:5:12: job `a`: `http.url`: expected an http:// or https:// URL with a host",
            "jobs.yaml:7:12: job `a`: `http.headers.A`: expected exactly one of `env:` or `file:`",
            "jobs.yaml:8:14: job `a`: unknown field `environment` in `http.headers.B`",
            "jobs.yaml:9:19: job `a`: `http.headers.C.env`: `TENURE_ADMIN_TOKEN` is tenure's own setting; a job file never reads it",
            "jobs.yaml:10:19: job `a`: `http.headers.D.env`: `9LIVES` is not a variable name",
            "jobs.yaml:11:12: job `a`: `http.headers.E`: expected exactly one of `env:` or `file:`",
            "jobs.yaml:12:20: job `a`: `http.headers.F.file`: the path is empty",
            "jobs.yaml:13:12: job `a`: `http.headers`: expected a header value, or { env: NAME } or { file: PATH }, found a list",
            "jobs.yaml:16:18: job `b`: `http.url`: expected exactly one of `env:` or `file:`",
            "jobs.yaml:19:18: job `c`: `http.url`: expected an http:// or https:// URL with a host",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (got, want) in got.iter().zip(want) {
            assert!(got.starts_with(want), "got  {got}\nwant {want}…");
        }
        let all = got.join("\n");
        assert!(!all.contains("pa55") && !all.contains("t0k"), "{all}");
    }
}
