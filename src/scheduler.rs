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
use crate::executor::{self, OutputTail, RunContext};
use crate::leadership::{LeaderTerm, Leadership, LeaseDeadline, Term};
use crate::model::{Member, RunOutcome, RunStatus, Trigger};
use crate::store::{
    Claim, ClaimError, Claimed, FenceError, JobControl, JobCursor, LiveNode, SkipIfRunning, Store, UnrunSlots,
};
use crate::supervisor::Supervision;
use crate::telemetry::metric;

/// A slot this close behind "now" is on time; older due slots are catch-up slots and follow the
/// job's `catch_up` policy.
const ON_TIME_TOLERANCE: Duration = Duration::from_secs(1);
/// At most this many missed slots per job are written individually in one catch-up; the rest are
/// counted and logged (a per-second job down for a day would otherwise write 86,400 rows).
const MAX_MISSED_ROWS: usize = 10_000;
/// How long to wait before retrying a ledger operation that failed because the database did.
/// Why every run of a term is stopped when the term ends.
const LEADERSHIP_LOST: &str = "leadership lost";
/// How often the leader records that its term is alive (the terms page's hand-over times).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often a running job's output tail is copied to the ledger for live viewing.
const OUTPUT_FLUSH: Duration = Duration::from_secs(1);
const DATABASE_RETRY: Duration = Duration::from_millis(500);
/// Re-check the wall clock at least this often, so a clock stepped forwards is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// The longest a run is claimed, or its start recorded, ahead of its slot (see `Lead`).
const MAX_LEAD: Duration = Duration::from_secs(1);

/// Everything the loop needs from outside; tests pass channels they drive themselves.
pub struct Scheduler {
    store: Store,
    node_id: String,
    jobs: watch::Receiver<Arc<JobSet>>,
    leadership: watch::Receiver<Leadership>,
    members: watch::Receiver<Vec<Member>>,
    /// This replica's clock against the database's; a skewed clock does not fire.
    clock: watch::Receiver<ClockCheck>,
    /// The current term's claim, start-time and outcome batchers, while leading.
    claims: Option<mpsc::UnboundedSender<ClaimRequest>>,
    starts: Option<mpsc::UnboundedSender<StartRequest>>,
    finishes: Option<mpsc::UnboundedSender<FinishRequest>>,
    http: reqwest::Client,
    /// How runs' processes are started (through the replica's supervisor), and so how long after a replica vanished its runs may
    /// be recorded `lost`.
    supervision: Supervision,
    shutdown_grace: Duration,
    runs: TaskTracker,
    own_runs: HashMap<u64, OwnRun>,
    /// How many of `own_runs` each job has: a `forbid` or `replace` job with one is not claimed
    /// ahead of its slot, so its policy is decided at the slot, as crontab users expect.
    runs_per_job: HashMap<String, usize>,
    /// How far ahead of their slots starts are recorded, and claims sent before that.
    leads: Leads,
    /// Manual triggers this term has started and whose runs have not ended; a trigger still
    /// pending after its run ended (stopped before its claim or start) is started again.
    started_triggers: HashSet<i64>,
    next_run_key: u64,
    /// The output tails of the runs going, written to the ledger together.
    live_outputs: LiveOutputs,
    finished_tx: mpsc::UnboundedSender<u64>,
    finished_rx: mpsc::UnboundedReceiver<u64>,
}

/// A run this replica started (or is claiming) in the current term.
struct OwnRun {
    job: String,
    trigger: Trigger,
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
    /// A replica joined or left the registry.
    MembersChanged,
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        node_id: String,
        jobs: watch::Receiver<Arc<JobSet>>,
        leadership: watch::Receiver<Leadership>,
        members: watch::Receiver<Vec<Member>>,
        clock: watch::Receiver<ClockCheck>,
        supervision: Supervision,
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
            finishes: None,
            http: reqwest::Client::new(),
            supervision,
            shutdown_grace,
            runs: TaskTracker::new(),
            own_runs: HashMap::new(),
            runs_per_job: HashMap::new(),
            leads: Leads::default(),
            started_triggers: HashSet::new(),
            next_run_key: 0,
            live_outputs: LiveOutputs::default(),
            finished_tx,
            finished_rx,
        }
    }

    /// Fire while leading, until `shutdown`; then let runs finish within the grace period.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // One writer of live output for every run of every term, until the last run has drained.
        let flusher_stop = CancellationToken::new();
        let _stop_flusher = flusher_stop.clone().drop_guard();
        tokio::spawn(flush_live_outputs(self.store.clone(), self.live_outputs.clone(), flusher_stop));
        while !shutdown.is_cancelled() {
            let leadership = self.leadership.borrow_and_update().clone();
            match leadership {
                Leadership::Leader(leader) => {
                    self.lead(&leader, &shutdown).await;
                    if !shutdown.is_cancelled() {
                        // Leadership is gone: nothing of this term may keep running.
                        self.stop_all(LEADERSHIP_LOST);
                    }
                    if leader.step_down.is_cancelled() {
                        // Stepping down: wait for the election to say so rather than lead again.
                        while self.leadership.borrow_and_update().term() == Some(&leader.term) {
                            tokio::select! {
                                () = shutdown.cancelled() => break,
                                changed = self.leadership.changed() => if changed.is_err() { break },
                                Some(key) = self.finished_rx.recv() => { self.run_finished(key); }
                            }
                        }
                    }
                }
                Leadership::Follower { .. } => {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        changed = self.leadership.changed() => if changed.is_err() { break },
                        Some(key) = self.finished_rx.recv() => { self.run_finished(key); }
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
        if let Some(why) = self.clock.borrow_and_update().refusal() {
            tracing::error!(term = term.revision(), "won the election, but {why}; stepping down");
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
        tokio::spawn(batch_starts(self.store.clone(), term.clone(), starts_rx));
        self.starts = Some(starts_tx);
        let (finishes_tx, finishes_rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_finishes(self.store.clone(), finishes_rx));
        self.finishes = Some(finishes_tx);
        let Some(mut states) = self.load_states(leader, shutdown).await else {
            return;
        };
        self.started_triggers.clear();
        let listener_stop = CancellationToken::new();
        let _stop_listener = listener_stop.clone().drop_guard();
        let (controls_tx, mut controls_rx) = mpsc::channel(1);
        let store = self.store.clone();
        tokio::spawn(async move { store.listen_controls(controls_tx, listener_stop).await });
        // Triggers requested while nobody led are executed now. Until the operator controls are
        // read (at term start, after a reload, after a notification) nothing fires: a job an
        // operator paused must not fire by the job file's `paused` alone.
        let mut controls_pending = true;
        let mut due = DueSlots::default();
        due.reset(&states);
        // Runs of older terms whose node vanished become `lost` once nothing of them can be left:
        // `lost_after` since the node left the registry (or since this term began, for a node
        // gone before), by which time its supervisor or its own kill grace have ended them.
        let lost_after = self.supervision.lost_after();
        let mut departures = Departures::default();
        departures.observe(&self.members.borrow_and_update(), tokio::time::Instant::now());
        let mut next_reap = tokio::time::Instant::now() + lost_after;
        let mut next_heartbeat = tokio::time::Instant::now();
        let mut heartbeat: Option<tokio::task::JoinHandle<()>> = None;
        let mut reaping: Option<tokio::task::JoinHandle<()>> = None;
        // The last heartbeat marks when this term ended, however `lead` returns.
        let _last_heartbeat = TermHeartbeat { store: self.store.clone(), term: term.clone() };

        loop {
            if controls_pending {
                controls_pending = !self.apply_controls(&mut states, leader).await;
                due.reset(&states);
            }
            let wake_at = if controls_pending {
                Some(Utc::now() + chrono::Duration::from_std(DATABASE_RETRY).unwrap_or_default())
            } else {
                due.wake_at(self.leads.ahead())
            };
            let wake_at = wake_at.map(instant_for);
            let wake = tokio::select! {
                biased;
                () = shutdown.cancelled() => Wake::Shutdown,
                changed = self.leadership.changed() => {
                    if changed.is_err() { Wake::Shutdown } else { Wake::LeadershipChanged }
                }
                () = leader.step_down.cancelled() => Wake::LeadershipChanged,
                changed = self.clock.changed() => {
                    if changed.is_err() { Wake::Shutdown } else { Wake::ClockChanged }
                }
                changed = self.jobs.changed() => {
                    if changed.is_err() { Wake::Shutdown } else { Wake::JobsReloaded }
                }
                Some(key) = self.finished_rx.recv() => Wake::RunFinished(key),
                Some(()) = controls_rx.recv() => Wake::ControlsChanged,
                () = sleep_until_or_forever(wake_at) => Wake::Due,
                () = tokio::time::sleep_until(next_reap) => Wake::Reap,
                changed = self.members.changed() => {
                    if changed.is_err() { Wake::Shutdown } else { Wake::MembersChanged }
                }
                () = tokio::time::sleep_until(next_heartbeat) => Wake::Heartbeat,
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
                    let known: HashSet<String> = states.iter().map(|state| state.job.name.to_string()).collect();
                    let now = Utc::now();
                    states = rebuild_states(states, &jobs, now);
                    // A job new to this term starts from now; its cursor is recorded so that a
                    // hand-over before its first slot does not lose that slot.
                    let added: Vec<&str> =
                        jobs.jobs().iter().map(|job| job.name.as_ref()).filter(|name| !known.contains(*name)).collect();
                    if !added.is_empty() {
                        if let Err(error) = self.store.job_cursors(term, &added, now).await {
                            tracing::warn!(%error, jobs = added.len(), "could not record the cursors of new jobs");
                        }
                    }
                    // Operator pauses apply to the reloaded jobs too.
                    controls_pending = true;
                    tracing::info!(jobs = states.len(), hash = jobs.hash(), "job file reloaded");
                }
                Wake::ControlsChanged => controls_pending = true,
                Wake::RunFinished(key) => {
                    if self.run_finished(key) {
                        controls_pending = true;
                    }
                }
                Wake::ClockChanged => {
                    let check = *self.clock.borrow_and_update();
                    if let Some(why) = check.refusal() {
                        tracing::error!(skew_ms = ?check.skew_ms, "{why}; stepping down");
                        metrics::counter!(metric::CLOCK_STEP_DOWNS).increment(1);
                        leader.step_down.cancel();
                        return;
                    }
                }
                // Bookkeeping runs beside the loop, one at a time, so a slow or unreachable
                // database never holds up a wake-up (a slot, a step-down).
                Wake::Heartbeat => {
                    if heartbeat.as_ref().is_none_or(|task| task.is_finished()) {
                        let (store, term, at) = (self.store.clone(), term.clone(), Utc::now());
                        heartbeat = Some(tokio::spawn(async move {
                            if let Err(error) = store.term_alive(&term, at).await {
                                tracing::debug!(%error, "could not record the term heartbeat");
                            }
                        }));
                    }
                    next_heartbeat = tokio::time::Instant::now() + HEARTBEAT;
                }
                Wake::MembersChanged => {
                    let now = tokio::time::Instant::now();
                    if departures.observe(&self.members.borrow_and_update(), now) {
                        // The departed node's runs may be reaped as soon as its wait is out.
                        next_reap = next_reap.min(now + lost_after);
                    }
                }
                Wake::Reap => {
                    if reaping.as_ref().is_none_or(|task| task.is_finished()) {
                        reaping = Some(tokio::spawn(self.reap(term, &mut departures)));
                    }
                    next_reap = tokio::time::Instant::now() + lost_after;
                }
                Wake::Due => {
                    if controls_pending {
                        // The controls are read again at the top of the loop first.
                        continue;
                    }
                    if !leader.lease.is_valid() {
                        // The election notices too and publishes Follower; fire nothing meanwhile.
                        continue;
                    }
                    if let Some(step) = steps.step() {
                        // Firing now would catch up (or skip) slots by a clock that just jumped.
                        tracing::error!(step_ms = step.num_milliseconds(), "the wall clock stepped; stepping down");
                        metrics::counter!(metric::CLOCK_STEP_DOWNS).increment(1);
                        leader.step_down.cancel();
                        return;
                    }
                    let now = Utc::now();
                    let lead = self.leads.ahead();
                    let ready = due.pop_ready(now, lead, |index| self.decided_at_slot(&states[index].job));
                    for index in ready {
                        // Claim ahead so the claim has committed when the slot comes; a job whose
                        // policy depends on its run in flight is decided at its slot.
                        let until = if self.decided_at_slot(&states[index].job) { now } else { now + lead };
                        self.fire_due(&mut states[index], leader, now, until);
                        due.push(&states[index], index);
                    }
                }
            }
        }
    }

    /// Raise the fence to this term before its first claim. False when this term must not fire.
    async fn begin_term(&mut self, leader: &LeaderTerm, shutdown: &CancellationToken) -> bool {
        let term = &leader.term;
        loop {
            let (store, clock, node) = (&self.store, &mut self.clock, &self.node_id);
            let began = tokio::select! {
                began = store.begin_term(term, node) => Some(began),
                // A database that hangs is not waited out: the probe's verdict ends the term.
                _ = clock.wait_for(|check| check.refusal().is_some()) => None,
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
                            "the ledger's fence comes from another etcd cluster with a higher term: \
                             etcd was probably rebuilt; refusing to fire until an operator resets the fence"
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
                    tokio::select! {
                        () = shutdown.cancelled() => return false,
                        () = leader.step_down.cancelled() => return false,
                        () = tokio::time::sleep(DATABASE_RETRY) => {}
                    }
                    if self.leadership.borrow().term() != Some(term) || !leader.lease.is_valid() {
                        return false;
                    }
                    if self.refused_by_clock(leader) {
                        return false;
                    }
                }
            }
        }
    }

    async fn load_states(&mut self, leader: &LeaderTerm, shutdown: &CancellationToken) -> Option<Vec<JobState>> {
        loop {
            let jobs = self.jobs.borrow_and_update().clone();
            let names: Vec<&str> = jobs.jobs().iter().map(|job| job.name.as_ref()).collect();
            let now = Utc::now();
            let (store, clock) = (&self.store, &mut self.clock);
            let cursors = tokio::select! {
                cursors = store.job_cursors(&leader.term, &names, now) => Some(cursors),
                _ = clock.wait_for(|check| check.refusal().is_some()) => None,
            };
            let Some(cursors) = cursors else {
                self.refused_by_clock(leader);
                return None;
            };
            match cursors {
                Ok(cursors) => {
                    return Some(
                        jobs.jobs()
                            .iter()
                            .map(|job| JobState {
                                cursor: resume_from(cursors.get(job.name.as_ref()), now),
                                paused: job.paused,
                                job: Arc::new(job.clone()),
                            })
                            .collect(),
                    );
                }
                Err(ClaimError::Fenced { fence, .. }) => {
                    tracing::warn!(term = leader.term.revision(), fence, "a newer term holds the fence; stepping down");
                    leader.step_down.cancel();
                    return None;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not read the ledger; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = leader.step_down.cancelled() => return None,
                        () = tokio::time::sleep(DATABASE_RETRY) => {}
                    }
                    if self.leadership.borrow().term() != Some(&leader.term) || self.refused_by_clock(leader) {
                        return None;
                    }
                }
            }
        }
    }

    /// A term that is still starting (raising the fence, reading cursors) while the database
    /// stopped answering, or the clock drifted, steps down rather than wait for it.
    fn refused_by_clock(&self, leader: &LeaderTerm) -> bool {
        let Some(why) = self.clock.borrow().refusal() else { return false };
        tracing::error!(term = leader.term.revision(), "{why}; stepping down");
        leader.step_down.cancel();
        true
    }

    /// Mark the runs of vanished leaders `lost` once they have been gone for `lost_after` (the
    /// returned future owns what it needs).
    fn reap(&self, term: &Term, departures: &mut Departures) -> impl std::future::Future<Output = ()> + Send + 'static {
        let members = self.members.borrow().clone();
        let now = tokio::time::Instant::now();
        departures.observe(&members, now);
        let mut live = departures.vouching(&members, now, self.supervision.lost_after());
        if !members.iter().any(|member| member.node == self.node_id) {
            // Not registered ourselves: the registry is stale or failing; `reap_lost` reaps nothing.
            live.clear();
        }
        let (store, term, node) = (self.store.clone(), term.clone(), self.node_id.clone());
        async move { reap_lost(store, term, node, live).await }
    }
}

async fn reap_lost(store: Store, term: Term, node: String, live: Vec<LiveNode>) {
    {
        // A registry that does not list us is stale or failing; reaping by it could mark a live
        // run lost.
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
}

impl Scheduler {
    /// Decide what happens to every slot of one job due by `until` (at most `now` plus the claim
    /// lead), per its `catch_up` policy and `starting_deadline`, and advance its cursor past them.
    fn fire_due(&mut self, state: &mut JobState, leader: &LeaderTerm, now: DateTime<Utc>, until: DateTime<Utc>) {
        let job = state.job.clone();
        if state.paused {
            return;
        }
        let plan = plan_due_slots(&job, state.cursor, now, until);
        let Some(last) = plan.last_slot else { return };
        state.cursor = last;
        let ledger = self.ledger(leader, now);
        if plan.missed_total > 0 {
            // Job names are a bounded label: the job file lists them all.
            metrics::counter!(metric::MISSED_SLOTS, "job" => job.name.to_string()).increment(plan.missed_total as u64);
            tracing::warn!(
                job = %job.name, missed = plan.missed_total, recorded = plan.missed.len(),
                "slots missed per the job's catch-up policy"
            );
            let ledger = ledger.clone();
            let job = job.clone();
            let missed = plan.missed;
            self.runs.spawn(async move { ledger.record_missed(&job, &missed, Trigger::Schedule).await });
        }
        self.start_runs(job, plan.run, Trigger::Schedule, ledger);
    }

    /// A `forbid` or `replace` job with a run going: whether its next slot runs, is skipped or
    /// replaces that run is decided at the slot, never ahead of it.
    fn decided_at_slot(&self, job: &Job) -> bool {
        job.concurrency != Concurrency::Allow && self.runs_per_job.get(job.name.as_ref()).is_some_and(|n| *n > 0)
    }

    /// Forget a run that ended. True when it was a manual trigger's: if it was stopped before its
    /// claim or its start, the trigger is still pending, and the caller reads the triggers again.
    fn run_finished(&mut self, key: u64) -> bool {
        let Some(run) = self.own_runs.remove(&key) else { return false };
        if let Some(count) = self.runs_per_job.get_mut(&run.job) {
            *count -= 1;
            if *count == 0 {
                self.runs_per_job.remove(&run.job);
            }
        }
        match run.trigger.request() {
            Some(request) => self.started_triggers.remove(&request),
            None => false,
        }
    }

    /// `planned_at`: when the scheduler decided to fire (the claim lead is measured from it).
    fn ledger(&self, leader: &LeaderTerm, planned_at: DateTime<Utc>) -> Ledger {
        Ledger {
            leads: self.leads.clone(),
            planned_at: Some(planned_at),
            store: self.store.clone(),
            term: leader.term.clone(),
            lease: leader.lease.clone(),
            step_down: leader.step_down.clone(),
            claims: self.claims.clone().expect("a claim batcher while leading"),
            starts: self.starts.clone().expect("a start batcher while leading"),
            finishes: self.finishes.clone().expect("an outcome batcher while leading"),
            node: self.node_id.clone(),
            config_hash: self.jobs.borrow().hash().to_owned(),
            http: self.http.clone(),
            supervision: self.supervision.clone(),
            live_outputs: self.live_outputs.clone(),
        }
    }

    /// Claim and run `slots` of `job` in order, in one task tracked as one of this term's runs.
    fn start_runs(&mut self, job: Arc<Job>, slots: Vec<DateTime<Utc>>, trigger: Trigger, ledger: Ledger) {
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
        self.own_runs
            .insert(key, OwnRun { job: job.name.to_string(), trigger, stop: stop.clone(), done: done.clone() });
        *self.runs_per_job.entry(job.name.to_string()).or_default() += 1;
        let finished = self.finished_tx.clone();
        let mut ledger = ledger;
        self.runs.spawn(async move {
            for wait in wait_for {
                let _ = tokio::time::timeout(executor::KILL_GRACE * 2, wait.cancelled()).await;
            }
            // `catch_up: all` runs the slots in order, one after the other.
            for slot in slots {
                if stop.token.is_cancelled() {
                    break;
                }
                ledger.fire(&job, slot, trigger, &stop).await;
            }
            done.cancel();
            let _ = finished.send(key);
        });
    }

    /// Apply operator pauses and resumes, and start pending manual triggers. False when the
    /// ledger could not be read: the caller fires nothing until a later call succeeds, and
    /// retries after `DATABASE_RETRY`.
    async fn apply_controls(&mut self, states: &mut [JobState], leader: &LeaderTerm) -> bool {
        let now = Utc::now();
        let controls = match self.store.job_controls().await {
            Ok(controls) => controls,
            Err(error) => {
                tracing::warn!(%error, "could not read the operator controls; firing nothing until they are read");
                return false;
            }
        };
        for state in states.iter_mut() {
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
                start_after_resume(state, control);
            }
        }
        if !leader.lease.is_valid() {
            // No trigger could be claimed now: retried shortly, unless the term ends first.
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
            if !self.started_triggers.insert(trigger.id) {
                continue;
            }
            let job = states.iter().find(|state| state.job.name.as_ref() == trigger.job).map(|s| s.job.clone());
            match job {
                Some(job) => {
                    tracing::info!(job = %job.name, trigger = trigger.id, by = %trigger.requested_by, "manual trigger");
                    let ledger = self.ledger(leader, now);
                    let manual = Trigger::Manual { request: trigger.id };
                    self.start_runs(job, vec![trigger.requested_at], manual, ledger);
                }
                None => {
                    tracing::warn!(job = %trigger.job, trigger = trigger.id, "trigger for a job not in the job file; dropped");
                    if let Err(error) = self.store.trigger_dropped(trigger.id).await {
                        tracing::warn!(%error, "could not mark the trigger handled");
                    }
                }
            }
        }
        true
    }
}

/// A job an operator resumed starts again at its resume, whichever leader saw it: the slots of
/// its pause are not owed, neither run nor recorded `missed`. The instant is in the ledger, so a
/// term that loads the job's cursor after a resume (the leader that saw it died before the job
/// fired again) does not replay the pause from the job's last recorded slot.
fn start_after_resume(state: &mut JobState, control: &JobControl) {
    if let Some(resumed_at) = control.resumed_at.filter(|_| !control.paused) {
        state.cursor = state.cursor.max(resumed_at);
    }
}

/// The replicas this leader saw leave the registry, and when: a run of theirs is reaped `lost` only
/// once they have been gone for `Supervision::lost_after` (a replica that freezes now has a
/// supervisor that kills its runs only after the silence limit). A replica gone before the term
/// began is not listed: the term's first reap comes `lost_after` after its start.
#[derive(Debug, Default)]
struct Departures {
    /// Node id and start time of every replica registered at the last look.
    present: HashMap<String, DateTime<Utc>>,
    /// Node id, start time, and when it was first seen gone.
    gone: HashMap<String, (DateTime<Utc>, tokio::time::Instant)>,
}

impl Departures {
    /// Take note of the registry as of `now`; true when a replica has left it since the last look.
    fn observe(&mut self, members: &[Member], now: tokio::time::Instant) -> bool {
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
    fn vouching(&mut self, members: &[Member], now: tokio::time::Instant, wait: Duration) -> Vec<LiveNode> {
        self.gone.retain(|_, (_, gone_at)| now.duration_since(*gone_at) < wait);
        let registered = members.iter().map(|member| LiveNode { node: member.node.clone(), since: member.started_at });
        let departing = self.gone.iter().map(|(node, (since, _))| LiveNode { node: node.clone(), since: *since });
        registered.chain(departing).collect()
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

/// Pure: the slots of `job` in `(cursor, until]` and what its policies make of them; slots after
/// `now` (claimed ahead) are on time.
fn plan_due_slots(job: &Job, cursor: DateTime<Utc>, now: DateTime<Utc>, until: DateTime<Utc>) -> DuePlan {
    let mut plan = DuePlan::default();
    let on_time_after = now - chrono::Duration::from_std(ON_TIME_TOLERANCE).unwrap_or_default();
    let deadline = now - chrono::Duration::from_std(job.starting_deadline).unwrap_or_default();
    let mut late = Vec::new();
    let mut on_time = Vec::new();
    let mut too_old = std::collections::VecDeque::new();
    let mut slot = cursor;
    while let Some(next) = job.schedule.next_after(slot) {
        if next > until {
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

/// The next slot of every job, in two queues: slots claimed ahead (woken `lead` before them) and
/// slots decided only when they come (see `Scheduler::decided_at_slot`). A job is in at most one.
#[derive(Default)]
struct DueSlots {
    ahead: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
    at_slot: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
}

impl DueSlots {
    fn reset(&mut self, states: &[JobState]) {
        self.ahead.clear();
        self.at_slot.clear();
        for (index, state) in states.iter().enumerate() {
            self.push(state, index);
        }
    }

    fn push(&mut self, state: &JobState, index: usize) {
        if let Some(next) = next_slot(state) {
            self.ahead.push(Reverse((next, index)));
        }
    }

    fn wake_at(&self, lead: Duration) -> Option<DateTime<Utc>> {
        let lead = chrono::Duration::from_std(lead).unwrap_or_default();
        let ahead = self.ahead.peek().map(|Reverse((slot, _))| *slot - lead);
        let at_slot = self.at_slot.peek().map(|Reverse((slot, _))| *slot);
        ahead.into_iter().chain(at_slot).min()
    }

    /// The jobs to fire now: slots due by `now`, and slots due within `lead` unless
    /// `decided_at_slot`, which wait in the second queue instead.
    fn pop_ready(&mut self, now: DateTime<Utc>, lead: Duration, decided_at_slot: impl Fn(usize) -> bool) -> Vec<usize> {
        let horizon = now + chrono::Duration::from_std(lead).unwrap_or_default();
        let mut ready = Vec::new();
        while let Some(Reverse((slot, index))) = self.at_slot.peek().copied() {
            if slot > now {
                break;
            }
            self.at_slot.pop();
            ready.push(index);
        }
        while let Some(Reverse((slot, index))) = self.ahead.peek().copied() {
            if slot > horizon {
                break;
            }
            self.ahead.pop();
            if slot > now && decided_at_slot(index) {
                self.at_slot.push(Reverse((slot, index)));
            } else {
                ready.push(index);
            }
        }
        ready
    }
}

/// How far ahead of its slot a run is claimed and started, so that nothing is left to the
/// database when the slot comes: the run's task wakes at its slot and executes at once.
///
/// A run claimed ahead records its fenced start (`started_at` = its slot) `starts` ahead of the
/// slot, once its claim has committed; the claim is sent `claims` before that. Each lead is
/// learned from this replica's own statements: one and a half times the slowest recent one
/// (sent to committed; it halves every minute), plus 5 ms, within its bounds.
///
/// The price of a lead is a window. A leader killed between a claim and its start leaves the
/// claim unstarted, for the next leader to run; killed or stopped past its lease between the
/// start and the slot, it leaves a run that was started and never executed: recorded `killed`
/// if the leader lives, reaped `lost` if it died. Keeping the start's lead short (tens of
/// milliseconds with a healthy database) keeps that window short.
#[derive(Clone)]
struct Leads {
    claims: Lead,
    starts: Lead,
}

impl Default for Leads {
    fn default() -> Leads {
        Leads {
            claims: Lead::new(Duration::from_millis(250), Duration::from_millis(20)),
            starts: Lead::new(Duration::from_millis(50), Duration::from_millis(5)),
        }
    }
}

impl Leads {
    /// How far ahead of its slot a run is claimed.
    fn ahead(&self) -> Duration {
        if let Some(lead) = crate::testing::claim_lead() {
            return lead;
        }
        self.claims.lead() + self.start()
    }

    /// How far ahead of its slot a claimed run's start is recorded.
    fn start(&self) -> Duration {
        if let Some(lead) = crate::testing::start_lead() {
            return lead;
        }
        self.starts.lead()
    }
}

/// One learned lead (see `Leads`).
#[derive(Clone)]
struct Lead {
    /// The slowest recent statement and when it was observed; `None` before the first.
    slowest: Arc<Mutex<Option<(Duration, std::time::Instant)>>>,
    /// The lead before the first observation, and the least one.
    first: Duration,
    least: Duration,
}

impl Lead {
    const HALF_LIFE: Duration = Duration::from_secs(60);

    fn new(first: Duration, least: Duration) -> Lead {
        Lead { slowest: Arc::default(), first, least }
    }

    fn lead(&self) -> Duration {
        match self.slowest_now() {
            None => self.first,
            Some(slowest) => (slowest.mul_f64(1.5) + Duration::from_millis(5)).clamp(self.least, MAX_LEAD),
        }
    }

    /// A statement sent ahead of its slot committed `took` after it was sent (a claim: after
    /// the scheduler decided to fire it).
    fn observe(&self, took: Duration) {
        let slowest = self.slowest_now().unwrap_or_default().max(took);
        *self.slowest.lock().unwrap_or_else(|p| p.into_inner()) = Some((slowest, std::time::Instant::now()));
    }

    fn slowest_now(&self) -> Option<Duration> {
        let (took, at) = (*self.slowest.lock().unwrap_or_else(|p| p.into_inner()))?;
        Some(took.mul_f64(0.5f64.powf(at.elapsed().as_secs_f64() / Self::HALF_LIFE.as_secs_f64())))
    }
}

fn next_slot(state: &JobState) -> Option<DateTime<Utc>> {
    if state.paused {
        return None;
    }
    state.job.schedule.next_after(state.cursor)
}

/// Where a new term resumes a job: after its recorded cursor, or, when an older term claimed
/// slots and never started them, just before the oldest of those, so they are decided again (run
/// or recorded missed, per the job's policy); the rows of slots in between answer for themselves.
fn resume_from(cursor: Option<&JobCursor>, now: DateTime<Utc>) -> DateTime<Utc> {
    match cursor {
        None => now,
        Some(JobCursor { slot, unstarted: None }) => *slot,
        Some(JobCursor { slot, unstarted: Some(unstarted) }) => {
            (*slot).min(*unstarted - chrono::Duration::milliseconds(1))
        }
    }
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

/// Sleep until the wall clock reaches `slot` (re-checked after each sleep, so never early), or
/// until `stop`.
async fn wait_until(slot: DateTime<Utc>, stop: &CancellationToken) {
    while let Ok(wait) = (slot - Utc::now()).to_std() {
        if wait.is_zero() {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
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
    leads: Leads,
    /// When the scheduler decided to fire these slots; taken by the first claim, the one whose
    /// time from decision to commit the claim lead must cover.
    planned_at: Option<DateTime<Utc>>,
    store: Store,
    term: Term,
    lease: LeaseDeadline,
    /// Cancelled when the ledger shows a newer term: this one is over, whatever etcd says.
    step_down: CancellationToken,
    /// The term's claim batcher: claims that fall due together go to the database together.
    claims: mpsc::UnboundedSender<ClaimRequest>,
    /// Fenced starts and outcomes, batched the same way.
    starts: mpsc::UnboundedSender<StartRequest>,
    finishes: mpsc::UnboundedSender<FinishRequest>,
    node: String,
    config_hash: String,
    http: reqwest::Client,
    supervision: Supervision,
    live_outputs: LiveOutputs,
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

    async fn record_missed(&self, job: &Job, slots: &[DateTime<Utc>], trigger: Trigger) {
        let reason = "not run: past the job's catch-up policy or starting deadline";
        self.record(job, slots, RunStatus::Missed, trigger, reason).await;
    }

    /// Record `slots` as not run: new rows, or this term's claims that never started.
    async fn record(&self, job: &Job, slots: &[DateTime<Utc>], status: RunStatus, trigger: Trigger, reason: &str) {
        loop {
            let unrun = UnrunSlots {
                job: job.name.as_ref(),
                slots,
                status,
                trigger,
                term: &self.term,
                node: &self.node,
                config_hash: &self.config_hash,
                error: reason,
            };
            match self.store.record_slots(&unrun).await {
                Ok(_) => return,
                Err(ClaimError::Database(error)) if self.lease.is_valid() => {
                    tracing::warn!(%error, job = %job.name, "could not record slots not run; retrying");
                    tokio::time::sleep(DATABASE_RETRY).await;
                }
                Err(error) => {
                    tracing::warn!(%error, job = %job.name, "slots not run were not recorded in this term");
                    return;
                }
            }
        }
    }

    /// Claim `slot`, and only once the claim has committed, execute it with its retries.
    async fn fire(&mut self, job: &Job, slot: DateTime<Utc>, trigger: Trigger, stop: &RunStop) {
        // A manual claim marks its trigger handled in the same statement; a refused one leaves
        // it pending for the next leader.
        let claimed = self.claim(job, slot, trigger, stop).await;
        if let Some(planned_at) = self.planned_at.take().filter(|planned_at| slot > *planned_at) {
            if claimed.is_some() {
                // Sent ahead of its slot: however late it committed, the lead learns from it.
                self.leads.claims.observe((Utc::now() - planned_at).to_std().unwrap_or_default());
            }
        }
        let Some(claimed) = claimed else { return };
        let run_id = claimed.run_id;
        if claimed.status == RunStatus::Skipped {
            metrics::counter!(metric::RUNS, "job" => job.name.to_string(), "status" => "skipped").increment(1);
            tracing::info!(job = %job.name, %slot, "skipped: the previous run is still going");
            return;
        }
        // Claimed ahead: the start is recorded a start's lead before the slot (for the slot, if
        // the lease lasts until then), so that at the slot nothing is left but to execute.
        let start_lead = chrono::Duration::from_std(self.leads.start()).unwrap_or_default();
        wait_until(slot - start_lead, &stop.token).await;
        let ahead = (slot - Utc::now()).to_std().unwrap_or_default();
        if !ahead.is_zero() && !self.lease.is_valid_for(ahead) {
            wait_until(slot, &stop.token).await;
        }
        let sent = std::time::Instant::now();
        let Some(started) = self.start(job, slot, trigger, run_id, stop).await else { return };
        if started > Utc::now() {
            self.leads.starts.observe(sent.elapsed());
        }
        // Never executed before its slot, nor by a term that ended meanwhile.
        wait_until(slot, &stop.token).await;
        if let Some(reason) = self.stopped_before_start(stop) {
            let outcome = RunOutcome {
                status: RunStatus::Killed,
                exit_code: None,
                http_status: None,
                error: Some(format!("{reason} before the run started")),
                output: String::new(),
                finished_at: Utc::now(),
            };
            self.finish(job, run_id, &outcome).await;
            return;
        }
        let mut attempt = 1;
        loop {
            let started = Utc::now();
            if attempt == 1 {
                metrics::histogram!(metric::FIRE_LATENESS)
                    .record((started - slot).to_std().unwrap_or_default().as_secs_f64());
            }
            let context = RunContext {
                run_id,
                job: job.name.to_string(),
                slot,
                term: self.term.revision(),
                node: self.node.clone(),
                attempt,
            };
            let output = OutputTail::default();
            let live = self.live_outputs.watch(run_id, output.clone());
            let mut outcome =
                executor::execute(job, &context, &output, &self.http, &self.supervision, &stop.token).await;
            drop(live);
            if let Some(reason) = stop.reason() {
                outcome.error = Some(reason.to_owned());
            }
            metrics::histogram!(metric::RUN_DURATION)
                .record((outcome.finished_at - started).to_std().unwrap_or_default().as_secs_f64());
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
                    metrics::counter!(metric::CLAIMS_REJECTED, "reason" => "fenced").increment(1);
                    if crate::testing::ignore_refusals() {
                        return Some(Claimed { run_id: 0, status: RunStatus::Running });
                    }
                    tracing::warn!(job = %job.name, %slot, term, fence, "claim refused: a newer term holds the fence; stepping down");
                    self.step_down.cancel();
                    return None;
                }
                Err(ClaimError::AlreadyClaimed { term, node }) => {
                    metrics::counter!(metric::CLAIMS_REJECTED, "reason" => "already_claimed").increment(1);
                    tracing::info!(job = %job.name, %slot, term, %node, "claim refused: slot already claimed");
                    return crate::testing::ignore_refusals()
                        .then_some(Claimed { run_id: 0, status: RunStatus::Running });
                }
                Err(ClaimError::Database(error)) => {
                    metrics::counter!(metric::CLAIM_ERRORS).increment(1);
                    tracing::warn!(job = %job.name, %slot, %error, "claim failed; retrying (the run is delayed, not doubled)");
                    tokio::time::sleep(DATABASE_RETRY).await;
                    if Utc::now() - slot > chrono::Duration::from_std(job.starting_deadline).unwrap_or_default() {
                        tracing::warn!(job = %job.name, %slot, "the slot passed its starting deadline while the database was down");
                        self.record_missed(job, &[slot], trigger).await;
                        return None;
                    }
                }
            }
        }
    }

    /// Start a claimed run: the fenced `claimed -> started` transition, recorded before anything
    /// executes. `None`: this term may not start it, and nothing runs. A claim left unstarted
    /// because the lease ended stays as it is, for the next term to take over; one stopped by
    /// this term (`replace`, shutdown grace) is recorded `killed`; one whose start could not be
    /// recorded in time is recorded `missed`.
    async fn start(
        &self,
        job: &Job,
        slot: DateTime<Utc>,
        trigger: Trigger,
        run_id: i64,
        stop: &RunStop,
    ) -> Option<DateTime<Utc>> {
        // The same start time on every retry: a retry after a lost acknowledgement finds it.
        // Recorded ahead, it is the slot: the run executes at its slot, never before.
        let started = Utc::now().max(slot);
        loop {
            // Stopped because the term ended: the claim was never started, so it is the next
            // term's to decide, not a run to record.
            if stop.reason() == Some(LEADERSHIP_LOST) || !self.lease.is_valid() {
                tracing::warn!(job = %job.name, %slot, "leadership lost before the run started; left to the next leader");
                return None;
            }
            if let Some(reason) = stop.reason().filter(|_| stop.token.is_cancelled()) {
                let reason = format!("{reason} before the run started");
                self.record(job, &[slot], RunStatus::Killed, trigger, &reason).await;
                return None;
            }
            if !self.lease.is_valid() {
                // Not an orderly hand-over either: a resignation expires the lease first. The
                // claim was never started, so the next term takes it over.
                tracing::warn!(job = %job.name, %slot, "leadership lost before the run started; left to the next leader");
                return None;
            }
            match self.submit_start(run_id, started).await {
                Ok(true) => break,
                Ok(false) | Err(ClaimError::Fenced { .. }) if crate::testing::ignore_refusals() => break,
                Ok(false) => {
                    tracing::warn!(job = %job.name, %slot, run_id, "the claim is no longer this term's to start");
                    return None;
                }
                Err(ClaimError::Fenced { term, fence }) => {
                    metrics::counter!(metric::CLAIMS_REJECTED, "reason" => "fenced").increment(1);
                    tracing::warn!(job = %job.name, %slot, term, fence, "start refused: a newer term holds the fence; stepping down");
                    self.step_down.cancel();
                    return None;
                }
                Err(error) => {
                    tracing::warn!(job = %job.name, %slot, %error, "could not record the start; retrying (the run is delayed, not doubled)");
                    tokio::time::sleep(DATABASE_RETRY).await;
                }
            }
        }
        if Utc::now() - slot > chrono::Duration::from_std(job.starting_deadline).unwrap_or_default() {
            let outcome = RunOutcome {
                status: RunStatus::Missed,
                exit_code: None,
                http_status: None,
                error: Some("not run: its start was recorded only after the starting deadline".to_owned()),
                output: String::new(),
                finished_at: Utc::now(),
            };
            self.finish(job, run_id, &outcome).await;
            return None;
        }
        Some(started)
    }

    /// Why a run whose start is recorded may not execute after all: it was stopped (replaced,
    /// shut down, its term ended) or the lease ran out while it waited for its slot. It was
    /// started under this term, so no other term takes it over: it is recorded `killed`.
    fn stopped_before_start(&self, stop: &RunStop) -> Option<&'static str> {
        if stop.token.is_cancelled() {
            return Some(stop.reason().unwrap_or(LEADERSHIP_LOST));
        }
        (!self.lease.is_valid()).then_some(LEADERSHIP_LOST)
    }

    /// The fenced start through the term's batcher (or directly, if it is gone).
    async fn submit_start(&self, run_id: i64, started: DateTime<Utc>) -> Result<bool, ClaimError> {
        let (reply, answer) = oneshot::channel();
        if self.starts.send(StartRequest { run_id, started, reply }).is_ok() {
            if let Ok(result) = answer.await {
                return result;
            }
        }
        Ok(self.store.start_runs(&self.term, &[(run_id, started)]).await?[0])
    }

    /// Record the outcome; keep trying while the database is down, since a row left `running`
    /// blocks `forbid` jobs until a later leader reaps it.
    async fn finish(&self, job: &Job, run_id: i64, outcome: &RunOutcome) {
        metrics::counter!(metric::RUNS, "job" => job.name.to_string(), "status" => outcome.status.as_str())
            .increment(1);
        tracing::info!(
            job = %job.name, run_id, status = outcome.status.as_str(), exit_code = ?outcome.exit_code,
            error = ?outcome.error, "run finished"
        );
        let (reply, recorded) = oneshot::channel();
        let request = FinishRequest { run_id, outcome: outcome.clone(), reply };
        if self.finishes.send(request).is_ok() && recorded.await.unwrap_or(false) {
            return;
        }
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

/// The most claims (start times, outcomes) one statement carries.
const MAX_BATCH: usize = 2_000;
/// How long start times and outcomes wait for others to share their statement.
const RECORD_LINGER: Duration = Duration::from_millis(25);

/// Claim what is waiting in one statement, then what came meanwhile, and so on: slots that fall
/// due together cost one round trip and one commit instead of one each. Each claim keeps its own
/// answer (claimed, skipped, fenced, taken), exactly as if it had been sent alone.
async fn batch_claims(store: Store, term: Term, node: String, requests: mpsc::UnboundedReceiver<ClaimRequest>) {
    batched(requests, Duration::ZERO, |batch: Vec<ClaimRequest>| async {
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
    })
    .await;
}

/// Hand `send` what is waiting (up to `MAX_BATCH`), wait for it, and again, until every sender
/// is gone. With a `linger`, wait that long after the first request for others to join: for
/// writes that nothing waits on, so a burst of runs starting together is one statement after the
/// burst rather than many during it.
async fn batched<T, F, Fut>(mut requests: mpsc::UnboundedReceiver<T>, linger: Duration, mut send: F)
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(first) = requests.recv().await {
        if !linger.is_zero() {
            tokio::time::sleep(linger).await;
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        send(batch).await;
    }
}

/// A fenced start waiting for the batcher; answered whether the run may start.
struct StartRequest {
    run_id: i64,
    started: DateTime<Utc>,
    reply: oneshot::Sender<Result<bool, ClaimError>>,
}

/// Start runs like `batch_claims` claims: what is waiting, in one fenced statement, at once (a
/// run waits for its answer before it executes, so nothing lingers).
async fn batch_starts(store: Store, term: Term, requests: mpsc::UnboundedReceiver<StartRequest>) {
    batched(requests, Duration::ZERO, |batch: Vec<StartRequest>| async {
        let runs: Vec<(i64, DateTime<Utc>)> = batch.iter().map(|r| (r.run_id, r.started)).collect();
        let answers = store.start_runs(&term, &runs).await;
        for (index, request) in batch.into_iter().enumerate() {
            let answer = match &answers {
                Ok(started) => Ok(started[index]),
                Err(ClaimError::Fenced { term, fence }) => Err(ClaimError::Fenced { term: *term, fence: *fence }),
                Err(error) => Err(ClaimError::Database(sqlx::Error::Protocol(error.to_string()))),
            };
            let _ = request.reply.send(answer);
        }
    })
    .await;
}

/// An outcome waiting for the batcher; answered whether it was recorded.
struct FinishRequest {
    run_id: i64,
    outcome: RunOutcome,
    reply: oneshot::Sender<bool>,
}

/// Record outcomes like `batch_claims` claims; one that fails is retried by its run alone.
async fn batch_finishes(store: Store, requests: mpsc::UnboundedReceiver<FinishRequest>) {
    batched(requests, RECORD_LINGER, |batch: Vec<FinishRequest>| async {
        let runs: Vec<(i64, RunOutcome)> = batch.iter().map(|r| (r.run_id, r.outcome.clone())).collect();
        let recorded = match store.finish_runs(&runs).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, runs = runs.len(), "could not record outcomes; each run retries");
                false
            }
        };
        for request in batch {
            let _ = request.reply.send(recorded);
        }
    })
    .await;
}

/// The output tails of the runs going, by run id, with what was last written of each.
#[derive(Clone, Default)]
struct LiveOutputs {
    tails: Arc<Mutex<HashMap<i64, (OutputTail, String)>>>,
}

impl LiveOutputs {
    /// Show `tail` live until the returned guard is dropped (the attempt ended; its outcome
    /// carries the final output).
    fn watch(&self, run_id: i64, tail: OutputTail) -> LiveOutput {
        self.tails.lock().unwrap_or_else(|p| p.into_inner()).insert(run_id, (tail, String::new()));
        LiveOutput { outputs: self.clone(), run_id }
    }

    /// The tails that changed since they were last taken.
    fn changed(&self) -> Vec<(i64, String)> {
        let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = Vec::new();
        for (run_id, (tail, written)) in tails.iter_mut() {
            let text = tail.text();
            if text != *written {
                changed.push((*run_id, text.clone()));
                *written = text;
            }
        }
        changed
    }
}

/// A run's place among the live outputs; leaves it when dropped.
struct LiveOutput {
    outputs: LiveOutputs,
    run_id: i64,
}

impl Drop for LiveOutput {
    fn drop(&mut self) {
        self.outputs.tails.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.run_id);
    }
}

/// Every `OUTPUT_FLUSH`, copy the output tails that changed to the ledger in one statement, so the
/// run page of any replica shows them live at the cost of one write a second, however many runs
/// (up to `MAX_BATCH`) are going. The final outcome overwrites it (a late write does not touch a finished run).
async fn flush_live_outputs(store: Store, outputs: LiveOutputs, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(OUTPUT_FLUSH) => {}
        }
        // A statement carries at most `MAX_BATCH` tails (of up to 64 KiB each).
        for changed in outputs.changed().chunks(MAX_BATCH) {
            if let Err(error) = store.update_outputs(changed).await {
                tracing::debug!(%error, runs = changed.len(), "could not record live output");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(yaml: &str) -> Job {
        crate::config::parse(&format!("jobs:\n  - name: j\n    shell: \"true\"\n{yaml}"), "jobs.yaml").unwrap().jobs()
            [0]
        .clone()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_slot_within_the_lead_is_claimed_on_time_and_catch_up_is_judged_by_now() {
        let job = job("    schedule: \"* * * * * *\"\n    catch_up: none\n");
        let now = at("2026-01-01T00:00:09.900Z");
        // Down since 00:00:00: 1-8 are late (catch_up none: missed), 9 is on time, 10 is ahead.
        let plan = plan_due_slots(&job, at("2026-01-01T00:00:00Z"), now, now + chrono::Duration::milliseconds(200));
        assert_eq!(plan.run, [at("2026-01-01T00:00:09Z"), at("2026-01-01T00:00:10Z")]);
        assert_eq!(plan.missed_total, 8);
        assert_eq!(plan.last_slot, Some(at("2026-01-01T00:00:10Z")));
        // Without a lead, the next slot is not due.
        let plan = plan_due_slots(&job, at("2026-01-01T00:00:09Z"), now, now);
        assert!(plan.run.is_empty() && plan.last_slot.is_none());
    }

    #[test]
    fn slots_decided_at_the_slot_wait_in_their_own_queue() {
        let states: Vec<JobState> = (0..2)
            .map(|_| JobState {
                job: Arc::new(job("    schedule: \"* * * * * *\"\n")),
                cursor: at("2026-01-01T00:00:00Z"),
                paused: false,
            })
            .collect();
        let mut due = DueSlots::default();
        due.reset(&states);
        let lead = Duration::from_millis(100);
        let first = at("2026-01-01T00:00:01Z");
        assert_eq!(due.wake_at(lead), Some(first - chrono::Duration::milliseconds(100)));
        // 50 ms before the slot: job 0 is claimed ahead, job 1 (a run going) waits for the slot.
        let ready = due.pop_ready(first - chrono::Duration::milliseconds(50), lead, |index| index == 1);
        assert_eq!(ready, [0]);
        assert_eq!(due.wake_at(lead), Some(first));
        assert!(due.pop_ready(first - chrono::Duration::milliseconds(1), lead, |_| true).is_empty());
        assert_eq!(due.pop_ready(first, lead, |_| true), [1]);
        assert_eq!(due.wake_at(lead), None);
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
        let start = tokio::time::Instant::now();
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

    #[test]
    fn each_lead_follows_its_slowest_recent_statement_within_bounds() {
        let leads = Leads::default();
        let lead = &leads.claims;
        assert_eq!(lead.lead(), Duration::from_millis(250));
        lead.observe(Duration::from_millis(2));
        assert_eq!(lead.lead(), Duration::from_millis(20));
        lead.observe(Duration::from_millis(100));
        lead.observe(Duration::from_millis(3));
        let learned = lead.lead();
        assert!(learned >= Duration::from_millis(150) && learned <= Duration::from_millis(156), "{learned:?}");
        lead.observe(Duration::from_secs(5));
        assert_eq!(lead.lead(), MAX_LEAD);
        // The start's lead is learned apart, and a claim is sent ahead of both.
        assert_eq!(leads.start(), Duration::from_millis(50));
        leads.starts.observe(Duration::ZERO);
        assert_eq!(leads.start(), Duration::from_millis(5));
        assert_eq!(leads.ahead(), MAX_LEAD + Duration::from_millis(5));
    }
}
