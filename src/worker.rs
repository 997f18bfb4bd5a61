//! The executing side of a replica: runs of jobs with `run_on: any` or
//! `{ tags: [..] }` that the leader assigned to this replica, each executed under an execution
//! lease of its own in the ledger. Knows nothing of leadership: the leader claims and assigns
//! (`scheduler`), this module accepts, renews, kills and records.
//!
//! Every replica advertises itself (`Executions::advertise`: node, `--tags`, `--max-runs`) every
//! renewal interval and learns of assignments by notification (PostgreSQL `LISTEN`), with a poll
//! at the same interval as fallback. An assignment executes only after its acceptance committed
//! (a conditional write keyed on (run, attempt, replica)). While it executes, its lease is
//! renewed every `ExecutionLease::renew_every`, and the live output written with it. The local
//! deadline is the send time of the last acknowledged renewal (or of the acceptance) plus the
//! lease minus a margin, on `CLOCK_BOOTTIME`. A refused renewal or a passed deadline SIGKILLs
//! the attempt's process group at once and nothing more is recorded: the leader gives the
//! attempt up (`lost`, or the next attempt elsewhere) once its lease has expired by the grace
//! period. A replica that is frozen or killed cannot do this itself; its supervisor ends its
//! jobs within the silence limit (`supervisor`), which the lease arithmetic allows for.
//!
//! Invariant: an attempt executes here only after `accept_execution` committed, and only while
//! the local deadline has not passed; an outcome is recorded only while it still has not.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Job, JobSet};
use crate::executor::{self, OutputTail, RunContext};
use crate::leadership::{BootInstant, LeaseDeadline};
use crate::model::{RunOutcome, RunStatus, TriggerKind};
use crate::store::{AssignedRun, ExecutionKey, Renewal, ReplicaOffer, Store};
use crate::supervisor::Supervision;
use crate::telemetry::JobRunMetrics;

/// The execution lease's durations, all derived from the replica's lease TTL (see
/// ARCHITECTURE.md, "Execution across replicas", for the arithmetic and the clock assumption).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutionLease {
    /// E: how long an acceptance or a renewal holds the attempt, from its statement, by the
    /// database's clock.
    pub lease: Duration,
    /// How often the executor renews (and advertises itself, and polls for assignments).
    pub renew_every: Duration,
    /// M: the executor's local deadline is this much before the lease's end.
    pub margin: Duration,
    /// How long after `lease_until` the leader waits before giving an attempt up.
    pub grace: Duration,
}

impl ExecutionLease {
    /// E = 4 x the lease TTL (at least 4 s), renewed every E/8, local margin E/4, grace E/2.
    pub fn for_ttl(lease_ttl: Duration) -> ExecutionLease {
        let lease = (lease_ttl * 4).max(Duration::from_secs(4));
        ExecutionLease { lease, renew_every: lease / 8, margin: lease / 4, grace: lease / 2 }
    }

    /// The local deadline of a renewal (or acceptance) sent at `sent` and acknowledged.
    pub fn deadline_after(&self, sent: BootInstant) -> BootInstant {
        sent + self.lease - self.margin
    }

    /// A replica seen within this long (the database's clock) is live: it advertises every
    /// `renew_every`, so one lease is eight advertisements missed.
    pub fn live_within(&self) -> Duration {
        self.lease
    }
}

/// Why an attempt's lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LeaseLoss {
    /// The leader asked for the run to stop (`replace`, an operator's cancel): recorded
    /// `killed` with this reason.
    CancelRequested(String),
    /// The attempt is no longer this replica's (given up, reassigned, ended).
    Refused,
    /// No renewal was acknowledged before the local deadline.
    DeadlinePassed,
}

/// Cancelled when the lease is lost, with the first reason.
#[derive(Clone, Default)]
struct LostLease {
    token: CancellationToken,
    reason: Arc<Mutex<Option<LeaseLoss>>>,
}

impl LostLease {
    fn lose(&self, reason: LeaseLoss) {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(reason);
        self.token.cancel();
    }

    fn reason(&self) -> Option<LeaseLoss> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the worker needs from outside.
pub struct WorkerInputs {
    pub store: Store,
    pub offer: ReplicaOffer,
    pub lease: ExecutionLease,
    pub jobs: watch::Receiver<Arc<JobSet>>,
    pub supervision: Supervision,
    /// On shutdown, how long the runs executing here may finish before they are killed.
    pub shutdown_grace: Duration,
}

/// The worker actor: advertise, accept what is assigned here, execute it under its lease.
pub struct Worker {
    store: Store,
    offer: ReplicaOffer,
    lease: ExecutionLease,
    jobs: watch::Receiver<Arc<JobSet>>,
    supervision: Supervision,
    shutdown_grace: Duration,
    http: reqwest::Client,
    executions: TaskTracker,
    /// Runs executing here, by id.
    going: Arc<Mutex<HashSet<i64>>>,
    /// Stops every execution (shutdown grace exceeded).
    stop: CancellationToken,
}

impl Worker {
    pub fn new(inputs: WorkerInputs) -> Worker {
        let WorkerInputs { store, offer, lease, jobs, supervision, shutdown_grace } = inputs;
        Worker {
            store,
            offer,
            lease,
            jobs,
            supervision,
            shutdown_grace,
            http: crate::executor::http_client(),
            executions: TaskTracker::new(),
            going: Arc::default(),
            stop: CancellationToken::new(),
        }
    }

    /// Advertise and execute until `shutdown`; then let the runs executing here finish within
    /// the grace period, and kill the rest.
    pub async fn run(self, shutdown: CancellationToken) {
        let (wake_tx, mut wake_rx) = mpsc::channel(1);
        let listener_stop = CancellationToken::new();
        let _stop_listener = listener_stop.clone().drop_guard();
        {
            let (store, node) = (self.store.clone(), self.offer.node.clone());
            tokio::spawn(async move { store.listen_assignments(&node, wake_tx, listener_stop).await });
        }
        let mut advertise_at = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if tokio::time::Instant::now() >= advertise_at {
                // A database that hangs does not hold up the shutdown.
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    advertised = self.store.advertise(&self.offer) => if let Err(error) = advertised {
                        tracing::warn!(%error, "could not advertise this replica for execution");
                    },
                }
                advertise_at = tokio::time::Instant::now() + self.lease.renew_every;
            }
            // Not cancelled: an acceptance that committed is always executed (each statement is
            // bounded by the pool's statement timeout).
            self.accept_assigned().await;
            tokio::select! {
                () = shutdown.cancelled() => {}
                Some(()) = wake_rx.recv() => {}
                () = tokio::time::sleep_until(advertise_at) => {}
            }
        }
        // No more assignments: the leader's next read of the replicas leaves this one out (a
        // database that does not answer soon is not waited for: the advertisement lapses).
        match tokio::time::timeout(self.lease.renew_every, self.store.withdraw(&self.offer.node)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not withdraw this replica from execution"),
            Err(_) => {
                tracing::warn!("could not withdraw this replica from execution in time; its advertisement lapses")
            }
        }
        self.executions.close();
        if tokio::time::timeout(self.shutdown_grace, self.executions.wait()).await.is_err() {
            tracing::warn!(grace = ?self.shutdown_grace, "assigned runs still going after the shutdown grace; killing them");
            self.stop.cancel();
            self.executions.wait().await;
        }
    }

    /// Accept each attempt assigned here (within `--max-runs`), and execute what was accepted.
    async fn accept_assigned(&self) {
        let assigned = match self.store.assigned_to(&self.offer.node).await {
            Ok(assigned) => assigned,
            Err(error) => {
                tracing::debug!(%error, "could not read the runs assigned here");
                return;
            }
        };
        for run in assigned {
            if self.going.lock().unwrap_or_else(|p| p.into_inner()).len() >= self.offer.max_runs as usize {
                return;
            }
            let jobs = self.jobs.borrow().clone();
            let Some(job) = jobs.get(&run.job).filter(|job| job.run_on.accepts(&self.offer.tags)) else {
                // The leader's job file differs from ours (a reload under way): not accepted, the
                // leader gives the attempt to another replica once it is due.
                tracing::warn!(job = %run.job, run_id = run.key.run_id, "assigned a run this replica's job file does not give it; not accepted");
                continue;
            };
            let sent = BootInstant::now();
            match self.store.accept_execution(&run.key, self.lease.lease, self.offer.max_runs).await {
                Ok(Some(accepted)) => {
                    let deadline = LeaseDeadline::new(self.lease.deadline_after(sent));
                    if !deadline.is_valid() {
                        tracing::warn!(run_id = run.key.run_id, "accepted only after its local deadline; not executed");
                        continue;
                    }
                    self.spawn(accepted, Arc::new(job.clone()), deadline);
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, run_id = run.key.run_id, "could not accept an assigned run"),
            }
        }
    }

    fn spawn(&self, run: AssignedRun, job: Arc<Job>, deadline: LeaseDeadline) {
        let run_id = run.key.run_id;
        self.going.lock().unwrap_or_else(|p| p.into_inner()).insert(run_id);
        let execution = Execution {
            metrics: JobRunMetrics::new(&run.job),
            store: self.store.clone(),
            current: Arc::new(tokio::sync::Mutex::new(Current { key: run.key.clone(), output: OutputTail::default() })),
            run,
            job,
            lease: self.lease,
            deadline,
            supervision: self.supervision.clone(),
            http: self.http.clone(),
            stop: self.stop.clone(),
        };
        let going = self.going.clone();
        self.executions.spawn(async move {
            execution.execute().await;
            going.lock().unwrap_or_else(|p| p.into_inner()).remove(&run_id);
        });
    }
}

/// The attempt executing now and its output tail. Renewals and retries hold its lock, so a
/// renewal never carries an attempt the executor has already left.
struct Current {
    key: ExecutionKey,
    output: OutputTail,
}

/// One accepted run on this replica, through its attempts here.
struct Execution {
    /// The job's series: runs counted, and lateness observed, where it executes.
    metrics: JobRunMetrics,
    store: Store,
    current: Arc<tokio::sync::Mutex<Current>>,
    run: AssignedRun,
    job: Arc<Job>,
    lease: ExecutionLease,
    deadline: LeaseDeadline,
    supervision: Supervision,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Execution {
    async fn execute(self) {
        let lost = LostLease::default();
        let renewer = tokio::spawn(renew(
            self.store.clone(),
            self.current.clone(),
            self.lease,
            self.deadline.clone(),
            lost.clone(),
        ));
        let _stop_renewing = AbortOnDrop(renewer);
        let upstream_run_ids = self.upstream_run_ids().await;
        loop {
            let (key, output) = {
                let current = self.current.lock().await;
                (current.key.clone(), current.output.clone())
            };
            if !self.deadline.is_valid() {
                lost.lose(LeaseLoss::DeadlinePassed);
            }
            if lost.token.is_cancelled() {
                return self.lease_lost(&key, &lost, None).await;
            }
            let context = RunContext {
                run_id: key.run_id,
                job: self.run.job.clone(),
                slot: self.run.slot,
                term: self.run.term,
                node: key.executor.clone(),
                attempt: key.attempt,
                lease_id: Some(key.lease_id()),
                upstream_run_ids: upstream_run_ids.clone(),
            };
            tracing::info!(job = %self.run.job, run_id = key.run_id, attempt = key.attempt, "executing an assigned run");
            let prepared = executor::prepare(&self.job, &context, &self.http);
            // Its lateness is observed here, where it begins: from its planned start to its
            // first attempt's process spawned (or request sent).
            let first_attempt = key.attempt == 1;
            let planned = self.run.planned_at;
            let on_began = |began: chrono::DateTime<chrono::Utc>| {
                if first_attempt {
                    self.metrics.fire_lateness.record((began - planned).to_std().unwrap_or_default().as_secs_f64());
                }
            };
            let outcome = executor::execute_leased(
                prepared,
                &self.job,
                &context,
                &output,
                &self.http,
                &self.supervision,
                &self.stop,
                &lost.token,
                &self.deadline,
                &on_began,
            )
            .await;
            if let Some(began) = outcome.began_at {
                self.metrics
                    .run_duration
                    .record((outcome.finished_at - began).to_std().unwrap_or_default().as_secs_f64());
            }
            // Nothing is recorded by an executor whose lease may have lapsed: it checks first.
            if !self.deadline.is_valid() {
                lost.lose(LeaseLoss::DeadlinePassed);
            }
            if lost.token.is_cancelled() {
                return self.lease_lost(&key, &lost, outcome.began_at).await;
            }
            let retryable = matches!(outcome.status, RunStatus::Failed | RunStatus::TimedOut);
            if !retryable || key.attempt > self.job.retries.max as i32 || self.stop.is_cancelled() {
                return self.finish(&key, &outcome).await;
            }
            let error = outcome.error.clone().unwrap_or_default();
            tracing::info!(job = %self.run.job, attempt = key.attempt, %error, backoff = ?self.job.retries.backoff, "attempt failed; retrying here");
            tokio::select! {
                () = lost.token.cancelled() => continue,
                () = self.stop.cancelled() => return self.finish(&key, &outcome).await,
                () = tokio::time::sleep(self.job.retries.backoff) => {}
            }
            let mut current = self.current.lock().await;
            let sent = BootInstant::now();
            let previous = format!("attempt {}: {error}", key.attempt);
            match self.store.retry_execution(&key, &previous, self.lease.lease).await {
                Ok(true) => {
                    self.deadline.extend_to(self.lease.deadline_after(sent));
                    current.key.attempt += 1;
                    current.output = OutputTail::default();
                }
                Ok(false) => lost.lose(LeaseLoss::Refused),
                Err(error) => {
                    tracing::warn!(%error, run_id = key.run_id, "could not begin the next attempt; recording this one");
                    drop(current);
                    return self.finish(&key, &outcome).await;
                }
            }
        }
    }

    /// The lease is gone and the process group with it (SIGKILLed at once). A cancel requested
    /// by the leader (`replace`, or an operator's cancel it acted on) is answered with `killed`
    /// and the reason the ledger gave, which the leader asked for; anything
    /// else records nothing: the attempt may already be another replica's. `began`: when the
    /// attempt began, if it did.
    /// The runs that released this one (`after:`), as the leader tells a run it executes
    /// itself: the ended runs of its slot of the jobs it waits for, in the job file's order.
    /// None for a run nothing released; none either, with a warning, if the ledger does not
    /// answer (the run goes on: the ids are information, not a condition).
    async fn upstream_run_ids(&self) -> Vec<i64> {
        if self.run.trigger != TriggerKind::Upstream || self.job.after.is_empty() {
            return Vec::new();
        }
        let awaited: Vec<String> = self.job.after.iter().map(|up| up.job.to_string()).collect();
        match self.store.ended_slot_runs(&awaited, self.run.slot).await {
            Ok(ended) => {
                awaited.iter().filter_map(|job| ended.iter().find(|(name, _)| name == job).map(|(_, id)| *id)).collect()
            }
            Err(error) => {
                tracing::warn!(job = %self.run.job, run_id = self.run.key.run_id, error = %error,
                    "the runs that released this run could not be read; it runs without TENURE_UPSTREAM_RUN_IDS");
                Vec::new()
            }
        }
    }

    async fn lease_lost(&self, key: &ExecutionKey, lost: &LostLease, began: Option<chrono::DateTime<chrono::Utc>>) {
        match lost.reason() {
            Some(LeaseLoss::CancelRequested(reason)) => {
                let outcome = RunOutcome {
                    status: RunStatus::Killed,
                    exit_code: None,
                    http_status: None,
                    error: Some(reason),
                    output: self.current.lock().await.output.text(),
                    began_at: began,
                    finished_at: chrono::Utc::now(),
                };
                self.finish(key, &outcome).await;
            }
            reason => {
                tracing::warn!(
                    job = %self.run.job, run_id = key.run_id, attempt = key.attempt, ?reason,
                    "execution lease lost: the run was killed here and nothing is recorded"
                );
            }
        }
    }

    /// Record the outcome while the lease holds (retrying while the database is down); refused
    /// once the leader gave the attempt up.
    async fn finish(&self, key: &ExecutionKey, outcome: &RunOutcome) {
        tracing::info!(
            job = %self.run.job, run_id = key.run_id, attempt = key.attempt, status = outcome.status.as_str(),
            exit_code = ?outcome.exit_code, error = ?outcome.error, "assigned run finished"
        );
        while self.deadline.is_valid() {
            match self.store.finish_execution(key, outcome).await {
                Ok(true) => {
                    // Counted where it executed, as the leader counts the runs it executes.
                    self.metrics.count(outcome.status);
                    return;
                }
                Ok(false) => {
                    tracing::warn!(
                        run_id = key.run_id,
                        attempt = key.attempt,
                        "outcome refused: the attempt is no longer ours"
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, run_id = key.run_id, "could not record the outcome; retrying");
                    tokio::time::sleep(self.lease.renew_every).await;
                }
            }
        }
        tracing::warn!(
            run_id = key.run_id,
            "the execution lease ran out before the outcome was recorded; the leader records it lost"
        );
    }
}

/// Renew the lease of the current attempt every `renew_every` until it is lost: refused,
/// cancelled, or not acknowledged before the local deadline.
async fn renew(
    store: Store,
    current: Arc<tokio::sync::Mutex<Current>>,
    lease: ExecutionLease,
    deadline: LeaseDeadline,
    lost: LostLease,
) {
    loop {
        tokio::select! {
            () = deadline.expired() => return lost.lose(LeaseLoss::DeadlinePassed),
            () = tokio::time::sleep(lease.renew_every) => {}
        }
        // A replica resumed after a freeze finds its deadline passed before it sends anything.
        if !deadline.is_valid() {
            return lost.lose(LeaseLoss::DeadlinePassed);
        }
        let current = current.lock().await;
        let output = current.output.text();
        let sent = BootInstant::now();
        let renewal = tokio::select! {
            renewal = store.renew_execution(&current.key, lease.lease, &output) => renewal,
            () = deadline.expired() => return lost.lose(LeaseLoss::DeadlinePassed),
        };
        match renewal {
            Ok(Renewal::Renewed) => deadline.extend_to(lease.deadline_after(sent)),
            Ok(Renewal::CancelRequested { reason }) => return lost.lose(LeaseLoss::CancelRequested(reason)),
            Ok(Renewal::Refused) => return lost.lose(LeaseLoss::Refused),
            Err(error) => tracing::warn!(%error, run_id = current.key.run_id, "could not renew an execution lease"),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::{HEARTBEAT, KILL_TIME};

    /// The arithmetic ARCHITECTURE.md states, for the TTLs a cluster may run with. A frozen
    /// executor's jobs are killed by its supervisor at most the silence limit (TTL plus a
    /// heartbeat) and `KILL_TIME` after the freeze; the freeze comes at the latest at its local
    /// deadline, E - M after its last acknowledged renewal was sent; the leader gives up no sooner
    /// than E plus the grace after that send. So silence and `KILL_TIME` together stay below M
    /// plus the grace. A live executor kills at its local deadline, M before the lease's end by
    /// the database's clock.
    #[test]
    fn a_frozen_executors_jobs_die_before_the_leader_may_give_their_attempt_up() {
        for ttl in [1, 2, 3, 5, 10, 30, 60, 300].map(Duration::from_secs) {
            let lease = ExecutionLease::for_ttl(ttl);
            let silence = ttl + HEARTBEAT;
            assert!(silence + KILL_TIME < lease.margin + lease.grace, "ttl {ttl:?}: {lease:?}");
            // At least three renewals fit before the local deadline, so one late answer is no loss.
            assert!(lease.renew_every * 3 <= lease.lease - lease.margin, "ttl {ttl:?}: {lease:?}");
            // The local deadline falls before the lease's end, and the give-up after it.
            assert!(lease.margin > Duration::ZERO && lease.grace > Duration::ZERO);
        }
        let sent = BootInstant::now();
        let lease = ExecutionLease::for_ttl(Duration::from_secs(1));
        assert_eq!(lease.lease, Duration::from_secs(4));
        assert_eq!(lease.deadline_after(sent), sent + Duration::from_secs(3));
    }
}
