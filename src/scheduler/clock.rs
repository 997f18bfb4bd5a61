//! The wall clock the firing loop reads and sleeps on: slots are wall-clock instants. In
//! production it is the system clock. The loop's unit tests hand it a clock they step
//! themselves, so that a slot, a fall-back hour, a term change or a lease expiry comes exactly
//! when the test says, in milliseconds of real time. (Tokio's paused time does not fit: the
//! SQLite ledger answers from a thread of its own, and paused time jumps to the next timer
//! whenever the runtime is waiting for it, in the middle of a claim.)
//!
//! Not `crate::clock`, which checks this replica's clock against the database's.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

/// Sleep at most this long on the system clock before reading it again, so that a clock
/// stepped forwards is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Where the firing loop reads the time. Cheap to clone: run tasks carry their own.
#[derive(Debug, Clone)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    System,
    /// Moved only by `Clock::advance_to`; sleepers wake when it reaches their instant.
    #[cfg(test)]
    Stepped(std::sync::Arc<tokio::sync::watch::Sender<DateTime<Utc>>>),
}

impl Clock {
    /// The system's wall clock (what every replica runs on).
    pub fn system() -> Clock {
        Clock { source: Source::System }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.source {
            Source::System => Utc::now(),
            #[cfg(test)]
            Source::Stepped(now) => *now.borrow(),
        }
    }

    /// Sleep until the clock reads `at`, or less: the system clock is read again after at most
    /// `MAX_SLEEP`, so a caller that must not act early checks `now()` when it wakes.
    pub async fn sleep_until(&self, at: DateTime<Utc>) {
        match &self.source {
            Source::System => {
                let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(MAX_SLEEP);
                tokio::time::sleep(wait).await;
            }
            #[cfg(test)]
            Source::Stepped(now) => {
                let _ = now.subscribe().wait_for(|now| *now >= at).await;
            }
        }
    }

    /// Sleep until the clock reads `at` (never returning early), or until `stop`.
    pub async fn wait_until(&self, at: DateTime<Utc>, stop: &CancellationToken) {
        while self.now() < at {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.sleep_until(at) => {}
            }
        }
    }
}

#[cfg(test)]
impl Clock {
    /// A clock that reads `start` until a test advances it.
    pub fn stepped(start: DateTime<Utc>) -> Clock {
        Clock { source: Source::Stepped(std::sync::Arc::new(tokio::sync::watch::Sender::new(start))) }
    }

    /// Move a stepped clock forwards to `at`, waking whoever sleeps until then.
    pub fn advance_to(&self, at: DateTime<Utc>) {
        let Source::Stepped(now) = &self.source else { panic!("only a stepped clock is advanced") };
        now.send_modify(|now| {
            assert!(at >= *now, "a stepped clock only moves forwards ({now} to {at})");
            *now = at;
        });
    }
}
