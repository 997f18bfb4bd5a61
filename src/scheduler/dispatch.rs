//! The leader's side of execution across replicas (`run_on: any` or `{ tags: [..] }`): which
//! live replica a run goes to (`Placement`, pure), and the term's dispatcher, which keeps the
//! placement's view of the replicas fresh and gives up attempts whose execution lease expired
//! (`lost`, or the next attempt on another replica when the job's retries allow). The
//! assignment itself is the run's fenced start (`RunTask`, through the term's batchers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{JobSet, RunOn};
use crate::leadership::{LeaseDeadline, Term};
use crate::model::RunStatus;
use crate::store::{ClaimError, GiveUp, ReplicaLoad, Store};
use crate::telemetry::JobRunMetrics;
use crate::worker::ExecutionLease;

/// How many more attempts a run gets, beyond its job's retries, when an attempt was never
/// accepted (its replica went away or refused it): it never executed, so it goes elsewhere, but
/// not forever.
const UNACCEPTED_TRIES: i32 = 3;

/// How many expired attempts one pass of the dispatcher takes.
const EXPIRED_READ: i64 = 256;

/// The live replicas as the ledger last showed them, and the choices made since that the ledger
/// may not show yet. Pure: no IO, no clock of its own.
#[derive(Debug, Default)]
pub(super) struct Placement {
    replicas: Vec<ReplicaLoad>,
    /// Choices not yet seen by a completed read of the ledger: (node, when their assignment
    /// committed, if it has). A choice counts until a read that began after its commit.
    pending: HashMap<u64, (String, Option<Instant>)>,
    next_choice: u64,
}

impl Placement {
    /// The ledger's view, read from a statement sent at `read_began`.
    pub(super) fn refresh(&mut self, replicas: Vec<ReplicaLoad>, read_began: Instant) {
        self.replicas = replicas;
        self.pending.retain(|_, (_, committed)| committed.is_none_or(|at| at >= read_began));
    }

    /// The replica for a run of a job that runs `run_on`: among the live ones that match and have
    /// room, the least loaded (assigned or running, plus pending choices), preferring any but
    /// `avoid` (the replica that lost the previous attempt), ties broken by node id. `None`:
    /// none matches or has room.
    pub(super) fn choose(&mut self, run_on: &RunOn, avoid: Option<&str>) -> Option<(u64, String)> {
        let pending = |node: &str| self.pending.values().filter(|(n, _)| n == node).count() as i64;
        let chosen = self
            .replicas
            .iter()
            .filter(|replica| run_on.accepts(&replica.offer.tags))
            .map(|replica| (replica, replica.load + pending(&replica.offer.node)))
            .filter(|(replica, load)| *load < i64::from(replica.offer.max_runs))
            .min_by_key(|(replica, load)| (Some(replica.offer.node.as_str()) == avoid, *load, &replica.offer.node))
            .map(|(replica, _)| replica.offer.node.clone())?;
        let choice = self.next_choice;
        self.next_choice += 1;
        self.pending.insert(choice, (chosen.clone(), None));
        Some((choice, chosen))
    }

    /// A choice's assignment committed at `at` (`Some`), or was not made (`None`).
    pub(super) fn settled(&mut self, choice: u64, at: Option<Instant>) {
        match at {
            Some(at) => {
                if let Some((_, committed)) = self.pending.get_mut(&choice) {
                    *committed = Some(at);
                }
            }
            None => {
                self.pending.remove(&choice);
            }
        }
    }

    /// Each live replica with its load as this placement counts it, by node.
    #[cfg(test)]
    pub(super) fn loads(&self) -> Vec<(String, i64)> {
        self.replicas
            .iter()
            .map(|replica| {
                let pending = self.pending.values().filter(|(n, _)| *n == replica.offer.node).count() as i64;
                (replica.offer.node.clone(), replica.load + pending)
            })
            .collect()
    }
}

/// A term's placement, shared by its run tasks and its dispatcher, with the execution lease.
#[derive(Clone)]
pub(super) struct Dispatch {
    pub(super) placement: Arc<Mutex<Placement>>,
    pub(super) lease: ExecutionLease,
}

impl Dispatch {
    pub(super) fn new(lease: ExecutionLease) -> Dispatch {
        Dispatch { placement: Arc::default(), lease }
    }

    pub(super) fn choose(&self, run_on: &RunOn, avoid: Option<&str>) -> Option<(u64, String)> {
        self.placement.lock().unwrap_or_else(|p| p.into_inner()).choose(run_on, avoid)
    }

    pub(super) fn settled(&self, choice: u64, at: Option<Instant>) {
        self.placement.lock().unwrap_or_else(|p| p.into_inner()).settled(choice, at);
    }

    /// Read the live replicas again.
    pub(super) async fn refresh(&self, store: &Store) {
        let began = Instant::now();
        match store.live_replicas(self.lease.live_within()).await {
            Ok(replicas) => self.placement.lock().unwrap_or_else(|p| p.into_inner()).refresh(replicas, began),
            Err(error) => tracing::debug!(%error, "could not read the live replicas"),
        }
    }
}

/// What the term's dispatcher needs.
pub(super) struct Dispatcher {
    pub(super) dispatch: Dispatch,
    pub(super) store: Store,
    pub(super) term: Term,
    pub(super) lease: LeaseDeadline,
    pub(super) jobs: watch::Receiver<Arc<JobSet>>,
    /// Cancelled when the ledger shows a newer term.
    pub(super) step_down: CancellationToken,
}

impl Dispatcher {
    /// Every renewal interval while the term lasts: the replicas read again, and every attempt
    /// expired by more than the grace period given up.
    pub(super) async fn run(self) {
        loop {
            self.dispatch.refresh(&self.store).await;
            if self.lease.is_valid() && !self.give_up_expired().await {
                return;
            }
            tokio::time::sleep(self.dispatch.lease.renew_every).await;
        }
    }

    /// False when a newer term holds the fence (this one steps down).
    async fn give_up_expired(&self) -> bool {
        let lease = self.dispatch.lease;
        let expired = match self.store.expired_executions(lease.grace, EXPIRED_READ).await {
            Ok(expired) => expired,
            Err(error) => {
                tracing::debug!(%error, "could not read the expired execution leases");
                return true;
            }
        };
        for expired in expired {
            let jobs = self.jobs.borrow().clone();
            let job = jobs.get(&expired.job);
            // An attempt never accepted never executed: it goes elsewhere whatever the retries,
            // up to `UNACCEPTED_TRIES` more times (a run no replica takes must end, recorded).
            let retry = job.filter(|job| {
                let tries = job.retries.max as i32 + if expired.accepted { 0 } else { UNACCEPTED_TRIES };
                !expired.cancel_requested && job.run_on.is_remote() && expired.key.attempt <= tries
            });
            let choice = retry.and_then(|job| self.dispatch.choose(&job.run_on, Some(&expired.key.executor)));
            let then = match &choice {
                Some((_, node)) => GiveUp::RetryOn(node.clone()),
                None => GiveUp::End,
            };
            let given_up = self.store.give_up_execution(&self.term, &expired, &then, lease.grace, lease.lease).await;
            if let Some((choice, _)) = &choice {
                let committed = matches!(given_up, Ok(true)).then(Instant::now);
                self.dispatch.settled(*choice, committed);
            }
            if matches!((&given_up, &then), (Ok(true), GiveUp::End)) {
                let status = if expired.cancel_requested { RunStatus::Killed } else { RunStatus::Lost };
                JobRunMetrics::new(&expired.job).count(status);
            }
            match given_up {
                Ok(true) => tracing::warn!(
                    job = %expired.job, run_id = expired.key.run_id, attempt = expired.key.attempt,
                    executor = %expired.key.executor, then = ?then, "execution lease expired: attempt given up"
                ),
                Ok(false) => {}
                Err(ClaimError::Fenced { term, fence }) => {
                    tracing::warn!(term, fence, "give-up refused: a newer term holds the fence; stepping down");
                    self.step_down.cancel();
                    return false;
                }
                Err(error) => {
                    tracing::warn!(%error, run_id = expired.key.run_id, "could not give up an expired attempt")
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;

    use super::*;
    use crate::store::ReplicaOffer;

    fn replica(node: &str, tags: &[&str], max_runs: u32, load: i64) -> ReplicaLoad {
        ReplicaLoad {
            offer: ReplicaOffer { node: node.into(), tags: tags.iter().map(|t| (*t).into()).collect(), max_runs },
            last_seen: Utc::now(),
            load,
        }
    }

    #[test]
    fn runs_go_to_the_least_loaded_matching_replica_with_room() {
        let mut placement = Placement::default();
        let began = Instant::now();
        placement.refresh(
            vec![replica("a", &["gpu"], 2, 1), replica("b", &[], 10, 3), replica("c", &["gpu", "eu"], 1, 0)],
            began,
        );
        let gpu = RunOn::Tags(vec!["gpu".into()]);
        // c is least loaded, then a; then both are full (a: 1 + 1, c: 0 + 1).
        assert_eq!(placement.choose(&gpu, None).map(|(_, n)| n).as_deref(), Some("c"));
        assert_eq!(placement.choose(&gpu, None).map(|(_, n)| n).as_deref(), Some("a"));
        assert_eq!(placement.choose(&gpu, None), None);
        // `any`: a and c are full, b has room; ties go by node id.
        let (choice, node) = placement.choose(&RunOn::Any, None).unwrap();
        assert_eq!(node, "b");
        assert_eq!(placement.loads(), vec![("a".into(), 2), ("b".into(), 4), ("c".into(), 1)]);
        // A choice not made frees its room; one committed before the next read began is the
        // ledger's to count.
        placement.settled(choice, None);
        assert_eq!(placement.loads()[1], ("b".into(), 3));
        let (choice, _) = placement.choose(&RunOn::Any, None).unwrap();
        placement.settled(choice, Some(Instant::now()));
        placement.refresh(
            vec![replica("b", &[], 10, 4), replica("d", &[], 10, 4)],
            Instant::now() + Duration::from_millis(1),
        );
        assert_eq!(placement.loads(), vec![("b".into(), 4), ("d".into(), 4)]);
        // The replica that lost the previous attempt comes last, whatever its load.
        placement.refresh(vec![replica("b", &[], 10, 0), replica("d", &[], 10, 9)], Instant::now());
        assert_eq!(placement.choose(&RunOn::Any, Some("b")).map(|(_, n)| n).as_deref(), Some("d"));
        // `leader` jobs are never placed.
        assert_eq!(placement.choose(&RunOn::Leader, None), None);
    }
}
