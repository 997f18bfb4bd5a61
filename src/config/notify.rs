//! `notify:`: who is told about which outcomes of a job. The model ([`NotifyTarget`],
//! [`Webhook`]), its validation (one located error per problem, like every other
//! field) and what the ledger routes by ([`NotifyTarget::fingerprint`], [`NotifyTarget::label`]).
//!
//! A target's URL may carry a token (Slack's incoming webhooks do) and its signing secret is one:
//! they and its header values may come from the environment or a file (`{ env: NAME }`,
//! `{ file: PATH }`, see `sourced`) and are read when a notification is sent, never when the
//! file is loaded. The signing secret cannot be
//! written in the job file itself. No error message repeats a URL.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use super::node::Node;
use super::sourced::Sourced;
use super::validate::Validator;

/// The fields of one `notify:` target.
pub(super) const TARGET_KEYS: &[&str] = &["on", "late", "webhook"];
/// The fields of `webhook:`.
const WEBHOOK_KEYS: &[&str] = &["url", "headers", "format", "secret"];

yaml_names! {
    /// What a target may be told about: each outcome a run can end with, and `recovered` (the
    /// first success after a failure). Lateness is asked for with `late: <threshold>`.
    pub enum NotifyOn {
        Succeeded = "succeeded",
        Failed = "failed",
        TimedOut = "timed_out",
        Killed = "killed",
        Lost = "lost",
        Missed = "missed",
        Skipped = "skipped",
        Recovered = "recovered",
    }
}

yaml_names! {
    /// The body a webhook receives.
    pub enum WebhookFormat {
        /// The event as a JSON document (see README).
        Json = "json",
        /// A Slack incoming-webhook message (`{"text": ...}`), which Mattermost and Discord's
        /// Slack-compatible endpoints take too.
        Slack = "slack",
    }
}

/// One target of `notify:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    pub on: Vec<NotifyOn>,
    /// Tell when a run starts later than this after its planned start (its slot, plus its
    /// `jitter` offset; when claimed, for a backfill).
    pub late: Option<Duration>,
    pub webhook: Webhook,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: Sourced,
    pub headers: BTreeMap<String, Sourced>,
    pub format: WebhookFormat,
    /// Signs each body with HMAC-SHA256 (`X-Tenure-Signature-256`).
    pub secret: Option<Sourced>,
}

impl NotifyTarget {
    /// Identifies the target's definition in the ledger: a hash of its URL (or where the URL is
    /// read from), headers, format and where its secret is read from. Editing any of them makes
    /// another target; the events still owed to the old one are abandoned, and say why.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(self.webhook.url.origin());
        for (name, value) in &self.webhook.headers {
            // A value written out hashes as it always has: editing nothing keeps the target.
            let value = match value {
                Sourced::Inline(value) => value.clone(),
                other => other.origin(),
            };
            hash.update(format!("\0{name}:{value}"));
        }
        hash.update(format!("\0{}", self.webhook.format.as_str()));
        if let Some(secret) = &self.webhook.secret {
            hash.update(format!("\0{}", secret.origin()));
        }
        hex::encode(&hash.finalize()[..12])
    }

    /// What may be shown of the target on the dashboard, in the API and in logs: the URL's
    /// scheme and host (its path may hold a token), or where the URL is read from.
    pub fn label(&self) -> String {
        match &self.webhook.url {
            Sourced::Inline(url) => url_label(url),
            Sourced::Env(name) => format!("${name}"),
            Sourced::File(path) => format!("file {}", path.display()),
        }
    }

    /// The `events` column of the ledger's route: every word, comma-framed.
    pub fn route_events(&self) -> String {
        let words: String = self.on.iter().map(|on| format!("{},", on.as_str())).collect();
        format!(",{words}")
    }
}

/// `scheme://host[:port]` of a URL, or `webhook` for one that does not parse.
pub fn url_label(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => match (parsed.host_str(), parsed.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", parsed.scheme()),
            (Some(host), None) => format!("{}://{host}", parsed.scheme()),
            _ => "webhook".to_owned(),
        },
        Err(_) => "webhook".to_owned(),
    }
}

impl Validator<'_> {
    /// `notify:`: a list of targets. An empty list turns off the defaults' targets for a job.
    pub(super) fn notify(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Option<Vec<NotifyTarget>> {
        let Node::Seq(items) = &node.value else {
            let message = format!("`notify`: expected a list of targets, found {}", node.value.kind());
            self.error(&node.referenced, job, message);
            return None;
        };
        let before = self.errors.len();
        let targets: Vec<NotifyTarget> = items.iter().filter_map(|item| self.notify_target(item, job)).collect();
        (self.errors.len() == before).then_some(targets)
    }

    fn notify_target(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Option<NotifyTarget> {
        let entries = self.mapping(node, job, "a `notify` target", TARGET_KEYS)?;
        let get = |key: &str| entries.iter().find(|(k, _)| k.value == key).map(|(_, v)| v);
        let before = self.errors.len();
        let on = get("on").map(|on| self.notify_on(on, job)).unwrap_or_default();
        let late = get("late").and_then(|late| self.duration(late, job, "notify.late"));
        if get("on").is_none() && get("late").is_none() {
            let message = "a `notify` target needs `on:` (a list of outcomes such as [failed, lost, missed]) \
                           or `late:` (a threshold such as 30s)"
                .to_owned();
            self.error(&node.referenced, job, message);
        }
        let webhook = match get("webhook") {
            Some(webhook) => self.webhook(webhook, job),
            None => {
                let message = "a `notify` target needs `webhook:` (with at least `url:`)".to_owned();
                self.error(&node.referenced, job, message);
                None
            }
        };
        if self.errors.len() != before {
            return None;
        }
        Some(NotifyTarget { on, late, webhook: webhook? })
    }

    /// `on:`: one word or a list of them.
    fn notify_on(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Vec<NotifyOn> {
        let items: Vec<&Spanned<Node>> = match &node.value {
            Node::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut on = Vec::new();
        for item in items {
            if matches!(&item.value, Node::Str(word) if word == "late") {
                let message = "`notify.on`: `late` takes a threshold: write `late: 30s` beside `on:`".to_owned();
                self.error(&item.referenced, job, message);
                continue;
            }
            if let Some(word) = self.choice(item, job, "notify.on", NotifyOn::NAMES) {
                if !on.contains(&word) {
                    on.push(word);
                }
            }
        }
        on
    }

    fn webhook(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Option<Webhook> {
        let entries = self.mapping(node, job, "`notify.webhook`", WEBHOOK_KEYS)?;
        let before = self.errors.len();
        let mut url = None;
        let mut webhook = Webhook {
            url: Sourced::Inline(String::new()),
            headers: BTreeMap::new(),
            format: WebhookFormat::Json,
            secret: None,
        };
        for (key, value) in entries {
            match key.value.as_str() {
                "url" => url = self.url(value, job, "notify.webhook.url"),
                "headers" => self.headers(value, job, "notify.webhook.headers", &mut webhook.headers),
                "format" => {
                    if let Some(format) = self.choice(value, job, "notify.webhook.format", WebhookFormat::NAMES) {
                        webhook.format = format;
                    }
                }
                "secret" => webhook.secret = self.webhook_secret(value, job),
                _ => {}
            }
        }
        if url.is_none() && !entries.iter().any(|(k, _)| k.value == "url") {
            self.error(&node.referenced, job, "`notify.webhook` needs `url:`".to_owned());
        }
        if self.errors.len() != before {
            return None;
        }
        webhook.url = url?;
        Some(webhook)
    }

    /// `secret:` only from the environment or a file: a job file is shared, reviewed and shown.
    fn webhook_secret(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Option<Sourced> {
        if let Node::Map(_) = &node.value {
            return self.sourced(node, job, "notify.webhook.secret");
        }
        let message = "`notify.webhook.secret`: write where the secret is read from, `{ env: NAME }` or \
                       `{ file: /run/secrets/NAME }`, not the secret itself"
            .to_owned();
        self.error(&node.referenced, job, message);
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{self, JobSet};

    fn parse(yaml: &str) -> Result<JobSet, String> {
        config::parse(yaml, "jobs.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply_to_jobs_without_notify_and_an_empty_list_turns_them_off() {
        let jobs = parse(
            "defaults:\n  notify:\n    - on: [failed, lost]\n      webhook: { url: \"https://hooks.example.com/T1/abc\" }\n\
             jobs:\n  - name: a\n    schedule: \"@hourly\"\n    shell: \"true\"\n\
             \x20 - name: b\n    schedule: \"@hourly\"\n    shell: \"true\"\n    notify: []\n\
             \x20 - name: c\n    schedule: \"@hourly\"\n    shell: \"true\"\n    notify:\n      - late: 30s\n        \
             webhook: { url: { env: HOOK_URL }, format: slack, secret: { file: /run/secrets/hook } }\n",
        )
        .unwrap();
        let a = &jobs.get("a").unwrap().notify;
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].route_events(), ",failed,lost,");
        assert_eq!(a[0].label(), "https://hooks.example.com", "the path may hold a token");
        assert!(jobs.get("b").unwrap().notify.is_empty());
        let c = &jobs.get("c").unwrap().notify[0];
        assert_eq!(c.late, Some(std::time::Duration::from_secs(30)));
        assert_eq!(c.label(), "$HOOK_URL");
        assert_ne!(c.fingerprint(), a[0].fingerprint());
    }

    #[test]
    fn notify_errors_are_located_and_never_repeat_a_url() {
        let error = parse(
            "jobs:\n  - name: a\n    schedule: \"@hourly\"\n    shell: \"true\"\n    notify:\n      \
             - on: [failed, late, sometimes]\n        webhook: { url: \"ftp://token@host/x\", secret: s3cret, format: xml }\n      \
             - webhook: { headers: { X-A: b } }\n",
        )
        .unwrap_err();
        let expected = [
            "jobs.yaml:6:22: job `a`: `notify.on`: `late` takes a threshold: write `late: 30s` beside `on:`",
            "jobs.yaml:6:28: job `a`: `notify.on`: `sometimes` is not one of succeeded, failed, timed_out, killed, lost, missed, skipped, recovered",
            "jobs.yaml:7:25: job `a`: `notify.webhook.url`: expected an http:// or https:// URL with a host",
            "jobs.yaml:7:55: job `a`: `notify.webhook.secret`: write where the secret is read from, `{ env: NAME }` or `{ file: /run/secrets/NAME }`, not the secret itself",
            "jobs.yaml:7:71: job `a`: `notify.webhook.format`: `xml` is not one of json, slack",
            "jobs.yaml:8:9: job `a`: a `notify` target needs `on:` (a list of outcomes such as [failed, lost, missed]) or `late:` (a threshold such as 30s)",
            "jobs.yaml:8:18: job `a`: `notify.webhook` needs `url:`",
        ];
        assert_eq!(error, expected.join("\n"));
        assert!(!error.contains("token@host") && !error.contains("s3cret"));
    }
}
