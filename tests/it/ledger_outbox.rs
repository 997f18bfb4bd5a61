//! The notification outbox's part of the ledger contract (run from `ledger`'s `contract!` on
//! PostgreSQL and SQLite): every way an outcome is recorded writes its events in the same
//! statement; a delivery is held by one term, and an older term's answer never overwrites a
//! newer term's.

use chrono::{DateTime, Duration, SubsecRound, TimeZone, Utc};
use tenure::leadership::Term;
use tenure::model::{RunOutcome, RunStatus, Trigger};
use tenure::store::{Claim, ClaimError, Delivery, LiveNode, NotifyRoute, Reads, SkipIfRunning, Store, UnrunSlots};

fn slot(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, second).unwrap()
}

fn claim<'a>(job: &'a str, at: DateTime<Utc>, term: &'a Term) -> Claim<'a> {
    Claim {
        job,
        slot: at,
        trigger: Trigger::Schedule,
        term,
        node: "n",
        config_hash: "hash",
        skip_if_running: SkipIfRunning::No,
        claimed_at: at,
        planned_at: at,
    }
}

fn route(job: &str, target: &str, events: &str, late_ms: Option<i64>) -> NotifyRoute {
    NotifyRoute {
        job: job.to_owned(),
        target: target.to_owned(),
        label: format!("https://{target}.example"),
        events: events.to_owned(),
        late_ms,
    }
}

fn ended(status: RunStatus, at: DateTime<Utc>) -> RunOutcome {
    RunOutcome {
        status,
        exit_code: None,
        http_status: None,
        error: None,
        output: String::new(),
        began_at: None,
        finished_at: at,
    }
}

/// (run id, event, target) of every event of `runs`, in order.
async fn events(reads: &Reads, runs: &[i64]) -> Vec<(i64, String, String)> {
    let mut all = Vec::new();
    for run in runs {
        for event in reads.run_notifications(*run).await.unwrap() {
            all.push((*run, event.event, event.target));
        }
    }
    all
}

pub(crate) async fn every_recorded_outcome_writes_the_events_its_routes_ask_for(store: Store, reads: Reads) {
    let term = Term::for_tests(4, "c");
    store.begin_term(&term, "n").await.unwrap();
    let failures = ",failed,timed_out,killed,lost,missed,skipped,recovered,";
    store
        .set_notify_routes(
            &term,
            &[route("job", "ops", failures, Some(2_000)), route("job", "audit", ",succeeded,", None)],
        )
        .await
        .unwrap();
    let ops = "https://ops.example".to_owned();
    let audit = "https://audit.example".to_owned();

    // Failed, then succeeded: `failed`, then `succeeded` and `recovered`.
    let first = store.claim_run(&claim("job", slot(0), &term)).await.unwrap().run_id;
    assert_eq!(store.start_runs(&term, &[(first, slot(0))]).await.unwrap(), [true]);
    store.finish_runs(&[(first, ended(RunStatus::Failed, slot(1)))]).await.unwrap();
    let second = store.claim_run(&claim("job", slot(10), &term)).await.unwrap().run_id;
    // Started 3 s after its slot: later than the 2 s threshold.
    assert_eq!(store.start_runs(&term, &[(second, slot(13))]).await.unwrap(), [true]);
    store.finish_run(second, &ended(RunStatus::Succeeded, slot(14))).await.unwrap();
    // A second success in a row is no recovery; on time, it is not late either.
    let third = store.claim_run(&claim("job", slot(20), &term)).await.unwrap().run_id;
    assert_eq!(store.start_runs(&term, &[(third, slot(20))]).await.unwrap(), [true]);
    store.finish_run(third, &ended(RunStatus::Succeeded, slot(21))).await.unwrap();
    assert_eq!(
        events(&reads, &[first, second, third]).await,
        [
            (first, "failed".to_owned(), ops.clone()),
            (second, "late".to_owned(), ops.clone()),
            (second, "succeeded".to_owned(), audit.clone()),
            (second, "recovered".to_owned(), ops.clone()),
            (third, "succeeded".to_owned(), audit.clone()),
        ]
    );

    // Skipped by `forbid`, and missed: recorded by the claim and by `record_slots`.
    let running = store.claim_run(&claim("job", slot(30), &term)).await.unwrap().run_id;
    let skipped =
        store.claim_run(&Claim { skip_if_running: SkipIfRunning::Yes, ..claim("job", slot(31), &term) }).await.unwrap();
    assert_eq!(skipped.status, RunStatus::Skipped);
    let unrun = UnrunSlots {
        job: "job",
        slots: &[slot(40)],
        status: RunStatus::Missed,
        trigger: Trigger::Schedule,
        term: &term,
        node: "n",
        config_hash: "hash",
        error: "missed",
    };
    assert_eq!(store.record_slots(&unrun).await.unwrap(), 1);
    let missed = reads.all_runs().await.unwrap().into_iter().find(|run| run.slot == slot(40)).unwrap().id;

    // Lost: reaped by a newer term.
    assert_eq!(store.start_runs(&term, &[(running, slot(30))]).await.unwrap(), [true]);
    let newer = Term::for_tests(5, "c");
    store.begin_term(&newer, "m").await.unwrap();
    let live = [LiveNode { node: "m".to_owned(), since: slot(0) }];
    assert_eq!(store.reap_lost(&newer, &live).await.unwrap(), 1);
    assert_eq!(
        events(&reads, &[skipped.run_id, missed, running]).await,
        [
            (skipped.run_id, "skipped".to_owned(), ops.clone()),
            (missed, "missed".to_owned(), ops.clone()),
            (running, "lost".to_owned(), ops.clone()),
        ]
    );
    // The routes belong to the leader: an older term may not change them.
    let stale = store.set_notify_routes(&term, &[]).await;
    assert!(matches!(stale, Err(ClaimError::Fenced { term: 4, fence: 5 })), "{stale:?}");
    assert_eq!(store.pending_notifications().await.unwrap(), 8);
}

pub(crate) async fn a_delivery_is_held_by_one_term_and_an_older_terms_answer_is_refused(store: Store, reads: Reads) {
    let old = Term::for_tests(7, "c");
    store.begin_term(&old, "a").await.unwrap();
    store.set_notify_routes(&old, &[route("job", "ops", ",failed,", None)]).await.unwrap();
    let run = store.claim_run(&claim("job", slot(0), &old)).await.unwrap().run_id;
    store.start_runs(&old, &[(run, slot(0))]).await.unwrap();
    store.finish_run(run, &ended(RunStatus::Failed, slot(1))).await.unwrap();

    let now = Utc::now().trunc_subsecs(6);
    let taken = store.take_notifications(&old, now, now + Duration::seconds(30), 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    let event = &taken[0];
    assert_eq!((event.run_id, event.event.as_str(), event.attempts), (run, "failed", 1));
    // Held: not taken again while its hold lasts, not even by the same term.
    assert!(store.take_notifications(&old, now, now + Duration::seconds(30), 10).await.unwrap().is_empty());

    // A newer leader takes it up once the hold has passed: the old leader's answer is lost.
    let new = Term::for_tests(8, "c");
    store.begin_term(&new, "b").await.unwrap();
    let later = now + Duration::seconds(31);
    // The fenced-out leader takes nothing.
    assert!(store.take_notifications(&old, later, later + Duration::seconds(30), 10).await.unwrap().is_empty());
    let again = store.take_notifications(&new, later, later + Duration::seconds(30), 10).await.unwrap();
    assert_eq!((again.len(), again[0].id, again[0].attempts), (1, event.id, 2), "the same event, its id stable");

    // The old leader's late answer is refused; the new leader's is recorded.
    let delivered = Delivery::Delivered { at: later };
    assert_eq!(store.record_deliveries(&old, &[(event.id, delivered.clone())]).await.unwrap(), 0);
    let failed = Delivery::Retry { error: "HTTP 503".to_owned(), at: later + Duration::seconds(2) };
    assert_eq!(store.record_deliveries(&new, &[(event.id, failed)]).await.unwrap(), 1);
    let shown = reads.run_notifications(run).await.unwrap();
    assert_eq!((shown[0].status.as_str(), shown[0].attempts), ("pending", 2));
    assert_eq!(shown[0].last_error.as_deref(), Some("HTTP 503"));
    // Released, it is due again at its next attempt, not before.
    assert!(store.take_notifications(&new, later, later + Duration::seconds(30), 10).await.unwrap().is_empty());
    let retry_at = later + Duration::seconds(2);
    let third = store.take_notifications(&new, retry_at, retry_at + Duration::seconds(30), 10).await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(store.record_deliveries(&new, &[(event.id, Delivery::Delivered { at: retry_at })]).await.unwrap(), 1);
    let shown = reads.run_notifications(run).await.unwrap();
    assert_eq!((shown[0].status.as_str(), shown[0].attempts, shown[0].delivered_at), ("delivered", 3, Some(retry_at)));
    assert_eq!(store.pending_notifications().await.unwrap(), 0);
    // Delivered once: never taken again.
    let much_later = retry_at + Duration::hours(1);
    assert!(store.take_notifications(&new, much_later, much_later, 10).await.unwrap().is_empty());
}

/// The ledger learns when a run began with its outcome (`began_at`), and a `late` route is told
/// from it: a run whose start was recorded on time but which began past the threshold is told
/// with its outcome; one whose recorded start was already late was told then, and is not told
/// twice; a run on time, a later attempt (it begins after the earlier ones by design) and a run
/// that never began are not told.
pub(crate) async fn a_run_that_began_late_is_told_late_once_from_its_begin(store: Store, reads: Reads) {
    let term = Term::for_tests(4, "c");
    store.begin_term(&term, "n").await.unwrap();
    store.set_notify_routes(&term, &[route("job", "ops", ",failed,", Some(2_000))]).await.unwrap();
    let begun = |status, began: Option<DateTime<Utc>>, at| RunOutcome { began_at: began, ..ended(status, at) };

    // Started at the plan, held back 3 s after it (a stalled supervisor): told at the outcome.
    let held = store.claim_run(&claim("job", slot(0), &term)).await.unwrap().run_id;
    assert_eq!(store.start_runs(&term, &[(held, slot(0))]).await.unwrap(), [true]);
    assert!(events(&reads, &[held]).await.is_empty(), "on time as far as the start tells");
    store.finish_runs(&[(held, begun(RunStatus::Succeeded, Some(slot(3)), slot(4)))]).await.unwrap();
    // Its start recorded 3 s late: told then, and not again when it began later still.
    let recorded_late = store.claim_run(&claim("job", slot(10), &term)).await.unwrap().run_id;
    assert_eq!(store.start_runs(&term, &[(recorded_late, slot(13))]).await.unwrap(), [true]);
    store.finish_run(recorded_late, &begun(RunStatus::Succeeded, Some(slot(14)), slot(15))).await.unwrap();
    // Began 1 s after its plan: within the threshold.
    let on_time = store.claim_run(&claim("job", slot(20), &term)).await.unwrap().run_id;
    assert_eq!(store.start_runs(&term, &[(on_time, slot(20))]).await.unwrap(), [true]);
    store.finish_runs(&[(on_time, begun(RunStatus::Succeeded, Some(slot(21)), slot(22)))]).await.unwrap();
    // A second attempt begins after the first and its backoff: no lateness of the run.
    let retried = store.claim_run(&claim("job", slot(30), &term)).await.unwrap().run_id;
    assert_eq!(store.start_runs(&term, &[(retried, slot(30))]).await.unwrap(), [true]);
    store.retry_run(retried, &term, 2, "attempt 1: exited with status 1", slot(35)).await.unwrap();
    store.finish_runs(&[(retried, begun(RunStatus::Succeeded, Some(slot(35)), slot(36)))]).await.unwrap();
    // Stopped before it began.
    let never = store.claim_run(&claim("job", slot(40), &term)).await.unwrap().run_id;
    assert_eq!(store.start_runs(&term, &[(never, slot(40))]).await.unwrap(), [true]);
    store.finish_runs(&[(never, begun(RunStatus::Killed, None, slot(41)))]).await.unwrap();

    let ops = "https://ops.example".to_owned();
    assert_eq!(
        events(&reads, &[held, recorded_late, on_time, retried, never]).await,
        [(held, "late".to_owned(), ops.clone()), (recorded_late, "late".to_owned(), ops.clone())]
    );
    let row = |id| {
        let reads = reads.clone();
        async move { reads.run(id).await.unwrap().unwrap() }
    };
    let held_row = row(held).await;
    assert_eq!((held_row.started_at, held_row.began_at), (Some(slot(0)), Some(slot(3))), "{held_row:?}");
    assert_eq!(row(never).await.began_at, None);
    assert_eq!(row(retried).await.began_at, Some(slot(35)));
}
