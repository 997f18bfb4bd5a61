//! Delivering notifications (`notify:` in the job file) from the ledger's outbox. The events are
//! written by the ledger itself, in the statement that records an outcome (see `store`); this
//! module is the leader's courier: it takes due events under its term, sends each to its
//! target (JSON or a Slack-style message, signed with HMAC-SHA256 when the target has a secret),
//! and records the answer: delivered, retried later with backoff, or abandoned.
//!
//! Only the leader delivers, and only while its term lasts (the scheduler aborts the courier
//! when the term ends). An event is held by one term at a time, for longer than a request may
//! take, so a new leader sends an event again only when the previous one could not record the
//! answer: a receiver may see an event twice only then, and deduplicates by `X-Tenure-Event-Id`.
//! URLs and secrets are read when sent and never logged; logs and the ledger name the target by
//! its label (scheme and host).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::watch;

use crate::config::{JobSet, NotifyTarget, WebhookFormat};
use crate::leadership::{LeaseDeadline, Term};
use crate::scheduler::Clock;
use crate::store::{Delivery, NotifyRoute, OutboxEvent, Reads, RunRecord, Store};
use crate::telemetry::metric;

/// How often the outbox is looked at when it was empty.
const POLL: Duration = Duration::from_secs(1);
/// Events taken at once.
const BATCH: i64 = 64;
/// How long a request to a receiver may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a taken event is held for this term: longer than a request, so a newer leader never
/// sends it while this one still may.
const HOLD: Duration = Duration::from_secs(20);
/// The first retry waits this long, each next one twice as long, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// An event not delivered within this long after it happened is abandoned.
const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Header names a receiver reads.
pub const EVENT_ID_HEADER: &str = "X-Tenure-Event-Id";
pub const EVENT_HEADER: &str = "X-Tenure-Event";
pub const SIGNATURE_HEADER: &str = "X-Tenure-Signature-256";

/// Export the delivery counters at 0, so an alert on their increase sees the first failure.
pub fn export_metrics() {
    for result in ["delivered", "failed", "abandoned"] {
        metrics::counter!(metric::NOTIFICATIONS, "result" => result).increment(0);
    }
}

/// The routes the ledger needs for `jobs`: one per (job, target).
pub fn routes(jobs: &JobSet) -> Vec<NotifyRoute> {
    let mut routes = Vec::new();
    for job in jobs.jobs() {
        for target in &job.notify {
            let route = NotifyRoute {
                job: job.name.to_string(),
                target: target.fingerprint(),
                label: target.label(),
                events: target.route_events(),
                late_ms: target.late.map(|late| late.as_millis() as i64),
            };
            // The same target twice in one job is told once.
            if !routes.iter().any(|r: &NotifyRoute| r.job == route.job && r.target == route.target) {
                routes.push(route);
            }
        }
    }
    routes
}

/// The leader's courier for one term.
pub struct Courier {
    pub store: Store,
    pub reads: Reads,
    pub term: Term,
    pub lease: LeaseDeadline,
    pub jobs: watch::Receiver<Arc<JobSet>>,
    pub http: reqwest::Client,
    pub clock: Clock,
}

impl Courier {
    /// Deliver until aborted (the term's end).
    pub async fn run(mut self) {
        loop {
            let delivered_all = self.round().await;
            if delivered_all {
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Take one batch, send it, record the answers. True when there was nothing more to take.
    async fn round(&mut self) -> bool {
        if !self.lease.is_valid() {
            return true;
        }
        let now = self.clock.now();
        let hold_until = now + chrono::Duration::from_std(HOLD).unwrap_or_default();
        let events = match self.store.take_notifications(&self.term, now, hold_until, BATCH).await {
            Ok(events) => events,
            Err(error) => {
                tracing::debug!(%error, "could not read the notification outbox; retrying");
                return true;
            }
        };
        self.export_backlog().await;
        if events.is_empty() {
            return true;
        }
        let targets = targets_by_fingerprint(&self.jobs.borrow());
        let sends = events.iter().map(|event| self.deliver(event, targets.get(event.target.as_str())));
        let answers = futures_util::future::join_all(sends).await;
        let deliveries: Vec<(i64, Delivery)> = events.iter().map(|e| e.id).zip(answers).collect();
        if let Err(error) = self.store.record_deliveries(&self.term, &deliveries).await {
            // The events stay held until their hold passes, then are sent again.
            tracing::warn!(%error, events = deliveries.len(), "could not record notification deliveries");
        }
        events.len() < BATCH as usize
    }

    async fn export_backlog(&self) {
        if let Ok(pending) = self.store.pending_notifications().await {
            metrics::gauge!(metric::NOTIFICATIONS_PENDING).set(pending as f64);
        }
    }

    /// Send one event and say what became of it.
    async fn deliver(&self, event: &OutboxEvent, target: Option<&NotifyTarget>) -> Delivery {
        let now = self.clock.now();
        let age = (now - event.created_at).to_std().unwrap_or_default();
        let delivery = match target {
            None => {
                Delivery::Abandoned { error: "its target is no longer in the job file (removed or edited)".to_owned() }
            }
            Some(_) if age > MAX_AGE => {
                Delivery::Abandoned { error: format!("not delivered within {}", humantime::format_duration(MAX_AGE)) }
            }
            Some(target) => match self.send(event, target).await {
                Ok(()) => Delivery::Delivered { at: self.clock.now() },
                Err(error) => Delivery::Retry { error, at: now + backoff(event.attempts) },
            },
        };
        let result = match &delivery {
            Delivery::Delivered { .. } => "delivered",
            Delivery::Retry { error, .. } => {
                tracing::warn!(job = event.job, event = event.event, target = event.label, attempt = event.attempts, %error, "notification not delivered; will retry");
                "failed"
            }
            Delivery::Abandoned { error } => {
                tracing::error!(job = event.job, event = event.event, target = event.label, %error, "notification abandoned");
                "abandoned"
            }
        };
        metrics::counter!(metric::NOTIFICATIONS, "result" => result).increment(1);
        delivery
    }

    async fn send(&self, event: &OutboxEvent, target: &NotifyTarget) -> Result<(), String> {
        let webhook = &target.webhook;
        let url = webhook.url.url_value()?;
        let run = self.reads.run(event.run_id).await.ok().flatten();
        let body = match webhook.format {
            WebhookFormat::Json => json_body(event, run.as_ref(), &self.term),
            WebhookFormat::Slack => slack_body(event, run.as_ref()),
        };
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let mut request = self
            .http
            .post(url)
            .timeout(REQUEST_TIMEOUT)
            .header(reqwest::header::USER_AGENT, concat!("tenure/", env!("CARGO_PKG_VERSION")))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, event.id.to_string())
            .header(EVENT_HEADER, &event.event)
            .header("X-Tenure-Delivery-Attempt", event.attempts.to_string());
        for (name, value) in &webhook.headers {
            request = request.header(name, value.header_value(name)?);
        }
        if let Some(secret) = &webhook.secret {
            let key = secret.resolve().map_err(|e| format!("secret: {e}"))?;
            request = request.header(SIGNATURE_HEADER, signature(key.expose().as_bytes(), &body));
        }
        match request.body(body).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("HTTP {}", response.status().as_u16())),
            Err(error) => Err(crate::deadman::request_failure(&error)),
        }
    }
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `key`, as GitHub signs its webhooks.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Wait before attempt `attempts + 1`: 1 s, 2 s, 4 s ... up to 5 minutes.
fn backoff(attempts: i32) -> chrono::Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 16) as u32;
    let wait = FIRST_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF);
    chrono::Duration::from_std(wait).unwrap_or_default()
}

fn targets_by_fingerprint(jobs: &JobSet) -> HashMap<String, NotifyTarget> {
    let mut targets = HashMap::new();
    for job in jobs.jobs() {
        for target in &job.notify {
            targets.entry(target.fingerprint()).or_insert_with(|| target.clone());
        }
    }
    targets
}

/// The JSON document of an event (README documents its fields). The run is as the ledger holds
/// it when sent (`null` once pruned). No output: a job's output stays in the ledger.
fn json_body(event: &OutboxEvent, run: Option<&RunRecord>, term: &Term) -> serde_json::Value {
    json!({
        "id": event.id,
        "event": event.event,
        "job": event.job,
        "slot": event.slot,
        "happened_at": event.created_at,
        "run": run.map(|run| json!({
            "id": run.id,
            "status": run.status,
            "trigger": run.trigger,
            "attempt": run.attempt,
            "term": run.term,
            "node": run.node,
            "planned_at": run.planned_at,
            "start_recorded_at": run.started_at,
            "began_at": run.began_at,
            "finished_at": run.finished_at,
            "lateness_ms": run.began_at.map(|began| (began - run.planned_at).num_milliseconds()),
            "exit_code": run.exit_code,
            "http_status": run.http_status,
            "error": run.error,
        })),
        "sent_by": { "term": term.revision() },
    })
}

/// A Slack incoming-webhook message: one line of text.
fn slack_body(event: &OutboxEvent, run: Option<&RunRecord>) -> serde_json::Value {
    let what = match event.event.as_str() {
        "succeeded" => "succeeded",
        "recovered" => "recovered: it succeeded after a failure",
        "failed" => "failed",
        "timed_out" => "timed out",
        "killed" => "was killed",
        "lost" => "was lost: its replica vanished without recording an outcome",
        "missed" => "missed its slot",
        "skipped" => "was skipped: the previous run was still going",
        "late" => "started late",
        other => other,
    };
    let mut text = format!("tenure: job `{}` {what} (slot {})", event.job, rfc3339(event.slot));
    if let Some(run) = run {
        if let Some(error) = &run.error {
            text.push_str(&format!(": {error}"));
        }
        text.push_str(&format!(" [run {}]", run.id));
    }
    json!({ "text": text })
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_an_independent_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retries_back_off_doubling_up_to_five_minutes() {
        let waits: Vec<i64> = [1, 2, 3, 9, 10, 40].iter().map(|n| backoff(*n).num_seconds()).collect();
        assert_eq!(waits, [1, 2, 4, 256, 300, 300]);
    }
}
