//! The singleton core on real processes: three replicas, per-second jobs that write a witness,
//! and the faults of the core issue. Every scenario ends with the checker.

use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;
use tenure::model::{RunStatus, TriggerKind};

use crate::checker::{Expect, check};
use crate::cluster::{Cluster, TICK, TTL};
use crate::harness::{wait_for, wait_until};

#[tokio::test]
async fn exactly_one_leader_fires_and_the_others_fire_nothing() {
    let mut cluster = Cluster::start(3, TICK).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    let from = Utc::now() + chrono::Duration::seconds(1);
    cluster.let_it_tick(4).await;
    let until = Utc::now() - chrono::Duration::seconds(1);

    assert_eq!(cluster.leaders().await, [(leader, term)], "one leader only");
    let witness = cluster.witness();
    let leader_node = &cluster.replicas[leader].node;
    assert!(witness.iter().all(|w| &w.node == leader_node && w.term == term), "a follower fired: {witness:?}");
    let report =
        check(&witness, &cluster.ledger().await, &Expect { jobs: &["tick"], from, until, missed_allowed: false });
    cluster.verdict(&report).await;
}

#[tokio::test]
async fn sigkill_of_the_leader_hands_over_within_the_lease() {
    let mut cluster = Cluster::start(3, TICK).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;

    let killed_at = Instant::now();
    cluster.kill(leader);
    let fired_at = cluster.wait_for_execution_by_new_term(term, TTL * 4 + Duration::from_secs(5)).await;
    let failover = fired_at - killed_at;
    eprintln!("SIGKILL failover: first run in the new term {failover:?} after the kill (TTL {TTL:?})");
    let (new_leader, new_term) = cluster.wait_for_leader(Duration::from_secs(5)).await;
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    cluster.let_it_tick(2).await;
    cluster.wait_for_reaped(Duration::from_secs(20)).await;

    // Slots while nobody led are recorded `missed` (catch_up latest) or run, and the run the kill
    // cut short `lost`; never doubled.
    let witness = cluster.witness();
    let from = witness.first().unwrap().slot;
    let until = witness.last().unwrap().slot;
    let report =
        check(&witness, &cluster.ledger().await, &Expect { jobs: &["tick"], from, until, missed_allowed: true });
    cluster.verdict(&report).await;
    // (e) healed: one leader all replicas agree on, no election keys of gone candidates.
    cluster.assert_healed(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn sigterm_of_the_leader_hands_over_at_once_and_misses_nothing() {
    let mut cluster = Cluster::start(3, TICK).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;

    let signalled = Instant::now();
    cluster.signal(leader, Signal::SIGTERM);
    let found = std::cell::Cell::new(None);
    wait_for("a new leader after SIGTERM", Duration::from_secs(5), || async {
        let leaders = cluster.leaders().await;
        match leaders.iter().find(|(_, t)| *t > term) {
            Some(found_leader) => {
                found.set(Some(*found_leader));
                true
            }
            None => false,
        }
    })
    .await;
    eprintln!("SIGTERM hand-over: new leader seen {:?} after the signal", signalled.elapsed());
    cluster.terminate(leader).await;
    cluster.let_it_tick(3).await;

    let witness = cluster.witness();
    let from = witness.first().unwrap().slot;
    let until = witness.last().unwrap().slot;
    let report =
        check(&witness, &cluster.ledger().await, &Expect { jobs: &["tick"], from, until, missed_allowed: false });
    cluster.verdict(&report).await;
    // (e) healed: one leader all replicas agree on, no election keys of gone candidates.
    cluster.assert_healed(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_leader_paused_past_its_lease_executes_nothing_after_resuming() {
    let mut cluster = Cluster::start(3, TICK).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;

    let paused_at = Utc::now();
    cluster.signal(leader, Signal::SIGSTOP);
    cluster.wait_for_execution_by_new_term(term, TTL * 4 + Duration::from_secs(5)).await;
    tokio::time::sleep(TTL * 2).await;
    cluster.signal(leader, Signal::SIGCONT);
    let resumed_at = Utc::now();
    // Give the resumed process time to do whatever it would do with its stale view.
    cluster.let_it_tick(3).await;

    let witness = cluster.witness();
    let old_node = &cluster.replicas[leader].node;
    let late: Vec<_> = witness.iter().filter(|w| &w.node == old_node && w.term == term && w.slot > paused_at).collect();
    assert!(late.is_empty(), "the stale leader executed after its pause began: {late:?}\nresumed {resumed_at}");
    let from = witness.first().unwrap().slot;
    let until = witness.last().unwrap().slot;
    let report =
        check(&witness, &cluster.ledger().await, &Expect { jobs: &["tick"], from, until, missed_allowed: true });
    cluster.verdict(&report).await;
    // (e) healed: one leader all replicas agree on, no election keys of gone candidates.
    cluster.assert_healed(Duration::from_secs(20)).await;
    assert_eq!(cluster.leaders().await.len(), 1, "one leader after the pause");
}

#[tokio::test]
async fn postgres_restarted_mid_run_causes_no_duplicate_and_every_claim_ends() {
    let mut cluster = Cluster::start(3, TICK).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;

    cluster.pg.stop_immediate();
    tokio::time::sleep(TTL * 2).await;
    cluster.pg.restart().await;
    cluster.let_it_tick(3).await;

    let witness = cluster.witness();
    let from = witness.first().unwrap().slot;
    let until = witness.last().unwrap().slot - chrono::Duration::seconds(2);
    // Outcomes held back while the database was down land once it is back.
    let unfinished = |ledger: &[tenure::store::RunRecord]| -> Vec<tenure::store::RunRecord> {
        ledger.iter().filter(|r| r.status == RunStatus::Running && r.slot < until).cloned().collect()
    };
    let settled =
        wait_until(Duration::from_secs(10), || async { unfinished(&cluster.ledger().await).is_empty() }).await;
    let ledger = cluster.ledger().await;
    assert!(settled, "claimed runs without a final status: {:?}", unfinished(&ledger));
    let report = check(&witness, &ledger, &Expect { jobs: &["tick"], from, until, missed_allowed: true });
    cluster.verdict(&report).await;
    // (e) healed: one leader all replicas agree on, no election keys of gone candidates.
    cluster.assert_healed(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn etcd_restarted_briefly_and_for_longer_than_the_lease() {
    let mut cluster = Cluster::start(3, TICK).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;

    for outage in [TTL / 2, TTL * 3] {
        cluster.etcd.stop();
        tokio::time::sleep(outage).await;
        cluster.etcd.restart().await;
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        cluster.let_it_tick(2).await;
    }

    let witness = cluster.witness();
    let from = witness.first().unwrap().slot;
    let until = witness.last().unwrap().slot;
    let report =
        check(&witness, &cluster.ledger().await, &Expect { jobs: &["tick"], from, until, missed_allowed: true });
    cluster.verdict(&report).await;
    // (e) healed: one leader all replicas agree on, no election keys of gone candidates.
    cluster.assert_healed(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn after_a_full_outage_each_catch_up_policy_does_what_it_says() {
    let jobs = r#"
defaults:
  starting_deadline: 5m
jobs:
  - name: none
    schedule: "* * * * * *"
    catch_up: none
    shell: WITNESS
  - name: latest
    schedule: "* * * * * *"
    catch_up: latest
    shell: WITNESS
  - name: all
    schedule: "* * * * * *"
    catch_up: all
    concurrency: allow
    shell: WITNESS
  - name: all-within-10s
    schedule: "* * * * * *"
    catch_up: all
    concurrency: allow
    starting_deadline: 10s
    shell: WITNESS
"#;
    let mut cluster = Cluster::start(3, jobs).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(6).await;
    for index in 0..3 {
        cluster.kill(index);
    }
    let down_from = Utc::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let down_until = Utc::now();
    for index in 0..3 {
        cluster.restart(index);
    }
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(6).await;
    // The outage window: the whole seconds strictly between a second after the last kill and a
    // second before the first restart. Nobody ran then, and every job fires every second, so each
    // job owes exactly one row per second of it, run or recorded missed as its `catch_up` says.
    let (window_from, window_until) =
        (down_from + chrono::Duration::seconds(1), down_until - chrono::Duration::seconds(1));
    let in_window = |slot: chrono::DateTime<Utc>| slot > window_from && slot < window_until;
    let owed = (window_from.timestamp() + 1..=window_until.timestamp())
        .filter(|&second| in_window(chrono::DateTime::from_timestamp(second, 0).unwrap()))
        .count();
    assert!((55..=60).contains(&owed), "a 60 s outage owes about 58 slots, not {owed}");
    // `all` replays them one after another; let it finish.
    let caught_up = wait_until(Duration::from_secs(60), || async {
        let ledger = cluster.ledger().await;
        let settled =
            ledger.iter().filter(|r| r.job == "all" && in_window(r.slot) && r.status != RunStatus::Running).count();
        settled == owed
    })
    .await;
    cluster.wait_for_reaped(Duration::from_secs(20)).await;

    let ledger = cluster.ledger().await;
    let mut seen = std::collections::BTreeMap::new();
    for r in ledger.iter().filter(|r| in_window(r.slot)) {
        *seen.entry((r.job.as_str(), r.status.as_str())).or_insert(0) += 1;
    }
    eprintln!("{owed} outage slots; by job and status: {seen:?}");
    assert!(caught_up, "`all` did not replay the outage: {seen:?}\n{}", cluster.logs());
    // The witness first, then the ledger again: a run claimed and executed between two reads
    // would otherwise be in the witness without its (already committed) row.
    let witness = cluster.witness();
    let ledger = cluster.ledger().await;
    let in_outage = |job: &str, status: &str| {
        ledger.iter().filter(|r| r.job == job && in_window(r.slot) && r.status.as_str() == status).count()
    };
    assert_eq!(in_outage("none", "missed"), owed, "none records every outage slot missed: {seen:?}");
    assert_eq!(in_outage("none", "succeeded"), 0, "none runs no outage slot");
    // The newest late slot `latest` runs is the one before the new term began, after the window.
    assert_eq!(in_outage("latest", "missed"), owed, "latest records the older outage slots missed: {seen:?}");
    assert_eq!(in_outage("all", "missed"), 0, "all misses nothing");
    assert_eq!(in_outage("all", "succeeded"), owed, "all runs every outage slot: {seen:?}");
    // Past its starting deadline a slot is only recorded: the early outage slots are missed, the
    // last ten seconds' run.
    let deadline_missed = in_outage("all-within-10s", "missed");
    let deadline_run = in_outage("all-within-10s", "succeeded");
    assert_eq!(deadline_missed + deadline_run, owed, "every slot run or missed: {seen:?}");
    // Which slots are within it depends on when the new leader planned: just after its term
    // began (a restart of three replicas may take a while on a loaded machine).
    let began = cluster
        .reads
        .terms()
        .await
        .unwrap()
        .iter()
        .filter(|record| record.started_at > down_until)
        .map(|record| record.started_at)
        .min()
        .expect("a term after the restart");
    let within = |planned: chrono::DateTime<Utc>| {
        ledger
            .iter()
            .filter(|r| {
                r.job == "all-within-10s" && in_window(r.slot) && planned - r.slot <= chrono::Duration::seconds(10)
            })
            .count()
    };
    let (most, least) = (within(began), within(began + chrono::Duration::seconds(2)));
    assert!(
        (least..=most).contains(&deadline_run),
        "the slots within ten seconds of the new term's planning run ({deadline_run}, expected {least}..={most}): {seen:?}"
    );
    let from = witness.first().unwrap().slot;
    let until = witness.last().unwrap().slot - chrono::Duration::seconds(1);
    let report = check(
        &witness,
        &ledger,
        &Expect { jobs: &["none", "latest", "all", "all-within-10s"], from, until, missed_allowed: true },
    );
    cluster.verdict(&report).await;
}

#[tokio::test]
async fn concurrency_policies_and_timeouts_on_jobs_that_outlive_their_interval() {
    let jobs = r#"
jobs:
  - name: forbid
    schedule: "* * * * * *"
    concurrency: forbid
    shell: 'WITNESS; sleep 2.5'
  - name: allow
    schedule: "* * * * * *"
    concurrency: allow
    shell: 'WITNESS; sleep 2.5'
  - name: replace
    schedule: "*/3 * * * * *"
    concurrency: replace
    shell: 'WITNESS; sleep 10'
  - name: timeout
    schedule: "*/2 * * * * *"
    timeout: 1s
    shell: "sleep 300 & echo child $! > CHILD; wait"
"#;
    let dir = tempfile::tempdir().unwrap();
    let child_file = dir.path().join("child");
    let mut cluster = Cluster::start(1, &jobs.replace("CHILD", &child_file.display().to_string())).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    wait_for("several runs of each job", Duration::from_secs(20), || async {
        let ledger = cluster.ledger().await;
        ["forbid", "allow", "replace", "timeout"]
            .iter()
            .all(|job| ledger.iter().filter(|r| r.job == *job && r.status != RunStatus::Running).count() >= 3)
    })
    .await;
    let ledger = cluster.ledger().await;
    let runs = |job: &str| -> Vec<&tenure::store::RunRecord> { ledger.iter().filter(|r| r.job == job).collect() };
    let count = |job: &str, status: &str| runs(job).iter().filter(|r| r.status.as_str() == status).count();
    let finished = |job: &str| runs(job).into_iter().filter(|r| r.status != RunStatus::Running).count();
    // A run "goes" from its start until its outcome is recorded; `forbid` and `replace` decide
    // a slot at the slot, from what goes then.
    let going_at = |run: &tenure::store::RunRecord, at: chrono::DateTime<Utc>| {
        run.started_at.is_some_and(|started| started <= at) && run.finished_at.is_none_or(|finished| finished >= at)
    };

    // forbid: runs of 2.5 s never overlap, and every slot skipped fell while one went.
    let forbid_ran: Vec<_> = runs("forbid").into_iter().filter(|r| r.started_at.is_some()).collect();
    for pair in forbid_ran.windows(2) {
        assert!(!going_at(pair[0], pair[1].started_at.unwrap()), "forbid runs overlapped: {pair:#?}");
    }
    let skipped_idle: Vec<_> = runs("forbid")
        .into_iter()
        .filter(|r| r.status == RunStatus::Skipped && !forbid_ran.iter().any(|run| going_at(run, r.slot)))
        .collect();
    assert!(count("forbid", "skipped") >= 2, "forbid skips while running: {ledger:#?}");
    assert!(skipped_idle.is_empty(), "forbid skipped a slot while nothing went: {skipped_idle:#?}");
    // allow: never skips, and each 2.5 s run is still going when the next (1 s later) starts.
    assert_eq!(count("allow", "skipped"), 0, "allow never skips");
    let allow_ran: Vec<_> = runs("allow").into_iter().filter(|r| r.started_at.is_some()).collect();
    assert!(allow_ran.len() >= 3, "{allow_ran:#?}");
    for pair in allow_ran.windows(2) {
        assert!(going_at(pair[0], pair[1].started_at.unwrap()), "allow did not overlap its runs: {pair:#?}");
    }
    // replace: a 10 s run every 3 s, so every run that ended was replaced by the next one.
    assert_eq!(count("replace", "killed"), finished("replace"), "replace kills every previous run: {ledger:#?}");
    assert!(
        runs("replace")
            .iter()
            .filter(|r| r.status == RunStatus::Killed)
            .all(|r| r.error.as_deref() == Some("replaced by a newer run"))
    );
    // timeout: every run of a job that never ends by itself times out after its 1 s.
    assert_eq!(count("timeout", "timed_out"), finished("timeout"), "every run times out: {ledger:#?}");
    for run in runs("timeout").iter().filter(|r| r.status == RunStatus::TimedOut) {
        let lasted = (run.finished_at.unwrap() - run.started_at.unwrap()).to_std().unwrap();
        assert!(
            lasted >= Duration::from_secs(1) && lasted < Duration::from_secs(1) + tenure::executor::KILL_GRACE,
            "a 1 s timeout took {lasted:?}: {run:#?}"
        );
    }

    // The timed-out job's child, in the job's process group, was killed with it.
    let child: i32 = std::fs::read_to_string(&child_file).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    wait_for("the timed-out job's child to be gone", Duration::from_secs(5), || async {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_err()
    })
    .await;
    cluster.kill(0);
}

#[tokio::test]
async fn an_invalid_job_file_on_reload_keeps_the_old_schedule_running() {
    let mut cluster = Cluster::start(2, TICK).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;

    cluster.write_jobs("jobs:\n  - name: tick\n    schedule: \"not a schedule\"\n    shell: WITNESS\n");
    wait_for("the reload failure to be logged", Duration::from_secs(10), || async {
        cluster
            .replicas
            .iter()
            .all(|r| std::fs::read_to_string(&r.log).unwrap_or_default().contains("keeping the last good one"))
    })
    .await;
    cluster.let_it_tick(3).await;

    // A valid file with a new job takes effect.
    cluster.write_jobs(&format!("{TICK}  - name: tock\n    schedule: \"* * * * * *\"\n    shell: WITNESS\n"));
    wait_for("the new job to fire", Duration::from_secs(10), || async {
        cluster.witness().iter().any(|w| w.job == "tock")
    })
    .await;
    let witness = cluster.witness();
    let ticks: Vec<_> = witness.iter().filter(|w| w.job == "tick").cloned().collect();
    let from = ticks.first().unwrap().slot;
    let until = ticks.last().unwrap().slot;
    let report =
        check(&ticks, &cluster.ledger().await, &Expect { jobs: &["tick"], from, until, missed_allowed: false });
    cluster.verdict(&report).await;
    cluster.terminate(0).await;
}

// Triggers, pauses and resumes that lie.

async fn post_api(url: &str) -> reqwest::Response {
    reqwest::Client::new().post(url).bearer_auth(crate::cluster::ADMIN_TOKEN).send().await.expect("post")
}

#[tokio::test]
async fn a_trigger_the_leader_cannot_claim_is_executed_by_the_next_leader() {
    let jobs = "jobs:\n  - name: greet\n    schedule: \"0 0 1 1 *\"\n    shell: WITNESS\n";
    let cluster = Cluster::start(3, jobs).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    // A newer term holds the ledger's fence while etcd still names the leader (as when its lease
    // lapsed and a successor raised the fence): every claim the leader makes is refused.
    let fence = cluster.store.fence().await.unwrap();
    let successor = tenure::leadership::Term::for_tests(term + 1, &fence.cluster_id);
    cluster.store.begin_term(&successor, "successor").await.unwrap();
    cluster.event("fence raised above the leader's term");

    let follower = (leader + 1) % 3;
    let answer = post_api(&format!("{}/api/jobs/greet/trigger", cluster.url(follower))).await;
    assert_eq!(answer.status(), 202);
    let trigger: serde_json::Value = answer.json().await.unwrap();
    wait_for("the trigger to run in a newer term", Duration::from_secs(20), || async {
        cluster.witness().iter().any(|w| w.job == "greet" && w.term > term)
    })
    .await;
    let greet: Vec<_> = cluster.witness().into_iter().filter(|w| w.job == "greet").collect();
    assert_eq!(greet.len(), 1, "the trigger fired once: {greet:?}");
    let ledger = cluster.ledger().await;
    let manual: Vec<_> = ledger.iter().filter(|r| r.job == "greet" && r.trigger == TriggerKind::Manual).collect();
    assert_eq!(manual.len(), 1, "{manual:?}");
    assert_eq!(manual[0].term, greet[0].term);
    wait_for("the trigger to be marked handled", Duration::from_secs(5), || async {
        cluster.store.pending_triggers().await.unwrap().is_empty()
    })
    .await;
    assert_eq!(trigger["job"], "greet");
}

#[tokio::test]
async fn a_pause_is_kept_when_the_next_leader_cannot_read_the_controls_at_first() {
    let jobs = r#"
jobs:
  - name: tick
    schedule: "* * * * * *"
    shell: WITNESS
  - name: held
    schedule: "* * * * * *"
    shell: WITNESS
"#;
    let mut cluster = Cluster::start(2, jobs).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(4).await;
    let follower = (leader + 1) % 2;
    assert_eq!(post_api(&format!("{}/api/jobs/held/pause", cluster.url(follower))).await.status(), 200);
    let paused_at = Utc::now();
    cluster.event("held paused");
    cluster.let_it_tick(2).await;

    // The controls table is away while the next leader starts its term, so its first reads fail.
    let pool = tenure::store::connect(&cluster.database_url).await.unwrap();
    sqlx::query("ALTER TABLE job_controls RENAME TO job_controls_away").execute(&pool).await.unwrap();
    cluster.kill(leader);
    cluster.event("leader killed; controls unreadable");
    let (_, new_term) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    assert!(new_term > term);
    wait_for("the new leader to fail reading the controls", Duration::from_secs(5), || async {
        cluster.replicas.iter().any(|r| {
            std::fs::read_to_string(&r.log).unwrap_or_default().contains("relation \"job_controls\" does not exist")
        })
    })
    .await;
    // Watching for what must not happen: the new leader firing `held` blind.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sqlx::query("ALTER TABLE job_controls_away RENAME TO job_controls").execute(&pool).await.unwrap();
    cluster.event("controls readable again");
    wait_for("tick to fire in the new term", Duration::from_secs(10), || async {
        cluster.witness().iter().any(|w| w.job == "tick" && w.term == new_term)
    })
    .await;
    cluster.let_it_tick(2).await;

    let late: Vec<_> = cluster
        .witness()
        .into_iter()
        .filter(|w| w.job == "held" && w.slot > paused_at + chrono::Duration::seconds(1))
        .collect();
    assert!(late.is_empty(), "a paused job fired: {late:?}\n{}", cluster.logs());
}

#[tokio::test]
async fn a_resume_then_a_failover_neither_replays_nor_misses_the_paused_period() {
    let jobs = r#"
jobs:
  - name: all
    schedule: "* * * * * *"
    catch_up: all
    concurrency: allow
    shell: WITNESS
  - name: latest
    schedule: "* * * * * *"
    catch_up: latest
    shell: WITNESS
"#;
    let mut cluster = Cluster::start(3, jobs).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(4).await;
    let base = cluster.url((leader + 1) % 3);
    for job in ["all", "latest"] {
        assert_eq!(post_api(&format!("{base}/api/jobs/{job}/pause")).await.status(), 200);
    }
    let paused_at = Utc::now();
    cluster.event("paused");
    // The paused period: five seconds of slots nobody owes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The leader never gets to act on the resume: stopped, resumed through a follower, killed.
    cluster.signal(leader, Signal::SIGSTOP);
    let resumed_at = Utc::now();
    for job in ["all", "latest"] {
        assert_eq!(post_api(&format!("{base}/api/jobs/{job}/resume")).await.status(), 200);
    }
    cluster.kill(leader);
    cluster.event("resumed; leader killed");
    cluster.wait_for_execution_by_new_term(term, TTL * 4 + Duration::from_secs(5)).await;
    let settled = resumed_at + chrono::Duration::seconds(4);
    wait_for("both jobs to run after the resume", Duration::from_secs(15), || async {
        let ledger = cluster.ledger().await;
        ["all", "latest"]
            .iter()
            .all(|job| ledger.iter().any(|r| r.job == *job && r.slot > settled && r.status == RunStatus::Succeeded))
    })
    .await;

    let ledger = cluster.ledger().await;
    let in_pause = |slot: chrono::DateTime<Utc>| {
        slot > paused_at + chrono::Duration::seconds(1) && slot < resumed_at - chrono::Duration::seconds(1)
    };
    let during: Vec<_> = ledger.iter().filter(|r| in_pause(r.slot)).map(|r| (&r.job, r.slot, &r.status)).collect();
    assert!(during.is_empty(), "the paused period was replayed or recorded: {during:?}");
    assert!(cluster.witness().iter().all(|w| !in_pause(w.slot)), "a paused slot executed");
    // After the resume every slot is accounted for, run or recorded missed per `catch_up`.
    let witness = cluster.witness();
    let from = resumed_at + chrono::Duration::seconds(2);
    let until = witness.iter().map(|w| w.slot).max().unwrap() - chrono::Duration::seconds(1);
    let report = check(&witness, &ledger, &Expect { jobs: &["all", "latest"], from, until, missed_allowed: true });
    cluster.verdict(&report).await;
}
