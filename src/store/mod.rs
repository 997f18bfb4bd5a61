//! The run ledger: the fence, the terms history and one row per (job, slot), in PostgreSQL for a
//! cluster (`postgres`) or SQLite for `tenure dev` (`sqlite`), behind one `Ledger` contract. Owns
//! every SQL statement in tenure; nothing else talks to a database.
//!
//! Two sides, two handles: `Ledger` (`Store`) is what the leader's scheduler does on the firing
//! pool (fenced writes, cursors, terms, outcomes); `LedgerReads` (`Reads`) is what the web does
//! on the read pool (dashboard and API reads, operator controls). `common` holds what both
//! databases share (column lists, row mappers, refusals, pruning); `pools` the connections and
//! migrations.
//!
//! Invariant: every write that records a slot (`claim_run`, `record_slots`), starts a run
//! (`start_runs`), moves a cursor (`job_cursors`) or changes a run as its leader (`retry_run`,
//! `reap_lost`) checks the fence in the same statement, so it cannot commit after a newer term's
//! `begin_term` has committed. A manual trigger is marked handled by the claim of its slot, in
//! that same statement: a refused claim leaves it pending.
//!
//! A row is claimed (`running`, no `started_at`), then started (`started_at` set by the fenced
//! `start_runs`, before the process or request begins), then finished (the outcome, with
//! `began_at`: when the attempt's process was spawned or its request began to be sent). Only a
//! claimed row that was never started can change hands: a newer term's claim or `record_slots`
//! takes it over.

mod access;
mod common;
mod execution;
mod outbox;
mod pools;
mod postgres;
mod sqlite;

pub use access::{
    Access, AuditEntry, AuditFilter, AuditOutcome, AuditRecord, CreateTokenError, NewToken, TokenCheck, TokenRecord,
};
pub use execution::{
    AssignedRun, Assignment, ExecutionKey, Executions, ExpiredExecution, GiveUp, Renewal, ReplicaLoad, ReplicaOffer,
};
pub use outbox::{Delivery, NotificationRecord, NotifyRoute, OutboxEvent};
pub use pools::{
    DatabaseConnectError, MigrateError, READ_CONNECTIONS, check_connection, connect, connect_reads, migrate,
    migration_connection, transient,
};
pub use postgres::Postgres;
pub use sqlite::Sqlite;

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Concurrency;
use crate::leadership::Term;
use crate::model::{Control, RunOutcome, RunStatus, Trigger, TriggerKind};

/// Why a claim was refused. The two refusals are told apart for metrics and logs.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("fenced: term {term} is older than the fence at {fence}")]
    Fenced { term: i64, fence: i64 },
    #[error("slot already claimed by term {term} on {node}")]
    AlreadyClaimed { term: i64, node: String },
    /// The coordinator did not record a start before it was to be sent (`scheduler::witness`),
    /// so it was not sent: retried like a database error, never executed unwitnessed.
    #[error("{0}")]
    NotWitnessed(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Why a new term could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The fence holds a newer term, or this very term begun by another node: a term number is
    /// begun once, so two leaders can never share one.
    #[error(
        "the fence is at term {fence} of node {fence_node} (etcd cluster {fence_cluster}); term {term} may not begin"
    )]
    Superseded { term: i64, fence: i64, fence_cluster: String, fence_node: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// How a scheduled or manual slot asks to be claimed.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub job: &'a str,
    pub slot: DateTime<Utc>,
    pub trigger: Trigger,
    pub term: &'a Term,
    pub node: &'a str,
    pub config_hash: &'a str,
    /// With `forbid`, the claim records the slot `skipped` when a run of the job is still going.
    pub skip_if_running: SkipIfRunning,
    pub claimed_at: DateTime<Utc>,
    /// When the run is planned to start (`RunRecord::planned_at`).
    pub planned_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipIfRunning {
    Yes,
    /// `forbid` for a manual run its leader executes: skipped only for a run going elsewhere
    /// (another term's, or executing on another replica); the leader's own runs of the job in
    /// this term it waits for before starting it.
    ExceptOwn,
    No,
}

/// A committed claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    pub run_id: i64,
    /// `Running` (claimed: start it at its slot through `start_runs`) or `Skipped` (a previous
    /// run is still going; its row's error names it: "forbid: run N of this job was still
    /// going").
    pub status: RunStatus,
}

/// Where a new term resumes one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCursor {
    /// The newest scheduled slot recorded (claimed, run or recorded missed), or when the job was
    /// first seen.
    pub slot: DateTime<Utc>,
    /// The oldest scheduled slot an older term claimed and never started: not run yet, so the
    /// new term decides it again per the job's policy.
    pub unstarted: Option<DateTime<Utc>>,
}

/// The fence row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub term: i64,
    pub cluster_id: String,
    pub node: String,
}

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub slot: DateTime<Utc>,
    pub trigger: TriggerKind,
    pub term: i64,
    pub node: String,
    pub config_hash: String,
    pub status: RunStatus,
    pub attempt: i32,
    pub claimed_at: DateTime<Utc>,
    /// When the run was planned to start: the slot plus the job's jitter offset (the slot
    /// without jitter; when it was claimed, for a backfill). Lateness is measured from it.
    pub planned_at: DateTime<Utc>,
    /// When the fenced start was recorded (`start_runs`, or the assignment of a `run_on` run;
    /// `retry_run` for a later attempt): for a start recorded ahead of its slot, the planned
    /// start itself. Not when the run began: it may begin later (a loaded replica, a stalled
    /// supervisor), and only `began_at` says when.
    pub started_at: Option<DateTime<Utc>>,
    /// When the current attempt really began (its process spawned, or its HTTP request began
    /// to be sent), written with its outcome; `None` while it goes, and for a run that never
    /// began or whose outcome was never written. Lateness and duration are counted from it.
    pub began_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub output: String,
    /// The replica the run (its current attempt) is assigned to, when it executes away from its
    /// leader (`run_on: any` or `{ tags: [..] }`); `None` for a run its leader executes.
    pub executor: Option<String>,
}

/// One row of the terms history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TermRecord {
    pub term: i64,
    pub cluster_id: String,
    pub node: String,
    pub started_at: DateTime<Utc>,
    /// The leader's last heartbeat in this term (every second while it leads, and when it ends).
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// A registered replica and when its current process started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNode {
    pub node: String,
    pub since: DateTime<Utc>,
}

/// Where a page of one job's ledger ends: the last row's slot and id. Rows come newest first,
/// so the next page holds the rows before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCursor {
    pub slot: DateTime<Utc>,
    pub id: i64,
}

impl RunCursor {
    pub fn after(run: &RunRecord) -> RunCursor {
        RunCursor { slot: run.slot, id: run.id }
    }

    /// Opaque text for a URL: `<slot in microseconds>.<id>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.slot.timestamp_micros(), self.id)
    }

    pub fn decode(text: &str) -> Option<RunCursor> {
        let (micros, id) = text.split_once('.')?;
        Some(RunCursor { slot: DateTime::from_timestamp_micros(micros.parse().ok()?)?, id: id.parse().ok()? })
    }
}

/// A manual trigger request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TriggerRecord {
    pub id: i64,
    pub job: String,
    pub idempotency_key: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub run_id: Option<i64>,
    pub handled_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub overrides: TriggerOverrides,
}

/// What a manual trigger may ask beyond the job file, recorded with it (and so with its run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TriggerOverrides {
    /// Variables set for this run only, over the job's `env`. Never a `TENURE_*` name.
    pub env: BTreeMap<String, String>,
    /// Why the operator triggered it, as they wrote it.
    pub reason: Option<String>,
    /// A concurrency policy other than the job's, asked for explicitly; `None`: the job's.
    #[serde(serialize_with = "serialize_concurrency")]
    pub concurrency: Option<Concurrency>,
    /// Whether the run releases the runs waiting for its job (`after:`), as a scheduled run does;
    /// a manual run does not unless asked.
    pub cascade: bool,
}

fn serialize_concurrency<S: serde::Serializer>(value: &Option<Concurrency>, out: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(concurrency) => out.serialize_some(concurrency.as_str()),
        None => out.serialize_none(),
    }
}

/// A manual trigger as the web records it (`LedgerReads::request_trigger`).
#[derive(Debug, Clone, Copy)]
pub struct TriggerRequest<'a> {
    pub job: &'a str,
    pub idempotency_key: &'a str,
    pub by: &'a str,
    pub requested_at: DateTime<Utc>,
    pub overrides: &'a TriggerOverrides,
}

/// An operator's backfill of one job's window, with its progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackfillRecord {
    pub id: i64,
    pub job: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    /// How many slots it queued: those of the window the ledger did not hold.
    pub slots: i64,
    /// Slots whose run has ended (whatever its status), or that another run holds.
    pub done: i64,
    /// Slots whose run has started and not ended.
    pub running: i64,
    /// Whether its runs release the runs waiting for its job, link after link (`after:`).
    pub cascade: bool,
}

impl BackfillRecord {
    /// Slots not started yet (claimed by a leader that died, or not claimed).
    pub fn pending(&self) -> i64 {
        self.slots - self.done - self.running
    }
}

/// One queued slot of a backfill, for the leader to claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillSlot {
    pub backfill: i64,
    pub job: String,
    pub slot: DateTime<Utc>,
}

/// One job waiting for another, as the leader's scan asks about it (`Ledger::awaited_runs`): runs
/// of `upstream` that ended at or after `since` may release runs of `dependent`.
#[derive(Debug, Clone, Copy)]
pub struct AwaitLink<'a> {
    pub dependent: &'a str,
    pub upstream: &'a str,
    pub since: DateTime<Utc>,
}

/// A run of an awaited job, for a slot of which the dependent job has no row yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwaitedRun {
    /// The job that waits.
    pub dependent: String,
    /// The slot: the awaited runs' and, once released, the dependent run's.
    pub slot: DateTime<Utc>,
    /// The awaited job and its run of the slot.
    pub job: String,
    pub run_id: i64,
    pub status: RunStatus,
    /// When it ended (its outcome recorded; for a slot skipped at its claim, the claim); `None`
    /// while it goes.
    pub ended_at: Option<DateTime<Utc>>,
}

/// How long each job's finished rows are kept: `default` for every job not in `per_job`.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub default_before: DateTime<Utc>,
    /// Jobs with their own `retain`: rows with a slot before this go.
    pub per_job: Vec<(String, DateTime<Utc>)>,
}

impl Retention {
    /// The same limit for every job.
    pub fn before(default_before: DateTime<Utc>) -> Retention {
        Retention { default_before, per_job: Vec::new() }
    }
}

/// An operator's pause or resume of one job. It overrides the job file's `paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobControl {
    pub paused: bool,
    /// When an operator last ended a pause of the job: slots before it are not owed.
    pub resumed_at: Option<DateTime<Utc>>,
}

/// What the overview counts, filters and sorts each job by, read for every job at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobState {
    /// The newest outcome: the newest run's status that is neither `running` nor `skipped` (a
    /// slot its concurrency policy skipped says nothing of how the job fares); none before one.
    pub last: Option<RunStatus>,
    /// A run of the job is going.
    pub running: bool,
    /// Since the instant asked: a slot was missed, or one of the job's newest `LATE_WINDOW` runs
    /// began later than the lateness asked after its planned start.
    pub late_or_missed: bool,
}

/// How many of a job's newest runs `LedgerReads::job_states` looks at for lateness: a bound on
/// its cost per job (a per-second job has 86,400 runs a day); missed slots are all counted.
pub const LATE_WINDOW: i64 = 100;

/// The PostgreSQL NOTIFY channel for pauses, resumes and triggers.
const CONTROL_CHANNEL: &str = "tenure_controls";

/// The firing path's ledger: what the scheduler (and pruning) may do. Cheap to clone; derefs to
/// the `Ledger` contract. On PostgreSQL it holds the firing pool (`connect`).
#[derive(Clone)]
pub struct Store {
    ledger: Arc<dyn Ledger>,
}

impl Store {
    /// The PostgreSQL ledger on the firing pool (migrations applied separately, see `migrate`).
    pub fn new(pool: PgPool) -> Store {
        Store { ledger: Arc::new(Postgres::new(pool)) }
    }

    pub fn from_ledger(ledger: impl Ledger + 'static) -> Store {
        Store { ledger: Arc::new(ledger) }
    }

    /// Both sides of one ledger on one pool: `tenure dev` (SQLite has one connection anyway) and
    /// tests. A replica on PostgreSQL opens `Store::new` and `Reads::new` on pools of their own.
    pub fn with_reads<L: Ledger + LedgerReads + 'static>(ledger: L) -> (Store, Reads) {
        let ledger = Arc::new(ledger);
        (Store { ledger: ledger.clone() }, Reads { ledger })
    }
}

impl Deref for Store {
    type Target = dyn Ledger;

    fn deref(&self) -> &Self::Target {
        &*self.ledger
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// The web's ledger: the dashboard's and API's reads and the operator controls they record.
/// Cheap to clone; derefs to `LedgerReads`. On PostgreSQL it holds the read pool
/// (`connect_reads`), so no reader can take a connection a claim needs; and it has no way to
/// claim or start a run.
#[derive(Clone)]
pub struct Reads {
    ledger: Arc<dyn LedgerReads>,
}

impl Reads {
    /// The PostgreSQL ledger's read side on the read pool (`connect_reads`).
    pub fn new(pool: PgPool) -> Reads {
        Reads { ledger: Arc::new(Postgres::new(pool)) }
    }

    pub fn from_ledger(ledger: impl LedgerReads + 'static) -> Reads {
        Reads { ledger: Arc::new(ledger) }
    }
}

impl Deref for Reads {
    type Target = dyn LedgerReads;

    fn deref(&self) -> &Self::Target {
        &*self.ledger
    }
}

impl std::fmt::Debug for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reads")
    }
}

/// Slots that will not run, to be recorded as such (`Ledger::record_slots`).
#[derive(Debug, Clone, Copy)]
pub struct UnrunSlots<'a> {
    pub job: &'a str,
    pub slots: &'a [DateTime<Utc>],
    /// `missed`, or `killed` before they started.
    pub status: RunStatus,
    pub trigger: Trigger,
    pub term: &'a Term,
    pub node: &'a str,
    pub config_hash: &'a str,
    pub error: &'a str,
}

/// How the web's request to cancel a run was answered (`LedgerReads::cancel_run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelAnswer {
    /// Recorded (or recorded already: the first request's reason stays) for the running run of
    /// `job`; the leader acts on it.
    Asked {
        job: String,
    },
    NoSuchRun,
    /// The run has ended already, with this status.
    Ended(RunStatus),
}

/// An operator's cancel the leader has not acted on yet (`Ledger::pending_cancels`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCancel {
    pub run_id: i64,
    pub job: String,
    /// What the run is recorded `killed` with: who asked, and why.
    pub reason: String,
}

/// The database's clock, and whether it is a writable primary.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseClock {
    pub now: DateTime<Utc>,
    /// Why the server cannot take the ledger's writes (a standby, read-only); `None` when it can.
    pub not_primary: Option<&'static str>,
}

/// See `Ledger::history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerHistory {
    pub timeline: Option<i64>,
    pub crash_safe: bool,
}

/// PostgreSQL's replication settings as a session of the ledger sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    pub synchronous_commit: String,
    pub synchronous_standby_names: String,
}

impl Replication {
    /// Whether a commit the ledger was told about has reached a standby too: a named synchronous
    /// standby, and a `synchronous_commit` level that waits for it. (A managed service may
    /// replicate below PostgreSQL, unseen here: this answers only for what PostgreSQL reports.)
    pub fn is_synchronous(&self) -> bool {
        !self.synchronous_standby_names.trim().is_empty()
            && matches!(self.synchronous_commit.as_str(), "on" | "remote_write" | "remote_apply")
    }
}

/// The write side: what the leader's scheduler does on the firing pool (fenced writes, cursors,
/// terms, outcomes) and the few reads it needs to act (controls, pending triggers). One test
/// suite checks both implementations.
#[async_trait]
pub trait Ledger: Executions + Send + Sync {
    /// The database server's wall clock: the reference every replica's clock is checked against;
    /// and, in the same round trip, whether the server takes the ledger's writes.
    async fn clock(&self) -> Result<DatabaseClock, sqlx::Error>;

    /// What the server says of its replication, for the operator (`None`: a local file, which
    /// has none).
    async fn replication(&self) -> Result<Option<Replication>, sqlx::Error>;

    /// The ledger's history as the start witness judges it: PostgreSQL's current timeline (a
    /// promoted standby begins a new one) and whether an acknowledged commit survives the
    /// server's crash (`synchronous_commit` is not `off`). `None` for the timeline where the
    /// server does not tell it (a local file, a service without WAL functions).
    async fn history(&self) -> Result<LedgerHistory, sqlx::Error>;

    /// Raise the fence to `term` and record it in the terms history, atomically. Must succeed
    /// before the first claim of a term. A term number is begun once: refused when the fence is
    /// above it, or at it for another node (two leaders that minted the same term never both
    /// pass). Idempotent for the node that began it (a retry after a lost acknowledgement).
    async fn begin_term(&self, term: &Term, node: &str) -> Result<(), FenceError>;

    async fn fence(&self) -> Result<Fence, sqlx::Error>;

    /// Claim one slot in one statement that checks the fence and inserts the (job, slot) row, or
    /// takes over a row an older term claimed and never started. A claim is not a licence to
    /// execute: `start_runs` is. Retrying after a lost acknowledgement is safe: an unstarted row
    /// of our own term and node is handed back.
    ///
    /// A manual claim (`Trigger::Manual`) marks its trigger handled in the same statement,
    /// linked to the run now holding its slot: the claimed row, or one another term recorded
    /// (the trigger fired there). A fenced claim leaves the trigger pending.
    async fn claim_run(&self, claim: &Claim<'_>) -> Result<Claimed, ClaimError>;

    /// Claim many slots of one term at once, each with exactly `claim_run`'s meaning (fence,
    /// uniqueness, `skip_if_running`, a refusal explained). PostgreSQL does it in one statement
    /// and one commit; the default claims one by one.
    async fn claim_runs(&self, claims: &[Claim<'_>]) -> Vec<Result<Claimed, ClaimError>> {
        let mut results = Vec::with_capacity(claims.len());
        for claim in claims {
            results.push(self.claim_run(claim).await);
        }
        results
    }

    /// Record slots that will not run (`missed`, or `killed` before they started) under the
    /// fence, in one statement: new rows, and rows claimed by this or an older term that were
    /// never started. Returns how many rows were written.
    async fn record_slots(&self, unrun: &UnrunSlots<'_>) -> Result<u64, ClaimError>;

    /// Start runs `term` claimed: one fenced statement records each start time on its row, if the
    /// row is still this term's and unstarted (or already carries exactly this start: a retry
    /// after a lost acknowledgement). A run executes only when its answer is `true`; a refusal
    /// leaves the claim to the next term. `Fenced` when a newer term holds the fence.
    async fn start_runs(&self, term: &Term, runs: &[(i64, DateTime<Utc>)]) -> Result<Vec<bool>, ClaimError>;

    /// Begin another attempt of a slot this term claimed, under the fence.
    async fn retry_run(
        &self,
        run_id: i64,
        term: &Term,
        attempt: i32,
        previous_error: &str,
        started_at: DateTime<Utc>,
    ) -> Result<(), ClaimError>;

    /// Record how a run ended. Not fenced: the node that ran it reports the truth even after its
    /// term ended, and may overwrite a `lost` that a newer leader wrote meanwhile.
    async fn finish_run(&self, run_id: i64, outcome: &RunOutcome) -> Result<(), sqlx::Error>;

    /// `finish_run` for many runs at once (one statement on PostgreSQL).
    async fn finish_runs(&self, runs: &[(i64, RunOutcome)]) -> Result<(), sqlx::Error> {
        for (run_id, outcome) in runs {
            self.finish_run(*run_id, outcome).await?;
        }
        Ok(())
    }

    /// How many of `runs` (job, slot) the ledger holds as started by `term`: the start witness's
    /// test of whether the ledger still has a term's last starts after a database failover.
    async fn started_by_term(&self, term: i64, runs: &[(String, DateTime<Utc>)]) -> Result<usize, sqlx::Error>;

    /// Each of `jobs`' cursor, beside the runs (so retention cannot move it): the newest
    /// scheduled slot any term claimed or recorded; a job without one gets `now`, recorded under
    /// the fence. Also the oldest scheduled slot of each job that an older term claimed and never
    /// started, which the new term takes over.
    async fn job_cursors(
        &self,
        term: &Term,
        jobs: &[&str],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, JobCursor>, ClaimError>;

    /// Mark `lost` the runs started and still `running` from an older term whose node is not among `live`
    /// (never a run assigned to an executor: it keeps its execution lease, see `Executions`),
    /// or was claimed before that node's current process started (a replica restarted under the
    /// same id does not vouch for its previous life's runs). Claim and start times come from the
    /// same node's clock. Fenced: only the current leader may.
    async fn reap_lost(&self, term: &Term, live: &[LiveNode]) -> Result<u64, sqlx::Error>;

    /// Delete up to `batch` finished rows whose slot and claim are both older than the job's
    /// limit in `retention` (a backfill's rows are kept for the retention after their claim),
    /// keeping each job's newest row (the dashboard's last run; the cursor is kept apart in
    /// `job_cursors`, which pruning never touches), and the delivered or abandoned notifications
    /// created before the ledger's limit. Returns how many runs went.
    async fn prune_runs(&self, retention: &Retention, batch: i64) -> Result<u64, sqlx::Error>;

    /// Delete up to `batch` audit entries older than `before` (`--audit-retain`): the only way an
    /// audit entry goes. Returns how many went.
    async fn prune_audit(&self, before: DateTime<Utc>, batch: i64) -> Result<u64, sqlx::Error>;

    /// The ledger's partitions (PostgreSQL, one a week): the next eight days' made ready, and the
    /// partitions retention has passed given back whole (dropped, or rewritten with the few
    /// rows they keep when at least half of them goes), each only once its last slot is more
    /// than an hour old. Returns the rows removed; `prune_runs` deletes the rest row by row.
    /// Nothing to do on a ledger without partitions (SQLite returns its pages as it deletes).
    async fn keep_partitions(&self, retention: &Retention, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        let _ = (retention, now);
        Ok(0)
    }

    /// Queued backfill slots whose row has not started (no row, or a claim never started),
    /// oldest backfill first, at most `limit`.
    async fn pending_backfill_slots(&self, limit: i64) -> Result<Vec<BackfillSlot>, sqlx::Error>;

    /// Take out of the backfill queue every slot whose row has started or ended (or that
    /// another trigger's row holds): they are the ledger's now. Returns how many went.
    async fn clear_backfill_slots(&self) -> Result<u64, sqlx::Error>;

    /// Operator pauses and resumes, by job. An entry overrides the job file's `paused`.
    async fn job_controls(&self) -> Result<HashMap<String, JobControl>, sqlx::Error>;

    /// The runs that may release runs of jobs waiting for others (`after:`), read off the ledger
    /// alone, so a new leader finds what an older one left: for each link's dependent, the slots
    /// for which one of its awaited jobs has a run that ended at or after the link's `since` (a
    /// scheduled or released run, or a manual or backfill run asked to cascade) while the
    /// dependent has no row (or only an older term's claim of it, never started, which the next
    /// claim takes over); then every run of that slot of each job it waits for (ended or going),
    /// ordered by slot.
    async fn awaited_runs(&self, term: &Term, links: &[AwaitLink<'_>]) -> Result<Vec<AwaitedRun>, sqlx::Error>;

    /// Replace a running run's output tail, so every replica can show it live.
    async fn update_output(&self, run_id: i64, output: &str) -> Result<(), sqlx::Error>;

    /// `update_output` for many runs at once (one statement on PostgreSQL): the live output of
    /// every run going is written together, once a second.
    async fn update_outputs(&self, outputs: &[(i64, String)]) -> Result<(), sqlx::Error> {
        for (run_id, output) in outputs {
            self.update_output(*run_id, output).await?;
        }
        Ok(())
    }

    /// The leader of `term` is alive at `at` (the terms page measures hand-overs with it).
    async fn term_alive(&self, term: &Term, at: DateTime<Utc>) -> Result<(), sqlx::Error>;

    /// Triggers no claim has handled yet, and those whose claim was never started (a newer
    /// term's claim takes it over), oldest first.
    async fn pending_triggers(&self) -> Result<Vec<TriggerRecord>, sqlx::Error>;

    /// Operators' cancels of running runs not acted on yet (`cancel_reason` set, no
    /// `cancel_requested`), oldest first.
    async fn pending_cancels(&self) -> Result<Vec<PendingCancel>, sqlx::Error>;

    /// Act on operators' cancels, under the fence (as `Executions::request_cancel` for
    /// `replace`): set `cancel_requested` on those of `runs` still running, so an executor
    /// elsewhere is refused its next renewal and kills the run (recorded `killed` with its
    /// `cancel_reason`); a claim an older term never started is recorded `killed` at once (no
    /// one else would). Returns the ids it marked, whose runs this leader stops itself if they
    /// are its own. `Fenced` when a newer term holds the fence: a stale leader cancels nothing.
    async fn apply_cancels(&self, term: &Term, runs: &[i64]) -> Result<Vec<i64>, ClaimError>;

    /// Mark a trigger handled without a run (its job is not in the job file).
    async fn trigger_dropped(&self, trigger_id: i64) -> Result<(), sqlx::Error>;

    /// Send on `wake` whenever a pause, resume or trigger may have happened, until `stop`.
    async fn listen_controls(&self, wake: mpsc::Sender<()>, stop: CancellationToken);

    /// Route outcomes to notification targets as `routes` say (the leader's job file), replacing
    /// every route, under the fence: from then on each outcome recorded writes its events in the
    /// same statement.
    async fn set_notify_routes(&self, term: &Term, routes: &[NotifyRoute]) -> Result<(), ClaimError>;

    /// Take up to `limit` pending events that are due at `now` and not held by another delivery,
    /// and hold them for `term` until `hold_until`, under the fence (nothing when a newer term
    /// holds it). Each take counts an attempt.
    async fn take_notifications(
        &self,
        term: &Term,
        now: DateTime<Utc>,
        hold_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, sqlx::Error>;

    /// Record delivery answers. Each is written only while `term` still holds its event: once a
    /// newer term has taken an event up again, an older term's answer is refused. Returns how
    /// many were written.
    async fn record_deliveries(&self, term: &Term, deliveries: &[(i64, Delivery)]) -> Result<u64, sqlx::Error>;

    /// How many events wait to be delivered.
    async fn pending_notifications(&self) -> Result<i64, sqlx::Error>;
}

/// The read side: what the dashboard and the API do, on the read pool. Reads, and the operator
/// controls (rows the leader acts on; never a run). Rows this binary cannot read (an unknown
/// status or trigger) are decode errors, never a default.
#[async_trait]
pub trait LedgerReads: Access + Send + Sync {
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), sqlx::Error>;

    async fn run(&self, run_id: i64) -> Result<Option<RunRecord>, sqlx::Error>;

    /// The runs of `jobs` of one slot (output left empty), by job name: the runs that released a
    /// dependent run of that slot, or those it released (`after:`), whose identity is the slot.
    async fn slot_runs(&self, jobs: &[String], slot: DateTime<Utc>) -> Result<Vec<RunRecord>, sqlx::Error>;

    /// The notifications of one run, oldest first, with their delivery state.
    async fn run_notifications(&self, run_id: i64) -> Result<Vec<NotificationRecord>, sqlx::Error>;

    /// One job's runs, newest slot first, those before `before` (the previous page's cursor), at
    /// most `limit`, optionally of one status. Lists leave `output` empty; `run` has it.
    async fn job_runs(
        &self,
        job: &str,
        status: Option<RunStatus>,
        before: Option<RunCursor>,
        limit: i64,
    ) -> Result<Vec<RunRecord>, sqlx::Error>;

    /// The newest `per_job` runs of each of `jobs`, newest first, `output` empty.
    async fn recent_runs(&self, jobs: &[String], per_job: i64) -> Result<HashMap<String, Vec<RunRecord>>, sqlx::Error>;

    /// Operator pauses and resumes, by job (as `Ledger::job_controls`).
    async fn job_controls(&self) -> Result<HashMap<String, JobControl>, sqlx::Error>;

    /// The state of each of `jobs` that has runs, in one statement: its newest outcome, whether
    /// a run goes, and whether since `since` a slot was missed or a run began more than `late`
    /// after its planned start (`JobState`). Index probes per job, never a scan of the ledger.
    async fn job_states(
        &self,
        jobs: &[String],
        since: DateTime<Utc>,
        late: std::time::Duration,
    ) -> Result<HashMap<String, JobState>, sqlx::Error>;

    /// Pause or resume a job (by `audit.who`, recorded in the same transaction); survives
    /// failover; wakes the leader's scheduler. A resume that ends
    /// a pause (the job's control said paused, or it had none: the job file's pause) records
    /// the database's now as the job's `resumed_at`; a resume of a resumed job keeps it.
    async fn set_control(&self, job: &str, control: Control, audit: &AuditRecord) -> Result<(), sqlx::Error>;

    /// Record a manual trigger with its overrides (idempotent per job and key: the same key for
    /// another job is another trigger; a retry keeps the first request's overrides) and wake
    /// the leader's scheduler. `audit` is recorded with a new trigger, in its transaction (a
    /// retry records nothing).
    async fn request_trigger(
        &self,
        request: &TriggerRequest<'_>,
        audit: &AuditRecord,
    ) -> Result<TriggerRecord, sqlx::Error>;

    /// Ask for a running run to be stopped, `reason` (who asked and why) to be its error once it
    /// is `killed`: one conditional statement, `audit` recorded in its transaction when it asked
    /// (nothing for a run that ended), and a wake-up of the leader's scheduler, which acts on it
    /// under the fence. The web never stops a run itself.
    async fn cancel_run(&self, run_id: i64, reason: &str, audit: &AuditRecord) -> Result<CancelAnswer, sqlx::Error>;

    /// The manual trigger a run fulfilled, with its overrides, if it was one.
    async fn trigger_of_run(&self, run_id: i64) -> Result<Option<TriggerRecord>, sqlx::Error>;

    /// Of `slots` of `job`, those the ledger does not hold and no backfill has queued, in order
    /// (what a backfill of them would run).
    async fn unheld_slots(&self, job: &str, slots: &[DateTime<Utc>]) -> Result<Vec<DateTime<Utc>>, sqlx::Error>;

    /// Record a backfill of `job` over `[from, to]`, queueing those of `slots` the ledger does
    /// not hold and no backfill has queued (by `audit.who`, recorded in the same transaction),
    /// and wake the leader's scheduler.
    /// `cascade`: its runs release the runs waiting for its job, link after link.
    async fn request_backfill(
        &self,
        job: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        slots: &[DateTime<Utc>],
        audit: &AuditRecord,
        cascade: bool,
    ) -> Result<BackfillRecord, sqlx::Error>;

    /// One backfill with its progress.
    async fn backfill(&self, id: i64) -> Result<Option<BackfillRecord>, sqlx::Error>;

    /// The newest `limit` backfills (of one job, or all), newest first, with their progress.
    async fn backfills(&self, job: Option<&str>, limit: i64) -> Result<Vec<BackfillRecord>, sqlx::Error>;

    /// Every replica that advertised itself for execution (`Executions::advertise`), with its
    /// tags, capacity, when it was last seen and how many runs are assigned to it or running on
    /// it, by node.
    async fn replica_loads(&self) -> Result<Vec<ReplicaLoad>, sqlx::Error>;

    /// The newest `limit` terms, oldest first: what the dashboard reads.
    async fn recent_terms(&self, limit: i64) -> Result<Vec<TermRecord>, sqlx::Error>;

    /// Every row of the ledger, oldest slot first (tests and exports).
    async fn all_runs(&self) -> Result<Vec<RunRecord>, sqlx::Error>;

    /// Every term, oldest first (tests and exports; grows with every hand-over).
    async fn terms(&self) -> Result<Vec<TermRecord>, sqlx::Error>;
}

/// Databases cannot hold NUL bytes in text.
fn clean_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}
