//! The ledger contract: what a claim accepts and refuses, and why. Every contract test runs
//! against a real PostgreSQL and against SQLite (`tenure dev`); the lock-level race is
//! PostgreSQL's own.

use chrono::{DateTime, TimeZone, Utc};
use tenure::leadership::Term;
use tenure::model::{Control, RunOutcome, RunStatus, Trigger, TriggerKind};
use tenure::store::{
    AuditRecord, Claim, ClaimError, Claimed, FenceError, JobControl, LiveNode, Reads, Retention, RunCursor,
    SkipIfRunning, Store, TriggerOverrides, TriggerRecord, TriggerRequest, UnrunSlots,
};

use crate::harness::{Postgres, wait_until};

async fn fresh_pool(pg: &Postgres, name: &str) -> sqlx::PgPool {
    let url = pg.create_database(name).await;
    let pool = tenure::store::connect(&url).await.expect("connect");
    tenure::store::migrate(&pool).await.expect("migrate");
    pool
}

/// Run one contract test against both ledgers.
macro_rules! contract {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn postgres() {
                let pg = crate::harness::Postgres::start().await;
                let pool = super::fresh_pool(&pg, stringify!($name)).await;
                let (store, reads) = tenure::store::Store::with_reads(tenure::store::Postgres::new(pool));
                super::$name(store, reads).await;
            }

            #[tokio::test]
            async fn sqlite() {
                let ledger = tenure::store::Sqlite::in_memory().await.expect("sqlite");
                let (store, reads) = tenure::store::Store::with_reads(ledger);
                super::$name(store, reads).await;
            }
        }
    };
}

contract!(a_claim_is_refused_when_stale_or_taken_and_the_two_are_told_apart);
contract!(a_retried_claim_whose_commit_was_not_acknowledged_is_recognised_as_ours);
contract!(forbid_records_skipped_while_a_run_is_going_and_missed_slots_are_fenced_too);
contract!(a_skipped_slot_names_the_run_that_was_still_going);
contract!(runs_of_a_vanished_leader_are_reaped_as_lost_but_not_those_of_a_live_one);
contract!(concurrent_claims_of_one_slot_from_two_terms_admit_exactly_one);
contract!(pauses_and_triggers_are_recorded_once);
contract!(pages_of_a_job_ledger_follow_the_cursor_and_the_status_filter);
contract!(live_output_and_term_heartbeats_are_recorded);
contract!(live_outputs_of_many_runs_are_written_together_and_never_over_an_outcome);
contract!(the_dashboard_reads_only_the_newest_terms);
contract!(retention_prunes_old_finished_rows_in_batches_and_keeps_each_jobs_newest);
contract!(a_batch_of_claims_answers_each_as_if_it_were_alone);
contract!(batched_starts_and_outcomes_land_on_their_own_rows_and_never_revive_a_finished_one);
contract!(a_run_starts_through_a_fenced_transition_and_a_newer_term_takes_over_a_claim_never_started);
contract!(the_ledger_tells_which_of_a_terms_starts_it_holds);
contract!(an_unstarted_claim_can_be_recorded_missed_and_keeps_its_trigger);
contract!(each_job_has_a_cursor_that_retention_and_manual_triggers_cannot_move);
contract!(a_longer_retain_holds_and_a_job_gone_from_the_file_keeps_the_ledgers_in_bounded_batches);
contract!(idempotency_keys_are_scoped_per_job);
contract!(a_trigger_is_handled_only_by_the_claim_of_its_slot);
contract!(a_resume_that_ends_a_pause_records_when);
contract!(a_term_is_begun_by_one_node_only_and_its_own_retry_is_idempotent);
contract!(retention_per_job_prunes_only_what_it_should);
contract!(a_backfill_queues_each_unheld_slot_once_and_reports_its_progress);
contract!(a_triggers_overrides_are_recorded_with_its_run);
contract!(a_late_notification_counts_from_the_planned_start_not_the_slot);
contract!(every_recorded_outcome_writes_the_events_its_routes_ask_for);
contract!(a_delivery_is_held_by_one_term_and_an_older_terms_answer_is_refused);
contract!(a_run_that_began_late_is_told_late_once_from_its_begin);
contract!(an_assigned_run_is_accepted_only_by_its_executor_under_its_attempt);
contract!(renewals_and_outcomes_are_refused_once_an_attempt_is_given_up_reassigned_or_cancelled);
contract!(an_operators_cancel_is_recorded_by_the_web_and_acted_on_only_by_the_current_term);

use crate::ledger_execution::{
    an_assigned_run_is_accepted_only_by_its_executor_under_its_attempt,
    an_operators_cancel_is_recorded_by_the_web_and_acted_on_only_by_the_current_term,
    renewals_and_outcomes_are_refused_once_an_attempt_is_given_up_reassigned_or_cancelled,
};

use crate::ledger_outbox::{
    a_delivery_is_held_by_one_term_and_an_older_terms_answer_is_refused,
    a_run_that_began_late_is_told_late_once_from_its_begin,
    every_recorded_outcome_writes_the_events_its_routes_ask_for,
};

fn slot(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, second).unwrap()
}

/// Record a manual trigger of `job` under `key` without overrides, as the API does.
async fn request(reads: &Reads, job: &str, key: &str, at: DateTime<Utc>) -> Result<TriggerRecord, sqlx::Error> {
    let overrides = TriggerOverrides::default();
    reads
        .request_trigger(
            &TriggerRequest { job, idempotency_key: key, by: "admin", requested_at: at, overrides: &overrides },
            &AuditRecord::by("admin", "trigger"),
        )
        .await
}

fn claim<'a>(job: &'a str, at: DateTime<Utc>, term: &'a Term, node: &'a str) -> Claim<'a> {
    Claim {
        job,
        slot: at,
        trigger: Trigger::Schedule,
        term,
        node,
        config_hash: "hash",
        skip_if_running: SkipIfRunning::No,
        claimed_at: Utc::now(),
        planned_at: at,
    }
}

async fn a_claim_is_refused_when_stale_or_taken_and_the_two_are_told_apart(store: Store, reads: Reads) {
    let old = Term::for_tests(10, "cluster-a");
    let new = Term::for_tests(20, "cluster-a");

    store.begin_term(&old, "node-old").await.expect("first term raises the fence");
    let first = store.claim_run(&claim("job", slot(0), &old, "node-old")).await.expect("claim");
    assert_eq!(first.status, RunStatus::Running);
    assert_eq!(store.start_runs(&old, &[(first.run_id, slot(0))]).await.unwrap(), [true]);

    store.begin_term(&new, "node-new").await.expect("newer term raises the fence");
    // The old leader may not claim anything any more, not even a fresh slot.
    let stale = store.claim_run(&claim("job", slot(1), &old, "node-old")).await;
    assert!(matches!(stale, Err(ClaimError::Fenced { term: 10, fence: 20 })), "{stale:?}");
    // Nor may it raise the fence back.
    let back = store.begin_term(&old, "node-old").await;
    assert!(matches!(back, Err(FenceError::Superseded { fence: 20, .. })), "{back:?}");

    // The new leader cannot claim a slot the old one already owns.
    let taken = store.claim_run(&claim("job", slot(0), &new, "node-new")).await;
    assert!(matches!(&taken, Err(ClaimError::AlreadyClaimed { term: 10, node }) if node == "node-old"), "{taken:?}");
    // A slot the old leader could not claim is free for the new one.
    store.claim_run(&claim("job", slot(1), &new, "node-new")).await.expect("claim in new term");

    let rows = reads.all_runs().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].term, rows[1].term), (10, 20));
    let terms: Vec<i64> = reads.terms().await.unwrap().iter().map(|t| t.term).collect();
    assert_eq!(terms, [10, 20]);
}

async fn a_retried_claim_whose_commit_was_not_acknowledged_is_recognised_as_ours(store: Store, _reads: Reads) {
    let term = Term::for_tests(7, "c");
    store.begin_term(&term, "n").await.unwrap();
    let first = store.claim_run(&claim("job", slot(5), &term, "n")).await.unwrap();
    // Same term and node sending the same claim again (as after a lost COMMIT acknowledgement).
    let again = store.claim_run(&claim("job", slot(5), &term, "n")).await.unwrap();
    assert_eq!(first, again);
    // Another node of the same term (impossible in practice) would be refused.
    let other = store.claim_run(&claim("job", slot(5), &term, "other")).await;
    assert!(matches!(other, Err(ClaimError::AlreadyClaimed { .. })), "{other:?}");
}

async fn forbid_records_skipped_while_a_run_is_going_and_missed_slots_are_fenced_too(store: Store, reads: Reads) {
    let term = Term::for_tests(3, "c");
    store.begin_term(&term, "n").await.unwrap();
    let running = store.claim_run(&claim("job", slot(0), &term, "n")).await.unwrap();
    let mut forbid = claim("job", slot(1), &term, "n");
    forbid.skip_if_running = SkipIfRunning::Yes;
    let skipped = store.claim_run(&forbid).await.unwrap();
    assert_eq!(skipped.status, RunStatus::Skipped);

    store
        .finish_run(
            running.run_id,
            &RunOutcome {
                status: RunStatus::Succeeded,
                exit_code: Some(0),
                http_status: None,
                error: None,
                output: "out\0put".into(),
                began_at: None,
                finished_at: Utc::now(),
            },
        )
        .await
        .unwrap();
    let mut next = claim("job", slot(2), &term, "n");
    next.skip_if_running = SkipIfRunning::Yes;
    assert_eq!(store.claim_run(&next).await.unwrap().status, RunStatus::Running);

    let recorded = store
        .record_slots(&UnrunSlots {
            job: "job",
            slots: &[slot(3), slot(4)],
            status: RunStatus::Missed,
            trigger: Trigger::Schedule,
            term: &term,
            node: "n",
            config_hash: "hash",
            error: "down",
        })
        .await
        .unwrap();
    assert_eq!(recorded, 2);
    let newer = Term::for_tests(4, "c");
    store.begin_term(&newer, "m").await.unwrap();
    let stale = store
        .record_slots(&UnrunSlots {
            job: "job",
            slots: &[slot(6)],
            status: RunStatus::Missed,
            trigger: Trigger::Schedule,
            term: &term,
            node: "n",
            config_hash: "hash",
            error: "down",
        })
        .await;
    assert!(matches!(stale, Err(ClaimError::Fenced { .. })), "{stale:?}");

    let rows = reads.all_runs().await.unwrap();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["succeeded", "skipped", "running", "missed", "missed"]);
    assert_eq!(rows[0].output, "out\u{FFFD}put");
    let cursors = store.job_cursors(&newer, &["job"], slot(59)).await.unwrap();
    assert_eq!(cursors["job"].slot, slot(4));
}

async fn runs_of_a_vanished_leader_are_reaped_as_lost_but_not_those_of_a_live_one(store: Store, reads: Reads) {
    let old = Term::for_tests(1, "c");
    store.begin_term(&old, "gone").await.unwrap();
    let at_slot = |job, node| Claim { claimed_at: slot(0), ..claim(job, slot(0), &old, node) };
    let gone = store.claim_run(&at_slot("a", "gone")).await.unwrap();
    let alive = store.claim_run(&at_slot("b", "alive")).await.unwrap();
    // Claimed by a process of `reborn` that was then replaced by one started later.
    let previous_life = store.claim_run(&at_slot("c", "reborn")).await.unwrap();
    let runs = [(gone.run_id, slot(0)), (alive.run_id, slot(0)), (previous_life.run_id, slot(0))];
    assert_eq!(store.start_runs(&old, &runs).await.unwrap(), [true, true, true]);
    // A claim never started is not lost: the next term takes it over instead.
    let unstarted = store.claim_run(&at_slot("d", "gone")).await.unwrap();
    let new = Term::for_tests(2, "c");
    store.begin_term(&new, "alive").await.unwrap();
    let live = [
        LiveNode { node: "alive".to_owned(), since: slot(0) - chrono::Duration::seconds(5) },
        LiveNode { node: "reborn".to_owned(), since: slot(10) },
    ];
    let reaped = store.reap_lost(&new, &live).await.unwrap();
    assert_eq!(reaped, 2);
    let reaped_row = reads.run(gone.run_id).await.unwrap().unwrap();
    assert_eq!(
        (reaped_row.status, reaped_row.error.as_deref()),
        (RunStatus::Lost, Some("its leader vanished without recording an outcome"))
    );
    assert_eq!(
        reads.run(previous_life.run_id).await.unwrap().unwrap().status,
        RunStatus::Lost,
        "a restart does not vouch"
    );
    assert_eq!(reads.run(alive.run_id).await.unwrap().unwrap().status, RunStatus::Running);
    assert_eq!(reads.run(unstarted.run_id).await.unwrap().unwrap().status, RunStatus::Running);
    // A stale leader cannot reap.
    assert_eq!(store.reap_lost(&old, &[]).await.unwrap(), 0);
}

async fn concurrent_claims_of_one_slot_from_two_terms_admit_exactly_one(store: Store, reads: Reads) {
    // Claim and start, as a run does, from two terms at once: exactly one of them starts.
    async fn claim_and_start(store: &Store, term: &Term, node: &str, at: DateTime<Utc>) -> bool {
        match store.claim_run(&claim("job", at, term, node)).await {
            Ok(claimed) => matches!(store.start_runs(term, &[(claimed.run_id, at)]).await.as_deref(), Ok([true])),
            Err(_) => false,
        }
    }
    for round in 0..20u32 {
        let old = Term::for_tests(i64::from(round) * 2 + 1, "c");
        let new = Term::for_tests(i64::from(round) * 2 + 2, "c");
        store.begin_term(&old, "old").await.unwrap();
        let at = slot(round);
        let (a, b) = tokio::join!(claim_and_start(&store, &old, "old", at), async {
            store.begin_term(&new, "new").await.unwrap();
            claim_and_start(&store, &new, "new", at).await
        });
        assert!(a ^ b, "round {round}: exactly one term starts the slot: {a} / {b}");
    }
    assert_eq!(reads.all_runs().await.unwrap().len(), 20);
}

/// The clock check (whether the database answers, is a primary and agrees on the time) has a
/// connection of its own: a burst of claims holding every firing connection is not a database
/// that does not answer, and must not make a leader step down.
#[tokio::test]
async fn the_clock_check_is_answered_while_every_firing_connection_is_in_use() {
    let pg = Postgres::start().await;
    let pool = fresh_pool(&pg, "clock_apart").await;
    let store = Store::new(pool.clone());
    let mut held = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        held.push(pool.acquire().await.unwrap());
    }
    assert!(pool.try_acquire().is_none(), "every firing connection is in use");
    for _ in 0..3 {
        let answer = tokio::time::timeout(std::time::Duration::from_secs(1), store.clock()).await;
        assert!(matches!(answer, Ok(Ok(_))), "the clock check waited for a firing connection: {answer:?}");
    }
    drop(held);
}

#[tokio::test]
async fn a_stale_claim_racing_a_fence_raise_waits_for_it_and_is_then_refused() {
    let pg = Postgres::start().await;
    let pool = fresh_pool(&pg, "fence_race").await;
    let store = Store::new(pool.clone());
    let old = Term::for_tests(10, "c");
    store.begin_term(&old, "old").await.unwrap();
    // A new leader is half-way through raising the fence: the row is locked, not yet committed.
    let mut raise = pool.begin().await.unwrap();
    sqlx::query("UPDATE fence SET term = 11 WHERE id = 1").execute(&mut *raise).await.unwrap();

    let racing = tokio::spawn({
        let store = store.clone();
        async move { store.claim_run(&claim("job", slot(0), &old, "old")).await }
    });
    // The stale claim must wait for the raise rather than read the old fence and commit: once
    // PostgreSQL shows a session waiting on a lock, it is queued behind the raise.
    let waiting = wait_until(std::time::Duration::from_secs(5), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        waiting > 0 || racing.is_finished()
    })
    .await;
    assert!(waiting && !racing.is_finished(), "the claim did not wait for the fence row");
    raise.commit().await.unwrap();
    let result = racing.await.unwrap();
    assert!(matches!(result, Err(ClaimError::Fenced { term: 10, fence: 11 })), "{result:?}");
    assert!(Reads::new(pool).all_runs().await.unwrap().is_empty());
}

async fn pauses_and_triggers_are_recorded_once(store: Store, reads: Reads) {
    reads.set_control("job", Control::Pause, &AuditRecord::by("admin", "pause")).await.unwrap();
    assert!(store.job_controls().await.unwrap()["job"].paused);
    reads.set_control("job", Control::Resume, &AuditRecord::by("admin", "resume")).await.unwrap();
    // A resume is kept too: it overrides `paused: true` in the job file.
    assert!(!store.job_controls().await.unwrap()["job"].paused);

    let first = request(&reads, "job", "key-1", slot(30)).await.unwrap();
    let again = request(&reads, "job", "key-1", slot(31)).await.unwrap();
    assert_eq!(first, again, "a double click fires once");
    assert_eq!(store.pending_triggers().await.unwrap(), std::slice::from_ref(&first));

    let term = Term::for_tests(1, "c");
    store.begin_term(&term, "n").await.unwrap();
    let mut manual = claim("job", first.requested_at, &term, "n");
    manual.trigger = Trigger::Manual { request: first.id };
    let claimed = store.claim_run(&manual).await.unwrap();
    store.start_runs(&term, &[(claimed.run_id, first.requested_at)]).await.unwrap();
    assert!(store.pending_triggers().await.unwrap().is_empty(), "handled by its claim, and started");
    // A manual run does not move the job's schedule cursor.
    let cursors = store.job_cursors(&term, &["job"], slot(0)).await.unwrap();
    assert_eq!(cursors["job"].slot, slot(0), "the cursor is where the job was first seen");
    assert_eq!(reads.run(claimed.run_id).await.unwrap().unwrap().trigger, TriggerKind::Manual);
}

async fn pages_of_a_job_ledger_follow_the_cursor_and_the_status_filter(store: Store, reads: Reads) {
    let term = Term::for_tests(1, "c");
    store.begin_term(&term, "n").await.unwrap();
    for second in 0..25 {
        let claimed = store.claim_run(&claim("paged", slot(second), &term, "n")).await.unwrap();
        let status = if second % 5 == 0 { RunStatus::Failed } else { RunStatus::Succeeded };
        let outcome = RunOutcome {
            status,
            exit_code: Some(0),
            http_status: None,
            error: None,
            output: "printed".into(),
            began_at: None,
            finished_at: slot(second),
        };
        store.finish_run(claimed.run_id, &outcome).await.unwrap();
    }
    store.claim_run(&claim("other", slot(3), &term, "n")).await.unwrap();

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = reads.job_runs("paged", None, cursor, 10).await.unwrap();
        assert!(page.len() <= 10);
        assert!(page.iter().all(|run| run.job == "paged" && run.output.is_empty()), "lists carry no output");
        let Some(last) = page.last() else { break };
        // The cursor survives a round trip through a URL.
        cursor = RunCursor::decode(&RunCursor::after(last).encode());
        seen.extend(page.iter().map(|run| run.slot));
    }
    let expected: Vec<_> = (0..25).rev().map(slot).collect();
    assert_eq!(seen, expected, "every row once, newest first");

    let failed = reads.job_runs("paged", Some(RunStatus::Failed), None, 100).await.unwrap();
    assert_eq!(failed.iter().map(|run| run.slot).collect::<Vec<_>>(), [slot(20), slot(15), slot(10), slot(5), slot(0)]);

    let recent = reads.recent_runs(&["paged".into(), "other".into(), "none".into()], 3).await.unwrap();
    assert_eq!(recent["paged"].iter().map(|run| run.slot).collect::<Vec<_>>(), [slot(24), slot(23), slot(22)]);
    assert_eq!(recent["other"].len(), 1);
    assert!(!recent.contains_key("none"));
}

async fn live_outputs_of_many_runs_are_written_together_and_never_over_an_outcome(store: Store, reads: Reads) {
    let term = Term::for_tests(7, "c");
    store.begin_term(&term, "n").await.unwrap();
    let going = store.claim_run(&claim("going", slot(0), &term, "n")).await.unwrap().run_id;
    let other = store.claim_run(&claim("other", slot(0), &term, "n")).await.unwrap().run_id;
    let done = store.claim_run(&claim("done", slot(0), &term, "n")).await.unwrap().run_id;
    let outcome = RunOutcome {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        http_status: None,
        error: None,
        output: "all done".into(),
        began_at: None,
        finished_at: slot(1),
    };
    store.finish_run(done, &outcome).await.unwrap();
    let outputs = [(going, "line 1\n".to_owned()), (other, "nul \0 byte".to_owned()), (done, "late".to_owned())];
    store.update_outputs(&outputs).await.unwrap();
    let output = |id| {
        let reads = reads.clone();
        async move { reads.run(id).await.unwrap().unwrap().output }
    };
    assert_eq!(output(going).await, "line 1\n");
    assert_eq!(output(other).await, "nul \u{FFFD} byte");
    assert_eq!(output(done).await, "all done", "a late live write is ignored");
    store.update_outputs(&[]).await.unwrap();
}

async fn the_dashboard_reads_only_the_newest_terms(store: Store, reads: Reads) {
    for revision in 1..=5 {
        store.begin_term(&Term::for_tests(revision, "c"), "n").await.unwrap();
    }
    let terms = |records: Vec<tenure::store::TermRecord>| records.iter().map(|t| t.term).collect::<Vec<_>>();
    assert_eq!(terms(reads.recent_terms(2).await.unwrap()), [4, 5]);
    assert_eq!(terms(reads.recent_terms(10).await.unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(terms(reads.terms().await.unwrap()), [1, 2, 3, 4, 5]);
}

async fn live_output_and_term_heartbeats_are_recorded(store: Store, reads: Reads) {
    let term = Term::for_tests(7, "c");
    store.begin_term(&term, "n").await.unwrap();
    let claimed = store.claim_run(&claim("live", slot(0), &term, "n")).await.unwrap();
    store.update_output(claimed.run_id, "half way").await.unwrap();
    assert_eq!(reads.run(claimed.run_id).await.unwrap().unwrap().output, "half way");
    let outcome = RunOutcome {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        http_status: None,
        error: None,
        output: "all done".into(),
        began_at: None,
        finished_at: slot(1),
    };
    store.finish_run(claimed.run_id, &outcome).await.unwrap();
    store.update_output(claimed.run_id, "late flush").await.unwrap();
    assert_eq!(reads.run(claimed.run_id).await.unwrap().unwrap().output, "all done", "a late flush is ignored");

    assert_eq!(reads.recent_terms(5).await.unwrap().len(), 1);
    assert_eq!(reads.terms().await.unwrap()[0].last_seen_at, None);
    store.term_alive(&term, slot(9)).await.unwrap();
    assert_eq!(reads.terms().await.unwrap()[0].last_seen_at, Some(slot(9)));
}

async fn retention_prunes_old_finished_rows_in_batches_and_keeps_each_jobs_newest(store: Store, reads: Reads) {
    let term = Term::for_tests(1, "c");
    store.begin_term(&term, "n").await.unwrap();
    let finished = |at| RunOutcome {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        http_status: None,
        error: None,
        output: String::new(),
        began_at: None,
        finished_at: at,
    };
    for second in 0..10 {
        // Claimed at its slot, as the scheduler does: pruning goes by slot and claim.
        let claimed = store
            .claim_run(&Claim { claimed_at: slot(second), ..claim("old", slot(second), &term, "n") })
            .await
            .unwrap();
        if second != 3 {
            store.finish_run(claimed.run_id, &finished(slot(second))).await.unwrap();
        }
    }
    // A job whose only row is old: kept, it is the job's cursor.
    let lone = store.claim_run(&Claim { claimed_at: slot(1), ..claim("lone", slot(1), &term, "n") }).await.unwrap();
    store.finish_run(lone.run_id, &finished(slot(1))).await.unwrap();

    let before = slot(30);
    assert_eq!(store.prune_runs(&tenure::store::Retention::before(before), 4).await.unwrap(), 4, "one batch at a time");
    assert_eq!(store.prune_runs(&tenure::store::Retention::before(before), 4).await.unwrap(), 4);
    assert_eq!(store.prune_runs(&tenure::store::Retention::before(before), 4).await.unwrap(), 0, "nothing more may go");
    let left: Vec<(String, DateTime<Utc>, String)> =
        reads.all_runs().await.unwrap().into_iter().map(|r| (r.job, r.slot, r.status.to_string())).collect();
    assert_eq!(
        left,
        [
            ("lone".to_owned(), slot(1), "succeeded".to_owned()),
            ("old".to_owned(), slot(3), "running".to_owned()),
            ("old".to_owned(), slot(9), "succeeded".to_owned()),
        ],
        "running rows and each job's newest row stay"
    );
}

/// A slot `forbid` skips says why in words, naming the run that was still going: alone, in a
/// batch, and when the run going is a claim of this term not started yet (it will start).
async fn a_skipped_slot_names_the_run_that_was_still_going(store: Store, reads: Reads) {
    let term = Term::for_tests(3, "c");
    store.begin_term(&term, "n").await.unwrap();
    let going = store.claim_run(&claim("job", slot(0), &term, "n")).await.unwrap();
    let mut manual = claim("job", slot(1), &term, "n");
    manual.skip_if_running = SkipIfRunning::Yes;
    let skipped = store.claim_run(&manual).await.unwrap();
    assert_eq!(skipped.status, RunStatus::Skipped);
    store.start_runs(&term, &[(going.run_id, slot(0))]).await.unwrap();
    let mut batched = claim("job", slot(2), &term, "n");
    batched.skip_if_running = SkipIfRunning::Yes;
    let results = store.claim_runs(&[batched, claim("other", slot(2), &term, "n")]).await;
    assert!(matches!(results[0], Ok(Claimed { status: RunStatus::Skipped, .. })), "{:?}", results[0]);

    let expected = format!("forbid: run {} of this job was still going", going.run_id);
    let rows = reads.all_runs().await.unwrap();
    for row in rows.iter().filter(|row| row.status == RunStatus::Skipped) {
        assert_eq!(row.error.as_deref(), Some(expected.as_str()), "{row:?}");
    }
    assert_eq!(rows.iter().filter(|row| row.status == RunStatus::Skipped).count(), 2);
    // A run that was not skipped says nothing of the kind.
    assert!(rows.iter().filter(|row| row.status == RunStatus::Running).all(|row| row.error.is_none()), "{rows:?}");
}

async fn a_batch_of_claims_answers_each_as_if_it_were_alone(store: Store, reads: Reads) {
    let old = Term::for_tests(3, "c");
    store.begin_term(&old, "a").await.unwrap();
    let taken = store.claim_run(&claim("taken", slot(0), &old, "a")).await.unwrap();
    let busy = store.claim_run(&claim("busy", slot(0), &old, "a")).await.unwrap();
    store.start_runs(&old, &[(taken.run_id, slot(0)), (busy.run_id, slot(0))]).await.unwrap();
    let term = Term::for_tests(4, "c");
    store.begin_term(&term, "b").await.unwrap();

    let mut forbid = claim("busy", slot(1), &term, "b");
    forbid.skip_if_running = SkipIfRunning::Yes;
    let batch = [
        claim("fresh", slot(0), &term, "b"),
        claim("taken", slot(0), &term, "b"),
        forbid,
        claim("fresh", slot(1), &term, "b"),
    ];
    let results = store.claim_runs(&batch).await;
    assert_eq!(results.len(), 4);
    assert!(matches!(results[0], Ok(Claimed { status: RunStatus::Running, .. })), "{:?}", results[0]);
    assert!(matches!(results[1], Err(ClaimError::AlreadyClaimed { term: 3, .. })), "{:?}", results[1]);
    assert!(matches!(results[2], Ok(Claimed { status: RunStatus::Skipped, .. })), "{:?}", results[2]);
    assert!(matches!(results[3], Ok(Claimed { status: RunStatus::Running, .. })), "{:?}", results[3]);

    // A stale term's batch is refused whole, every claim told why.
    let stale = [claim("late", slot(5), &old, "a"), claim("late", slot(6), &old, "a")];
    for result in store.claim_runs(&stale).await {
        assert!(matches!(result, Err(ClaimError::Fenced { term: 3, fence: 4 })), "{result:?}");
    }
    assert!(!reads.all_runs().await.unwrap().iter().any(|run| run.job == "late"));
}

async fn batched_starts_and_outcomes_land_on_their_own_rows_and_never_revive_a_finished_one(
    store: Store,
    reads: Reads,
) {
    let term = Term::for_tests(2, "c");
    store.begin_term(&term, "n").await.unwrap();
    let a = store.claim_run(&claim("a", slot(0), &term, "n")).await.unwrap().run_id;
    let b = store.claim_run(&claim("b", slot(0), &term, "n")).await.unwrap().run_id;
    let done = store.claim_run(&claim("done", slot(0), &term, "n")).await.unwrap().run_id;
    let outcome = |status, code, second| RunOutcome {
        status,
        exit_code: Some(code),
        http_status: None,
        error: (code != 0).then(|| format!("exit {code}")),
        output: format!("out {code}\0"),
        began_at: None,
        finished_at: slot(second),
    };
    store.finish_run(done, &outcome(RunStatus::Succeeded, 0, 5)).await.unwrap();

    assert_eq!(store.start_runs(&term, &[(a, slot(1)), (b, slot(2))]).await.unwrap(), [true, true]);
    store
        .finish_runs(&[
            (a, outcome(RunStatus::Succeeded, 0, 3)),
            (b, outcome(RunStatus::Failed, 7, 4)),
            (done, outcome(RunStatus::Failed, 9, 9)),
        ])
        .await
        .unwrap();
    let a = reads.run(a).await.unwrap().unwrap();
    assert_eq!((a.status.as_str(), a.started_at, a.finished_at), ("succeeded", Some(slot(1)), Some(slot(3))));
    assert_eq!((a.exit_code, a.error.as_deref(), a.output.as_str()), (Some(0), None, "out 0\u{FFFD}"));
    let b = reads.run(b).await.unwrap().unwrap();
    assert_eq!((b.status.as_str(), b.started_at, b.finished_at), ("failed", Some(slot(2)), Some(slot(4))));
    assert_eq!((b.exit_code, b.error.as_deref()), (Some(7), Some("exit 7")));
    let done = reads.run(done).await.unwrap().unwrap();
    assert_eq!((done.status.as_str(), done.exit_code), ("succeeded", Some(0)), "a finished row keeps its outcome");
}

/// A run starts only through a fenced `claimed -> running` transition, so a slot
/// that its term claimed but never started can be taken over by the next term, and one that was
/// started never can.
/// What a new term asks to learn whether a database failover lost the older term's last starts
/// (the start witness names them): only rows started by that very term count.
async fn the_ledger_tells_which_of_a_terms_starts_it_holds(store: Store, _reads: Reads) {
    let old = Term::for_tests(10, "c");
    store.begin_term(&old, "old").await.unwrap();
    let started = store.claim_run(&claim("job", slot(0), &old, "old")).await.unwrap();
    store.claim_run(&claim("job", slot(1), &old, "old")).await.unwrap();
    assert_eq!(store.start_runs(&old, &[(started.run_id, slot(0))]).await.unwrap(), [true]);
    let named = |slots: &[u32]| slots.iter().map(|s| ("job".to_owned(), slot(*s))).collect::<Vec<_>>();
    assert_eq!(store.started_by_term(10, &named(&[0, 1, 9])).await.unwrap(), 1);
    assert_eq!(store.started_by_term(10, &named(&[1, 9])).await.unwrap(), 0, "claimed is not started");
    assert_eq!(store.started_by_term(20, &named(&[0])).await.unwrap(), 0, "another term's start");
    assert_eq!(store.started_by_term(10, &[]).await.unwrap(), 0);
}

async fn a_run_starts_through_a_fenced_transition_and_a_newer_term_takes_over_a_claim_never_started(
    store: Store,
    reads: Reads,
) {
    let old = Term::for_tests(10, "c");
    store.begin_term(&old, "old").await.unwrap();
    let started = store.claim_run(&claim("job", slot(0), &old, "old")).await.unwrap();
    let unstarted = store.claim_run(&claim("job", slot(1), &old, "old")).await.unwrap();
    assert_eq!((started.status, unstarted.status), (RunStatus::Running, RunStatus::Running));
    assert_eq!(store.start_runs(&old, &[(started.run_id, slot(0))]).await.unwrap(), [true]);
    // A start retried after its acknowledgement was lost is recognised, once the
    // row says so; a re-claim of a started slot is not "ours and unstarted" any more.
    assert_eq!(store.start_runs(&old, &[(started.run_id, slot(0))]).await.unwrap(), [true]);
    let again = store.claim_run(&claim("job", slot(0), &old, "old")).await;
    assert!(matches!(again, Err(ClaimError::AlreadyClaimed { term: 10, .. })), "{again:?}");
    assert_eq!(store.start_runs(&old, &[(started.run_id, slot(5))]).await.unwrap(), [false], "a second start");

    let new = Term::for_tests(20, "c");
    store.begin_term(&new, "new").await.unwrap();
    // The old term may not start what it claimed once a newer term holds the fence.
    let stale = store.start_runs(&old, &[(unstarted.run_id, slot(1))]).await;
    assert!(matches!(stale, Err(ClaimError::Fenced { term: 10, fence: 20 })), "{stale:?}");
    // The new term takes over the claim nobody started, and only that one.
    let taken_over = store.claim_run(&claim("job", slot(1), &new, "new")).await.unwrap();
    assert_eq!(taken_over.status, RunStatus::Running);
    let refused = store.claim_run(&claim("job", slot(0), &new, "new")).await;
    assert!(matches!(refused, Err(ClaimError::AlreadyClaimed { term: 10, .. })), "{refused:?}");
    assert_eq!(store.start_runs(&new, &[(taken_over.run_id, slot(1))]).await.unwrap(), [true]);
    let row = reads.run(taken_over.run_id).await.unwrap().unwrap();
    assert_eq!((row.term, row.node.as_str(), row.status.as_str()), (20, "new", "running"));
    assert_eq!(row.started_at, Some(slot(1)));

    // Batched claims take over the same way.
    let older = store.claim_run(&claim("other", slot(2), &new, "new")).await.unwrap();
    let newest = Term::for_tests(30, "c");
    store.begin_term(&newest, "newest").await.unwrap();
    let results = store
        .claim_runs(&[claim("other", slot(2), &newest, "newest"), claim("other", slot(3), &newest, "newest")])
        .await;
    assert!(matches!(results[0], Ok(Claimed { status: RunStatus::Running, run_id }) if run_id == older.run_id));
    assert!(matches!(results[1], Ok(Claimed { status: RunStatus::Running, .. })), "{:?}", results[1]);
    let stale = store.start_runs(&new, &[(older.run_id, slot(2))]).await;
    assert!(matches!(stale, Err(ClaimError::Fenced { .. })), "{stale:?}");
}

/// A claim whose acknowledgement was lost and whose slot then passed its starting
/// deadline ends `missed` instead of staying `running` for the term; the next leader does the
/// same with an older term's unstarted claim. A missed manual trigger is manual.
async fn an_unstarted_claim_can_be_recorded_missed_and_keeps_its_trigger(store: Store, reads: Reads) {
    let term = Term::for_tests(3, "c");
    store.begin_term(&term, "n").await.unwrap();
    store.claim_run(&claim("job", slot(0), &term, "n")).await.unwrap();
    let recorded = store
        .record_slots(&UnrunSlots {
            job: "job",
            slots: &[slot(0)],
            status: RunStatus::Missed,
            trigger: Trigger::Schedule,
            term: &term,
            node: "n",
            config_hash: "hash",
            error: "too late",
        })
        .await
        .unwrap();
    assert_eq!(recorded, 1);
    // Nothing of this job runs any more, so `forbid` does not skip its next slot.
    let mut forbid = claim("job", slot(1), &term, "n");
    forbid.skip_if_running = SkipIfRunning::Yes;
    assert_eq!(store.claim_run(&forbid).await.unwrap().status, RunStatus::Running);

    let newer = Term::for_tests(4, "c");
    store.begin_term(&newer, "m").await.unwrap();
    store
        .record_slots(&UnrunSlots {
            job: "job",
            slots: &[slot(1)],
            status: RunStatus::Missed,
            trigger: Trigger::Schedule,
            term: &newer,
            node: "m",
            config_hash: "hash",
            error: "too late",
        })
        .await
        .unwrap();
    let mut manual = claim("job", slot(9), &newer, "m");
    manual.trigger = Trigger::Manual { request: 0 };
    store
        .record_slots(&UnrunSlots {
            job: "job",
            slots: &[slot(8)],
            status: RunStatus::Missed,
            trigger: Trigger::Manual { request: 0 },
            term: &newer,
            node: "m",
            config_hash: "hash",
            error: "too late",
        })
        .await
        .unwrap();
    let rows = reads.all_runs().await.unwrap();
    let seen: Vec<(DateTime<Utc>, &str, i64, &str)> =
        rows.iter().map(|r| (r.slot, r.status.as_str(), r.term, r.trigger.as_str())).collect();
    assert_eq!(
        seen,
        [(slot(0), "missed", 3, "schedule"), (slot(1), "missed", 4, "schedule"), (slot(8), "missed", 4, "manual"),]
    );
    // A started run is history: recording its slot missed changes nothing.
    let started = store.claim_run(&manual).await.unwrap();
    store.start_runs(&newer, &[(started.run_id, slot(9))]).await.unwrap();
    let again = store
        .record_slots(&UnrunSlots {
            job: "job",
            slots: &[slot(9)],
            status: RunStatus::Missed,
            trigger: Trigger::Manual { request: 0 },
            term: &newer,
            node: "m",
            config_hash: "hash",
            error: "x",
        })
        .await
        .unwrap();
    assert_eq!(again, 0);
    assert_eq!(reads.run(started.run_id).await.unwrap().unwrap().status, RunStatus::Running);
}

/// Each job's cursor lives apart from the rows retention prunes: a job seen for
/// the first time gets one, scheduled claims and missed slots advance it, manual triggers and
/// pruning do not move it, and claims an older term never started are reported beside it.
async fn each_job_has_a_cursor_that_retention_and_manual_triggers_cannot_move(store: Store, _reads: Reads) {
    let term = Term::for_tests(1, "c");
    store.begin_term(&term, "n").await.unwrap();
    let cursors = store.job_cursors(&term, &["a", "b"], slot(0)).await.unwrap();
    assert_eq!(cursors["a"].slot, slot(0), "a job seen for the first time starts from then");
    let finished = |at| RunOutcome {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        http_status: None,
        error: None,
        output: String::new(),
        began_at: None,
        finished_at: at,
    };
    for second in [1, 2] {
        let run = store.claim_run(&claim("a", slot(second), &term, "n")).await.unwrap();
        store.start_runs(&term, &[(run.run_id, slot(second))]).await.unwrap();
        store.finish_run(run.run_id, &finished(slot(second))).await.unwrap();
    }
    store
        .record_slots(&UnrunSlots {
            job: "b",
            slots: &[slot(4)],
            status: RunStatus::Missed,
            trigger: Trigger::Schedule,
            term: &term,
            node: "n",
            config_hash: "hash",
            error: "down",
        })
        .await
        .unwrap();
    // A manual run newer than the last scheduled one.
    let mut manual = claim("a", slot(7), &term, "n");
    manual.trigger = Trigger::Manual { request: 0 };
    let manual = store.claim_run(&manual).await.unwrap();
    store.start_runs(&term, &[(manual.run_id, slot(7))]).await.unwrap();
    store.finish_run(manual.run_id, &finished(slot(7))).await.unwrap();
    // Retention takes everything it may.
    while store.prune_runs(&tenure::store::Retention::before(slot(59)), 100).await.unwrap() > 0 {}
    // Seen again much later (a new term): the cursors did not move, `c` is new.
    let newer = Term::for_tests(2, "c");
    store.begin_term(&newer, "m").await.unwrap();
    let cursors = store.job_cursors(&newer, &["a", "b", "c"], slot(50)).await.unwrap();
    assert_eq!((cursors["a"].slot, cursors["b"].slot, cursors["c"].slot), (slot(2), slot(4), slot(50)));
    assert_eq!(cursors["a"].unstarted, None);

    // A claim the previous term never started is reported, so the new term can take it over.
    let orphan = store.claim_run(&claim("a", slot(10), &newer, "m")).await.unwrap();
    let newest = Term::for_tests(3, "c");
    store.begin_term(&newest, "o").await.unwrap();
    let cursors = store.job_cursors(&newest, &["a"], slot(55)).await.unwrap();
    assert_eq!((cursors["a"].slot, cursors["a"].unstarted), (slot(10), Some(slot(10))));
    // A stale term cannot write cursors.
    let stale = store.job_cursors(&newer, &["d"], slot(55)).await;
    assert!(matches!(stale, Err(ClaimError::Fenced { .. })), "{stale:?}");
    let _ = orphan;
}

async fn idempotency_keys_are_scoped_per_job(store: Store, reads: Reads) {
    let a = request(&reads, "a", "key", slot(1)).await.unwrap();
    let b = request(&reads, "b", "key", slot(2)).await.unwrap();
    assert_ne!(a.id, b.id, "the same key for another job is another trigger");
    assert_eq!((a.job.as_str(), b.job.as_str()), ("a", "b"));
    assert_eq!(request(&reads, "a", "key", slot(3)).await.unwrap(), a);
    assert_eq!(request(&reads, "b", "key", slot(4)).await.unwrap(), b);
    assert_eq!(store.pending_triggers().await.unwrap(), [a, b]);
}

/// The claim of a trigger's slot with the trigger's id.
fn manual<'a>(trigger: &TriggerRecord, term: &'a Term, node: &'a str) -> Claim<'a> {
    Claim { trigger: Trigger::Manual { request: trigger.id }, ..claim("job", trigger.requested_at, term, node) }
}

async fn a_trigger_is_handled_only_by_the_claim_of_its_slot(store: Store, reads: Reads) {
    let old = Term::for_tests(5, "c");
    let new = Term::for_tests(6, "c");
    store.begin_term(&old, "a").await.unwrap();
    store.begin_term(&new, "b").await.unwrap();
    // The same key again answers the trigger as recorded now.
    let reread = |key: &'static str| {
        let reads = reads.clone();
        async move { request(&reads, "job", key, slot(59)).await.unwrap() }
    };

    // A fenced claim, alone or in a batch, leaves the trigger pending.
    let first = request(&reads, "job", "k1", slot(10)).await.unwrap();
    let fenced = store.claim_run(&manual(&first, &old, "a")).await;
    assert!(matches!(fenced, Err(ClaimError::Fenced { term: 5, fence: 6 })), "{fenced:?}");
    for result in store.claim_runs(&[manual(&first, &old, "a"), claim("other", slot(1), &old, "a")]).await {
        assert!(matches!(result, Err(ClaimError::Fenced { .. })), "{result:?}");
    }
    assert_eq!(store.pending_triggers().await.unwrap(), std::slice::from_ref(&first));

    // The current term's claim records the run and marks the trigger handled, linked to it.
    let claimed = store.claim_run(&manual(&first, &new, "b")).await.unwrap();
    let first = reread("k1").await;
    assert_eq!(first.run_id, Some(claimed.run_id));
    assert!(first.handled_at.is_some());
    assert_eq!(store.start_runs(&new, &[(claimed.run_id, slot(11))]).await.unwrap(), [true]);
    assert!(store.pending_triggers().await.unwrap().is_empty());

    // A trigger whose slot another term already holds fired there: handled, linked to that run.
    let second = request(&reads, "job", "k2", slot(20)).await.unwrap();
    let held = store.claim_run(&claim("job", slot(20), &new, "b")).await.unwrap();
    store.start_runs(&new, &[(held.run_id, slot(20))]).await.unwrap();
    let newer = Term::for_tests(7, "c");
    store.begin_term(&newer, "c").await.unwrap();
    let taken = store.claim_run(&manual(&second, &newer, "c")).await;
    assert!(matches!(taken, Err(ClaimError::AlreadyClaimed { term: 6, .. })), "{taken:?}");
    let second = reread("k2").await;
    assert_eq!((second.run_id, second.handled_at.is_some()), (Some(held.run_id), true));

    // A trigger claimed and never started (its leader lost the lease before the fenced start)
    // is pending again for the next term, whose claim takes the row over; started, it is done.
    let fifth = request(&reads, "job", "k5", slot(40)).await.unwrap();
    let orphan = store.claim_run(&manual(&fifth, &newer, "c")).await.unwrap();
    assert_eq!(store.pending_triggers().await.unwrap(), [reread("k5").await]);
    let newest = Term::for_tests(8, "c");
    store.begin_term(&newest, "d").await.unwrap();
    let taken_over = store.claim_run(&manual(&fifth, &newest, "d")).await.unwrap();
    assert_eq!(taken_over.run_id, orphan.run_id);
    assert_eq!(store.start_runs(&newest, &[(taken_over.run_id, slot(41))]).await.unwrap(), [true]);
    assert!(store.pending_triggers().await.unwrap().is_empty());
    let newer = newest;

    // In a batch, each manual claim handles its own trigger.
    let third = request(&reads, "job", "k3", slot(30)).await.unwrap();
    let fourth = request(&reads, "job", "k4", slot(31)).await.unwrap();
    let results = store
        .claim_runs(&[manual(&third, &newer, "d"), claim("job", slot(32), &newer, "d"), manual(&fourth, &newer, "d")])
        .await;
    let ids: Vec<i64> = results.iter().map(|result| result.as_ref().expect("claimed").run_id).collect();
    assert_eq!(reread("k3").await.run_id, Some(ids[0]));
    assert_eq!(reread("k4").await.run_id, Some(ids[2]));
    store.start_runs(&newer, &[(ids[0], slot(33)), (ids[2], slot(33))]).await.unwrap();
    assert!(store.pending_triggers().await.unwrap().is_empty());
    let manual_runs =
        reads.all_runs().await.unwrap().into_iter().filter(|run| run.trigger == TriggerKind::Manual).count();
    assert_eq!(manual_runs, 4);
}

async fn a_resume_that_ends_a_pause_records_when(store: Store, reads: Reads) {
    let controls = || {
        let store = store.clone();
        async move { store.job_controls().await.unwrap() }
    };
    reads.set_control("job", Control::Pause, &AuditRecord::by("admin", "pause")).await.unwrap();
    assert_eq!(controls().await["job"], JobControl { paused: true, resumed_at: None });
    let before = store.clock().await.unwrap().now - chrono::Duration::seconds(1);
    reads.set_control("job", Control::Resume, &AuditRecord::by("admin", "resume")).await.unwrap();
    let resumed = controls().await["job"];
    let at = resumed.resumed_at.expect("a resume that ends a pause records when");
    assert!(!resumed.paused && at >= before && at <= Utc::now() + chrono::Duration::seconds(1), "{resumed:?}");

    // Resuming a resumed job changes nothing; a pause keeps the last resume until the next one.
    reads.set_control("job", Control::Resume, &AuditRecord::by("admin", "resume")).await.unwrap();
    assert_eq!(controls().await["job"].resumed_at, Some(at));
    reads.set_control("job", Control::Pause, &AuditRecord::by("admin", "pause")).await.unwrap();
    assert_eq!(controls().await["job"], JobControl { paused: true, resumed_at: Some(at) });
    reads.set_control("job", Control::Resume, &AuditRecord::by("admin", "resume")).await.unwrap();
    assert!(controls().await["job"].resumed_at.is_some_and(|again| again > at));

    // A job without a control was paused by its file: resuming it ends that pause.
    reads.set_control("file-paused", Control::Resume, &AuditRecord::by("admin", "resume")).await.unwrap();
    assert!(controls().await["file-paused"].resumed_at.is_some());
}

/// A term number is begun once. Two leaders holding the same term (two `tenure dev`
/// on one ledger minted the same one) must not both pass the fence; the holder's own retry (its
/// acknowledgement lost) stays idempotent.
async fn a_term_is_begun_by_one_node_only_and_its_own_retry_is_idempotent(store: Store, reads: Reads) {
    let term = Term::for_tests(5, "local");
    store.begin_term(&term, "node-a").await.expect("node-a begins term 5");
    store.begin_term(&term, "node-a").await.expect("node-a's retry of its own begin is accepted");
    let second = store.begin_term(&term, "node-b").await;
    assert!(matches!(second, Err(FenceError::Superseded { term: 5, fence: 5, .. })), "{second:?}");
    let fence = store.fence().await.unwrap();
    assert_eq!((fence.term, fence.node.as_str()), (5, "node-a"));
    let terms: Vec<(i64, String)> = reads.terms().await.unwrap().into_iter().map(|t| (t.term, t.node)).collect();
    assert_eq!(terms, [(5, "node-a".to_owned())]);
    store.claim_run(&claim("job", slot(0), &term, "node-a")).await.expect("the holder claims");

    // Once a newer term holds the fence, not even the holder may begin the old one again.
    store.begin_term(&Term::for_tests(6, "local"), "node-b").await.expect("a newer term");
    let late = store.begin_term(&term, "node-a").await;
    assert!(matches!(late, Err(FenceError::Superseded { term: 5, fence: 6, .. })), "{late:?}");

    // Racing for one term number: exactly one of two nodes begins it, every time.
    for revision in 10..30 {
        let term = Term::for_tests(revision, "local");
        let (a, b) = tokio::join!(store.begin_term(&term, "node-a"), store.begin_term(&term, "node-b"));
        assert_eq!(u8::from(a.is_ok()) + u8::from(b.is_ok()), 1, "term {revision}: {a:?} {b:?}");
    }
}

/// A row this binary cannot read (a status or trigger a newer release wrote, a hand edit) is a
/// decode error on every read, never taken for `running`: a default would show a
/// finished run as still going and let `forbid` skip slots for it.
mod an_unknown_status_or_trigger_in_a_row_is_a_decode_error {
    use super::*;

    #[tokio::test]
    async fn postgres() {
        let pg = crate::harness::Postgres::start().await;
        let pool = fresh_pool(&pg, "unknown_status").await;
        let (store, reads) = Store::with_reads(tenure::store::Postgres::new(pool.clone()));
        let (status_run, trigger_run) = two_claimed_runs(&store).await;
        // What a newer schema might allow: a status this binary does not know.
        sqlx::query("ALTER TABLE runs DROP CONSTRAINT runs_status_check").execute(&pool).await.unwrap();
        sqlx::query("UPDATE runs SET status = 'paused' WHERE id = $1").bind(status_run).execute(&pool).await.unwrap();
        sqlx::query("UPDATE runs SET trigger = 'webhook' WHERE id = $1")
            .bind(trigger_run)
            .execute(&pool)
            .await
            .unwrap();
        every_read_refuses(&reads, status_run, trigger_run).await;
    }

    #[tokio::test]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let (store, reads) = Store::with_reads(tenure::store::Sqlite::open(&path).await.unwrap());
        let (status_run, trigger_run) = two_claimed_runs(&store).await;
        use sqlx::Connection;
        let mut raw = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        sqlx::query("PRAGMA ignore_check_constraints = ON").execute(&mut raw).await.unwrap();
        sqlx::query("UPDATE runs SET status = 'paused' WHERE id = ?1")
            .bind(status_run)
            .execute(&mut raw)
            .await
            .unwrap();
        sqlx::query("UPDATE runs SET trigger = 'webhook' WHERE id = ?1")
            .bind(trigger_run)
            .execute(&mut raw)
            .await
            .unwrap();
        raw.close().await.unwrap();
        every_read_refuses(&reads, status_run, trigger_run).await;
    }

    async fn two_claimed_runs(store: &Store) -> (i64, i64) {
        let term = Term::for_tests(5, "c");
        store.begin_term(&term, "n").await.unwrap();
        let first = store.claim_run(&claim("job", slot(0), &term, "n")).await.unwrap();
        let second = store.claim_run(&claim("other", slot(0), &term, "n")).await.unwrap();
        (first.run_id, second.run_id)
    }

    async fn every_read_refuses(reads: &Reads, status_run: i64, trigger_run: i64) {
        let is_decode = |error: &sqlx::Error| matches!(error, sqlx::Error::ColumnDecode { .. });
        for run_id in [status_run, trigger_run] {
            let read = reads.run(run_id).await;
            assert!(read.as_ref().is_err_and(is_decode), "run {run_id}: {read:?}");
        }
        let all = reads.all_runs().await;
        assert!(all.as_ref().is_err_and(is_decode), "{all:?}");
        for job in ["job", "other"] {
            let page = reads.job_runs(job, None, None, 10).await;
            assert!(page.as_ref().is_err_and(is_decode), "{job}: {page:?}");
        }
        let recent = reads.recent_runs(&["job".to_owned()], 5).await;
        assert!(recent.as_ref().is_err_and(is_decode), "{recent:?}");
    }
}

fn succeeded(at: DateTime<Utc>) -> RunOutcome {
    RunOutcome {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        http_status: None,
        error: None,
        output: String::new(),
        began_at: None,
        finished_at: at,
    }
}

async fn retention_per_job_prunes_only_what_it_should(store: Store, reads: Reads) {
    let term = Term::for_tests(1, "c");
    store.begin_term(&term, "n").await.unwrap();
    for job in ["short", "default"] {
        store.job_cursors(&term, &[job], slot(0)).await.unwrap();
        for second in 0..10 {
            let at = Claim { claimed_at: slot(second), ..claim(job, slot(second), &term, "n") };
            let claimed = store.claim_run(&at).await.unwrap();
            store.finish_run(claimed.run_id, &succeeded(slot(second))).await.unwrap();
        }
    }
    // A backfill's run of an old slot, claimed lately: kept for the retention after its claim.
    let backfill = Claim {
        trigger: Trigger::Backfill { request: 1 },
        claimed_at: slot(50),
        ..claim("short", Utc.with_ymd_and_hms(2026, 11, 23, 11, 0, 0).unwrap(), &term, "n")
    };
    let backfilled = store.claim_run(&backfill).await.unwrap();
    store.finish_run(backfilled.run_id, &succeeded(slot(51))).await.unwrap();

    // `short` keeps rows from second 8 on; every other job from second 3 on.
    let retention = Retention { default_before: slot(3), per_job: vec![("short".to_owned(), slot(8))] };
    while store.prune_runs(&retention, 100).await.unwrap() > 0 {}
    let mut left: Vec<(String, u32)> = reads
        .all_runs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.job, chrono::Timelike::second(&r.slot) + 60 * chrono::Timelike::minute(&r.slot)))
        .collect();
    left.sort();
    let mut want: Vec<(String, u32)> = (3..10).map(|s| ("default".to_owned(), s)).collect();
    want.push(("short".to_owned(), 0)); // the backfilled 11:00:00, minute 0 second 0
    want.extend((8..10).map(|s| ("short".to_owned(), s)));
    want.sort();
    assert_eq!(left, want);
    // Pruning never moves a cursor.
    let cursors = store.job_cursors(&term, &["short", "default"], slot(59)).await.unwrap();
    assert_eq!(cursors["short"].slot, slot(9));
    assert_eq!(cursors["default"].slot, slot(9));
}

async fn a_backfill_queues_each_unheld_slot_once_and_reports_its_progress(store: Store, reads: Reads) {
    let old = Term::for_tests(1, "c");
    store.begin_term(&old, "n").await.unwrap();
    // The ledger holds slot 1 already (a scheduled run).
    let held = store.claim_run(&claim("job", slot(1), &old, "n")).await.unwrap();
    store.start_runs(&old, &[(held.run_id, slot(1))]).await.unwrap();
    store.finish_run(held.run_id, &succeeded(slot(1))).await.unwrap();

    let window: Vec<DateTime<Utc>> = (0..6).map(slot).collect();
    let unheld = reads.unheld_slots("job", &window).await.unwrap();
    assert_eq!(unheld, [slot(0), slot(2), slot(3), slot(4), slot(5)], "the dry run's answer");
    let first = reads
        .request_backfill("job", slot(0), slot(5), &window, &AuditRecord::by("admin", "backfill"), false)
        .await
        .unwrap();
    assert_eq!((first.slots, first.done, first.running, first.pending()), (5, 0, 0, 5));
    // The same request again queues nothing new: every slot is held or queued.
    let again = reads
        .request_backfill("job", slot(0), slot(5), &window, &AuditRecord::by("admin", "backfill"), false)
        .await
        .unwrap();
    assert_eq!((again.slots, again.pending()), (0, 0));
    assert!(reads.unheld_slots("job", &window).await.unwrap().is_empty());

    let queued = store.pending_backfill_slots(100).await.unwrap();
    let slots: Vec<DateTime<Utc>> = queued.iter().map(|q| q.slot).collect();
    assert_eq!(slots, unheld);
    assert!(queued.iter().all(|q| q.backfill == first.id && q.job == "job"));

    // Slot 0 runs to its end, slot 2 is started, slot 3 is claimed by a leader that then dies.
    let backfill = |at| Claim { trigger: Trigger::Backfill { request: first.id }, ..claim("job", at, &old, "n") };
    let zero = store.claim_run(&backfill(slot(0))).await.unwrap();
    store.start_runs(&old, &[(zero.run_id, slot(50))]).await.unwrap();
    store.finish_run(zero.run_id, &succeeded(slot(51))).await.unwrap();
    let two = store.claim_run(&backfill(slot(2))).await.unwrap();
    store.start_runs(&old, &[(two.run_id, slot(50))]).await.unwrap();
    store.claim_run(&backfill(slot(3))).await.unwrap();
    assert_eq!(store.clear_backfill_slots().await.unwrap(), 1, "slot 0 ended: out of the queue");
    let progress = reads.backfill(first.id).await.unwrap().unwrap();
    assert_eq!((progress.slots, progress.done, progress.running, progress.pending()), (5, 1, 1, 3));

    // The next term finds the unstarted claim and the unclaimed slots, and takes slot 3 over.
    let new = Term::for_tests(2, "c");
    store.begin_term(&new, "m").await.unwrap();
    let pending: Vec<DateTime<Utc>> = store.pending_backfill_slots(100).await.unwrap().iter().map(|q| q.slot).collect();
    assert_eq!(pending, [slot(3), slot(4), slot(5)]);
    let taken = store
        .claim_run(&Claim { trigger: Trigger::Backfill { request: first.id }, ..claim("job", slot(3), &new, "m") })
        .await
        .unwrap();
    assert_eq!(taken.status, RunStatus::Running);
    // Backfill claims never move the job's cursor: it is the schedule's.
    let cursors = store.job_cursors(&new, &["job"], slot(59)).await.unwrap();
    assert_eq!(cursors["job"].slot, slot(1));
    assert_eq!(cursors["job"].unstarted, None, "a backfill's claim is no scheduled slot to take over");
    let listed = reads.backfills(Some("job"), 10).await.unwrap();
    assert_eq!(listed.iter().map(|b| b.id).collect::<Vec<_>>(), [again.id, first.id]);
    assert!(reads.backfills(Some("other"), 10).await.unwrap().is_empty());
    let rows = reads.all_runs().await.unwrap();
    assert!(rows.iter().filter(|r| r.slot != slot(1)).all(|r| r.trigger == TriggerKind::Backfill), "{rows:?}");
}

async fn a_triggers_overrides_are_recorded_with_its_run(store: Store, reads: Reads) {
    let term = Term::for_tests(1, "c");
    store.begin_term(&term, "n").await.unwrap();
    let overrides = TriggerOverrides {
        env: [("DRY_RUN".to_owned(), "1".to_owned()), ("REGION".to_owned(), "eu-west".to_owned())].into(),
        reason: Some("re-run after the outage".to_owned()),
        concurrency: Some(tenure::config::Concurrency::Allow),
        cascade: false,
    };
    let request =
        TriggerRequest { job: "job", idempotency_key: "k", by: "api", requested_at: slot(7), overrides: &overrides };
    let trigger = reads.request_trigger(&request, &AuditRecord::by("api", "trigger")).await.unwrap();
    assert_eq!(trigger.overrides, overrides);
    // A retry under the same key keeps the first request's overrides.
    let retry = TriggerRequest { overrides: &TriggerOverrides::default(), ..request };
    assert_eq!(reads.request_trigger(&retry, &AuditRecord::by("api", "trigger")).await.unwrap(), trigger);
    assert_eq!(store.pending_triggers().await.unwrap(), std::slice::from_ref(&trigger));

    let claimed = store
        .claim_run(&Claim { trigger: Trigger::Manual { request: trigger.id }, ..claim("job", slot(7), &term, "n") })
        .await
        .unwrap();
    let of_run = reads.trigger_of_run(claimed.run_id).await.unwrap().expect("the run's trigger");
    assert_eq!((of_run.id, of_run.overrides), (trigger.id, overrides));
    let plain = store.claim_run(&claim("job", slot(8), &term, "n")).await.unwrap();
    assert_eq!(reads.trigger_of_run(plain.run_id).await.unwrap(), None);
    // The planned start is recorded with the claim (the slot here).
    assert_eq!(reads.run(claimed.run_id).await.unwrap().unwrap().planned_at, slot(7));
}

async fn a_late_notification_counts_from_the_planned_start_not_the_slot(store: Store, reads: Reads) {
    let term = Term::for_tests(1, "c");
    store.begin_term(&term, "n").await.unwrap();
    let route = tenure::store::NotifyRoute {
        job: "job".to_owned(),
        target: "ops".to_owned(),
        label: "https://ops.example".to_owned(),
        events: ",late,".to_owned(),
        late_ms: Some(500),
    };
    store.set_notify_routes(&term, &[route]).await.unwrap();
    let planned = |at: DateTime<Utc>, planned_at: DateTime<Utc>, trigger: Trigger| Claim {
        trigger,
        claimed_at: at,
        planned_at,
        ..claim("job", at, &term, "n")
    };
    // Jittered by 20 s and started on its planned start: on time.
    let jittered = store.claim_run(&planned(slot(0), slot(20), Trigger::Schedule)).await.unwrap().run_id;
    store.start_runs(&term, &[(jittered, slot(20) + chrono::Duration::milliseconds(100))]).await.unwrap();
    // A backfill of an old slot, started when it was claimed: on time too.
    let old = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap();
    let backfill = store.claim_run(&planned(old, slot(30), Trigger::Backfill { request: 1 })).await.unwrap().run_id;
    store.start_runs(&term, &[(backfill, slot(30))]).await.unwrap();
    // Jittered by 2 s and started 1 s after that: late, and told.
    let late = store.claim_run(&planned(slot(40), slot(42), Trigger::Schedule)).await.unwrap().run_id;
    store.start_runs(&term, &[(late, slot(43))]).await.unwrap();
    let told = |run| {
        let reads = reads.clone();
        async move { reads.run_notifications(run).await.unwrap().into_iter().map(|n| n.event).collect::<Vec<_>>() }
    };
    assert_eq!(told(jittered).await, Vec::<String>::new(), "a jittered start is not late");
    assert_eq!(told(backfill).await, Vec::<String>::new(), "a backfill's start is not late");
    assert_eq!(told(late).await, ["late"]);
}

async fn a_longer_retain_holds_and_a_job_gone_from_the_file_keeps_the_ledgers_in_bounded_batches(
    store: Store,
    reads: Reads,
) {
    let term = Term::for_tests(1, "c");
    store.begin_term(&term, "n").await.unwrap();
    for job in ["gone", "long", "plain"] {
        for second in 0..10 {
            let at = Claim { claimed_at: slot(second), ..claim(job, slot(second), &term, "n") };
            let claimed = store.claim_run(&at).await.unwrap();
            store.finish_run(claimed.run_id, &succeeded(slot(second))).await.unwrap();
        }
    }
    // The ledger keeps rows from second 6 on; `long` its own, from second 2 on; `gone` is in no
    // job file, so the ledger's retention is its.
    let retention = Retention {
        default_before: slot(6),
        per_job: vec![("long".to_owned(), slot(2)), ("plain".to_owned(), slot(6))],
    };
    let mut batches = Vec::new();
    loop {
        let pruned = store.prune_runs(&retention, 4).await.unwrap();
        batches.push(pruned);
        if pruned == 0 {
            break;
        }
    }
    assert!(batches.iter().all(|pruned| *pruned <= 4), "every batch within its bound: {batches:?}");
    assert_eq!(batches.iter().sum::<u64>(), 6 + 2 + 6);
    let mut left: Vec<(String, u32)> =
        reads.all_runs().await.unwrap().into_iter().map(|r| (r.job, chrono::Timelike::second(&r.slot))).collect();
    left.sort();
    let mut want: Vec<(String, u32)> = (6..10).map(|s| ("gone".to_owned(), s)).collect();
    want.extend((2..10).map(|s| ("long".to_owned(), s)));
    want.extend((6..10).map(|s| ("plain".to_owned(), s)));
    assert_eq!(left, want);
}
