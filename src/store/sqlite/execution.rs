//! Execution across replicas on SQLite (see `store::execution`): `tenure dev`, whose one replica
//! is both leader and executor. SQLite runs in this process, so the database's clock is ours;
//! instants are integer microseconds.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::Row;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Sqlite;
use crate::leadership::Term;
use crate::model::RunOutcome;
use crate::store::common::micros;
use crate::store::execution::{
    AssignedRun, Assignment, ExecutionKey, Executions, ExpiredExecution, GiveUp, REPLACED, Renewal, ReplicaLoad,
    ReplicaOffer, assigned_run, expired_execution, give_up_reason, join_tags, replica_load,
};
use crate::store::{ClaimError, clean_text};

fn micros_of(duration: Duration) -> i64 {
    duration.as_micros().min(i64::MAX as u128) as i64
}

/// Microseconds now: SQLite's clock is this process's.
fn now() -> i64 {
    micros(Utc::now())
}

impl Sqlite {
    async fn fenced(&self, term: &Term) -> Result<(), ClaimError> {
        let fence: i64 = sqlx::query("SELECT term FROM fence WHERE id = 1").fetch_one(&self.pool).await?.get("term");
        if fence > term.revision() {
            return Err(ClaimError::Fenced { term: term.revision(), fence });
        }
        Ok(())
    }

    fn wake_executors(&self) {
        let _ = self.assignments.send(());
    }
}

#[async_trait]
impl Executions for Sqlite {
    async fn advertise(&self, offer: &ReplicaOffer) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO replicas (node, tags, max_runs, last_seen) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (node) DO UPDATE SET tags = excluded.tags, max_runs = excluded.max_runs,
                                              last_seen = excluded.last_seen",
        )
        .bind(&offer.node)
        .bind(join_tags(&offer.tags))
        .bind(i64::from(offer.max_runs))
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn withdraw(&self, node: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM replicas WHERE node = ?1").bind(node).execute(&self.pool).await?;
        Ok(())
    }

    async fn live_replicas(&self, within: Duration) -> Result<Vec<ReplicaLoad>, sqlx::Error> {
        sqlx::query(
            "SELECT p.node, p.tags, p.max_runs, p.last_seen,
                    (SELECT count(*) FROM runs r WHERE r.status = 'running' AND r.executor = p.node) AS load
             FROM replicas p WHERE p.last_seen > ?1 ORDER BY p.node",
        )
        .bind(now() - micros_of(within))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(replica_load)
        .collect()
    }

    async fn assign_runs(
        &self,
        term: &Term,
        runs: &[Assignment],
        accept_within: Duration,
    ) -> Result<Vec<bool>, ClaimError> {
        let mut tx = self.pool.begin().await?;
        let fence: i64 = sqlx::query("SELECT term FROM fence WHERE id = 1").fetch_one(&mut *tx).await?.get("term");
        if fence > term.revision() {
            return Err(ClaimError::Fenced { term: term.revision(), fence });
        }
        let lease_until = now() + micros_of(accept_within);
        let mut assigned = Vec::with_capacity(runs.len());
        for run in runs {
            let updated = sqlx::query(
                "UPDATE runs SET executor = ?4,
                        accepted = CASE WHEN started_at IS NULL THEN 0 ELSE accepted END,
                        lease_until = CASE WHEN started_at IS NULL THEN ?5 ELSE lease_until END,
                        started_at = ?3
                 WHERE id = ?1 AND term = ?2 AND status = 'running'
                   AND (started_at IS NULL OR (started_at = ?3 AND executor = ?4 AND attempt = 1))",
            )
            .bind(run.run_id)
            .bind(term.revision())
            .bind(micros(run.started_at))
            .bind(&run.executor)
            .bind(lease_until)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            assigned.push(updated == 1);
        }
        tx.commit().await?;
        self.wake_executors();
        Ok(assigned)
    }

    async fn assigned_to(&self, node: &str) -> Result<Vec<AssignedRun>, sqlx::Error> {
        sqlx::query(
            "SELECT id, attempt, executor, job, slot, COALESCE(planned_at, slot) AS planned_at, term, trigger FROM runs
             WHERE executor = ?1 AND status = 'running' AND NOT accepted AND NOT cancel_requested ORDER BY id",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(assigned_run)
        .collect()
    }

    async fn ended_slot_runs(
        &self,
        jobs: &[String],
        slot: chrono::DateTime<Utc>,
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let names = serde_json::to_string(jobs).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        sqlx::query_as(
            "SELECT job, id FROM runs
             WHERE job IN (SELECT value FROM json_each(?1)) AND slot = ?2 AND status <> 'running'",
        )
        .bind(names)
        .bind(micros(slot))
        .fetch_all(&self.pool)
        .await
    }

    async fn accept_execution(
        &self,
        key: &ExecutionKey,
        lease: Duration,
        max_runs: u32,
    ) -> Result<Option<AssignedRun>, sqlx::Error> {
        let row = sqlx::query(
            "UPDATE runs SET accepted = 1, lease_until = ?4
             WHERE id = ?1 AND attempt = ?2 AND executor = ?3 AND status = 'running'
               AND NOT accepted AND NOT cancel_requested
               AND (SELECT count(*) FROM runs o WHERE o.executor = ?3 AND o.status = 'running' AND o.accepted) < ?5
             RETURNING id, attempt, executor, job, slot, COALESCE(planned_at, slot) AS planned_at, term, trigger",
        )
        .bind(key.run_id)
        .bind(key.attempt)
        .bind(&key.executor)
        .bind(now() + micros_of(lease))
        .bind(i64::from(max_runs))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(assigned_run).transpose()
    }

    async fn renew_execution(&self, key: &ExecutionKey, lease: Duration, output: &str) -> Result<Renewal, sqlx::Error> {
        let renewed = sqlx::query(
            "UPDATE runs SET lease_until = ?4, output = ?5
             WHERE id = ?1 AND attempt = ?2 AND executor = ?3 AND status = 'running' AND accepted
               AND NOT cancel_requested",
        )
        .bind(key.run_id)
        .bind(key.attempt)
        .bind(&key.executor)
        .bind(now() + micros_of(lease))
        .bind(clean_text(output))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if renewed == 1 {
            return Ok(Renewal::Renewed);
        }
        // Asked to stop (`replace`, an operator's cancel): with what the run is to be recorded.
        let cancelled: Option<(bool, Option<String>)> = sqlx::query_as(
            "SELECT cancel_requested, cancel_reason FROM runs
             WHERE id = ?1 AND attempt = ?2 AND executor = ?3 AND status = 'running' AND accepted",
        )
        .bind(key.run_id)
        .bind(key.attempt)
        .bind(&key.executor)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match cancelled {
            Some((true, reason)) => Renewal::CancelRequested { reason: reason.unwrap_or_else(|| REPLACED.to_owned()) },
            _ => Renewal::Refused,
        })
    }

    async fn retry_execution(
        &self,
        key: &ExecutionKey,
        previous_error: &str,
        lease: Duration,
    ) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query(
            "UPDATE runs SET attempt = attempt + 1, error = ?4, started_at = ?5, lease_until = ?6,
                    exit_code = NULL, http_status = NULL
             WHERE id = ?1 AND attempt = ?2 AND executor = ?3 AND status = 'running' AND accepted
               AND NOT cancel_requested",
        )
        .bind(key.run_id)
        .bind(key.attempt)
        .bind(&key.executor)
        .bind(clean_text(previous_error))
        .bind(now())
        .bind(now() + micros_of(lease))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn finish_execution(&self, key: &ExecutionKey, outcome: &RunOutcome) -> Result<bool, sqlx::Error> {
        let query = sqlx::query(
            "UPDATE runs SET status = ?4, exit_code = ?5, http_status = ?6, error = ?7, output = ?8, finished_at = ?9,
                    began_at = ?10
             WHERE id = ?1 AND attempt = ?2 AND executor = ?3 AND status = 'running' AND accepted",
        )
        .bind(key.run_id)
        .bind(key.attempt)
        .bind(&key.executor);
        let updated = super::bind_outcome(query, outcome).execute(&self.pool).await?.rows_affected();
        Ok(updated == 1)
    }

    async fn expired_executions(&self, grace: Duration, limit: i64) -> Result<Vec<ExpiredExecution>, sqlx::Error> {
        sqlx::query(
            "SELECT id, attempt, executor, job, accepted, cancel_requested FROM runs
             WHERE status = 'running' AND executor IS NOT NULL AND lease_until < ?1
             ORDER BY lease_until LIMIT ?2",
        )
        .bind(now() - micros_of(grace))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(expired_execution)
        .collect()
    }

    async fn give_up_execution(
        &self,
        term: &Term,
        expired: &ExpiredExecution,
        then: &GiveUp,
        grace: Duration,
        accept_within: Duration,
    ) -> Result<bool, ClaimError> {
        let key = &expired.key;
        let why = give_up_reason(expired);
        let now = now();
        let changed = match then {
            GiveUp::End => sqlx::query(
                "UPDATE runs SET status = CASE WHEN cancel_requested THEN 'killed' ELSE 'lost' END,
                        finished_at = ?5,
                        error = CASE WHEN cancel_requested THEN COALESCE(cancel_reason, ?6) ELSE ?6 END
                 WHERE id = ?2 AND attempt = ?3 AND executor = ?4 AND status = 'running' AND lease_until < ?7
                   AND (SELECT term FROM fence WHERE id = 1) <= ?1",
            )
            .bind(term.revision())
            .bind(key.run_id)
            .bind(key.attempt)
            .bind(&key.executor)
            .bind(now)
            .bind(why)
            .bind(now - micros_of(grace))
            .execute(&self.pool)
            .await?
            .rows_affected(),
            GiveUp::RetryOn(next) => sqlx::query(
                "UPDATE runs SET attempt = attempt + 1, executor = ?8, accepted = 0, lease_until = ?9,
                        started_at = ?5, error = 'attempt ' || attempt || ': ' || ?6, output = ''
                 WHERE id = ?2 AND attempt = ?3 AND executor = ?4 AND status = 'running' AND NOT cancel_requested
                   AND lease_until < ?7 AND (SELECT term FROM fence WHERE id = 1) <= ?1",
            )
            .bind(term.revision())
            .bind(key.run_id)
            .bind(key.attempt)
            .bind(&key.executor)
            .bind(now)
            .bind(why)
            .bind(now - micros_of(grace))
            .bind(next)
            .bind(now + micros_of(accept_within))
            .execute(&self.pool)
            .await?
            .rows_affected(),
        };
        if changed == 1 {
            self.wake_executors();
            return Ok(true);
        }
        self.fenced(term).await?;
        Ok(false)
    }

    async fn request_cancel(&self, term: &Term, job: &str, except: i64) -> Result<u64, ClaimError> {
        let asked = sqlx::query(
            "UPDATE runs SET cancel_requested = 1, cancel_reason = COALESCE(cancel_reason, ?4)
             WHERE job = ?2 AND id <> ?3 AND status = 'running' AND executor IS NOT NULL AND NOT cancel_requested
               AND (SELECT term FROM fence WHERE id = 1) <= ?1",
        )
        .bind(term.revision())
        .bind(job)
        .bind(except)
        .bind(REPLACED)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if asked == 0 {
            self.fenced(term).await?;
        }
        Ok(asked)
    }

    async fn executions_going(&self, job: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM runs WHERE job = ?1 AND status = 'running' AND executor IS NOT NULL")
            .bind(job)
            .fetch_one(&self.pool)
            .await
    }

    /// One process: assignments wake the executor through an in-process channel.
    async fn listen_assignments(&self, _node: &str, wake: mpsc::Sender<()>, stop: CancellationToken) {
        let mut assignments = self.assignments.subscribe();
        let _ = wake.try_send(());
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                received = assignments.recv() => match received {
                    Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => { let _ = wake.try_send(()); }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}
