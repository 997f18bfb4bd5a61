//! Runs of `run_on` jobs execute on worker replicas under execution
//! leases of their own. A worker SIGKILLed, SIGSTOPped past its lease, or cut from PostgreSQL
//! mid-run; the leader SIGKILLed while runs execute elsewhere; tags and capacity; `forbid` and
//! `replace` across replicas. Each job records its start and end (`checker::Execution`), each
//! process's end is watched from outside, and the checker asserts that no two attempts of one
//! run, and no two runs of a `forbid` job, ever overlap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use tempfile::TempDir;
use tenure::model::RunStatus;
use tenure::store::RunRecord;
use tenure::worker::ExecutionLease;

use crate::checker::{Execution, execution_overlaps};
use crate::cluster::{ADMIN_TOKEN, Cluster, Options, TTL};
use crate::harness::{process_gone, wait_for};
use crate::proxy::Fault;

/// The workers' execution lease with the cluster tests' TTL: E 4 s, renewals every 0.5 s,
/// local deadline E - 1 s, give-up at E + 2 s.
fn lease() -> ExecutionLease {
    ExecutionLease::for_ttl(TTL)
}

/// A cluster whose leader (`node-0`, no tags) executes nothing of `run_on` jobs, and workers
/// `node-1..` with the tags and capacities of `workers`; jobs record executions in `records`.
struct Scenario {
    cluster: Cluster,
    _records: TempDir,
    path: std::path::PathBuf,
    deaths: Arc<Mutex<HashMap<u32, DateTime<Utc>>>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Scenario {
    /// `jobs` holds `EXEC(<seconds>)` where a job's shell goes.
    async fn start(jobs: &str, workers: &[(&str, u32)], base: Options) -> Scenario {
        let records = tempfile::tempdir().unwrap();
        let path = records.path().join("executions.log");
        let mut jobs = jobs.to_owned();
        while let Some(at) = jobs.find("EXEC(") {
            let close = at + jobs[at..].find(')').unwrap();
            let seconds: f64 = jobs[at + 5..close].parse().unwrap();
            jobs.replace_range(at..=close, &Execution::shell(&path, seconds));
        }
        let replica_args = workers
            .iter()
            .enumerate()
            .map(|(i, (tags, max_runs))| {
                (format!("node-{}", i + 1), vec![format!("--tags={tags}"), format!("--max-runs={max_runs}")])
            })
            .collect();
        let options = Options { replica_args, ..base };
        let mut cluster = Cluster::start_with(1, &jobs, options).await;
        cluster.wait_for_leader(Duration::from_secs(20)).await;
        for _ in workers {
            cluster.add_replica().await;
        }
        // Outside tenure, every 20 ms: when did each execution's shell disappear?
        let deaths = Arc::new(Mutex::new(HashMap::<u32, DateTime<Utc>>::new()));
        let watcher = {
            let (deaths, path) = (deaths.clone(), path.clone());
            tokio::spawn(async move {
                loop {
                    for execution in Execution::read(&path) {
                        let known = deaths.lock().unwrap().contains_key(&execution.pid);
                        if !known && process_gone(execution.pid) {
                            deaths.lock().unwrap().insert(execution.pid, Utc::now());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Scenario { cluster, _records: records, path, deaths, watcher }
    }

    fn executions(&self) -> Vec<Execution> {
        Execution::read(&self.path)
    }

    fn died(&self, pid: u32) -> Option<DateTime<Utc>> {
        self.deaths.lock().unwrap().get(&pid).copied()
    }

    /// An execution on `node` that has been going for a second, not ended.
    fn going_on(&self, node: &str) -> Option<Execution> {
        self.executions().into_iter().find(|e| {
            e.node == node
                && e.ended.is_none()
                && self.died(e.pid).is_none()
                && Utc::now() - e.started > chrono::Duration::seconds(1)
        })
    }

    async fn wait_going_on(&self, node: &str) -> Execution {
        wait_for(&format!("an execution going on {node}"), Duration::from_secs(30), || async {
            self.going_on(node).is_some()
        })
        .await;
        self.going_on(node).unwrap()
    }

    /// The execution of `run_id`'s attempt `attempt`, once it has started.
    async fn wait_attempt(&self, run_id: i64, attempt: i32, timeout: Duration) -> Execution {
        let find = || self.executions().into_iter().find(|e| e.run_id == run_id && e.attempt == attempt);
        wait_for(&format!("attempt {attempt} of run {run_id}"), timeout, || async { find().is_some() }).await;
        find().unwrap()
    }

    async fn row(&self, run_id: i64) -> RunRecord {
        self.cluster.reads.run(run_id).await.unwrap().expect("the run's row")
    }

    /// Wait for `run_id`'s row to leave `running`.
    async fn wait_ended(&self, run_id: i64, timeout: Duration) -> RunRecord {
        wait_for(&format!("run {run_id} to end"), timeout, || async {
            self.row(run_id).await.status != RunStatus::Running
        })
        .await;
        self.row(run_id).await
    }

    /// No two attempts of one run, and no two runs of `forbid_jobs`, overlapped.
    fn assert_no_overlap(&self, forbid_jobs: &[&str]) {
        let overlaps = execution_overlaps(&self.executions(), forbid_jobs, |pid| self.died(pid), Utc::now());
        assert!(overlaps.is_empty(), "executions overlapped:\n{}\n{}", overlaps.join("\n"), self.cluster.logs());
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn proxies() -> Options {
    Options { proxies: true, ..Options::default() }
}

/// A replica's log without its colours.
fn plain_log(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    plain
}

/// A job every 2 s on the workers, running 5 s, with one retry.
const WORK: &str = r#"
jobs:
  - name: work
    schedule: "*/2 * * * * *"
    run_on: { tags: [worker] }
    concurrency: allow
    retries: { max: 1, backoff: 1s }
    timeout: 1m
    shell: 'EXEC(5)'
"#;

/// The run an attempt of which was on a faulted worker ends up succeeding on the other one, as
/// its second attempt, after the first's process was gone; the old worker recorded nothing.
async fn assert_retried_elsewhere(scenario: &Scenario, victim: &Execution, gone: DateTime<Utc>) -> Execution {
    let retry = scenario.wait_attempt(victim.run_id, 2, Duration::from_secs(30)).await;
    assert_eq!(retry.node, "node-2", "{retry:?}");
    assert!(retry.started > gone, "the retry began {} before the first attempt was gone {gone}", retry.started);
    assert_eq!(retry.lease_id, format!("{}-2-node-2", victim.run_id));
    let row = scenario.wait_ended(victim.run_id, Duration::from_secs(20)).await;
    assert_eq!(
        (row.status, row.attempt, row.executor.as_deref()),
        (RunStatus::Succeeded, 2, Some("node-2")),
        "{row:?}"
    );
    // The leader gave attempt 1 up (the row's error then said so, until the outcome replaced it).
    let leader_log = plain_log(&scenario.cluster.replicas[0].log);
    let given_up = format!("run_id={} attempt=1 executor=node-1", victim.run_id);
    assert!(
        leader_log.lines().any(|line| line.contains(&given_up) && line.contains("attempt given up")),
        "no give-up of {given_up} in the leader's log:\n{}",
        leader_log.lines().filter(|line| line.contains("given up")).collect::<Vec<_>>().join("\n")
    );
    retry
}

#[tokio::test]
async fn a_worker_sigkilled_mid_run_is_retried_on_another_after_its_lease_never_overlapping() {
    let mut scenario = Scenario::start(WORK, &[("worker", 8), ("worker", 8)], Options::default()).await;
    let victim = scenario.wait_going_on("node-1").await;
    scenario.cluster.event(format!("SIGKILL node-1 during run {} attempt 1", victim.run_id));
    let killed_at = Utc::now();
    scenario.cluster.kill(1);
    wait_for("the killed worker's job to be gone", Duration::from_secs(5), || async {
        scenario.died(victim.pid).is_some()
    })
    .await;
    let gone = scenario.died(victim.pid).unwrap();
    let retry = assert_retried_elsewhere(&scenario, &victim, gone).await;
    let lease = lease();
    eprintln!(
        "worker SIGKILL: job gone {:?} after the kill; retry started {:?} after it (E {:?}, grace {:?})",
        (gone - killed_at).to_std().unwrap_or_default(),
        (retry.started - killed_at).to_std().unwrap_or_default(),
        lease.lease,
        lease.grace
    );
    assert!(gone - killed_at < chrono::Duration::seconds(2), "the killed worker's job lived on");
    scenario.assert_no_overlap(&[]);
}

#[tokio::test]
async fn a_worker_sigstopped_past_its_lease_kills_its_job_and_records_nothing_on_resuming() {
    let scenario = Scenario::start(WORK, &[("worker", 8), ("worker", 8)], Options::default()).await;
    let victim = scenario.wait_going_on("node-1").await;
    scenario.cluster.event(format!("SIGSTOP node-1 during run {} attempt 1", victim.run_id));
    let stopped_at = Utc::now();
    scenario.cluster.signal(1, Signal::SIGSTOP);
    wait_for("the stopped worker's job to be gone", Duration::from_secs(10), || async {
        scenario.died(victim.pid).is_some()
    })
    .await;
    let gone = scenario.died(victim.pid).unwrap();
    let retry = scenario.wait_attempt(victim.run_id, 2, Duration::from_secs(30)).await;
    scenario.cluster.event("SIGCONT node-1");
    scenario.cluster.signal(1, Signal::SIGCONT);
    assert_retried_elsewhere(&scenario, &victim, gone).await;
    // Resumed, it found its deadline passed and stopped the attempt without recording it.
    wait_for("the resumed worker to give its attempt up", Duration::from_secs(10), || {
        let log = plain_log(&scenario.cluster.replicas[1].log);
        async move { log.contains("execution lease lost") }
    })
    .await;
    let log = plain_log(&scenario.cluster.replicas[1].log);
    assert!(!log.contains(&format!("run_id={} attempt=1 status=", victim.run_id)), "node-1 recorded an outcome");
    eprintln!(
        "worker SIGSTOP: job gone {:?} after the stop; retry started {:?} after it",
        (gone - stopped_at).to_std().unwrap_or_default(),
        (retry.started - stopped_at).to_std().unwrap_or_default()
    );
    // Killed by its supervisor within the silence limit (TTL + 200 ms) and its kill time.
    assert!(gone - stopped_at < chrono::Duration::from_std(TTL + Duration::from_secs(2)).unwrap());
    scenario.assert_no_overlap(&[]);
}

#[tokio::test]
async fn a_worker_cut_from_postgres_kills_its_job_within_its_local_deadline() {
    let scenario = Scenario::start(WORK, &[("worker", 8), ("worker", 8)], proxies()).await;
    let victim = scenario.wait_going_on("node-1").await;
    scenario.cluster.event(format!("blackhole node-1's PostgreSQL during run {} attempt 1", victim.run_id));
    let cut_at = Utc::now();
    scenario.cluster.replicas[1].pg_proxy.as_ref().unwrap().set(Fault::Blackhole);
    wait_for("the cut worker's job to be gone", Duration::from_secs(10), || async {
        scenario.died(victim.pid).is_some()
    })
    .await;
    let gone = scenario.died(victim.pid).unwrap();
    let lease = lease();
    // The last renewal acknowledged was sent at most a renewal interval (and a round trip) before
    // the cut: the local deadline falls E - M after it.
    let bound = lease.lease - lease.margin + Duration::from_millis(500);
    eprintln!(
        "worker PostgreSQL cut: job gone {:?} after the cut (local deadline E - M = {:?})",
        (gone - cut_at).to_std().unwrap_or_default(),
        lease.lease - lease.margin
    );
    assert!(gone - cut_at < chrono::Duration::from_std(bound).unwrap(), "killed only after {:?}", gone - cut_at);
    assert_retried_elsewhere(&scenario, &victim, gone).await;
    scenario.cluster.replicas[1].pg_proxy.as_ref().unwrap().set(Fault::Pass);
    scenario.assert_no_overlap(&[]);
}

#[tokio::test]
async fn a_worker_sigtermed_mid_run_finishes_it_within_the_grace_and_takes_no_more() {
    let mut scenario = Scenario::start(WORK, &[("worker", 8), ("worker", 8)], Options::default()).await;
    let victim = scenario.wait_going_on("node-1").await;
    scenario.cluster.event(format!("SIGTERM node-1 during run {} attempt 1", victim.run_id));
    let terminated_at = Utc::now();
    scenario.cluster.terminate(1).await;
    let row = scenario.wait_ended(victim.run_id, Duration::from_secs(10)).await;
    assert_eq!(
        (row.status, row.attempt, row.executor.as_deref()),
        (RunStatus::Succeeded, 1, Some("node-1")),
        "{row:?}"
    );
    // The leader stops choosing it once it withdrew; the next runs go to node-2.
    let later = terminated_at + chrono::Duration::milliseconds(500);
    wait_for("a run after the SIGTERM on node-2", Duration::from_secs(10), || async {
        scenario.executions().iter().any(|e| e.started > later && e.node == "node-2")
    })
    .await;
    let on_stopped: Vec<Execution> =
        scenario.executions().into_iter().filter(|e| e.node == "node-1" && e.started > later).collect();
    assert!(on_stopped.is_empty(), "node-1 took runs after its SIGTERM: {on_stopped:#?}");
    scenario.assert_no_overlap(&[]);
}

/// The checker is shown to fail: with its local deadline switched off, a worker cut from
/// PostgreSQL keeps its job running past its lease, the leader retries the run elsewhere, and the
/// two attempts overlap.
#[tokio::test]
async fn the_checker_catches_overlapping_attempts_when_a_workers_deadline_is_switched_off() {
    let jobs = WORK.replace("EXEC(5)", "EXEC(14)");
    let options = Options { env: vec![("TENURE_TEST_NO_SELF_FENCE".into(), "1".into())], ..proxies() };
    let scenario = Scenario::start(&jobs, &[("worker", 8), ("worker", 8)], options).await;
    let victim = scenario.wait_going_on("node-1").await;
    scenario.cluster.event(format!("blackhole node-1's PostgreSQL during run {} attempt 1", victim.run_id));
    scenario.cluster.replicas[1].pg_proxy.as_ref().unwrap().set(Fault::Blackhole);
    let retry = scenario.wait_attempt(victim.run_id, 2, Duration::from_secs(30)).await;
    assert!(scenario.died(victim.pid).is_none_or(|died| died > retry.started), "attempt 1 ended before the retry");
    let overlaps = execution_overlaps(&scenario.executions(), &[], |pid| scenario.died(pid), Utc::now());
    assert!(
        overlaps.iter().any(|o| o.starts_with(&format!("two attempts of one run: run {}", victim.run_id))),
        "the checker missed the overlap: {overlaps:#?}"
    );
}

#[tokio::test]
async fn the_leader_sigkilled_while_twenty_runs_execute_elsewhere_loses_none_of_them() {
    let jobs = r#"
jobs:
  - { name: a, schedule: "* * * * * *", run_on: { tags: [worker] }, concurrency: allow, shell: 'EXEC(7)' }
  - { name: b, schedule: "* * * * * *", run_on: { tags: [worker] }, concurrency: allow, shell: 'EXEC(7)' }
  - { name: c, schedule: "* * * * * *", run_on: { tags: [worker] }, concurrency: allow, shell: 'EXEC(7)' }
  - { name: d, schedule: "* * * * * *", run_on: { tags: [worker] }, concurrency: allow, shell: 'EXEC(7)' }
"#;
    let mut scenario = Scenario::start(jobs, &[("worker", 64), ("worker", 64)], Options::default()).await;
    let going = |scenario: &Scenario| -> Vec<Execution> {
        scenario.executions().into_iter().filter(|e| e.ended.is_none() && scenario.died(e.pid).is_none()).collect()
    };
    wait_for("20 runs executing on the workers", Duration::from_secs(30), || async { going(&scenario).len() >= 20 })
        .await;
    let (leader, term) = scenario.cluster.wait_for_leader(Duration::from_secs(5)).await;
    assert_eq!(leader, 0, "the untagged replica leads");
    let executing = going(&scenario);
    scenario
        .cluster
        .event(format!("SIGKILL the leader (term {term}) while {} runs execute elsewhere", executing.len()));
    scenario.cluster.kill(0);
    let (_, new_term) = scenario.cluster.wait_for_leader(Duration::from_secs(30)).await;
    assert!(new_term > term);
    for execution in &executing {
        let row = scenario.wait_ended(execution.run_id, Duration::from_secs(30)).await;
        assert_eq!((row.status, row.attempt), (RunStatus::Succeeded, 1), "{row:?}");
        assert_eq!(row.executor.as_deref(), Some(execution.node.as_str()));
        assert!(row.term == term || row.term < new_term, "{row:?}");
    }
    let ended = scenario.executions();
    for execution in &executing {
        let record = ended.iter().find(|e| e.pid == execution.pid).unwrap();
        assert!(record.ended.is_some(), "run {} did not finish: {record:?}", execution.run_id);
    }
    eprintln!("worker leader SIGKILL: {} runs executing elsewhere all finished and were recorded", executing.len());
    scenario.assert_no_overlap(&[]);
}

#[tokio::test]
async fn tags_and_capacity_are_respected_and_a_run_no_replica_can_take_is_missed() {
    let jobs = r#"
jobs:
  - name: ja
    schedule: "* * * * * *"
    run_on: { tags: [a] }
    concurrency: allow
    starting_deadline: 3s
    shell: 'EXEC(2.5)'
  - name: jb
    schedule: "*/3 * * * * *"
    run_on: { tags: [b] }
    concurrency: allow
    shell: 'EXEC(1)'
  - name: jc
    schedule: "*/2 * * * * *"
    run_on: { tags: [gpu] }
    starting_deadline: 1s
    shell: 'EXEC(1)'
"#;
    let scenario = Scenario::start(jobs, &[("a", 2), ("a,b", 1)], Options::default()).await;
    wait_for("a dozen executions", Duration::from_secs(40), || async { scenario.executions().len() >= 12 }).await;
    let executions = scenario.executions();
    let now = Utc::now();
    let until = |e: &Execution| e.ended.or_else(|| scenario.died(e.pid)).unwrap_or(now);
    for e in &executions {
        match e.job.as_str() {
            "ja" => assert!(e.node == "node-1" || e.node == "node-2", "{e:?}"),
            "jb" => assert_eq!(e.node, "node-2", "{e:?}"),
            other => panic!("{other} executed: {e:?}"),
        }
        // At its start, its replica ran at most its capacity.
        let alongside =
            executions.iter().filter(|o| o.node == e.node && o.started <= e.started && e.started < until(o)).count();
        let capacity = if e.node == "node-1" { 2 } else { 1 };
        assert!(alongside <= capacity, "{} ran {alongside} at once at {}: {executions:#?}", e.node, e.started);
    }
    assert!(executions.iter().any(|e| e.job == "ja" && e.node == "node-1"));
    let ledger = scenario.cluster.ledger().await;
    let missed: Vec<&RunRecord> = ledger.iter().filter(|r| r.job == "jc").collect();
    assert!(!missed.is_empty());
    for row in missed.iter().filter(|r| r.status != RunStatus::Running) {
        assert_eq!(row.status, RunStatus::Missed, "{row:?}");
        assert!(row.error.as_deref().is_some_and(|e| e.contains("no live replica")), "{row:?}");
    }
    scenario.assert_no_overlap(&[]);

    // The dashboard: where each run executes, and each replica's tags, capacity and load.
    let base = scenario.cluster.url(0);
    let get = |path: String| {
        let url = format!("{base}{path}");
        async move { reqwest::get(url).await.unwrap() }
    };
    let run = &executions[0];
    let view: serde_json::Value = get(format!("/api/runs/{}", run.run_id)).await.json().await.unwrap();
    assert_eq!(view["executor"], run.node.as_str(), "{view:#}");
    assert_eq!(view["node"], "node-0", "{view:#}");
    let cluster: serde_json::Value = get("/api/cluster".into()).await.json().await.unwrap();
    let replica =
        |node: &str| cluster["replicas"].as_array().unwrap().iter().find(|r| r["node"] == node).cloned().unwrap();
    assert_eq!(replica("node-1")["execution"]["tags"], serde_json::json!(["a"]), "{cluster:#}");
    assert_eq!(replica("node-1")["execution"]["max_runs"], 2);
    assert_eq!(replica("node-2")["execution"]["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(replica("node-2")["execution"]["max_runs"], 1);
    assert!(replica("node-1")["execution"]["load"].as_i64().is_some_and(|load| (0..=2).contains(&load)));
    let page = get(format!("/runs/{}", run.run_id)).await.text().await.unwrap();
    assert!(page.contains(&format!("<dd id=\"executor\">{}</dd>", run.node)), "{page}");
    // And `tenure show`, the CLI client.
    let shown = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["show", &run.run_id.to_string(), "--server", &base])
        .env_remove("TENURE_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    let executed_on = ["executed", "on", run.node.as_str()];
    assert!(shown.lines().any(|line| line.split_whitespace().eq(executed_on)), "{shown}");
    // Counted where they executed.
    let worker = scenario.cluster.url(1);
    let metrics = reqwest::get(format!("{worker}/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|line| line.starts_with("tenure_runs_total")
            && line.contains("job=\"ja\"")
            && line.contains("status=\"succeeded\"")),
        "{metrics}"
    );
    let timed = metrics.lines().find_map(|line| line.strip_prefix("tenure_run_duration_seconds_count "));
    assert!(timed.and_then(|count| count.trim().parse::<f64>().ok()).is_some_and(|count| count >= 1.0), "{metrics}");
    let overview = get("/".into()).await.text().await.unwrap();
    assert!(overview.contains("<td>a, b</td>") && overview.contains("/ 1</td>"), "{overview}");
}

#[tokio::test]
async fn forbid_and_replace_hold_across_replicas() {
    let jobs = r#"
jobs:
  - name: fb
    schedule: "*/2 * * * * *"
    run_on: { tags: [w] }
    concurrency: forbid
    shell: 'EXEC(3)'
  - name: rp
    schedule: "*/4 * * * * *"
    run_on: { tags: [w] }
    concurrency: replace
    shell: 'EXEC(30)'
"#;
    let scenario = Scenario::start(jobs, &[("w", 8), ("w", 8)], Options::default()).await;
    wait_for("three runs of rp", Duration::from_secs(40), || async {
        scenario.executions().iter().filter(|e| e.job == "rp").count() >= 3
    })
    .await;
    wait_for("a run of fb skipped", Duration::from_secs(20), || async {
        scenario.cluster.ledger().await.iter().any(|r| r.job == "fb" && r.status == RunStatus::Skipped)
    })
    .await;
    // A skipped slot says why, naming the run that was still going.
    let ledger = scenario.cluster.ledger().await;
    for skipped in ledger.iter().filter(|r| r.job == "fb" && r.status == RunStatus::Skipped) {
        let why = skipped.error.as_deref().unwrap_or_default();
        let going: i64 = why
            .strip_prefix("forbid: run ")
            .and_then(|rest| rest.strip_suffix(" of this job was still going"))
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("a skipped row without its reason: {skipped:?}"));
        assert!(ledger.iter().any(|r| r.id == going && r.job == "fb"), "{skipped:?} names no run of fb");
    }
    let executions = scenario.executions();
    let rp: Vec<&Execution> = executions.iter().filter(|e| e.job == "rp").collect();
    // Each replaced run was killed, by its replica at its next renewal, and recorded `killed`.
    let lease = lease();
    for pair in rp.windows(2) {
        let (old, new) = (pair[0], pair[1]);
        assert!(old.ended.is_none(), "a replaced run finished: {old:?}");
        let died = scenario.died(old.pid).expect("the replaced run's process is gone");
        assert!(died <= new.started, "the replacing run started before the replaced one was gone");
        let row = scenario.wait_ended(old.run_id, Duration::from_secs(10)).await;
        assert_eq!((row.status, row.error.as_deref()), (RunStatus::Killed, Some("replaced by a newer run")));
        // Asked at the new run's planned start (its slot), killed within a renewal or two.
        let asked = new.started - chrono::Duration::from_std(lease.renew_every * 4).unwrap();
        assert!(died > asked, "{died} vs {}", new.started);
    }
    scenario.assert_no_overlap(&["fb", "rp"]);
}

/// An operator's cancel on a real cluster: a run executing on a worker, asked through a
/// follower's API (its process gone, its row `killed` with who asked and why, recorded by the
/// worker at its next renewal); a run its leader executes, through `tenure cancel --wait`; a
/// run that has ended answers 409, an unknown one 404.
#[tokio::test]
async fn a_cancel_kills_a_run_on_its_leader_or_on_another_replica_and_records_who_and_why() {
    let jobs = r#"
jobs:
  - name: remote
    schedule: "*/2 * * * * *"
    run_on: { tags: [w] }
    concurrency: forbid
    shell: 'EXEC(60)'
  - name: local
    schedule: "*/2 * * * * *"
    concurrency: forbid
    shell: 'EXEC(60)'
"#;
    let scenario = Scenario::start(jobs, &[("w", 8), ("w", 8)], Options::default()).await;
    let going = |job: &'static str| {
        let scenario = &scenario;
        async move {
            wait_for(&format!("a run of {job} going"), Duration::from_secs(30), || async {
                scenario.executions().iter().any(|e| e.job == job && scenario.died(e.pid).is_none())
            })
            .await;
            scenario.executions().into_iter().find(|e| e.job == job && scenario.died(e.pid).is_none()).unwrap()
        }
    };
    let remote = going("remote").await;
    assert_ne!(remote.node, "node-0", "{remote:?}");
    let http = reqwest::Client::new();
    let cancel = |base: String, run_id: i64| {
        http.post(format!("{base}/api/runs/{run_id}/cancel"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "reason": "wrong input" }))
            .send()
    };
    // Any replica takes the request: the follower executing nothing of it here.
    let asked_at = Utc::now();
    let asked = cancel(scenario.cluster.url(2), remote.run_id).await.unwrap();
    assert_eq!(asked.status(), reqwest::StatusCode::ACCEPTED);
    let row = scenario.wait_ended(remote.run_id, Duration::from_secs(15)).await;
    assert_eq!(
        (row.status, row.error.as_deref(), row.executor.as_deref()),
        (RunStatus::Killed, Some("cancelled by admin-token (api): wrong input"), Some(remote.node.as_str())),
        "{row:?}"
    );
    wait_for("the cancelled run's process to be gone", Duration::from_secs(5), || async {
        scenario.died(remote.pid).is_some()
    })
    .await;
    let died = scenario.died(remote.pid).unwrap();
    eprintln!(
        "cancel of a run on another replica: process gone {} ms after the request",
        (died - asked_at).num_milliseconds()
    );
    let ended = scenario.executions().into_iter().find(|e| e.pid == remote.pid).unwrap();
    assert!(ended.ended.is_none(), "the cancelled run finished anyway: {ended:?}");
    // Once ended, a cancel is refused, and so is one of a run that does not exist.
    let again = cancel(scenario.cluster.url(0), remote.run_id).await.unwrap();
    assert_eq!(again.status(), reqwest::StatusCode::CONFLICT);
    assert!(again.headers()["content-type"].to_str().unwrap().starts_with("application/problem+json"));
    assert_eq!(cancel(scenario.cluster.url(0), 999_999).await.unwrap().status(), reqwest::StatusCode::NOT_FOUND);

    // The leader's own run, through the CLI, which waits for the run to end.
    let local = going("local").await;
    assert_eq!(local.node, "node-0", "{local:?}");
    let asked_at = Utc::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["cancel", &local.run_id.to_string(), "--wait", "--timeout", "30s", "--reason", "not today"])
        .args(["--server", &scenario.cluster.url(1)])
        .env("TENURE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with(&format!("run {} of local: killed", local.run_id)), "{stdout}");
    assert!(stdout.contains("cancelled by admin-token (api): not today"), "{stdout}");
    wait_for("the leader's cancelled run's process to be gone", Duration::from_secs(5), || async {
        scenario.died(local.pid).is_some()
    })
    .await;
    let died = scenario.died(local.pid).unwrap();
    eprintln!(
        "cancel of the leader's own run through `tenure cancel --wait`: process gone {} ms after the command began",
        (died - asked_at).num_milliseconds()
    );
    // Again, now that it has ended: an error, said in one line.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["cancel", &local.run_id.to_string(), "--server", &scenario.cluster.url(0)])
        .env("TENURE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: Conflict: run {} has ended (killed); only a running run can be cancelled (HTTP 409)",
            local.run_id
        )
    );
    scenario.assert_no_overlap(&["remote", "local"]);
}

/// A stale leader cannot cancel: the leader is cut from etcd with its self-fencing off, so it
/// believes it still leads, and a newer term raises the fence. While the new leader is frozen,
/// an operator cancels a run executing on the other worker: the stale leader, told of it,
/// is refused by the fence and steps down, and the run goes on; once a current leader acts, the
/// run is killed there and recorded with who asked and why.
#[tokio::test]
async fn a_stale_leader_cannot_cancel_and_the_current_leader_does() {
    let jobs = r#"
jobs:
  - name: on-a
    schedule: "0 0 1 1 *"
    run_on: { tags: [a] }
    shell: 'EXEC(120)'
  - name: on-b
    schedule: "0 0 1 1 *"
    run_on: { tags: [b] }
    shell: 'EXEC(120)'
"#;
    let options = Options { env: vec![("TENURE_TEST_NO_SELF_FENCE".into(), "1".into())], ..proxies() };
    let scenario = Scenario::start(jobs, &[("a", 8), ("b", 8)], options).await;
    let cluster = &scenario.cluster;
    let (old_leader, old_term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    assert_eq!(old_leader, 0);
    let http = reqwest::Client::new();
    for job in ["on-a", "on-b"] {
        let answer = http
            .post(format!("{}/api/jobs/{job}/trigger", cluster.url(0)))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED);
    }
    wait_for("both runs going", Duration::from_secs(30), || async {
        ["node-1", "node-2"].iter().all(|node| scenario.executions().iter().any(|e| e.node == *node))
    })
    .await;

    // Cut the leader from etcd: it keeps believing it leads (its self-fencing is off).
    cluster.replicas[0].etcd_proxy.as_ref().unwrap().set(Fault::Blackhole);
    let found = std::cell::Cell::new(None);
    wait_for("a newer term with its fence raised", Duration::from_secs(20), || async {
        let newer = cluster.leaders().await.into_iter().find(|(_, term)| *term > old_term);
        let raised = match newer {
            Some((_, term)) => cluster.reads.terms().await.unwrap().iter().any(|t| t.term == term),
            None => false,
        };
        found.set(newer.filter(|_| raised));
        raised
    })
    .await;
    let (new_leader, new_term) = found.get().unwrap();
    let other = if new_leader == 1 { 2 } else { 1 };
    let victim = scenario.executions().into_iter().find(|e| e.node == format!("node-{other}")).unwrap();
    assert!(cluster.leaders().await.iter().any(|(index, term)| *index == 0 && *term == old_term), "stale leader gone");

    // The current leader frozen, the cancel is asked (of the victim's own replica).
    cluster.signal(new_leader, Signal::SIGSTOP);
    let asked = http
        .post(format!("{}/api/runs/{}/cancel", cluster.url(other), victim.run_id))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "reason": "stale test" }))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), reqwest::StatusCode::ACCEPTED);
    let refused = || plain_log(&cluster.replicas[0].log).contains("cancel refused: a newer term holds the fence");
    wait_for("the stale leader to be refused", Duration::from_secs(10), || async { refused() }).await;
    let row = scenario.row(victim.run_id).await;
    assert_eq!(row.status, RunStatus::Running, "the stale leader acted on the cancel: {row:?}");
    assert!(scenario.died(victim.pid).is_none(), "the run was stopped by a stale leader");

    cluster.signal(new_leader, Signal::SIGCONT);
    let row = scenario.wait_ended(victim.run_id, Duration::from_secs(30)).await;
    assert_eq!(
        (row.status, row.error.as_deref()),
        (RunStatus::Killed, Some("cancelled by admin-token (api): stale test"))
    );
    wait_for("the cancelled run's process to be gone", Duration::from_secs(5), || async {
        scenario.died(victim.pid).is_some()
    })
    .await;
    eprintln!("stale leader refused; term {new_term} (or a later one) cancelled run {}", victim.run_id);
}

/// `tenure dev` on a job file of its own, stopped (SIGTERM) when dropped.
struct Dev {
    base: String,
    child: std::process::Child,
    _dir: TempDir,
}

impl Dev {
    fn start(jobs_yaml: &str) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let jobs = dir.path().join("jobs.yaml");
        std::fs::write(&jobs, jobs_yaml).unwrap();
        let port = crate::harness::free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
            .args(["dev", "--admin-token", "tok", "--listen", &format!("127.0.0.1:{port}"), "--jobs"])
            .arg(&jobs)
            .arg("--ledger")
            .arg(dir.path().join("ledger.db"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Dev { base: format!("http://127.0.0.1:{port}"), child, _dir: dir }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// `tenure dev`: its one replica is leader and executor, so a `run_on: any` job runs there
/// through the same assignment, acceptance and lease (on SQLite), with `TENURE_LEASE_ID`.
#[tokio::test]
async fn tenure_dev_executes_run_on_jobs_itself_under_a_lease() {
    let dev = Dev::start(
        "jobs:\n  - name: remote\n    schedule: \"* * * * * *\"\n    run_on: any\n    shell: 'echo lease=$TENURE_LEASE_ID'\n",
    );
    let base = &dev.base;
    let succeeded = || async {
        let page: serde_json::Value =
            reqwest::get(format!("{base}/api/jobs/remote/runs")).await.ok()?.json().await.ok()?;
        page["runs"].as_array()?.iter().find(|run| run["status"] == "succeeded").cloned()
    };
    wait_for("a run of the run_on job to succeed", Duration::from_secs(20), || async { succeeded().await.is_some() })
        .await;
    let brief = succeeded().await.unwrap();
    let run: serde_json::Value =
        reqwest::get(format!("{base}/api/runs/{}", brief["id"])).await.unwrap().json().await.unwrap();
    drop(dev);
    let node = run["node"].as_str().unwrap();
    assert_eq!(run["executor"], node, "{run:#}");
    assert_eq!(run["output"].as_str().unwrap().trim(), format!("lease={}-1-{node}", run["id"]), "{run:#}");
}

/// A run a replica executes under an execution lease keeps what a leader-run one has: its
/// timeout ends it (`timed_out`, SIGTERM then SIGKILL as ever), its output tail is kept, and its
/// outcome is told to the job's notification targets. (`tenure dev`: the one replica executes
/// its `run_on: any` job through the same assignment, acceptance and lease.)
#[tokio::test]
async fn a_leased_run_times_out_keeps_its_output_and_is_told() {
    let receiver = crate::notify::Receiver::start(false).await;
    let dev = Dev::start(&format!(
        "jobs:\n  - name: slow\n    schedule: \"*/5 * * * * *\"\n    run_on: any\n    timeout: 1s\n    \
         shell: 'echo begun; sleep 30'\n    notify:\n      - on: [timed_out]\n        webhook: {{ url: \"{}\" }}\n",
        receiver.url
    ));
    let base = &dev.base;
    let timed_out = || async {
        let page: serde_json::Value =
            reqwest::get(format!("{base}/api/jobs/slow/runs")).await.ok()?.json().await.ok()?;
        page["runs"].as_array()?.iter().find(|run| run["status"] == "timed_out").cloned()
    };
    wait_for("a leased run to time out", Duration::from_secs(30), || async { timed_out().await.is_some() }).await;
    let brief = timed_out().await.unwrap();
    let run: serde_json::Value =
        reqwest::get(format!("{base}/api/runs/{}", brief["id"])).await.unwrap().json().await.unwrap();
    wait_for("the timeout to be told", Duration::from_secs(20), || async {
        receiver.accepted().iter().any(|heard| heard.event == "timed_out")
    })
    .await;
    drop(dev);
    assert_eq!(run["executor"], run["node"], "{run:#}");
    assert_eq!(run["output"].as_str().unwrap().trim(), "begun", "{run:#}");
    let took = run["duration_ms"].as_i64().unwrap();
    assert!((1_000..10_000).contains(&took), "ended by its 1 s timeout, not its 30 s sleep: {run:#}");
}
