//! The term's start witness: before a batch of fenced starts (or assignments to other replicas)
//! goes to the ledger, the runs it starts are recorded in the coordinator
//! (`leadership::StartWitness`), which a database failover cannot roll back. At a term's start,
//! what the coordinator's record says the ledger may have forgotten (`forgotten_starts`).
//!
//! Invariant: no run executes unless a record covering it (a scheduled slot by `through` and by
//! its batch's planned range, a manual or backfill run by its identity) was acknowledged by the
//! coordinator before its fenced start was sent, so a ledger that lost the start cannot make a
//! new term run it again.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::Scheduler;
use crate::leadership::{
    LeaderTerm, PlannedRange, StartRecord, StartWitness, StreamStarts, TermStarts, WitnessError, WitnessedRun,
};
use crate::model::{RunStatus, TriggerKind};
use crate::store::{ClaimError, Store, UnrunSlots};
use crate::telemetry::metric;

/// Which batcher a batch comes from: each sends its batches one after another, but the two run
/// side by side, so the record keeps each one's apart.
#[derive(Debug, Clone, Copy)]
pub(super) enum StartStream {
    /// Fenced starts of runs that execute on this replica.
    Local,
    /// Fenced starts that assign runs to other replicas (`run_on`).
    Assigned,
}

/// One term's writer of the start record. Writes are one at a time (the lock is held across
/// the write), so the record the coordinator holds only ever covers more.
#[derive(Debug)]
pub(super) struct TermWitness {
    coordinator: Arc<dyn StartWitness>,
    /// The record as this term last wrote it (or will next write it); `terms[0]` is this term's.
    record: Mutex<StartRecord>,
}

impl TermWitness {
    /// The witness of the term `ours`, carrying over what the previous record covers: its
    /// `through`, its recent manual and backfill runs, and its terms' batches (until this term
    /// has a batch of its own acknowledged: then the ledger holds this term's judgment of them).
    pub(super) fn new(
        coordinator: Arc<dyn StartWitness>,
        ours: TermStarts,
        previous: Option<StartRecord>,
    ) -> TermWitness {
        let previous = previous.unwrap_or_default();
        let mut terms = vec![ours.clone()];
        terms.extend(previous.terms);
        let assume_lost = previous.assume_lost || terms.len() > StartRecord::TERMS_MAX;
        terms.truncate(StartRecord::TERMS_MAX);
        let record =
            StartRecord { term: ours.term, through: previous.through, terms, assume_lost, recent: previous.recent };
        TermWitness { coordinator, record: Mutex::new(record) }
    }

    /// Record `runs` in the coordinator before their fenced starts are sent; an error means they
    /// may not be sent. The answer names the batch for `acknowledged`.
    pub(super) async fn before_starts(
        &self,
        stream: StartStream,
        runs: &[WitnessedRun],
    ) -> Result<Option<PlannedRange>, WitnessError> {
        if runs.is_empty() || crate::testing::no_start_witness() {
            return Ok(None);
        }
        let mut record = self.record.lock().await;
        let (next, range) = with_starts(&record, stream, runs);
        let sent = std::time::Instant::now();
        self.coordinator.write(&next).await?;
        metrics::histogram!(metric::START_WITNESS).record(sent.elapsed().as_secs_f64());
        *record = next;
        Ok(Some(range))
    }

    /// The ledger answered the statement of `batch`: it is no longer pending, and the runs it
    /// `started` are what a later term looks for. Written with the next batch.
    pub(super) async fn acknowledged(
        &self,
        stream: StartStream,
        batch: Option<PlannedRange>,
        started: &[WitnessedRun],
    ) {
        if let Some(batch) = batch {
            let mut record = self.record.lock().await;
            *record = with_acknowledged(&record, stream, batch, started);
        }
    }
}

fn stream_of(record: &mut StartRecord, stream: StartStream) -> &mut StreamStarts {
    let ours = &mut record.terms[0];
    match stream {
        StartStream::Local => &mut ours.starts,
        StartStream::Assigned => &mut ours.assignments,
    }
}

/// Pure: `record` after `runs` of `stream` were recorded to be sent (their latest planned start
/// raises `through`; their planned range joins the pending batches; the manual and backfill
/// ones join `recent`, which keeps those planned within `RECENT` of `through`, at most
/// `RECENT_MAX`), and the range.
fn with_starts(record: &StartRecord, stream: StartStream, runs: &[WitnessedRun]) -> (StartRecord, PlannedRange) {
    let mut next = record.clone();
    let from = runs.iter().map(|run| run.planned).min().expect("a batch has runs");
    let to = runs.iter().map(|run| run.planned).max().expect("a batch has runs");
    let range = PlannedRange { from, to };
    next.through = Some(next.through.map_or(to, |through| through.max(to)));
    let pending = &mut stream_of(&mut next, stream).pending;
    pending.push(range);
    if pending.len() > StartRecord::PENDING_MAX {
        // Kept apart, the oldest two become one range covering both: more, never less.
        let (first, second) = (pending.remove(0), pending.remove(0));
        pending.insert(0, PlannedRange { from: first.from.min(second.from), to: first.to.max(second.to) });
    }
    next.recent.extend(runs.iter().filter(|run| run.trigger != TriggerKind::Schedule).cloned());
    let keep_after =
        next.through.expect("raised above") - chrono::Duration::from_std(StartRecord::RECENT).unwrap_or_default();
    next.recent.retain(|run| run.planned >= keep_after);
    let excess = next.recent.len().saturating_sub(StartRecord::RECENT_MAX);
    next.recent.drain(..excess);
    (next, range)
}

/// Pure: `record` once the ledger answered `batch`'s statement, having started `started`. A
/// batch that started something is this term's newest acknowledged one, and with it found in the
/// ledger nothing before it can be missing: the older terms' batches are no longer carried.
fn with_acknowledged(
    record: &StartRecord,
    stream: StartStream,
    batch: PlannedRange,
    started: &[WitnessedRun],
) -> StartRecord {
    let mut next = record.clone();
    let ours = stream_of(&mut next, stream);
    if let Some(index) = ours.pending.iter().position(|pending| *pending == batch) {
        ours.pending.remove(index);
    }
    if !started.is_empty() {
        ours.acknowledged = started.iter().take(StartRecord::ACKNOWLEDGED_NAMES).cloned().collect();
        next.terms.truncate(1);
        next.assume_lost = false;
    }
    next
}

/// Which scheduled slots may have begun under an older term although the ledger does not show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ForgottenSlots {
    /// The ledger lost commits: every slot planned at or before this instant.
    Through(DateTime<Utc>),
    /// The ledger may lack the batches in flight when the older term ended: slots planned within.
    Within(Vec<PlannedRange>),
}

impl ForgottenSlots {
    pub(super) fn covers(&self, planned: DateTime<Utc>) -> bool {
        match self {
            ForgottenSlots::Through(through) => planned <= *through,
            ForgottenSlots::Within(ranges) => ranges.iter().any(|range| range.contains(planned)),
        }
    }
}

/// What a new term must not run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ForgottenStarts {
    pub(super) slots: ForgottenSlots,
    /// Manual and backfill runs that may have begun.
    pub(super) runs: Vec<WitnessedRun>,
}

/// Why a slot is recorded `lost` when the ledger forgot its start.
pub(super) const FORGOTTEN_REASON: &str =
    "the ledger lost this claim in a database failover; it may have run, so it is not run again";

/// What the ledger may have forgotten of the starts `record` covers, judged by each of its terms,
/// newest first, against the ledger as it is now (on `timeline`):
/// - a term's acknowledged batch the ledger does not hold (no run of it started by that term)
///   means the ledger lost commits; a failover keeps a prefix of the commits, so anything the
///   record covers may be missing: everything is forgotten;
/// - otherwise the batches sent and not acknowledged may have committed and been lost, unless
///   the ledger is on the term's timeline (no promotion since) and its commits survive a crash;
/// - a term whose acknowledged batch the ledger holds vouches for everything before it.
///
/// `None`: nothing forgotten.
pub(super) async fn forgotten_starts(
    store: &Store,
    record: &StartRecord,
    timeline: Option<i64>,
) -> Result<Option<ForgottenStarts>, sqlx::Error> {
    let Some(through) = record.through else { return Ok(None) };
    if crate::testing::no_start_witness() {
        return Ok(None);
    }
    let everything = ForgottenStarts { slots: ForgottenSlots::Through(through), runs: record.recent.clone() };
    if record.assume_lost {
        return Ok(Some(everything));
    }
    let mut ranges = Vec::new();
    for term in &record.terms {
        let mut vouched = false;
        for stream in [&term.starts, &term.assignments] {
            if stream.acknowledged.is_empty() {
                continue;
            }
            let runs: Vec<(String, DateTime<Utc>)> =
                stream.acknowledged.iter().map(|run| (run.job.clone(), run.slot)).collect();
            if store.started_by_term(term.term, &runs).await? == 0 {
                return Ok(Some(everything));
            }
            vouched = true;
        }
        let trusted = term.timeline.is_some() && term.timeline == timeline && term.crash_safe;
        if !trusted {
            ranges.extend(term.starts.pending.iter().chain(&term.assignments.pending).copied());
        }
        if vouched {
            break;
        }
    }
    if ranges.is_empty() {
        return Ok(None);
    }
    let runs =
        record.recent.iter().filter(|run| ranges.iter().any(|range| range.contains(run.planned))).cloned().collect();
    Ok(Some(ForgottenStarts { slots: ForgottenSlots::Within(ranges), runs }))
}

impl Scheduler {
    /// Read the coordinator's start record and judge whether the ledger forgot starts it names
    /// (`forgotten_starts`); record the manual and backfill runs it forgot `lost`, and
    /// return this term's witness with the instant up to which scheduled slots were forgotten.
    /// Done before this term's first start, so the record it judges is the older terms'. `None`
    /// when this term must not fire.
    pub(super) async fn judge_start_witness(
        &mut self,
        leader: &LeaderTerm,
        shutdown: &CancellationToken,
    ) -> Option<(Arc<TermWitness>, Option<ForgottenSlots>)> {
        loop {
            let judged = match (leader.starts.read().await, self.store.history().await) {
                (Ok(Some(record)), Ok(history)) => forgotten_starts(&self.store, &record, history.timeline)
                    .await
                    .map(|forgotten| (Some(record), history, forgotten))
                    .map_err(|error| error.to_string()),
                (Ok(None), Ok(history)) => Ok((None, history, None)),
                (Err(error), _) => Err(error.to_string()),
                (_, Err(error)) => Err(error.to_string()),
            };
            let (record, history, forgotten) = match judged {
                Ok(judged) => judged,
                Err(error) => {
                    tracing::warn!(%error, "could not read the start witness or the ledger; retrying");
                    if !self.retry_pause(leader, shutdown).await || self.refused_by_clock(leader) {
                        return None;
                    }
                    continue;
                }
            };
            let slots = match forgotten {
                Some(forgotten) => {
                    tracing::error!(
                        term = leader.term.revision(),
                        older_term = record.as_ref().map(|record| record.term),
                        covered = ?forgotten.slots,
                        "the ledger may lack starts that the coordinator recorded (a database failover to a \
                         standby that had not received the last commits): every slot they may cover is recorded \
                         lost, none is run again; run PostgreSQL with synchronous replication to lose nothing"
                    );
                    if !self.record_forgotten_runs(leader, &forgotten.runs, shutdown).await {
                        return None;
                    }
                    Some(forgotten.slots)
                }
                None => None,
            };
            let ours = TermStarts {
                term: leader.term.revision(),
                timeline: history.timeline,
                crash_safe: history.crash_safe,
                ..TermStarts::default()
            };
            let witness = TermWitness::new(leader.starts.clone(), ours, record);
            return Some((Arc::new(witness), slots));
        }
    }

    /// Record the manual and backfill runs the ledger forgot `lost` (each stays one row: a
    /// trigger or queued backfill slot still pending finds it and runs nothing). False when this
    /// term must not fire.
    async fn record_forgotten_runs(
        &mut self,
        leader: &LeaderTerm,
        runs: &[WitnessedRun],
        shutdown: &CancellationToken,
    ) -> bool {
        let config_hash = self.jobs.borrow().hash().to_owned();
        for run in runs {
            loop {
                let unrun = UnrunSlots {
                    job: &run.job,
                    slots: std::slice::from_ref(&run.slot),
                    status: RunStatus::Lost,
                    trigger: run.trigger(),
                    term: &leader.term,
                    node: &self.node_id,
                    config_hash: &config_hash,
                    error: FORGOTTEN_REASON,
                };
                match self.store.record_slots(&unrun).await {
                    Ok(recorded) => {
                        metrics::counter!(metric::FORGOTTEN_STARTS).increment(recorded);
                        break;
                    }
                    Err(ClaimError::Fenced { fence, .. }) => {
                        tracing::warn!(
                            term = leader.term.revision(),
                            fence,
                            "a newer term holds the fence; stepping down"
                        );
                        leader.step_down.cancel();
                        return false;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not record the runs the ledger forgot; retrying");
                        if !self.retry_pause(leader, shutdown).await || self.refused_by_clock(leader) {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Trigger;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn run(job: &str, slot: i64, trigger: Trigger) -> WitnessedRun {
        WitnessedRun::new(job, at(slot), at(slot), trigger)
    }

    fn ours(term: i64) -> StartRecord {
        StartRecord { term, terms: vec![TermStarts { term, ..TermStarts::default() }], ..StartRecord::default() }
    }

    #[test]
    fn a_batch_is_pending_until_acknowledged_and_through_only_grows() {
        let (first, range) = with_starts(&ours(7), StartStream::Local, &[run("a", 10, Trigger::Schedule)]);
        assert_eq!(first.through, Some(at(10)));
        assert_eq!(first.terms[0].starts.pending, [PlannedRange { from: at(10), to: at(10) }]);
        let (second, _) = with_starts(&first, StartStream::Assigned, &[run("b", 5, Trigger::Schedule)]);
        assert_eq!(second.through, Some(at(10)), "an earlier planned start does not lower it");
        assert_eq!(second.terms[0].assignments.pending.len(), 1);
        let acked = with_acknowledged(&second, StartStream::Local, range, &[run("a", 10, Trigger::Schedule)]);
        assert!(acked.terms[0].starts.pending.is_empty());
        assert_eq!(acked.terms[0].starts.acknowledged, [run("a", 10, Trigger::Schedule)]);
        assert_eq!(acked.terms[0].assignments.pending.len(), 1, "the other batcher's batch is still out");
        assert!(acked.recent.is_empty(), "scheduled slots are covered by `through` and the ranges");
        let many: Vec<WitnessedRun> = (0..20).map(|i| run("c", 20 + i, Trigger::Schedule)).collect();
        let (third, range) = with_starts(&acked, StartStream::Local, &many);
        assert_eq!(range, PlannedRange { from: at(20), to: at(39) });
        let third = with_acknowledged(&third, StartStream::Local, range, &many);
        assert_eq!(third.terms[0].starts.acknowledged.len(), StartRecord::ACKNOWLEDGED_NAMES);
        // Batches that are never answered are merged, never dropped.
        let mut record = third;
        for i in 0..(StartRecord::PENDING_MAX as i64 + 3) {
            record = with_starts(&record, StartStream::Local, &[run("d", 100 + i, Trigger::Schedule)]).0;
        }
        let pending = &record.terms[0].starts.pending;
        assert_eq!(pending.len(), StartRecord::PENDING_MAX);
        assert_eq!(pending[0], PlannedRange { from: at(100), to: at(103) });
    }

    #[test]
    fn manual_and_backfill_runs_are_named_for_a_while_then_forgotten() {
        let record = with_starts(&ours(7), StartStream::Local, &[run("a", 0, Trigger::Manual { request: 3 })]).0;
        let record = with_starts(&record, StartStream::Local, &[run("a", 1, Trigger::Backfill { request: 4 })]).0;
        assert_eq!(record.recent.len(), 2);
        assert_eq!(record.recent[0].trigger(), Trigger::Manual { request: 3 });
        let later = StartRecord::RECENT.as_secs() as i64 + 1;
        let record = with_starts(&record, StartStream::Local, &[run("b", later, Trigger::Schedule)]).0;
        assert_eq!(record.recent, vec![run("a", 1, Trigger::Backfill { request: 4 })]);
        let burst: Vec<WitnessedRun> = (0..StartRecord::RECENT_MAX as i64 + 5)
            .map(|i| run("c", later, Trigger::Backfill { request: i }))
            .collect();
        let record = with_starts(&record, StartStream::Local, &burst).0;
        assert_eq!(record.recent.len(), StartRecord::RECENT_MAX);
        assert_eq!(record.recent.last().unwrap().request, Some(StartRecord::RECENT_MAX as i64 + 4));
    }

    #[test]
    fn a_new_term_carries_the_older_terms_until_a_batch_of_its_own_is_acknowledged() {
        let old = with_starts(&ours(3), StartStream::Local, &[run("a", 40, Trigger::Manual { request: 1 })]).0;
        let witness = TermWitness::new(
            Arc::new(crate::leadership::NoStartWitness),
            TermStarts { term: 9, ..TermStarts::default() },
            Some(old),
        );
        let record = witness.record.try_lock().unwrap().clone();
        assert_eq!((record.term, record.through, record.recent.len()), (9, Some(at(40)), 1));
        assert_eq!(record.terms.iter().map(|t| t.term).collect::<Vec<_>>(), [9, 3]);
        let (sent, range) = with_starts(&record, StartStream::Local, &[run("b", 50, Trigger::Schedule)]);
        let unstarted = with_acknowledged(&sent, StartStream::Local, range, &[]);
        assert_eq!(unstarted.terms.len(), 2, "a batch that started nothing vouches for nothing");
        let started = with_acknowledged(&sent, StartStream::Local, range, &[run("b", 50, Trigger::Schedule)]);
        assert_eq!(started.terms.len(), 1);
        // Too many terms in a row that never had a batch acknowledged: judged as lost.
        let mut record = Some(ours(1));
        for term in 2..(StartRecord::TERMS_MAX as i64 + 3) {
            let witness = TermWitness::new(
                Arc::new(crate::leadership::NoStartWitness),
                TermStarts { term, ..TermStarts::default() },
                record,
            );
            record = Some(witness.record.try_lock().unwrap().clone());
        }
        let record = record.unwrap();
        assert_eq!(record.terms.len(), StartRecord::TERMS_MAX);
        assert!(record.assume_lost);
    }
}
