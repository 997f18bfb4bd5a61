//! One term of leadership as the firing loop holds it (`ActiveTerm`): begun by raising the fence
//! and reading each job's cursor, it owns what only a leader has (the term's batchers, the jobs'
//! firing state, the heartbeat, the reaping of vanished replicas' runs, the dead-man ping), and
//! ends when it is dropped. Also the operator controls the leader applies.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::batch::Batchers;
use super::clock::Clock;
use super::dispatch::{Dispatch, Dispatcher};
use super::plan::{self, DueSlots, JobState};
use super::release::Releases;
use super::witness::ForgottenSlots;
use super::{DATABASE_RETRY, Scheduler};
use crate::clock::StepDetector;
use crate::config::{Concurrency, Job, JobSet};
use crate::deadman::DeadManPing;
use crate::leadership::{LeaderTerm, Term};
use crate::model::{Member, Trigger};
use crate::notify::{self, Courier};
use crate::store::{ClaimError, FenceError, LiveNode, Store, TriggerOverrides};
use crate::telemetry::{JobRunMetrics, metric};

/// How often the leader records that its term is alive (the terms page's hand-over times).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The most backfill runs of one `allow` job going at once.
pub(super) const BACKFILL_PARALLELISM: usize = 4;
/// How many queued backfill slots one read of the queue takes.
const BACKFILL_READ: i64 = 512;

/// The term this replica leads, from the fence raised to its end. Whatever needs a term
/// (batchers, cursors) exists only in here, so nothing can claim without one.
pub(super) struct ActiveTerm {
    pub(super) leader: LeaderTerm,
    pub(super) batchers: Batchers,
    /// Per job, in job-file order: its cursor and whether it is paused.
    pub(super) jobs: Vec<JobState>,
    pub(super) due: DueSlots,
    /// Until the operator controls are read (at term start, after a reload, after a
    /// notification) nothing fires: a job an operator paused must not fire by the job file's
    /// `paused` alone.
    pub(super) controls_pending: bool,
    /// Scheduled slots that may have begun under an older term although the ledger does not
    /// show it (it lost their starts in a database failover): recorded `lost`, never run (`None`
    /// when the ledger forgot nothing).
    pub(super) forgotten: Option<ForgottenSlots>,
    /// Manual triggers this term has started and whose runs have not ended; a trigger still
    /// pending after its run ended (stopped before its claim or start) is started again.
    pub(super) started_triggers: HashSet<i64>,
    /// Backfill runs this term has started whose tasks have not ended, by run key: their job
    /// and slot (the queue lists a slot until its run has ended).
    pub(super) backfills_going: HashMap<u64, (String, DateTime<Utc>)>,
    /// The last read of the backfill queue found slots held back by a job's concurrency: any
    /// run's end may free one.
    pub(super) backfill_waiting: bool,
    pub(super) steps: StepDetector,
    /// Runs of older terms whose node vanished become `lost` once nothing of them can be left:
    /// `lost_after` since the node left the registry (or since this term began, for a node
    /// gone before), by which time its supervisor or its own kill grace have ended them.
    pub(super) departures: Departures,
    pub(super) next_reap: Instant,
    pub(super) next_heartbeat: Instant,
    /// When the dead-man ping is next due; `None` without `--heartbeat-url`.
    pub(super) next_dead_man_ping: Option<Instant>,
    /// Bookkeeping runs beside the loop, one at a time, so a slow or unreachable database never
    /// holds up a wake-up (a slot, a step-down).
    heartbeat: Option<JoinHandle<()>>,
    reaping: Option<JoinHandle<()>>,
    /// The dead-man ping under way, aborted when the term ends: no leader, no ping.
    dead_man_ping: Option<AbortOnDropHandle<()>>,
    /// The notification routes of a reloaded job file being written (retried until they are).
    routing: Option<AbortOnDropHandle<()>>,
    /// The notification courier: delivers the outbox while the term lasts.
    _courier: AbortOnDropHandle<()>,
    /// Where runs executing on other replicas go (`run_on: any` or `{ tags: [..] }`).
    pub(super) dispatch: Dispatch,
    /// Keeps `dispatch` fresh and gives up attempts whose execution lease expired.
    _dispatcher: AbortOnDropHandle<()>,
    /// The looks at the ledger for runs released by the runs they wait for (`after:`).
    pub(super) releases: Releases,
    /// The last heartbeat marks when this term ended, however it ends.
    _last_heartbeat: TermHeartbeat,
}

impl ActiveTerm {
    pub(super) fn term(&self) -> &Term {
        &self.leader.term
    }

    /// Record that the term is alive (unless the last record is still under way).
    pub(super) fn heartbeat(&mut self, store: &Store, clock: &Clock) {
        if self.heartbeat.as_ref().is_none_or(|task| task.is_finished()) {
            let (store, term, at) = (store.clone(), self.leader.term.clone(), clock.now());
            self.heartbeat = Some(tokio::spawn(async move {
                if let Err(error) = store.term_alive(&term, at).await {
                    tracing::debug!(%error, "could not record the term heartbeat");
                }
            }));
        }
        self.next_heartbeat = Instant::now() + HEARTBEAT;
    }

    /// Ping the outside monitor, and schedule the next ping an interval later. Asked by the
    /// firing loop itself, so a leader whose loop is wedged, or whose lease has run out, pings
    /// nothing; a ping still under way after an interval (its timeout) is replaced.
    pub(super) fn ping_dead_man(&mut self, dead_man: &DeadManPing) {
        if self.leader.lease.is_valid() {
            let (dead_man, term) = (dead_man.clone(), self.leader.term.revision());
            self.dead_man_ping = Some(AbortOnDropHandle::new(tokio::spawn(async move { dead_man.ping(term).await })));
        }
        self.next_dead_man_ping = Some(Instant::now() + dead_man.interval());
    }

    /// Route outcomes to `jobs`' notification targets from now on, beside the loop, retrying
    /// until the ledger has them (a newer term's fence ends the attempt).
    pub(super) fn route_notifications(&mut self, store: &Store, jobs: &JobSet) {
        let (store, term, routes) = (store.clone(), self.leader.term.clone(), notify::routes(jobs));
        self.routing = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                match store.set_notify_routes(&term, &routes).await {
                    Ok(()) | Err(ClaimError::Fenced { .. }) => return,
                    Err(error) => {
                        tracing::warn!(%error, "could not record the notification routes; retrying");
                        tokio::time::sleep(DATABASE_RETRY).await;
                    }
                }
            }
        })));
    }
}

/// Records the term's last heartbeat when the term ends (resign, step-down, shutdown).
struct TermHeartbeat {
    store: Store,
    term: Term,
    clock: Clock,
}

impl Drop for TermHeartbeat {
    fn drop(&mut self) {
        let (store, term, at) = (self.store.clone(), self.term.clone(), self.clock.now());
        tokio::spawn(async move { store.term_alive(&term, at).await });
    }
}

impl Scheduler {
    /// Raise the fence to this term before its first claim, start its batchers and read the
    /// jobs' cursors. `None` when this term must not fire.
    pub(super) async fn begin_term(&mut self, leader: &LeaderTerm, shutdown: &CancellationToken) -> Option<ActiveTerm> {
        if !self.raise_fence(leader, shutdown).await {
            return None;
        }
        let store = self.store.clone();
        tokio::spawn(async move { crate::clock::report_replication(&store).await });
        let steps = StepDetector::default();
        let (witness, forgotten) = self.judge_start_witness(leader, shutdown).await?;
        let batchers = Batchers::spawn(&self.store, &leader.term, &self.node_id, self.execution.lease, witness);
        let dispatch = Dispatch::new(self.execution);
        let dispatcher = Dispatcher {
            dispatch: dispatch.clone(),
            store: self.store.clone(),
            term: leader.term.clone(),
            lease: leader.lease.clone(),
            jobs: self.jobs.clone(),
            step_down: leader.step_down.clone(),
        };
        let jobs = self.load_states(leader, shutdown).await?;
        // Before the term records an outcome (its catch-up first), so that none goes untold.
        self.route_notifications(leader, shutdown).await?;
        let courier = Courier {
            store: self.store.clone(),
            reads: self.reads.clone(),
            term: leader.term.clone(),
            lease: leader.lease.clone(),
            jobs: self.jobs.clone(),
            http: self.http.clone(),
            clock: self.clock.clone(),
        };
        let lost_after = self.supervision.lost_after();
        let mut departures = Departures::default();
        departures.observe(&self.members.borrow_and_update(), Instant::now());
        let mut due = DueSlots::default();
        due.reset(&jobs);
        Some(ActiveTerm {
            leader: leader.clone(),
            batchers,
            jobs,
            due,
            controls_pending: true,
            forgotten,
            started_triggers: HashSet::new(),
            backfills_going: HashMap::new(),
            backfill_waiting: false,
            steps,
            departures,
            next_reap: Instant::now() + lost_after,
            next_heartbeat: Instant::now(),
            // A new leader pings at once: the monitor hears from the cluster again after a failover.
            next_dead_man_ping: self.dead_man.as_ref().map(|_| Instant::now()),
            heartbeat: None,
            reaping: None,
            dead_man_ping: None,
            routing: None,
            _courier: AbortOnDropHandle::new(tokio::spawn(courier.run())),
            dispatch,
            _dispatcher: AbortOnDropHandle::new(tokio::spawn(dispatcher.run())),
            releases: Releases::new(&self.jobs.borrow()),
            _last_heartbeat: TermHeartbeat {
                store: self.store.clone(),
                term: leader.term.clone(),
                clock: self.clock.clone(),
            },
        })
    }

    /// Raise the fence to `leader`'s term. False when this term must not fire.
    async fn raise_fence(&mut self, leader: &LeaderTerm, shutdown: &CancellationToken) -> bool {
        let term = &leader.term;
        loop {
            let (store, clock_check, node) = (&self.store, &mut self.clock_check, &self.node_id);
            let began = tokio::select! {
                began = store.begin_term(term, node) => Some(began),
                // A database that hangs is not waited out: the probe's verdict ends the term.
                _ = clock_check.wait_for(|check| check.refusal().is_some()) => None,
            };
            let Some(began) = began else {
                self.refused_by_clock(leader);
                return false;
            };
            match began {
                Ok(()) => {
                    metrics::gauge!(metric::TERM).set(term.revision() as f64);
                    tracing::info!(term = term.revision(), "fence raised; firing");
                    return true;
                }
                Err(FenceError::Superseded { fence, fence_cluster, fence_node, .. }) => {
                    if fence_cluster != term.cluster_id() {
                        tracing::error!(
                            term = term.revision(),
                            fence,
                            fence_cluster,
                            cluster = term.cluster_id(),
                            "the ledger's fence comes from another coordinator (etcd cluster or ZooKeeper \
                             ensemble) with a higher term: it was probably rebuilt or replaced; refusing to \
                             fire until an operator resets the fence"
                        );
                    } else if fence == term.revision() {
                        tracing::warn!(
                            term = term.revision(),
                            fence_node,
                            "another node already began this term; stepping down"
                        );
                    } else {
                        tracing::warn!(term = term.revision(), fence, "a newer term holds the fence; stepping down");
                    }
                    leader.step_down.cancel();
                    return false;
                }
                Err(FenceError::Database(error)) => {
                    tracing::warn!(%error, term = term.revision(), "could not raise the fence; retrying");
                    if !self.retry_pause(leader, shutdown).await
                        || !leader.lease.is_valid()
                        || self.refused_by_clock(leader)
                    {
                        return false;
                    }
                }
            }
        }
    }

    /// Each job's firing state, from its cursor in the ledger.
    async fn load_states(&mut self, leader: &LeaderTerm, shutdown: &CancellationToken) -> Option<Vec<JobState>> {
        loop {
            let jobs = self.jobs.borrow_and_update().clone();
            let names: Vec<&str> = jobs.jobs().iter().map(|job| job.name.as_ref()).collect();
            let now = self.clock.now();
            let (store, clock_check) = (&self.store, &mut self.clock_check);
            let cursors = tokio::select! {
                cursors = store.job_cursors(&leader.term, &names, now) => Some(cursors),
                _ = clock_check.wait_for(|check| check.refusal().is_some()) => None,
            };
            let Some(cursors) = cursors else {
                self.refused_by_clock(leader);
                return None;
            };
            match cursors {
                Ok(cursors) => {
                    let state = |job: &crate::config::Job| JobState {
                        cursor: plan::resume_from(cursors.get(job.name.as_ref()), now),
                        paused: job.paused,
                        metrics: JobRunMetrics::new(job.name.as_ref()),
                        job: Arc::new(job.clone()),
                    };
                    return Some(jobs.jobs().iter().map(state).collect());
                }
                Err(ClaimError::Fenced { fence, .. }) => {
                    tracing::warn!(term = leader.term.revision(), fence, "a newer term holds the fence; stepping down");
                    leader.step_down.cancel();
                    return None;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not read the ledger; retrying");
                    if !self.retry_pause(leader, shutdown).await || self.refused_by_clock(leader) {
                        return None;
                    }
                }
            }
        }
    }

    /// Record the notification routes of the job file this term starts with. `None` when this
    /// term must not fire.
    async fn route_notifications(&mut self, leader: &LeaderTerm, shutdown: &CancellationToken) -> Option<()> {
        loop {
            let routes = notify::routes(&self.jobs.borrow());
            match self.store.set_notify_routes(&leader.term, &routes).await {
                Ok(()) => return Some(()),
                Err(ClaimError::Fenced { fence, .. }) => {
                    tracing::warn!(term = leader.term.revision(), fence, "a newer term holds the fence; stepping down");
                    leader.step_down.cancel();
                    return None;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not record the notification routes; retrying");
                    if !self.retry_pause(leader, shutdown).await || self.refused_by_clock(leader) {
                        return None;
                    }
                }
            }
        }
    }

    /// Wait `DATABASE_RETRY` before a term that is starting tries the database again. False
    /// when the term ended meanwhile (shutdown, step-down, another term).
    pub(super) async fn retry_pause(&self, leader: &LeaderTerm, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = leader.step_down.cancelled() => return false,
            () = tokio::time::sleep(DATABASE_RETRY) => {}
        }
        self.leadership.borrow().term() == Some(&leader.term)
    }

    /// A term that is still starting (raising the fence, reading cursors) while the database
    /// stopped answering, or the clock drifted, steps down rather than wait for it.
    pub(super) fn refused_by_clock(&self, leader: &LeaderTerm) -> bool {
        let Some(why) = self.clock_check.borrow().refusal() else { return false };
        tracing::error!(term = leader.term.revision(), "{why}; stepping down");
        leader.step_down.cancel();
        true
    }

    /// Mark the runs of vanished leaders `lost` once they have been gone for `lost_after`
    /// (unless the last reaping is still under way).
    pub(super) fn reap(&self, term: &mut ActiveTerm) {
        let lost_after = self.supervision.lost_after();
        if term.reaping.as_ref().is_none_or(|task| task.is_finished()) {
            let members = self.members.borrow().clone();
            let now = Instant::now();
            term.departures.observe(&members, now);
            let mut live = term.departures.vouching(&members, now, lost_after);
            if !members.iter().any(|member| member.node == self.node_id) {
                // Not registered ourselves: the registry is stale or failing; `reap_lost` reaps nothing.
                live.clear();
            }
            let (store, node) = (self.store.clone(), self.node_id.clone());
            term.reaping = Some(tokio::spawn(reap_lost(store, term.leader.term.clone(), node, live)));
        }
        term.next_reap = Instant::now() + lost_after;
    }

    /// Apply operator pauses and resumes, and start pending manual triggers. False when the
    /// ledger could not be read: the caller fires nothing until a later call succeeds, and
    /// retries after `DATABASE_RETRY`.
    pub(super) async fn apply_controls(&mut self, term: &mut ActiveTerm) -> bool {
        let now = self.clock.now();
        let controls = match self.store.job_controls().await {
            Ok(controls) => controls,
            Err(error) => {
                tracing::warn!(%error, "could not read the operator controls; firing nothing until they are read");
                return false;
            }
        };
        for state in term.jobs.iter_mut() {
            let control = controls.get(state.job.name.as_ref());
            // An operator's pause or resume overrides the job file's `paused`.
            let should_pause = control.map_or(state.job.paused, |control| control.paused);
            if state.paused && !should_pause {
                // Resumed: slots that fell due while paused are not owed.
                state.cursor = state.cursor.max(now);
                tracing::info!(job = %state.job.name, "resumed");
            } else if !state.paused && should_pause {
                tracing::info!(job = %state.job.name, "paused");
            }
            state.paused = should_pause;
            if let Some(control) = control {
                plan::start_after_resume(state, control);
            }
        }
        if !term.leader.lease.is_valid() {
            // No trigger could be claimed now: retried shortly, unless the term ends first.
            return false;
        }
        if !self.apply_cancels(term).await {
            return false;
        }
        let triggers = match self.store.pending_triggers().await {
            Ok(triggers) => triggers,
            Err(error) => {
                tracing::warn!(%error, "could not read pending triggers; retrying");
                return false;
            }
        };
        for trigger in triggers {
            if !term.started_triggers.insert(trigger.id) {
                continue;
            }
            let state = term.jobs.iter().find(|state| state.job.name.as_ref() == trigger.job);
            let Some(state) = state else {
                tracing::warn!(job = %trigger.job, trigger = trigger.id, "trigger for a job not in the job file; dropped");
                if let Err(error) = self.store.trigger_dropped(trigger.id).await {
                    tracing::warn!(%error, "could not mark the trigger handled");
                }
                continue;
            };
            let (job, metrics) = (state.job.clone(), state.metrics.clone());
            // Override names are logged, never their values: an operator may type a secret.
            let overridden: Vec<&str> = trigger.overrides.env.keys().map(String::as_str).collect();
            tracing::info!(
                job = %job.name, trigger = trigger.id, by = %trigger.requested_by, env = ?overridden,
                concurrency = trigger.overrides.concurrency.map(Concurrency::as_str), "manual trigger"
            );
            let job = with_overrides(job, &trigger.overrides);
            let task = self.run_task(term, metrics, now);
            self.start_runs(job, vec![trigger.requested_at], Trigger::Manual { request: trigger.id }, task);
        }
        self.start_backfills(term, now).await
    }

    /// Act on operators' cancels: recorded under the fence first (a stale leader's is refused,
    /// and it steps down), then this replica's own runs among them are stopped with the
    /// operator's reason; a run executing elsewhere is killed by its executor at its next
    /// renewal, which the ledger refuses. False when the ledger could not be read or written
    /// (retried like the controls).
    async fn apply_cancels(&mut self, term: &mut ActiveTerm) -> bool {
        let pending = match self.store.pending_cancels().await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(%error, "could not read the cancels asked for; retrying");
                return false;
            }
        };
        if pending.is_empty() {
            return true;
        }
        let ids: Vec<i64> = pending.iter().map(|cancel| cancel.run_id).collect();
        match self.store.apply_cancels(term.term(), &ids).await {
            Ok(marked) => {
                for cancel in pending.iter().filter(|cancel| marked.contains(&cancel.run_id)) {
                    let here = self.own_runs.stop_run(cancel.run_id, &cancel.reason);
                    tracing::info!(job = %cancel.job, run_id = cancel.run_id, here, reason = %cancel.reason, "run cancelled");
                }
                true
            }
            Err(ClaimError::Fenced { term: stale, fence }) => {
                metrics::counter!(metric::CLAIMS_REJECTED, "reason" => "fenced").increment(1);
                tracing::warn!(term = stale, fence, "cancel refused: a newer term holds the fence; stepping down");
                term.leader.step_down.cancel();
                false
            }
            Err(error) => {
                tracing::warn!(%error, "could not record the cancels asked for; retrying");
                false
            }
        }
    }

    /// Start queued backfill slots, as many as each job's concurrency allows: one at a time for
    /// a `forbid` or `replace` job (and only while none of its runs goes; a backfill never
    /// replaces a run), up to `BACKFILL_PARALLELISM` at once for an `allow` job. Each goes
    /// through the same fenced claim as a scheduled slot, with its own slot. False when the
    /// queue could not be read (retried like the controls).
    async fn start_backfills(&mut self, term: &mut ActiveTerm, now: DateTime<Utc>) -> bool {
        if let Err(error) = self.store.clear_backfill_slots().await {
            tracing::debug!(%error, "could not clear the backfill queue of ended slots");
        }
        let queued = match self.store.pending_backfill_slots(BACKFILL_READ).await {
            Ok(queued) => queued,
            Err(error) => {
                tracing::warn!(%error, "could not read the backfill queue; retrying");
                return false;
            }
        };
        let going: HashSet<(String, DateTime<Utc>)> = term.backfills_going.values().cloned().collect();
        let mut per_job: HashMap<String, usize> = HashMap::new();
        for (job, _) in term.backfills_going.values() {
            *per_job.entry(job.clone()).or_default() += 1;
        }
        term.backfill_waiting = false;
        if queued.is_empty() {
            return true;
        }
        let by_name: HashMap<&str, &JobState> =
            term.jobs.iter().map(|state| (state.job.name.as_ref(), state)).collect();
        let mut start = Vec::new();
        for queued in queued {
            if going.contains(&(queued.job.clone(), queued.slot)) {
                continue;
            }
            // A job gone from the file, or paused, keeps its slots queued until it is back.
            let Some(state) = by_name.get(queued.job.as_str()) else { continue };
            if state.paused {
                continue;
            }
            let job = state.job.clone();
            let running = per_job.get(&queued.job).copied().unwrap_or(0);
            let allowed = match job.concurrency {
                Concurrency::Allow => running < BACKFILL_PARALLELISM,
                Concurrency::Forbid | Concurrency::Replace => running == 0 && !self.own_runs.decided_at_slot(&job),
            };
            if !allowed {
                term.backfill_waiting = true;
                continue;
            }
            *per_job.entry(queued.job.clone()).or_default() += 1;
            let job = if job.concurrency == Concurrency::Replace {
                let mut job = Arc::unwrap_or_clone(job);
                job.concurrency = Concurrency::Forbid;
                Arc::new(job)
            } else {
                job
            };
            start.push((job, state.metrics.clone(), queued));
        }
        for (job, metrics, queued) in start {
            let task = self.run_task(term, metrics, now);
            let trigger = Trigger::Backfill { request: queued.backfill };
            if let Some(key) = self.start_runs(job, vec![queued.slot], trigger, task) {
                term.backfills_going.insert(key, (queued.job, queued.slot));
            }
        }
        true
    }
}

/// The job as one manual run of it runs: its `env` with the trigger's overrides over it (only
/// the variables the job lists under `overrides` now: the file may have changed since the trigger
/// was recorded, or an older tenure recorded any name), and the concurrency policy the request
/// asked for explicitly, if it did.
fn with_overrides(job: Arc<Job>, overrides: &TriggerOverrides) -> Arc<Job> {
    if overrides.env.is_empty() && overrides.concurrency.is_none_or(|policy| policy == job.concurrency) {
        return job;
    }
    let (allowed, refused): (Vec<_>, Vec<_>) = overrides.env.iter().partition(|(name, _)| job.overrides.contains(name));
    if !refused.is_empty() {
        let names: Vec<&str> = refused.iter().map(|(name, _)| name.as_str()).collect();
        tracing::warn!(job = %job.name, env = ?names, "manual run: overrides its job does not list are left out");
    }
    let mut job = Arc::unwrap_or_clone(job);
    job.env.extend(allowed.into_iter().map(|(name, value)| (name.clone(), value.clone())));
    job.concurrency = overrides.concurrency.unwrap_or(job.concurrency);
    Arc::new(job)
}

async fn reap_lost(store: Store, term: Term, node: String, live: Vec<LiveNode>) {
    // A registry that does not list us is stale or failing; reaping by it could mark a live run
    // lost.
    if !live.iter().any(|l| l.node == node) {
        return;
    }
    match store.reap_lost(&term, &live).await {
        Ok(0) => {}
        Ok(count) => {
            metrics::counter!(metric::RUNS_LOST).increment(count);
            tracing::warn!(count, "runs of vanished leaders marked lost");
        }
        Err(error) => tracing::warn!(%error, "could not reap lost runs"),
    }
}

/// The replicas this leader saw leave the registry, and when: a run of theirs is reaped `lost` only
/// once they have been gone for `Supervision::lost_after` (a replica that freezes now has a
/// supervisor that kills its runs only after the silence limit). A replica gone before the term
/// began is not listed: the term's first reap comes `lost_after` after its start.
#[derive(Debug, Default)]
pub(super) struct Departures {
    /// Node id and start time of every replica registered at the last look.
    present: HashMap<String, DateTime<Utc>>,
    /// Node id, start time, and when it was first seen gone.
    gone: HashMap<String, (DateTime<Utc>, Instant)>,
}

impl Departures {
    /// Take note of the registry as of `now`; true when a replica has left it since the last look.
    pub(super) fn observe(&mut self, members: &[Member], now: Instant) -> bool {
        let current: HashMap<String, DateTime<Utc>> =
            members.iter().map(|member| (member.node.clone(), member.started_at)).collect();
        let mut departed = false;
        for (node, since) in &self.present {
            if !current.contains_key(node) {
                self.gone.entry(node.clone()).or_insert((*since, now));
                departed = true;
            }
        }
        self.gone.retain(|node, _| !current.contains_key(node));
        self.present = current;
        departed
    }

    /// Whose runs may not be reaped yet: the registered replicas, and those gone for less than
    /// `wait` (each vouching for the runs it claimed since it started).
    fn vouching(&mut self, members: &[Member], now: Instant, wait: Duration) -> Vec<LiveNode> {
        self.gone.retain(|_, (_, gone_at)| now.duration_since(*gone_at) < wait);
        let registered = members.iter().map(|member| LiveNode { node: member.node.clone(), since: member.started_at });
        let departing = self.gone.iter().map(|(node, (since, _))| LiveNode { node: node.clone(), since: *since });
        registered.chain(departing).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_departed_replica_vouches_for_its_runs_until_its_wait_is_out() {
        let member = |node: &str| Member {
            node: node.into(),
            version: String::new(),
            address: String::new(),
            config_hash: String::new(),
            started_at: at("2026-01-01T00:00:00Z"),
        };
        let nodes = |live: Vec<LiveNode>| {
            let mut nodes: Vec<String> = live.into_iter().map(|l| l.node).collect();
            nodes.sort();
            nodes
        };
        let wait = Duration::from_secs(3);
        let start = Instant::now();
        let mut departures = Departures::default();
        assert!(!departures.observe(&[member("a"), member("b")], start));
        let left = start + Duration::from_secs(10);
        assert!(departures.observe(&[member("a")], left), "b left");
        assert!(!departures.observe(&[member("a")], left + Duration::from_secs(1)), "seen gone again: no news");
        // b is gone since `left`, not since the later look, and vouches until `left + wait`.
        assert_eq!(nodes(departures.vouching(&[member("a")], left + Duration::from_secs(2), wait)), ["a", "b"]);
        assert_eq!(nodes(departures.vouching(&[member("a")], left + wait, wait)), ["a"]);
        // Back in the registry, then gone again: a new wait.
        departures.observe(&[member("a"), member("b")], left + Duration::from_secs(5));
        assert!(departures.observe(&[member("a")], left + Duration::from_secs(6)));
        assert_eq!(nodes(departures.vouching(&[member("a")], left + Duration::from_secs(8), wait)), ["a", "b"]);
    }

    /// A trigger recorded before its job stopped listing a variable (or by an older tenure that
    /// took any name) does not set it: the job file in force when the run starts decides.
    #[test]
    fn a_manual_run_gets_only_the_overrides_its_job_lists_when_it_starts() {
        let text = "jobs:\n  - name: a\n    schedule: '@daily'\n    shell: 'true'\n    env: { GREETING: hi }\n    overrides: [REGION]\n";
        let job = Arc::new(crate::config::parse(text, "jobs.yaml").unwrap().jobs()[0].clone());
        let env = [("REGION", "eu"), ("LD_PRELOAD", "/tmp/evil.so"), ("GREETING", "hello")];
        let overrides = TriggerOverrides {
            env: env.into_iter().map(|(name, value)| (name.to_owned(), value.to_owned())).collect(),
            ..TriggerOverrides::default()
        };
        let run = with_overrides(job, &overrides);
        let env: Vec<(&str, &str)> = run.env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        assert_eq!(env, [("GREETING", "hi"), ("REGION", "eu")]);
    }
}
