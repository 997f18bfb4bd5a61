//! The firing loop: while this replica leads, sleep until the next due slot of any job, decide per
//! the job's policies what happens to each due slot, claim it in the ledger under the term, and
//! only then hand it to the executor. The only module that starts runs.
//!
//! The loop is an actor reacting to a closed set of events (`Wake`): leadership changed, the job
//! file reloaded, a run finished, a slot came due, or shutdown.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{ClockCheck, StepDetector};
use crate::config::{CatchUp, Concurrency, Job, JobSet};
use crate::election::Member;
use crate::executor::{self, OutputTail, RunContext};
use crate::leadership::{LeaderTerm, Leadership, LeaseDeadline, Term};
use crate::store::{
    Claim, ClaimError, Claimed, FenceError, LiveNode, RunOutcome, RunStatus, SkipIfRunning, Store, Trigger,
};

/// A slot this close behind "now" is on time; older due slots are catch-up slots and follow the
/// job's `catch_up` policy.
const ON_TIME_TOLERANCE: Duration = Duration::from_secs(1);
/// At most this many missed slots per job are written individually in one catch-up; the rest are
/// counted and logged (a per-second job down for a day would otherwise write 86,400 rows).
const MAX_MISSED_ROWS: usize = 10_000;
/// How long to wait before retrying a ledger operation that failed because the database did.
/// How often the leader records that its term is alive (the terms page's hand-over times).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often a running job's output tail is copied to the ledger for live viewing.
const OUTPUT_FLUSH: Duration = Duration::from_secs(1);
const DATABASE_RETRY: Duration = Duration::from_millis(500);
/// Re-check the wall clock at least this often, so a clock stepped forwards is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Everything the loop needs from outside; tests pass channels they drive themselves.
pub struct Scheduler {
    store: Store,
    node_id: String,
    jobs: watch::Receiver<Arc<JobSet>>,
    leadership: watch::Receiver<Leadership>,
    members: watch::Receiver<Vec<Member>>,
    /// This replica's clock against the database's; a skewed clock does not fire.
    clock: watch::Receiver<ClockCheck>,
    /// The current term's claim and start batchers, while leading.
    claims: Option<mpsc::UnboundedSender<ClaimRequest>>,
    starts: Option<mpsc::UnboundedSender<StartRequest>>,
    http: reqwest::Client,
    shutdown_grace: Duration,
    runs: TaskTracker,
    own_runs: HashMap<u64, OwnRun>,
    /// Manual triggers this term has started; a trigger is started once per term.
    started_triggers: HashSet<i64>,
    next_run_key: u64,
    finished_tx: mpsc::UnboundedSender<u64>,
    finished_rx: mpsc::UnboundedReceiver<u64>,
}

/// A run this replica started (or is claiming) in the current term.
struct OwnRun {
    job: String,
    stop: RunStop,
    done: CancellationToken,
}

/// A stop request with its reason, so the ledger says why a run was killed.
#[derive(Clone, Default)]
struct RunStop {
    token: CancellationToken,
    reason: Arc<Mutex<Option<&'static str>>>,
}

impl RunStop {
    fn stop(&self, reason: &'static str) {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(reason);
        self.token.cancel();
    }

    fn reason(&self) -> Option<&'static str> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Per-job firing state for one term.
struct JobState {
    job: Arc<Job>,
    /// The last slot handled (recorded, claimed or being claimed). Never fire at or before it.
    cursor: DateTime<Utc>,
    /// Paused in the job file or by an operator (recorded in the ledger database).
    paused: bool,
}

enum Wake {
    Shutdown,
    LeadershipChanged,
    JobsReloaded,
    /// An operator paused, resumed or triggered a job (PostgreSQL NOTIFY), or the listener
    /// reconnected and anything may have changed.
    ControlsChanged,
    RunFinished(u64),
    Due,
    Reap,
    Heartbeat,
    ClockChanged,
}

/// Records the term's last heartbeat when the term's loop ends (resign, step-down, shutdown).
struct TermHeartbeat {
    store: Store,
    term: Term,
}

impl Drop for TermHeartbeat {
    fn drop(&mut self) {
        let (store, term, at) = (self.store.clone(), self.term.clone(), Utc::now());
        tokio::spawn(async move { store.term_alive(&term, at).await });
    }
}

impl Scheduler {
    pub fn new(
        store: Store,
        node_id: String,
        jobs: watch::Receiver<Arc<JobSet>>,
        leadership: watch::Receiver<Leadership>,
        members: watch::Receiver<Vec<Member>>,
        clock: watch::Receiver<ClockCheck>,
        shutdown_grace: Duration,
    ) -> Scheduler {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        Scheduler {
            store,
            node_id,
            jobs,
            leadership,
            members,
            clock,
            claims: None,
            starts: None,
            http: reqwest::Client::new(),
            shutdown_grace,
            runs: TaskTracker::new(),
            own_runs: HashMap::new(),
            started_triggers: HashSet::new(),
            next_run_key: 0,
            finished_tx,
            finished_rx,
        }
    }

    /// Fire while leading, until `shutdown`; then let runs finish within the grace period.
    pub async fn run(mut self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let leadership = self.leadership.borrow_and_update().clone();
            match leadership {
                Leadership::Leader(leader) => {
                    self.lead(&leader, &shutdown).await;
                    if !shutdown.is_cancelled() {
                        // Leadership is gone: nothing of this term may keep running.
                        self.stop_all("leadership lost");
                    }
                }
                Leadership::Follower { .. } => {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        changed = self.leadership.changed() => if changed.is_err() { break },
                        Some(key) = self.finished_rx.recv() => { self.own_runs.remove(&key); }
                    }
                }
            }
        }
        self.drain().await;
    }

    /// Shutdown: runs in flight may finish within the grace period, then they are killed.
    async fn drain(&mut self) {
        self.runs.close();
        if tokio::time::timeout(self.shutdown_grace, self.runs.wait()).await.is_err() {
            tracing::warn!(grace = ?self.shutdown_grace, "runs still going after the shutdown grace; killing them");
            self.stop_all("shutdown grace exceeded");
            self.runs.wait().await;
        }
    }

    fn stop_all(&mut self, reason: &'static str) {
        for run in self.own_runs.values() {
            run.stop.stop(reason);
        }
    }

    /// One term: raise the fence, catch up, then fire on time until the term ends.
    async fn lead(&mut self, leader: &LeaderTerm, shutdown: &CancellationToken) {
        let term = &leader.term;
        if !self.clock.borrow_and_update().ok() {
            tracing::error!(term = term.revision(), "won the election with a skewed clock; stepping down");
            leader.step_down.cancel();
            return;
        }
        if !self.begin_term(leader, shutdown).await {
            return;
        }
        let mut steps = StepDetector::default();
        let (claims_tx, claims_rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_claims(self.store.clone(), term.clone(), self.node_id.clone(), claims_rx));
        // Replaced by the next term's; the batcher stops once the term's runs let go of it.
        self.claims = Some(claims_tx);
        let (starts_tx, starts_rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_starts(self.store.clone(), starts_rx));
        self.starts = Some(starts_tx);
        let Some(mut states) = self.load_states(leader, shutdown).await else {
            return;
        };
        self.started_triggers.clear();
        let listener_stop = CancellationToken::new();
        let _stop_listener = listener_stop.clone().drop_guard();
        let (controls_tx, mut controls_rx) = mpsc::channel(1);
        let store = self.store.clone();
        tokio::spawn(async move { store.listen_controls(controls_tx, listener_stop).await });
        // Triggers requested while nobody led are executed now.
        let mut controls_pending = true;
        let mut due: BinaryHeap<Reverse<(DateTime<Utc>, usize)>> = BinaryHeap::new();
        let schedule_all = |states: &[JobState], due: &mut BinaryHeap<Reverse<(DateTime<Utc>, usize)>>| {
            due.clear();
            for (index, state) in states.iter().enumerate() {
                if let Some(next) = next_slot(state) {
                    due.push(Reverse((next, index)));
                }
            }
        };
        schedule_all(&states, &mut due);
        // Runs of older terms whose node vanished become `lost` once their node would have had
        // time to kill them (lease deadline plus the executor's kill grace).
        let reap_every = executor::KILL_GRACE + Duration::from_secs(1);
        let mut next_reap = tokio::time::Instant::now() + reap_every;
        let mut next_heartbeat = tokio::time::Instant::now();
        // The last heartbeat marks when this term ended, however `lead` returns.
        let _last_heartbeat = TermHeartbeat { store: self.store.clone(), term: term.clone() };

        loop {
            if std::mem::take(&mut controls_pending) {
                self.apply_controls(&mut states, leader).await;
                schedule_all(&states, &mut due);
            }
            let wake_at = due.peek().map(|Reverse((slot, _))| instant_for(*slot));
            let wake = tokio::select! {
                biased;
                () = shutdown.cancelled() => Wake::Shutdown,
                changed = self.leadership.changed() => {
                    if changed.is_err() { Wake::Shutdown } else { Wake::LeadershipChanged }
                }
                () = leader.step_down.cancelled() => Wake::LeadershipChanged,
                changed = self.jobs.changed() => {
                    if changed.is_err() { Wake::Shutdown } else { Wake::JobsReloaded }
                }
                Some(key) = self.finished_rx.recv() => Wake::RunFinished(key),
                Some(()) = controls_rx.recv() => Wake::ControlsChanged,
                () = sleep_until_or_forever(wake_at) => Wake::Due,
                () = tokio::time::sleep_until(next_reap) => Wake::Reap,
                () = tokio::time::sleep_until(next_heartbeat) => Wake::Heartbeat,
                changed = self.clock.changed() => {
                    if changed.is_err() { Wake::Shutdown } else { Wake::ClockChanged }
                }
            };
            match wake {
                Wake::Shutdown => return,
                Wake::LeadershipChanged => {
                    let still_ours = self.leadership.borrow().term() == Some(term);
                    if !still_ours || leader.step_down.is_cancelled() {
                        return;
                    }
                }
                Wake::JobsReloaded => {
                    let jobs = self.jobs.borrow_and_update().clone();
                    states = rebuild_states(states, &jobs, Utc::now());
                    // Operator pauses apply to the reloaded jobs too.
                    controls_pending = true;
                    tracing::info!(jobs = states.len(), hash = jobs.hash(), "job file reloaded");
                }
                Wake::ControlsChanged => controls_pending = true,
                Wake::RunFinished(key) => {
                    self.own_runs.remove(&key);
                }
                Wake::ClockChanged => {
                    let check = *self.clock.borrow_and_update();
                    if !check.ok() {
                        tracing::error!(skew_ms = ?check.skew_ms, "clock skewed against the database; stepping down");
                        metrics::counter!("tenure_clock_step_downs_total").increment(1);
                        leader.step_down.cancel();
                        return;
                    }
                }
                Wake::Heartbeat => {
                    if let Err(error) = self.store.term_alive(term, Utc::now()).await {
                        tracing::debug!(%error, "could not record the term heartbeat");
                    }
                    next_heartbeat = tokio::time::Instant::now() + HEARTBEAT;
                }
                Wake::Reap => {
                    self.reap(term).await;
                    next_reap = tokio::time::Instant::now() + reap_every;
                }
                Wake::Due => {
                    if !leader.lease.is_valid() {
                        // The election notices too and publishes Follower; fire nothing meanwhile.
                        continue;
                    }
                    if let Some(step) = steps.step() {
                        // Firing now would catch up (or skip) slots by a clock that just jumped.
                        tracing::error!(step_ms = step.num_milliseconds(), "the wall clock stepped; stepping down");
                        metrics::counter!("tenure_clock_step_downs_total").increment(1);
                        leader.step_down.cancel();
                        return;
                    }
                    let now = Utc::now();
                    while let Some(Reverse((slot, index))) = due.peek().copied() {
                        if slot > now {
                            break;
                        }
                        due.pop();
                        self.fire_due(&mut states[index], leader, now);
                        if let Some(next) = next_slot(&states[index]) {
                            due.push(Reverse((next, index)));
                        }
                    }
                }
            }
        }
    }

    /// Raise the fence to this term before its first claim. False when this term must not fire.
    async fn begin_term(&mut self, leader: &LeaderTerm, shutdown: &CancellationToken) -> bool {
        let term = &leader.term;
        loop {
            match self.store.begin_term(term, &self.node_id).await {
                Ok(()) => {
                    metrics::gauge!("tenure_term").set(term.revision() as f64);
                    tracing::info!(term = term.revision(), "fence raised; firing");
                    return true;
                }
                Err(FenceError::Superseded { fence, fence_cluster, .. }) => {
                    if fence_cluster != term.cluster_id() {
                        tracing::error!(
                            term = term.revision(),
                            fence,
                            fence_cluster,
                            cluster = term.cluster_id(),
                            "the ledger's fence comes from another etcd cluster with a higher term: \
                             etcd was probably rebuilt; refusing to fire until an operator resets the fence"
                        );
                    } else {
                        tracing::warn!(term = term.revision(), fence, "a newer term holds the fence; stepping down");
                    }
                    leader.step_down.cancel();
                    return false;
                }
                Err(FenceError::Database(error)) => {
                    tracing::warn!(%error, term = term.revision(), "could not raise the fence; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = leader.step_down.cancelled() => return false,
                        () = tokio::time::sleep(DATABASE_RETRY) => {}
                    }
                    if self.leadership.borrow().term() != Some(term) || !leader.lease.is_valid() {
                        return false;
                    }
                }
            }
        }
    }

    async fn load_states(&mut self, leader: &LeaderTerm, shutdown: &CancellationToken) -> Option<Vec<JobState>> {
        loop {
            match self.store.last_scheduled_slots().await {
                Ok(last) => {
                    let jobs = self.jobs.borrow_and_update().clone();
                    let now = Utc::now();
                    return Some(
                        jobs.jobs()
                            .iter()
                            .map(|job| JobState {
                                cursor: last.get(job.name.as_ref()).copied().unwrap_or(now),
                                paused: job.paused,
                                job: Arc::new(job.clone()),
                            })
                            .collect(),
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "could not read the ledger; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = leader.step_down.cancelled() => return None,
                        () = tokio::time::sleep(DATABASE_RETRY) => {}
                    }
                    if self.leadership.borrow().term() != Some(&leader.term) {
                        return None;
                    }
                }
            }
        }
    }

    async fn reap(&self, term: &Term) {
        let live: Vec<LiveNode> =
            self.members.borrow().iter().map(|m| LiveNode { node: m.node.clone(), since: m.started_at }).collect();
        // A registry that does not list us is stale or failing; reaping by it could mark a live
        // run lost.
        if !live.iter().any(|l| l.node == self.node_id) {
            return;
        }
        match self.store.reap_lost(term, &live).await {
            Ok(0) => {}
            Ok(count) => {
                metrics::counter!("tenure_runs_lost_total").increment(count);
                tracing::warn!(count, "runs of vanished leaders marked lost");
            }
            Err(error) => tracing::warn!(%error, "could not reap lost runs"),
        }
    }

    /// Decide what happens to every due slot of one job, per its `catch_up` policy and
    /// `starting_deadline`, and advance its cursor past them.
    fn fire_due(&mut self, state: &mut JobState, leader: &LeaderTerm, now: DateTime<Utc>) {
        let job = state.job.clone();
        if state.paused {
            return;
        }
        let plan = plan_due_slots(&job, state.cursor, now);
        let Some(last) = plan.last_slot else { return };
        state.cursor = last;
        let ledger = self.ledger(leader);
        if plan.missed_total > 0 {
            metrics::counter!("tenure_missed_slots_total", "job" => job.name.to_string())
                .increment(plan.missed_total as u64);
            tracing::warn!(
                job = %job.name, missed = plan.missed_total, recorded = plan.missed.len(),
                "slots missed per the job's catch-up policy"
            );
            let ledger = ledger.clone();
            let job = job.clone();
            let missed = plan.missed;
            self.runs.spawn(async move { ledger.record_missed(&job, &missed).await });
        }
        self.start_runs(job, plan.run, Trigger::Schedule, None, ledger);
    }

    fn ledger(&self, leader: &LeaderTerm) -> Ledger {
        Ledger {
            store: self.store.clone(),
            term: leader.term.clone(),
            lease: leader.lease.clone(),
            step_down: leader.step_down.clone(),
            claims: self.claims.clone().expect("a claim batcher while leading"),
            starts: self.starts.clone().expect("a start batcher while leading"),
            node: self.node_id.clone(),
            config_hash: self.jobs.borrow().hash().to_owned(),
            http: self.http.clone(),
        }
    }

    /// Claim and run `slots` of `job` in order, in one task tracked as one of this term's runs.
    fn start_runs(
        &mut self,
        job: Arc<Job>,
        slots: Vec<DateTime<Utc>>,
        trigger: Trigger,
        trigger_id: Option<i64>,
        ledger: Ledger,
    ) {
        if slots.is_empty() {
            return;
        }
        // `replace`: stop this job's earlier runs and let the new one wait for them to end.
        let mut wait_for = Vec::new();
        if job.concurrency == Concurrency::Replace {
            for run in self.own_runs.values().filter(|run| run.job == job.name.as_ref()) {
                run.stop.stop("replaced by a newer run");
                wait_for.push(run.done.clone());
            }
        }
        let key = self.next_run_key;
        self.next_run_key += 1;
        let stop = RunStop::default();
        let done = CancellationToken::new();
        self.own_runs.insert(key, OwnRun { job: job.name.to_string(), stop: stop.clone(), done: done.clone() });
        let finished = self.finished_tx.clone();
        self.runs.spawn(async move {
            for wait in wait_for {
                let _ = tokio::time::timeout(executor::KILL_GRACE * 2, wait.cancelled()).await;
            }
            // `catch_up: all` runs the slots in order, one after the other.
            for slot in slots {
                if stop.token.is_cancelled() {
                    break;
                }
                ledger.fire(&job, slot, trigger, trigger_id, &stop).await;
            }
            done.cancel();
            let _ = finished.send(key);
        });
    }

    /// Apply operator pauses and start pending manual triggers. On a database error the current
    /// state stays and the next notification or term retries.
    async fn apply_controls(&mut self, states: &mut [JobState], leader: &LeaderTerm) {
        let now = Utc::now();
        match self.store.job_controls().await {
            Ok(controls) => {
                for state in states.iter_mut() {
                    // An operator's pause or resume overrides the job file's `paused`.
                    let should_pause = controls.get(state.job.name.as_ref()).copied().unwrap_or(state.job.paused);
                    if state.paused && !should_pause {
                        // Resumed: slots that fell due while paused are not owed.
                        state.cursor = state.cursor.max(now);
                        tracing::info!(job = %state.job.name, "resumed");
                    } else if !state.paused && should_pause {
                        tracing::info!(job = %state.job.name, "paused");
                    }
                    state.paused = should_pause;
                }
            }
            Err(error) => tracing::warn!(%error, "could not read paused jobs"),
        }
        let triggers = match self.store.pending_triggers().await {
            Ok(triggers) => triggers,
            Err(error) => {
                tracing::warn!(%error, "could not read pending triggers");
                return;
            }
        };
        for trigger in triggers {
            if !self.started_triggers.insert(trigger.id) {
                continue;
            }
            let job = states.iter().find(|state| state.job.name.as_ref() == trigger.job).map(|s| s.job.clone());
            match job {
                Some(job) => {
                    tracing::info!(job = %job.name, trigger = trigger.id, by = %trigger.requested_by, "manual trigger");
                    let ledger = self.ledger(leader);
                    self.start_runs(job, vec![trigger.requested_at], Trigger::Manual, Some(trigger.id), ledger);
                }
                None => {
                    tracing::warn!(job = %trigger.job, trigger = trigger.id, "trigger for a job not in the job file; dropped");
                    if let Err(error) = self.store.trigger_dropped(trigger.id).await {
                        tracing::warn!(%error, "could not mark the trigger handled");
                    }
                }
            }
        }
    }
}

/// What to do with one job's due slots.
#[derive(Debug, Default, PartialEq, Eq)]
struct DuePlan {
    /// Slots to claim and run, oldest first.
    run: Vec<DateTime<Utc>>,
    /// Slots to record as missed (at most `MAX_MISSED_ROWS`, newest kept).
    missed: Vec<DateTime<Utc>>,
    missed_total: usize,
    /// The newest due slot: the job's new cursor.
    last_slot: Option<DateTime<Utc>>,
}

/// Pure: the slots of `job` in `(cursor, now]` and what its policies make of them.
fn plan_due_slots(job: &Job, cursor: DateTime<Utc>, now: DateTime<Utc>) -> DuePlan {
    let mut plan = DuePlan::default();
    let on_time_after = now - chrono::Duration::from_std(ON_TIME_TOLERANCE).unwrap_or_default();
    let deadline = now - chrono::Duration::from_std(job.starting_deadline).unwrap_or_default();
    let mut late = Vec::new();
    let mut on_time = Vec::new();
    let mut too_old = std::collections::VecDeque::new();
    let mut slot = cursor;
    while let Some(next) = job.schedule.next_after(slot) {
        if next > now {
            break;
        }
        slot = next;
        plan.last_slot = Some(next);
        if next >= on_time_after {
            on_time.push(next);
        } else if next < deadline {
            plan.missed_total += 1;
            if too_old.len() == MAX_MISSED_ROWS {
                too_old.pop_front();
            }
            too_old.push_back(next);
        } else {
            late.push(next);
        }
    }
    plan.missed.extend(too_old);
    let miss = |slots: &[DateTime<Utc>], plan: &mut DuePlan| {
        plan.missed_total += slots.len();
        plan.missed.extend_from_slice(slots);
    };
    match job.catch_up {
        CatchUp::None => miss(&late, &mut plan),
        CatchUp::Latest => match (on_time.is_empty(), late.split_last()) {
            (true, Some((newest, older))) => {
                miss(older, &mut plan);
                plan.run.push(*newest);
            }
            (_, _) => miss(&late, &mut plan),
        },
        CatchUp::All => plan.run.extend_from_slice(&late),
    }
    // Several on-time slots (a sub-second stall of a per-second job) are all run.
    plan.run.extend_from_slice(&on_time);
    plan.missed.sort();
    plan
}

fn next_slot(state: &JobState) -> Option<DateTime<Utc>> {
    if state.paused {
        return None;
    }
    state.job.schedule.next_after(state.cursor)
}

/// After a reload: keep the cursor of every job that still exists; a new job, or one that was
/// paused, starts from now.
fn rebuild_states(old: Vec<JobState>, jobs: &JobSet, now: DateTime<Utc>) -> Vec<JobState> {
    let mut old: HashMap<String, JobState> = old.into_iter().map(|state| (state.job.name.to_string(), state)).collect();
    jobs.jobs()
        .iter()
        .map(|job| {
            let cursor = match old.remove(job.name.as_ref()) {
                Some(previous) if !previous.paused => previous.cursor,
                _ => now,
            };
            JobState { job: Arc::new(job.clone()), cursor, paused: job.paused }
        })
        .collect()
}

fn instant_for(slot: DateTime<Utc>) -> tokio::time::Instant {
    let wait = (slot - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(MAX_SLEEP);
    tokio::time::Instant::now() + wait
}

async fn sleep_until_or_forever(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a run task needs to claim, execute and record one slot in the current term.
#[derive(Clone)]
struct Ledger {
    store: Store,
    term: Term,
    lease: LeaseDeadline,
    /// Cancelled when the ledger shows a newer term: this one is over, whatever etcd says.
    step_down: CancellationToken,
    /// The term's claim batcher: claims that fall due together go to the database together.
    claims: mpsc::UnboundedSender<ClaimRequest>,
    /// Start times, batched the same way.
    starts: mpsc::UnboundedSender<StartRequest>,
    node: String,
    config_hash: String,
    http: reqwest::Client,
}

impl Ledger {
    /// Claim through the term's batcher (or directly, if it is gone).
    async fn submit(&self, claim: &Claim<'_>) -> Result<Claimed, ClaimError> {
        let (reply, answer) = oneshot::channel();
        let request = ClaimRequest {
            job: claim.job.to_owned(),
            slot: claim.slot,
            trigger: claim.trigger,
            config_hash: claim.config_hash.to_owned(),
            skip_if_running: claim.skip_if_running,
            claimed_at: claim.claimed_at,
            reply,
        };
        if self.claims.send(request).is_ok() {
            if let Ok(result) = answer.await {
                return result;
            }
        }
        self.store.claim_run(claim).await
    }

    async fn record_missed(&self, job: &Job, slots: &[DateTime<Utc>]) {
        let reason = "not run: past the job's catch-up policy or starting deadline";
        loop {
            match self
                .store
                .record_slots(
                    job.name.as_ref(),
                    slots,
                    RunStatus::Missed,
                    &self.term,
                    &self.node,
                    &self.config_hash,
                    reason,
                )
                .await
            {
                Ok(_) => return,
                Err(ClaimError::Database(error)) if self.lease.is_valid() => {
                    tracing::warn!(%error, job = %job.name, "could not record missed slots; retrying");
                    tokio::time::sleep(DATABASE_RETRY).await;
                }
                Err(error) => {
                    tracing::warn!(%error, job = %job.name, "missed slots not recorded in this term");
                    return;
                }
            }
        }
    }

    /// Claim `slot`, and only once the claim has committed, execute it with its retries.
    async fn fire(&self, job: &Job, slot: DateTime<Utc>, trigger: Trigger, trigger_id: Option<i64>, stop: &RunStop) {
        let claimed = self.claim(job, slot, trigger, stop).await;
        if let Some(trigger_id) = trigger_id {
            // Whoever claimed the trigger's slot (this term, or an earlier one that did not get
            // to mark it), the trigger is handled.
            if let Err(error) = self.store.trigger_handled(trigger_id, job.name.as_ref(), slot).await {
                tracing::warn!(%error, trigger_id, "could not mark the trigger handled");
            }
        }
        let Some(claimed) = claimed else { return };
        let run_id = claimed.run_id;
        if claimed.status == RunStatus::Skipped {
            metrics::counter!("tenure_runs_total", "job" => job.name.to_string(), "status" => "skipped").increment(1);
            tracing::info!(job = %job.name, %slot, "skipped: the previous run is still going");
            return;
        }
        let mut attempt = 1;
        loop {
            let started = Utc::now();
            let outcome = if !self.lease.is_valid() {
                // Claimed, but the lease ran out before we could start: run nothing.
                RunOutcome {
                    status: RunStatus::Killed,
                    exit_code: None,
                    http_status: None,
                    error: Some("leadership lost before the run started".into()),
                    output: String::new(),
                    finished_at: started,
                }
            } else {
                self.start(run_id, started).await;
                metrics::histogram!("tenure_fire_lateness_seconds")
                    .record((started - slot).to_std().unwrap_or_default().as_secs_f64());
                let context = RunContext {
                    run_id,
                    job: job.name.to_string(),
                    slot,
                    term: self.term.revision(),
                    node: self.node.clone(),
                    attempt,
                };
                let output = OutputTail::default();
                let flusher = tokio::spawn(flush_output(self.store.clone(), run_id, output.clone()));
                let mut outcome = executor::execute(job, &context, &output, &self.http, &stop.token).await;
                flusher.abort();
                if let Some(reason) = stop.reason() {
                    outcome.error = Some(reason.to_owned());
                }
                metrics::histogram!("tenure_run_duration_seconds")
                    .record((outcome.finished_at - started).to_std().unwrap_or_default().as_secs_f64());
                outcome
            };
            let retryable = matches!(outcome.status, RunStatus::Failed | RunStatus::TimedOut);
            if !retryable || attempt > job.retries.max as i32 || stop.token.is_cancelled() {
                self.finish(job, run_id, &outcome).await;
                return;
            }
            let error = outcome.error.clone().unwrap_or_default();
            tracing::info!(job = %job.name, %slot, attempt, %error, backoff = ?job.retries.backoff, "attempt failed; retrying");
            tokio::select! {
                () = stop.token.cancelled() => {}
                () = tokio::time::sleep(job.retries.backoff) => {}
            }
            let retry_started = Utc::now();
            let previous = format!("attempt {attempt}: {error}");
            match self.store.retry_run(run_id, &self.term, attempt + 1, &previous, retry_started).await {
                Ok(()) if self.lease.is_valid() && !stop.token.is_cancelled() => attempt += 1,
                Ok(()) | Err(_) => {
                    self.finish(job, run_id, &outcome).await;
                    return;
                }
            }
        }
    }

    async fn claim(&self, job: &Job, slot: DateTime<Utc>, trigger: Trigger, stop: &RunStop) -> Option<Claimed> {
        let skip_if_running = match job.concurrency {
            Concurrency::Forbid => SkipIfRunning::Yes,
            Concurrency::Allow | Concurrency::Replace => SkipIfRunning::No,
        };
        loop {
            if !self.lease.is_valid() || stop.token.is_cancelled() {
                return None;
            }
            let claim = Claim {
                job: job.name.as_ref(),
                slot,
                trigger,
                term: &self.term,
                node: &self.node,
                config_hash: &self.config_hash,
                skip_if_running,
                claimed_at: Utc::now(),
            };
            match self.submit(&claim).await {
                Ok(claimed) => return Some(claimed),
                Err(ClaimError::Fenced { term, fence }) => {
                    metrics::counter!("tenure_claims_rejected_total", "reason" => "fenced").increment(1);
                    if crate::testing::ignore_refusals() {
                        return Some(Claimed { run_id: 0, status: RunStatus::Running });
                    }
                    tracing::warn!(job = %job.name, %slot, term, fence, "claim refused: a newer term holds the fence; stepping down");
                    self.step_down.cancel();
                    return None;
                }
                Err(ClaimError::AlreadyClaimed { term, node }) => {
                    metrics::counter!("tenure_claims_rejected_total", "reason" => "already_claimed").increment(1);
                    tracing::info!(job = %job.name, %slot, term, %node, "claim refused: slot already claimed");
                    return crate::testing::ignore_refusals()
                        .then_some(Claimed { run_id: 0, status: RunStatus::Running });
                }
                Err(ClaimError::Database(error)) => {
                    metrics::counter!("tenure_claim_errors_total").increment(1);
                    tracing::warn!(job = %job.name, %slot, %error, "claim failed; retrying (the run is delayed, not doubled)");
                    tokio::time::sleep(DATABASE_RETRY).await;
                    if Utc::now() - slot > chrono::Duration::from_std(job.starting_deadline).unwrap_or_default() {
                        tracing::warn!(job = %job.name, %slot, "the slot passed its starting deadline while the database was down");
                        self.record_missed(job, &[slot]).await;
                        return None;
                    }
                }
            }
        }
    }

    async fn start(&self, run_id: i64, started: DateTime<Utc>) {
        let (reply, recorded) = oneshot::channel();
        if self.starts.send(StartRequest { run_id, started, reply }).is_ok() && recorded.await.is_ok() {
            return;
        }
        if let Err(error) = self.store.start_run(run_id, started).await {
            tracing::warn!(%error, run_id, "could not record the start time");
        }
    }

    /// Record the outcome; keep trying while the database is down, since a row left `running`
    /// blocks `forbid` jobs until a later leader reaps it.
    async fn finish(&self, job: &Job, run_id: i64, outcome: &RunOutcome) {
        metrics::counter!("tenure_runs_total", "job" => job.name.to_string(), "status" => outcome.status.as_str())
            .increment(1);
        tracing::info!(
            job = %job.name, run_id, status = outcome.status.as_str(), exit_code = ?outcome.exit_code,
            error = ?outcome.error, "run finished"
        );
        let mut delay = DATABASE_RETRY;
        for _ in 0..60 {
            match self.store.finish_run(run_id, outcome).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, run_id, "could not record the outcome; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::error!(run_id, job = %job.name, "gave up recording a run's outcome; a later leader will mark it lost");
    }
}

/// One claim waiting for the batcher.
struct ClaimRequest {
    job: String,
    slot: DateTime<Utc>,
    trigger: Trigger,
    config_hash: String,
    skip_if_running: SkipIfRunning,
    claimed_at: DateTime<Utc>,
    reply: oneshot::Sender<Result<Claimed, ClaimError>>,
}

/// The most claims one statement carries.
const MAX_BATCH: usize = 2_000;

/// Claim what is waiting in one statement, then what came meanwhile, and so on: slots that fall
/// due together cost one round trip and one commit instead of one each. Each claim keeps its own
/// answer (claimed, skipped, fenced, taken), exactly as if it had been sent alone.
async fn batch_claims(store: Store, term: Term, node: String, mut requests: mpsc::UnboundedReceiver<ClaimRequest>) {
    while let Some(first) = requests.recv().await {
        let batch = drain(first, &mut requests);
        let claims: Vec<Claim<'_>> = batch
            .iter()
            .map(|request| Claim {
                job: &request.job,
                slot: request.slot,
                trigger: request.trigger,
                term: &term,
                node: &node,
                config_hash: &request.config_hash,
                skip_if_running: request.skip_if_running,
                claimed_at: request.claimed_at,
            })
            .collect();
        let results = store.claim_runs(&claims).await;
        drop(claims);
        for (request, result) in batch.into_iter().zip(results) {
            let _ = request.reply.send(result);
        }
    }
}

/// `first` and whatever else is already waiting, up to `MAX_BATCH`: the batch to send now.
fn drain<T>(first: T, requests: &mut mpsc::UnboundedReceiver<T>) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match requests.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
    batch
}

/// A start time waiting for the batcher; answered once it is recorded (or given up on).
struct StartRequest {
    run_id: i64,
    started: DateTime<Utc>,
    reply: oneshot::Sender<()>,
}

/// Record start times like `batch_claims` claims: what is waiting, in one statement.
async fn batch_starts(store: Store, mut requests: mpsc::UnboundedReceiver<StartRequest>) {
    while let Some(first) = requests.recv().await {
        let batch = drain(first, &mut requests);
        let runs: Vec<(i64, DateTime<Utc>)> = batch.iter().map(|r| (r.run_id, r.started)).collect();
        if let Err(error) = store.start_runs(&runs).await {
            tracing::warn!(%error, runs = runs.len(), "could not record start times");
        }
        for request in batch {
            let _ = request.reply.send(());
        }
    }
}

/// Copy a running job's output tail to the ledger every `OUTPUT_FLUSH` while it changes, so the
/// run page of any replica shows it live. The final outcome overwrites it.
async fn flush_output(store: Store, run_id: i64, output: OutputTail) {
    let mut written = String::new();
    loop {
        tokio::time::sleep(OUTPUT_FLUSH).await;
        let text = output.text();
        if text != written {
            if let Err(error) = store.update_output(run_id, &text).await {
                tracing::debug!(%error, run_id, "could not record live output");
            }
            written = text;
        }
    }
}
