//! The notification outbox's records and what both databases share of it. The events themselves
//! are inserted by triggers on `runs` (migrations `*_notifications.sql`) in the statement that
//! records an outcome; the leader takes them for delivery, and records each answer.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::common::LedgerRow;

/// One job's notification target, as the ledger routes outcomes to it (`notify_routes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyRoute {
    pub job: String,
    /// The target's fingerprint (`NotifyTarget::fingerprint`).
    pub target: String,
    /// What may be shown of the target (`NotifyTarget::label`).
    pub label: String,
    /// Comma-framed words: `,failed,lost,recovered,`.
    pub events: String,
    /// Tell starts later than this after their slot.
    pub late_ms: Option<i64>,
}

/// An event taken for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Stable across retries and leaders: the `X-Tenure-Event-Id` receivers deduplicate by.
    pub id: i64,
    pub run_id: i64,
    pub job: String,
    pub slot: DateTime<Utc>,
    /// An outcome (`failed`), `recovered` or `late`.
    pub event: String,
    pub target: String,
    pub label: String,
    pub created_at: DateTime<Utc>,
    /// Including this one.
    pub attempts: i32,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered {
        at: DateTime<Utc>,
    },
    /// Not delivered; tried again at `at`.
    Retry {
        error: String,
        at: DateTime<Utc>,
    },
    /// Given up: too old, or its target is no longer in the job file.
    Abandoned {
        error: String,
    },
}

/// The columns an answer writes.
pub(super) struct DeliveryColumns<'a> {
    pub status: &'static str,
    pub delivered_at: Option<DateTime<Utc>>,
    pub next_at: Option<DateTime<Utc>>,
    pub error: Option<&'a str>,
}

impl Delivery {
    pub(super) fn columns(&self) -> DeliveryColumns<'_> {
        let (status, delivered_at, next_at, error) = match self {
            Delivery::Delivered { at } => ("delivered", Some(*at), None, None),
            Delivery::Retry { error, at } => ("pending", None, Some(*at), Some(error.as_str())),
            Delivery::Abandoned { error } => ("abandoned", None, None, Some(error.as_str())),
        };
        DeliveryColumns { status, delivered_at, next_at, error }
    }
}

/// An event as the run page and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotificationRecord {
    pub id: i64,
    pub event: String,
    /// The target's scheme and host, or where its URL is read from.
    pub target: String,
    /// `pending`, `delivered` or `abandoned`.
    pub status: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due, while pending.
    pub next_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// A run's events, oldest first.
pub(super) const RUN_NOTIFICATIONS: &str = "SELECT id, event, label, status, attempts, created_at, next_at, \
     delivered_at, last_error FROM notifications WHERE run_id = $1 ORDER BY id";

pub(super) const PENDING_COUNT: &str = "SELECT count(*) AS pending FROM notifications WHERE status = 'pending'";

/// Delivered and abandoned events created before `$1`, the oldest `$2` (pruned with the runs, a
/// batch with each batch of runs).
pub(super) const PRUNE_NOTIFICATIONS: &str = "DELETE FROM notifications WHERE id IN (
         SELECT id FROM notifications WHERE status <> 'pending' AND created_at < $1 ORDER BY created_at LIMIT $2)";

pub(super) fn outbox_event(row: &impl LedgerRow) -> Result<OutboxEvent, sqlx::Error> {
    Ok(OutboxEvent {
        id: row.int("id")?,
        run_id: row.int("run_id")?,
        job: row.text("job")?,
        slot: row.instant("slot")?,
        event: row.text("event")?,
        target: row.text("target")?,
        label: row.text("label")?,
        created_at: row.instant("created_at")?,
        attempts: row.small_int("attempts")?,
    })
}

pub(super) fn notification_record(row: &impl LedgerRow) -> Result<NotificationRecord, sqlx::Error> {
    let status = row.text("status")?;
    Ok(NotificationRecord {
        id: row.int("id")?,
        event: row.text("event")?,
        target: row.text("label")?,
        next_at: if status == "pending" { Some(row.instant("next_at")?) } else { None },
        status,
        attempts: row.small_int("attempts")?,
        created_at: row.instant("created_at")?,
        delivered_at: row.optional_instant("delivered_at")?,
        last_error: row.optional_text("last_error")?,
    })
}
