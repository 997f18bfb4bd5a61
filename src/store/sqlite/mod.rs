//! The ledger on SQLite, for `tenure dev`: one process, one file, the same rows and the same
//! refusals as PostgreSQL. SQLite runs one write at a time, so a fence check and the insert in
//! one statement are atomic without row locks. Instants are stored as integer microseconds
//! since the Unix epoch, so `max()` and ordering are exact.

mod access;
mod execution;
mod reads;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::common::{self, LedgerRow, SlotHolder, micros};
use super::outbox;
use super::{
    AwaitLink, AwaitedRun, BackfillSlot, Claim, ClaimError, Claimed, DatabaseClock, Fence, FenceError, JobControl,
    JobCursor, Ledger, LedgerHistory, LiveNode, PendingCancel, Replication, Retention, SkipIfRunning, TriggerRecord,
    UnrunSlots, clean_text,
};
use super::{Delivery, NotifyRoute, OutboxEvent};
use crate::leadership::Term;
use crate::model::{RunOutcome, Trigger};

/// The SQLite ledger. Pauses and triggers wake the scheduler through an in-process channel.
#[derive(Debug, Clone)]
pub struct Sqlite {
    pool: SqlitePool,
    controls: broadcast::Sender<()>,
    /// Wakes the executor when a run is assigned (`store::execution`).
    assignments: broadcast::Sender<()>,
}

impl Sqlite {
    /// Open (creating if needed) the ledger file at `path` and apply the migrations.
    pub async fn open(path: &Path) -> anyhow::Result<Sqlite> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        Sqlite::with_options(options).await
    }

    /// A private in-memory ledger (tests).
    pub async fn in_memory() -> anyhow::Result<Sqlite> {
        Sqlite::with_options(SqliteConnectOptions::from_str("sqlite::memory:")?).await
    }

    async fn with_options(options: SqliteConnectOptions) -> anyhow::Result<Sqlite> {
        // One connection: SQLite has one writer anyway, and an in-memory database is per connection.
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await.context("apply migrations")?;
        Ok(Sqlite { pool, controls: broadcast::channel(16).0, assignments: broadcast::channel(16).0 })
    }

    fn notify_controls(&self) {
        let _ = self.controls.send(());
    }

    /// Operator pauses and resumes, for either side of the ledger.
    async fn read_job_controls(&self) -> Result<HashMap<String, JobControl>, sqlx::Error> {
        sqlx::query(common::JOB_CONTROLS).fetch_all(&self.pool).await?.iter().map(common::job_control).collect()
    }
}

/// Move `job`'s cursor to `slot` unless it is already past it.
async fn advance_cursor(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job: &str,
    slot: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_cursors (job, slot) VALUES (?1, ?2)
         ON CONFLICT (job) DO UPDATE SET slot = max(slot, excluded.slot)",
    )
    .bind(job)
    .bind(micros(slot))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Ledger for Sqlite {
    /// SQLite runs in this process: its clock is ours.
    async fn clock(&self) -> Result<DatabaseClock, sqlx::Error> {
        Ok(DatabaseClock { now: Utc::now(), not_primary: None })
    }

    async fn replication(&self) -> Result<Option<Replication>, sqlx::Error> {
        Ok(None)
    }

    async fn history(&self) -> Result<LedgerHistory, sqlx::Error> {
        Ok(LedgerHistory { timeline: None, crash_safe: true })
    }

    async fn begin_term(&self, term: &Term, node: &str) -> Result<(), FenceError> {
        let mut tx = self.pool.begin().await?;
        let raised = sqlx::query(
            "UPDATE fence SET term = ?1, cluster_id = ?2, node = ?3, raised_at = ?4
             WHERE id = 1 AND (term < ?1 OR (term = ?1 AND cluster_id = ?2 AND node = ?3))",
        )
        .bind(term.revision())
        .bind(term.cluster_id())
        .bind(node)
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if raised == 0 {
            let fence = common::fence(&sqlx::query(common::FENCE).fetch_one(&mut *tx).await?)?;
            return Err(FenceError::Superseded {
                term: term.revision(),
                fence: fence.term,
                fence_cluster: fence.cluster_id,
                fence_node: fence.node,
            });
        }
        sqlx::query(
            "INSERT INTO terms (term, cluster_id, node, started_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (term) DO NOTHING",
        )
        .bind(term.revision())
        .bind(term.cluster_id())
        .bind(node)
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fence(&self) -> Result<Fence, sqlx::Error> {
        common::fence(&sqlx::query(common::FENCE).fetch_one(&self.pool).await?)
    }

    async fn claim_run(&self, claim: &Claim<'_>) -> Result<Claimed, ClaimError> {
        let mut tx = self.pool.begin().await?;
        // As on PostgreSQL: `forbid` counts runs started and this term's own claims; an older
        // term's claim that never started is taken over; a slot skipped says which run was going.
        let inserted = sqlx::query(
            "INSERT INTO runs (job, slot, trigger, term, node, config_hash, status, claimed_at, planned_at, error,
                               cascade)
             SELECT ?1, ?2, ?7, ?3, ?4, ?5,
                    CASE WHEN going.id IS NOT NULL THEN 'skipped' ELSE 'running' END,
                    ?8, ?9,
                    'forbid: run ' || going.id || ' of this job was still going',
                    COALESCE(CASE ?7
                        WHEN 'manual' THEN (SELECT cascade FROM triggers WHERE id = ?11)
                        WHEN 'backfill' THEN (SELECT cascade FROM backfills WHERE id = ?11)
                    END, 0)
             FROM fence, (
                 SELECT min(id) AS id FROM runs WHERE ?6 AND job = ?1 AND status = 'running'
                   AND (started_at IS NOT NULL OR term = ?3)
                   AND NOT (?10 AND term = ?3 AND node = ?4 AND executor IS NULL)
             ) going
             WHERE fence.id = 1 AND fence.term <= ?3
             ON CONFLICT (job, slot) DO UPDATE
                 SET term = excluded.term, node = excluded.node, config_hash = excluded.config_hash,
                     status = excluded.status, claimed_at = excluded.claimed_at, planned_at = excluded.planned_at,
                     error = excluded.error, cascade = excluded.cascade
                 WHERE runs.status = 'running' AND runs.started_at IS NULL AND runs.term < excluded.term
             RETURNING id, status",
        )
        .bind(claim.job)
        .bind(micros(claim.slot))
        .bind(claim.term.revision())
        .bind(claim.node)
        .bind(claim.config_hash)
        .bind(claim.skip_if_running != SkipIfRunning::No)
        .bind(claim.trigger.as_str())
        .bind(micros(claim.claimed_at))
        .bind(micros(claim.planned_at))
        // `ExceptOwn`: the leader's own runs of this term (it waits for them) do not count.
        .bind(claim.skip_if_running == SkipIfRunning::ExceptOwn)
        // A manual or backfill run cascades when its request asked: copied onto the row.
        .bind(claim.trigger.request_id())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(request) = claim.trigger.request() {
            // In the claim's transaction (SQLite's one writer makes it as atomic as PostgreSQL's
            // one statement): linked to whichever run holds the slot now, ours or another term's;
            // not at all when the claim was fenced, so the trigger stays pending.
            sqlx::query(
                "UPDATE triggers SET handled_at = ?4,
                        run_id = (SELECT id FROM runs WHERE job = ?2 AND slot = ?3)
                 WHERE id = ?1 AND handled_at IS NULL AND (SELECT term FROM fence WHERE id = 1) <= ?5",
            )
            .bind(request)
            .bind(claim.job)
            .bind(micros(claim.slot))
            .bind(micros(Utc::now()))
            .bind(claim.term.revision())
            .execute(&mut *tx)
            .await?;
        }
        if let Some(row) = inserted {
            if claim.trigger == Trigger::Schedule {
                advance_cursor(&mut tx, claim.job, claim.slot).await?;
            }
            tx.commit().await?;
            return Ok(Claimed { run_id: row.try_get("id")?, status: common::status(&row, "status")? });
        }
        tx.commit().await?;
        let holder = sqlx::query(common::SLOT_HOLDER)
            .bind(claim.job)
            .bind(micros(claim.slot))
            .fetch_optional(&self.pool)
            .await?;
        let holder = holder.map(|row| SlotHolder::of(&row)).transpose()?;
        let fence = self.fence().await?;
        common::explain_refusal(holder, fence.term, claim.term, claim.node)
    }

    async fn record_slots(&self, unrun: &UnrunSlots<'_>) -> Result<u64, ClaimError> {
        let UnrunSlots { job, slots, status, trigger, term, node, config_hash, error } = *unrun;
        let now = micros(Utc::now());
        let mut tx = self.pool.begin().await?;
        let fence: i64 = sqlx::query("SELECT term FROM fence WHERE id = 1").fetch_one(&mut *tx).await?.get("term");
        if fence > term.revision() {
            return Err(ClaimError::Fenced { term: term.revision(), fence });
        }
        let mut recorded = 0;
        for slot in slots {
            recorded += sqlx::query(
                "INSERT INTO runs (job, slot, trigger, term, node, config_hash, status, claimed_at, finished_at, error)
                 VALUES (?1, ?2, ?9, ?3, ?4, ?5, ?6, ?7, ?7, ?8)
                 ON CONFLICT (job, slot) DO UPDATE
                     SET term = excluded.term, node = excluded.node, status = excluded.status,
                         finished_at = excluded.finished_at, error = excluded.error
                     WHERE runs.status = 'running' AND runs.started_at IS NULL AND runs.term <= excluded.term",
            )
            .bind(job)
            .bind(micros(*slot))
            .bind(term.revision())
            .bind(node)
            .bind(config_hash)
            .bind(status.as_str())
            .bind(now)
            .bind(error)
            .bind(trigger.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if let (Trigger::Schedule, Some(newest)) = (trigger, slots.iter().max()) {
            if recorded > 0 {
                advance_cursor(&mut tx, job, *newest).await?;
            }
        }
        tx.commit().await?;
        Ok(recorded)
    }

    async fn start_runs(&self, term: &Term, runs: &[(i64, DateTime<Utc>)]) -> Result<Vec<bool>, ClaimError> {
        let mut tx = self.pool.begin().await?;
        let fence: i64 = sqlx::query("SELECT term FROM fence WHERE id = 1").fetch_one(&mut *tx).await?.get("term");
        if fence > term.revision() {
            return Err(ClaimError::Fenced { term: term.revision(), fence });
        }
        let mut started = Vec::with_capacity(runs.len());
        for (run_id, at) in runs {
            let updated = sqlx::query(
                "UPDATE runs SET started_at = ?3
                 WHERE id = ?1 AND term = ?2 AND status = 'running' AND (started_at IS NULL OR started_at = ?3)",
            )
            .bind(run_id)
            .bind(term.revision())
            .bind(micros(*at))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            started.push(updated == 1);
        }
        tx.commit().await?;
        Ok(started)
    }

    async fn retry_run(
        &self,
        run_id: i64,
        term: &Term,
        attempt: i32,
        previous_error: &str,
        started_at: DateTime<Utc>,
    ) -> Result<(), ClaimError> {
        let updated = sqlx::query(
            "UPDATE runs SET attempt = ?3, status = 'running', error = ?4, started_at = ?5,
                    finished_at = NULL, exit_code = NULL, http_status = NULL
             WHERE id = ?1 AND term = ?2 AND (SELECT term FROM fence WHERE id = 1) <= ?2",
        )
        .bind(run_id)
        .bind(term.revision())
        .bind(attempt)
        .bind(previous_error)
        .bind(micros(started_at))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            let fence = self.fence().await?;
            return Err(ClaimError::Fenced { term: term.revision(), fence: fence.term });
        }
        Ok(())
    }

    async fn finish_run(&self, run_id: i64, outcome: &RunOutcome) -> Result<(), sqlx::Error> {
        let query = sqlx::query(
            "UPDATE runs SET status = ?2, exit_code = ?3, http_status = ?4, error = ?5, output = ?6,
                    finished_at = ?7, began_at = ?8
             WHERE id = ?1 AND status IN ('running', 'lost')",
        )
        .bind(run_id);
        bind_outcome(query, outcome).execute(&self.pool).await.map(|_| ())
    }

    async fn started_by_term(&self, term: i64, runs: &[(String, DateTime<Utc>)]) -> Result<usize, sqlx::Error> {
        let mut started = 0;
        for (job, slot) in runs {
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM runs WHERE job = ?1 AND slot = ?2 AND term = ?3 AND started_at IS NOT NULL",
            )
            .bind(job)
            .bind(micros(*slot))
            .bind(term)
            .fetch_optional(&self.pool)
            .await?;
            started += usize::from(found.is_some());
        }
        Ok(started)
    }

    async fn job_cursors(
        &self,
        term: &Term,
        jobs: &[&str],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, JobCursor>, ClaimError> {
        let mut tx = self.pool.begin().await?;
        let fence: i64 = sqlx::query("SELECT term FROM fence WHERE id = 1").fetch_one(&mut *tx).await?.get("term");
        if fence > term.revision() {
            return Err(ClaimError::Fenced { term: term.revision(), fence });
        }
        let mut cursors = HashMap::with_capacity(jobs.len());
        for job in jobs {
            sqlx::query("INSERT INTO job_cursors (job, slot) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
                .bind(job)
                .bind(micros(now))
                .execute(&mut *tx)
                .await?;
            let row = sqlx::query(
                "SELECT slot, (SELECT min(slot) FROM runs
                               WHERE job = ?1 AND status = 'running' AND started_at IS NULL
                                 AND trigger = 'schedule' AND term < ?2) AS unstarted
                 FROM job_cursors WHERE job = ?1",
            )
            .bind(job)
            .bind(term.revision())
            .fetch_one(&mut *tx)
            .await?;
            let cursor = JobCursor { slot: row.instant("slot")?, unstarted: row.optional_instant("unstarted")? };
            cursors.insert((*job).to_owned(), cursor);
        }
        tx.commit().await?;
        Ok(cursors)
    }

    async fn reap_lost(&self, term: &Term, live: &[LiveNode]) -> Result<u64, sqlx::Error> {
        let live: Vec<serde_json::Value> =
            live.iter().map(|l| serde_json::json!({"node": l.node, "since": micros(l.since)})).collect();
        let result = sqlx::query(
            "UPDATE runs SET status = 'lost', finished_at = ?3,
                    error = 'its leader vanished without recording an outcome'
             WHERE status = 'running' AND started_at IS NOT NULL AND term < ?1 AND executor IS NULL
               AND NOT EXISTS (
                   SELECT 1 FROM json_each(?2) AS live
                   WHERE json_extract(live.value, '$.node') = runs.node
                     AND runs.claimed_at >= json_extract(live.value, '$.since'))
               AND (SELECT term FROM fence WHERE id = 1) <= ?1",
        )
        .bind(term.revision())
        .bind(serde_json::Value::Array(live).to_string())
        .bind(micros(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Job by job (found by skipping through the (job, slot) key), each job's rows older than
    /// its limit and than its newest row read off that key, oldest first, until the batch is
    /// full: what it costs follows what it deletes. The pages freed go back to the file system
    /// (`auto_vacuum = INCREMENTAL`).
    async fn prune_runs(&self, retention: &Retention, batch: i64) -> Result<u64, sqlx::Error> {
        let own: HashMap<&str, DateTime<Utc>> =
            retention.per_job.iter().map(|(job, before)| (job.as_str(), *before)).collect();
        let mut pruned = 0;
        let mut previous = String::new();
        while pruned < batch {
            let job: Option<String> = sqlx::query_scalar("SELECT job FROM runs WHERE job > ?1 ORDER BY job LIMIT 1")
                .bind(&previous)
                .fetch_optional(&self.pool)
                .await?;
            let Some(job) = job else { break };
            let before = own.get(job.as_str()).copied().unwrap_or(retention.default_before);
            pruned += sqlx::query(
                "DELETE FROM runs WHERE id IN (
                     SELECT id FROM runs
                     WHERE job = ?1 AND slot < min(?2, (SELECT slot FROM runs WHERE job = ?1 ORDER BY slot DESC LIMIT 1))
                       AND claimed_at < ?2 AND status <> 'running'
                     ORDER BY slot LIMIT ?3)",
            )
            .bind(&job)
            .bind(micros(before))
            .bind(batch - pruned)
            .execute(&self.pool)
            .await?
            .rows_affected() as i64;
            previous = job;
        }
        let events = sqlx::query(outbox::PRUNE_NOTIFICATIONS)
            .bind(micros(retention.default_before))
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if pruned > 0 || events > 0 {
            sqlx::query("PRAGMA incremental_vacuum").execute(&self.pool).await?;
        }
        Ok(pruned as u64)
    }

    async fn prune_audit(&self, before: DateTime<Utc>, batch: i64) -> Result<u64, sqlx::Error> {
        let result = sqlx::query(common::PRUNE_AUDIT).bind(micros(before)).bind(batch).execute(&self.pool).await?;
        Ok(result.rows_affected())
    }

    async fn pending_backfill_slots(&self, limit: i64) -> Result<Vec<BackfillSlot>, sqlx::Error> {
        sqlx::query(common::PENDING_BACKFILL_SLOTS)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(common::backfill_slot)
            .collect()
    }

    async fn clear_backfill_slots(&self) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(common::CLEAR_BACKFILL_SLOTS).execute(&self.pool).await?.rows_affected())
    }

    async fn awaited_runs(&self, term: &Term, links: &[AwaitLink<'_>]) -> Result<Vec<AwaitedRun>, sqlx::Error> {
        if links.is_empty() {
            return Ok(Vec::new());
        }
        let links: Vec<(&str, &str, i64)> = links.iter().map(|l| (l.dependent, l.upstream, micros(l.since))).collect();
        let links = serde_json::to_string(&links).expect("links are JSON");
        let rows = sqlx::query(common::awaited_runs!(
            "SELECT value ->> 0 AS dependent, value ->> 1 AS upstream, value ->> 2 AS since FROM json_each($1)",
            "$2"
        ))
        .bind(links)
        .bind(term.revision())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(common::awaited_run).collect()
    }

    async fn job_controls(&self) -> Result<HashMap<String, JobControl>, sqlx::Error> {
        self.read_job_controls().await
    }

    async fn update_output(&self, run_id: i64, output: &str) -> Result<(), sqlx::Error> {
        sqlx::query(common::UPDATE_OUTPUT).bind(run_id).bind(clean_text(output)).execute(&self.pool).await?;
        Ok(())
    }

    async fn term_alive(&self, term: &Term, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE terms SET last_seen_at = ?2 WHERE term = ?1")
            .bind(term.revision())
            .bind(micros(at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn pending_triggers(&self) -> Result<Vec<TriggerRecord>, sqlx::Error> {
        sqlx::query(common::PENDING_TRIGGERS).fetch_all(&self.pool).await?.iter().map(common::trigger_record).collect()
    }

    async fn pending_cancels(&self) -> Result<Vec<PendingCancel>, sqlx::Error> {
        let rows = sqlx::query(common::PENDING_CANCELS).fetch_all(&self.pool).await?;
        rows.iter().map(common::pending_cancel).collect()
    }

    async fn apply_cancels(&self, term: &Term, runs: &[i64]) -> Result<Vec<i64>, ClaimError> {
        // As on PostgreSQL: an older term's claim never started is recorded `killed` here.
        let mut marked = Vec::new();
        let mut tx = self.pool.begin().await?;
        for run_id in runs {
            let row = sqlx::query(
                "UPDATE runs SET cancel_requested = 1,
                        status = CASE WHEN started_at IS NULL AND executor IS NULL AND term < ?1
                                      THEN 'killed' ELSE status END,
                        finished_at = CASE WHEN started_at IS NULL AND executor IS NULL AND term < ?1
                                           THEN ?3 ELSE finished_at END,
                        error = CASE WHEN started_at IS NULL AND executor IS NULL AND term < ?1
                                     THEN cancel_reason || ' before the run started' ELSE error END
                 WHERE id = ?2 AND status = 'running' AND cancel_reason IS NOT NULL AND NOT cancel_requested
                   AND (SELECT term FROM fence WHERE id = 1) <= ?1
                 RETURNING id",
            )
            .bind(term.revision())
            .bind(run_id)
            .bind(micros(Utc::now()))
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = row {
                marked.push(row.try_get("id")?);
            }
        }
        tx.commit().await?;
        if marked.is_empty() && !runs.is_empty() {
            let fence = self.fence().await?;
            if fence.term > term.revision() {
                return Err(ClaimError::Fenced { term: term.revision(), fence: fence.term });
            }
        }
        Ok(marked)
    }

    async fn trigger_dropped(&self, trigger_id: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE triggers SET handled_at = ?2 WHERE id = ?1")
            .bind(trigger_id)
            .bind(micros(Utc::now()))
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    async fn listen_controls(&self, wake: mpsc::Sender<()>, stop: CancellationToken) {
        let mut changes = self.controls.subscribe();
        let _ = wake.try_send(());
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => match change {
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => { let _ = wake.try_send(()); }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    async fn set_notify_routes(&self, term: &Term, routes: &[NotifyRoute]) -> Result<(), ClaimError> {
        let mut tx = self.pool.begin().await?;
        let fence: i64 = sqlx::query_scalar("SELECT term FROM fence WHERE id = 1").fetch_one(&mut *tx).await?;
        if fence > term.revision() {
            return Err(ClaimError::Fenced { term: term.revision(), fence });
        }
        sqlx::query("DELETE FROM notify_routes").execute(&mut *tx).await?;
        for route in routes {
            sqlx::query("INSERT INTO notify_routes (job, target, label, events, late_ms) VALUES ($1, $2, $3, $4, $5)")
                .bind(&route.job)
                .bind(&route.target)
                .bind(&route.label)
                .bind(&route.events)
                .bind(route.late_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn take_notifications(
        &self,
        term: &Term,
        now: DateTime<Utc>,
        hold_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let fence: i64 = sqlx::query_scalar("SELECT term FROM fence WHERE id = 1").fetch_one(&mut *tx).await?;
        if fence > term.revision() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "UPDATE notifications SET sending_term = $1, sending_until = $3, attempts = attempts + 1
             WHERE id IN (
                 SELECT id FROM notifications
                 WHERE status = 'pending' AND next_at <= $2 AND (sending_until IS NULL OR sending_until < $2)
                 ORDER BY next_at, id LIMIT $4
             )
             RETURNING id, run_id, job, slot, event, target, label, created_at, attempts",
        )
        .bind(term.revision())
        .bind(micros(now))
        .bind(micros(hold_until))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut events = rows.iter().map(outbox::outbox_event).collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|event| event.id);
        Ok(events)
    }

    async fn record_deliveries(&self, term: &Term, deliveries: &[(i64, Delivery)]) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut written = 0;
        for (id, delivery) in deliveries {
            let columns = delivery.columns();
            written += sqlx::query(
                "UPDATE notifications
                 SET status = $3, delivered_at = $4, next_at = coalesce($5, next_at),
                     last_error = coalesce($6, last_error), sending_until = NULL
                 WHERE id = $1 AND sending_term = $2 AND status = 'pending'",
            )
            .bind(id)
            .bind(term.revision())
            .bind(columns.status)
            .bind(columns.delivered_at.map(micros))
            .bind(columns.next_at.map(micros))
            .bind(columns.error.map(clean_text))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn pending_notifications(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(outbox::PENDING_COUNT).fetch_one(&self.pool).await
    }
}

/// Bind an outcome's seven columns, in this order: status, exit code, HTTP status, error, output,
/// finished at, began at (the leader's outcome and a worker's take the same).
fn bind_outcome<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    outcome: &'q RunOutcome,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    query
        .bind(outcome.status.as_str())
        .bind(outcome.exit_code)
        .bind(outcome.http_status.map(i32::from))
        .bind(outcome.error.as_deref().map(clean_text))
        .bind(clean_text(&outcome.output))
        .bind(micros(outcome.finished_at))
        .bind(outcome.began_at.map(micros))
}
