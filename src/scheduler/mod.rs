//! The firing loop: while this replica leads, sleep until the next due slot of any job, decide per
//! the job's policies what happens to each due slot, claim it in the ledger under the term, and
//! only then hand it to the executor. The only module that starts runs.
//!
//! The loop is an actor reacting to a closed set of events (`Wake`): leadership changed, the job
//! file reloaded, a run finished, a slot came due, or shutdown. Its parts:
//!
//! - `term`: one term as the loop holds it (`ActiveTerm`, returned by `begin_term`): the fence
//!   raised, the jobs' cursors read, the term's batchers, heartbeat and reaping; operator controls;
//! - `plan`: which slots are due and what each job's policies make of them (pure);
//! - `release`: runs released by the runs of the jobs they wait for (`after:`), found in the
//!   ledger and decided (claimed like a slot, or recorded with the reason);
//! - `run`: one run's life from its claim to its outcome (`RunTask`), and the runs going;
//! - `batch`: the batchers that send a term's claims, starts and outcomes together; live output;
//! - `dispatch`: which replica a `run_on: any` or `{ tags: [..] }` run goes to, and the term's
//!   dispatcher, which gives up attempts whose execution lease expired;
//! - `lead_time`: how far ahead of its slot a run is claimed and started, learned;
//! - `clock`: the wall clock the loop reads and sleeps on (stepped in the unit tests).

mod batch;
mod clock;
mod dispatch;
mod lead_time;
mod plan;
mod release;
mod run;
mod term;
#[cfg(test)]
mod tests;
mod witness;

pub use clock::Clock;

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::batch::{LiveOutputs, flush_live_outputs};
use self::lead_time::LeadTimes;
use self::plan::{JobState, plan_due_slots, rebuild_states};
use self::run::{NewRun, OwnRuns, RunTask};
use self::term::ActiveTerm;
use crate::clock::ClockCheck;
use crate::config::{Job, JobSet};
use crate::deadman::{DeadManPing, DeadManSettings};
use crate::executor;
use crate::leadership::{LeaderTerm, Leadership};
use crate::model::{Member, Trigger};
use crate::store::{Reads, Store};
use crate::supervisor::Supervision;
use crate::telemetry::{JobRunMetrics, metric};
use crate::worker::ExecutionLease;

/// Why every run of a term is stopped when the term ends.
const LEADERSHIP_LOST: &str = "leadership lost";
/// How long to wait before retrying a ledger operation that failed because the database did.
const DATABASE_RETRY: Duration = Duration::from_millis(500);

/// Everything the loop needs from outside; tests pass channels they drive themselves.
pub struct SchedulerInputs {
    pub store: Store,
    /// The execution lease runs assigned to other replicas are held under (`worker`).
    pub execution: ExecutionLease,
    pub node_id: String,
    pub jobs: watch::Receiver<Arc<JobSet>>,
    pub leadership: watch::Receiver<Leadership>,
    pub members: watch::Receiver<Vec<Member>>,
    /// This replica's clock against the database's; a skewed clock does not fire.
    pub clock_check: watch::Receiver<ClockCheck>,
    /// How runs' processes are started (through the replica's supervisor), and so how long after
    /// a replica vanished its runs may be recorded `lost`.
    pub supervision: Supervision,
    pub shutdown_grace: Duration,
    /// The wall clock slots are fired by: `Clock::system()` but in the loop's own tests.
    pub clock: Clock,
    /// The dead-man ping (`--heartbeat-url`), sent from the loop while it holds a term.
    pub dead_man: Option<DeadManSettings>,
    /// The read side of the ledger: the notification courier reads the runs it tells about.
    pub reads: Reads,
}

/// The firing loop's actor. What lasts only as long as a term is in `ActiveTerm`.
pub struct Scheduler {
    store: Store,
    execution: ExecutionLease,
    node_id: String,
    jobs: watch::Receiver<Arc<JobSet>>,
    leadership: watch::Receiver<Leadership>,
    members: watch::Receiver<Vec<Member>>,
    clock_check: watch::Receiver<ClockCheck>,
    clock: Clock,
    http: reqwest::Client,
    supervision: Supervision,
    shutdown_grace: Duration,
    runs: TaskTracker,
    own_runs: OwnRuns,
    /// How far ahead of their slots starts are recorded, and claims sent before that.
    lead_times: LeadTimes,
    /// The output tails of the runs going, written to the ledger together.
    live_outputs: LiveOutputs,
    dead_man: Option<DeadManPing>,
    reads: Reads,
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
    /// The dead-man ping's interval is up (only with `--heartbeat-url`).
    DeadManPing,
    ClockChanged,
    /// A look at the ledger for runs released by their awaited runs is due.
    ReleaseDue,
    /// What that look found.
    Released(release::Found),
}

impl Scheduler {
    pub fn new(inputs: SchedulerInputs) -> Scheduler {
        let SchedulerInputs {
            store,
            execution,
            node_id,
            jobs,
            leadership,
            members,
            clock_check,
            supervision,
            shutdown_grace,
            clock,
            dead_man,
            reads,
        } = inputs;
        // The executor's client (its TLS roots) also pings the monitor.
        let http = crate::executor::http_client();
        let dead_man = dead_man.map(|settings| DeadManPing::new(settings, &node_id, http.clone()));
        crate::notify::export_metrics();
        Scheduler {
            store,
            execution,
            node_id,
            jobs,
            leadership,
            members,
            clock_check,
            clock,
            http,
            supervision,
            shutdown_grace,
            runs: TaskTracker::new(),
            own_runs: OwnRuns::new(),
            lead_times: LeadTimes::default(),
            live_outputs: LiveOutputs::default(),
            dead_man,
            reads,
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
                    self.hold_term(&leader, &shutdown).await;
                    if !shutdown.is_cancelled() {
                        // Leadership is gone: nothing of this term may keep running.
                        self.own_runs.stop_all(LEADERSHIP_LOST);
                    }
                    if leader.step_down.is_cancelled() {
                        self.await_step_down(&leader, &shutdown).await;
                    }
                }
                Leadership::Follower { .. } => {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        changed = self.leadership.changed() => if changed.is_err() { break },
                        Some(key) = self.own_runs.next_finished() => { self.own_runs.finished(key); }
                    }
                }
            }
        }
        self.drain().await;
    }

    /// Stepping down: wait for the election to say so rather than lead again.
    async fn await_step_down(&mut self, leader: &LeaderTerm, shutdown: &CancellationToken) {
        while self.leadership.borrow_and_update().term() == Some(&leader.term) {
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = self.leadership.changed() => if changed.is_err() { break },
                Some(key) = self.own_runs.next_finished() => { self.own_runs.finished(key); }
            }
        }
    }

    /// Shutdown: runs in flight may finish within the grace period, then they are killed.
    async fn drain(&mut self) {
        self.runs.close();
        if tokio::time::timeout(self.shutdown_grace, self.runs.wait()).await.is_err() {
            tracing::warn!(grace = ?self.shutdown_grace, "runs still going after the shutdown grace; killing them");
            self.own_runs.stop_all("shutdown grace exceeded");
            self.runs.wait().await;
        }
    }

    /// One term: raise the fence, catch up, then fire on time until the term ends.
    async fn hold_term(&mut self, leader: &LeaderTerm, shutdown: &CancellationToken) {
        if let Some(why) = self.clock_check.borrow_and_update().refusal() {
            tracing::error!(term = leader.term.revision(), "won the election, but {why}; stepping down");
            leader.step_down.cancel();
            return;
        }
        let Some(mut term) = self.begin_term(leader, shutdown).await else { return };
        let listener_stop = CancellationToken::new();
        let _stop_listener = listener_stop.clone().drop_guard();
        let (controls_tx, mut controls_rx) = mpsc::channel(1);
        let store = self.store.clone();
        tokio::spawn(async move { store.listen_controls(controls_tx, listener_stop).await });
        loop {
            // Triggers requested while nobody led are executed now; pauses apply before any slot.
            if term.controls_pending {
                term.controls_pending = !self.apply_controls(&mut term).await;
                term.due.reset(&term.jobs);
            }
            let wake = self.next_wake(&mut term, &mut controls_rx, shutdown).await;
            if self.on_wake(wake, &mut term).await.is_break() {
                return;
            }
        }
    }

    async fn next_wake(
        &mut self,
        term: &mut ActiveTerm,
        controls: &mut mpsc::Receiver<()>,
        shutdown: &CancellationToken,
    ) -> Wake {
        let wake_at = if term.controls_pending {
            Some(self.clock.now() + chrono::Duration::from_std(DATABASE_RETRY).unwrap_or_default())
        } else {
            term.due.wake_at(self.lead_times.claim())
        };
        let clock = &self.clock;
        let release_at = term.releases.next.filter(|_| term.releases.enabled);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Wake::Shutdown,
            changed = self.leadership.changed() => {
                if changed.is_err() { Wake::Shutdown } else { Wake::LeadershipChanged }
            }
            () = term.leader.step_down.cancelled() => Wake::LeadershipChanged,
            changed = self.clock_check.changed() => {
                if changed.is_err() { Wake::Shutdown } else { Wake::ClockChanged }
            }
            changed = self.jobs.changed() => {
                if changed.is_err() { Wake::Shutdown } else { Wake::JobsReloaded }
            }
            Some(key) = self.own_runs.next_finished() => Wake::RunFinished(key),
            Some(()) = controls.recv() => Wake::ControlsChanged,
            () = sleep_until_or_forever(clock, wake_at) => Wake::Due,
            () = tokio::time::sleep_until(term.next_reap) => Wake::Reap,
            changed = self.members.changed() => {
                if changed.is_err() { Wake::Shutdown } else { Wake::MembersChanged }
            }
            () = tokio::time::sleep_until(term.next_heartbeat) => Wake::Heartbeat,
            () = sleep_until_or_never(term.next_dead_man_ping) => Wake::DeadManPing,
            Some(found) = term.releases.found.recv() => Wake::Released(found),
            () = sleep_until_or_never(release_at) => Wake::ReleaseDue,
        }
    }

    /// React to `wake`; `Break` ends the term.
    async fn on_wake(&mut self, wake: Wake, term: &mut ActiveTerm) -> ControlFlow<()> {
        match wake {
            Wake::Shutdown => return ControlFlow::Break(()),
            Wake::LeadershipChanged => {
                let still_ours = self.leadership.borrow().term() == Some(term.term());
                if !still_ours || term.leader.step_down.is_cancelled() {
                    return ControlFlow::Break(());
                }
            }
            Wake::JobsReloaded => self.reload_jobs(term).await,
            Wake::ControlsChanged => term.controls_pending = true,
            Wake::RunFinished(key) => {
                // A trigger's run that ended unstarted is started again; a backfill run that
                // ended (or any run, while backfill slots wait for one to end) lets the next go.
                let backfill_ended = term.backfills_going.remove(&key).is_some();
                // Its dependents may be released now (and a released run's slot is the ledger's).
                term.releases.run_ended(key);
                if self.run_finished(key, term) || backfill_ended || term.backfill_waiting {
                    term.controls_pending = true;
                }
            }
            Wake::ClockChanged => {
                let check = *self.clock_check.borrow_and_update();
                if let Some(why) = check.refusal() {
                    tracing::error!(skew_ms = ?check.skew_ms, "{why}; stepping down");
                    metrics::counter!(metric::CLOCK_STEP_DOWNS).increment(1);
                    term.leader.step_down.cancel();
                    return ControlFlow::Break(());
                }
            }
            Wake::Heartbeat => term.heartbeat(&self.store, &self.clock),
            Wake::DeadManPing => {
                if let Some(dead_man) = &self.dead_man {
                    term.ping_dead_man(dead_man);
                }
            }
            Wake::MembersChanged => {
                let now = tokio::time::Instant::now();
                if term.departures.observe(&self.members.borrow_and_update(), now) {
                    // The departed node's runs may be reaped as soon as its wait is out.
                    term.next_reap = term.next_reap.min(now + self.supervision.lost_after());
                }
            }
            Wake::Reap => self.reap(term),
            Wake::Due => return self.fire_ready(term),
            Wake::ReleaseDue => {
                let jobs = self.jobs.borrow().clone();
                let active = term.term().clone();
                term.releases.scan(&self.store, &active, &jobs, self.clock.now());
            }
            Wake::Released(found) => {
                term.releases.scanned();
                match found {
                    Ok(found) => self.release(term, &found),
                    Err(error) => tracing::warn!(%error, "could not read the awaited runs; looking again"),
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// The job file changed: keep the cursors of the jobs that stay, and read the controls again.
    async fn reload_jobs(&mut self, term: &mut ActiveTerm) {
        let jobs = self.jobs.borrow_and_update().clone();
        let known: HashSet<String> = term.jobs.iter().map(|state| state.job.name.to_string()).collect();
        let now = self.clock.now();
        term.jobs = rebuild_states(std::mem::take(&mut term.jobs), &jobs, now);
        // A job new to this term starts from now; its cursor is recorded so that a hand-over
        // before its first slot does not lose that slot.
        let added: Vec<&str> =
            jobs.jobs().iter().map(|job| job.name.as_ref()).filter(|name| !known.contains(*name)).collect();
        if !added.is_empty() {
            if let Err(error) = self.store.job_cursors(term.term(), &added, now).await {
                tracing::warn!(%error, jobs = added.len(), "could not record the cursors of new jobs");
            }
        }
        term.route_notifications(&self.store, &jobs);
        term.releases.reload(&jobs);
        // Operator pauses apply to the reloaded jobs too.
        term.controls_pending = true;
        tracing::info!(jobs = term.jobs.len(), hash = jobs.hash(), "job file reloaded");
    }

    /// A slot is due (or within the claim lead time): fire every job whose slot it is.
    fn fire_ready(&mut self, term: &mut ActiveTerm) -> ControlFlow<()> {
        if term.controls_pending {
            // The controls are read again at the top of the loop first.
            return ControlFlow::Continue(());
        }
        if !term.leader.lease.is_valid() {
            // The election notices too and publishes Follower; fire nothing meanwhile.
            return ControlFlow::Continue(());
        }
        if let Some(step) = term.steps.step() {
            // Firing now would catch up (or skip) slots by a clock that just jumped.
            tracing::error!(step_ms = step.num_milliseconds(), "the wall clock stepped; stepping down");
            metrics::counter!(metric::CLOCK_STEP_DOWNS).increment(1);
            term.leader.step_down.cancel();
            return ControlFlow::Break(());
        }
        let now = self.clock.now();
        let lead = self.lead_times.claim();
        let own_runs = &self.own_runs;
        let ready = term.due.pop_ready(now, lead, |index| own_runs.decided_at_slot(&term.jobs[index].job));
        for index in ready {
            // Claim ahead so the claim has committed when the slot comes; a job whose policy
            // depends on its run in flight is decided at its slot.
            let decided_at_slot = self.own_runs.decided_at_slot(&term.jobs[index].job);
            let until = if decided_at_slot { now } else { now + lead };
            self.fire_due(term, index, now, until);
            term.due.push(&term.jobs[index], index);
        }
        ControlFlow::Continue(())
    }

    /// Decide what happens to every slot of one job due by `until` (at most `now` plus the claim
    /// lead time), per its `catch_up` policy and `starting_deadline`, and advance its cursor past
    /// them.
    fn fire_due(&mut self, term: &mut ActiveTerm, index: usize, now: DateTime<Utc>, until: DateTime<Utc>) {
        let state: &mut JobState = &mut term.jobs[index];
        let job = state.job.clone();
        if state.paused {
            return;
        }
        let mut plan = plan_due_slots(&job, state.cursor, now, until);
        let Some(last) = plan.last_slot else { return };
        state.cursor = last;
        if let Some(covered) = &term.forgotten {
            plan::set_apart_forgotten(&job, &mut plan, covered);
        }
        let metrics = state.metrics.clone();
        let task = self.run_task(term, metrics, now);
        if !plan.forgotten.is_empty() {
            metrics::counter!(metric::FORGOTTEN_STARTS).increment(plan.forgotten.len() as u64);
            tracing::warn!(
                job = %job.name, slots = plan.forgotten.len(),
                "slots the ledger forgot in a database failover recorded lost, not run again"
            );
            let (task, job, forgotten) = (task.clone(), job.clone(), plan.forgotten);
            self.runs.spawn(async move { task.record_forgotten(&job, &forgotten).await });
        }
        if plan.missed_total > 0 {
            // Job names are a bounded label: the job file lists them all.
            metrics::counter!(metric::MISSED_SLOTS, "job" => job.name.to_string()).increment(plan.missed_total as u64);
            tracing::warn!(
                job = %job.name, missed = plan.missed_total, recorded = plan.missed.len(),
                "slots missed per the job's catch-up policy"
            );
            let (task, job, missed) = (task.clone(), job.clone(), plan.missed);
            self.runs.spawn(async move { task.record_missed(&job, &missed, Trigger::Schedule, now).await });
        }
        self.start_runs(job, plan.run, Trigger::Schedule, task);
    }

    /// Claim the slots the ledger shows released by their awaited runs (`found`), or record
    /// those that can no longer run, with their reason. Nothing while the operator controls are
    /// unread (a paused job must not run) or the lease is not valid: the next look finds them
    /// again, as would the next leader.
    fn release(&mut self, term: &mut ActiveTerm, found: &[crate::store::AwaitedRun]) {
        if term.controls_pending || !term.leader.lease.is_valid() || found.is_empty() {
            return;
        }
        let now = self.clock.now();
        let going: HashSet<(&str, DateTime<Utc>)> =
            term.releases.going.values().map(|(job, slot)| (job.as_str(), *slot)).collect();
        let mut decided = Vec::new();
        // Per dependent job, the slots to run with when they were released, for `catch_up`.
        let mut to_run: std::collections::BTreeMap<&str, Vec<release::ReleasedAt>> = Default::default();
        for ((slot, dependent), runs) in release::by_slot(found) {
            if going.contains(&(dependent, slot)) {
                continue;
            }
            // A job gone from the file waits for nothing any more.
            let Some(state) = term.jobs.iter().find(|state| state.job.name.as_str() == dependent) else { continue };
            let decision = if state.paused {
                let reason = "not run: the job was paused when its awaited runs ended".to_owned();
                release::Release::Record { status: crate::model::RunStatus::Skipped, reason }
            } else {
                release::decide(&state.job, &runs, now)
            };
            if let (release::Release::Run { .. }, Some(at)) = (&decision, release::released_at(&runs)) {
                to_run.entry(dependent).or_default().push((slot, at));
            }
            decided.push((state.job.clone(), state.metrics.clone(), slot, decision));
        }
        // Slots released while no leader looked follow the job's `catch_up`.
        let mut late: HashSet<(String, DateTime<Utc>, &'static str)> = HashSet::new();
        for (dependent, released) in &to_run {
            let Some(state) = term.jobs.iter().find(|state| state.job.name.as_str() == *dependent) else { continue };
            for ((slot, _), why) in released.iter().zip(release::catch_up(&state.job, released, now)) {
                if let Some(why) = why {
                    late.insert((dependent.to_string(), *slot, why));
                }
            }
        }
        for (job, _, slot, decision) in decided.iter_mut() {
            if let Some((_, _, why)) = late.iter().find(|(name, at, _)| name == job.name.as_str() && at == slot) {
                *decision =
                    release::Release::Record { status: crate::model::RunStatus::Missed, reason: (*why).to_owned() };
            }
        }
        for (job, metrics, slot, decision) in decided {
            let mut task = self.run_task(term, metrics, now);
            match decision {
                release::Release::Wait => {}
                release::Release::Record { status, reason } => {
                    tracing::info!(job = %job.name, %slot, status = status.as_str(), %reason, "released slot not run");
                    self.runs
                        .spawn(async move { task.record(&job, &[slot], status, Trigger::Upstream, &reason).await });
                }
                release::Release::Run { upstream_run_ids } => {
                    tracing::info!(job = %job.name, %slot, upstream = ?upstream_run_ids, "released by its awaited runs");
                    task.upstream_run_ids = upstream_run_ids;
                    let name = job.name.to_string();
                    if let Some(key) = self.start_runs(job, vec![slot], Trigger::Upstream, task) {
                        term.releases.going.insert(key, (name, slot));
                    }
                }
            }
        }
    }

    /// Forget a run that ended. True when it was a manual trigger's: if it was stopped before its
    /// claim or its start, the trigger is still pending, and the caller reads the triggers again.
    fn run_finished(&mut self, key: u64, term: &mut ActiveTerm) -> bool {
        match self.own_runs.finished(key).and_then(Trigger::request) {
            Some(request) => term.started_triggers.remove(&request),
            None => false,
        }
    }

    /// What a run task of `term` needs; `metrics`: its job's series. `planned_at`: when the
    /// scheduler decided to fire (the claim lead time is measured from it).
    fn run_task(&self, term: &ActiveTerm, metrics: JobRunMetrics, planned_at: DateTime<Utc>) -> RunTask {
        RunTask {
            metrics,
            lead_times: self.lead_times.clone(),
            planned_at: Some(planned_at),
            clock: self.clock.clone(),
            store: self.store.clone(),
            term: term.leader.term.clone(),
            lease: term.leader.lease.clone(),
            step_down: term.leader.step_down.clone(),
            batchers: term.batchers.clone(),
            node: self.node_id.clone(),
            config_hash: self.jobs.borrow().hash().to_owned(),
            http: self.http.clone(),
            supervision: self.supervision.clone(),
            live_outputs: self.live_outputs.clone(),
            dispatch: term.dispatch.clone(),
            upstream_run_ids: Vec::new(),
        }
    }

    /// Claim and run `slots` of `job` in order, in one task tracked as one of this replica's runs;
    /// its key (`Wake::RunFinished` names it when the task ends).
    fn start_runs(
        &mut self,
        job: Arc<Job>,
        slots: Vec<DateTime<Utc>>,
        trigger: Trigger,
        mut task: RunTask,
    ) -> Option<u64> {
        if slots.is_empty() {
            return None;
        }
        // `replace`: the job's earlier runs are stopped; the new one waits for them to end.
        let NewRun { stop, done, replaced, after, finished, key } = self.own_runs.add(&job, trigger);
        self.runs.spawn(async move {
            for wait in replaced {
                let _ = tokio::time::timeout(executor::KILL_GRACE * 2, wait.cancelled()).await;
            }
            // `catch_up: all` runs the slots in order, one after the other.
            for slot in slots {
                if stop.token.is_cancelled() {
                    break;
                }
                task.fire(&job, slot, trigger, &stop, &after).await;
            }
            done.cancel();
            let _ = finished.send(key);
        });
        Some(key)
    }
}

async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_or_forever(clock: &Clock, at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => clock.sleep_until(at).await,
        None => std::future::pending().await,
    }
}
