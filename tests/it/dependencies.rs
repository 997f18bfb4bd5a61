//! Jobs that wait for other jobs (`after:`): the ledger's scan for released slots on PostgreSQL
//! and SQLite, and real clusters: a chain every second across a SIGKILL and a SIGSTOP of its
//! leader between an awaited run's end and the claim it releases (each link once per slot, by
//! the checker's dependency rule), a failure branch, a fan-in with an awaited run lost, a cycle
//! refused with its location, manual runs that cascade only when asked and a cascade backfill
//! asked twice.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tenure::config::AfterOn;
use tenure::leadership::Term;
use tenure::model::{RunOutcome, RunStatus, Trigger, TriggerKind};
use tenure::store::{
    AuditRecord, AwaitLink, Claim, Reads, RunRecord, SkipIfRunning, Store, TriggerOverrides, TriggerRequest,
};

use crate::checker::{Expect, Link, check, check_links};
use crate::cluster::{ADMIN_TOKEN, Cluster, Options, TTL};
use crate::faults::counter;
use crate::harness::wait_for;

async fn fresh_pool(pg: &crate::harness::Postgres, name: &str) -> sqlx::PgPool {
    let url = pg.create_database(name).await;
    let pool = tenure::store::connect(&url).await.expect("connect");
    tenure::store::migrate(&pool).await.expect("migrate");
    pool
}

mod awaited_runs_are_found_in_the_ledger_until_the_dependent_holds_the_slot {
    #[tokio::test]
    async fn postgres() {
        let pg = crate::harness::Postgres::start().await;
        let pool = super::fresh_pool(&pg, "awaited_runs").await;
        let (store, reads) = tenure::store::Store::with_reads(tenure::store::Postgres::new(pool));
        super::awaited_runs_are_found(store, reads).await;
    }

    #[tokio::test]
    async fn sqlite() {
        let ledger = tenure::store::Sqlite::in_memory().await.expect("sqlite");
        let (store, reads) = tenure::store::Store::with_reads(ledger);
        super::awaited_runs_are_found(store, reads).await;
    }
}

fn slot(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, second).unwrap()
}

fn claim<'a>(job: &'a str, at: DateTime<Utc>, trigger: Trigger, term: &'a Term) -> Claim<'a> {
    Claim {
        job,
        slot: at,
        trigger,
        term,
        node: "n",
        config_hash: "hash",
        skip_if_running: SkipIfRunning::No,
        claimed_at: Utc::now(),
        planned_at: at,
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

/// One run of `job` at `at`, claimed, started and ended `status` at `end`.
async fn run(
    store: &Store,
    term: &Term,
    job: &str,
    at: DateTime<Utc>,
    trigger: Trigger,
    status: RunStatus,
    end: DateTime<Utc>,
) -> i64 {
    let claimed = store.claim_run(&claim(job, at, trigger, term)).await.unwrap();
    store.start_runs(term, &[(claimed.run_id, at)]).await.unwrap();
    store.finish_run(claimed.run_id, &ended(status, end)).await.unwrap();
    claimed.run_id
}

async fn awaited_runs_are_found(store: Store, reads: Reads) {
    let old = Term::for_tests(1, "c");
    store.begin_term(&old, "n").await.unwrap();
    let since = slot(0);
    let links = [
        AwaitLink { dependent: "b", upstream: "a", since },
        AwaitLink { dependent: "join", upstream: "a", since },
        AwaitLink { dependent: "join", upstream: "x", since },
    ];
    let a1 = run(&store, &old, "a", slot(1), Trigger::Schedule, RunStatus::Succeeded, slot(2)).await;
    // A run still going releases nothing yet.
    let going = store.claim_run(&claim("a", slot(3), Trigger::Schedule, &old)).await.unwrap();
    store.start_runs(&old, &[(going.run_id, slot(3))]).await.unwrap();
    let found = store.awaited_runs(&old, &links).await.unwrap();
    let seen: Vec<(&str, &str, i64)> = found.iter().map(|r| (r.dependent.as_str(), r.job.as_str(), r.run_id)).collect();
    // `join` also waits for `x`, which has no run of slot 1 yet: only `a`'s is listed.
    assert_eq!(seen, [("b", "a", a1), ("join", "a", a1)]);
    assert!(found.iter().all(|r| (r.slot, r.ended_at) == (slot(1), Some(slot(2)))), "{found:?}");
    let x1 = run(&store, &old, "x", slot(1), Trigger::Schedule, RunStatus::Failed, slot(4)).await;
    let found = store.awaited_runs(&old, &links[1..]).await.unwrap();
    let join: Vec<(i64, RunStatus)> = found.iter().map(|r| (r.run_id, r.status)).collect();
    assert_eq!(join, [(a1, RunStatus::Succeeded), (x1, RunStatus::Failed)], "every awaited run of the slot");
    // Ended before the link's instant: not looked at.
    let late = [AwaitLink { since: slot(5), ..links[0] }];
    assert!(store.awaited_runs(&old, &late).await.unwrap().is_empty());

    // This term's claim of b holds the slot; an older term's that never started does not: the
    // next term finds the slot again and its claim takes the row over.
    let b1 = store.claim_run(&claim("b", slot(1), Trigger::Upstream, &old)).await.unwrap();
    assert!(store.awaited_runs(&old, &links[..1]).await.unwrap().is_empty(), "the slot is held");
    let new = Term::for_tests(2, "c");
    store.begin_term(&new, "m").await.unwrap();
    assert_eq!(store.awaited_runs(&new, &links[..1]).await.unwrap().len(), 1, "an older term's claim never started");
    let taken = store.claim_run(&claim("b", slot(1), Trigger::Upstream, &new)).await.unwrap();
    assert_eq!(taken.run_id, b1.run_id, "the same row, taken over");
    store.start_runs(&new, &[(taken.run_id, slot(1))]).await.unwrap();
    assert!(store.awaited_runs(&new, &links[..1]).await.unwrap().is_empty(), "started: the slot is held");
    let row = reads.run(taken.run_id).await.unwrap().unwrap();
    assert_eq!((row.trigger, row.term), (TriggerKind::Upstream, 2));

    // A manual run releases only when its request asked to cascade.
    for (key, second, cascade) in [("plain", 10, false), ("cascading", 11, true)] {
        let overrides = TriggerOverrides { cascade, ..TriggerOverrides::default() };
        let request = TriggerRequest {
            job: "a",
            idempotency_key: key,
            by: "admin",
            requested_at: slot(second),
            overrides: &overrides,
        };
        let trigger = reads.request_trigger(&request, &AuditRecord::by("admin", "trigger")).await.unwrap();
        assert_eq!(trigger.overrides.cascade, cascade);
        run(&store, &new, "a", slot(second), Trigger::Manual { request: trigger.id }, RunStatus::Succeeded, slot(12))
            .await;
    }
    let found = store.awaited_runs(&new, &links[..1]).await.unwrap();
    let slots: Vec<DateTime<Utc>> = found.iter().map(|r| r.slot).collect();
    assert_eq!(slots, [slot(11)], "only the manual run asked to cascade releases");
    // A backfill's runs likewise, per request.
    let window = [slot(20), slot(21)];
    let plain = reads
        .request_backfill("a", slot(20), slot(20), &window[..1], &AuditRecord::by("admin", "backfill"), false)
        .await
        .unwrap();
    let cascading = reads
        .request_backfill("a", slot(21), slot(21), &window[1..], &AuditRecord::by("admin", "backfill"), true)
        .await
        .unwrap();
    assert!(cascading.cascade && !plain.cascade);
    run(&store, &new, "a", slot(20), Trigger::Backfill { request: plain.id }, RunStatus::Succeeded, slot(22)).await;
    run(&store, &new, "a", slot(21), Trigger::Backfill { request: cascading.id }, RunStatus::Succeeded, slot(22)).await;
    let found = store.awaited_runs(&new, &links[..1]).await.unwrap();
    let slots: Vec<DateTime<Utc>> = found.iter().map(|r| r.slot).collect();
    assert_eq!(slots, [slot(11), slot(21)]);
    // A slot skipped at its claim ends there, and is found (its dependent is recorded, not dropped).
    let mut skipping = claim("a", slot(30), Trigger::Schedule, &new);
    skipping.skip_if_running = SkipIfRunning::Yes;
    let skipped = store.claim_run(&skipping).await.unwrap();
    assert_eq!(skipped.status, RunStatus::Skipped, "slot 3's run still goes");
    let found = store.awaited_runs(&new, &links[..1]).await.unwrap();
    assert!(found.iter().any(|r| r.slot == slot(30) && r.status == RunStatus::Skipped), "{found:?}");
}

async fn post(url: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new().post(url).bearer_auth(ADMIN_TOKEN).json(&body).send().await.expect("post")
}

fn rows_of<'a>(ledger: &'a [RunRecord], job: &str) -> Vec<&'a RunRecord> {
    ledger.iter().filter(|row| row.job == job).collect()
}

/// An `a` slot whose run has ended while the run it releases of `b` has no row yet: where the
/// leader is between an awaited run's outcome and the claim it releases.
async fn between_outcome_and_claim(cluster: &Cluster) -> Option<DateTime<Utc>> {
    let ledger = cluster.ledger().await;
    let ended = ledger.iter().filter(|row| row.job == "a" && row.status == RunStatus::Succeeded);
    let mut waiting: Vec<DateTime<Utc>> =
        ended.filter(|a| !ledger.iter().any(|b| b.job == "b" && b.slot == a.slot)).map(|a| a.slot).collect();
    waiting.sort();
    waiting.pop()
}

const CHAIN: &str = r#"
jobs:
  - name: a
    schedule: "* * * * * *"
    shell: WITNESS
    timeout: 10s
  - name: b
    after: [a]
    shell: WITNESS
    concurrency: allow
    catch_up: all
    timeout: 10s
  - name: c
    after: [b]
    shell: WITNESS
    concurrency: allow
    catch_up: all
    timeout: 10s
"#;

/// A chain a -> b -> c every second for a minute (`catch_up: all` for b and c, so what a
/// failover released late still runs). What a look at the ledger found reaches the
/// leader 600 ms late (a test switch), so the faults land between an `a` outcome and the claim of
/// the `b` it releases: the leader is SIGKILLed there, and later SIGSTOPped there past its lease
/// with its self-fencing off, so that on resuming it claims what it had found and only the fence
/// refuses it. Each of a, b and c runs at most once per slot, every released link runs or is
/// recorded with its reason, and the two slots caught in the faults run their `b` and `c` exactly
/// once, by the next leader.
#[tokio::test]
async fn a_chain_runs_each_link_once_per_slot_across_a_sigkill_and_a_sigstop_between_an_outcome_and_its_claim() {
    let options = Options {
        env: vec![
            ("TENURE_TEST_RELEASE_HOLD_MS".into(), "600".into()),
            ("TENURE_TEST_NO_SELF_FENCE".into(), "1".into()),
        ],
        ..Options::default()
    };
    let mut cluster = Cluster::start_with(3, CHAIN, options).await;
    let begun = Instant::now();
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    let from = Utc::now() + chrono::Duration::seconds(1);
    cluster.let_it_tick(8).await;
    let mut caught = Vec::new();
    let mut fault_windows = Vec::new();
    let mut leader_term = (leader, term);
    for fault in [Signal::SIGKILL, Signal::SIGSTOP] {
        let (leader, term) = leader_term;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let mut slot = None;
        for _ in 0..100 {
            slot = between_outcome_and_claim(&cluster).await;
            if slot.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let slot = slot.unwrap_or_else(|| panic!("never between an outcome and its claim\n{}", cluster.logs()));
        let at = Utc::now();
        cluster.event(format!(
            "{fault:?} {} (term {term}): a of {slot} ended, b not claimed",
            cluster.replicas[leader].node
        ));
        match fault {
            Signal::SIGKILL => cluster.kill(leader),
            _ => cluster.signal(leader, fault),
        }
        let handover = crate::faults::handover_after(&cluster, Instant::now(), term, Duration::from_secs(15)).await;
        let (next, next_term) = (handover.new_leader, handover.new_term);
        if fault == Signal::SIGSTOP {
            tokio::time::sleep(TTL * 3).await;
            cluster.event("SIGCONT the paused leader");
            cluster.signal(leader, Signal::SIGCONT);
            wait_for("the resumed leader's claim to be refused by the fence", Duration::from_secs(10), || async {
                counter(&cluster, leader, "tenure_claims_rejected_total{reason=\"fenced\"}").await > 0.0
            })
            .await;
        } else {
            cluster.restart(leader);
        }
        fault_windows.push(crate::faults::window(at, Utc::now()));
        wait_for("the caught slot's b and c to run", Duration::from_secs(20), || async {
            let witness = cluster.witness();
            ["b", "c"].iter().all(|job| witness.iter().any(|w| w.job == *job && w.slot == slot))
        })
        .await;
        caught.push((slot, term));
        leader_term = (next, next_term);
    }
    // A minute of slots in all.
    let left = Duration::from_secs(62).saturating_sub(begun.elapsed());
    tokio::time::sleep(left).await;
    let until = Utc::now() - chrono::Duration::seconds(4);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.wait_for_reaped(Duration::from_secs(20)).await;

    let witness = cluster.witness();
    let ledger = cluster.ledger().await;
    for (slot, term) in &caught {
        for job in ["b", "c"] {
            let ran: Vec<_> = witness.iter().filter(|w| w.job == job && w.slot == *slot).collect();
            assert_eq!(ran.len(), 1, "{job} of the caught slot {slot} runs exactly once: {ran:?}");
            assert!(ran[0].term > *term, "{job} of {slot} ran by the faulted term {term}: {ran:?}");
        }
    }
    // Each link once per slot, none dropped; a's slots by the checker's usual rules.
    let report = crate::checker::check_excusing(
        &witness,
        &ledger,
        &Expect { jobs: &["a"], from, until, missed_allowed: true },
        &fault_windows,
    );
    cluster.verdict(&report).await;
    let links = [
        Link { dependent: "b", upstream: "a", on: AfterOn::Success },
        Link { dependent: "c", upstream: "b", on: AfterOn::Success },
    ];
    let violations = check_links(&witness, &ledger, &links, from, until, true);
    assert!(violations.is_empty(), "{violations:#?}\n{}", cluster.logs());
    let ran = |job: &str| witness.iter().filter(|w| w.job == job && from <= w.slot && w.slot <= until).count();
    eprintln!(
        "chain over {}s: a ran {}, b ran {}, c ran {}; b rows {}, c rows {}",
        (until - from).num_seconds(),
        ran("a"),
        ran("b"),
        ran("c"),
        rows_of(&ledger, "b").len(),
        rows_of(&ledger, "c").len()
    );
    assert!(ran("c") as i64 >= (until - from).num_seconds() * 3 / 4, "most slots ran the whole chain");
}

/// `bad` fails every time: its failure branch runs, and the job waiting for its success is
/// recorded `skipped`, saying why (both `concurrency: allow`: under `forbid`, a branch's run is
/// skipped while the one before is going or, after the leader's kill, awaits its reaping). `join` waits for `ok` and `slow`; the leader is SIGKILLed while
/// `slow` runs, the next leader reaps that run `lost`, and `join` of its slot is recorded `skipped`
/// with the lost run named, never left without a row.
#[tokio::test]
async fn a_failure_branch_runs_and_a_fan_in_with_an_awaited_run_lost_is_recorded_with_its_reason() {
    let jobs = r#"
jobs:
  - name: bad
    schedule: "*/2 * * * * *"
    shell: WITNESS; exit 3
    timeout: 10s
  - name: on-failure
    after: [{ job: bad, on: failure }]
    shell: WITNESS
    concurrency: allow
  - name: on-success
    after: [bad]
    shell: WITNESS
    concurrency: allow
  - name: ok
    schedule: "*/4 * * * * *"
    shell: WITNESS
    timeout: 10s
  - name: slow
    schedule: "*/4 * * * * *"
    shell: WITNESS; sleep 3
    timeout: 10s
  - name: join
    after: [ok, slow]
    shell: WITNESS; echo "released by $TENURE_UPSTREAM_RUN_IDS"
"#;
    let mut cluster = Cluster::start(2, jobs).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    let from = Utc::now() + chrono::Duration::seconds(1);
    wait_for("a join to run", Duration::from_secs(20), || async { cluster.witness().iter().any(|w| w.job == "join") })
        .await;
    // Into a `slow` run: its slot is a multiple of 4 s, and it runs for 3.
    let going = std::cell::Cell::new(None);
    wait_for("a slow run going", Duration::from_secs(10), || async {
        let now = Utc::now();
        let slow = cluster
            .witness()
            .into_iter()
            .find(|w| w.job == "slow" && now - w.slot < chrono::Duration::milliseconds(1500));
        going.set(slow.map(|w| w.slot));
        going.get().is_some()
    })
    .await;
    let slot_lost = going.get().unwrap();
    // The other awaited run of that slot has ended, recorded: only `slow` is lost.
    wait_for("ok of the slot to be recorded", Duration::from_secs(3), || async {
        cluster.ledger().await.iter().any(|r| r.job == "ok" && r.slot == slot_lost && r.status == RunStatus::Succeeded)
    })
    .await;
    cluster.event(format!("SIGKILL {} (term {term}) while slow of {slot_lost} runs", cluster.replicas[leader].node));
    let killed_at = Utc::now();
    cluster.kill(leader);
    crate::faults::handover_after(&cluster, Instant::now(), term, Duration::from_secs(15)).await;
    cluster.wait_for_reaped(Duration::from_secs(20)).await;
    let join_of = |ledger: &[RunRecord]| ledger.iter().find(|r| r.job == "join" && r.slot == slot_lost).cloned();
    let recorded =
        crate::harness::wait_until(Duration::from_secs(20), || async { join_of(&cluster.ledger().await).is_some() })
            .await;
    if !recorded {
        let ledger = cluster.ledger().await;
        let near: Vec<_> = ledger.iter().filter(|r| r.slot == slot_lost).collect();
        panic!("the join of {slot_lost} was not recorded: {near:#?}\n{}", cluster.logs());
    }
    cluster.let_it_tick(10).await;
    let until = Utc::now() - chrono::Duration::seconds(5);
    tokio::time::sleep(Duration::from_secs(5)).await;

    let witness = cluster.witness();
    let ledger = cluster.ledger().await;
    let slow = ledger.iter().find(|r| r.job == "slow" && r.slot == slot_lost).expect("the slow run of the lost slot");
    assert_eq!(slow.status, RunStatus::Lost, "{slow:?}");
    let join = join_of(&ledger).unwrap();
    assert_eq!(join.status, RunStatus::Skipped, "{join:?}");
    assert_eq!(join.error.as_deref(), Some(format!("not run: awaited run {} of `slow` was lost", slow.id).as_str()));
    // The failure branch, slot by slot.
    let in_range = |row: &&RunRecord| from <= row.slot && row.slot <= until;
    let bad: Vec<&RunRecord> =
        ledger.iter().filter(|r| r.job == "bad" && r.status == RunStatus::Failed).filter(in_range).collect();
    assert!(bad.len() >= 5, "{bad:?}");
    for failed in &bad {
        let branch = |job: &str| ledger.iter().find(|r| r.job == job && r.slot == failed.slot).cloned();
        let on_failure = branch("on-failure").unwrap_or_else(|| panic!("on-failure of {}", failed.slot));
        // A branch run executing on the leader when it was killed is lost with it, as any run is.
        let on_the_killed_leader = on_failure.term == term && (failed.slot - killed_at).num_seconds().abs() <= 3;
        let expected = if on_the_killed_leader && on_failure.status == RunStatus::Lost {
            RunStatus::Lost
        } else {
            RunStatus::Succeeded
        };
        assert_eq!((on_failure.status, on_failure.trigger), (expected, TriggerKind::Upstream), "{on_failure:?}");
        let on_success = branch("on-success").unwrap_or_else(|| panic!("on-success of {}", failed.slot));
        assert_eq!(on_success.status, RunStatus::Skipped);
        let reason =
            format!("not run: awaited run {} of `bad` ended failed, and this job waits for its success", failed.id);
        assert_eq!(on_success.error.as_deref(), Some(reason.as_str()));
    }
    // A join that ran names the runs that released it.
    let released = ledger.iter().find(|r| r.job == "join" && r.status == RunStatus::Succeeded).expect("a join ran");
    let ok = ledger.iter().find(|r| r.job == "ok" && r.slot == released.slot).unwrap();
    let slow = ledger.iter().find(|r| r.job == "slow" && r.slot == released.slot).unwrap();
    assert!(released.output.contains(&format!("released by {},{}", ok.id, slow.id)), "{:?}", released.output);
    let links = [
        Link { dependent: "on-failure", upstream: "bad", on: AfterOn::Failure },
        Link { dependent: "on-success", upstream: "bad", on: AfterOn::Success },
        Link { dependent: "join", upstream: "ok", on: AfterOn::Success },
        Link { dependent: "join", upstream: "slow", on: AfterOn::Success },
    ];
    let violations = check_links(&witness, &ledger, &links, from, until, true);
    assert!(violations.is_empty(), "{violations:#?}");
    let report = check(&witness, &ledger, &Expect { jobs: &[], from, until, missed_allowed: true });
    cluster.verdict(&report).await;
}

/// `tenure validate` refuses a cycle and an unknown awaited job, each at the `after` entry that
/// names it, and `tenure next --job` says what a job waits for and what waits for it.
#[test]
fn a_cycle_is_refused_with_its_location_and_next_tells_what_a_job_waits_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.yaml");
    let text = "jobs:\n  - name: extract\n    after: [load]\n    shell: 'true'\n  - name: transform\n    after: [extract]\n    shell: 'true'\n  - name: load\n    after: [transform, report]\n    shell: 'true'\n";
    std::fs::write(&path, text).unwrap();
    let file = path.display().to_string();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tenure")).args(["validate", &file]).output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!(
                "{file}:6:13: job `transform`: `after`: a cycle: transform waits for extract waits for load waits for transform; a job may not wait for itself"
            ),
            format!("{file}:9:24: job `load`: `after`: there is no job `report` in the file"),
        ],
        "{stderr}"
    );
    let text = "jobs:\n  - name: extract\n    schedule: '@hourly'\n    shell: 'true'\n  - name: load\n    after: [extract, { job: check, on: always }]\n    within: 10m\n    shell: 'true'\n  - name: check\n    schedule: '@daily'\n    shell: 'true'\n";
    std::fs::write(&path, text).unwrap();
    let next = |job: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
            .args(["next", "--jobs", &file, "--job", job, "--count", "1", "--from", "2026-01-01T00:00:00Z"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(next("load"), "waits for extract (success), check (always) within 10m\n");
    assert_eq!(next("extract"), "its runs release: load\n2026-01-01T01:00:00+00:00\n");
}

/// A manual run of `up` releases `mid` (and so `down`) only when asked (`cascade`); a backfill of `up`
/// with `cascade` runs the chain once for every slot of its window, and the same backfill again
/// runs nothing new.
#[tokio::test]
async fn manual_runs_cascade_only_when_asked_and_a_cascade_backfill_asked_twice_runs_each_link_once() {
    let jobs = r#"
jobs:
  - name: up
    schedule: "0 0 1 1 *"
    shell: WITNESS
    concurrency: allow
  - name: mid
    after: [up]
    shell: WITNESS
    concurrency: allow
  - name: down
    after: [mid]
    shell: WITNESS
    concurrency: allow
"#;
    let cluster = Cluster::start(2, jobs).await;
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    let api = cluster.url((leader + 1) % 2);
    wait_for("the follower to serve", Duration::from_secs(15), || async {
        reqwest::get(format!("{api}/healthz")).await.is_ok_and(|answer| answer.status() == 200)
    })
    .await;
    let count = |job: &str| cluster.witness().iter().filter(|w| w.job == job).count();

    let plain = post(&format!("{api}/api/jobs/up/trigger"), json!({"idempotency_key": "plain"})).await;
    assert!(plain.status().is_success(), "{}", plain.status());
    wait_for("the plain manual run", Duration::from_secs(15), || async { count("up") == 1 }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((count("mid"), count("down")), (0, 0), "a manual run releases nothing unless asked");
    let cascading =
        post(&format!("{api}/api/jobs/up/trigger"), json!({"idempotency_key": "cascading", "cascade": true})).await;
    assert!(cascading.status().is_success(), "{}", cascading.status());
    wait_for("the cascading manual run's chain", Duration::from_secs(15), || async { count("down") == 1 }).await;
    assert_eq!((count("up"), count("mid")), (2, 1));

    // Three yearly slots, the chain for each, once.
    let window = json!({"from": "2023-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z", "cascade": true});
    let first = post(&format!("{api}/api/jobs/up/backfill"), window.clone()).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!((first["slots"].as_i64(), first["cascade"].as_bool()), (Some(3), Some(true)));
    wait_for("the backfill's chains", Duration::from_secs(30), || async { count("down") == 4 }).await;
    let again = post(&format!("{api}/api/jobs/up/backfill"), window).await;
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["slots"].as_i64(), Some(0), "nothing new to queue: {again}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let witness = cluster.witness();
    let ledger = cluster.ledger().await;
    for job in ["up", "mid", "down"] {
        let slots: Vec<DateTime<Utc>> = {
            let mut slots: Vec<DateTime<Utc>> = witness.iter().filter(|w| w.job == job).map(|w| w.slot).collect();
            slots.sort();
            slots
        };
        let backfilled: Vec<&DateTime<Utc>> = slots.iter().filter(|slot| slot.timestamp() < 1_750_000_000).collect();
        assert_eq!(backfilled.len(), 3, "{job}: each backfilled slot once: {slots:?}");
        assert_eq!(rows_of(&ledger, job).len(), if job == "up" { 5 } else { 4 }, "{job}");
    }
    // The API and the pages say what waits for what, and link the runs of one slot.
    let client = reqwest::Client::new();
    let get_json = |path: String| {
        let client = client.clone();
        async move {
            let answer = client.get(path).bearer_auth(ADMIN_TOKEN).send().await.expect("get");
            assert!(answer.status().is_success(), "{}", answer.status());
            answer.json::<Value>().await.expect("json")
        }
    };
    let mid_job = get_json(format!("{api}/api/jobs/mid")).await;
    assert_eq!(mid_job["after"], json!([{"job": "up", "on": "success"}]), "{mid_job}");
    assert_eq!(mid_job["dependents"], json!(["down"]), "{mid_job}");
    let mid = ledger.iter().find(|r| r.job == "mid" && r.slot.timestamp() < 1_750_000_000).unwrap();
    let up = ledger.iter().find(|r| r.job == "up" && r.slot == mid.slot).unwrap();
    let down = ledger.iter().find(|r| r.job == "down" && r.slot == mid.slot).unwrap();
    let run = get_json(format!("{api}/api/runs/{}", mid.id)).await;
    assert_eq!(run["released_by"], json!([{"id": up.id, "job": "up", "status": "succeeded"}]), "{run}");
    assert_eq!(run["released"], json!([{"id": down.id, "job": "down", "status": "succeeded"}]), "{run}");
    let page = |path: String| {
        let client = client.clone();
        async move { client.get(path).send().await.expect("page").text().await.expect("text") }
    };
    let job_page = page(format!("{api}/jobs/mid")).await;
    assert!(job_page.contains(r#"Waits for <a href="/jobs/up">up</a> (success)"#), "{job_page}");
    assert!(job_page.contains(r#"Waited for by <a href="/jobs/down">down</a>"#), "{job_page}");
    let run_page = page(format!("{api}/runs/{}", mid.id)).await;
    assert!(run_page.contains(&format!(r#"<a href="/runs/{}">up #{}</a>"#, up.id, up.id)), "{run_page}");
    assert!(run_page.contains(&format!(r#"<a href="/runs/{}">down #{}</a>"#, down.id, down.id)), "{run_page}");

    let links = [
        Link { dependent: "mid", upstream: "up", on: AfterOn::Success },
        Link { dependent: "down", upstream: "mid", on: AfterOn::Success },
    ];
    let far = Utc.with_ymd_and_hms(2022, 1, 1, 0, 0, 0).unwrap();
    let backfill_only: Vec<RunRecord> = ledger.iter().filter(|r| r.slot.timestamp() < 1_750_000_000).cloned().collect();
    let violations = check_links(&witness, &backfill_only, &links, far, Utc::now(), false);
    assert!(violations.is_empty(), "{violations:#?}");
}

/// `tenure dev` (SQLite, in-process leadership) runs a chain the same way: each link once per
/// slot, after its awaited run, by the dependency rule.
#[tokio::test]
async fn tenure_dev_runs_a_chain_each_link_once_per_slot() {
    let dir = tempfile::tempdir().unwrap();
    let witness_path = dir.path().join("witness");
    let jobs = CHAIN.replace("WITNESS", &crate::cluster::witness_command(&witness_path));
    let jobs_path = dir.path().join("jobs.yaml");
    std::fs::write(&jobs_path, jobs).unwrap();
    let ledger_path = dir.path().join("ledger.db");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["dev", "--admin-token", "tok", "--listen"])
        .arg(format!("127.0.0.1:{}", crate::harness::free_port()))
        .arg("--jobs")
        .arg(&jobs_path)
        .arg("--ledger")
        .arg(&ledger_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start tenure dev");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut child);
    let witness = || crate::checker::Witness::read(&witness_path);
    wait_for("ten chains", Duration::from_secs(30), || async {
        witness().iter().filter(|w| w.job == "c").count() >= 10
    })
    .await;
    let ledger = tenure::store::Sqlite::open(&ledger_path).await.expect("open the ledger");
    let rows = tenure::store::LedgerReads::all_runs(&ledger).await.unwrap();
    let witness = witness();
    let from = witness.iter().map(|w| w.slot).min().unwrap();
    let until = witness.iter().filter(|w| w.job == "c").map(|w| w.slot).max().unwrap();
    let links = [
        Link { dependent: "b", upstream: "a", on: AfterOn::Success },
        Link { dependent: "c", upstream: "b", on: AfterOn::Success },
    ];
    let violations = check_links(&witness, &rows, &links, from, until, false);
    assert!(violations.is_empty(), "{violations:#?}");
    let report = check(&witness, &rows, &Expect { jobs: &["a"], from, until, missed_allowed: false });
    assert!(report.is_clean(), "{report:#?}");
}

/// A released run handed to another replica (`run_on`) is told which runs released it, as one
/// the leader executes is: `TENURE_UPSTREAM_RUN_IDS`, the awaited runs of its slot.
#[tokio::test]
async fn a_released_run_executing_on_another_replica_is_told_the_runs_that_released_it() {
    let jobs = r#"
jobs:
  - name: up
    schedule: "*/2 * * * * *"
    shell: WITNESS
  - name: down
    after: [up]
    run_on: { tags: [far] }
    shell: WITNESS; echo "released by ${TENURE_UPSTREAM_RUN_IDS-nothing} on $TENURE_NODE"
"#;
    // The leader (node-0) offers no tag: every `down` run executes on node-1.
    let options =
        Options { replica_args: vec![("node-1".to_owned(), vec!["--tags=far".to_owned()])], ..Options::default() };
    let mut cluster = Cluster::start_with(1, jobs, options).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.add_replica().await;
    let ran = |ledger: &[RunRecord]| {
        ledger.iter().find(|r| r.job == "down" && r.status == RunStatus::Succeeded && !r.output.is_empty()).cloned()
    };
    let recorded =
        crate::harness::wait_until(Duration::from_secs(30), || async { ran(&cluster.ledger().await).is_some() }).await;
    assert!(recorded, "no down run succeeded\n{}", cluster.logs());
    let ledger = cluster.ledger().await;
    let down = ran(&ledger).unwrap();
    let up = ledger.iter().find(|r| r.job == "up" && r.slot == down.slot).expect("the up run of its slot");
    assert_eq!(down.executor.as_deref(), Some("node-1"), "{down:?}");
    assert!(down.output.contains(&format!("released by {} on node-1", up.id)), "{:?}", down.output);
}

/// A job file of a thousand two-link chains (two thousand jobs, a thousand `after:` links) on
/// two replicas with a 5 s lease: one of them is elected and keeps the lead through the bursts
/// of a thousand claims and processes, and every chain's dependent runs once per slot.
#[tokio::test]
async fn a_thousand_chains_elect_a_leader_that_keeps_the_lead_and_runs_each_link() {
    let mut jobs = String::from("jobs:\n");
    for i in 0..1_000 {
        jobs.push_str(&format!(
            "  - {{ name: u{i:04}, schedule: \"*/10 * * * * *\", command: [\"true\"] }}\n  \
             - {{ name: d{i:04}, after: [u{i:04}], command: [\"true\"] }}\n"
        ));
    }
    let options = Options { lease_ttl: Some(Duration::from_secs(5)), ..Options::default() };
    let cluster = Cluster::start_with(2, &jobs, options).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    let every_chain_ran = crate::harness::wait_until(Duration::from_secs(40), || async {
        let rows = cluster.ledger().await;
        let ran: std::collections::HashSet<&str> = rows
            .iter()
            .filter(|r| r.job.starts_with('d') && r.status == RunStatus::Succeeded)
            .map(|r| r.job.as_str())
            .collect();
        ran.len() == 1_000
    })
    .await;
    let rows = cluster.ledger().await;
    let mut tally = std::collections::BTreeMap::<(char, String), usize>::new();
    for row in &rows {
        *tally.entry((row.job.chars().next().unwrap(), format!("{:?}", row.status))).or_default() += 1;
    }
    assert!(every_chain_ran, "not every chain's dependent ran within 40 s: {tally:?}\n{}", cluster.logs());
    assert_eq!(cluster.leaders().await, [(leader, term)], "the leader kept its term: {tally:?}\n{}", cluster.logs());
    let mut seen = std::collections::HashSet::new();
    for row in &rows {
        assert!(seen.insert((row.job.as_str(), row.slot)), "({}, {}) claimed twice", row.job, row.slot);
    }
}
