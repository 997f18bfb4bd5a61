//! The PostgreSQL ledger's read side: what the dashboard and the API read and the operator
//! controls they record, on the read pool (`connect_reads`).

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::Postgres;
use super::access::insert_audit;
use crate::config::Concurrency;
use crate::model::{Control, RunStatus};
use crate::store::common::{self, run_columns};
use crate::store::outbox;
use crate::store::{
    AuditRecord, BackfillRecord, CONTROL_CHANNEL, CancelAnswer, JobControl, JobState, LedgerReads, NotificationRecord,
    RunCursor, RunRecord, TermRecord, TriggerRecord, TriggerRequest, clean_text,
};

#[async_trait]
impl LedgerReads for Postgres {
    async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }

    async fn run(&self, run_id: i64) -> Result<Option<RunRecord>, sqlx::Error> {
        let row = sqlx::query(common::RUN).bind(run_id).fetch_optional(&self.pool).await?;
        row.map(|row| common::run_record(&row)).transpose()
    }

    async fn slot_runs(&self, jobs: &[String], slot: DateTime<Utc>) -> Result<Vec<RunRecord>, sqlx::Error> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(concat!(
            "SELECT ",
            common::run_columns!(brief),
            " FROM runs WHERE job = ANY($1) AND slot = $2 ORDER BY job"
        ))
        .bind(jobs)
        .bind(slot)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(common::run_record).collect()
    }

    async fn run_notifications(&self, run_id: i64) -> Result<Vec<NotificationRecord>, sqlx::Error> {
        let rows = sqlx::query(outbox::RUN_NOTIFICATIONS).bind(run_id).fetch_all(&self.pool).await?;
        rows.iter().map(outbox::notification_record).collect()
    }

    async fn job_runs(
        &self,
        job: &str,
        status: Option<RunStatus>,
        before: Option<RunCursor>,
        limit: i64,
    ) -> Result<Vec<RunRecord>, sqlx::Error> {
        // Keyset pagination, one statement per case so that every plan, generic ones included,
        // has the job, the status and the cursor as index conditions: `runs_job_slot_key`
        // (job, slot) or `runs_job_status_slot` (job, status, slot), read backwards from the
        // cursor, as fast on page 1,000 as on 1. A job has one row per slot, so the slot alone
        // orders its rows and places the cursor.
        macro_rules! page {
            ($filter:literal) => {
                concat!(
                    "SELECT ",
                    run_columns!(brief),
                    " FROM runs WHERE job = $1 ",
                    $filter,
                    " ORDER BY slot DESC LIMIT $2"
                )
            };
        }
        let query = match (status, before) {
            (None, None) => sqlx::query(page!("")).bind(job).bind(limit),
            (None, Some(cursor)) => sqlx::query(page!("AND slot < $3")).bind(job).bind(limit).bind(cursor.slot),
            (Some(status), None) => sqlx::query(page!("AND status = $3")).bind(job).bind(limit).bind(status.as_str()),
            (Some(status), Some(cursor)) => sqlx::query(page!("AND status = $3 AND slot < $4"))
                .bind(job)
                .bind(limit)
                .bind(status.as_str())
                .bind(cursor.slot),
        };
        query.fetch_all(&self.pool).await?.iter().map(common::run_record).collect()
    }

    async fn recent_runs(&self, jobs: &[String], per_job: i64) -> Result<HashMap<String, Vec<RunRecord>>, sqlx::Error> {
        let rows = sqlx::query(concat!(
            "SELECT r.* FROM unnest($1::text[]) AS j(name) CROSS JOIN LATERAL (SELECT ",
            run_columns!(brief),
            " FROM runs WHERE runs.job = j.name ORDER BY slot DESC LIMIT $2) r"
        ))
        .bind(jobs)
        .bind(per_job)
        .fetch_all(&self.pool)
        .await?;
        let mut by_job: HashMap<String, Vec<RunRecord>> = HashMap::new();
        for row in &rows {
            let run = common::run_record(row)?;
            by_job.entry(run.job.clone()).or_default().push(run);
        }
        Ok(by_job)
    }

    async fn job_controls(&self) -> Result<HashMap<String, JobControl>, sqlx::Error> {
        self.read_job_controls().await
    }

    async fn job_states(
        &self,
        jobs: &[String],
        since: DateTime<Utc>,
        late: std::time::Duration,
    ) -> Result<HashMap<String, JobState>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT j.name AS job,
               (SELECT status FROM runs WHERE job = j.name AND status NOT IN ('running', 'skipped')
                 ORDER BY slot DESC, id DESC LIMIT 1) AS last,
               EXISTS (SELECT 1 FROM runs WHERE job = j.name AND status = 'running') AS running,
               EXISTS (SELECT 1 FROM runs WHERE job = j.name AND status = 'missed' AND slot >= $2)
               OR EXISTS (SELECT 1 FROM (SELECT began_at, planned_at FROM runs
                   WHERE job = j.name AND slot >= $2 ORDER BY slot DESC, id DESC LIMIT $4) recent
                 WHERE began_at - planned_at > $3 * interval '1 microsecond') AS late_or_missed
             FROM unnest($1::text[]) AS j(name)",
        )
        .bind(jobs)
        .bind(since)
        .bind(late.as_micros().min(i64::MAX as u128) as i64)
        .bind(crate::store::LATE_WINDOW)
        .fetch_all(&self.pool)
        .await?;
        common::job_states(&rows)
    }

    async fn set_control(&self, job: &str, control: Control, audit: &AuditRecord) -> Result<(), sqlx::Error> {
        let paused = control == Control::Pause;
        let mut tx = self.pool.begin().await?;
        // A resume that ends a pause records when, by the database's clock (every leader's agrees
        // with it within the allowed skew).
        sqlx::query(
            "INSERT INTO job_controls (job, paused, updated_by, updated_at, resumed_at)
             VALUES ($1, $2, $3, now(), CASE WHEN $2 THEN NULL ELSE now() END)
             ON CONFLICT (job) DO UPDATE SET paused = $2, updated_by = $3, updated_at = now(),
                 resumed_at = CASE WHEN job_controls.paused AND NOT $2 THEN now()
                                   ELSE job_controls.resumed_at END",
        )
        .bind(job)
        .bind(paused)
        .bind(&audit.who)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        sqlx::query("SELECT pg_notify($1, $2)").bind(CONTROL_CHANNEL).bind(job).execute(&mut *tx).await?;
        tx.commit().await
    }

    /// Returns the trigger, new or the one already recorded under `idempotency_key`.
    async fn request_trigger(
        &self,
        request: &TriggerRequest<'_>,
        audit: &AuditRecord,
    ) -> Result<TriggerRecord, sqlx::Error> {
        let TriggerRequest { job, idempotency_key, by, requested_at, overrides } = *request;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO triggers (job, idempotency_key, requested_by, requested_at, env, reason, concurrency, cascade)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (job, idempotency_key) DO NOTHING",
        )
        .bind(job)
        .bind(idempotency_key)
        .bind(by)
        .bind(requested_at)
        .bind(common::env_json(&overrides.env))
        .bind(overrides.reason.as_deref().map(clean_text))
        .bind(overrides.concurrency.map(Concurrency::as_str))
        .bind(overrides.cascade)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            insert_audit(&mut tx, audit).await?;
        }
        let row = sqlx::query(common::TRIGGER_BY_KEY).bind(job).bind(idempotency_key).fetch_one(&mut *tx).await?;
        sqlx::query("SELECT pg_notify($1, $2)").bind(CONTROL_CHANNEL).bind(job).execute(&mut *tx).await?;
        tx.commit().await?;
        common::trigger_record(&row)
    }

    async fn cancel_run(&self, run_id: i64, reason: &str, audit: &AuditRecord) -> Result<CancelAnswer, sqlx::Error> {
        // The request, its audit entry and the leader's wake-up commit together; a second
        // request keeps the first one's reason.
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "WITH asked AS (
                 UPDATE runs SET cancel_reason = COALESCE(cancel_reason, $2)
                 WHERE id = $1 AND status = 'running'
                 RETURNING job
             )
             SELECT job, pg_notify($3, job) FROM asked",
        )
        .bind(run_id)
        .bind(clean_text(reason))
        .bind(CONTROL_CHANNEL)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            insert_audit(&mut tx, audit).await?;
            tx.commit().await?;
            return Ok(CancelAnswer::Asked { job: row.try_get("job")? });
        }
        let status = sqlx::query("SELECT status FROM runs WHERE id = $1").bind(run_id).fetch_optional(&mut *tx).await?;
        Ok(match status {
            Some(row) => CancelAnswer::Ended(common::status(&row, "status")?),
            None => CancelAnswer::NoSuchRun,
        })
    }

    async fn trigger_of_run(&self, run_id: i64) -> Result<Option<TriggerRecord>, sqlx::Error> {
        let row = sqlx::query(common::TRIGGER_OF_RUN).bind(run_id).fetch_optional(&self.pool).await?;
        row.map(|row| common::trigger_record(&row)).transpose()
    }

    async fn unheld_slots(&self, job: &str, slots: &[DateTime<Utc>]) -> Result<Vec<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT s FROM unnest($2::timestamptz[]) AS s
             WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.job = $1 AND r.slot = s)
               AND NOT EXISTS (SELECT 1 FROM backfill_slots q WHERE q.job = $1 AND q.slot = s)
             ORDER BY s",
        )
        .bind(job)
        .bind(slots)
        .fetch_all(&self.pool)
        .await
    }

    async fn request_backfill(
        &self,
        job: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        slots: &[DateTime<Utc>],
        audit: &AuditRecord,
        cascade: bool,
    ) -> Result<BackfillRecord, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO backfills (job, from_slot, to_slot, requested_by, slots, cascade) VALUES ($1, $2, $3, $4, 0, $5)
             RETURNING id",
        )
        .bind(job)
        .bind(from)
        .bind(to)
        .bind(&audit.who)
        .bind(cascade)
        .fetch_one(&mut *tx)
        .await?;
        // The slots the ledger holds, or another backfill queued, stay theirs: nothing twice.
        let queued = sqlx::query(
            "INSERT INTO backfill_slots (backfill_id, job, slot)
             SELECT $1, $2, s FROM unnest($3::timestamptz[]) AS s
             WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.job = $2 AND r.slot = s)
             ON CONFLICT (job, slot) DO NOTHING",
        )
        .bind(id)
        .bind(job)
        .bind(slots)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("UPDATE backfills SET slots = $2 WHERE id = $1")
            .bind(id)
            .bind(queued as i64)
            .execute(&mut *tx)
            .await?;
        let audit = AuditRecord { target: Some(format!("backfill {id}")), ..audit.clone() };
        insert_audit(&mut tx, &audit).await?;
        sqlx::query("SELECT pg_notify($1, $2)").bind(CONTROL_CHANNEL).bind(job).execute(&mut *tx).await?;
        let row = sqlx::query(common::backfill_progress!("WHERE b.id = $1")).bind(id).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        common::backfill_record(&row)
    }

    async fn backfill(&self, id: i64) -> Result<Option<BackfillRecord>, sqlx::Error> {
        let row =
            sqlx::query(common::backfill_progress!("WHERE b.id = $1")).bind(id).fetch_optional(&self.pool).await?;
        row.map(|row| common::backfill_record(&row)).transpose()
    }

    async fn backfills(&self, job: Option<&str>, limit: i64) -> Result<Vec<BackfillRecord>, sqlx::Error> {
        sqlx::query(common::backfill_progress!("WHERE ($1::text IS NULL OR b.job = $1) ORDER BY b.id DESC LIMIT $2"))
            .bind(job)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(common::backfill_record)
            .collect()
    }

    async fn replica_loads(&self) -> Result<Vec<crate::store::ReplicaLoad>, sqlx::Error> {
        sqlx::query(crate::store::execution::REPLICA_LOADS)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(crate::store::execution::replica_load)
            .collect()
    }

    async fn recent_terms(&self, limit: i64) -> Result<Vec<TermRecord>, sqlx::Error> {
        sqlx::query(common::RECENT_TERMS)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(common::term_record)
            .collect()
    }

    async fn all_runs(&self) -> Result<Vec<RunRecord>, sqlx::Error> {
        sqlx::query(common::ALL_RUNS).fetch_all(&self.pool).await?.iter().map(common::run_record).collect()
    }

    async fn terms(&self) -> Result<Vec<TermRecord>, sqlx::Error> {
        sqlx::query(common::ALL_TERMS).fetch_all(&self.pool).await?.iter().map(common::term_record).collect()
    }
}
