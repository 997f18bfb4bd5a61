//! The SQLite ledger's read side (`tenure dev`): what the dashboard and the API read and the
//! operator controls they record. The same pool as the write side: SQLite has one connection.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::Sqlite;
use super::access::insert_audit;
use crate::config::Concurrency;
use crate::model::{Control, RunStatus};
use crate::store::common::{self, micros, run_columns};
use crate::store::outbox;
use crate::store::{
    AuditRecord, BackfillRecord, CancelAnswer, JobControl, JobState, LedgerReads, NotificationRecord, RunCursor,
    RunRecord, TermRecord, TriggerRecord, TriggerRequest, clean_text,
};

#[async_trait]
impl LedgerReads for Sqlite {
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
        let names = serde_json::to_string(jobs).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            common::run_columns!(brief),
            " FROM runs WHERE job IN (SELECT value FROM json_each($1)) AND slot = $2 ORDER BY job"
        ))
        .bind(names)
        .bind(micros(slot))
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
        // One statement per case, each read off `(job, slot)` or `(job, status, slot)` backwards
        // from the cursor (see the PostgreSQL ledger).
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
            (None, Some(cursor)) => sqlx::query(page!("AND slot < $3")).bind(job).bind(limit).bind(micros(cursor.slot)),
            (Some(status), None) => sqlx::query(page!("AND status = $3")).bind(job).bind(limit).bind(status.as_str()),
            (Some(status), Some(cursor)) => sqlx::query(page!("AND status = $3 AND slot < $4"))
                .bind(job)
                .bind(limit)
                .bind(status.as_str())
                .bind(micros(cursor.slot)),
        };
        query.fetch_all(&self.pool).await?.iter().map(common::run_record).collect()
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

    async fn job_controls(&self) -> Result<HashMap<String, JobControl>, sqlx::Error> {
        self.read_job_controls().await
    }

    async fn job_states(
        &self,
        jobs: &[String],
        since: DateTime<Utc>,
        late: std::time::Duration,
    ) -> Result<HashMap<String, JobState>, sqlx::Error> {
        let names = serde_json::to_string(jobs).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        let rows = sqlx::query(
            "SELECT j.value AS job,
               (SELECT status FROM runs WHERE job = j.value AND status NOT IN ('running', 'skipped')
                 ORDER BY slot DESC, id DESC LIMIT 1) AS last,
               EXISTS (SELECT 1 FROM runs WHERE job = j.value AND status = 'running') AS running,
               EXISTS (SELECT 1 FROM runs WHERE job = j.value AND status = 'missed' AND slot >= ?2)
               OR EXISTS (SELECT 1 FROM (SELECT began_at, planned_at FROM runs
                   WHERE job = j.value AND slot >= ?2 ORDER BY slot DESC, id DESC LIMIT ?4)
                 WHERE began_at - COALESCE(planned_at, 0) > ?3) AS late_or_missed
             FROM json_each(?1) AS j",
        )
        .bind(names)
        .bind(micros(since))
        .bind(late.as_micros().min(i64::MAX as u128) as i64)
        .bind(crate::store::LATE_WINDOW)
        .fetch_all(&self.pool)
        .await?;
        common::job_states(&rows)
    }

    async fn set_control(&self, job: &str, control: Control, audit: &AuditRecord) -> Result<(), sqlx::Error> {
        let paused = control == Control::Pause;
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO job_controls (job, paused, updated_by, updated_at, resumed_at)
             VALUES (?1, ?2, ?3, ?4, CASE WHEN ?2 THEN NULL ELSE ?4 END)
             ON CONFLICT (job) DO UPDATE SET paused = ?2, updated_by = ?3, updated_at = ?4,
                 resumed_at = CASE WHEN job_controls.paused AND NOT ?2 THEN ?4 ELSE job_controls.resumed_at END",
        )
        .bind(job)
        .bind(paused)
        .bind(&audit.who)
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.notify_controls();
        Ok(())
    }

    async fn request_trigger(
        &self,
        request: &TriggerRequest<'_>,
        audit: &AuditRecord,
    ) -> Result<TriggerRecord, sqlx::Error> {
        let TriggerRequest { job, idempotency_key, by, requested_at, overrides } = *request;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO triggers (job, idempotency_key, requested_by, requested_at, env, reason, concurrency, cascade)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (job, idempotency_key) DO NOTHING",
        )
        .bind(job)
        .bind(idempotency_key)
        .bind(by)
        .bind(micros(requested_at))
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
        tx.commit().await?;
        self.notify_controls();
        common::trigger_record(&row)
    }

    async fn cancel_run(&self, run_id: i64, reason: &str, audit: &AuditRecord) -> Result<CancelAnswer, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE runs SET cancel_reason = COALESCE(cancel_reason, ?2)
             WHERE id = ?1 AND status = 'running'
             RETURNING job",
        )
        .bind(run_id)
        .bind(clean_text(reason))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            let job = row.try_get("job")?;
            insert_audit(&mut tx, audit).await?;
            tx.commit().await?;
            self.notify_controls();
            return Ok(CancelAnswer::Asked { job });
        }
        let status = sqlx::query("SELECT status FROM runs WHERE id = ?1").bind(run_id).fetch_optional(&mut *tx).await?;
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
        let mut unheld = Vec::new();
        // One connection, one process: a statement per slot is what SQLite does best anyway.
        for slot in slots {
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE job = ?1 AND slot = ?2)
                     OR EXISTS (SELECT 1 FROM backfill_slots WHERE job = ?1 AND slot = ?2)",
            )
            .bind(job)
            .bind(micros(*slot))
            .fetch_one(&self.pool)
            .await?;
            if !held {
                unheld.push(*slot);
            }
        }
        Ok(unheld)
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
            "INSERT INTO backfills (job, from_slot, to_slot, requested_by, requested_at, slots, cascade)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6) RETURNING id",
        )
        .bind(job)
        .bind(micros(from))
        .bind(micros(to))
        .bind(&audit.who)
        .bind(micros(Utc::now()))
        .bind(cascade)
        .fetch_one(&mut *tx)
        .await?;
        let mut queued = 0;
        for slot in slots {
            queued += sqlx::query(
                "INSERT INTO backfill_slots (backfill_id, job, slot)
                 SELECT ?1, ?2, ?3 WHERE NOT EXISTS (SELECT 1 FROM runs WHERE job = ?2 AND slot = ?3)
                 ON CONFLICT (job, slot) DO NOTHING",
            )
            .bind(id)
            .bind(job)
            .bind(micros(*slot))
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
        }
        sqlx::query("UPDATE backfills SET slots = ?2 WHERE id = ?1").bind(id).bind(queued).execute(&mut *tx).await?;
        let audit = AuditRecord { target: Some(format!("backfill {id}")), ..audit.clone() };
        insert_audit(&mut tx, &audit).await?;
        let row = sqlx::query(common::backfill_progress!("WHERE b.id = $1")).bind(id).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        self.notify_controls();
        common::backfill_record(&row)
    }

    async fn backfill(&self, id: i64) -> Result<Option<BackfillRecord>, sqlx::Error> {
        let row =
            sqlx::query(common::backfill_progress!("WHERE b.id = $1")).bind(id).fetch_optional(&self.pool).await?;
        row.map(|row| common::backfill_record(&row)).transpose()
    }

    async fn backfills(&self, job: Option<&str>, limit: i64) -> Result<Vec<BackfillRecord>, sqlx::Error> {
        sqlx::query(common::backfill_progress!("WHERE ($1 IS NULL OR b.job = $1) ORDER BY b.id DESC LIMIT $2"))
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
