//! Execution across replicas on PostgreSQL (see `store::execution`). Durations are bound as
//! seconds and added to the database's `now()`: every lease is measured on the database's clock.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Postgres;
use crate::leadership::Term;
use crate::model::RunOutcome;
use crate::store::execution::{
    ASSIGNMENT_CHANNEL, AssignedRun, Assignment, ExecutionKey, Executions, ExpiredExecution, GiveUp, REPLACED, Renewal,
    ReplicaLoad, ReplicaOffer, assigned_run, expired_execution, give_up_reason, join_tags, replica_load,
};
use crate::store::{ClaimError, clean_text};

impl Postgres {
    /// `Fenced` when a newer term holds the fence, else `Ok(false)`: the row changed meanwhile.
    async fn refused_unless_fenced(&self, term: &Term) -> Result<bool, ClaimError> {
        let fence = crate::store::Ledger::fence(self).await?;
        if fence.term > term.revision() {
            return Err(ClaimError::Fenced { term: term.revision(), fence: fence.term });
        }
        Ok(false)
    }
}

#[async_trait]
impl Executions for Postgres {
    async fn advertise(&self, offer: &ReplicaOffer) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO replicas (node, tags, max_runs, last_seen) VALUES ($1, $2, $3, now())
             ON CONFLICT (node) DO UPDATE SET tags = EXCLUDED.tags, max_runs = EXCLUDED.max_runs, last_seen = now()",
        )
        .bind(&offer.node)
        .bind(join_tags(&offer.tags))
        .bind(offer.max_runs as i32)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn withdraw(&self, node: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM replicas WHERE node = $1").bind(node).execute(&self.pool).await?;
        Ok(())
    }

    async fn live_replicas(&self, within: Duration) -> Result<Vec<ReplicaLoad>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT p.node, p.tags, p.max_runs, p.last_seen,
                    (SELECT count(*) FROM runs r WHERE r.status = 'running' AND r.executor = p.node) AS load
             FROM replicas p WHERE p.last_seen > now() - $1 * interval '1 second' ORDER BY p.node",
        )
        .bind(within.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(replica_load).collect()
    }

    async fn assign_runs(
        &self,
        term: &Term,
        runs: &[Assignment],
        accept_within: Duration,
    ) -> Result<Vec<bool>, ClaimError> {
        let ids: Vec<i64> = runs.iter().map(|run| run.run_id).collect();
        let at: Vec<DateTime<Utc>> = runs.iter().map(|run| run.started_at).collect();
        let executors: Vec<&str> = runs.iter().map(|run| run.executor.as_str()).collect();
        // A retry after a lost acknowledgement (same start, same executor) changes nothing: an
        // acceptance that committed meanwhile stands. Executors are woken at the commit.
        let assigned: Vec<i64> = sqlx::query_scalar(
            "WITH current_fence AS (
                 SELECT term FROM fence WHERE id = 1 AND term <= $1 FOR SHARE
             ), assigned AS (
                 UPDATE runs SET started_at = v.at, executor = v.executor,
                        accepted = CASE WHEN runs.started_at IS NULL THEN false ELSE runs.accepted END,
                        lease_until = CASE WHEN runs.started_at IS NULL
                                           THEN now() + $5 * interval '1 second' ELSE runs.lease_until END
                 FROM current_fence, unnest($2::bigint[], $3::timestamptz[], $4::text[]) AS v(id, at, executor)
                 WHERE runs.id = v.id AND runs.term = $1 AND runs.status = 'running'
                   AND (runs.started_at IS NULL
                        OR (runs.started_at = v.at AND runs.executor = v.executor AND runs.attempt = 1))
                 RETURNING runs.id, runs.executor
             )
             SELECT a.id FROM assigned a,
                 (SELECT count(pg_notify($6, e.executor)) FROM (SELECT DISTINCT executor FROM assigned) e) woken",
        )
        .bind(term.revision())
        .bind(&ids)
        .bind(&at)
        .bind(&executors)
        .bind(accept_within.as_secs_f64())
        .bind(ASSIGNMENT_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        if assigned.is_empty() {
            self.refused_unless_fenced(term).await?;
        }
        let assigned: std::collections::HashSet<i64> = assigned.into_iter().collect();
        Ok(ids.iter().map(|id| assigned.contains(id)).collect())
    }

    async fn assigned_to(&self, node: &str) -> Result<Vec<AssignedRun>, sqlx::Error> {
        sqlx::query(
            "SELECT id, attempt, executor, job, slot, COALESCE(planned_at, slot) AS planned_at, term, trigger FROM runs
             WHERE executor = $1 AND status = 'running' AND NOT accepted AND NOT cancel_requested ORDER BY id",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(assigned_run)
        .collect()
    }

    async fn ended_slot_runs(&self, jobs: &[String], slot: DateTime<Utc>) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT job, id FROM runs WHERE job = ANY($1) AND slot = $2 AND status <> 'running'")
            .bind(jobs)
            .bind(slot)
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
            "UPDATE runs SET accepted = true, lease_until = now() + $4 * interval '1 second'
             WHERE id = $1 AND attempt = $2 AND executor = $3 AND status = 'running'
               AND NOT accepted AND NOT cancel_requested
               AND (SELECT count(*) FROM runs o WHERE o.executor = $3 AND o.status = 'running' AND o.accepted) < $5
             RETURNING id, attempt, executor, job, slot, COALESCE(planned_at, slot) AS planned_at, term, trigger",
        )
        .bind(key.run_id)
        .bind(key.attempt)
        .bind(&key.executor)
        .bind(lease.as_secs_f64())
        .bind(i64::from(max_runs))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(assigned_run).transpose()
    }

    async fn renew_execution(&self, key: &ExecutionKey, lease: Duration, output: &str) -> Result<Renewal, sqlx::Error> {
        let renewed = sqlx::query(
            "UPDATE runs SET lease_until = now() + $4 * interval '1 second', output = $5
             WHERE id = $1 AND attempt = $2 AND executor = $3 AND status = 'running' AND accepted
               AND NOT cancel_requested",
        )
        .bind(key.run_id)
        .bind(key.attempt)
        .bind(&key.executor)
        .bind(lease.as_secs_f64())
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
             WHERE id = $1 AND attempt = $2 AND executor = $3 AND status = 'running' AND accepted",
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
            "UPDATE runs SET attempt = attempt + 1, error = $4, started_at = now(),
                    lease_until = now() + $5 * interval '1 second', exit_code = NULL, http_status = NULL
             WHERE id = $1 AND attempt = $2 AND executor = $3 AND status = 'running' AND accepted
               AND NOT cancel_requested",
        )
        .bind(key.run_id)
        .bind(key.attempt)
        .bind(&key.executor)
        .bind(clean_text(previous_error))
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn finish_execution(&self, key: &ExecutionKey, outcome: &RunOutcome) -> Result<bool, sqlx::Error> {
        let query = sqlx::query(
            "UPDATE runs SET status = $4, exit_code = $5, http_status = $6, error = $7, output = $8, finished_at = $9,
                    began_at = $10
             WHERE id = $1 AND attempt = $2 AND executor = $3 AND status = 'running' AND accepted",
        )
        .bind(key.run_id)
        .bind(key.attempt)
        .bind(&key.executor);
        let updated = super::bind_outcome(query, outcome).execute(&self.pool).await?.rows_affected();
        Ok(updated == 1)
    }

    async fn expired_executions(&self, grace: Duration, limit: i64) -> Result<Vec<ExpiredExecution>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, attempt, executor, job, accepted, cancel_requested FROM runs
             WHERE status = 'running' AND executor IS NOT NULL
               AND lease_until < now() - $1 * interval '1 second'
             ORDER BY lease_until LIMIT $2",
        )
        .bind(grace.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(expired_execution).collect()
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
        let query = match then {
            GiveUp::End => sqlx::query(
                "WITH current_fence AS (
                     SELECT term FROM fence WHERE id = 1 AND term <= $1 FOR SHARE
                 )
                 UPDATE runs SET status = CASE WHEN cancel_requested THEN 'killed' ELSE 'lost' END,
                        finished_at = now(),
                        error = CASE WHEN cancel_requested THEN COALESCE(cancel_reason, $5) ELSE $5 END
                 FROM current_fence
                 WHERE id = $2 AND attempt = $3 AND executor = $4 AND status = 'running'
                   AND lease_until < now() - $6 * interval '1 second'",
            )
            .bind(term.revision())
            .bind(key.run_id)
            .bind(key.attempt)
            .bind(&key.executor)
            .bind(why)
            .bind(grace.as_secs_f64()),
            GiveUp::RetryOn(next) => sqlx::query(
                "WITH current_fence AS (
                     SELECT term FROM fence WHERE id = 1 AND term <= $1 FOR SHARE
                 ), retried AS (
                     UPDATE runs SET attempt = attempt + 1, executor = $7, accepted = false,
                            lease_until = now() + $8 * interval '1 second', started_at = now(),
                            error = 'attempt ' || attempt || ': ' || $5, output = ''
                     FROM current_fence
                     WHERE id = $2 AND attempt = $3 AND executor = $4 AND status = 'running'
                       AND NOT cancel_requested AND lease_until < now() - $6 * interval '1 second'
                     RETURNING executor
                 )
                 SELECT pg_notify($9, executor) FROM retried",
            )
            .bind(term.revision())
            .bind(key.run_id)
            .bind(key.attempt)
            .bind(&key.executor)
            .bind(why)
            .bind(grace.as_secs_f64())
            .bind(next)
            .bind(accept_within.as_secs_f64())
            .bind(ASSIGNMENT_CHANNEL),
        };
        let changed = match then {
            GiveUp::End => query.execute(&self.pool).await?.rows_affected(),
            GiveUp::RetryOn(_) => query.fetch_all(&self.pool).await?.len() as u64,
        };
        if changed == 1 {
            return Ok(true);
        }
        self.refused_unless_fenced(term).await
    }

    async fn request_cancel(&self, term: &Term, job: &str, except: i64) -> Result<u64, ClaimError> {
        let asked = sqlx::query(
            "WITH current_fence AS (
                 SELECT term FROM fence WHERE id = 1 AND term <= $1 FOR SHARE
             )
             UPDATE runs SET cancel_requested = true, cancel_reason = COALESCE(cancel_reason, $4)
             FROM current_fence
             WHERE job = $2 AND id <> $3 AND status = 'running' AND executor IS NOT NULL AND NOT cancel_requested",
        )
        .bind(term.revision())
        .bind(job)
        .bind(except)
        .bind(REPLACED)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if asked == 0 {
            self.refused_unless_fenced(term).await?;
        }
        Ok(asked)
    }

    async fn executions_going(&self, job: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM runs WHERE job = $1 AND status = 'running' AND executor IS NOT NULL")
            .bind(job)
            .fetch_one(&self.pool)
            .await
    }

    async fn listen_assignments(&self, node: &str, wake: mpsc::Sender<()>, stop: CancellationToken) {
        super::listen(&self.pool, ASSIGNMENT_CHANNEL, |payload| payload == node, wake, stop).await;
    }
}
