//! When a run really began, on real processes: the fenced start is recorded ahead, at the plan,
//! so a run held back after it (its replica's supervisor frozen, the replica itself frozen, a
//! worker's supervisor frozen) must show its lateness from the instant its process was spawned
//! or its request began to be sent, in the ledger, the API, the run page, the CLI and the
//! metric, and a duration that leaves the wait out. A slow HTTP answer lengthens the duration,
//! never the lateness.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tenure::model::RunStatus;
use tenure::store::RunRecord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::{Cluster, Options};
use crate::harness::{free_port, wait_for};

/// How long the process is held stopped after the slot; it is stopped 100 ms before it.
const HELD: Duration = Duration::from_millis(1_500);
/// The least lateness a run held back that long may show.
const AT_LEAST_LATE_MS: i64 = 1_400;
/// The shortest duration a run of a job that sleeps 0.3 s may show: its begin is recorded when
/// the supervisor's report of the spawn arrives, a few milliseconds after the process started.
const SLEEPS_MS: i64 = 250;

/// A lease TTL that outlasts the freeze: a replica frozen for `HELD` keeps its lease, and a
/// supervisor's silence limit (TTL + 200 ms) is not reached.
const LONG_TTL: Duration = Duration::from_secs(5);

/// A process held with SIGSTOP, continued when dropped (also when the test fails).
struct Stopped(Pid);

impl Stopped {
    fn stop(pid: Pid) -> Stopped {
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// The `tenure supervise` child of the replica `replica`, once it has started one.
fn supervisor_of(replica: Pid) -> Option<Pid> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid ...`: the command may hold spaces and parentheses.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if parent != Some(replica.as_raw()) {
            continue;
        }
        let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if command.split(|byte| *byte == 0).any(|arg| arg == b"supervise") {
            return Some(Pid::from_raw(pid));
        }
    }
    None
}

/// The first slot of a job due every `every` seconds at least `ahead` from now.
fn next_slot(every: i64, ahead: Duration) -> DateTime<Utc> {
    let earliest = (Utc::now() + ahead).timestamp();
    DateTime::from_timestamp((earliest / every + 1) * every, 0).unwrap()
}

/// Sleep until `at` (the test's own clock): times a fault, never waits for a condition.
async fn sleep_until(at: DateTime<Utc>) {
    if let Ok(wait) = (at - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
}

/// Hold `pid` stopped from 100 ms before `slot` until `HELD` after it.
async fn hold_across(pid: Pid, slot: DateTime<Utc>) {
    sleep_until(slot - chrono::Duration::milliseconds(100)).await;
    let stopped = Stopped::stop(pid);
    sleep_until(slot + chrono::Duration::from_std(HELD).unwrap()).await;
    drop(stopped);
}

async fn get_json(url: &str) -> Option<Value> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
    client.get(url).send().await.ok()?.json().await.ok()
}

/// The run of `job` at `slot`, once it has ended, as `/api/jobs/{job}/runs` lists it.
async fn ended_run(server: &str, job: &str, slot: DateTime<Utc>) -> Value {
    let find = || async {
        let page = get_json(&format!("{server}/api/jobs/{job}/runs")).await?;
        let run = page["runs"].as_array()?.iter().find(|run| instant(&run["slot"]) == Some(slot))?.clone();
        (run["status"] != "running").then_some(run)
    };
    wait_for(&format!("the run of {job} at {slot} to end"), Duration::from_secs(20), || async {
        find().await.is_some()
    })
    .await;
    find().await.unwrap()
}

fn instant(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.as_str()?).ok().map(|at| at.with_timezone(&Utc))
}

/// A short duration as the CLI prints it (`850ms`, `1.5s`) or the pages (`850 ms`, `1.5 s`).
fn millis(text: &str) -> Option<i64> {
    let text = text.trim().replace(' ', "");
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok();
    }
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    Some((seconds * 1000.0).round() as i64)
}

/// The text of the element with `id` on a page.
fn element<'a>(page: &'a str, id: &str) -> Option<&'a str> {
    let start = page.find(&format!("id=\"{id}\""))?;
    let text = &page[start..];
    let text = &text[text.find('>')? + 1..];
    Some(&text[..text.find('<')?])
}

/// The sum of the fire lateness histogram on a replica.
async fn lateness_sum(server: &str) -> f64 {
    let metrics = reqwest::get(format!("{server}/metrics")).await.unwrap().text().await.unwrap();
    metrics
        .lines()
        .find(|line| line.starts_with("tenure_fire_lateness_seconds_sum"))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `tenure ARGS --server SERVER`, its standard output.
async fn tenure(args: &[&str], server: &str) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(args)
        .args(["--server", server])
        .stdin(Stdio::null())
        .env_remove("TENURE_OUTPUT")
        .output()
        .await
        .expect("run tenure");
    assert!(output.status.success(), "tenure {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The ledger's lateness and duration of a run, in milliseconds, from its recorded begin.
fn ledger_timings(row: &RunRecord) -> (i64, i64) {
    let began = row.began_at.unwrap_or_else(|| panic!("the ledger has no begin for a run that ran: {row:?}"));
    ((began - row.planned_at).num_milliseconds(), (row.finished_at.unwrap() - began).num_milliseconds())
}

/// A `tenure dev` on its own job file and ledger, killed when dropped.
struct Dev {
    child: std::process::Child,
    dir: tempfile::TempDir,
    server: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Dev {
    /// Kill it, keeping its directory and ledger.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn start(jobs_yaml: &str) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let jobs = dir.path().join("jobs.yaml");
        std::fs::write(&jobs, jobs_yaml.replace("DIR", &dir.path().display().to_string())).unwrap();
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
            .args(["dev", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--jobs")
            .arg(&jobs)
            .arg("--ledger")
            .arg(dir.path().join("ledger.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dev.stderr")).unwrap())
            .spawn()
            .expect("start tenure dev");
        Dev { child, dir, server: format!("http://127.0.0.1:{port}") }
    }
}

/// On `tenure dev` (SQLite): the supervisor stopped across a slot holds the run's spawn back;
/// the start was recorded at the plan, ahead, but the lateness everyone shows is the spawn's.
#[tokio::test]
async fn a_run_held_back_by_a_frozen_supervisor_shows_its_lateness_from_its_spawn_everywhere() {
    let dev = Dev::start(
        r#"
jobs:
  - name: pulse
    schedule: "*/4 * * * * *"
    shell: 'LD_PRELOAD= date +%s.%N >> DIR/begun; sleep 0.3'
"#,
    )
    .await;
    let server = dev.server.clone();
    // The supervisor starts with the first run.
    wait_for("a first run of pulse", Duration::from_secs(20), || async {
        let Some(page) = get_json(&format!("{server}/api/jobs/pulse/runs")).await else { return false };
        page["runs"].as_array().is_some_and(|runs| runs.iter().any(|run| run["status"] == "succeeded"))
    })
    .await;
    let replica = Pid::from_raw(dev.child.id() as i32);
    let supervisor = supervisor_of(replica).expect("the replica's `tenure supervise`");

    let slot = next_slot(4, Duration::from_millis(1_500));
    hold_across(supervisor, slot).await;
    let brief = ended_run(&server, "pulse", slot).await;
    let id = brief["id"].as_i64().unwrap();
    let run = get_json(&format!("{server}/api/runs/{id}")).await.unwrap();
    assert_eq!(run["status"], "succeeded", "{run:#}");

    // The API: lateness from the spawn, a duration without the wait, both instants shown.
    let late = run["lateness_ms"].as_i64().unwrap_or(-1);
    assert!(late >= AT_LEAST_LATE_MS, "lateness {late} ms, though the spawn waited {HELD:?}: {run:#}");
    let took = run["duration_ms"].as_i64().unwrap_or(-1);
    assert!(
        (SLEEPS_MS..1_000).contains(&took),
        "duration {took} ms: the job sleeps 0.3 s, the wait is not its: {run:#}"
    );
    assert_eq!(instant(&run["start_recorded_at"]), Some(slot), "the start is recorded ahead, at the plan: {run:#}");
    let began = instant(&run["began_at"]).unwrap_or_else(|| panic!("no `began_at`: {run:#}"));
    assert_eq!((began - slot).num_milliseconds(), late, "{run:#}");
    // The job's own clock: its process ran just after the recorded begin, not at the plan.
    let begun: Vec<f64> = std::fs::read_to_string(dev.dir.path().join("begun"))
        .unwrap()
        .lines()
        .filter_map(|line| line.parse().ok())
        .collect();
    let own = begun.iter().copied().find(|at| *at >= slot.timestamp() as f64 && *at < slot.timestamp() as f64 + 4.0);
    let own = own.unwrap_or_else(|| panic!("the job did not record its run of {slot}: {begun:?}"));
    let after_begin = own - began.timestamp_micros() as f64 / 1e6;
    // The begin is taken when the supervisor's report of the spawn arrives: the process may have
    // run a few milliseconds by then.
    assert!((-0.05..0.5).contains(&after_begin), "the process ran {after_begin:.3} s after the recorded begin");

    // The list, the run page and the job page.
    assert_eq!(brief["lateness_ms"].as_i64(), Some(late), "{brief:#}");
    let page = reqwest::get(format!("{server}/runs/{id}")).await.unwrap().text().await.unwrap();
    let shown = element(&page, "lateness").and_then(millis);
    assert!(shown.is_some_and(|ms| ms >= AT_LEAST_LATE_MS), "the run page's lateness: {shown:?}\n{page}");
    assert!(element(&page, "start-recorded").is_some() && element(&page, "began").is_some(), "{page}");
    let job_page = reqwest::get(format!("{server}/jobs/pulse")).await.unwrap().text().await.unwrap();
    let row = job_page.split("<tr").find(|row| row.contains(&format!("/runs/{id}\""))).unwrap_or_default();
    assert!(row.contains("1.5 s") || row.contains("1.6 s") || row.contains("1.4 s"), "the job page's row: {row}");

    // The CLI.
    let shown = tenure(&["show", &id.to_string()], &server).await;
    let field = |name: &str| {
        shown.lines().find_map(|line| line.trim_start().strip_prefix(name).map(str::trim).map(str::to_owned))
    };
    let cli_late = field("late").as_deref().and_then(millis);
    assert!(cli_late.is_some_and(|ms| ms >= AT_LEAST_LATE_MS), "tenure show:\n{shown}");
    assert!(field("took").as_deref().and_then(millis).is_some_and(|ms| ms < 1_000), "tenure show:\n{shown}");
    assert!(field("began").is_some_and(|began| began != "-"), "tenure show:\n{shown}");
    let table = tenure(&["runs", "pulse"], &server).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let late_column = header.iter().position(|title| *title == "LATE").unwrap();
    let row = table.lines().find(|line| line.split_whitespace().next() == Some(&id.to_string())).unwrap();
    let cli_late = millis(row.split_whitespace().nth(late_column).unwrap());
    assert!(cli_late.is_some_and(|ms| ms >= AT_LEAST_LATE_MS), "tenure runs:\n{table}");

    // The metric.
    let sum = lateness_sum(&server).await;
    assert!(sum >= AT_LEAST_LATE_MS as f64 / 1000.0, "tenure_fire_lateness_seconds_sum {sum}");

    // The ledger itself, once `tenure dev` has let go of it.
    let mut dev = dev;
    dev.stop();
    let ledger = dev.dir.path().join("ledger.db");
    let reads = tenure::store::Reads::from_ledger(tenure::store::Sqlite::open(&ledger).await.unwrap());
    let row = reads.run(id).await.unwrap().unwrap();
    let (late, took) = ledger_timings(&row);
    assert!(late >= AT_LEAST_LATE_MS && (SLEEPS_MS..1_000).contains(&took), "{row:?}");
    assert_eq!(row.started_at, Some(slot), "the start recorded ahead: {row:?}");
}

/// A sink that answers every request a second after it arrived, noting when each arrived.
async fn slow_sink() -> (u16, Arc<Mutex<Vec<DateTime<Utc>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let noted = heard.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let noted = noted.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if request.is_empty() {
                                noted.lock().unwrap().push(Utc::now());
                            }
                            request.extend_from_slice(&buffer[..n]);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, heard)
}

/// The row of `job` at `slot`, once it has ended.
async fn ended_row(cluster: &Cluster, job: &str, slot: DateTime<Utc>) -> RunRecord {
    let find = || async {
        cluster
            .ledger()
            .await
            .into_iter()
            .find(|row| row.job == job && row.slot == slot && row.status != RunStatus::Running)
    };
    wait_for(&format!("the run of {job} at {slot} to end"), Duration::from_secs(20), || async {
        find().await.is_some()
    })
    .await;
    find().await.unwrap()
}

/// On a cluster (PostgreSQL): the leader records an HTTP run's start a second ahead, then is
/// frozen across the slot; its lateness ends when the request begins to be sent (the sink hears
/// it then), and the sink's one-second answer is the run's duration, not its lateness.
#[tokio::test]
async fn an_http_runs_lateness_ends_when_its_request_is_sent_and_a_slow_answer_is_its_duration() {
    let (port, heard) = slow_sink().await;
    let jobs = format!(
        r#"
jobs:
  - name: call
    schedule: "*/4 * * * * *"
    http: {{ url: "http://127.0.0.1:{port}/hook", method: POST }}
    timeout: 10s
"#
    );
    let options = Options {
        lease_ttl: Some(LONG_TTL),
        // The start recorded a second ahead of the slot: time to freeze the leader after it.
        env: vec![("TENURE_TEST_START_LEAD_MS".to_owned(), "1000".to_owned())],
        ..Options::default()
    };
    let cluster = Cluster::start_with(1, &jobs, options).await;
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    wait_for("a first call", Duration::from_secs(20), || async {
        cluster.ledger().await.iter().any(|row| row.job == "call" && row.status == RunStatus::Succeeded)
    })
    .await;

    let slot = next_slot(4, Duration::from_millis(2_500));
    wait_for("the start to be recorded ahead", Duration::from_secs(4), || async {
        cluster.ledger().await.iter().any(|row| row.job == "call" && row.slot == slot && row.started_at.is_some())
    })
    .await;
    assert!(Utc::now() < slot - chrono::Duration::milliseconds(150), "the start came too late to freeze after it");
    hold_across(cluster.replicas[leader].pid().unwrap(), slot).await;
    let row = ended_row(&cluster, "call", slot).await;
    assert_eq!(row.status, RunStatus::Succeeded, "{row:?}\n{}", cluster.logs());
    assert_eq!(row.started_at, Some(slot), "the start recorded ahead: {row:?}");

    let (late, took) = ledger_timings(&row);
    assert!(late >= AT_LEAST_LATE_MS, "lateness {late} ms, though the request waited {HELD:?}: {row:?}");
    assert!((1_000..1_400).contains(&took), "duration {took} ms: the sink's second, not the wait: {row:?}");
    // The sink heard the request just after the recorded begin.
    let arrived = heard.lock().unwrap().iter().copied().find(|at| *at > slot).expect("the sink heard the call");
    let after_begin = (arrived - row.began_at.unwrap()).num_milliseconds();
    assert!((0..300).contains(&after_begin), "the request arrived {after_begin} ms after the recorded begin: {row:?}");

    let run = get_json(&format!("{}/api/runs/{}", cluster.url(leader), row.id)).await.unwrap();
    assert_eq!(run["lateness_ms"].as_i64(), Some(late), "{run:#}");
    assert_eq!(run["duration_ms"].as_i64(), Some(took), "{run:#}");
    let sum = lateness_sum(&cluster.url(leader)).await;
    assert!(sum >= AT_LEAST_LATE_MS as f64 / 1000.0, "tenure_fire_lateness_seconds_sum {sum}");
}

/// On a cluster (PostgreSQL), a `run_on` run: the worker's supervisor stopped across the slot
/// holds the spawn back; the worker records the begin with the outcome it writes.
#[tokio::test]
async fn a_workers_frozen_supervisor_delays_the_begin_the_worker_records() {
    let jobs = r#"
jobs:
  - name: work
    schedule: "*/4 * * * * *"
    run_on: { tags: [w] }
    shell: 'sleep 0.3'
"#;
    let options = Options {
        lease_ttl: Some(LONG_TTL),
        replica_args: vec![("node-1".to_owned(), vec!["--tags=w".to_owned()])],
        ..Options::default()
    };
    let mut cluster = Cluster::start_with(1, jobs, options).await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let worker = cluster.add_replica().await;
    wait_for("a first run on the worker", Duration::from_secs(30), || async {
        cluster.ledger().await.iter().any(|row| {
            row.job == "work" && row.status == RunStatus::Succeeded && row.executor.as_deref() == Some("node-1")
        })
    })
    .await;
    let supervisor = supervisor_of(cluster.replicas[worker].pid().unwrap()).expect("the worker's `tenure supervise`");

    let slot = next_slot(4, Duration::from_millis(1_500));
    hold_across(supervisor, slot).await;
    let row = ended_row(&cluster, "work", slot).await;
    assert_eq!((row.status, row.executor.as_deref()), (RunStatus::Succeeded, Some("node-1")), "{row:?}");
    let (late, took) = ledger_timings(&row);
    assert!(late >= AT_LEAST_LATE_MS, "lateness {late} ms, though the spawn waited {HELD:?}: {row:?}");
    assert!((SLEEPS_MS..1_000).contains(&took), "duration {took} ms: the job sleeps 0.3 s: {row:?}");

    let run = get_json(&format!("{}/api/runs/{}", cluster.url(0), row.id)).await.unwrap();
    assert_eq!(run["lateness_ms"].as_i64(), Some(late), "{run:#}");
    // Observed where it executed.
    let sum = lateness_sum(&cluster.url(worker)).await;
    assert!(sum >= AT_LEAST_LATE_MS as f64 / 1000.0, "the worker's tenure_fire_lateness_seconds_sum {sum}");
}
