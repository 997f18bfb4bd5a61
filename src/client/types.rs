//! What the API answers, as the client reads it. The server's views (`http::view`) are built to
//! be serialised (borrowed names, `&'static str` words), so the client has its own
//! deserialisable mirrors holding the fields it shows. Unknown fields are ignored, so a newer
//! server that adds one still works with this client; statuses and trigger kinds are the shared
//! `model` enums, so a status this binary does not know is a decode error, not a guess.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::model::{RunStatus, TriggerKind};

/// `GET /api/jobs`: one job of the file, with its last outcome.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub name: String,
    pub schedule: String,
    /// The schedule in words; older servers may say otherwise.
    #[serde(default)]
    pub description: Option<String>,
    pub timezone: String,
    pub next_utc: Option<DateTime<Utc>>,
    pub paused: bool,
    /// `file` or `operator`; none while the job runs.
    pub paused_by: Option<String>,
    pub kind: String,
    pub last: Option<RunBrief>,
}

/// One run as lists show it.
#[derive(Debug, Clone, Deserialize)]
pub struct RunBrief {
    pub id: i64,
    pub slot: DateTime<Utc>,
    pub status: RunStatus,
    pub trigger: TriggerKind,
    pub term: i64,
    pub node: String,
    /// The replica that executes it, for a `run_on: any` or tags job; none for a leader-run one.
    #[serde(default)]
    pub executor: Option<String>,
    pub attempt: i32,
    pub duration_ms: Option<i64>,
    pub lateness_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
}

/// `GET /api/runs/{id}`: one run, whole.
#[derive(Debug, Clone, Deserialize)]
pub struct Run {
    #[serde(flatten)]
    pub brief: RunBrief,
    pub job: String,
    pub claimed_at: DateTime<Utc>,
    /// When its fenced start was recorded (older servers call it `started_at`).
    #[serde(default, alias = "started_at")]
    pub start_recorded_at: Option<DateTime<Utc>>,
    /// When it really began (its process spawned, its request sent); older servers omit it.
    #[serde(default)]
    pub began_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub output: String,
    /// When it was to start (its slot plus the job's jitter offset); older servers omit it.
    pub planned_at: Option<DateTime<Utc>>,
    /// A manual run's request: who, why, what it overrode.
    pub request: Option<Request>,
    /// Absent from servers older than notifications.
    #[serde(default)]
    pub notifications: Vec<Notification>,
}

/// An event a `notify:` target was told (or will be), in `GET /api/runs/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Notification {
    pub event: String,
    pub target: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// What an operator asked of a manual run (values overriding an inherited variable redacted).
#[derive(Debug, Clone, Deserialize)]
pub struct Request {
    pub requested_by: String,
    pub reason: Option<String>,
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    pub concurrency: Option<String>,
}

/// `POST /api/jobs/{name}/backfill` with `dry_run`: the slots it would run.
#[derive(Debug, Clone, Deserialize)]
pub struct BackfillPlan {
    pub job: String,
    pub slots: Vec<DateTime<Utc>>,
}

/// A backfill and its progress (`POST /api/jobs/{name}/backfill`, `GET /api/backfills/{id}`).
#[derive(Debug, Clone, Deserialize)]
pub struct Backfill {
    pub id: i64,
    pub job: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub slots: i64,
    pub done: i64,
    pub running: i64,
    pub pending: i64,
    pub finished: bool,
}

/// `GET /api/jobs/{name}/runs`: newest first.
#[derive(Debug, Clone, Deserialize)]
pub struct RunPage {
    pub runs: Vec<RunBrief>,
    pub next_cursor: Option<String>,
}

/// `GET /api/cluster`.
#[derive(Debug, Clone, Deserialize)]
pub struct Cluster {
    pub leader: Option<Leader>,
    pub replicas: Vec<Replica>,
    pub warnings: Vec<String>,
    pub answered_by: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Leader {
    pub node: String,
    pub term: i64,
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Replica {
    pub node: String,
    pub version: String,
    pub address: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub live: bool,
    pub leader: bool,
}

/// `GET /api/terms`: newest first.
#[derive(Debug, Clone, Deserialize)]
pub struct Term {
    pub term: i64,
    pub node: String,
    pub started_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub handover_ms: Option<i64>,
    pub current: bool,
}

/// `POST /api/jobs/{name}/trigger`: the trigger request. `run_id` is known once the leader has
/// claimed its slot; `handled_at` without a `run_id` means the leader dropped it (its job is no
/// longer in the leader's job file).
#[derive(Debug, Clone, Deserialize)]
pub struct Trigger {
    pub id: i64,
    pub job: String,
    pub idempotency_key: String,
    pub run_id: Option<i64>,
    pub handled_at: Option<DateTime<Utc>>,
}

/// `POST /api/jobs/{name}/pause` and `resume`.
#[derive(Debug, Clone, Deserialize)]
pub struct Paused {
    pub job: String,
    pub paused: bool,
}

/// An error answer (RFC 9457 `application/problem+json`).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Problem {
    pub title: String,
    pub detail: String,
}
