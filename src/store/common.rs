//! What the PostgreSQL and SQLite ledgers share: the column lists, the statements both
//! databases read alike, one row mapper per record, and how a refused claim is explained. A
//! second backend cannot drift from the first in what a row means.
//!
//! Statements here use `$1`-style parameters, which PostgreSQL and SQLite (through sqlx) both
//! read by number. Instants differ in storage (`timestamptz` on PostgreSQL, integer
//! microseconds on SQLite), so each backend's `LedgerRow` reads them its own way.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use super::{
    BackfillRecord, BackfillSlot, ClaimError, Claimed, Fence, JobControl, JobState, PendingCancel, RunRecord,
    TermRecord, TriggerOverrides, TriggerRecord,
};
use crate::config::Concurrency;
use crate::leadership::Term;
use crate::model::{RunStatus, TriggerKind};

/// The columns `run_record` reads, for `concat!` into static SQL; `brief` leaves the output
/// empty (lists do not show it).
macro_rules! run_columns {
    () => {
        "id, job, slot, trigger, term, node, config_hash, status, attempt, claimed_at, \
         COALESCE(planned_at, slot) AS planned_at, started_at, began_at, finished_at, exit_code, http_status, error, \
         output, executor"
    };
    (brief) => {
        "id, job, slot, trigger, term, node, config_hash, status, attempt, claimed_at, \
         COALESCE(planned_at, slot) AS planned_at, started_at, began_at, finished_at, exit_code, http_status, error, \
         '' AS output, executor"
    };
}
pub(super) use run_columns;

pub(super) const RUN: &str = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1");

pub(super) const ALL_RUNS: &str = concat!("SELECT ", run_columns!(), " FROM runs ORDER BY slot, job");

/// Up to `$2` audit entries older than `$1`, oldest first: retention, the only way one goes.
pub(super) const PRUNE_AUDIT: &str =
    "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < $1 ORDER BY id LIMIT $2)";

/// Backfill slots whose row has not started: none yet, or a backfill claim never started (a
/// dead leader's, taken over by the next claim). Oldest backfill first, at most `$1`.
pub(super) const PENDING_BACKFILL_SLOTS: &str = "SELECT q.backfill_id, q.job, q.slot FROM backfill_slots q
     LEFT JOIN runs r ON r.job = q.job AND r.slot = q.slot
     WHERE r.id IS NULL OR (r.status = 'running' AND r.started_at IS NULL AND r.trigger = 'backfill')
     ORDER BY q.backfill_id, q.slot LIMIT $1";

/// Take out of the queue the slots whose row has ended (any status): the ledger holds them.
pub(super) const CLEAR_BACKFILL_SLOTS: &str = "DELETE FROM backfill_slots WHERE EXISTS (
         SELECT 1 FROM runs r WHERE r.job = backfill_slots.job AND r.slot = backfill_slots.slot
           AND r.status <> 'running')";

/// Backfills with their progress: queued slots whose run is going, and those still queued.
macro_rules! backfill_progress {
    ($where:literal) => {
        concat!(
            "SELECT b.id, b.job, b.from_slot, b.to_slot, b.requested_by, b.requested_at, b.slots, b.cascade,
                    (SELECT count(*) FROM backfill_slots q WHERE q.backfill_id = b.id) AS queued,
                    (SELECT count(*) FROM backfill_slots q JOIN runs r ON r.job = q.job AND r.slot = q.slot
                     WHERE q.backfill_id = b.id AND r.status = 'running' AND r.started_at IS NOT NULL) AS going,
                    (SELECT count(*) FROM backfill_slots q JOIN runs r ON r.job = q.job AND r.slot = q.slot
                     WHERE q.backfill_id = b.id AND r.status <> 'running') AS ended
             FROM backfills b ",
            $where
        )
    };
}
pub(super) use backfill_progress;

/// Who holds (job `$1`, slot `$2`), for `explain_refusal`.
pub(super) const SLOT_HOLDER: &str =
    "SELECT id, term, node, status, started_at IS NULL AS unstarted FROM runs WHERE job = $1 AND slot = $2";

/// The scan for runs released by their awaited runs (`Ledger::awaited_runs`), given `links`
/// as the table expression `$links` (dependent, upstream, since) and the term's parameter `$term`: for each
/// dependent, the slots for which one of its awaited jobs has a run that ended since its link's
/// instant (a run the claim skipped ends at its claim), of trigger `schedule` or `upstream` or
/// asked to cascade, while the dependent has no row but an older term's released claim never
/// started (the claim takes it over); then every run of that slot of each job it waits for,
/// whatever its state.
macro_rules! awaited_runs {
    ($links:literal, $term:literal) => {
        concat!(
            "WITH links AS (",
            $links,
            "), released AS (
                 SELECT DISTINCT l.dependent, u.slot
                 FROM links l JOIN runs u ON u.job = l.upstream AND COALESCE(u.finished_at, u.claimed_at) >= l.since
                 WHERE u.status <> 'running' AND (u.trigger IN ('schedule', 'upstream') OR u.cascade)
                   AND NOT EXISTS (
                       SELECT 1 FROM runs d WHERE d.job = l.dependent AND d.slot = u.slot
                         AND NOT (d.status = 'running' AND d.started_at IS NULL AND d.trigger = 'upstream'
                                  AND d.term < ",
            $term,
            "))
             )
             SELECT r.dependent, r.slot, u.job, u.id, u.status, COALESCE(u.finished_at, u.claimed_at) AS ended_at
             FROM released r JOIN links l ON l.dependent = r.dependent
             JOIN runs u ON u.job = l.upstream AND u.slot = r.slot
             ORDER BY r.slot, r.dependent, u.job"
        )
    };
}
pub(super) use awaited_runs;

/// One row of `awaited_runs!`.
pub(super) fn awaited_run(row: &impl LedgerRow) -> Result<super::AwaitedRun, sqlx::Error> {
    let status =
        RunStatus::parse(&row.text("status")?).ok_or_else(|| undecodable("status", "unknown run status".to_owned()))?;
    Ok(super::AwaitedRun {
        dependent: row.text("dependent")?,
        slot: row.instant("slot")?,
        job: row.text("job")?,
        run_id: row.int("id")?,
        // A row still going has no end yet.
        ended_at: (status != RunStatus::Running).then(|| row.instant("ended_at")).transpose()?,
        status,
    })
}

pub(super) const FENCE: &str = "SELECT term, cluster_id, node FROM fence WHERE id = 1";

pub(super) const JOB_CONTROLS: &str = "SELECT job, paused, resumed_at FROM job_controls";

pub(super) const TRIGGER_BY_KEY: &str =
    "SELECT id, job, idempotency_key, requested_by, requested_at, run_id, handled_at, env, reason, concurrency, cascade
     FROM triggers WHERE job = $1 AND idempotency_key = $2";

pub(super) const TRIGGER_OF_RUN: &str =
    "SELECT id, job, idempotency_key, requested_by, requested_at, run_id, handled_at, env, reason, concurrency, cascade
     FROM triggers WHERE run_id = $1 ORDER BY id LIMIT 1";

/// Triggers no claim has handled, and those whose claim never started (a newer term's claim
/// takes it over), oldest first.
pub(super) const PENDING_TRIGGERS: &str = "SELECT t.id, t.job, t.idempotency_key, t.requested_by, t.requested_at,
            t.run_id, t.handled_at, t.env, t.reason, t.concurrency, t.cascade
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

pub(super) fn trigger_kind(row: &impl LedgerRow, column: &str) -> Result<TriggerKind, sqlx::Error> {
    let text = row.text(column)?;
    TriggerKind::parse(&text).ok_or_else(|| undecodable(column, format!("unknown trigger {text:?}")))
}

/// The rows of `LedgerReads::job_states` (`job`, `last`, `running`, `late_or_missed`), by job;
/// a job without runs is left out.
pub(super) fn job_states(rows: &[impl LedgerRow]) -> Result<HashMap<String, JobState>, sqlx::Error> {
    let mut states = HashMap::with_capacity(rows.len());
    for row in rows {
        let last = match row.optional_text("last")? {
            Some(text) => Some(
                RunStatus::parse(&text).ok_or_else(|| undecodable("last", format!("unknown run status {text:?}")))?,
            ),
            None => None,
        };
        let state = JobState { last, running: row.flag("running")?, late_or_missed: row.flag("late_or_missed")? };
        if state != JobState::default() {
            states.insert(row.text("job")?, state);
        }
    }
    Ok(states)
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
        planned_at: row.instant("planned_at")?,
        started_at: row.optional_instant("started_at")?,
        began_at: row.optional_instant("began_at")?,
        finished_at: row.optional_instant("finished_at")?,
        exit_code: row.optional_small_int("exit_code")?,
        http_status: row.optional_small_int("http_status")?,
        error: row.optional_text("error")?,
        output: row.text("output")?,
        executor: row.optional_text("executor")?,
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
        overrides: trigger_overrides(row)?,
    })
}

fn trigger_overrides(row: &impl LedgerRow) -> Result<TriggerOverrides, sqlx::Error> {
    let env = row.text("env")?;
    let env =
        serde_json::from_str(&env).map_err(|e| undecodable("env", format!("not a JSON object of strings: {e}")))?;
    let concurrency = match row.optional_text("concurrency")? {
        None => None,
        Some(text) => Some(
            Concurrency::NAMES
                .iter()
                .find(|(name, _)| *name == text)
                .map(|(_, concurrency)| *concurrency)
                .ok_or_else(|| undecodable("concurrency", format!("unknown concurrency {text:?}")))?,
        ),
    };
    Ok(TriggerOverrides { env, reason: row.optional_text("reason")?, concurrency, cascade: row.flag("cascade")? })
}

/// The JSON text the `env` column holds.
pub(super) fn env_json(env: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(env).expect("a map of strings is JSON")
}

/// A row of `backfill_progress!`.
pub(super) fn backfill_record(row: &impl LedgerRow) -> Result<BackfillRecord, sqlx::Error> {
    let slots = row.int("slots")?;
    let (queued, going, ended) = (row.int("queued")?, row.int("going")?, row.int("ended")?);
    Ok(BackfillRecord {
        id: row.int("id")?,
        job: row.text("job")?,
        from: row.instant("from_slot")?,
        to: row.instant("to_slot")?,
        requested_by: row.text("requested_by")?,
        requested_at: row.instant("requested_at")?,
        slots,
        // Out of the queue: ended (or held by another trigger's run, which has ended too).
        done: slots - queued + ended,
        running: going,
        cascade: row.flag("cascade")?,
    })
}

pub(super) fn backfill_slot(row: &impl LedgerRow) -> Result<BackfillSlot, sqlx::Error> {
    Ok(BackfillSlot { backfill: row.int("backfill_id")?, job: row.text("job")?, slot: row.instant("slot")? })
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

/// Operators' cancels the leader has not acted on (`Ledger::pending_cancels`); both databases
/// read it alike.
pub(super) const PENDING_CANCELS: &str = "SELECT id, job, cancel_reason FROM runs
     WHERE status = 'running' AND cancel_reason IS NOT NULL AND NOT cancel_requested ORDER BY id LIMIT 1000";

/// A row of `PENDING_CANCELS`.
pub(super) fn pending_cancel(row: &impl LedgerRow) -> Result<PendingCancel, sqlx::Error> {
    Ok(PendingCancel { run_id: row.int("id")?, job: row.text("job")?, reason: row.text("cancel_reason")? })
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

    /// Whether a claim of `term` takes this row over: an older term's claim never started.
    pub(super) fn taken_over_by(&self, term: &Term) -> bool {
        self.status == Some(RunStatus::Running) && self.unstarted && self.term < term.revision()
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
