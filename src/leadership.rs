//! What a replica knows about its own leadership: the `Term` (fencing token) it holds and the
//! local deadline of its lease. `election` (etcd) publishes a `Leadership` through a
//! `watch` channel; `scheduler` reads it. This module does no IO.
//!
//! Invariant: only `election` mints a `Term`, so a claim in the ledger (which needs one) is always
//! backed by an election that was won.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

/// A fencing token: the etcd revision at which this leader's key was created, plus the id of the
/// etcd cluster that issued it (revisions restart when etcd is rebuilt from scratch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    revision: i64,
    cluster_id: String,
}

impl Term {
    pub(crate) fn new(revision: i64, cluster_id: String) -> Term {
        Term { revision, cluster_id }
    }

    /// A term for tests of the store outside this crate. Absent from release builds.
    #[cfg(feature = "testing")]
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

/// The local deadline of a lease on the monotonic clock, shared between the keep-alive loop that
/// extends it and the scheduler that must stop claiming the moment it passes.
#[derive(Debug, Clone)]
pub struct LeaseDeadline {
    origin: Instant,
    /// Nanoseconds after `origin`; 0 means "already expired".
    deadline_nanos: Arc<AtomicU64>,
}

impl LeaseDeadline {
    pub fn new(deadline: Instant) -> LeaseDeadline {
        let origin = Instant::now();
        let lease = LeaseDeadline { origin, deadline_nanos: Arc::new(AtomicU64::new(0)) };
        lease.extend_to(deadline);
        lease
    }

    /// Move the deadline (only ever forwards; a late acknowledgement never shortens it).
    pub fn extend_to(&self, deadline: Instant) {
        let nanos = deadline.saturating_duration_since(self.origin).as_nanos() as u64;
        self.deadline_nanos.fetch_max(nanos, Ordering::SeqCst);
    }

    /// Expire now, e.g. when etcd reports the lease gone.
    pub fn expire(&self) {
        self.deadline_nanos.store(0, Ordering::SeqCst);
    }

    pub fn deadline(&self) -> Instant {
        if crate::testing::no_self_fence() {
            return self.origin + Duration::from_secs(100 * 365 * 24 * 3600);
        }
        self.origin + Duration::from_nanos(self.deadline_nanos.load(Ordering::SeqCst))
    }

    pub fn is_valid(&self) -> bool {
        if crate::testing::no_self_fence() {
            return true;
        }
        Instant::now() < self.deadline()
    }
}

/// The leadership this replica holds right now.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_deadline_only_moves_forward_and_expires() {
        let now = Instant::now();
        let lease = LeaseDeadline::new(now + Duration::from_secs(10));
        assert!(lease.is_valid());
        lease.extend_to(now + Duration::from_secs(5));
        assert!(lease.deadline() >= now + Duration::from_secs(10) - Duration::from_millis(1));
        lease.expire();
        assert!(!lease.is_valid());
        let past = LeaseDeadline::new(now);
        assert!(!past.is_valid());
    }
}
