//! What a replica knows about its own leadership: the `Term` (fencing token) it holds and the
//! local deadline of its lease. `election` (etcd or ZooKeeper) publishes a `Leadership` through a
//! `watch` channel; `scheduler` reads it. This module does no IO.
//!
//! Invariant: only the leadership backends mint a `Term`: `election` (a won etcd or ZooKeeper
//! election) and `local` (`tenure dev`, above the ledger's fence, under its lock). So a claim in
//! the ledger (which needs one) is always backed by a leadership that was won. `Term::for_tests`
//! exists only in test builds.
//!
//! Also what a term writes to its coordinator before it starts runs (`StartRecord`, through a
//! `StartWitness` the backend implements), so that a ledger which forgets starts in a database
//! failover cannot make them run again.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::model::{Trigger, TriggerKind};

/// A fencing token: the etcd revision at which this leader's key was created (on ZooKeeper, the
/// zxid at which its znode was created), plus the id of the etcd cluster or ZooKeeper ensemble
/// that issued it (both numberings restart when the coordinator is rebuilt from scratch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    revision: i64,
    cluster_id: String,
}

impl Term {
    pub(crate) fn new(revision: i64, cluster_id: String) -> Term {
        Term { revision, cluster_id }
    }

    /// A term for tests of the store, in this crate's unit tests and outside it. Absent from
    /// release builds.
    #[cfg(any(test, feature = "testing"))]
    pub fn for_tests(revision: i64, cluster_id: &str) -> Term {
        Term::new(revision, cluster_id.to_owned())
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.revision)
    }
}

/// An instant on `CLOCK_BOOTTIME`: like the monotonic clock, but it keeps counting while the
/// machine is suspended (a VM paused by its host, a laptop asleep), so a lease measured on it
/// has expired after a suspend as long as the lease, as it has in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BootInstant(Duration);

impl BootInstant {
    pub fn now() -> BootInstant {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("CLOCK_BOOTTIME is readable");
        BootInstant(Duration::new(now.tv_sec() as u64, now.tv_nsec() as u32))
    }

    /// Nanoseconds of `CLOCK_BOOTTIME`: one clock for every process of the machine, so another
    /// process (the supervisor) can hold a deadline measured here.
    pub fn nanos(&self) -> u64 {
        self.0.as_nanos() as u64
    }

    /// How long from `earlier` to this instant (zero if `earlier` is later).
    pub fn saturating_duration_since(&self, earlier: BootInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    pub fn elapsed(&self) -> Duration {
        BootInstant::now().saturating_duration_since(*self)
    }
}

impl std::ops::Add<Duration> for BootInstant {
    type Output = BootInstant;

    fn add(self, rhs: Duration) -> BootInstant {
        BootInstant(self.0 + rhs)
    }
}

impl std::ops::Sub<Duration> for BootInstant {
    type Output = BootInstant;

    fn sub(self, rhs: Duration) -> BootInstant {
        BootInstant(self.0.saturating_sub(rhs))
    }
}

/// The local deadline of a lease on `CLOCK_BOOTTIME`, shared between the keep-alive loop that
/// extends it and the scheduler that must stop claiming and starting the moment it passes.
#[derive(Debug, Clone)]
pub struct LeaseDeadline {
    /// Nanoseconds of `CLOCK_BOOTTIME`; 0 means "already expired".
    deadline_nanos: Arc<AtomicU64>,
    /// Ended by `resign` while still valid.
    resigned: Arc<AtomicBool>,
}

impl LeaseDeadline {
    pub fn new(deadline: BootInstant) -> LeaseDeadline {
        let lease =
            LeaseDeadline { deadline_nanos: Arc::new(AtomicU64::new(0)), resigned: Arc::new(AtomicBool::new(false)) };
        lease.extend_to(deadline);
        lease
    }

    /// Move the deadline to `deadline` if that is later; never earlier.
    pub fn extend_to(&self, deadline: BootInstant) {
        self.deadline_nanos.fetch_max(deadline.0.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Stop at once (lease lost, stepping down).
    pub fn expire(&self) {
        self.deadline_nanos.store(0, Ordering::SeqCst);
    }

    /// Stop at once because the replica is shutting down: nothing more is claimed or started,
    /// but a run whose start this term already recorded still executes at its slot, as a run
    /// in flight finishes (no other term takes a started run over, and the replica stays
    /// registered until its runs end). Only a lease still valid resigns: one that ran out (a
    /// leader paused or cut off past it) has expired, whatever comes after.
    pub fn resign(&self) {
        if self.is_valid() {
            self.resigned.store(true, Ordering::SeqCst);
        }
        self.expire();
    }

    /// Whether the lease ended by `resign` (while it was valid).
    pub fn resigned(&self) -> bool {
        self.resigned.load(Ordering::SeqCst)
    }

    pub fn deadline(&self) -> BootInstant {
        if crate::testing::no_self_fence() {
            return BootInstant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        }
        BootInstant(Duration::from_nanos(self.deadline_nanos.load(Ordering::SeqCst)))
    }

    /// Whether the lease is still valid `ahead` from now, unless it is renewed meanwhile.
    pub fn is_valid_for(&self, ahead: Duration) -> bool {
        BootInstant::now() + ahead < self.deadline()
    }

    pub fn is_valid(&self) -> bool {
        if crate::testing::no_self_fence() {
            return true;
        }
        BootInstant::now() < self.deadline()
    }

    /// Resolves once the deadline has passed, re-checked on waking (a renewal may have moved
    /// it). It waits on a timer of `CLOCK_BOOTTIME` itself, which fires at once when the
    /// machine resumes past the deadline; tokio's sleeps are on the monotonic clock, which stands
    /// still during a suspend, so they are only the fallback (in steps of at most 100 ms).
    pub async fn expired(&self) {
        loop {
            let deadline = self.deadline();
            let left = deadline.saturating_duration_since(BootInstant::now());
            if left.is_zero() {
                return;
            }
            if boot_timer(deadline).await.is_err() {
                tokio::time::sleep(left.min(Duration::from_millis(100))).await;
            }
        }
    }
}

/// Resolves when `CLOCK_BOOTTIME` reaches `deadline` (a timerfd set to that absolute instant).
async fn boot_timer(deadline: BootInstant) -> std::io::Result<()> {
    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
    let timer = TimerFd::new(ClockId::CLOCK_BOOTTIME, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
    timer.set(Expiration::OneShot(TimeSpec::from_duration(deadline.0)), TimerSetTimeFlags::TFD_TIMER_ABSTIME)?;
    let timer = std::os::fd::OwnedFd::from(timer);
    // SAFETY: the descriptor is owned by the `AsyncFd` and stays open, the same one, until it drops.
    let timer = unsafe { tokio::io::unix::AsyncFd::register_with_interest(timer, tokio::io::Interest::READABLE) }
        .map_err(|error| std::io::Error::other(error.to_string()))?;
    let _ready = timer.readable().await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub enum Leadership {
    /// Not leading. `leader` is the node id of the current leader when known.
    Follower { leader: Option<String> },
    /// Leading with `term` until `lease` expires or `step_down` is cancelled.
    Leader(LeaderTerm),
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader(_))
    }

    pub fn term(&self) -> Option<&Term> {
        match self {
            Leadership::Leader(leader) => Some(&leader.term),
            Leadership::Follower { .. } => None,
        }
    }
}

/// Everything the scheduler needs while it leads.
#[derive(Debug, Clone)]
pub struct LeaderTerm {
    pub term: Term,
    pub since: DateTime<Utc>,
    pub lease: LeaseDeadline,
    /// Cancelled by whoever decides this term must end (the scheduler when the fence shows a
    /// newer term, shutdown); the election then resigns and campaigns again.
    pub step_down: CancellationToken,
    /// Where this term records, before each fenced start, what it is about to start: the
    /// coordinator, which a database failover cannot roll back.
    pub starts: Arc<dyn StartWitness>,
}

/// A run as the start witness names it: its identity (job, slot), when it was to start, and why
/// it was claimed (the request behind a manual or backfill run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessedRun {
    pub job: String,
    pub slot: DateTime<Utc>,
    pub planned: DateTime<Utc>,
    pub trigger: TriggerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<i64>,
}

impl WitnessedRun {
    pub fn new(job: &str, slot: DateTime<Utc>, planned: DateTime<Utc>, trigger: Trigger) -> WitnessedRun {
        WitnessedRun { job: job.to_owned(), slot, planned, trigger: trigger.kind(), request: trigger.request_id() }
    }

    /// The claim's trigger again (the request id of a manual or backfill run).
    pub fn trigger(&self) -> Trigger {
        let request = self.request.unwrap_or_default();
        match self.trigger {
            TriggerKind::Schedule => Trigger::Schedule,
            TriggerKind::Manual => Trigger::Manual { request },
            TriggerKind::Backfill => Trigger::Backfill { request },
            TriggerKind::Upstream => Trigger::Upstream,
        }
    }
}

/// What the coordinator holds of the starts of the latest term that recorded any, written before
/// each batch of fenced starts is sent, so that every run that may have begun is covered whatever
/// the ledger later forgets. `through` bounds the scheduled slots (every start witnessed so far
/// was planned at or before it); manual and backfill runs, whose slots are not in schedule order,
/// are named one by one in `recent` for a while.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRecord {
    /// The term that wrote it.
    pub term: i64,
    /// The latest planned start among every start witnessed (carried over from older terms).
    pub through: Option<DateTime<Utc>>,
    /// What the writing term knows of its own batches, then, while it has had none of its own
    /// acknowledged, those of the terms before it (newest first): a new term judges them all.
    #[serde(default)]
    pub terms: Vec<TermStarts>,
    /// More older terms were carried than kept: judge the ledger as having lost commits.
    #[serde(default)]
    pub assume_lost: bool,
    /// Manual and backfill runs started within `StartRecord::RECENT`, oldest first.
    #[serde(default)]
    pub recent: Vec<WitnessedRun>,
}

impl StartRecord {
    /// How long a manual or backfill start stays named: the replication delay of an asynchronous
    /// standby that the guarantee covers for them (scheduled slots are covered whatever the delay).
    pub const RECENT: Duration = Duration::from_secs(15 * 60);
    /// The most manual and backfill starts named at once (the oldest go first).
    pub const RECENT_MAX: usize = 1_024;
    /// How many runs of an acknowledged batch are named to find it again in the ledger.
    pub const ACKNOWLEDGED_NAMES: usize = 8;
    /// The most batches sent and not acknowledged kept apart (more are merged into one range).
    pub const PENDING_MAX: usize = 32;
    /// The most older terms carried.
    pub const TERMS_MAX: usize = 8;
}

/// One term's batches as the start record keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermStarts {
    pub term: i64,
    /// The ledger's history as the term found it: PostgreSQL's timeline (a promotion begins a
    /// new one) and whether a commit the server acknowledged survives the server's own crash
    /// (`synchronous_commit` is not `off`). When both still hold, the ledger lost nothing.
    pub timeline: Option<i64>,
    pub crash_safe: bool,
    /// Fenced starts of runs on the leader's replica, and assignments to other replicas: two
    /// batchers sending side by side, so each keeps its own.
    pub starts: StreamStarts,
    pub assignments: StreamStarts,
}

/// One batcher's batches: the last the ledger acknowledged, and those recorded and sent since
/// whose statements have not been acknowledged (they may have committed, or not).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStarts {
    /// Some runs the last acknowledged batch started: a ledger without any of them lost commits.
    #[serde(default)]
    pub acknowledged: Vec<WitnessedRun>,
    /// The planned starts of the batches sent and not acknowledged.
    #[serde(default)]
    pub pending: Vec<PlannedRange>,
}

/// The planned starts of one batch, first to last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRange {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl PlannedRange {
    pub fn contains(&self, planned: DateTime<Utc>) -> bool {
        self.from <= planned && planned <= self.to
    }
}

/// Why the coordinator did not record a start.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The term no longer leads in the coordinator (its key or znode is gone).
    #[error("term {term} no longer leads in the coordinator")]
    NotLeading { term: i64 },
    #[error("the coordinator did not record the starts: {0}")]
    Unavailable(String),
}

/// The coordinator's side of the start witness: one record per election, written only by the
/// term that leads (a write from a term whose leadership ended is refused), read by a new term
/// before its first claim. Implemented by `election` (etcd: a key written in a transaction that
/// compares the leader key's create revision; ZooKeeper: a znode set in a multi that checks the
/// candidate znode) and by `local` (`tenure dev`: its ledger is on this machine and cannot fail
/// over, so there is nothing to witness).
#[async_trait::async_trait]
pub trait StartWitness: fmt::Debug + Send + Sync {
    async fn read(&self) -> Result<Option<StartRecord>, WitnessError>;
    async fn write(&self, record: &StartRecord) -> Result<(), WitnessError>;
}

/// `tenure dev`'s witness, and the scheduler's unit tests': records nothing, remembers nothing.
#[derive(Debug, Default)]
pub struct NoStartWitness;

#[async_trait::async_trait]
impl StartWitness for NoStartWitness {
    async fn read(&self) -> Result<Option<StartRecord>, WitnessError> {
        Ok(None)
    }

    async fn write(&self, _record: &StartRecord) -> Result<(), WitnessError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wait ends at the deadline, on `CLOCK_BOOTTIME` (a timer of that clock), follows a
    /// deadline moved meanwhile, and ends at once for one already past.
    #[tokio::test]
    async fn a_lease_deadline_is_awaited_on_the_boot_clock_and_follows_renewals() {
        let start = BootInstant::now();
        let lease = LeaseDeadline::new(start + Duration::from_millis(100));
        let waiting = tokio::spawn({
            let lease = lease.clone();
            async move {
                lease.expired().await;
                BootInstant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        lease.extend_to(start + Duration::from_millis(300));
        let ended = waiting.await.unwrap().saturating_duration_since(start);
        assert!(ended >= Duration::from_millis(300) && ended < Duration::from_secs(2), "{ended:?}");
        let past = LeaseDeadline::new(BootInstant::now());
        tokio::time::timeout(Duration::from_secs(1), past.expired()).await.expect("a passed deadline is expired");
        // The boot clock's own timer is what waits (not the fallback).
        let soon = BootInstant::now() + Duration::from_millis(20);
        boot_timer(soon).await.expect("a CLOCK_BOOTTIME timer");
        assert!(BootInstant::now() >= soon);
    }

    #[test]
    fn lease_deadline_only_moves_forward_and_expires() {
        let now = BootInstant::now();
        let lease = LeaseDeadline::new(now + Duration::from_secs(10));
        assert!(lease.is_valid());
        lease.extend_to(now + Duration::from_secs(5));
        assert!(lease.deadline() >= now + Duration::from_secs(10) - Duration::from_millis(1));
        lease.expire();
        assert!(!lease.is_valid());
        let past = LeaseDeadline::new(now);
        assert!(!past.is_valid());
    }

    /// A suspended machine cannot be simulated here; what can be checked is that the lease is
    /// measured on the clock that counts suspended time: the one `/proc/uptime` reports, which is
    /// never behind the monotonic clock.
    #[test]
    fn leases_are_measured_on_the_clock_that_counts_suspended_time() {
        let uptime: f64 = std::fs::read_to_string("/proc/uptime").unwrap().split(' ').next().unwrap().parse().unwrap();
        let boot = BootInstant::now().0.as_secs_f64();
        assert!((boot - uptime).abs() < 1.0, "CLOCK_BOOTTIME {boot} vs uptime {uptime}");
        let monotonic = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
        assert!(BootInstant::now().0 >= Duration::new(monotonic.tv_sec() as u64, monotonic.tv_nsec() as u32));
    }
}
