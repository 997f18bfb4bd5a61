//! The ledger on SQLite, for `tenure dev`: one process, one file, the same rows and the same
//! refusals as PostgreSQL. SQLite runs one write at a time, so a fence check and the insert in
//! one statement are atomic without row locks. Instants are stored as integer microseconds
//! since the Unix epoch, so `max()` and ordering are exact.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    Claim, ClaimError, Claimed, Fence, FenceError, JobControl, JobCursor, Ledger, LiveNode, RunCursor, RunRecord,
    SkipIfRunning, TermRecord, TriggerRecord, clean_text,
};
use crate::leadership::Term;
use crate::model::{RunOutcome, RunStatus, Trigger};

/// The SQLite ledger. Pauses and triggers wake the scheduler through an in-process channel.
#[derive(Debug, Clone)]
pub struct Sqlite {
    pool: SqlitePool,
    controls: broadcast::Sender<()>,
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
        Ok(Sqlite { pool, controls: broadcast::channel(16).0 })
    }

    fn notify_controls(&self) {
        let _ = self.controls.send(());
    }
}

fn micros(instant: DateTime<Utc>) -> i64 {
    instant.timestamp_micros()
}

fn instant(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn optional_instant(micros: Option<i64>) -> Option<DateTime<Utc>> {
    micros.map(instant)
}

const RUN_COLUMNS: &str = "id, job, slot, trigger, term, node, config_hash, status, attempt, claimed_at, \
     started_at, finished_at, exit_code, http_status, error, output";

/// The run columns for lists: no output.
const BRIEF_RUN_COLUMNS: &str = "id, job, slot, trigger, term, node, config_hash, status, attempt, claimed_at, \
     started_at, finished_at, exit_code, http_status, error, '' AS output";

fn run_record(row: &SqliteRow) -> Result<RunRecord, sqlx::Error> {
    Ok(RunRecord {
        id: row.try_get("id")?,
        job: row.try_get("job")?,
        slot: instant(row.try_get("slot")?),
        trigger: row.try_get("trigger")?,
        term: row.try_get("term")?,
        node: row.try_get("node")?,
        config_hash: row.try_get("config_hash")?,
        status: row.try_get("status")?,
        attempt: row.try_get("attempt")?,
        claimed_at: instant(row.try_get("claimed_at")?),
        started_at: optional_instant(row.try_get("started_at")?),
        finished_at: optional_instant(row.try_get("finished_at")?),
        exit_code: row.try_get("exit_code")?,
        http_status: row.try_get("http_status")?,
        error: row.try_get("error")?,
        output: row.try_get("output")?,
    })
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

fn trigger_record(row: &SqliteRow) -> Result<TriggerRecord, sqlx::Error> {
    Ok(TriggerRecord {
        id: row.try_get("id")?,
        job: row.try_get("job")?,
        idempotency_key: row.try_get("idempotency_key")?,
        requested_by: row.try_get("requested_by")?,
        requested_at: instant(row.try_get("requested_at")?),
        run_id: row.try_get("run_id")?,
        handled_at: optional_instant(row.try_get("handled_at")?),
    })
}

#[async_trait]
impl Ledger for Sqlite {
    async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }

    /// SQLite runs in this process: its clock is ours.
    async fn clock(&self) -> Result<DateTime<Utc>, sqlx::Error> {
        Ok(Utc::now())
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
            let row = sqlx::query("SELECT term, cluster_id, node FROM fence WHERE id = 1").fetch_one(&mut *tx).await?;
            return Err(FenceError::Superseded {
                term: term.revision(),
                fence: row.get("term"),
                fence_cluster: row.get("cluster_id"),
                fence_node: row.get("node"),
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
        let row = sqlx::query("SELECT term, cluster_id, node FROM fence WHERE id = 1").fetch_one(&self.pool).await?;
        Ok(Fence { term: row.get("term"), cluster_id: row.get("cluster_id"), node: row.get("node") })
    }

    async fn claim_run(&self, claim: &Claim<'_>) -> Result<Claimed, ClaimError> {
        let mut tx = self.pool.begin().await?;
        // As on PostgreSQL: `forbid` counts runs started and this term's own claims; an older
        // term's claim that never started is taken over.
        let inserted = sqlx::query(
            "INSERT INTO runs (job, slot, trigger, term, node, config_hash, status, claimed_at)
             SELECT ?1, ?2, ?7, ?3, ?4, ?5,
                    CASE WHEN ?6 AND EXISTS (
                        SELECT 1 FROM runs WHERE job = ?1 AND status = 'running'
                          AND (started_at IS NOT NULL OR term = ?3)
                    ) THEN 'skipped' ELSE 'running' END,
                    ?8
             FROM fence WHERE id = 1 AND term <= ?3
             ON CONFLICT (job, slot) DO UPDATE
                 SET term = excluded.term, node = excluded.node, config_hash = excluded.config_hash,
                     status = excluded.status, claimed_at = excluded.claimed_at
                 WHERE runs.status = 'running' AND runs.started_at IS NULL AND runs.term < excluded.term
             RETURNING id, status",
        )
        .bind(claim.job)
        .bind(micros(claim.slot))
        .bind(claim.term.revision())
        .bind(claim.node)
        .bind(claim.config_hash)
        .bind(claim.skip_if_running == SkipIfRunning::Yes)
        .bind(claim.trigger.as_str())
        .bind(micros(claim.claimed_at))
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
            let status: String = row.get("status");
            return Ok(Claimed {
                run_id: row.get("id"),
                status: RunStatus::parse(&status).unwrap_or(RunStatus::Running),
            });
        }
        tx.commit().await?;
        let existing = sqlx::query(
            "SELECT id, term, node, status, started_at IS NULL AS unstarted FROM runs WHERE job = ?1 AND slot = ?2",
        )
        .bind(claim.job)
        .bind(micros(claim.slot))
        .fetch_optional(&self.pool)
        .await?;
        let fence = self.fence().await?;
        match existing {
            Some(row) => {
                let owner_term: i64 = row.get("term");
                let owner_node: String = row.get("node");
                let status: String = row.get("status");
                let unstarted: bool = row.get("unstarted");
                let ours = owner_term == claim.term.revision() && owner_node == claim.node;
                if ours && unstarted && (status == "running" || status == "skipped") {
                    return Ok(Claimed {
                        run_id: row.get("id"),
                        status: RunStatus::parse(&status).unwrap_or(RunStatus::Skipped),
                    });
                }
                if fence.term > claim.term.revision() {
                    return Err(ClaimError::Fenced { term: claim.term.revision(), fence: fence.term });
                }
                Err(ClaimError::AlreadyClaimed { term: owner_term, node: owner_node })
            }
            None => Err(ClaimError::Fenced { term: claim.term.revision(), fence: fence.term }),
        }
    }

    async fn record_slots(
        &self,
        job: &str,
        slots: &[DateTime<Utc>],
        status: RunStatus,
        trigger: Trigger,
        term: &Term,
        node: &str,
        config_hash: &str,
        error: &str,
    ) -> Result<u64, ClaimError> {
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
        sqlx::query(
            "UPDATE runs SET status = ?2, exit_code = ?3, http_status = ?4, error = ?5, output = ?6,
                    finished_at = ?7
             WHERE id = ?1 AND status IN ('running', 'lost')",
        )
        .bind(run_id)
        .bind(outcome.status.as_str())
        .bind(outcome.exit_code)
        .bind(outcome.http_status.map(i32::from))
        .bind(outcome.error.as_deref().map(clean_text))
        .bind(clean_text(&outcome.output))
        .bind(micros(outcome.finished_at))
        .execute(&self.pool)
        .await
        .map(|_| ())
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
            let unstarted: Option<i64> = row.get("unstarted");
            cursors.insert(
                (*job).to_owned(),
                JobCursor { slot: instant(row.get("slot")), unstarted: unstarted.map(instant) },
            );
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
             WHERE status = 'running' AND started_at IS NOT NULL AND term < ?1
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

    async fn run(&self, run_id: i64) -> Result<Option<RunRecord>, sqlx::Error> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| run_record(&row))
            .transpose()
    }

    async fn all_runs(&self) -> Result<Vec<RunRecord>, sqlx::Error> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY slot, job");
        sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?.iter().map(run_record).collect()
    }

    async fn prune_runs(&self, before: DateTime<Utc>, batch: i64) -> Result<u64, sqlx::Error> {
        let result = sqlx::query(
            "DELETE FROM runs WHERE id IN (
                 SELECT r.id FROM runs r
                 WHERE r.slot < ?1 AND r.status <> 'running'
                   AND r.slot < (SELECT max(slot) FROM runs newest WHERE newest.job = r.job)
                 LIMIT ?2
             )",
        )
        .bind(micros(before))
        .bind(batch)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn set_paused(&self, job: &str, paused: bool, by: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO job_controls (job, paused, updated_by, updated_at, resumed_at)
             VALUES (?1, ?2, ?3, ?4, CASE WHEN ?2 THEN NULL ELSE ?4 END)
             ON CONFLICT (job) DO UPDATE SET paused = ?2, updated_by = ?3, updated_at = ?4,
                 resumed_at = CASE WHEN job_controls.paused AND NOT ?2 THEN ?4 ELSE job_controls.resumed_at END",
        )
        .bind(job)
        .bind(paused)
        .bind(by)
        .bind(micros(Utc::now()))
        .execute(&self.pool)
        .await?;
        self.notify_controls();
        Ok(())
    }

    async fn job_controls(&self) -> Result<HashMap<String, JobControl>, sqlx::Error> {
        let rows = sqlx::query("SELECT job, paused, resumed_at FROM job_controls").fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let control =
                    JobControl { paused: row.get("paused"), resumed_at: optional_instant(row.get("resumed_at")) };
                (row.get("job"), control)
            })
            .collect())
    }

    async fn job_runs(
        &self,
        job: &str,
        status: Option<RunStatus>,
        before: Option<RunCursor>,
        limit: i64,
    ) -> Result<Vec<RunRecord>, sqlx::Error> {
        let sql = format!(
            "SELECT {BRIEF_RUN_COLUMNS} FROM runs WHERE job = ?1 AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR slot < ?3 OR (slot = ?3 AND id < ?4))
             ORDER BY slot DESC, id DESC LIMIT ?5"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(job)
            .bind(status.map(RunStatus::as_str))
            .bind(before.map(|cursor| micros(cursor.slot)))
            .bind(before.map_or(0, |cursor| cursor.id))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(run_record)
            .collect()
    }

    async fn recent_runs(&self, jobs: &[String], per_job: i64) -> Result<HashMap<String, Vec<RunRecord>>, sqlx::Error> {
        let mut by_job = HashMap::new();
        for job in jobs {
            let runs = self.job_runs(job, None, None, per_job).await?;
            if !runs.is_empty() {
                by_job.insert(job.clone(), runs);
            }
        }
        Ok(by_job)
    }

    async fn update_output(&self, run_id: i64, output: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE runs SET output = ?2 WHERE id = ?1 AND status = 'running'")
            .bind(run_id)
            .bind(clean_text(output))
            .execute(&self.pool)
            .await?;
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

    async fn request_trigger(
        &self,
        job: &str,
        idempotency_key: &str,
        by: &str,
        requested_at: DateTime<Utc>,
    ) -> Result<TriggerRecord, sqlx::Error> {
        sqlx::query(
            "INSERT INTO triggers (job, idempotency_key, requested_by, requested_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (job, idempotency_key) DO NOTHING",
        )
        .bind(job)
        .bind(idempotency_key)
        .bind(by)
        .bind(micros(requested_at))
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(
            "SELECT id, job, idempotency_key, requested_by, requested_at, run_id, handled_at
             FROM triggers WHERE job = ?1 AND idempotency_key = ?2",
        )
        .bind(job)
        .bind(idempotency_key)
        .fetch_one(&self.pool)
        .await?;
        self.notify_controls();
        trigger_record(&row)
    }

    async fn pending_triggers(&self) -> Result<Vec<TriggerRecord>, sqlx::Error> {
        sqlx::query(
            "SELECT t.id, t.job, t.idempotency_key, t.requested_by, t.requested_at, t.run_id, t.handled_at
             FROM triggers t LEFT JOIN runs r ON r.id = t.run_id
             WHERE t.handled_at IS NULL OR (r.status = 'running' AND r.started_at IS NULL)
             ORDER BY t.requested_at, t.id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(trigger_record)
        .collect()
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

    async fn terms(&self) -> Result<Vec<TermRecord>, sqlx::Error> {
        let rows = sqlx::query("SELECT term, cluster_id, node, started_at, last_seen_at FROM terms ORDER BY term")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|row| term_record(&row)).collect())
    }

    async fn recent_terms(&self, limit: i64) -> Result<Vec<TermRecord>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT term, cluster_id, node, started_at, last_seen_at FROM terms
             ORDER BY term DESC LIMIT ?1) newest ORDER BY term",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|row| term_record(&row)).collect())
    }
}

fn term_record(row: &SqliteRow) -> TermRecord {
    TermRecord {
        term: row.get("term"),
        cluster_id: row.get("cluster_id"),
        node: row.get("node"),
        started_at: instant(row.get("started_at")),
        last_seen_at: optional_instant(row.get("last_seen_at")),
    }
}
