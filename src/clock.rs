//! Wall-clock sanity. Slots are wall-clock instants, so a replica whose clock is wrong would
//! fire at the wrong times, or catch up an hour of slots that are not due yet. Two guards:
//!
//! - every replica compares its clock with the database server's (`clock_timestamp()`, the
//!   RTT halved) every second; while they differ by more than `MAX_SKEW` it does not campaign,
//!   and a leader steps down;
//! - the leader notices a step between two wake-ups at once: wall-clock time and monotonic time
//!   elapsed must agree (a pause moves both; a step moves only the wall clock).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The largest difference from the database's clock a replica may fire with.
pub const MAX_SKEW: Duration = Duration::from_secs(2);

/// How often the skew is measured.
const EVERY: Duration = Duration::from_secs(1);

/// The last measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockCheck {
    /// Local minus database time, in milliseconds; `None` before the first answer.
    pub skew_ms: Option<i64>,
}

impl ClockCheck {
    /// Whether this replica may lead: unknown counts as fine (the database may be down, and the
    /// step detector still guards), a known skew must be within `MAX_SKEW`.
    pub fn ok(&self) -> bool {
        self.skew_ms.is_none_or(|skew| skew.unsigned_abs() <= MAX_SKEW.as_millis() as u64)
    }
}

/// Measure the skew against the database every second until `shutdown`.
pub async fn watch_skew(store: Store, check: watch::Sender<ClockCheck>, shutdown: CancellationToken) {
    loop {
        let sent = Utc::now();
        let started = Instant::now();
        if let Ok(Ok(database)) = tokio::time::timeout(EVERY, store.clock()).await {
            let round_trip = started.elapsed();
            let local = sent + chrono::Duration::from_std(round_trip / 2).unwrap_or_default();
            let skew = (local - database).num_milliseconds();
            metrics::gauge!("tenure_clock_skew_seconds").set(skew as f64 / 1000.0);
            let measured = ClockCheck { skew_ms: Some(skew) };
            let was_ok = check.borrow().ok();
            if was_ok && !measured.ok() {
                tracing::error!(
                    skew_ms = skew,
                    "this replica's clock differs from the database's; not leading until it agrees"
                );
            } else if !was_ok && measured.ok() {
                tracing::info!(skew_ms = skew, "clock agrees with the database again");
            }
            check.send_replace(measured);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
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
