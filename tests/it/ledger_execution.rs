//! The execution part of the ledger contract (run from `ledger`'s `contract!` on PostgreSQL and
//! SQLite): an assigned run is accepted only by its executor under its attempt; renewals and
//! outcomes are refused once the leader gave the attempt up, reassigned or cancelled it; the
//! leader's writes are fenced by its term; reaping leaves runs executing elsewhere alone.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tenure::leadership::Term;
use tenure::model::{RunOutcome, RunStatus, Trigger};
use tenure::store::{
    Assignment, AuditFilter, AuditRecord, CancelAnswer, Claim, ClaimError, ExecutionKey, GiveUp, Reads, Renewal,
    ReplicaOffer, SkipIfRunning, Store,
};

use crate::harness::wait_until;

fn slot(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, second).unwrap()
}

fn claim<'a>(job: &'a str, at: DateTime<Utc>, term: &'a Term, skip: SkipIfRunning) -> Claim<'a> {
    Claim {
        job,
        slot: at,
        trigger: Trigger::Schedule,
        term,
        node: "leader",
        config_hash: "hash",
        skip_if_running: skip,
        claimed_at: at,
        planned_at: at,
    }
}

fn offer(node: &str, tags: &[&str], max_runs: u32) -> ReplicaOffer {
    ReplicaOffer { node: node.to_owned(), tags: tags.iter().map(|t| (*t).to_owned()).collect(), max_runs }
}

fn key(run_id: i64, attempt: i32, executor: &str) -> ExecutionKey {
    ExecutionKey { run_id, attempt, executor: executor.to_owned() }
}

fn ended(status: RunStatus) -> RunOutcome {
    RunOutcome {
        status,
        exit_code: Some(0),
        http_status: None,
        error: None,
        output: "done".into(),
        began_at: None,
        finished_at: Utc::now(),
    }
}

const LONG: Duration = Duration::from_secs(60);

/// Claim `job` at `at` and assign it to `executor`; its run id.
async fn assigned(store: &Store, term: &Term, job: &str, at: DateTime<Utc>, executor: &str) -> i64 {
    let run = store.claim_run(&claim(job, at, term, SkipIfRunning::No)).await.unwrap().run_id;
    let assignment = Assignment { run_id: run, started_at: at, executor: executor.to_owned() };
    assert_eq!(store.assign_runs(term, &[assignment], LONG).await.unwrap(), vec![true]);
    run
}

/// Wait (bounded) until `run`'s attempt is past its lease by more than nothing.
async fn until_expired(store: &Store, run: i64) {
    let expired = wait_until(std::time::Duration::from_secs(5), || async {
        store.expired_executions(Duration::ZERO, 100).await.unwrap().iter().any(|e| e.key.run_id == run)
    })
    .await;
    assert!(expired, "run {run} never expired");
}

pub(crate) async fn an_assigned_run_is_accepted_only_by_its_executor_under_its_attempt(store: Store, reads: Reads) {
    let term = Term::for_tests(5, "c");
    store.begin_term(&term, "leader").await.unwrap();
    store.advertise(&offer("w1", &["gpu", "eu"], 1)).await.unwrap();
    store.advertise(&offer("w2", &[], 4)).await.unwrap();
    let live = store.live_replicas(LONG).await.unwrap();
    assert_eq!(
        live.iter().map(|r| (r.offer.clone(), r.load)).collect::<Vec<_>>(),
        vec![(offer("w1", &["gpu", "eu"], 1), 0), (offer("w2", &[], 4), 0)]
    );

    let run = assigned(&store, &term, "job", slot(1), "w1").await;
    let row = reads.run(run).await.unwrap().unwrap();
    assert_eq!((row.executor.as_deref(), row.started_at, row.status), (Some("w1"), Some(slot(1)), RunStatus::Running));
    // Retried after a lost acknowledgement: the same answer.
    let again = Assignment { run_id: run, started_at: slot(1), executor: "w1".into() };
    assert_eq!(store.assign_runs(&term, &[again], LONG).await.unwrap(), vec![true]);
    let load = store.live_replicas(LONG).await.unwrap();
    assert_eq!(load.iter().map(|r| r.load).collect::<Vec<_>>(), vec![1, 0]);
    assert_eq!(
        store.assigned_to("w1").await.unwrap().iter().map(|a| a.key.clone()).collect::<Vec<_>>(),
        vec![key(run, 1, "w1")]
    );
    assert!(store.assigned_to("w2").await.unwrap().is_empty());

    // Only (run, attempt 1, w1) accepts, once.
    assert_eq!(store.accept_execution(&key(run, 1, "w2"), LONG, 4).await.unwrap(), None);
    assert_eq!(store.accept_execution(&key(run, 2, "w1"), LONG, 4).await.unwrap(), None);
    let accepted = store.accept_execution(&key(run, 1, "w1"), LONG, 1).await.unwrap().expect("accepted");
    assert_eq!((accepted.job.as_str(), accepted.slot, accepted.term), ("job", slot(1), 5));
    assert_eq!(store.accept_execution(&key(run, 1, "w1"), LONG, 1).await.unwrap(), None);
    assert!(store.assigned_to("w1").await.unwrap().is_empty());

    // Capacity: w1 takes one accepted run at a time.
    let second = assigned(&store, &term, "other", slot(2), "w1").await;
    assert_eq!(store.accept_execution(&key(second, 1, "w1"), LONG, 1).await.unwrap(), None);
    assert!(store.finish_execution(&key(run, 1, "w1"), &ended(RunStatus::Succeeded)).await.unwrap());
    assert!(store.accept_execution(&key(second, 1, "w1"), LONG, 1).await.unwrap().is_some());
    let row = reads.run(run).await.unwrap().unwrap();
    assert_eq!((row.status, row.output.as_str()), (RunStatus::Succeeded, "done"));

    // `forbid` counts a run executing elsewhere.
    let skipped = store.claim_run(&claim("other", slot(3), &term, SkipIfRunning::Yes)).await.unwrap();
    assert_eq!(skipped.status, RunStatus::Skipped);

    // A newer term: the older one may neither assign nor give up; reaping leaves runs with an
    // executor alone (they keep their lease), and their executor still records the outcome.
    let newer = Term::for_tests(6, "c");
    store.begin_term(&newer, "leader-2").await.unwrap();
    let stale = store.claim_run(&claim("job", slot(4), &newer, SkipIfRunning::No)).await.unwrap().run_id;
    let by_old = Assignment { run_id: stale, started_at: slot(4), executor: "w2".into() };
    assert!(matches!(store.assign_runs(&term, &[by_old], LONG).await, Err(ClaimError::Fenced { .. })));
    assert_eq!(store.reap_lost(&newer, &[]).await.unwrap(), 0);
    assert_eq!(store.renew_execution(&key(second, 1, "w1"), LONG, "half").await.unwrap(), Renewal::Renewed);
    assert!(store.finish_execution(&key(second, 1, "w1"), &ended(RunStatus::Failed)).await.unwrap());
    assert_eq!(reads.run(second).await.unwrap().unwrap().status, RunStatus::Failed);

    // A replica shutting down withdraws: no longer live, no longer on the dashboard.
    store.withdraw("w1").await.unwrap();
    assert_eq!(
        store.live_replicas(LONG).await.unwrap().iter().map(|r| r.offer.node.as_str()).collect::<Vec<_>>(),
        ["w2"]
    );
    assert_eq!(reads.replica_loads().await.unwrap().len(), 1);

    // An assignment its replica never accepted is given up `lost`, saying so.
    let unaccepted = store.claim_run(&claim("slow", slot(5), &newer, SkipIfRunning::No)).await.unwrap().run_id;
    let assignment = Assignment { run_id: unaccepted, started_at: slot(5), executor: "w2".into() };
    assert_eq!(store.assign_runs(&newer, &[assignment], Duration::ZERO).await.unwrap(), vec![true]);
    until_expired(&store, unaccepted).await;
    let expired = store.expired_executions(Duration::ZERO, 100).await.unwrap();
    let expired = expired.iter().find(|expired| expired.key.run_id == unaccepted).unwrap();
    assert!(store.give_up_execution(&newer, expired, &GiveUp::End, Duration::ZERO, LONG).await.unwrap());
    let row = reads.run(unaccepted).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.error.as_deref()),
        (RunStatus::Lost, Some("lost: its executor w2 did not accept it in time"))
    );
}

pub(crate) async fn renewals_and_outcomes_are_refused_once_an_attempt_is_given_up_reassigned_or_cancelled(
    store: Store,
    reads: Reads,
) {
    let term = Term::for_tests(5, "c");
    store.begin_term(&term, "leader").await.unwrap();
    let run = assigned(&store, &term, "job", slot(1), "w1").await;
    let first = key(run, 1, "w1");
    store.accept_execution(&first, LONG, 8).await.unwrap().expect("accepted");
    assert_eq!(store.renew_execution(&first, LONG, "out").await.unwrap(), Renewal::Renewed);
    assert!(store.expired_executions(Duration::ZERO, 100).await.unwrap().is_empty());

    // Its lease lapses: the leader reassigns the next attempt to w2, only while it is still
    // expired (a renewal in between would have kept it).
    assert_eq!(store.renew_execution(&first, Duration::ZERO, "out").await.unwrap(), Renewal::Renewed);
    until_expired(&store, run).await;
    let expired = store.expired_executions(Duration::ZERO, 100).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert!(expired[0].accepted && !expired[0].cancel_requested);
    // Not expired by the grace yet: nothing happens.
    let then = GiveUp::RetryOn("w2".into());
    assert!(!store.give_up_execution(&term, &expired[0], &then, LONG, LONG).await.unwrap());
    assert!(store.give_up_execution(&term, &expired[0], &then, Duration::ZERO, LONG).await.unwrap());
    let row = reads.run(run).await.unwrap().unwrap();
    assert_eq!((row.attempt, row.executor.as_deref(), row.status), (2, Some("w2"), RunStatus::Running));
    assert!(row.error.as_deref().is_some_and(|e| e.starts_with("attempt 1: lost")), "{:?}", row.error);
    // The old attempt's replica is refused everything.
    assert_eq!(store.renew_execution(&first, LONG, "late").await.unwrap(), Renewal::Refused);
    assert!(!store.finish_execution(&first, &ended(RunStatus::Succeeded)).await.unwrap());
    assert!(!store.retry_execution(&first, "failed", LONG).await.unwrap());
    assert!(store.give_up_execution(&term, &expired[0], &then, Duration::ZERO, LONG).await.is_ok_and(|done| !done));

    // The second attempt: accepted by w2, retried there (the job's retries), the old key refused.
    let second = key(run, 2, "w2");
    assert_eq!(store.assigned_to("w2").await.unwrap().len(), 1);
    store.accept_execution(&second, LONG, 8).await.unwrap().expect("accepted");
    assert!(store.retry_execution(&second, "attempt 2: exit 1", LONG).await.unwrap());
    let third = key(run, 3, "w2");
    assert_eq!(store.renew_execution(&second, LONG, "").await.unwrap(), Renewal::Refused);
    assert_eq!(store.renew_execution(&third, LONG, "").await.unwrap(), Renewal::Renewed);

    // `replace`: a cancel request (fenced) refuses the next renewal; the executor's report of the
    // kill is accepted.
    let newer = assigned(&store, &term, "job", slot(2), "w1").await;
    assert_eq!(store.request_cancel(&term, "job", newer).await.unwrap(), 1);
    assert_eq!(
        store.renew_execution(&third, LONG, "").await.unwrap(),
        Renewal::CancelRequested { reason: "replaced by a newer run".into() }
    );
    assert_eq!(store.executions_going("job").await.unwrap(), 2);
    let killed = RunOutcome { error: Some("replaced by a newer run".into()), ..ended(RunStatus::Killed) };
    assert!(store.finish_execution(&third, &killed).await.unwrap());
    assert_eq!(store.executions_going("job").await.unwrap(), 1);

    // Given up for good: `lost`, and nothing of its executor is accepted afterwards.
    let last = key(newer, 1, "w1");
    store.accept_execution(&last, Duration::ZERO, 8).await.unwrap().expect("accepted");
    until_expired(&store, newer).await;
    let expired = store.expired_executions(Duration::ZERO, 100).await.unwrap();
    let stale_term = Term::for_tests(4, "c");
    assert!(matches!(
        store.give_up_execution(&stale_term, &expired[0], &GiveUp::End, Duration::ZERO, LONG).await,
        Err(ClaimError::Fenced { .. })
    ));
    assert!(store.give_up_execution(&term, &expired[0], &GiveUp::End, Duration::ZERO, LONG).await.unwrap());
    let row = reads.run(newer).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.error.as_deref()),
        (RunStatus::Lost, Some("lost: its executor w1 stopped renewing its execution lease"))
    );
    assert_eq!(store.renew_execution(&last, LONG, "").await.unwrap(), Renewal::Refused);
    assert!(!store.finish_execution(&last, &ended(RunStatus::Succeeded)).await.unwrap());
    // A cancel requested by an older term is fenced.
    let newest = Term::for_tests(7, "c");
    store.begin_term(&newest, "leader-2").await.unwrap();
    assert!(matches!(store.request_cancel(&term, "job", 0).await, Err(ClaimError::Fenced { .. })));
}

/// An operator's cancel: the web records who asked and why on the running row (a finished run
/// and an unknown one are told apart); only the current term acts on it, under the fence; the
/// executor is then refused its renewal and told the reason, and the leader's give-up records it
/// too; an older term's claim never started is recorded `killed` at once.
pub(crate) async fn an_operators_cancel_is_recorded_by_the_web_and_acted_on_only_by_the_current_term(
    store: Store,
    reads: Reads,
) {
    let old = Term::for_tests(5, "c");
    store.begin_term(&old, "leader").await.unwrap();
    let remote = assigned(&store, &old, "job", slot(1), "w1").await;
    let attempt = key(remote, 1, "w1");
    store.accept_execution(&attempt, LONG, 8).await.unwrap().expect("accepted");
    let unstarted = store.claim_run(&claim("other", slot(1), &old, SkipIfRunning::No)).await.unwrap().run_id;
    let done = store.claim_run(&claim("done", slot(1), &old, SkipIfRunning::No)).await.unwrap().run_id;
    store.finish_run(done, &ended(RunStatus::Succeeded)).await.unwrap();

    let why = "cancelled by admin (api): wrong input";
    let audit = AuditRecord::by("admin", "cancel");
    assert_eq!(reads.cancel_run(remote, why, &audit).await.unwrap(), CancelAnswer::Asked { job: "job".into() });
    // A second request keeps the first one's reason.
    assert_eq!(
        reads.cancel_run(remote, "cancelled by admin (api): again", &audit).await.unwrap(),
        CancelAnswer::Asked { job: "job".into() }
    );
    assert_eq!(
        reads.cancel_run(unstarted, "cancelled by admin (dashboard)", &audit).await.unwrap(),
        CancelAnswer::Asked { job: "other".into() }
    );
    assert_eq!(reads.cancel_run(done, why, &audit).await.unwrap(), CancelAnswer::Ended(RunStatus::Succeeded));
    assert_eq!(reads.cancel_run(999_999, why, &audit).await.unwrap(), CancelAnswer::NoSuchRun);
    // Each request asked is audited with it; one that found no running run changed nothing.
    let filter = AuditFilter { action: Some("cancel".into()), limit: 10, ..AuditFilter::default() };
    assert_eq!(reads.audit(&filter).await.unwrap().len(), 3);
    // Asked, not acted on: the executor still renews.
    assert_eq!(store.renew_execution(&attempt, LONG, "").await.unwrap(), Renewal::Renewed);
    let pending: Vec<(i64, String)> =
        store.pending_cancels().await.unwrap().into_iter().map(|cancel| (cancel.run_id, cancel.reason)).collect();
    assert_eq!(pending, [(remote, why.to_owned()), (unstarted, "cancelled by admin (dashboard)".to_owned())]);

    // A newer term holds the fence: the stale leader's attempt to act is refused, nothing changes.
    let new = Term::for_tests(6, "c");
    store.begin_term(&new, "leader-2").await.unwrap();
    let stale = store.apply_cancels(&old, &[remote, unstarted]).await;
    assert!(matches!(stale, Err(ClaimError::Fenced { term: 5, fence: 6 })), "{stale:?}");
    // (Renewed for no time at all: its lease lapses at once, for the give-up below.)
    assert_eq!(store.renew_execution(&attempt, Duration::ZERO, "").await.unwrap(), Renewal::Renewed);
    assert_eq!(store.pending_cancels().await.unwrap().len(), 2);

    // The current term acts: the executor is refused its renewal with the operator's reason, and
    // the older term's unstarted claim is recorded `killed` (no one would stop it).
    let mut marked = store.apply_cancels(&new, &[remote, unstarted]).await.unwrap();
    marked.sort();
    assert_eq!(marked, [remote, unstarted]);
    assert!(store.pending_cancels().await.unwrap().is_empty());
    assert_eq!(
        store.renew_execution(&attempt, LONG, "").await.unwrap(),
        Renewal::CancelRequested { reason: why.into() }
    );
    let row = reads.run(unstarted).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.error.as_deref()),
        (RunStatus::Killed, Some("cancelled by admin (dashboard) before the run started"))
    );
    // Acting twice changes nothing more.
    assert!(store.apply_cancels(&new, &[remote]).await.unwrap().is_empty());

    // An executor that vanished: the leader's give-up records the operator's reason, `killed`.
    until_expired(&store, remote).await;
    let expired = store.expired_executions(Duration::ZERO, 100).await.unwrap();
    assert!(expired[0].cancel_requested);
    assert!(store.give_up_execution(&new, &expired[0], &GiveUp::End, Duration::ZERO, LONG).await.unwrap());
    let row = reads.run(remote).await.unwrap().unwrap();
    assert_eq!((row.status, row.error.as_deref()), (RunStatus::Killed, Some(why)));
}
