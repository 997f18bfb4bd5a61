//! The term's start witness: before a batch of fenced starts (or assignments to other replicas)
//! goes to the ledger, the runs it starts are recorded in the coordinator
//! (`leadership::StartWitness`), which a database failover cannot roll back. At a term's start,
//! what the coordinator's record says the ledger has forgotten (`forgotten_starts`).
//!
//! Invariant: no run executes unless a record naming it (a scheduled slot by `through`, a manual
//! or backfill run by its identity) was acknowledged by the coordinator before its fenced start
//! was sent, so a ledger that lost the start cannot make a new term run it again.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Mutex;

use crate::leadership::{StartRecord, StartWitness, WitnessError, WitnessedRun};
use crate::model::TriggerKind;
use crate::store::Store;
use crate::telemetry::metric;

/// Which batcher a batch comes from: each sends its batches one after another, but the two run
/// side by side, so the record keeps the last batch of each.
#[derive(Debug, Clone, Copy)]
pub(super) enum StartStream {
    /// Fenced starts of runs that execute on this replica.
    Local,
    /// Fenced starts that assign runs to other replicas (`run_on`).
    Assigned,
}

/// One term's writer of the start record: the record as last acknowledged, and the coordinator.
/// Writes are one at a time (the lock is held across the write), so the record only grows.
#[derive(Debug)]
pub(super) struct TermWitness {
    coordinator: Arc<dyn StartWitness>,
    record: Mutex<StartRecord>,
}

impl TermWitness {
    /// The witness of `term`, carrying over what the previous record still covers: its
    /// `through` and its recent manual and backfill runs (the last batches were the old term's,
    /// already judged).
    pub(super) fn new(coordinator: Arc<dyn StartWitness>, term: i64, previous: Option<StartRecord>) -> TermWitness {
        let previous = previous.unwrap_or_default();
        let record = StartRecord { term, through: previous.through, recent: previous.recent, ..StartRecord::default() };
        TermWitness { coordinator, record: Mutex::new(record) }
    }

    /// Record `runs` in the coordinator before their fenced starts are sent; an error means they
    /// may not be sent.
    pub(super) async fn before_starts(&self, stream: StartStream, runs: &[WitnessedRun]) -> Result<(), WitnessError> {
        if runs.is_empty() || crate::testing::no_start_witness() {
            return Ok(());
        }
        let mut record = self.record.lock().await;
        let next = with_starts(&record, stream, runs);
        let sent = std::time::Instant::now();
        self.coordinator.write(&next).await?;
        metrics::histogram!(metric::START_WITNESS).record(sent.elapsed().as_secs_f64());
        *record = next;
        Ok(())
    }
}

/// Pure: `record` after `runs` of `stream` (their latest planned start raises `through`; the
/// manual and backfill ones join `recent`, which keeps those planned within `RECENT` of the
/// newest and at most `RECENT_MAX`).
fn with_starts(record: &StartRecord, stream: StartStream, runs: &[WitnessedRun]) -> StartRecord {
    let mut next = record.clone();
    next.through = runs.iter().map(|run| run.planned).chain(record.through).max();
    let last: Vec<WitnessedRun> = runs.iter().take(StartRecord::LAST_BATCH).cloned().collect();
    match stream {
        StartStream::Local => next.last_starts = last,
        StartStream::Assigned => next.last_assignments = last,
    }
    next.recent.extend(runs.iter().filter(|run| run.trigger != TriggerKind::Schedule).cloned());
    if let Some(through) = next.through {
        let keep_after = through - chrono::Duration::from_std(StartRecord::RECENT).unwrap_or_default();
        next.recent.retain(|run| run.planned >= keep_after);
    }
    let excess = next.recent.len().saturating_sub(StartRecord::RECENT_MAX);
    next.recent.drain(..excess);
    next
}

/// What a new term must not run again: the ledger lost some of the previous term's last starts
/// (a database failover to a standby that had not received them), so every run the record
/// covers may have begun although the ledger does not show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ForgottenStarts {
    /// Scheduled slots whose planned start is at or before this may have begun.
    pub(super) through: DateTime<Utc>,
    /// Manual and backfill runs that may have begun.
    pub(super) recent: Vec<WitnessedRun>,
}

/// Why a slot is recorded `lost` when the ledger forgot its start.
pub(super) const FORGOTTEN_REASON: &str =
    "the ledger lost this claim in a database failover; it may have run, so it is not run again";

/// Whether the ledger still holds the last batches `record` names (as started by its term). A
/// batch of which the ledger holds no run was lost, and with it possibly any start before it
/// that the record covers (a failover keeps a prefix of the commits). `None`: nothing lost.
pub(super) async fn forgotten_starts(store: &Store, record: &StartRecord) -> Result<Option<ForgottenStarts>, sqlx::Error> {
    let Some(through) = record.through else { return Ok(None) };
    if crate::testing::no_start_witness() {
        return Ok(None);
    }
    for batch in [&record.last_starts, &record.last_assignments] {
        if batch.is_empty() {
            continue;
        }
        let runs: Vec<(String, DateTime<Utc>)> = batch.iter().map(|run| (run.job.clone(), run.slot)).collect();
        if store.started_by_term(record.term, &runs).await? == 0 {
            return Ok(Some(ForgottenStarts { through, recent: record.recent.clone() }));
        }
    }
    Ok(None)
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

    #[test]
    fn the_record_only_grows_and_keeps_each_streams_last_batch() {
        let empty = StartRecord { term: 7, ..StartRecord::default() };
        let first = with_starts(&empty, StartStream::Local, &[run("a", 10, Trigger::Schedule)]);
        assert_eq!(first.through, Some(at(10)));
        let second = with_starts(&first, StartStream::Assigned, &[run("b", 5, Trigger::Schedule)]);
        // An earlier planned start does not lower `through`; each stream keeps its own last batch.
        assert_eq!(second.through, Some(at(10)));
        assert_eq!(second.last_starts, vec![run("a", 10, Trigger::Schedule)]);
        assert_eq!(second.last_assignments, vec![run("b", 5, Trigger::Schedule)]);
        assert!(second.recent.is_empty(), "scheduled slots are covered by `through`");
        let many: Vec<WitnessedRun> = (0..20).map(|i| run("c", 20 + i, Trigger::Schedule)).collect();
        let third = with_starts(&second, StartStream::Local, &many);
        assert_eq!(third.last_starts.len(), StartRecord::LAST_BATCH);
        assert_eq!(third.through, Some(at(39)));
    }

    #[test]
    fn manual_and_backfill_runs_are_named_for_a_while_then_forgotten() {
        let record = StartRecord { term: 7, ..StartRecord::default() };
        let record = with_starts(&record, StartStream::Local, &[run("a", 0, Trigger::Manual { request: 3 })]);
        let record = with_starts(&record, StartStream::Local, &[run("a", 1, Trigger::Backfill { request: 4 })]);
        assert_eq!(record.recent.len(), 2);
        assert_eq!(record.recent[0].trigger(), Trigger::Manual { request: 3 });
        let later = StartRecord::RECENT.as_secs() as i64 + 1;
        let record = with_starts(&record, StartStream::Local, &[run("b", later, Trigger::Schedule)]);
        assert_eq!(record.recent, vec![run("a", 1, Trigger::Backfill { request: 4 })]);
        let burst: Vec<WitnessedRun> =
            (0..StartRecord::RECENT_MAX as i64 + 5).map(|i| run("c", later, Trigger::Backfill { request: i })).collect();
        let record = with_starts(&record, StartStream::Local, &burst);
        assert_eq!(record.recent.len(), StartRecord::RECENT_MAX);
        assert_eq!(record.recent.last().unwrap().request, Some(StartRecord::RECENT_MAX as i64 + 4));
    }

    #[test]
    fn a_new_term_carries_over_what_the_record_covers_but_not_the_last_batches() {
        let old = StartRecord {
            term: 3,
            through: Some(at(50)),
            last_starts: vec![run("a", 50, Trigger::Schedule)],
            last_assignments: vec![],
            recent: vec![run("a", 40, Trigger::Manual { request: 1 })],
        };
        let witness = TermWitness::new(Arc::new(crate::leadership::NoStartWitness), 9, Some(old));
        let record = witness.record.try_lock().unwrap().clone();
        assert_eq!(record.term, 9);
        assert_eq!(record.through, Some(at(50)));
        assert!(record.last_starts.is_empty());
        assert_eq!(record.recent.len(), 1);
    }
}
