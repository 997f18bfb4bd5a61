//! Slow and hostile clients against a real listener (`tenure dev` processes): slow bodies take no
//! turn from the operator, slow headers and bodies are cut off at their deadlines, thousands of
//! slow connections leave the firing path its open files, and input that once panicked a handler
//! is answered.

use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tenure::http::{BODY_TIMEOUT, HEADER_TIMEOUT};

use crate::cluster::{ADMIN_TOKEN, Cluster, Options};
use crate::harness::{free_port, wait_for};

/// The admin token the replicas here start with.
const TOKEN: &str = "tok";
/// A job that runs every second and always succeeds.
const EVERY_SECOND: &str = "jobs:\n  - name: tick\n    schedule: \"* * * * * *\"\n    shell: \"true\"\n";

/// A `tenure dev` process, killed when dropped (also when the test fails).
struct Replica {
    child: std::process::Child,
    base: String,
    port: u16,
    stderr: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// `tenure dev` on `jobs` (`DIR` in it stands for the replica's own directory) with the admin
    /// token and `extra` arguments, under `ulimit` with `ulimit_args` (`-n 1024`: soft and hard
    /// open-files limits) when given.
    async fn start(jobs: &str, extra: &[&str], ulimit_args: Option<&str>) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jobs.yaml"), jobs.replace("DIR", &dir.path().display().to_string())).unwrap();
        let port = free_port();
        let stderr = dir.path().join("tenure.stderr");
        let limit = ulimit_args.map_or_else(String::new, |args| format!("ulimit {args} && "));
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{limit}exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_tenure"))
            .args(["dev", "--admin-token", TOKEN, "--listen", &format!("127.0.0.1:{port}")])
            .arg("--jobs")
            .arg(dir.path().join("jobs.yaml"))
            .arg("--ledger")
            .arg(dir.path().join("ledger.db"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start tenure dev");
        let replica = Replica { child, base: format!("http://127.0.0.1:{port}"), port, stderr, _dir: dir };
        let healthz = format!("{}/healthz", replica.base);
        wait_for("tenure dev to answer /healthz", Duration::from_secs(15), || async {
            reqwest::get(&healthz).await.is_ok_and(|answer| answer.status().is_success())
        })
        .await;
        replica
    }

    fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `tick`'s runs, newest first, read with the token.
    async fn runs(&self) -> Vec<Value> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let answer = client.get(format!("{}/api/jobs/tick/runs?limit=500", self.base)).bearer_auth(TOKEN).send().await;
        let Ok(answer) = answer else { return Vec::new() };
        let page: Value = answer.json().await.unwrap_or_default();
        page["runs"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection that sent a request head announcing `Content-Length: 10000`, then `{`, then
/// nothing more.
async fn slow_body(port: u16, method_path: &str, authorization: Option<&str>) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let authorization = authorization.map_or_else(String::new, |value| format!("Authorization: {value}\r\n"));
    let head = format!(
        "{method_path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{authorization}\
         Content-Length: 10000\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Everything the server sends on `stream` until it closes it, or `None` if it is still open
/// after `within`.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut answer = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

/// A hundred connections at the API's changes and the page forms, each announcing a 10,000-byte
/// body and sending one byte of it, without credentials; then the operator's pause and resume
/// (and a read) with the token, each of which must answer 200 within a second.
async fn the_operator_answers_beside_slow_bodies(base: &str, port: u16, token: &str, what: &str) {
    let targets = [
        "POST /api/jobs/nope/trigger",
        "POST /api/jobs/tick/trigger",
        "POST /api/jobs/tick/backfill",
        "POST /api/jobs/tick/pause",
        "POST /jobs/tick/pause",
    ];
    let mut slow = Vec::new();
    for index in 0..100 {
        slow.push(slow_body(port, targets[index % targets.len()], None).await);
    }
    // The 1 s bound is the client's own timeout: an answer after it is no answer.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
    for round in 0..5 {
        for action in ["pause", "resume"] {
            let answer = client
                .post(format!("{base}/api/jobs/tick/{action}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap_or_else(|error| panic!("{what}: {action} (round {round}): {error}"));
            let status = answer.status();
            assert_eq!(status, 200, "{what}: {action} (round {round}): {}", answer.text().await.unwrap_or_default());
        }
        let read = client.get(format!("{base}/api/jobs")).bearer_auth(token).send().await.unwrap();
        assert_eq!(read.status(), 200, "{what}: an authorised read (round {round})");
    }
    drop(slow);
}

/// Four slow unauthenticated bodies once shut the dashboard for everyone, the operator's own
/// authorised pause included. Now a hundred take no turn: reads open (`tenure dev`).
#[tokio::test]
async fn slow_unauthenticated_bodies_take_no_turn_from_the_operators_pause() {
    let replica = Replica::start(EVERY_SECOND, &[], None).await;
    the_operator_answers_beside_slow_bodies(&replica.base, replica.port, TOKEN, "reads open").await;
}

/// The same with `--protect-reads`, on a replica of a real cluster.
#[tokio::test]
async fn slow_unauthenticated_bodies_take_no_turn_with_protected_reads() {
    let options =
        Options { replica_args: vec![("node-0".to_owned(), vec!["--protect-reads".to_owned()])], ..Options::default() };
    let cluster = Cluster::start_with(1, EVERY_SECOND, options).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    let url = cluster.url(0);
    the_operator_answers_beside_slow_bodies(&url, cluster.replicas[0].port, ADMIN_TOKEN, "protected reads").await;
}

/// A client that sends its head slowly (or nothing) is disconnected once the header timeout has
/// passed; an authorised client that sends its body slowly is told 408 once the body timeout has.
#[tokio::test]
async fn slow_heads_and_slow_bodies_are_cut_off_at_their_deadlines() {
    let replica = Replica::start(EVERY_SECOND, &[], None).await;
    let margin = Duration::from_secs(5);
    let mut silent = TcpStream::connect(("127.0.0.1", replica.port)).await.unwrap();
    let mut slow_head = TcpStream::connect(("127.0.0.1", replica.port)).await.unwrap();
    slow_head.write_all(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let mut slow_body = slow_body(replica.port, "POST /api/jobs/tick/trigger", Some(&format!("Bearer {TOKEN}"))).await;
    let (silent, slow_head, slow_body) = tokio::join!(
        until_closed(&mut silent, HEADER_TIMEOUT + margin),
        until_closed(&mut slow_head, HEADER_TIMEOUT + margin),
        until_closed(&mut slow_body, BODY_TIMEOUT + margin),
    );
    assert!(silent.is_some(), "a connection that sends nothing is still open after {:?}", HEADER_TIMEOUT + margin);
    assert!(slow_head.is_some(), "a slow head is still open after {:?}", HEADER_TIMEOUT + margin);
    let slow_body = slow_body.unwrap_or_else(|| panic!("a slow body is still open after {:?}", BODY_TIMEOUT + margin));
    assert!(slow_body.starts_with("HTTP/1.1 408"), "{slow_body}");
    assert!(slow_body.contains("application/problem+json"), "{slow_body}");
}

/// Raise this process's open-files limit to its hard limit: the test holds thousands of sockets.
fn raise_own_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// Ask for `/healthz` on a fresh connection every half second (or once the last answer came)
/// until `until`: how long each answer took, and the answers that were not 200 within 5 s (a
/// connection refused or reset, or a SYN the kernel's full accept queue dropped thrice, would
/// show here).
async fn probe_health_until(base: &str, until: tokio::time::Instant) -> Vec<Result<Duration, String>> {
    let probe = reqwest::Client::builder().timeout(Duration::from_secs(5)).pool_max_idle_per_host(0).build().unwrap();
    let mut outcomes = Vec::new();
    while tokio::time::Instant::now() < until {
        let started = tokio::time::Instant::now();
        outcomes.push(match probe.get(format!("{base}/healthz")).send().await {
            Ok(answer) if answer.status().is_success() => Ok(started.elapsed()),
            Ok(answer) => Err(format!("{}: {}", Utc::now(), answer.status())),
            Err(error) => Err(format!("{}: {error:?}", Utc::now())),
        });
        tokio::time::sleep_until(started + Duration::from_millis(500)).await;
    }
    outcomes
}

/// The most health checks in a row a load balancer lets fail before it takes a replica out: one
/// (two failures in a row is the least any asks for: AWS's smallest unhealthy threshold;
/// Kubernetes' default is three).
const HEALTH_FAILURES_TOLERATED: usize = 1;

/// A slow-header client: connect, send part of a head, wait until the server closes, again,
/// until `until`.
async fn slowloris(port: u16, until: tokio::time::Instant) {
    while tokio::time::Instant::now() < until {
        let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(("127.0.0.1", port))).await;
        let Ok(Ok(mut stream)) = connect else { continue };
        if stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.is_err() {
            continue;
        }
        let mut sink = [0u8; 256];
        let _ = tokio::time::timeout_at(until, stream.read(&mut sink)).await;
    }
}

/// With the open-files limit at 1,024, 3,000 slow-header connections once made `accept` fail
/// and every run fail with "Too many open files". Now the connections are capped below the
/// limit with the firing path's files reserved: every per-second slot of the window succeeds,
/// and `/healthz` answers throughout, as a load balancer judges it: never two checks in a row
/// unanswered. (The HTTP thread runs below the firing path's priority, so on a machine whose other
/// work wants the CPU, a fresh connection can wait out a check's timeout behind the flood, or be
/// taken for a slow head and closed before its head is read; the next check is answered.)
#[tokio::test]
async fn thousands_of_slow_heads_leave_the_firing_path_its_open_files() {
    raise_own_open_files_limit();
    let replica = Replica::start(EVERY_SECOND, &[], Some("-n 1024")).await;
    wait_for("tick's first success", Duration::from_secs(15), || async {
        replica.runs().await.iter().any(|run| run["status"] == "succeeded")
    })
    .await;

    let window_start = Utc::now();
    let until = tokio::time::Instant::now() + Duration::from_secs(12);
    let attackers: Vec<_> = (0..3_000).map(|_| tokio::spawn(slowloris(replica.port, until))).collect();
    // A fresh connection every half second, as a load balancer's health check makes: on a thread
    // of its own, as a health checker is not one of the attackers' tasks.
    let base = replica.base.clone();
    let prober = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(probe_health_until(&base, until))
    });
    let probes = tokio::task::spawn_blocking(move || prober.join().unwrap()).await.unwrap();
    for attacker in attackers {
        attacker.await.unwrap();
    }
    let window_end = Utc::now();

    let first = (window_start + TimeDelta::seconds(1)).duration_trunc(TimeDelta::seconds(1)).unwrap();
    let last = window_end.duration_trunc(TimeDelta::seconds(1)).unwrap();
    wait_for("the window's last slot to finish", Duration::from_secs(15), || async {
        replica.runs().await.iter().any(|run| {
            run["slot"].as_str().and_then(|slot| slot.parse::<DateTime<Utc>>().ok()).is_some_and(|slot| slot >= last)
                && run["status"] != "running"
        })
    })
    .await;
    let runs = replica.runs().await;
    let status_of = |slot: DateTime<Utc>| {
        runs.iter()
            .find(|run| run["slot"].as_str().and_then(|text| text.parse::<DateTime<Utc>>().ok()) == Some(slot))
            .map(|run| format!("{} {}", run["status"], run["error"]))
    };
    let mut wrong = Vec::new();
    let mut slot = first;
    while slot <= last {
        match status_of(slot) {
            Some(status) if status.starts_with("\"succeeded\"") => {}
            other => wrong.push(format!("{slot}: {other:?}")),
        }
        slot += TimeDelta::seconds(1);
    }
    let stderr = replica.stderr();
    assert!(
        wrong.is_empty(),
        "slots of the window not succeeded:\n{}\n{}",
        wrong.join("\n"),
        stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(runs.iter().all(|run| run["status"] != "failed"), "a run failed: {runs:?}");
    let metrics = reqwest::get(format!("{}/metrics", replica.base)).await.unwrap().text().await.unwrap();
    let shed: Vec<&str> =
        metrics.lines().filter(|line| line.starts_with("tenure_http_connections_shed_total")).collect();
    let mut took: Vec<Duration> = probes.iter().filter_map(|probe| probe.as_ref().ok().copied()).collect();
    let unanswered: Vec<&String> = probes.iter().filter_map(|probe| probe.as_ref().err()).collect();
    let most_in_a_row = probes.split(Result::is_ok).map(<[_]>::len).max().unwrap_or(0);
    took.sort();
    let quantile = |q: f64| took.get(((took.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
    println!(
        "/healthz answered {} times ({} unanswered): median {:?}, 90th percentile {:?}, slowest {:?}; connections closed at the cap: {shed:?}",
        took.len(),
        unanswered.len(),
        quantile(0.5),
        quantile(0.9),
        quantile(1.0)
    );
    assert!(
        !took.is_empty() && most_in_a_row <= HEALTH_FAILURES_TOLERATED,
        "/healthz unanswered {} times, {most_in_a_row} in a row: {unanswered:?}",
        unanswered.len()
    );
    assert!(!stderr.contains("Too many open files"), "{stderr}");
}

/// A backfill from the earliest instant chrono represents once panicked its handler (the slot
/// before it overflowed) and the connection closed unanswered. Now it is a 400, the connection is
/// answered and the replica serves on.
#[tokio::test]
async fn a_backfill_from_the_first_representable_instant_is_answered_400() {
    let replica = Replica::start(EVERY_SECOND, &[], None).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let answer = client
        .post(format!("{}/api/jobs/tick/backfill", replica.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"from": "-262143-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z", "dry_run": true}"#)
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 400);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    let problem: Value = answer.json().await.unwrap();
    assert!(problem["detail"].as_str().is_some_and(|detail| detail.contains("from")), "{problem}");
    let health = client.get(format!("{}/healthz", replica.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(!replica.stderr().contains("panicked"), "{}", replica.stderr());
}

/// The soft and hard open-files limits of process `pid`, from `/proc/<pid>/limits`.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|line| line.starts_with("Max open files")).unwrap().to_owned();
    let mut numbers = line.split_whitespace().skip(3);
    (numbers.next().unwrap().to_owned(), numbers.next().unwrap().to_owned())
}

/// A replica raises its soft open-files limit to the hard one (its connections and runs share
/// it); the jobs it starts get the soft limit it was started with.
#[tokio::test]
async fn the_replica_raises_its_open_files_limit_and_its_jobs_keep_the_one_it_was_given() {
    let jobs = "jobs:\n  - name: limit\n    schedule: \"* * * * * *\"\n    shell: \"ulimit -Sn > DIR/soft.tmp && mv DIR/soft.tmp DIR/soft\"\n";
    let replica = Replica::start(jobs, &[], Some("-Sn 512")).await;
    let (soft, hard) = open_files_limits(replica.child.id());
    assert_eq!(soft, hard, "the replica's own soft limit is its hard one");
    assert_ne!(soft, "512");
    let seen = replica.dir().join("soft");
    wait_for("the job to report its limit", Duration::from_secs(15), || async { seen.exists() }).await;
    assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), "512", "the job's soft limit");
}
