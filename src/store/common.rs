//! What the PostgreSQL and SQLite ledgers share: the column lists, the statements both
//! databases read alike, one row mapper per record, and how a refused claim is explained. A
//! second backend cannot drift from the first in what a row means.
//!
//! Statements here use `$1`-style parameters, which PostgreSQL and SQLite (through sqlx) both
//! read by number. Instants differ in storage (`timestamptz` on PostgreSQL, integer
//! microseconds on SQLite), so each backend's `LedgerRow` reads them its own way.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::{ClaimError, Claimed, Fence, JobControl, RunRecord, TermRecord, TriggerRecord};
use crate::leadership::Term;
use crate::model::{RunStatus, TriggerKind};

/// The columns `run_record` reads, for `concat!` into static SQL; `brief` leaves the output
/// empty (lists do not show it).
macro_rules! run_columns {
    () => {
        "id, job, slot, trigger, term, node, config_hash, status, attempt, claimed_at, \
         started_at, finished_at, exit_code, http_status, error, output"
    };
    (brief) => {
        "id, job, slot, trigger, term, node, config_hash, status, attempt, claimed_at, \
         started_at, finished_at, exit_code, http_status, error, '' AS output"
    };
}
pub(super) use run_columns;

pub(super) const RUN: &str = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1");

pub(super) const ALL_RUNS: &str = concat!("SELECT ", run_columns!(), " FROM runs ORDER BY slot, job");

/// Up to `$2` finished rows whose slot is before `$1`, in one short statement so claims are never
/// blocked for long. Each job's newest row stays: the dashboard's last run (the cursor is kept
/// apart, in `job_cursors`).
pub(super) const PRUNE_RUNS: &str = "DELETE FROM runs WHERE id IN (
         SELECT r.id FROM runs r
         WHERE r.slot < $1 AND r.status <> 'running'
           AND r.slot < (SELECT max(slot) FROM runs newest WHERE newest.job = r.job)
         LIMIT $2
     )";

/// Who holds (job `$1`, slot `$2`), for `explain_refusal`.
pub(super) const SLOT_HOLDER: &str =
    "SELECT id, term, node, status, started_at IS NULL AS unstarted FROM runs WHERE job = $1 AND slot = $2";

pub(super) const FENCE: &str = "SELECT term, cluster_id, node FROM fence WHERE id = 1";

pub(super) const JOB_CONTROLS: &str = "SELECT job, paused, resumed_at FROM job_controls";

pub(super) const TRIGGER_BY_KEY: &str =
    "SELECT id, job, idempotency_key, requested_by, requested_at, run_id, handled_at
     FROM triggers WHERE job = $1 AND idempotency_key = $2";

/// Triggers no claim has handled, and those whose claim never started (a newer term's claim
/// takes it over), oldest first.
pub(super) const PENDING_TRIGGERS: &str =
    "SELECT t.id, t.job, t.idempotency_key, t.requested_by, t.requested_at, t.run_id, t.handled_at
     FROM triggers t LEFT JOIN runs r ON r.id = t.run_id
     WHERE t.handled_at IS NULL OR (r.status = 'running' AND r.started_at IS NULL)
     ORDER BY t.requested_at, t.id";

pub(super) const ALL_TERMS: &str = "SELECT term, cluster_id, node, started_at, last_seen_at FROM terms ORDER BY term";

pub(super) const RECENT_TERMS: &str =
    "SELECT * FROM (SELECT term, cluster_id, node, started_at, last_seen_at FROM terms
     ORDER BY term DESC LIMIT $1) newest ORDER BY term";

pub(super) const UPDATE_OUTPUT: &str = "UPDATE runs SET output = $2 WHERE id = $1 AND status = 'running'";

/// A row of either database, read by column name. Only instants are stored differently.
pub(super) trait LedgerRow {
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn optional_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn optional_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn small_int(&self, column: &str) -> Result<i32, sqlx::Error>;
    fn optional_small_int(&self, column: &str) -> Result<Option<i32>, sqlx::Error>;
    fn flag(&self, column: &str) -> Result<bool, sqlx::Error>;
    fn instant(&self, column: &str) -> Result<DateTime<Utc>, sqlx::Error>;
    fn optional_instant(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error>;
}

/// Both `LedgerRow` impls read the same Rust types except instants.
macro_rules! ledger_row_plain_columns {
    () => {
        fn text(&self, column: &str) -> Result<String, sqlx::Error> {
            self.try_get(column)
        }
        fn optional_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
            self.try_get(column)
        }
        fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
            self.try_get(column)
        }
        fn optional_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
            self.try_get(column)
        }
        fn small_int(&self, column: &str) -> Result<i32, sqlx::Error> {
            self.try_get(column)
        }
        fn optional_small_int(&self, column: &str) -> Result<Option<i32>, sqlx::Error> {
            self.try_get(column)
        }
        fn flag(&self, column: &str) -> Result<bool, sqlx::Error> {
            self.try_get(column)
        }
    };
}

impl LedgerRow for PgRow {
    ledger_row_plain_columns!();

    fn instant(&self, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        self.try_get(column)
    }

    fn optional_instant(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.try_get(column)
    }
}

impl LedgerRow for SqliteRow {
    ledger_row_plain_columns!();

    fn instant(&self, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
        instant_of_micros(column, self.try_get(column)?)
    }

    fn optional_instant(&self, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        let micros: Option<i64> = self.try_get(column)?;
        micros.map(|micros| instant_of_micros(column, micros)).transpose()
    }
}

/// SQLite's instants: integer microseconds since the Unix epoch (exact `max()` and ordering).
pub(super) fn micros(instant: DateTime<Utc>) -> i64 {
    instant.timestamp_micros()
}

fn instant_of_micros(column: &str, micros: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| undecodable(column, format!("{micros} µs is out of range")))
}

/// A value this binary cannot read: never replaced by a default.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Undecodable(String);

fn undecodable(column: &str, detail: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode { index: column.to_owned(), source: Box::new(Undecodable(detail)) }
}

pub(super) fn status(row: &impl LedgerRow, column: &str) -> Result<RunStatus, sqlx::Error> {
    let text = row.text(column)?;
    RunStatus::parse(&text).ok_or_else(|| undecodable(column, format!("unknown run status {text:?}")))
}

fn trigger_kind(row: &impl LedgerRow, column: &str) -> Result<TriggerKind, sqlx::Error> {
    let text = row.text(column)?;
    TriggerKind::parse(&text).ok_or_else(|| undecodable(column, format!("unknown trigger {text:?}")))
}

/// A row of `run_columns!()`.
pub(super) fn run_record(row: &impl LedgerRow) -> Result<RunRecord, sqlx::Error> {
    Ok(RunRecord {
        id: row.int("id")?,
        job: row.text("job")?,
        slot: row.instant("slot")?,
        trigger: trigger_kind(row, "trigger")?,
        term: row.int("term")?,
        node: row.text("node")?,
        config_hash: row.text("config_hash")?,
        status: status(row, "status")?,
        attempt: row.small_int("attempt")?,
        claimed_at: row.instant("claimed_at")?,
        started_at: row.optional_instant("started_at")?,
        finished_at: row.optional_instant("finished_at")?,
        exit_code: row.optional_small_int("exit_code")?,
        http_status: row.optional_small_int("http_status")?,
        error: row.optional_text("error")?,
        output: row.text("output")?,
    })
}

pub(super) fn trigger_record(row: &impl LedgerRow) -> Result<TriggerRecord, sqlx::Error> {
    Ok(TriggerRecord {
        id: row.int("id")?,
        job: row.text("job")?,
        idempotency_key: row.text("idempotency_key")?,
        requested_by: row.text("requested_by")?,
        requested_at: row.instant("requested_at")?,
        run_id: row.optional_int("run_id")?,
        handled_at: row.optional_instant("handled_at")?,
    })
}

pub(super) fn term_record(row: &impl LedgerRow) -> Result<TermRecord, sqlx::Error> {
    Ok(TermRecord {
        term: row.int("term")?,
        cluster_id: row.text("cluster_id")?,
        node: row.text("node")?,
        started_at: row.instant("started_at")?,
        last_seen_at: row.optional_instant("last_seen_at")?,
    })
}

pub(super) fn fence(row: &impl LedgerRow) -> Result<Fence, sqlx::Error> {
    Ok(Fence { term: row.int("term")?, cluster_id: row.text("cluster_id")?, node: row.text("node")? })
}

pub(super) fn job_control(row: &impl LedgerRow) -> Result<(String, JobControl), sqlx::Error> {
    Ok((row.text("job")?, JobControl { paused: row.flag("paused")?, resumed_at: row.optional_instant("resumed_at")? }))
}

/// Who holds a slot a claim did not get (`SLOT_HOLDER`).
pub(super) struct SlotHolder {
    run_id: i64,
    term: i64,
    node: String,
    /// `None`: a status this binary does not know, which is never a claim to take up again.
    status: Option<RunStatus>,
    unstarted: bool,
}

impl SlotHolder {
    pub(super) fn of(row: &impl LedgerRow) -> Result<SlotHolder, sqlx::Error> {
        Ok(SlotHolder {
            run_id: row.int("id")?,
            term: row.int("term")?,
            node: row.text("node")?,
            status: RunStatus::parse(&row.text("status")?),
            unstarted: row.flag("unstarted")?,
        })
    }
}

/// A claim got no row back: "stale term" or "already claimed", or (a row of our own term and
/// node, never started) our own earlier claim whose acknowledgement was lost. `fence` is the
/// fence's term, read after the claim.
pub(super) fn explain_refusal(
    holder: Option<SlotHolder>,
    fence: i64,
    term: &Term,
    node: &str,
) -> Result<Claimed, ClaimError> {
    let fenced = ClaimError::Fenced { term: term.revision(), fence };
    let Some(holder) = holder else {
        return Err(fenced);
    };
    // Only a claim nobody has acted on yet can be ours to take up again: a row that was started,
    // finished or skipped is somebody's history, never a licence to run.
    let ours = holder.term == term.revision() && holder.node == node;
    match holder.status {
        Some(status @ (RunStatus::Running | RunStatus::Skipped)) if ours && holder.unstarted => {
            Ok(Claimed { run_id: holder.run_id, status })
        }
        _ if fence > term.revision() => Err(fenced),
        _ => Err(ClaimError::AlreadyClaimed { term: holder.term, node: holder.node }),
    }
}
