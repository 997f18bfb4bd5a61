//! Scheduling features on real `tenure run` processes and PostgreSQL: several
//! schedules per job across a failover, jitter that a new leader keeps, a backfill a leader's
//! SIGKILL interrupts and the next leader finishes, and manual runs with overrides.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use serde_json::{Value, json};
use tenure::model::{RunStatus, TriggerKind};

use crate::checker::{Expect, check};
use crate::cluster::{ADMIN_TOKEN, Cluster, TTL};
use crate::harness::wait_for;

async fn post(url: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new().post(url).bearer_auth(ADMIN_TOKEN).json(&body).send().await.expect("post")
}

async fn get(url: &str) -> Value {
    let answer = reqwest::Client::new().get(url).bearer_auth(ADMIN_TOKEN).send().await.expect("get");
    assert!(answer.status().is_success(), "{url}: {}", answer.status());
    answer.json().await.expect("json")
}

/// The checker's verdicts that need no list of expected slots: no slot twice, none early, each
/// execution with its row of the same term, no stale term accepted.
fn judge_executions(cluster: &Cluster, ledger: &[tenure::store::RunRecord]) -> crate::checker::Report {
    let now = Utc::now();
    check(&cluster.witness(), ledger, &Expect { jobs: &[], from: now, until: now, missed_allowed: true })
}

#[tokio::test]
async fn a_job_with_several_schedules_fires_each_merged_slot_once_across_a_failover() {
    // Every second divisible by 2 or by 3: 0, 6, 12, ... are in both expressions and are one slot.
    let jobs = r#"
jobs:
  - name: multi
    schedule: ["*/2 * * * * *", "*/3 * * * * *"]
    shell: WITNESS
    concurrency: allow
"#;
    let mut cluster = Cluster::start(3, jobs).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(3).await;
    cluster.event("SIGKILL the leader");
    cluster.kill(leader);
    cluster.wait_for_execution_by_new_term(term, TTL * 4 + Duration::from_secs(5)).await;
    cluster.let_it_tick(4).await;
    cluster.wait_for_reaped(Duration::from_secs(20)).await;

    let witness = cluster.witness();
    let ledger = cluster.ledger().await;
    let report = judge_executions(&cluster, &ledger);
    cluster.verdict(&report).await;
    let from = witness.first().unwrap().slot;
    let until = witness.last().unwrap().slot;
    // Exactly the merged slots have rows (run, or recorded missed/lost in the failover), once each.
    let expected: BTreeSet<DateTime<Utc>> = (0..=(until - from).num_seconds())
        .map(|s| from + chrono::Duration::seconds(s))
        .filter(|t| t.second() % 2 == 0 || t.second() % 3 == 0)
        .collect();
    let rows: Vec<DateTime<Utc>> =
        ledger.iter().filter(|r| r.job == "multi" && from <= r.slot && r.slot <= until).map(|r| r.slot).collect();
    let distinct: BTreeSet<DateTime<Utc>> = rows.iter().copied().collect();
    assert_eq!(rows.len(), distinct.len(), "one row per slot");
    assert_eq!(distinct, expected, "the merged slots, no more, no fewer");
    let shared = witness.iter().filter(|w| w.slot.second() % 6 == 0).count();
    assert!(shared > 0, "a slot both expressions share ran (once: checked above)");
    let terms: BTreeSet<i64> = witness.iter().map(|w| w.term).collect();
    assert!(terms.len() >= 2, "both leaders fired: {terms:?}");
    // `tenure next`'s source, the API, shows the merged schedule.
    let job = get(&format!("{}/api/jobs/multi", cluster.url((leader + 1) % 3))).await;
    assert_eq!(job["schedules"], json!(["*/2 * * * * *", "*/3 * * * * *"]));
    let next: DateTime<Utc> = job["next_utc"].as_str().unwrap().parse().unwrap();
    assert!(next.second() % 2 == 0 || next.second() % 3 == 0, "{next}");
}

#[tokio::test]
async fn jitter_offsets_are_the_same_on_two_leaders_and_within_the_window() {
    let jobs = r#"
jobs:
  - name: spread
    schedule: "* * * * * *"
    jitter: 2s
    shell: WITNESS
    concurrency: allow
"#;
    let mut cluster = Cluster::start(3, jobs).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(4).await;
    cluster.event("SIGKILL the leader");
    cluster.kill(leader);
    cluster.wait_for_execution_by_new_term(term, TTL * 4 + Duration::from_secs(7)).await;
    cluster.let_it_tick(4).await;
    cluster.wait_for_reaped(Duration::from_secs(20)).await;

    let ledger = cluster.ledger().await;
    let report = judge_executions(&cluster, &ledger);
    cluster.verdict(&report).await;
    let window = Duration::from_secs(2);
    let started: Vec<_> = ledger.iter().filter(|r| r.job == "spread" && r.started_at.is_some()).collect();
    let terms: BTreeSet<i64> = started.iter().map(|r| r.term).collect();
    assert!(terms.len() >= 2, "runs started under both leaders: {terms:?}");
    for row in &started {
        let offset = tenure::schedule::jitter_offset("spread", row.slot, window);
        assert_eq!(row.planned_at, row.slot + chrono::Duration::from_std(offset).unwrap(), "{row:?}");
        assert!(row.planned_at - row.slot < chrono::Duration::from_std(window).unwrap());
        assert!(row.started_at.unwrap() >= row.planned_at, "started before its planned start: {row:?}");
    }
    // Each execution began at its planned start or later, and carried its canonical slot.
    for w in cluster.witness() {
        let row = ledger.iter().find(|r| r.job == "spread" && r.slot == w.slot).expect("a row for the slot");
        assert!(w.at >= row.planned_at, "executed at {} before its planned {}", w.at, row.planned_at);
        assert_eq!(w.slot.timestamp_subsec_nanos(), 0, "TENURE_SLOT is the canonical instant");
    }
    let offsets: BTreeSet<i64> = started.iter().map(|r| (r.planned_at - r.slot).num_milliseconds()).collect();
    assert!(offsets.len() > 3, "the offsets vary from slot to slot: {offsets:?}");
}

#[tokio::test]
async fn a_backfill_of_500_slots_interrupted_by_a_leader_sigkill_is_finished_by_the_next_leader() {
    let jobs = r#"
jobs:
  - name: fill
    schedule: "* * * * * *"
    shell: WITNESS
    concurrency: allow
    timeout: 10s
"#;
    let mut cluster = Cluster::start(3, jobs).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    let to = (Utc::now() - chrono::Duration::seconds(120)).with_nanosecond(0).unwrap();
    let from = to - chrono::Duration::seconds(499);
    let url = format!("{}/api/jobs/fill/backfill", cluster.url((leader + 1) % 3));
    // A follower serves once it has started (a leader may exist before every replica answers).
    let healthz = format!("{}/healthz", cluster.url((leader + 1) % 3));
    wait_for("the follower to serve", Duration::from_secs(15), || async {
        reqwest::get(&healthz).await.is_ok_and(|answer| answer.status() == 200)
    })
    .await;

    let dry = post(&url, json!({"from": from, "to": to, "dry_run": true})).await;
    assert_eq!(dry.status(), 200);
    let dry: Value = dry.json().await.unwrap();
    assert_eq!(dry["slots"].as_array().unwrap().len(), 500, "the dry run lists the 500 slots it would run");
    assert!(cluster.reads.backfills(None, 10).await.unwrap().is_empty(), "a dry run records nothing");

    let answer = post(&url, json!({"from": from, "to": to})).await;
    assert_eq!(answer.status(), 202);
    let backfill: Value = answer.json().await.unwrap();
    assert_eq!(backfill["slots"], 500);
    let id = backfill["id"].as_i64().unwrap();
    let in_window = |slot: DateTime<Utc>| from <= slot && slot <= to;
    wait_for("a third of the backfill to run", Duration::from_secs(30), || async {
        cluster.witness().iter().filter(|w| in_window(w.slot)).count() >= 150
    })
    .await;
    cluster.event("SIGKILL the leader mid-backfill");
    cluster.kill(leader);
    let progress_url = format!("{}/api/backfills/{id}", cluster.url((leader + 2) % 3));
    let started = std::time::Instant::now();
    wait_for("the next leader to finish the backfill", Duration::from_secs(60), || async {
        get(&progress_url).await["finished"] == true
    })
    .await;
    eprintln!("backfill finished {:?} after the kill", started.elapsed());
    cluster.wait_for_reaped(Duration::from_secs(20)).await;

    let ledger = cluster.ledger().await;
    let report = judge_executions(&cluster, &ledger);
    cluster.verdict(&report).await;
    let rows: Vec<_> = ledger.iter().filter(|r| r.job == "fill" && in_window(r.slot)).collect();
    let slots: BTreeSet<DateTime<Utc>> = rows.iter().map(|r| r.slot).collect();
    assert_eq!((rows.len(), slots.len()), (500, 500), "every slot once: none missing, none twice");
    assert!(rows.iter().all(|r| r.trigger == TriggerKind::Backfill));
    let terms: BTreeSet<i64> = rows.iter().map(|r| r.term).collect();
    assert!(terms.len() >= 2 && terms.contains(&term), "both leaders ran part of it: {terms:?}");
    // What the kill cut short is `lost` (at most the parallelism cap); everything else ran once.
    let lost = rows.iter().filter(|r| r.status == RunStatus::Lost).count();
    assert!(lost <= 4, "{lost} lost");
    let witnessed: BTreeMap<DateTime<Utc>, usize> =
        cluster.witness().iter().filter(|w| in_window(w.slot)).fold(BTreeMap::new(), |mut count, w| {
            *count.entry(w.slot).or_default() += 1;
            count
        });
    for row in &rows {
        if row.status == RunStatus::Succeeded {
            assert_eq!(witnessed.get(&row.slot), Some(&1), "slot {} ran once", row.slot);
        } else {
            assert_eq!(row.status, RunStatus::Lost, "{row:?}");
        }
    }
    // Each run got the slot it stands for, and the job's schedule kept its own cursor.
    assert!(cluster.witness().iter().any(|w| w.slot > to), "the schedule kept firing meanwhile");
    let progress = get(&progress_url).await;
    assert_eq!((progress["done"].as_i64(), progress["pending"].as_i64()), (Some(500), Some(0)));
    // Asked again, nothing is new.
    let again: Value = post(&url, json!({"from": from, "to": to})).await.json().await.unwrap();
    assert_eq!(again["slots"], 0);
}

#[tokio::test]
async fn a_manual_runs_overrides_reach_its_environment_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen.log");
    let jobs = format!(
        r#"
jobs:
  - name: show
    schedule: "0 0 1 1 *"
    shell: 'echo "$TENURE_SLOT $GREETING $HOME" >> {seen}'
    env: {{ GREETING: hello }}
    inherit_env: [HOME]
    overrides: [GREETING, HOME]
  - name: slow
    schedule: "0 0 1 1 *"
    shell: 'sleep 4; echo "slow $TENURE_RUN_ID" >> {seen}'
    concurrency: forbid
"#,
        seen = seen.display()
    );
    let cluster = Cluster::start(1, &jobs).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    let base = cluster.url(0);
    let lines = || std::fs::read_to_string(&seen).unwrap_or_default();

    // Refused with a clear 400: tenure's own variables, names that are no variable, bad policies.
    for (body, needle) in [
        (json!({"env": {"TENURE_SLOT": "x"}}), "`TENURE_SLOT` is reserved"),
        (json!({"env": {"1X": "x"}}), "is not a variable name"),
        (json!({"concurrency": "sometimes"}), "`sometimes` is not one of allow, forbid, replace"),
    ] {
        let answer = post(&format!("{base}/api/jobs/show/trigger"), body).await;
        assert_eq!(answer.status(), 400);
        let problem: Value = answer.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains(needle), "{problem}");
    }

    let body = json!({"env": {"GREETING": "override", "HOME": "/nowhere"}, "reason": "re-run after the outage"});
    let answer = post(&format!("{base}/api/jobs/show/trigger"), body).await;
    assert_eq!(answer.status(), 202);
    // The answer does not echo a value that overrides an inherited variable either.
    let trigger: Value = answer.json().await.unwrap();
    assert_eq!(
        (trigger["env"]["GREETING"].as_str(), trigger["env"]["HOME"].as_str()),
        (Some("override"), Some("[redacted]"))
    );
    wait_for("the manual run", Duration::from_secs(15), || async { lines().contains("override") }).await;
    assert!(lines().contains(" override /nowhere"), "the overrides reached the job: {}", lines());
    let ledger = cluster.ledger().await;
    let run = ledger.iter().find(|r| r.job == "show" && r.trigger == TriggerKind::Manual).unwrap();
    let view = get(&format!("{base}/api/runs/{}", run.id)).await;
    assert_eq!(view["request"]["reason"], "re-run after the outage");
    assert_eq!(view["request"]["env"]["GREETING"], "override");
    // HOME is inherited from tenure's environment: its override is not echoed.
    assert_eq!(view["request"]["env"]["HOME"], "[redacted]");
    assert_eq!(view["request"]["concurrency"], Value::Null);

    // `slow` forbids overlaps: a second manual run while the first goes waits for it and starts
    // once it ended, unless the request says otherwise (and that is recorded).
    let first = post(&format!("{base}/api/jobs/slow/trigger"), json!({})).await;
    assert_eq!(first.status(), 202);
    wait_for("the first slow run to start", Duration::from_secs(10), || async {
        cluster.ledger().await.iter().any(|r| r.job == "slow" && r.started_at.is_some())
    })
    .await;
    post(&format!("{base}/api/jobs/slow/trigger"), json!({})).await;
    post(&format!("{base}/api/jobs/slow/trigger"), json!({"concurrency": "allow", "reason": "overlap on purpose"}))
        .await;
    wait_for("the three slow runs to end", Duration::from_secs(30), || async {
        let slow: Vec<_> = cluster.ledger().await.into_iter().filter(|r| r.job == "slow").collect();
        slow.len() == 3 && slow.iter().all(|r| r.finished_at.is_some())
    })
    .await;
    let slow: Vec<_> = cluster.ledger().await.into_iter().filter(|r| r.job == "slow").collect();
    let statuses: Vec<RunStatus> = slow.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [RunStatus::Succeeded, RunStatus::Succeeded, RunStatus::Succeeded], "{slow:?}");
    // The forbid run began only after the first ended; the allowed one overlapped the first.
    assert!(slow[1].began_at.unwrap() >= slow[0].finished_at.unwrap(), "{slow:?}");
    assert!(slow[2].began_at.unwrap() < slow[0].finished_at.unwrap(), "{slow:?}");
    let allowed = get(&format!("{base}/api/runs/{}", slow[2].id)).await;
    assert_eq!(allowed["request"]["concurrency"], "allow");
    assert_eq!(lines().matches("slow ").count(), 3);
}

#[tokio::test]
async fn per_job_retention_prunes_only_what_it_should_on_a_running_cluster() {
    // `brief` keeps 2 s of rows, `kept` the ledger's --retain (30 days by default).
    let jobs = r#"
jobs:
  - name: brief
    schedule: "* * * * * *"
    shell: WITNESS
    concurrency: allow
    starting_deadline: 1s
    retain: 2s
  - name: kept
    schedule: "* * * * * *"
    shell: WITNESS
    concurrency: allow
"#;
    let options = crate::cluster::Options {
        env: vec![("TENURE_TEST_PRUNE_EVERY_MS".to_owned(), "500".to_owned())],
        ..Default::default()
    };
    let cluster = Cluster::start_with(2, jobs, options).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    let first = cluster.witness().first().map(|w| w.slot);
    cluster.let_it_tick(12).await;
    let first = first.unwrap_or_else(|| cluster.witness().first().unwrap().slot);
    wait_for("the pruning of brief's older rows", Duration::from_secs(10), || async {
        let ledger = cluster.ledger().await;
        let kept = ledger.iter().filter(|r| r.job == "kept").count();
        let brief = ledger.iter().filter(|r| r.job == "brief").count();
        kept >= 6 && brief + 3 <= kept
    })
    .await;
    let ledger = cluster.ledger().await;
    let oldest_kept = ledger.iter().filter(|r| r.job == "kept").map(|r| r.slot).min().unwrap();
    assert!(oldest_kept <= first, "nothing of `kept` was pruned: its oldest row is {oldest_kept}, first slot {first}");
    let kept: BTreeSet<DateTime<Utc>> = ledger.iter().filter(|r| r.job == "kept").map(|r| r.slot).collect();
    let last = *kept.iter().next_back().unwrap();
    let every_second: BTreeSet<DateTime<Utc>> =
        (0..=(last - oldest_kept).num_seconds()).map(|s| oldest_kept + chrono::Duration::seconds(s)).collect();
    assert_eq!(kept, every_second, "`kept` lost no row");
    // What is left of `brief` is recent, or still running, or its newest row.
    let now = Utc::now();
    let newest_brief = ledger.iter().filter(|r| r.job == "brief").map(|r| r.slot).max().unwrap();
    for row in ledger.iter().filter(|r| r.job == "brief") {
        let young = now - row.slot < chrono::Duration::seconds(5);
        assert!(young || row.status == RunStatus::Running || row.slot == newest_brief, "{row:?} should be pruned");
    }
    // Pruning never moves a cursor: both jobs keep firing every second.
    let seen = cluster.witness().len();
    cluster.let_it_tick(4).await;
    let fresh: BTreeSet<String> = cluster.witness()[seen..].iter().map(|w| w.job.clone()).collect();
    assert_eq!(fresh, BTreeSet::from(["brief".to_owned(), "kept".to_owned()]));
}
