//! The execution part of the ledger contract (run from `ledger`'s `contract!` on PostgreSQL and
//! SQLite): an assigned run is accepted only by its executor under its attempt; renewals and
//! outcomes are refused once the leader gave the attempt up, reassigned or cancelled it; the
//! leader's writes are fenced by its term; reaping leaves runs executing elsewhere alone.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tenure::leadership::Term;
use tenure::model::{RunOutcome, RunStatus, Trigger};
use tenure::store::{
    Assignment, Claim, ClaimError, ExecutionKey, GiveUp, Reads, Renewal, ReplicaOffer, SkipIfRunning, Store,
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
    assert_eq!(store.renew_execution(&third, LONG, "").await.unwrap(), Renewal::CancelRequested);
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
    assert_eq!(row.status, RunStatus::Lost);
    assert_eq!(store.renew_execution(&last, LONG, "").await.unwrap(), Renewal::Refused);
    assert!(!store.finish_execution(&last, &ended(RunStatus::Succeeded)).await.unwrap());
    // A cancel requested by an older term is fenced.
    let newest = Term::for_tests(7, "c");
    store.begin_term(&newest, "leader-2").await.unwrap();
    assert!(matches!(store.request_cancel(&term, "job", 0).await, Err(ClaimError::Fenced { .. })));
}
