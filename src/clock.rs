//! Wall-clock and database sanity: a replica leads only while it can reach the ledger and its
//! clock agrees with the ledger's. Slots are wall-clock instants, so a replica whose clock is
//! wrong would fire at the wrong times; one that cannot reach the database can record nothing,
//! and would hold the lead while a replica that can waits. Three guards:
//!
//! - every replica asks the database for its clock (`clock_timestamp()`, the RTT halved) every
//!   eighth of `unreachable_after` (within 250 ms..1 s), on a connection kept for that (a burst
//!   of claims holding every firing connection is not a database that does not answer); while the skew exceeds `MAX_SKEW`, is
//!   still unknown, or no answer came for `unreachable_after`, it does not campaign, and a leader
//!   steps down;
//! - `unreachable_after` is the lease TTL, at least 2 s: a leader cut from PostgreSQL (but not
//!   from etcd) hands over within about that plus a probe interval, as fast as a crashed one;
//! - the same answer says whether the database is a writable primary: a replica whose database
//!   address now leads to a standby or a read-only server does not campaign, and a leader steps
//!   down, until it is a primary again;
//! - the leader notices a step between two wake-ups at once: wall-clock time and monotonic time
//!   elapsed must agree (a pause moves both; a step moves only the wall clock).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::telemetry::metric;

/// The largest difference from the database's clock a replica may fire with.
pub const MAX_SKEW: Duration = Duration::from_secs(2);

/// How long without a database answer before a replica counts as cut from it.
pub fn unreachable_after(lease_ttl: Duration) -> Duration {
    lease_ttl.max(Duration::from_secs(2))
}

/// The last measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockCheck {
    /// Local minus database time, in milliseconds; `None` before the first answer.
    pub skew_ms: Option<i64>,
    /// Whether the database answered within `unreachable_after`.
    pub reachable: bool,
    /// Why the database that answered cannot take the ledger's writes (a standby after the
    /// address moved, a read-only server); `None` for a writable primary.
    pub not_primary: Option<&'static str>,
}

impl ClockCheck {
    /// Before the first answer: may not lead.
    pub const UNKNOWN: ClockCheck = ClockCheck { skew_ms: None, reachable: false, not_primary: None };

    /// Whether this replica may lead.
    pub fn ok(&self) -> bool {
        self.refusal().is_none()
    }

    /// Why this replica may not lead, if it may not.
    pub fn refusal(&self) -> Option<&'static str> {
        if let (true, Some(why)) = (self.reachable, self.not_primary) {
            return Some(why);
        }
        match (self.reachable, self.skew_ms) {
            (_, None) => Some("the database has not told this replica its clock yet"),
            (false, Some(_)) => Some("the database does not answer"),
            (true, Some(skew)) if skew.unsigned_abs() > MAX_SKEW.as_millis() as u64 => {
                Some("this replica's clock differs from the database's")
            }
            (true, Some(_)) => None,
        }
    }
}

/// Measure reachability and skew against the database until `shutdown`.
pub async fn watch_skew(
    store: Store,
    check: watch::Sender<ClockCheck>,
    unreachable_after: Duration,
    shutdown: CancellationToken,
) {
    let every = (unreachable_after / 8).clamp(Duration::from_millis(250), Duration::from_secs(1));
    let mut last_answer: Option<Instant> = None;
    loop {
        let sent = Utc::now();
        let started = Instant::now();
        let previous = *check.borrow();
        let measured = match tokio::time::timeout(unreachable_after, store.clock()).await {
            Ok(Ok(database)) => {
                let round_trip = started.elapsed();
                last_answer = Some(Instant::now());
                let local = sent + chrono::Duration::from_std(round_trip / 2).unwrap_or_default();
                let skew = (local - database.now).num_milliseconds();
                metrics::gauge!(metric::CLOCK_SKEW).set(skew as f64 / 1000.0);
                ClockCheck { skew_ms: Some(skew), reachable: true, not_primary: database.not_primary }
            }
            _ => ClockCheck {
                skew_ms: previous.skew_ms,
                reachable: last_answer.is_some_and(|at| at.elapsed() < unreachable_after),
                not_primary: previous.not_primary,
            },
        };
        match (previous.refusal(), measured.refusal()) {
            (None, Some(why)) => tracing::error!(skew_ms = ?measured.skew_ms, "{why}; not leading until it does"),
            (Some(_), None) => tracing::info!(skew_ms = ?measured.skew_ms, "the database answers and the clocks agree"),
            _ => {}
        }
        metrics::gauge!(metric::DATABASE_REACHABLE).set(if measured.reachable { 1.0 } else { 0.0 });
        check.send_if_modified(|current| {
            let changed = current.refusal() != measured.refusal();
            *current = measured;
            changed
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Log and export what the database says of its replication (at start and at every term):
/// whether a commit the ledger was told about has reached a synchronous standby. Asynchronous
/// replication can lose the last commits in a failover; tenure then runs no slot twice (the
/// start witness) but the ledger's record of those seconds is gone.
pub async fn report_replication(store: &Store) {
    match store.replication().await {
        Ok(Some(replication)) => {
            let synchronous = replication.is_synchronous();
            metrics::gauge!(metric::LEDGER_SYNCHRONOUS).set(if synchronous { 1.0 } else { 0.0 });
            if synchronous {
                tracing::info!(
                    synchronous_commit = %replication.synchronous_commit,
                    synchronous_standby_names = %replication.synchronous_standby_names,
                    "the ledger's commits wait for a synchronous standby: a failover loses none of them"
                );
            } else {
                tracing::info!(
                    synchronous_commit = %replication.synchronous_commit,
                    synchronous_standby_names = %replication.synchronous_standby_names,
                    "the ledger's commits do not wait for a standby: a failover may lose the last seconds of \
                     its history (never a second run of a slot)"
                );
            }
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "could not read the database's replication settings"),
    }
}

/// Detects wall-clock steps between two readings by comparing with the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct StepDetector {
    monotonic: Instant,
    wall: DateTime<Utc>,
}

impl Default for StepDetector {
    fn default() -> StepDetector {
        StepDetector { monotonic: Instant::now(), wall: Utc::now() }
    }
}

impl StepDetector {
    /// How far the wall clock stepped since the last reading (zero within `MAX_SKEW`), and
    /// re-anchor.
    pub fn step(&mut self) -> Option<chrono::Duration> {
        let now = StepDetector::default();
        let wall = now.wall - self.wall;
        let monotonic = chrono::Duration::from_std(now.monotonic - self.monotonic).unwrap_or_default();
        *self = now;
        let step = wall - monotonic;
        (step.abs() > chrono::Duration::from_std(MAX_SKEW).unwrap_or_default()).then_some(step)
    }
}
