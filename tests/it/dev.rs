//! `tenure dev` as a newcomer runs it: one command, a SQLite ledger, the dashboard; a restart
//! is a new, higher term and keeps the history.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::harness::{free_port, wait_for};

async fn get_json(url: &str) -> Option<Value> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
    client.get(url).send().await.ok()?.json().await.ok()
}

fn start(dir: &std::path::Path, port: u16) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["dev", "--jobs", "jobs.example.yaml", "--admin-token", "tok", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--ledger")
        .arg(dir.join("ledger.db"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tenure dev")
}

#[tokio::test]
async fn dev_fires_the_example_at_once_and_a_restart_is_a_higher_term() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(dir.path(), port);

    // The per-second job has run and the dashboard shows it.
    wait_for("the heartbeat job to succeed", Duration::from_secs(15), || async {
        let Some(jobs) = get_json(&format!("{base}/api/jobs")).await else { return false };
        jobs.as_array()
            .is_some_and(|jobs| jobs.iter().any(|j| j["name"] == "heartbeat" && j["last"]["status"] == "succeeded"))
    })
    .await;
    let cluster = get_json(&format!("{base}/api/cluster")).await.unwrap();
    let first_term = cluster["leader"]["term"].as_i64().unwrap();
    assert_eq!(cluster["replicas"].as_array().unwrap().len(), 1);
    let page = reqwest::get(format!("{base}/")).await.unwrap().text().await.unwrap();
    assert!(page.contains("heartbeat") && page.contains("leader"));
    // A manual trigger goes through the same claim path.
    let answer = reqwest::Client::new()
        .post(format!("{base}/api/jobs/disk-usage/trigger"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    wait_for("the triggered run", Duration::from_secs(10), || async {
        let Some(page) = get_json(&format!("{base}/api/jobs/disk-usage/runs")).await else { return false };
        page["runs"]
            .as_array()
            .is_some_and(|runs| runs.iter().any(|r| r["trigger"] == "manual" && r["status"] == "succeeded"))
    })
    .await;

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "dev stops cleanly on SIGTERM: {status:?}");
    let mut banner = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut banner).unwrap();
    assert!(banner.contains(&format!("http://127.0.0.1:{port}/")), "{banner}");

    let mut child = start(dir.path(), port);
    wait_for("the restarted dev to lead", Duration::from_secs(15), || async {
        get_json(&format!("{base}/api/cluster"))
            .await
            .is_some_and(|c| c["leader"]["term"].as_i64().is_some_and(|t| t > first_term))
    })
    .await;
    let runs = get_json(&format!("{base}/api/jobs/disk-usage/runs")).await.unwrap();
    assert!(
        runs["runs"].as_array().unwrap().iter().any(|r| r["trigger"] == "manual"),
        "the ledger survived the restart"
    );
    let terms = get_json(&format!("{base}/api/terms")).await.unwrap();
    assert_eq!(terms.as_array().unwrap().len(), 2);
    assert!(terms[0]["handover_ms"].is_i64(), "the restart shows as a hand-over");
    let _ = child.kill();
    let _ = child.wait();
}
