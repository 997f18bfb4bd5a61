//! One run's life, from its claim to its recorded outcome (`RunTask`), and the runs this replica
//! has going (`OwnRuns`), so that a term's end, `replace` or the shutdown grace can stop them.
//!
//! A run is claimed (fenced) ahead of its slot, its start is recorded (fenced, `claimed ->
//! started`) a start lead time before the slot while the lease lasts until the slot, and at the
//! slot it executes, with its retries; then its outcome is recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batch::{Batchers, LiveOutput, LiveOutputs};
use super::clock::Clock;
use super::dispatch::Dispatch;
use super::lead_time::LeadTimes;
use super::{DATABASE_RETRY, LEADERSHIP_LOST};
use crate::config::{CatchUp, Concurrency, Job};
use crate::executor::{self, OutputTail, Prepared, RunContext};
use crate::leadership::{LeaseDeadline, Term, WitnessedRun};
use crate::model::{RunOutcome, RunStatus, Trigger};
use crate::store::{Assignment, Claim, ClaimError, Claimed, SkipIfRunning, Store, UnrunSlots};
use crate::supervisor::Supervision;
use crate::telemetry::{JobRunMetrics, metric};

/// How often a run that no replica can take yet looks again (the placement is read every
/// renewal interval; a choice may free up sooner).
const NO_REPLICA_RETRY: Duration = Duration::from_millis(200);
/// How often a `replace` run looks whether the runs it replaces elsewhere have ended.
const REPLACED_POLL: Duration = Duration::from_millis(100);

/// A stop request with its reason, so the ledger says why a run was killed; and the run's id
/// once its claim committed, so an operator's cancel finds it.
#[derive(Clone, Default)]
pub(super) struct RunStop {
    pub(super) token: CancellationToken,
    reason: Arc<Mutex<Option<Arc<str>>>>,
    run_id: Arc<AtomicI64>,
}

impl RunStop {
    pub(super) fn stop(&self, reason: &str) {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| Arc::from(reason));
        self.token.cancel();
    }

    fn reason(&self) -> Option<Arc<str>> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the first stop was for the end of leadership.
    fn leadership_lost(&self) -> bool {
        self.reason().as_deref() == Some(LEADERSHIP_LOST)
    }

    fn claimed(&self, run_id: i64) {
        self.run_id.store(run_id, Ordering::Relaxed);
    }

    /// The run's id, once claimed (ids start at 1).
    fn run_id(&self) -> Option<i64> {
        Some(self.run_id.load(Ordering::Relaxed)).filter(|id| *id > 0)
    }
}

/// A run this replica started (or is claiming), in this term or an earlier one.
struct OwnRun {
    job: String,
    trigger: Trigger,
    stop: RunStop,
    done: CancellationToken,
}

/// A run just added to `OwnRuns`: what its task needs to be stopped, to wait for the runs it
/// replaces, and to say it has ended.
pub(super) struct NewRun {
    pub(super) stop: RunStop,
    pub(super) done: CancellationToken,
    /// The runs of the same job it replaces (`concurrency: replace`), stopped already.
    pub(super) replaced: Vec<CancellationToken>,
    /// The runs of the same job it starts after (a manual run of a `forbid` job this replica
    /// executes): it is claimed at once, and started once they have ended.
    pub(super) after: Vec<CancellationToken>,
    /// Send the run's key here when its task ends.
    pub(super) finished: mpsc::UnboundedSender<u64>,
    pub(super) key: u64,
}

/// The runs of this replica whose tasks have not ended, by key. Outlives terms: a run of an
/// ended term still records its outcome.
pub(super) struct OwnRuns {
    runs: HashMap<u64, OwnRun>,
    /// How many of `runs` each job has: a `forbid` or `replace` job with one is not claimed
    /// ahead of its slot, so its policy is decided at the slot, as crontab users expect.
    per_job: HashMap<String, usize>,
    next_key: u64,
    finished_tx: mpsc::UnboundedSender<u64>,
    finished_rx: mpsc::UnboundedReceiver<u64>,
}

impl OwnRuns {
    pub(super) fn new() -> OwnRuns {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        OwnRuns { runs: HashMap::new(), per_job: HashMap::new(), next_key: 0, finished_tx, finished_rx }
    }

    /// Take note of a new run of `job`; with `concurrency: replace`, stop the job's runs going.
    /// A manual run of a `forbid` job executed here waits for the job's runs going here (it was
    /// asked for explicitly: it runs right after them, not never).
    pub(super) fn add(&mut self, job: &Job, trigger: Trigger) -> NewRun {
        let (mut replaced, mut after) = (Vec::new(), Vec::new());
        let of_job = self.runs.values().filter(|run| run.job == job.name.as_ref());
        if job.concurrency == Concurrency::Replace {
            for run in of_job {
                run.stop.stop("replaced by a newer run");
                replaced.push(run.done.clone());
            }
        } else if waits_for_own_runs(job, trigger) {
            after.extend(of_job.map(|run| run.done.clone()));
        }
        let key = self.next_key;
        self.next_key += 1;
        let (stop, done) = (RunStop::default(), CancellationToken::new());
        self.runs.insert(key, OwnRun { job: job.name.to_string(), trigger, stop: stop.clone(), done: done.clone() });
        *self.per_job.entry(job.name.to_string()).or_default() += 1;
        NewRun { stop, done, replaced, after, finished: self.finished_tx.clone(), key }
    }

    /// Stop the run `run_id` if it is one of this replica's: an operator cancelled it (the
    /// leader recorded the request under the fence first). False when it is not here.
    pub(super) fn stop_run(&self, run_id: i64, reason: &str) -> bool {
        let run = self.runs.values().find(|run| run.stop.run_id() == Some(run_id));
        run.inspect(|run| run.stop.stop(reason)).is_some()
    }

    /// The key of the next run whose task ended.
    pub(super) async fn next_finished(&mut self) -> Option<u64> {
        self.finished_rx.recv().await
    }

    /// Forget a run whose task ended; its trigger, if it was known.
    pub(super) fn finished(&mut self, key: u64) -> Option<Trigger> {
        let run = self.runs.remove(&key)?;
        if let Some(count) = self.per_job.get_mut(&run.job) {
            *count -= 1;
            if *count == 0 {
                self.per_job.remove(&run.job);
            }
        }
        Some(run.trigger)
    }

    /// A `forbid` or `replace` job with a run going: whether its next slot runs, is skipped or
    /// replaces that run is decided at the slot, never ahead of it.
    pub(super) fn decided_at_slot(&self, job: &Job) -> bool {
        job.concurrency != Concurrency::Allow && self.per_job.get(job.name.as_ref()).is_some_and(|n| *n > 0)
    }

    pub(super) fn stop_all(&self, reason: &'static str) {
        for run in self.runs.values() {
            run.stop.stop(reason);
        }
    }
}

/// Why a slot whose starting deadline had passed before a leader could start it was not run.
fn missed_past_deadline(job: &Job) -> String {
    format!(
        "not run: its starting deadline ({}) had passed before a leader could start it",
        humantime::format_duration(job.starting_deadline)
    )
}

/// A manual run of a `forbid` job that its leader executes waits for the job's runs going there
/// instead of being skipped for them (`SkipIfRunning::ExceptOwn`); one executed elsewhere is
/// decided by its claim alone, as the leader does not see those runs end.
fn waits_for_own_runs(job: &Job, trigger: Trigger) -> bool {
    job.concurrency == Concurrency::Forbid && matches!(trigger, Trigger::Manual { .. }) && !job.run_on.is_remote()
}

/// One attempt of a run executed here, built before it starts (`RunTask::attempt`), so that at
/// its slot nothing is left but to send its request or start its process.
struct Attempt {
    context: RunContext,
    prepared: Prepared,
    output: OutputTail,
    /// Its output, shown live until the attempt ends.
    _live: LiveOutput,
}

/// A run's slot (its identity) and when it is to start (`RunTask::planned_start`).
#[derive(Debug, Clone, Copy)]
struct Planned {
    slot: DateTime<Utc>,
    start: DateTime<Utc>,
    /// Its starting deadline counts from here: the planned start, or for a run that waited for
    /// the job's earlier runs, when they had ended.
    ready: DateTime<Utc>,
}

/// What a run task needs to claim, execute and record its slots in one term.
#[derive(Clone)]
pub(super) struct RunTask {
    pub(super) lead_times: LeadTimes,
    /// When the scheduler decided to fire these slots; taken by the first claim, the one whose
    /// time from decision to commit the claim lead time must cover.
    pub(super) planned_at: Option<DateTime<Utc>>,
    pub(super) clock: Clock,
    pub(super) store: Store,
    pub(super) term: Term,
    pub(super) lease: LeaseDeadline,
    /// Cancelled when the ledger shows a newer term: this one is over, whatever etcd says.
    pub(super) step_down: CancellationToken,
    /// The term's batchers: claims, starts and outcomes that fall due together go to the
    /// database together.
    pub(super) batchers: Batchers,
    pub(super) node: String,
    pub(super) config_hash: String,
    pub(super) http: reqwest::Client,
    pub(super) supervision: Supervision,
    pub(super) live_outputs: LiveOutputs,
    /// The job's series, registered ahead: a burst's runs record theirs without a registry lookup.
    pub(super) metrics: JobRunMetrics,
    /// Where runs of `run_on: any` or `{ tags: [..] }` jobs go.
    pub(super) dispatch: Dispatch,
    /// The runs that released the run (`after:`); empty for any other.
    pub(super) upstream_run_ids: Vec<i64>,
}

impl RunTask {
    /// Record `slots` `missed` at `now`, each saying why: those whose starting deadline had
    /// passed, and those the job's `catch_up` does not run (late, within their deadline).
    pub(super) async fn record_missed(&self, job: &Job, slots: &[DateTime<Utc>], trigger: Trigger, now: DateTime<Utc>) {
        let deadline = now - chrono::Duration::from_std(job.starting_deadline).unwrap_or_default();
        let (past, late): (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) = slots.iter().partition(|slot| **slot < deadline);
        if !past.is_empty() {
            self.record(job, &past, RunStatus::Missed, trigger, &missed_past_deadline(job)).await;
        }
        if !late.is_empty() {
            let reason = match job.catch_up {
                CatchUp::Latest => "not run: late, and `catch_up: latest` runs only the newest late slot",
                CatchUp::None | CatchUp::All => "not run: late, and `catch_up: none` runs no late slot",
            };
            self.record(job, &late, RunStatus::Missed, trigger, reason).await;
        }
    }

    /// Record `slots` `lost`: an older term may have started them, and the ledger forgot it in
    /// a database failover (`witness`).
    pub(super) async fn record_forgotten(&self, job: &Job, slots: &[DateTime<Utc>]) {
        self.record(job, slots, RunStatus::Lost, Trigger::Schedule, super::witness::FORGOTTEN_REASON).await;
    }

    /// Record `slots` as not run: new rows, or this term's claims that never started.
    pub(super) async fn record(
        &self,
        job: &Job,
        slots: &[DateTime<Utc>],
        status: RunStatus,
        trigger: Trigger,
        reason: &str,
    ) {
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

    /// Claim `slot`, record its start once the claim has committed, and at its planned start
    /// execute it with its retries.
    /// `after`: the job's runs this one starts after (`NewRun::after`), once claimed.
    pub(super) async fn fire(
        &mut self,
        job: &Job,
        slot: DateTime<Utc>,
        trigger: Trigger,
        stop: &RunStop,
        after: &[CancellationToken],
    ) {
        let planned = self.planned_start(job, slot, trigger);
        let Some(run_id) = self.claim_learning(job, slot, planned, trigger, stop).await else { return };
        stop.claimed(run_id);
        if job.run_on.is_remote() {
            self.assign_at_slot(job, Planned { slot, start: planned, ready: planned }, trigger, run_id, stop).await;
            return;
        }
        let mut ready = planned;
        if !after.is_empty() {
            tracing::info!(job = %job.name, run_id, "manual run of a `forbid` job: it starts when the job's run going here ends");
            for earlier in after {
                tokio::select! {
                    () = earlier.cancelled() => {}
                    () = stop.token.cancelled() => break,
                }
            }
            ready = ready.max(self.clock.now());
        }
        // Built before the slot, so that at the slot it is only sent (or started).
        let first = self.attempt(job, slot, run_id, 1);
        if self.start_at_slot(job, Planned { slot, start: planned, ready }, trigger, run_id, stop).await {
            self.execute(job, slot, planned, run_id, stop, first).await;
        }
    }

    /// A run that executes on another replica (`run_on: any` or `{ tags: [..] }`): at its planned
    /// start, its fenced start assigns it to the least loaded live replica that matches
    /// (`Dispatch`), which accepts it under an execution lease of its own and records its outcome
    /// itself (`worker`). With no replica to take it, the claim waits unstarted until one comes,
    /// or its starting deadline passes (`missed`); a term that ends meanwhile leaves it to the
    /// next, as any claim never started.
    async fn assign_at_slot(&self, job: &Job, planned: Planned, trigger: Trigger, run_id: i64, stop: &RunStop) {
        self.clock.wait_until(planned.start, &stop.token).await;
        if job.concurrency == Concurrency::Replace {
            self.replace_remote(job, run_id, stop).await;
        }
        let deadline = planned.start + chrono::Duration::from_std(job.starting_deadline).unwrap_or_default();
        // The same start on every retry: a retry after a lost acknowledgement finds it.
        let started = self.clock.now().max(planned.start);
        let mut waiting = false;
        loop {
            if stop.leadership_lost() || !self.lease.is_valid() {
                tracing::warn!(job = %job.name, slot = %planned.slot, "leadership lost before the run was assigned; left to the next leader");
                return;
            }
            if let Some(reason) = stop.reason().filter(|_| stop.token.is_cancelled()) {
                let reason = format!("{reason} before the run started");
                self.record(job, &[planned.slot], RunStatus::Killed, trigger, &reason).await;
                return;
            }
            if self.clock.now() > deadline {
                let reason = "not run: no live replica that matches its `run_on` had room before its starting deadline";
                tracing::warn!(job = %job.name, slot = %planned.slot, "{reason}");
                self.record(job, &[planned.slot], RunStatus::Missed, trigger, reason).await;
                return;
            }
            let Some((choice, executor)) = self.dispatch.choose(&job.run_on, None) else {
                if !waiting {
                    tracing::info!(job = %job.name, slot = %planned.slot, "no live replica that matches its `run_on` has room; waiting");
                    waiting = true;
                }
                tokio::select! {
                    () = stop.token.cancelled() => {}
                    () = tokio::time::sleep(NO_REPLICA_RETRY) => {}
                }
                continue;
            };
            let assignment = Assignment { run_id, started_at: started, executor: executor.clone() };
            let witnessed = WitnessedRun::new(job.name.as_ref(), planned.slot, planned.start, trigger);
            let assigned =
                self.batchers.assign(&self.store, &self.term, assignment, witnessed, self.dispatch.lease.lease).await;
            self.dispatch.settled(choice, matches!(assigned, Ok(true)).then(tokio::time::Instant::now));
            match assigned {
                Ok(true) => {
                    // Its lateness is the executing replica's to observe, when it begins there.
                    tracing::info!(job = %job.name, slot = %planned.slot, run_id, %executor, "assigned");
                    return;
                }
                Ok(false) => {
                    tracing::warn!(job = %job.name, slot = %planned.slot, run_id, "the claim is no longer this term's to start");
                    return;
                }
                Err(ClaimError::Fenced { term, fence }) => {
                    metrics::counter!(metric::CLAIMS_REJECTED, "reason" => "fenced").increment(1);
                    tracing::warn!(job = %job.name, term, fence, "assignment refused: a newer term holds the fence; stepping down");
                    self.step_down.cancel();
                    return;
                }
                Err(error) => {
                    tracing::warn!(job = %job.name, %error, "could not assign the run; retrying (delayed, not doubled)");
                    tokio::time::sleep(DATABASE_RETRY).await;
                }
            }
        }
    }

    /// `concurrency: replace` for a job whose runs execute elsewhere: ask (fenced) every other
    /// run of the job to stop, and wait for them to end (their executor kills at its next
    /// renewal and records `killed`; at worst the leader gives the attempt up after its lease and
    /// grace).
    async fn replace_remote(&self, job: &Job, run_id: i64, stop: &RunStop) {
        let lease = self.dispatch.lease;
        let limit = tokio::time::Instant::now() + lease.lease + lease.grace + lease.renew_every * 2;
        // Asked until the ledger took it, then waited on until none is going: a run an earlier
        // replacement already asked to stop (and no longer counted as asked now) may still be
        // dying.
        let mut asked = false;
        while tokio::time::Instant::now() < limit && !stop.token.is_cancelled() {
            if !asked {
                match self.store.request_cancel(&self.term, job.name.as_ref(), run_id).await {
                    Ok(0) => asked = true,
                    Ok(count) => {
                        asked = true;
                        tracing::info!(job = %job.name, asked = count, "replacing the job's runs going elsewhere");
                    }
                    Err(ClaimError::Fenced { .. }) => {
                        self.step_down.cancel();
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(job = %job.name, %error, "could not ask the job's runs elsewhere to stop")
                    }
                }
            }
            if asked && self.store.executions_going(job.name.as_ref()).await.is_ok_and(|going| going == 0) {
                return;
            }
            tokio::time::sleep(REPLACED_POLL).await;
        }
    }

    /// When a run of `slot` is to start: a scheduled slot at the slot plus the job's jitter
    /// offset (the same on every replica, so a new leader keeps it); a manual trigger at its
    /// request (its slot); a backfill's slot, long past, and a run released by its awaited runs,
    /// now. Lateness and the starting deadline
    /// are measured from it; the slot stays the run's identity.
    fn planned_start(&self, job: &Job, slot: DateTime<Utc>, trigger: Trigger) -> DateTime<Utc> {
        match trigger {
            Trigger::Schedule => {
                let offset = crate::schedule::jitter_offset(job.name.as_ref(), slot, job.jitter);
                slot + chrono::Duration::from_std(offset).unwrap_or_default()
            }
            Trigger::Manual { .. } => slot,
            Trigger::Backfill { .. } | Trigger::Upstream => self.clock.now().max(slot),
        }
    }

    /// The claim, teaching the claim lead time how long it took; the run to start, unless the
    /// claim was refused or recorded `skipped`.
    async fn claim_learning(
        &mut self,
        job: &Job,
        slot: DateTime<Utc>,
        planned: DateTime<Utc>,
        trigger: Trigger,
        stop: &RunStop,
    ) -> Option<i64> {
        // A manual claim marks its trigger handled in the same statement; a refused one leaves
        // it pending for the next leader.
        let first_sent = self.clock.now();
        let claimed = self.claim(job, slot, planned, trigger, stop).await;
        if let Some(planned_at) = self.planned_at.take().filter(|planned_at| slot > *planned_at) {
            if let Some((_, took)) = &claimed {
                // Sent ahead of its slot: however late it committed, the lead time learns from it:
                // from the decision to send it, plus the statement that recorded it (not the
                // retries after errors before it: a database outage is not a claim's duration).
                let deciding = (first_sent - planned_at).to_std().unwrap_or_default();
                self.lead_times.claims.observe(deciding + *took);
            }
        }
        let (claimed, _) = claimed?;
        if claimed.status == RunStatus::Skipped {
            self.metrics.count(RunStatus::Skipped);
            tracing::info!(job = %job.name, %slot, "skipped: the previous run is still going");
            return None;
        }
        Some(claimed.run_id)
    }

    /// Record the start of a claimed run and wait for its planned start. False when it may not
    /// execute.
    async fn start_at_slot(&self, job: &Job, planned: Planned, trigger: Trigger, run_id: i64, stop: &RunStop) -> bool {
        // Claimed ahead: the start is recorded a start's lead time before the planned start (for
        // it, if the lease lasts until then), so that then nothing is left but to execute.
        let start_lead = chrono::Duration::from_std(self.lead_times.start()).unwrap_or_default();
        self.clock.wait_until(planned.start - start_lead, &stop.token).await;
        let ahead = (planned.start - self.clock.now()).to_std().unwrap_or_default();
        if !ahead.is_zero() && !self.lease.is_valid_for(ahead) {
            self.clock.wait_until(planned.start, &stop.token).await;
        }
        // Sent ahead, the start teaches the lead how long its statement took, however late it
        // committed: one that outran the lead is the very one it must learn from.
        let sent_ahead = self.clock.now() < planned.start;
        let Some(took) = self.start(job, planned, trigger, run_id, stop).await else { return false };
        if sent_ahead {
            self.lead_times.starts.observe(took);
        }
        // Never executed before its planned start, nor by a term that ended meanwhile.
        self.clock.wait_until(planned.start, &stop.token).await;
        let Some(reason) = self.stopped_before_start(stop) else { return true };
        let outcome = self.not_run(RunStatus::Killed, format!("{reason} before the run started"));
        self.finish(job, run_id, &outcome).await;
        false
    }

    /// Attempt `attempt` of run `run_id`, built to be executed: its identity, its request (for
    /// an HTTP job) and its output, shown live from now on.
    fn attempt(&self, job: &Job, slot: DateTime<Utc>, run_id: i64, attempt: i32) -> Attempt {
        let context = RunContext {
            run_id,
            job: job.name.to_string(),
            slot,
            term: self.term.revision(),
            node: self.node.clone(),
            attempt,
            lease_id: None,
            upstream_run_ids: self.upstream_run_ids.clone(),
        };
        let prepared = executor::prepare(job, &context, &self.http);
        let output = OutputTail::default();
        let live = self.live_outputs.watch(run_id, output.clone());
        Attempt { context, prepared, output, _live: live }
    }

    /// Execute a started run (its first attempt `first`, built ahead), retry it per the job's
    /// `retries`, and record its outcome. Lateness is measured from the planned start to the
    /// first attempt's begin (its process spawned, its request sent), observed as it begins.
    async fn execute(
        &self,
        job: &Job,
        slot: DateTime<Utc>,
        planned: DateTime<Utc>,
        run_id: i64,
        stop: &RunStop,
        first: Attempt,
    ) {
        let mut attempt = 1;
        let mut next = Some(first);
        loop {
            let started = self.clock.now();
            let first_attempt = attempt == 1;
            let on_began = |began: DateTime<Utc>| {
                if first_attempt {
                    self.metrics.fire_lateness.record((began - planned).to_std().unwrap_or_default().as_secs_f64());
                }
            };
            let Attempt { context, prepared, output, _live: live } =
                next.take().unwrap_or_else(|| self.attempt(job, slot, run_id, attempt));
            let mut outcome = executor::execute_prepared(
                prepared,
                job,
                &context,
                &output,
                &self.http,
                &self.supervision,
                &stop.token,
                &on_began,
            )
            .await;
            drop(live);
            if let Some(reason) = stop.reason() {
                outcome.error = Some(reason.to_string());
            }
            let began = outcome.began_at.unwrap_or(started);
            self.metrics.run_duration.record((outcome.finished_at - began).to_std().unwrap_or_default().as_secs_f64());
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
            let retry_started = self.clock.now();
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

    async fn claim(
        &self,
        job: &Job,
        slot: DateTime<Utc>,
        planned: DateTime<Utc>,
        trigger: Trigger,
        stop: &RunStop,
    ) -> Option<(Claimed, Duration)> {
        let skip_if_running = match job.concurrency {
            Concurrency::Forbid if waits_for_own_runs(job, trigger) => SkipIfRunning::ExceptOwn,
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
                claimed_at: self.clock.now(),
                planned_at: planned,
            };
            let sent = std::time::Instant::now();
            match self.batchers.claim(&self.store, &claim).await {
                Ok(claimed) => return Some((claimed, sent.elapsed())),
                Err(ClaimError::Fenced { term, fence }) => {
                    metrics::counter!(metric::CLAIMS_REJECTED, "reason" => "fenced").increment(1);
                    if crate::testing::ignore_refusals() {
                        return Some((Claimed { run_id: 0, status: RunStatus::Running }, sent.elapsed()));
                    }
                    tracing::warn!(job = %job.name, %slot, term, fence, "claim refused: a newer term holds the fence; stepping down");
                    self.step_down.cancel();
                    return None;
                }
                Err(ClaimError::AlreadyClaimed { term, node }) => {
                    metrics::counter!(metric::CLAIMS_REJECTED, "reason" => "already_claimed").increment(1);
                    tracing::info!(job = %job.name, %slot, term, %node, "claim refused: slot already claimed");
                    return crate::testing::ignore_refusals()
                        .then_some((Claimed { run_id: 0, status: RunStatus::Running }, sent.elapsed()));
                }
                Err(error @ (ClaimError::Database(_) | ClaimError::NotWitnessed(_))) => {
                    metrics::counter!(metric::CLAIM_ERRORS).increment(1);
                    tracing::warn!(job = %job.name, %slot, %error, "claim failed; retrying (the run is delayed, not doubled)");
                    tokio::time::sleep(DATABASE_RETRY).await;
                    if self.clock.now() - planned
                        > chrono::Duration::from_std(job.starting_deadline).unwrap_or_default()
                    {
                        tracing::warn!(job = %job.name, %slot, "the slot passed its starting deadline while the database was down");
                        let reason = format!(
                            "not run: its claim could not be recorded (the database did not answer) before its \
                             starting deadline ({})",
                            humantime::format_duration(job.starting_deadline)
                        );
                        self.record(job, &[slot], RunStatus::Missed, trigger, &reason).await;
                        return None;
                    }
                }
            }
        }
    }

    /// Start a claimed run: the fenced `claimed -> started` transition, recorded before anything
    /// executes; how long the statement that recorded it took (sent to committed; not the
    /// retries before it, so a database outage is not learned as a start's duration). `None`:
    /// this term may not start it, and nothing runs. A claim left unstarted
    /// because the lease ended stays as it is, for the next term to take over; one stopped by
    /// this term (`replace`, shutdown grace) is recorded `killed`; one whose start could not be
    /// recorded in time is recorded `missed`.
    async fn start(
        &self,
        job: &Job,
        planned: Planned,
        trigger: Trigger,
        run_id: i64,
        stop: &RunStop,
    ) -> Option<Duration> {
        let Planned { slot, start: planned, ready } = planned;
        // The same start time on every retry: a retry after a lost acknowledgement finds it.
        // Recorded ahead, it is the planned start: the run executes then, never before.
        let started = self.clock.now().max(planned);
        let took = loop {
            // Stopped because the term ended: the claim was never started, so it is the next
            // term's to decide, not a run to record.
            if stop.leadership_lost() || !self.lease.is_valid() {
                tracing::warn!(job = %job.name, %slot, "leadership lost before the run started; left to the next leader");
                return None;
            }
            if let Some(reason) = stop.reason().filter(|_| stop.token.is_cancelled()) {
                let reason = format!("{reason} before the run started");
                self.record(job, &[slot], RunStatus::Killed, trigger, &reason).await;
                return None;
            }
            let sent = std::time::Instant::now();
            let witnessed = WitnessedRun::new(job.name.as_ref(), slot, planned, trigger);
            match self.batchers.start(&self.store, &self.term, run_id, started, witnessed).await {
                Ok(true) => break sent.elapsed(),
                // The test switch executes whatever refused the start: the fence, or the
                // coordinator's start witness (a stale leader's write is refused there too).
                Ok(false) | Err(ClaimError::Fenced { .. } | ClaimError::NotWitnessed(_))
                    if crate::testing::ignore_refusals() =>
                {
                    break sent.elapsed();
                }
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
        };
        if self.clock.now() - ready > chrono::Duration::from_std(job.starting_deadline).unwrap_or_default() {
            let reason = "not run: its start was recorded only after the starting deadline";
            let outcome = self.not_run(RunStatus::Missed, reason.to_owned());
            self.finish(job, run_id, &outcome).await;
            return None;
        }
        Some(took)
    }

    /// Why a run whose start is recorded may not execute after all: it was stopped (replaced,
    /// its term ended, the shutdown grace ran out) or the lease ran out or was lost while it
    /// waited for its slot. It was started under this term, so no other term takes it over: it
    /// is recorded `killed`. A lease ended by the replica's orderly shutdown (`resign`) stops
    /// nothing already started: the run executes at its slot.
    fn stopped_before_start(&self, stop: &RunStop) -> Option<Arc<str>> {
        if stop.token.is_cancelled() {
            return Some(stop.reason().unwrap_or_else(|| Arc::from(LEADERSHIP_LOST)));
        }
        (!self.lease.is_valid() && !self.lease.resigned()).then(|| Arc::from(LEADERSHIP_LOST))
    }

    /// The outcome of a started run that never executed.
    fn not_run(&self, status: RunStatus, error: String) -> RunOutcome {
        RunOutcome {
            status,
            exit_code: None,
            http_status: None,
            error: Some(error),
            output: String::new(),
            began_at: None,
            finished_at: self.clock.now(),
        }
    }

    /// Record the outcome; keep trying while the database is down, since a row left `running`
    /// blocks `forbid` jobs until a later leader reaps it.
    async fn finish(&self, job: &Job, run_id: i64, outcome: &RunOutcome) {
        self.metrics.count(outcome.status);
        tracing::info!(
            job = %job.name, run_id, status = outcome.status.as_str(), exit_code = ?outcome.exit_code,
            error = ?outcome.error, "run finished"
        );
        if self.batchers.finish(run_id, outcome).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_runs_forget_each_run_whose_task_ended() {
        let jobs = crate::config::parse(
            "jobs:\n  - name: a\n    schedule: \"* * * * * *\"\n    shell: \"true\"\n    concurrency: allow\n  \
             - name: b\n    schedule: \"* * * * * *\"\n    shell: \"true\"\n",
            "jobs.yaml",
        )
        .unwrap();
        let mut own = OwnRuns::new();
        let keys: Vec<u64> = (0..1_000).map(|i| own.add(&jobs.jobs()[i % 2], Trigger::Schedule).key).collect();
        assert_eq!((own.runs.len(), own.per_job.len()), (1_000, 2));
        assert!(own.decided_at_slot(&jobs.jobs()[1]), "b (forbid) has runs going");
        for key in keys {
            assert!(own.finished(key).is_some());
        }
        assert!(own.runs.is_empty() && own.per_job.is_empty(), "ended runs are kept");
        assert!(!own.decided_at_slot(&jobs.jobs()[1]));
    }
}
