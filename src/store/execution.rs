//! The ledger's side of execution across replicas (`run_on: any` or `{ tags: [..] }`): the
//! replicas' advertisements, the leader's fenced assignments, give-ups and cancel requests, and
//! a replica's acceptance, renewals and outcome, each a conditional write keyed on (run,
//! attempt, replica).
//!
//! Invariant: a replica executes an attempt only after `accept_execution` returned it, and keeps
//! executing it only while `renew_execution` answers `Renewed` before its local deadline; every
//! write of a replica is keyed on (run, attempt, replica) and refused once the leader gave the
//! attempt up (`give_up_execution`, only after `lease_until` + a grace period by the database's
//! clock) or cancelled it. The leader's writes (`assign_runs`, `give_up_execution`,
//! `request_cancel`) are fenced by its term; the replica's are not, so a failover does not
//! touch runs executing elsewhere.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::ClaimError;
use super::common::LedgerRow;
use crate::leadership::Term;
use crate::model::RunOutcome;

/// What a replica offers, written every renewal interval (`Executions::advertise`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaOffer {
    pub node: String,
    /// Its `--tags`; a job with `run_on: { tags: [..] }` runs only where all of them are.
    pub tags: Vec<String>,
    /// Its `--max-runs`: how many assigned runs it executes at once.
    pub max_runs: u32,
}

/// A live replica (seen within the bound asked for) and how many runs are assigned to it or
/// running on it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLoad {
    pub offer: ReplicaOffer,
    pub last_seen: DateTime<Utc>,
    pub load: i64,
}

/// One attempt of one run on one replica: the key of every execution write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExecutionKey {
    pub run_id: i64,
    pub attempt: i32,
    pub executor: String,
}

impl ExecutionKey {
    /// The attempt's lease id, unique in the ledger (an attempt is assigned once), handed to the
    /// job as `TENURE_LEASE_ID`.
    pub fn lease_id(&self) -> String {
        format!("{}-{}-{}", self.run_id, self.attempt, self.executor)
    }
}

/// A run the leader started and hands to `executor` (`Executions::assign_runs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub run_id: i64,
    /// The fenced start's time, as `Ledger::start_runs` records it.
    pub started_at: DateTime<Utc>,
    pub executor: String,
}

/// An attempt assigned to a replica, as it reads it to accept and execute it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedRun {
    pub key: ExecutionKey,
    pub job: String,
    pub slot: DateTime<Utc>,
    /// When it was planned to start (its lateness counts from it).
    pub planned_at: DateTime<Utc>,
    /// The term that claimed it (`TENURE_TERM`).
    pub term: i64,
    /// Why its slot was claimed: `Upstream` for a run its awaited runs released (`after:`).
    pub trigger: crate::model::TriggerKind,
}

/// The answer to a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The lease runs a full lease from the statement's commit.
    Renewed,
    /// The leader asked for the run to stop (`replace`, or an operator's cancel it acted on):
    /// kill it, and record it `killed` with `reason`.
    CancelRequested { reason: String },
    /// The attempt is no longer this replica's (given up, reassigned, ended): kill it, record
    /// nothing.
    Refused,
}

/// An attempt whose lease has expired by more than the grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredExecution {
    pub key: ExecutionKey,
    pub job: String,
    /// Whether it was accepted (an executor that never accepted never started it).
    pub accepted: bool,
    pub cancel_requested: bool,
}

/// What the leader does with an expired attempt (`Executions::give_up_execution`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveUp {
    /// Record it `lost` (or `killed`, when a cancel was requested): the run has ended.
    End,
    /// Assign the next attempt to this replica.
    RetryOn(String),
}

/// The execution side of the ledger. One test suite (`tests/it/ledger.rs`) checks both backends.
#[async_trait]
pub trait Executions: Send + Sync {
    /// Record that `offer`'s replica is alive now (the database's clock).
    async fn advertise(&self, offer: &ReplicaOffer) -> Result<(), sqlx::Error>;

    /// Take `node`'s advertisement back (it is shutting down): the leader assigns it nothing more.
    async fn withdraw(&self, node: &str) -> Result<(), sqlx::Error>;

    /// Replicas seen within `within` (the database's clock), each with how many runs are
    /// assigned to it or running on it, ordered by node.
    async fn live_replicas(&self, within: Duration) -> Result<Vec<ReplicaLoad>, sqlx::Error>;

    /// Start runs `term` claimed (exactly as `Ledger::start_runs`: fenced, only this term's
    /// unstarted claims, or a retry carrying the same start and executor) and assign each to its
    /// executor, which must accept it within `accept_within`. Wakes the executors.
    async fn assign_runs(
        &self,
        term: &Term,
        runs: &[Assignment],
        accept_within: Duration,
    ) -> Result<Vec<bool>, ClaimError>;

    /// The attempts assigned to `node` and not accepted yet (nor cancelled), oldest first.
    async fn assigned_to(&self, node: &str) -> Result<Vec<AssignedRun>, sqlx::Error>;

    /// The ended runs of `jobs` of one slot, as (job, run id): the runs that released a run of
    /// that slot waiting for them (`after:`), told to it where it executes.
    async fn ended_slot_runs(&self, jobs: &[String], slot: DateTime<Utc>) -> Result<Vec<(String, i64)>, sqlx::Error>;

    /// Accept an assigned attempt: only if it is still assigned to this executor under this
    /// attempt, not cancelled, and the executor has fewer than `max_runs` accepted runs going.
    /// Its lease then runs `lease` from the commit. `None`: do not execute it.
    async fn accept_execution(
        &self,
        key: &ExecutionKey,
        lease: Duration,
        max_runs: u32,
    ) -> Result<Option<AssignedRun>, sqlx::Error>;

    /// Renew an accepted attempt's lease for `lease` from the commit and write its live
    /// `output`, unless it was given up, reassigned, ended or cancelled.
    async fn renew_execution(&self, key: &ExecutionKey, lease: Duration, output: &str) -> Result<Renewal, sqlx::Error>;

    /// Begin the next attempt on the same executor after a retryable failure (the job's
    /// `retries`), renewing the lease; false when the attempt is no longer this executor's.
    async fn retry_execution(
        &self,
        key: &ExecutionKey,
        previous_error: &str,
        lease: Duration,
    ) -> Result<bool, sqlx::Error>;

    /// Record an attempt's outcome, keyed on (run, attempt, executor) and only while the run is
    /// `running` and accepted: not fenced by a term (a failover does not refuse it), and refused
    /// once the leader gave the attempt up.
    async fn finish_execution(&self, key: &ExecutionKey, outcome: &RunOutcome) -> Result<bool, sqlx::Error>;

    /// Attempts whose `lease_until` passed more than `grace` ago (the database's clock), at most
    /// `limit`, oldest lease first.
    async fn expired_executions(&self, grace: Duration, limit: i64) -> Result<Vec<ExpiredExecution>, sqlx::Error>;

    /// Give up an expired attempt, fenced by `term`, only if it is still that attempt on that
    /// executor and still expired by `grace`: end the run (`lost`; `killed` if a cancel was
    /// requested) or assign its next attempt, to be accepted within `accept_within`. False when
    /// the row changed meanwhile (the executor renewed or finished).
    async fn give_up_execution(
        &self,
        term: &Term,
        expired: &ExpiredExecution,
        then: &GiveUp,
        grace: Duration,
        accept_within: Duration,
    ) -> Result<bool, ClaimError>;

    /// Ask, fenced by `term`, every run of `job` executing elsewhere (but `except`) to stop: their
    /// next renewal is refused. Returns how many were asked.
    async fn request_cancel(&self, term: &Term, job: &str, except: i64) -> Result<u64, ClaimError>;

    /// How many runs of `job` are assigned or executing on any replica.
    async fn executions_going(&self, job: &str) -> Result<i64, sqlx::Error>;

    /// Send on `wake` whenever an attempt may have been assigned to `node`, until `stop`. A
    /// backend without notifications returns at once (the caller polls).
    async fn listen_assignments(
        &self,
        node: &str,
        wake: tokio::sync::mpsc::Sender<()>,
        stop: tokio_util::sync::CancellationToken,
    );
}

/// Tags as the ledger holds them: comma-separated, in order.
pub(super) fn join_tags(tags: &[String]) -> String {
    tags.join(",")
}

pub(super) fn split_tags(text: &str) -> Vec<String> {
    text.split(',').filter(|tag| !tag.is_empty()).map(str::to_owned).collect()
}

/// Every advertised replica with its load, live or not (the dashboard's read; both databases
/// read it alike).
pub(super) const REPLICA_LOADS: &str = "SELECT p.node, p.tags, p.max_runs, p.last_seen,
            (SELECT count(*) FROM runs r WHERE r.status = 'running' AND r.executor = p.node) AS load
     FROM replicas p ORDER BY p.node";

/// The PostgreSQL NOTIFY channel executors listen on; the payload is the executor's node id.
pub(super) const ASSIGNMENT_CHANNEL: &str = "tenure_assignments";

/// Why `replace` stops a run: its error once `killed`.
pub(super) const REPLACED: &str = "replaced by a newer run";

/// The error a given-up attempt is recorded with (a cancelled one: its `cancel_reason`, when it
/// has one).
pub(super) fn give_up_reason(expired: &ExpiredExecution) -> String {
    let node = &expired.key.executor;
    if expired.cancel_requested {
        REPLACED.to_owned()
    } else if expired.accepted {
        format!("lost: its executor {node} stopped renewing its execution lease")
    } else {
        format!("lost: its executor {node} did not accept it in time")
    }
}

/// A row of `id, attempt, executor, job, slot, planned_at, term, trigger`.
pub(super) fn assigned_run(row: &impl LedgerRow) -> Result<AssignedRun, sqlx::Error> {
    Ok(AssignedRun {
        key: ExecutionKey {
            run_id: row.int("id")?,
            attempt: row.small_int("attempt")?,
            executor: row.text("executor")?,
        },
        job: row.text("job")?,
        slot: row.instant("slot")?,
        planned_at: row.instant("planned_at")?,
        term: row.int("term")?,
        trigger: super::common::trigger_kind(row, "trigger")?,
    })
}

/// A row of `id, attempt, executor, job, accepted, cancel_requested`.
pub(super) fn expired_execution(row: &impl LedgerRow) -> Result<ExpiredExecution, sqlx::Error> {
    Ok(ExpiredExecution {
        key: ExecutionKey {
            run_id: row.int("id")?,
            attempt: row.small_int("attempt")?,
            executor: row.text("executor")?,
        },
        job: row.text("job")?,
        accepted: row.flag("accepted")?,
        cancel_requested: row.flag("cancel_requested")?,
    })
}

/// A row of `node, tags, max_runs, last_seen, load`.
pub(super) fn replica_load(row: &impl LedgerRow) -> Result<ReplicaLoad, sqlx::Error> {
    Ok(ReplicaLoad {
        offer: ReplicaOffer {
            node: row.text("node")?,
            tags: split_tags(&row.text("tags")?),
            max_runs: row.small_int("max_runs")?.max(1) as u32,
        },
        last_seen: row.instant("last_seen")?,
        load: row.int("load")?,
    })
}
