//! The ledger on PostgreSQL. Every statement that records a slot reads the fence `FOR SHARE`
//! in the same statement, so it waits for a concurrent `begin_term` and is then refused.

mod access;
mod execution;
mod partitions;
mod reads;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::common::{self, SlotHolder};
use super::outbox;
use super::{
    AwaitLink, AwaitedRun, BackfillSlot, CONTROL_CHANNEL, Claim, ClaimError, Claimed, DatabaseClock, Fence, FenceError,
    JobControl, JobCursor, Ledger, LedgerHistory, LiveNode, PendingCancel, Replication, Retention, SkipIfRunning,
    TriggerRecord, UnrunSlots, clean_text,
};
use super::{Delivery, NotifyRoute, OutboxEvent};
use crate::leadership::Term;
use crate::model::RunOutcome;

/// The batch claim (`Postgres::claim_batch`): one statement whatever the batch. A slot in the
/// range retention is rewriting (`fence.sealed_from`..`sealed_to`, read with the fence `FOR
/// SHARE`) is not claimed: refused as a delay, retried once the range is open again. `forbid`
/// counts runs started, and this term's own claims (they will start); an older term's claim that
/// never started will not, and is being taken over. A slot skipped says which run was still
/// going. A manual or backfill run's row copies its request's `cascade`.
const CLAIM_BATCH: &str = "WITH current_fence AS (
                 SELECT term, sealed_from, sealed_to FROM fence WHERE id = 1 AND term <= $1 FOR SHARE
             ), wanted AS (
                 SELECT DISTINCT ON (job, slot) *
                 FROM unnest($3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::bool[], $8::timestamptz[],
                             $10::timestamptz[], $11::bool[], $12::bigint[])
                     AS w(job, slot, trigger, config_hash, skip, claimed_at, planned_at, own_waits, request)
             ), claimed AS (
                 INSERT INTO runs (job, slot, trigger, term, node, config_hash, status, claimed_at, planned_at, error,
                                   cascade)
                 SELECT w.job, w.slot, w.trigger, $1, $2, w.config_hash,
                        CASE WHEN going.id IS NOT NULL THEN 'skipped' ELSE 'running' END,
                        w.claimed_at, w.planned_at,
                        'forbid: run ' || going.id || ' of this job was still going',
                        COALESCE(CASE w.trigger
                            WHEN 'manual' THEN (SELECT t.cascade FROM triggers t WHERE t.id = w.request)
                            WHEN 'backfill' THEN (SELECT b.cascade FROM backfills b WHERE b.id = w.request)
                        END, false)
                 FROM current_fence, wanted w
                 LEFT JOIN LATERAL (
                     SELECT r.id FROM runs r WHERE w.skip AND r.job = w.job AND r.status = 'running'
                       AND (r.started_at IS NOT NULL OR r.term = $1)
                       AND NOT (w.own_waits AND r.term = $1 AND r.node = $2 AND r.executor IS NULL)
                     ORDER BY r.id LIMIT 1
                 ) going ON true
                 WHERE current_fence.sealed_to IS NULL OR w.slot < current_fence.sealed_from
                       OR w.slot >= current_fence.sealed_to
                 ON CONFLICT (job, slot) DO UPDATE
                     SET term = EXCLUDED.term, node = EXCLUDED.node, config_hash = EXCLUDED.config_hash,
                         status = EXCLUDED.status, claimed_at = EXCLUDED.claimed_at,
                         planned_at = EXCLUDED.planned_at, error = EXCLUDED.error, cascade = EXCLUDED.cascade
                     WHERE runs.status = 'running' AND runs.started_at IS NULL AND runs.term < EXCLUDED.term
                 RETURNING job, slot, id, status, trigger
             ), cursors AS (
                 INSERT INTO job_cursors (job, slot)
                 SELECT job, max(slot) FROM claimed WHERE trigger = 'schedule' GROUP BY job
                 ON CONFLICT (job) DO UPDATE SET slot = GREATEST(job_cursors.slot, EXCLUDED.slot)
             ), handled AS (
                 -- A manual claim marks its trigger handled under the same fence, linked to the
                 -- row it claimed, or to the row another term holds for the slot (the trigger
                 -- fired there); the statement's snapshot does not see its own rows, hence both.
                 UPDATE triggers SET handled_at = now(),
                        run_id = COALESCE(
                            (SELECT c.id FROM claimed c WHERE c.job = m.job AND c.slot = m.slot),
                            (SELECT r.id FROM runs r WHERE r.job = m.job AND r.slot = m.slot))
                 FROM current_fence, unnest($3::text[], $4::timestamptz[], $9::bigint[]) AS m(job, slot, request)
                 WHERE triggers.id = m.request AND triggers.handled_at IS NULL
                   AND (current_fence.sealed_to IS NULL OR m.slot < current_fence.sealed_from
                        OR m.slot >= current_fence.sealed_to)
             )
             SELECT job, slot, id, status FROM claimed";

/// The ledger on PostgreSQL: what production replicas share.
#[derive(Debug, Clone)]
pub struct Postgres {
    pool: PgPool,
    /// The clock check's own connection (`clock`), to the same server with the same settings:
    /// whether the database answers is asked apart from the claims, so a burst of them holding
    /// every connection of `pool` does not read as a database that does not answer (which
    /// makes a leader step down, and the next term's catch-up a bigger burst).
    probe: PgPool,
}

impl Postgres {
    pub fn new(pool: PgPool) -> Postgres {
        let probe = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with((*pool.connect_options()).clone());
        Postgres { pool, probe }
    }

    /// All `claims` (one term) in one statement: the fence read `FOR SHARE` once, each
    /// (job, slot) inserted unless taken (a row an older term claimed and never started is taken
    /// over), each job's cursor advanced. Rows not claimed are explained one by one.
    async fn claim_batch(&self, claims: &[Claim<'_>]) -> Result<Vec<Result<Claimed, ClaimError>>, sqlx::Error> {
        let term = claims[0].term;
        debug_assert!(claims.iter().all(|claim| claim.term == term && claim.node == claims[0].node));
        let jobs: Vec<&str> = claims.iter().map(|c| c.job).collect();
        let slots: Vec<DateTime<Utc>> = claims.iter().map(|c| c.slot).collect();
        let triggers: Vec<&str> = claims.iter().map(|c| c.trigger.as_str()).collect();
        let hashes: Vec<&str> = claims.iter().map(|c| c.config_hash).collect();
        let skips: Vec<bool> = claims.iter().map(|c| c.skip_if_running != SkipIfRunning::No).collect();
        // `ExceptOwn`: the leader's own runs of this term (it waits for them) do not count.
        let own_waits: Vec<bool> = claims.iter().map(|c| c.skip_if_running == SkipIfRunning::ExceptOwn).collect();
        let claimed_at: Vec<DateTime<Utc>> = claims.iter().map(|c| c.claimed_at).collect();
        let requests: Vec<Option<i64>> = claims.iter().map(|c| c.trigger.request()).collect();
        let planned_at: Vec<DateTime<Utc>> = claims.iter().map(|c| c.planned_at).collect();
        // A manual or backfill run cascades (releases the runs waiting for its job) when its
        // request asked: the claim copies the request's word onto the row.
        let request_ids: Vec<Option<i64>> = claims.iter().map(|c| c.trigger.request_id()).collect();
        let query = || {
            sqlx::query(CLAIM_BATCH)
                .bind(term.revision())
                .bind(claims[0].node)
                .bind(&jobs)
                .bind(&slots)
                .bind(&triggers)
                .bind(&hashes)
                .bind(&skips)
                .bind(&claimed_at)
                .bind(&requests)
                .bind(&planned_at)
                .bind(&own_waits)
                .bind(&request_ids)
        };
        let rows = match self.claim_statement(query()).await {
            Err(error) if partitions::missing_partition(&error) => {
                // A slot no partition holds yet (far back, or beyond the weeks made ahead): its week
                // is created, and the batch sent once more.
                self.ensure_days(&slots).await?;
                self.claim_statement(query()).await?
            }
            rows => rows?,
        };
        self.answer_claims(claims, &rows).await
    }

    /// The claim statement, committed (held open first under the `claim_hold` failpoint).
    async fn claim_statement(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        match crate::testing::claim_hold() {
            None => query.fetch_all(&self.pool).await,
            Some(hold) => {
                // Failpoint, as in `claim_run`: the batch stays uncommitted for `hold`.
                let mut tx = self.pool.begin().await?;
                let rows = query.fetch_all(&mut *tx).await?;
                sqlx::query("SELECT pg_sleep($1)").bind(hold.as_secs_f64()).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(rows)
            }
        }
    }

    /// Create the partitions of `slots` that no partition holds (a claim's or a record's that found
    /// none), the lock on `runs` asked for 200 ms at most: a claim waits no longer for it.
    async fn ensure_days(&self, slots: &[DateTime<Utc>]) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        partitions::ensure_days(&mut conn, slots, "200ms").await?;
        Ok(())
    }

    /// Create the partitions that hold the slots from `from` to `to` and do not exist yet
    /// (the leader's upkeep keeps the next days ready; a claim creates one it lacks; tests and
    /// benchmarks that write history directly make its weeks first). Returns how many it made.
    pub async fn ensure_partitions(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<usize, sqlx::Error> {
        let mut days = Vec::new();
        let mut day = partitions::day_of(from);
        while day <= to {
            days.push(day);
            day += chrono::Duration::days(1);
        }
        let mut conn = self.pool.acquire().await?;
        partitions::ensure_days(&mut conn, &days, "5s").await
    }

    /// Each claim's answer: its row if the batch inserted or took one over, else why not.
    async fn answer_claims(
        &self,
        claims: &[Claim<'_>],
        rows: &[sqlx::postgres::PgRow],
    ) -> Result<Vec<Result<Claimed, ClaimError>>, sqlx::Error> {
        let mut inserted: HashMap<(String, DateTime<Utc>), Claimed> = HashMap::with_capacity(rows.len());
        for row in rows {
            let claimed = Claimed { run_id: row.try_get("id")?, status: common::status(row, "status")? };
            inserted.insert((row.try_get("job")?, row.try_get("slot")?), claimed);
        }
        let mut results = Vec::with_capacity(claims.len());
        for claim in claims {
            match inserted.get(&(claim.job.to_owned(), claim.slot)) {
                Some(claimed) => results.push(Ok(*claimed)),
                None => results.push(self.explain_refusal(claim.job, claim.slot, claim.term, claim.node).await),
            }
        }
        Ok(results)
    }

    /// Zero rows back means "stale term" or "already claimed"; find out which.
    async fn explain_refusal(
        &self,
        job: &str,
        slot: DateTime<Utc>,
        term: &Term,
        node: &str,
    ) -> Result<Claimed, ClaimError> {
        let holder = sqlx::query(common::SLOT_HOLDER).bind(job).bind(slot).fetch_optional(&self.pool).await?;
        let holder = holder.map(|row| SlotHolder::of(&row)).transpose()?;
        let fence = self.fence().await?;
        // Not fenced, and no row this claim would not have taken: the range was sealed (or its
        // partition missing) when it was sent. A delay: the claim is retried.
        if fence.term <= term.revision() && holder.as_ref().is_none_or(|holder| holder.taken_over_by(term)) {
            return Err(ClaimError::Database(sqlx::Error::Protocol(format!(
                "slot {slot} of {job} was not recorded: retention is rewriting its partition; retrying"
            ))));
        }
        common::explain_refusal(holder, fence.term, term, node)
    }

    /// Operator pauses and resumes, for either side of the ledger.
    async fn read_job_controls(&self) -> Result<HashMap<String, JobControl>, sqlx::Error> {
        sqlx::query(common::JOB_CONTROLS).fetch_all(&self.pool).await?.iter().map(common::job_control).collect()
    }
}

#[async_trait]
impl Ledger for Postgres {
    async fn clock(&self) -> Result<DatabaseClock, sqlx::Error> {
        let row = sqlx::query(
            "SELECT clock_timestamp() AS now, pg_is_in_recovery() AS in_recovery,
                    current_setting('transaction_read_only') = 'on' AS read_only",
        )
        .fetch_one(&self.probe)
        .await?;
        Ok(DatabaseClock {
            now: row.try_get("now")?,
            not_primary: super::pools::not_primary(row.try_get("in_recovery")?, row.try_get("read_only")?),
        })
    }

    async fn history(&self) -> Result<LedgerHistory, sqlx::Error> {
        let crash_safe: bool =
            sqlx::query_scalar("SELECT current_setting('synchronous_commit') <> 'off'").fetch_one(&self.pool).await?;
        // The timeline is the first eight hex digits of the current WAL file's name.
        let wal_file: Result<String, sqlx::Error> =
            sqlx::query_scalar("SELECT pg_walfile_name(pg_current_wal_lsn())").fetch_one(&self.pool).await;
        let timeline = match wal_file {
            Ok(name) => name.get(..8).and_then(|hex| i64::from_str_radix(hex, 16).ok()),
            Err(sqlx::Error::Database(error)) => {
                tracing::debug!(%error, "the database does not tell its timeline");
                None
            }
            Err(error) => return Err(error),
        };
        Ok(LedgerHistory { timeline, crash_safe })
    }

    async fn replication(&self) -> Result<Option<Replication>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT current_setting('synchronous_commit') AS synchronous_commit,
                    current_setting('synchronous_standby_names') AS synchronous_standby_names",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(Replication {
            synchronous_commit: row.try_get("synchronous_commit")?,
            synchronous_standby_names: row.try_get("synchronous_standby_names")?,
        }))
    }

    /// One transaction. Two nodes racing for one term number queue on the fence row's lock; the
    /// second re-reads the row the first committed and is refused.
    async fn begin_term(&self, term: &Term, node: &str) -> Result<(), FenceError> {
        let mut tx = self.pool.begin().await?;
        let raised = sqlx::query(
            "UPDATE fence SET term = $1, cluster_id = $2, node = $3, raised_at = now()
             WHERE id = 1 AND (term < $1 OR (term = $1 AND cluster_id = $2 AND node = $3))",
        )
        .bind(term.revision())
        .bind(term.cluster_id())
        .bind(node)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if raised == 0 {
            let fence = fence_in(&mut tx).await?;
            return Err(FenceError::Superseded {
                term: term.revision(),
                fence: fence.term,
                fence_cluster: fence.cluster_id,
                fence_node: fence.node,
            });
        }
        sqlx::query(
            "INSERT INTO terms (term, cluster_id, node) VALUES ($1, $2, $3)
             ON CONFLICT (term) DO NOTHING",
        )
        .bind(term.revision())
        .bind(term.cluster_id())
        .bind(node)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fence(&self) -> Result<Fence, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        fence_in(&mut conn).await
    }

    /// Claim one slot: one statement that checks the fence under a share lock and inserts the
    /// (job, slot) row. A job may execute only after this returns `Ok` with `Running`.
    ///
    /// A lost connection leaves the outcome unknown; retrying is safe because the (job, slot) key
    /// makes the insert idempotent, and a row already holding our term and node is our own claim.
    async fn claim_runs(&self, claims: &[Claim<'_>]) -> Vec<Result<Claimed, ClaimError>> {
        if claims.is_empty() {
            return Vec::new();
        }
        match self.claim_batch(claims).await {
            Ok(results) => results,
            Err(error) => {
                // The statement as a whole failed: nothing of it committed; every claim retries.
                let message = error.to_string();
                claims.iter().map(|_| Err(ClaimError::Database(sqlx::Error::Protocol(message.clone())))).collect()
            }
        }
    }

    async fn claim_run(&self, claim: &Claim<'_>) -> Result<Claimed, ClaimError> {
        self.claim_batch(std::slice::from_ref(claim)).await?.pop().expect("one answer per claim")
    }

    async fn record_slots(&self, unrun: &UnrunSlots<'_>) -> Result<u64, ClaimError> {
        let UnrunSlots { job, slots, status, trigger, term, node, config_hash, error } = *unrun;
        if slots.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let query = || {
            sqlx::query_as::<_, (i64, i64)>(
                "WITH current_fence AS (
                 SELECT term, sealed_from, sealed_to FROM fence WHERE id = 1 AND term <= $2 FOR SHARE
             ), recorded AS (
                 INSERT INTO runs (job, slot, trigger, term, node, config_hash, status, claimed_at, finished_at, error)
                 SELECT $1, s, $9, $2, $3, $4, $5, $7, $7, $8
                 FROM current_fence, unnest($6::timestamptz[]) AS s
                 WHERE current_fence.sealed_to IS NULL OR s < current_fence.sealed_from OR s >= current_fence.sealed_to
                 ON CONFLICT (job, slot) DO UPDATE
                     SET term = EXCLUDED.term, node = EXCLUDED.node, status = EXCLUDED.status,
                         finished_at = EXCLUDED.finished_at, error = EXCLUDED.error
                     WHERE runs.status = 'running' AND runs.started_at IS NULL AND runs.term <= EXCLUDED.term
                 RETURNING slot
             ), cursors AS (
                 INSERT INTO job_cursors (job, slot)
                 SELECT $1, max(slot) FROM recorded WHERE $9 = 'schedule' HAVING count(*) > 0
                 ON CONFLICT (job) DO UPDATE SET slot = GREATEST(job_cursors.slot, EXCLUDED.slot)
             )
             SELECT (SELECT count(*) FROM recorded),
                    (SELECT count(*) FROM current_fence, unnest($6::timestamptz[]) AS s
                     WHERE s >= current_fence.sealed_from AND s < current_fence.sealed_to)",
            )
            .bind(job)
            .bind(term.revision())
            .bind(node)
            .bind(config_hash)
            .bind(status.as_str())
            .bind(slots)
            .bind(now)
            .bind(error)
            .bind(trigger.as_str())
        };
        let (recorded, sealed) = match query().fetch_one(&self.pool).await {
            Err(error) if partitions::missing_partition(&error) => {
                self.ensure_days(slots).await?;
                query().fetch_one(&self.pool).await?
            }
            recorded => recorded?,
        };
        if sealed > 0 {
            // Slots of a range retention has sealed are recorded once it is open again (the
            // statement is idempotent: what it recorded now is not recorded twice).
            return Err(ClaimError::Database(sqlx::Error::Protocol(format!(
                "{sealed} slots of {job} were not recorded: retention is rewriting their partition; retrying"
            ))));
        }
        if recorded == 0 {
            let fence = self.fence().await?;
            if fence.term > term.revision() {
                return Err(ClaimError::Fenced { term: term.revision(), fence: fence.term });
            }
        }
        Ok(recorded as u64)
    }

    async fn start_runs(&self, term: &Term, runs: &[(i64, DateTime<Utc>)]) -> Result<Vec<bool>, ClaimError> {
        let ids: Vec<i64> = runs.iter().map(|(id, _)| *id).collect();
        let at: Vec<DateTime<Utc>> = runs.iter().map(|(_, at)| *at).collect();
        let started: Vec<i64> = sqlx::query_scalar(
            "WITH current_fence AS (
                 SELECT term FROM fence WHERE id = 1 AND term <= $1 FOR SHARE
             )
             UPDATE runs SET started_at = v.at
             FROM current_fence, unnest($2::bigint[], $3::timestamptz[]) AS v(id, at)
             WHERE runs.id = v.id AND runs.term = $1 AND runs.status = 'running'
               AND (runs.started_at IS NULL OR runs.started_at = v.at)
             RETURNING runs.id",
        )
        .bind(term.revision())
        .bind(&ids)
        .bind(&at)
        .fetch_all(&self.pool)
        .await?;
        if started.is_empty() {
            let fence = self.fence().await?;
            if fence.term > term.revision() {
                return Err(ClaimError::Fenced { term: term.revision(), fence: fence.term });
            }
        }
        let started: std::collections::HashSet<i64> = started.into_iter().collect();
        Ok(ids.iter().map(|id| started.contains(id)).collect())
    }

    /// Begin another attempt of a slot this term claimed, under the fence.
    async fn retry_run(
        &self,
        run_id: i64,
        term: &Term,
        attempt: i32,
        previous_error: &str,
        started_at: DateTime<Utc>,
    ) -> Result<(), ClaimError> {
        let updated = sqlx::query(
            "WITH current_fence AS (
                 SELECT term FROM fence WHERE id = 1 AND term <= $2 FOR SHARE
             )
             UPDATE runs SET attempt = $3, status = 'running', error = $4, started_at = $5,
                    finished_at = NULL, exit_code = NULL, http_status = NULL
             FROM current_fence
             WHERE runs.id = $1 AND runs.term = $2",
        )
        .bind(run_id)
        .bind(term.revision())
        .bind(attempt)
        .bind(previous_error)
        .bind(started_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 0 {
            let fence = self.fence().await?;
            return Err(ClaimError::Fenced { term: term.revision(), fence: fence.term });
        }
        Ok(())
    }

    /// Record how a run ended. Not fenced: the node that ran it reports the truth even after its
    /// term ended, and may overwrite a `lost` that a newer leader wrote meanwhile.
    async fn finish_run(&self, run_id: i64, outcome: &RunOutcome) -> Result<(), sqlx::Error> {
        let query = sqlx::query(
            "UPDATE runs SET status = $2, exit_code = $3, http_status = $4, error = $5,
                    output = $6, finished_at = $7, began_at = $8
             WHERE id = $1 AND status IN ('running', 'lost')",
        )
        .bind(run_id);
        bind_outcome(query, outcome).execute(&self.pool).await?;
        Ok(())
    }

    async fn finish_runs(&self, runs: &[(i64, RunOutcome)]) -> Result<(), sqlx::Error> {
        let ids: Vec<i64> = runs.iter().map(|(id, _)| *id).collect();
        let statuses: Vec<&str> = runs.iter().map(|(_, o)| o.status.as_str()).collect();
        let exit_codes: Vec<Option<i32>> = runs.iter().map(|(_, o)| o.exit_code).collect();
        let http_statuses: Vec<Option<i32>> = runs.iter().map(|(_, o)| o.http_status.map(i32::from)).collect();
        let errors: Vec<Option<String>> = runs.iter().map(|(_, o)| o.error.as_deref().map(clean_text)).collect();
        let outputs: Vec<String> = runs.iter().map(|(_, o)| clean_text(&o.output)).collect();
        let finished: Vec<DateTime<Utc>> = runs.iter().map(|(_, o)| o.finished_at).collect();
        let began: Vec<Option<DateTime<Utc>>> = runs.iter().map(|(_, o)| o.began_at).collect();
        sqlx::query(
            "UPDATE runs SET status = v.status, exit_code = v.exit_code, http_status = v.http_status,
                    error = v.error, output = v.output, finished_at = v.finished_at, began_at = v.began_at
             FROM unnest($1::bigint[], $2::text[], $3::int[], $4::int[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::timestamptz[])
                  AS v(id, status, exit_code, http_status, error, output, finished_at, began_at)
             WHERE runs.id = v.id AND runs.status IN ('running', 'lost')",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&exit_codes)
        .bind(&http_statuses)
        .bind(&errors)
        .bind(&outputs)
        .bind(&finished)
        .bind(&began)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn started_by_term(&self, term: i64, runs: &[(String, DateTime<Utc>)]) -> Result<usize, sqlx::Error> {
        let (jobs, slots): (Vec<&str>, Vec<DateTime<Utc>>) =
            runs.iter().map(|(job, slot)| (job.as_str(), *slot)).unzip();
        let started: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM runs JOIN unnest($2::text[], $3::timestamptz[]) AS r(job, slot)
                 ON runs.job = r.job AND runs.slot = r.slot
             WHERE runs.term = $1 AND runs.started_at IS NOT NULL",
        )
        .bind(term)
        .bind(&jobs)
        .bind(&slots)
        .fetch_one(&self.pool)
        .await?;
        Ok(started as usize)
    }

    async fn job_cursors(
        &self,
        term: &Term,
        jobs: &[&str],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, JobCursor>, ClaimError> {
        let mut tx = self.pool.begin().await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT term FROM fence WHERE id = 1 AND term <= $1 FOR SHARE")
            .bind(term.revision())
            .fetch_optional(&mut *tx)
            .await?;
        if current.is_none() {
            let fence = fence_in(&mut tx).await?;
            return Err(ClaimError::Fenced { term: term.revision(), fence: fence.term });
        }
        sqlx::query(
            "INSERT INTO job_cursors (job, slot) SELECT j, $2 FROM unnest($1::text[]) AS j ON CONFLICT DO NOTHING",
        )
        .bind(jobs)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT c.job, c.slot, u.slot AS unstarted
             FROM job_cursors c LEFT JOIN (
                 SELECT job, min(slot) AS slot FROM runs
                 WHERE status = 'running' AND started_at IS NULL AND trigger = 'schedule' AND term < $2
                 GROUP BY job
             ) u ON u.job = c.job
             WHERE c.job = ANY($1)",
        )
        .bind(jobs)
        .bind(term.revision())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get("job"), JobCursor { slot: row.get("slot"), unstarted: row.get("unstarted") }))
            .collect())
    }

    /// Mark `lost` the runs still `running` from an older term whose node is no longer
    /// registered. Fenced: only the current leader may do this.
    async fn reap_lost(&self, term: &Term, live: &[LiveNode]) -> Result<u64, sqlx::Error> {
        let nodes: Vec<&str> = live.iter().map(|l| l.node.as_str()).collect();
        let since: Vec<DateTime<Utc>> = live.iter().map(|l| l.since).collect();
        let result = sqlx::query(
            "WITH current_fence AS (
                 SELECT term FROM fence WHERE id = 1 AND term <= $1 FOR SHARE
             )
             UPDATE runs SET status = 'lost', finished_at = now(),
                    error = 'its leader vanished without recording an outcome'
             FROM current_fence
             WHERE runs.status = 'running' AND runs.started_at IS NOT NULL AND runs.term < $1
               AND runs.executor IS NULL
               AND NOT EXISTS (
                   SELECT 1 FROM unnest($2::text[], $3::timestamptz[]) AS live(node, since)
                   WHERE live.node = runs.node AND runs.claimed_at >= live.since)",
        )
        .bind(term.revision())
        .bind(nodes)
        .bind(since)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// One statement whose cost follows the rows it deletes: the jobs the ledger holds are
    /// found by skipping through `runs_job_slot_key` (one probe a job), and each job's rows
    /// older than its limit and than its newest row are read off the same index, oldest first,
    /// until the batch is full. With nothing to delete, a few probes a job.
    async fn prune_runs(&self, retention: &Retention, batch: i64) -> Result<u64, sqlx::Error> {
        let jobs: Vec<&str> = retention.per_job.iter().map(|(job, _)| job.as_str()).collect();
        let before: Vec<DateTime<Utc>> = retention.per_job.iter().map(|(_, before)| *before).collect();
        let result = sqlx::query(
            "WITH RECURSIVE jobs(job) AS (
                 SELECT min(job) FROM runs
                 UNION ALL
                 SELECT (SELECT min(r.job) FROM runs r WHERE r.job > jobs.job) FROM jobs WHERE jobs.job IS NOT NULL
             ), limits AS (
                 SELECT jobs.job, COALESCE(p.before, $1) AS before,
                        (SELECT max(n.slot) FROM runs n WHERE n.job = jobs.job) AS newest
                 FROM jobs LEFT JOIN unnest($3::text[], $4::timestamptz[]) AS p(job, before) ON p.job = jobs.job
                 WHERE jobs.job IS NOT NULL
             ), doomed AS (
                 SELECT d.id FROM limits CROSS JOIN LATERAL (
                     SELECT r.id FROM runs r
                     WHERE r.job = limits.job AND r.slot < LEAST(limits.before, limits.newest)
                       AND r.claimed_at < limits.before AND r.status <> 'running'
                     ORDER BY r.slot LIMIT $2
                 ) d
                 LIMIT $2
             )
             DELETE FROM runs WHERE id = ANY (ARRAY(SELECT id FROM doomed))",
        )
        .bind(retention.default_before)
        .bind(batch)
        .bind(&jobs)
        .bind(&before)
        .execute(&self.pool)
        .await?;
        sqlx::query(outbox::PRUNE_NOTIFICATIONS).bind(retention.default_before).bind(batch).execute(&self.pool).await?;
        Ok(result.rows_affected())
    }

    async fn prune_audit(&self, before: DateTime<Utc>, batch: i64) -> Result<u64, sqlx::Error> {
        let result = sqlx::query(common::PRUNE_AUDIT).bind(before).bind(batch).execute(&self.pool).await?;
        Ok(result.rows_affected())
    }

    async fn keep_partitions(&self, retention: &Retention, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        partitions::keep_ahead(&self.pool, now).await?;
        partitions::retire(&self.pool, retention, now).await
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
        let dependents: Vec<&str> = links.iter().map(|l| l.dependent).collect();
        let upstreams: Vec<&str> = links.iter().map(|l| l.upstream).collect();
        let since: Vec<DateTime<Utc>> = links.iter().map(|l| l.since).collect();
        let rows = sqlx::query(common::awaited_runs!(
            "SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS l(dependent, upstream, since)",
            "$4"
        ))
        .bind(&dependents)
        .bind(&upstreams)
        .bind(&since)
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

    async fn update_outputs(&self, outputs: &[(i64, String)]) -> Result<(), sqlx::Error> {
        let ids: Vec<i64> = outputs.iter().map(|(id, _)| *id).collect();
        let texts: Vec<String> = outputs.iter().map(|(_, text)| clean_text(text)).collect();
        sqlx::query(
            "UPDATE runs SET output = v.output
             FROM unnest($1::bigint[], $2::text[]) AS v(id, output)
             WHERE runs.id = v.id AND runs.status = 'running'",
        )
        .bind(&ids)
        .bind(&texts)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn term_alive(&self, term: &Term, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE terms SET last_seen_at = $2 WHERE term = $1")
            .bind(term.revision())
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn pending_triggers(&self) -> Result<Vec<TriggerRecord>, sqlx::Error> {
        sqlx::query(common::PENDING_TRIGGERS).fetch_all(&self.pool).await?.iter().map(common::trigger_record).collect()
    }

    /// Mark a trigger handled without a run (its job is not in the job file).
    async fn pending_cancels(&self) -> Result<Vec<PendingCancel>, sqlx::Error> {
        let rows = sqlx::query(common::PENDING_CANCELS).fetch_all(&self.pool).await?;
        rows.iter().map(common::pending_cancel).collect()
    }

    async fn apply_cancels(&self, term: &Term, runs: &[i64]) -> Result<Vec<i64>, ClaimError> {
        // An older term's claim never started has nobody to stop it: recorded `killed` here
        // (a newer claim would otherwise take it over and run it).
        let marked: Vec<i64> = sqlx::query_scalar(
            "WITH current_fence AS (
                 SELECT term FROM fence WHERE id = 1 AND term <= $1 FOR SHARE
             )
             UPDATE runs SET cancel_requested = true,
                    status = CASE WHEN runs.started_at IS NULL AND runs.executor IS NULL AND runs.term < $1
                                  THEN 'killed' ELSE runs.status END,
                    finished_at = CASE WHEN runs.started_at IS NULL AND runs.executor IS NULL AND runs.term < $1
                                       THEN now() ELSE runs.finished_at END,
                    error = CASE WHEN runs.started_at IS NULL AND runs.executor IS NULL AND runs.term < $1
                                 THEN runs.cancel_reason || ' before the run started' ELSE runs.error END
             FROM current_fence
             WHERE runs.id = ANY($2) AND runs.status = 'running' AND runs.cancel_reason IS NOT NULL
               AND NOT runs.cancel_requested
             RETURNING runs.id",
        )
        .bind(term.revision())
        .bind(runs)
        .fetch_all(&self.pool)
        .await?;
        if marked.is_empty() && !runs.is_empty() {
            let fence = fence_in(&mut *self.pool.acquire().await?).await?;
            if fence.term > term.revision() {
                return Err(ClaimError::Fenced { term: term.revision(), fence: fence.term });
            }
        }
        Ok(marked)
    }

    async fn trigger_dropped(&self, trigger_id: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE triggers SET handled_at = now() WHERE id = $1")
            .bind(trigger_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn listen_controls(&self, wake: mpsc::Sender<()>, stop: CancellationToken) {
        listen(&self.pool, CONTROL_CHANNEL, |_| true, wake, stop).await;
    }

    async fn set_notify_routes(&self, term: &Term, routes: &[NotifyRoute]) -> Result<(), ClaimError> {
        let mut tx = self.pool.begin().await?;
        let fence: i64 =
            sqlx::query_scalar("SELECT term FROM fence WHERE id = 1 FOR SHARE").fetch_one(&mut *tx).await?;
        if fence > term.revision() {
            return Err(ClaimError::Fenced { term: term.revision(), fence });
        }
        sqlx::query("DELETE FROM notify_routes").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO notify_routes (job, target, label, events, late_ms)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])",
        )
        .bind(routes.iter().map(|r| r.job.as_str()).collect::<Vec<_>>())
        .bind(routes.iter().map(|r| r.target.as_str()).collect::<Vec<_>>())
        .bind(routes.iter().map(|r| r.label.as_str()).collect::<Vec<_>>())
        .bind(routes.iter().map(|r| r.events.as_str()).collect::<Vec<_>>())
        .bind(routes.iter().map(|r| r.late_ms).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
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
        let rows = sqlx::query(
            "WITH current_fence AS (
                 SELECT term FROM fence WHERE id = 1 AND term <= $1 FOR SHARE
             ), due AS (
                 SELECT id FROM notifications
                 WHERE status = 'pending' AND next_at <= $2 AND (sending_until IS NULL OR sending_until < $2)
                 ORDER BY next_at, id LIMIT $4 FOR UPDATE SKIP LOCKED
             )
             UPDATE notifications SET sending_term = $1, sending_until = $3, attempts = attempts + 1
             FROM current_fence, due WHERE notifications.id = due.id
             RETURNING notifications.id, run_id, job, slot, event, target, label, created_at, attempts",
        )
        .bind(term.revision())
        .bind(now)
        .bind(hold_until)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows.iter().map(outbox::outbox_event).collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|event| event.id);
        Ok(events)
    }

    async fn record_deliveries(&self, term: &Term, deliveries: &[(i64, Delivery)]) -> Result<u64, sqlx::Error> {
        let columns: Vec<_> = deliveries.iter().map(|(id, delivery)| (*id, delivery.columns())).collect();
        let result = sqlx::query(
            "UPDATE notifications n
             SET status = v.status, delivered_at = v.delivered_at, next_at = coalesce(v.next_at, n.next_at),
                 last_error = coalesce(v.error, n.last_error), sending_until = NULL
             FROM unnest($2::bigint[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::text[])
                  AS v(id, status, delivered_at, next_at, error)
             WHERE n.id = v.id AND n.sending_term = $1 AND n.status = 'pending'",
        )
        .bind(term.revision())
        .bind(columns.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(columns.iter().map(|(_, c)| c.status).collect::<Vec<_>>())
        .bind(columns.iter().map(|(_, c)| c.delivered_at).collect::<Vec<_>>())
        .bind(columns.iter().map(|(_, c)| c.next_at).collect::<Vec<_>>())
        .bind(columns.iter().map(|(_, c)| c.error.map(clean_text)).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn pending_notifications(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(outbox::PENDING_COUNT).fetch_one(&self.pool).await
    }
}

async fn fence_in(conn: &mut sqlx::PgConnection) -> Result<Fence, sqlx::Error> {
    common::fence(&sqlx::query(common::FENCE).fetch_one(conn).await?)
}

/// Wake `wake` on every notification on `channel` whose payload is `wanted`, and once each time
/// the listening connection is (re)made: what was sent while nobody listened is lost, so the
/// woken side looks again. Reconnects until `stop`.
pub(super) async fn listen(
    pool: &PgPool,
    channel: &str,
    wanted: impl Fn(&str) -> bool,
    wake: mpsc::Sender<()>,
    stop: CancellationToken,
) {
    loop {
        let connect = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = stop.cancelled() => return,
            listener = connect => match listener {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::debug!(%error, channel, "cannot listen; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let _ = wake.try_send(());
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                notification = listener.try_recv() => match notification {
                    Ok(Some(notification)) if !wanted(notification.payload()) => {}
                    Ok(_) => { let _ = wake.try_send(()); }
                    Err(error) => {
                        tracing::debug!(%error, channel, "listener failed; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

/// Bind an outcome's seven columns, in this order: status, exit code, HTTP status, error, output,
/// finished at, began at (the leader's outcome and a worker's take the same).
fn bind_outcome<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    outcome: &'q RunOutcome,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(outcome.status.as_str())
        .bind(outcome.exit_code)
        .bind(outcome.http_status.map(i32::from))
        .bind(outcome.error.as_deref().map(clean_text))
        .bind(clean_text(&outcome.output))
        .bind(outcome.finished_at)
        .bind(outcome.began_at)
}
