//! The term's batchers: claims, fenced starts and outcomes that are waiting go to the database
//! together, one statement for all of them, each answered exactly as if it had been sent alone;
//! and the live output of every run going, written in one statement a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::witness::{StartStream, TermWitness};
use crate::executor::OutputTail;
use crate::leadership::{PlannedRange, Term, WitnessError, WitnessedRun};
use crate::model::{RunOutcome, Trigger};
use crate::store::{Assignment, Claim, ClaimError, Claimed, SkipIfRunning, Store};

/// How often a running job's output tail is copied to the ledger for live viewing.
const OUTPUT_FLUSH: Duration = Duration::from_secs(1);

/// One term's claim, start and outcome batchers. They run as long as someone holds a copy: the
/// term while it lasts, and each of its runs until it has recorded its outcome.
#[derive(Clone)]
pub(super) struct Batchers {
    claims: mpsc::UnboundedSender<ClaimRequest>,
    starts: mpsc::UnboundedSender<StartRequest>,
    assigns: mpsc::UnboundedSender<AssignRequest>,
    finishes: mpsc::UnboundedSender<FinishRequest>,
    /// Records every batch of starts in the coordinator before it is sent.
    witness: Arc<TermWitness>,
}

impl Batchers {
    /// Start the batchers of `term`, led from `node`; assigned runs must be accepted within
    /// `accept_within`.
    pub(super) fn spawn(
        store: &Store,
        term: &Term,
        node: &str,
        accept_within: Duration,
        witness: Arc<TermWitness>,
    ) -> Batchers {
        let (claims, claims_rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_claims(store.clone(), term.clone(), node.to_owned(), claims_rx));
        let (starts, starts_rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_starts(store.clone(), term.clone(), witness.clone(), starts_rx));
        let (assigns, assigns_rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_assigns(store.clone(), term.clone(), accept_within, witness.clone(), assigns_rx));
        let (finishes, finishes_rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_finishes(store.clone(), finishes_rx));
        Batchers { claims, starts, assigns, finishes, witness }
    }

    /// The fenced start of a run that executes on `assignment.executor`, through the batcher
    /// (or directly, if it is gone), witnessed first.
    pub(super) async fn assign(
        &self,
        store: &Store,
        term: &Term,
        assignment: Assignment,
        witnessed: WitnessedRun,
        accept_within: Duration,
    ) -> Result<bool, ClaimError> {
        let (reply, answer) = oneshot::channel();
        let request = AssignRequest { assignment: assignment.clone(), witnessed: witnessed.clone(), reply };
        if self.assigns.send(request).is_ok() {
            if let Ok(result) = answer.await {
                return result;
            }
        }
        let batch = self
            .witness
            .before_starts(StartStream::Assigned, std::slice::from_ref(&witnessed))
            .await
            .map_err(not_witnessed)?;
        let assigned = store.assign_runs(term, &[assignment], accept_within).await?[0];
        let started = if assigned { vec![witnessed] } else { Vec::new() };
        self.witness.acknowledged(StartStream::Assigned, batch, &started).await;
        Ok(assigned)
    }

    /// Claim through the batcher (or directly, if it is gone).
    pub(super) async fn claim(&self, store: &Store, claim: &Claim<'_>) -> Result<Claimed, ClaimError> {
        let (reply, answer) = oneshot::channel();
        let request = ClaimRequest {
            job: claim.job.to_owned(),
            slot: claim.slot,
            trigger: claim.trigger,
            config_hash: claim.config_hash.to_owned(),
            skip_if_running: claim.skip_if_running,
            claimed_at: claim.claimed_at,
            planned_at: claim.planned_at,
            reply,
        };
        if self.claims.send(request).is_ok() {
            if let Ok(result) = answer.await {
                return result;
            }
        }
        store.claim_run(claim).await
    }

    /// The fenced start through the batcher (or directly, if it is gone), witnessed first.
    pub(super) async fn start(
        &self,
        store: &Store,
        term: &Term,
        run_id: i64,
        started: DateTime<Utc>,
        witnessed: WitnessedRun,
    ) -> Result<bool, ClaimError> {
        let (reply, answer) = oneshot::channel();
        if self.starts.send(StartRequest { run_id, started, witnessed: witnessed.clone(), reply }).is_ok() {
            if let Ok(result) = answer.await {
                return result;
            }
        }
        let batch = self
            .witness
            .before_starts(StartStream::Local, std::slice::from_ref(&witnessed))
            .await
            .map_err(not_witnessed)?;
        let began = store.start_runs(term, &[(run_id, started)]).await?[0];
        let started = if began { vec![witnessed] } else { Vec::new() };
        self.witness.acknowledged(StartStream::Local, batch, &started).await;
        Ok(began)
    }

    /// Record an outcome through the batcher; false when it was not recorded (the caller retries
    /// alone).
    pub(super) async fn finish(&self, run_id: i64, outcome: &RunOutcome) -> bool {
        let (reply, recorded) = oneshot::channel();
        let request = FinishRequest { run_id, outcome: outcome.clone(), reply };
        self.finishes.send(request).is_ok() && recorded.await.unwrap_or(false)
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
    planned_at: DateTime<Utc>,
    reply: oneshot::Sender<Result<Claimed, ClaimError>>,
}

/// The most claims (start times, outcomes) one statement carries.
const MAX_BATCH: usize = 2_000;
/// How long outcomes wait for others to share their statement: until none has come for
/// `RECORD_LINGER`, at most `RECORD_LINGER_MAX` after the first, and at most `MAX_WAITING` of
/// them. So a burst of runs ending together is written once the burst is over, not during it,
/// where its statements would take the CPU the burst's last requests and processes need.
const RECORD_LINGER: Duration = Duration::from_millis(25);
const RECORD_LINGER_MAX: Duration = Duration::from_millis(500);
const MAX_WAITING: usize = 20_000;

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
                planned_at: request.planned_at,
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

/// Hand `send` what is waiting (up to `MAX_BATCH` at a time), wait for it, and again, until
/// every sender is gone. With a `linger`, gather first, as long as requests keep coming (see
/// `RECORD_LINGER`): for writes that nothing waits on before its slot.
async fn batched<T, F, Fut>(mut requests: mpsc::UnboundedReceiver<T>, linger: Duration, mut send: F)
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(first) = requests.recv().await {
        let mut waiting = vec![first];
        if linger.is_zero() {
            take_waiting(&mut requests, &mut waiting, MAX_BATCH);
        } else {
            let first_came = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(linger).await;
                let before = waiting.len();
                take_waiting(&mut requests, &mut waiting, MAX_WAITING);
                let quiet = waiting.len() == before;
                if quiet || waiting.len() >= MAX_WAITING || first_came.elapsed() + linger > RECORD_LINGER_MAX {
                    break;
                }
            }
        }
        while !waiting.is_empty() {
            let rest = waiting.split_off(waiting.len().min(MAX_BATCH));
            send(std::mem::replace(&mut waiting, rest)).await;
        }
    }
}

/// Move what is waiting in `requests` into `waiting`, up to `limit` in all.
fn take_waiting<T>(requests: &mut mpsc::UnboundedReceiver<T>, waiting: &mut Vec<T>, limit: usize) {
    while waiting.len() < limit {
        match requests.try_recv() {
            Ok(request) => waiting.push(request),
            Err(_) => break,
        }
    }
}

/// A fenced start waiting for the batcher; answered whether the run may start.
struct StartRequest {
    run_id: i64,
    started: DateTime<Utc>,
    witnessed: WitnessedRun,
    reply: oneshot::Sender<Result<bool, ClaimError>>,
}

/// Start runs like `batch_claims` claims: what is waiting, in one fenced statement, at once (a
/// run waits for its answer before it executes, so nothing lingers). The coordinator records
/// the batch first; a batch it did not record is not sent (each run retries).
async fn batch_starts(
    store: Store,
    term: Term,
    witness: Arc<TermWitness>,
    requests: mpsc::UnboundedReceiver<StartRequest>,
) {
    batched(requests, Duration::ZERO, |batch: Vec<StartRequest>| async {
        let witnessed: Vec<WitnessedRun> = batch.iter().map(|r| r.witnessed.clone()).collect();
        let answers = match witness.before_starts(StartStream::Local, &witnessed).await {
            Ok(recorded) => {
                let runs: Vec<(i64, DateTime<Utc>)> = batch.iter().map(|r| (r.run_id, r.started)).collect();
                let answers = store.start_runs(&term, &runs).await;
                acknowledge(&witness, StartStream::Local, recorded, &witnessed, &answers).await;
                answers
            }
            Err(error) => Err(not_witnessed(error)),
        };
        for (index, request) in batch.into_iter().enumerate() {
            let _ = request.reply.send(answer_of(&answers, index));
        }
    })
    .await;
}

/// The answer of one request in a batch: the batch's own answer for it, or the batch's error.
fn answer_of(answers: &Result<Vec<bool>, ClaimError>, index: usize) -> Result<bool, ClaimError> {
    match answers {
        Ok(answers) => Ok(answers[index]),
        Err(ClaimError::Fenced { term, fence }) => Err(ClaimError::Fenced { term: *term, fence: *fence }),
        Err(ClaimError::NotWitnessed(why)) => Err(ClaimError::NotWitnessed(why.clone())),
        Err(error) => Err(ClaimError::Database(sqlx::Error::Protocol(error.to_string()))),
    }
}

/// Tell the witness how the ledger answered a batch it recorded (nothing, if it failed: the batch
/// stays pending, as it may have committed).
async fn acknowledge(
    witness: &TermWitness,
    stream: StartStream,
    recorded: Option<PlannedRange>,
    witnessed: &[WitnessedRun],
    answers: &Result<Vec<bool>, ClaimError>,
) {
    if let Ok(answers) = answers {
        let started: Vec<WitnessedRun> =
            witnessed.iter().zip(answers).filter(|(_, started)| **started).map(|(run, _)| run.clone()).collect();
        witness.acknowledged(stream, recorded, &started).await;
    }
}

fn not_witnessed(error: WitnessError) -> ClaimError {
    ClaimError::NotWitnessed(error.to_string())
}

/// An assignment (a fenced start on another replica) waiting for the batcher.
struct AssignRequest {
    assignment: Assignment,
    witnessed: WitnessedRun,
    reply: oneshot::Sender<Result<bool, ClaimError>>,
}

/// Assign runs like `batch_starts` starts them: what is waiting, witnessed, in one fenced
/// statement, at once.
async fn batch_assigns(
    store: Store,
    term: Term,
    accept_within: Duration,
    witness: Arc<TermWitness>,
    requests: mpsc::UnboundedReceiver<AssignRequest>,
) {
    batched(requests, Duration::ZERO, |batch: Vec<AssignRequest>| async {
        let witnessed: Vec<WitnessedRun> = batch.iter().map(|r| r.witnessed.clone()).collect();
        let answers = match witness.before_starts(StartStream::Assigned, &witnessed).await {
            Ok(recorded) => {
                let assignments: Vec<Assignment> = batch.iter().map(|r| r.assignment.clone()).collect();
                let answers = store.assign_runs(&term, &assignments, accept_within).await;
                acknowledge(&witness, StartStream::Assigned, recorded, &witnessed, &answers).await;
                answers
            }
            Err(error) => Err(not_witnessed(error)),
        };
        for (index, request) in batch.into_iter().enumerate() {
            let _ = request.reply.send(answer_of(&answers, index));
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
pub(super) struct LiveOutputs {
    tails: Arc<Mutex<HashMap<i64, (OutputTail, String)>>>,
}

impl LiveOutputs {
    /// Show `tail` live until the returned guard is dropped (the attempt ended; its outcome
    /// carries the final output).
    pub(super) fn watch(&self, run_id: i64, tail: OutputTail) -> LiveOutput {
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
pub(super) struct LiveOutput {
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
pub(super) async fn flush_live_outputs(store: Store, outputs: LiveOutputs, stop: CancellationToken) {
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

    /// When each call of `send` came (ms after the start) and how many requests it carried.
    async fn sends(linger: Duration, arrivals_ms: Vec<u64>) -> Vec<(u64, usize)> {
        let start = tokio::time::Instant::now();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for at in arrivals_ms {
                tokio::time::sleep_until(start + Duration::from_millis(at)).await;
                tx.send(at).unwrap();
            }
        });
        let sent = Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        batched(rx, linger, |batch: Vec<u64>| {
            let record = record.clone();
            async move { record.lock().unwrap().push((start.elapsed().as_millis() as u64, batch.len())) }
        })
        .await;
        sent.lock().unwrap().clone()
    }

    #[test]
    fn the_live_outputs_hold_only_the_runs_going() {
        let outputs = LiveOutputs::default();
        let going: Vec<LiveOutput> = (0..1_000).map(|run_id| outputs.watch(run_id, OutputTail::default())).collect();
        assert_eq!(outputs.tails.lock().unwrap().len(), 1_000);
        drop(going);
        assert!(outputs.tails.lock().unwrap().is_empty(), "the tails of ended attempts are kept");
        assert!(outputs.changed().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_wait_for_a_burst_to_end_and_a_lone_one_briefly() {
        // Alone: written a linger after it came.
        assert_eq!(sends(RECORD_LINGER, vec![0]).await, [(25, 1)]);
        // A burst of 30 over 290 ms: one statement once a linger passed with nothing new (the
        // last came in the linger that ended at 300 ms; the next, to 325 ms, was quiet).
        let burst: Vec<u64> = (0..30).map(|i| i * 10).collect();
        assert_eq!(sends(RECORD_LINGER, burst).await, [(325, 30)]);
        // A stream that never pauses is written at most RECORD_LINGER_MAX after its first.
        let stream: Vec<u64> = (0..100).map(|i| i * 10).collect();
        let sent = sends(RECORD_LINGER, stream).await;
        assert_eq!(sent.iter().map(|(_, n)| n).sum::<usize>(), 100);
        assert!(sent[0].0 <= RECORD_LINGER_MAX.as_millis() as u64, "{sent:?}");
        // Claims and starts do not linger.
        assert_eq!(sends(Duration::ZERO, vec![0, 100]).await, [(0, 1), (100, 1)]);
    }
}
