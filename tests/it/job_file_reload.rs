//! A hostile job file on a real `tenure dev`: replaced ten times by files built to cost time,
//! memory or log space (`hostile`), it never delays a per-second slot, the last good file keeps
//! running, and a file of 100,000 invalid jobs logs a bounded entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::wait_for;
use crate::hostile::hostile_files;
use crate::http_secrets::Dev;

/// What a rejected reload logs.
const REJECTED: &str = "job file is invalid";
/// The most a rejected reload may log, whatever the file.
const MAX_LOGGED: usize = 16 * 1024;

/// Before: parsing ran on the async runtime's threads and logged every error, so a file of
/// 100,000 invalid jobs wrote one 48.9 MB log entry and a per-second slot could be recorded
/// `missed` while a large file was parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_job_files_never_delay_a_slot_and_the_last_good_file_keeps_running() {
    // Built before the window opens: building them (hundreds of thousands of jobs) and writing them
    // is the test's own blocking work, which must not hold up the server the job calls.
    let files = hostile_files(tenure::config::MAX_FILE_BYTES);
    // The job calls this server, on a runtime with a second thread for it: no process to start
    // at each slot.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { "ok" }
    });
    let _server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.yaml");
    let good = format!(
        "jobs:\n  - name: tick\n    schedule: \"* * * * * *\"\n    http: {{ url: \"http://127.0.0.1:{port}/tick\" }}\n"
    );
    std::fs::write(&jobs, &good).unwrap();
    let dev = Dev::start(dir.path(), &jobs, &[]);
    wait_for("the tick job to run", Duration::from_secs(30), || async { calls.load(Ordering::SeqCst) >= 2 }).await;
    let hash = dev.json("/api/cluster").await["replicas"][0]["config_hash"].clone();
    assert!(hash.is_string(), "{hash}");

    let from = next_second(Utc::now());
    let staged = dir.path().join("staged.yaml");
    let mut logged = Vec::new();
    for (name, bytes) in files {
        let log_before = dev.log();
        let rejections = log_before.matches(REJECTED).count();
        // Replaced whole, as a deployment does: the replica never reads a half-written file.
        std::fs::write(&staged, &bytes).unwrap();
        std::fs::rename(&staged, &jobs).unwrap();
        kill(Pid::from_raw(dev.pid() as i32), Signal::SIGHUP).unwrap();
        wait_for(&format!("the rejection of {name}"), Duration::from_secs(180), || async {
            dev.log().matches(REJECTED).count() > rejections
        })
        .await;
        // The entry is written at once; what follows it is the job's own lines.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = dev.log();
        let added: usize = log[log_before.len()..]
            .lines()
            .filter(|line| !line.contains("run finished"))
            .map(|line| line.len() + 1)
            .sum();
        logged.push((name, added));
    }
    let until = next_second(Utc::now()) - chrono::Duration::seconds(1);
    wait_for("the slots up to the last rejection to be decided", Duration::from_secs(10), || async {
        let api = dev.json("/api/jobs/tick").await;
        api["last"]["slot"]
            .as_str()
            .and_then(|slot| slot.parse::<DateTime<Utc>>().ok())
            .is_some_and(|last| last > until)
    })
    .await;

    // The last good file is still the one running.
    let cluster = dev.json("/api/cluster").await;
    assert_eq!(cluster["replicas"][0]["config_hash"], hash, "{cluster}");
    let listed: Vec<String> =
        dev.json("/api/jobs").await.as_array().unwrap().iter().map(|j| j["name"].to_string()).collect();
    assert_eq!(listed, ["\"tick\""]);
    let log = dev.log();
    drop(dev);

    for (name, added) in &logged {
        assert!(*added <= MAX_LOGGED, "the rejection of {name} logged {added} bytes:\n{}", &log[..log.len().min(4096)]);
    }
    let ledger =
        tenure::store::Reads::from_ledger(tenure::store::Sqlite::open(&dir.path().join("ledger.db")).await.unwrap());
    let runs = ledger.all_runs().await.unwrap();
    let mut slot = from;
    let mut wrong = Vec::new();
    while slot <= until {
        match runs.iter().find(|run| run.job == "tick" && run.slot == slot) {
            Some(run) if run.status.as_str() == "succeeded" => {}
            Some(run) => wrong.push(format!("{slot}: {} {:?}", run.status.as_str(), run.error)),
            None => wrong.push(format!("{slot}: no row")),
        }
        slot += chrono::Duration::seconds(1);
    }
    let window = (until - from).num_seconds() + 1;
    assert!(
        wrong.is_empty(),
        "{} of {window} slots not succeeded while hostile files were refused: {wrong:#?}",
        wrong.len()
    );
    eprintln!("{window} slots, every one succeeded; logged per rejection: {logged:?}");
}

fn next_second(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(chrono::Duration::seconds(1)).unwrap() + chrono::Duration::seconds(1)
}

/// A reload whose file has a step that does not divide its field loads (the job is scheduled
/// and described by the times it fires) and logs the warning, located, with the `@every` form.
#[tokio::test]
async fn a_reloaded_file_with_an_uneven_step_loads_and_logs_the_warning() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(&jobs, "jobs:\n  - name: daily\n    schedule: '@daily'\n    shell: 'true'\n").unwrap();
    let dev = Dev::start(dir.path(), &jobs, &[]);
    wait_for("tenure dev to serve", Duration::from_secs(30), || async { dev.json("/api/jobs").await.is_array() }).await;

    std::fs::write(&jobs, "jobs:\n  - name: every-45-minutes\n    schedule: '*/45 * * * *'\n    shell: 'true'\n")
        .unwrap();
    kill(Pid::from_raw(dev.pid() as i32), Signal::SIGHUP).unwrap();
    wait_for("the reloaded job", Duration::from_secs(30), || async {
        dev.json("/api/jobs").await[0]["name"] == "every-45-minutes"
    })
    .await;
    let job = dev.json("/api/jobs/every-45-minutes").await;
    assert_eq!(job["description"], "At minutes 0 and 45 past every hour", "{job}");
    let log = dev.log();
    assert!(log.contains("may not fire as meant"), "{log}");
    assert!(
        log.contains(&format!("{}:3:16: warning: job `every-45-minutes`: `*/45` in the minute field", jobs.display())),
        "{log}"
    );
    assert!(log.contains("write `@every 45m`"), "{log}");
}
