//! Notifications by outcome (`notify:`) from a real cluster to a real HTTP receiver in the test
//! process: each event is told once, signed, with a stable id; a receiver that is down gets
//! every event once it is back; a leader SIGKILLed with events pending loses none and sends none
//! twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tenure::store::NotificationRecord;

use crate::cluster::{Cluster, Options};
use crate::harness::wait_for;

const SECRET: &str = "correct-horse-battery-staple";

/// One request as the receiver got it, and what it answered.
#[derive(Debug, Clone)]
pub(crate) struct Heard {
    id: i64,
    pub(crate) event: String,
    signature: String,
    attempt: i32,
    body: Bytes,
    accepted: bool,
}

impl Heard {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP receiver on loopback: records every request; answers 503 while `down`.
pub(crate) struct Receiver {
    pub(crate) url: String,
    heard: Arc<Mutex<Vec<Heard>>>,
    down: Arc<AtomicBool>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start(down: bool) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(down));
        let (recorded, is_down) = (heard.clone(), down.clone());
        let app = axum::Router::new().route(
            "/hooks/{token}",
            post(move |headers: HeaderMap, body: Bytes| {
                let (recorded, is_down) = (recorded.clone(), is_down.clone());
                async move {
                    let header = |name: &str| {
                        headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned()
                    };
                    let accepted = !is_down.load(Ordering::SeqCst);
                    recorded.lock().unwrap().push(Heard {
                        id: header("x-tenure-event-id").parse().unwrap_or(-1),
                        event: header("x-tenure-event"),
                        signature: header("x-tenure-signature-256"),
                        attempt: header("x-tenure-delivery-attempt").parse().unwrap_or(-1),
                        body,
                        accepted,
                    });
                    if accepted { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
                }
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url: format!("http://127.0.0.1:{port}/hooks/T0K3N"), heard, down, _server: server }
    }

    fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }

    pub(crate) fn accepted(&self) -> Vec<Heard> {
        self.heard().into_iter().filter(|heard| heard.accepted).collect()
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

/// Verify a signature as a receiver would, with an HMAC of its own (not tenure's).
fn verify(signature: &str, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let Some(hex_mac) = signature.strip_prefix("sha256=") else { return false };
    let Ok(mac) = hex::decode(hex_mac) else { return false };
    let mut expected = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    expected.update(body);
    expected.verify_slice(&mac).is_ok()
}

/// A job failing every second, told to the receiver (JSON, signed).
fn failing_job(receiver: &Receiver) -> String {
    format!(
        r#"
jobs:
  - name: fails
    schedule: "* * * * * *"
    shell: "exit 3"
    notify:
      - on: [failed]
        webhook:
          url: {}
          headers: {{ X-Team: ops }}
          secret: {{ env: HOOK_SECRET }}
"#,
        receiver.url
    )
}

fn with_secret() -> Options {
    Options { env: vec![("HOOK_SECRET".into(), SECRET.into())], ..Options::default() }
}

/// Wait until the ledger holds `count` more ended runs than now.
async fn more_runs(cluster: &Cluster, count: usize) {
    let ended = || async { cluster.ledger().await.iter().filter(|run| run.finished_at.is_some()).count() };
    let target = ended().await + count;
    wait_for("more runs", Duration::from_secs(10 + 2 * count as u64), || async { ended().await >= target }).await;
}

/// Stop new events: every job paused, its targets kept (events of a target no longer in the job
/// file are abandoned). Returns once every replica running has reloaded the paused file and no
/// run is left unfinished: a run in flight as the file changes adds its event when it ends, which
/// may be after the events a test counted.
async fn pause_every_job(cluster: &Cluster, jobs: &str) {
    cluster.write_jobs(&jobs.replace("    schedule:", "    paused: true\n    schedule:"));
    // A killed leader's runs end when the new one reaps them.
    wait_for("every job paused on every replica, and no run in flight", Duration::from_secs(60), || async {
        for index in (0..cluster.replicas.len()).filter(|index| cluster.is_up(*index)) {
            let answer = reqwest::get(format!("{}/api/jobs", cluster.url(index))).await;
            let jobs: Value = match answer {
                Ok(answer) => answer.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if !jobs.as_array().is_some_and(|jobs| jobs.iter().all(|job| job["paused"] == true)) {
                return false;
            }
        }
        cluster.ledger().await.iter().all(|run| run.finished_at.is_some())
    })
    .await;
}

/// Every event in the ledger, by id.
async fn outbox(cluster: &Cluster) -> HashMap<i64, NotificationRecord> {
    let mut events = HashMap::new();
    for run in cluster.ledger().await {
        for event in cluster.reads.run_notifications(run.id).await.unwrap() {
            events.insert(event.id, event);
        }
    }
    events
}

/// Each event of the ledger was accepted exactly once, and nothing else was.
async fn assert_each_accepted_once(cluster: &Cluster, receiver: &Receiver) {
    let outbox = outbox(cluster).await;
    let mut times: HashMap<i64, usize> = HashMap::new();
    for heard in receiver.accepted() {
        *times.entry(heard.id).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "accepted more than once: {twice:?}");
    let mut outbox_ids: Vec<i64> = outbox.keys().copied().collect();
    let mut accepted_ids: Vec<i64> = times.keys().copied().collect();
    outbox_ids.sort();
    accepted_ids.sort();
    assert_eq!(accepted_ids, outbox_ids, "the receiver got exactly the ledger's events");
    for event in outbox.values() {
        assert_eq!(event.status, "delivered", "{event:?}");
    }
}

/// Wait until the ledger holds at least `count` events and none is pending.
async fn wait_all_delivered(cluster: &Cluster, count: usize, timeout: Duration) {
    wait_for("every event delivered", timeout, || async {
        let outbox = outbox(cluster).await;
        outbox.len() >= count && outbox.values().all(|event| event.status == "delivered")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_told_once_each_signed_with_a_stable_id_and_recoveries_once() {
    let receiver = Receiver::start(false).await;
    let flag = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    std::fs::remove_file(&flag).unwrap();
    let jobs = format!(
        r#"{}
  - name: recovers
    schedule: "* * * * * *"
    shell: "test -e {}"
    notify:
      - on: [recovered]
        webhook: {{ url: {}, format: slack }}
"#,
        failing_job(&receiver),
        flag.display(),
        receiver.url
    );
    let mut cluster = Cluster::start_with(2, &jobs, with_secret()).await;
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    wait_for("three failures told", Duration::from_secs(20), || async {
        receiver.accepted().iter().filter(|heard| heard.event == "failed").count() >= 3
    })
    .await;
    std::fs::write(&flag, "").unwrap();
    wait_for("the recovery told", Duration::from_secs(20), || async {
        receiver.accepted().iter().any(|heard| heard.event == "recovered")
    })
    .await;
    // Successes after the recovery are no recoveries.
    more_runs(&cluster, 3).await;
    pause_every_job(&cluster, &jobs).await;
    wait_all_delivered(&cluster, 4, Duration::from_secs(20)).await;

    let heard = receiver.heard();
    for failed in heard.iter().filter(|heard| heard.event == "failed") {
        assert!(verify(&failed.signature, &failed.body), "a signature the receiver cannot verify: {failed:?}");
        let body = failed.json();
        assert_eq!(body["id"], failed.id);
        assert_eq!((body["event"].as_str(), body["job"].as_str()), (Some("failed"), Some("fails")));
        assert_eq!((body["run"]["status"].as_str(), body["run"]["exit_code"].as_i64()), (Some("failed"), Some(3)));
        assert_eq!(failed.attempt, 1);
    }
    let recovered: Vec<&Heard> = heard.iter().filter(|heard| heard.event == "recovered").collect();
    assert_eq!(recovered.len(), 1, "one recovery, however many successes follow: {heard:#?}");
    assert_eq!(recovered[0].signature, "", "a target without a secret is not signed");
    let text = recovered[0].json()["text"].as_str().unwrap().to_owned();
    assert!(text.contains("job `recovers` recovered"), "{text}");
    assert!(heard.iter().all(|heard| heard.event == "failed" || heard.event == "recovered"), "{heard:#?}");
    assert_each_accepted_once(&cluster, &receiver).await;

    // The run page and the API show the delivery; the leader counts it; no log holds the secret or the token.
    let failed_run = cluster.ledger().await.into_iter().find(|run| run.job == "fails").unwrap();
    let api: Value = reqwest::get(format!("{}/api/runs/{}", cluster.url(leader), failed_run.id))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let told = &api["notifications"][0];
    assert_eq!((told["event"].as_str(), told["status"].as_str()), (Some("failed"), Some("delivered")), "{api}");
    assert_eq!(told["target"].as_str(), receiver.url.strip_suffix("/hooks/T0K3N"), "the label, never the token");
    let page =
        reqwest::get(format!("{}/runs/{}", cluster.url(leader), failed_run.id)).await.unwrap().text().await.unwrap();
    assert!(page.contains("Notifications") && page.contains("delivered"), "{page}");
    let metrics = reqwest::get(format!("{}/metrics", cluster.url(leader))).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tenure_notifications_total{result=\"delivered\"}"), "{metrics}");
    let logs = cluster.logs();
    assert!(!logs.contains(SECRET) && !logs.contains("T0K3N"), "a secret reached a log");
    drop(cluster.replicas.drain(..));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_every_event_once_it_is_back() {
    let receiver = Receiver::start(true).await;
    let jobs = failing_job(&receiver);
    let cluster = Cluster::start_with(2, &jobs, with_secret()).await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    wait_for("refused deliveries", Duration::from_secs(20), || async { receiver.heard().len() >= 4 }).await;
    receiver.set_down(false);
    more_runs(&cluster, 2).await;
    pause_every_job(&cluster, &jobs).await;
    // Backoff is 1, 2, 4 ... s: the first events wait a few seconds for their next attempt.
    wait_all_delivered(&cluster, 4, Duration::from_secs(40)).await;
    assert_each_accepted_once(&cluster, &receiver).await;
    let outbox = outbox(&cluster).await;
    let retried: Vec<_> = outbox.values().filter(|event| event.attempts > 1).collect();
    assert!(!retried.is_empty(), "{outbox:#?}");
    for event in retried {
        assert_eq!(event.last_error.as_deref(), Some("HTTP 503"), "{event:?}");
    }
    // Every attempt of one event carried the same id and counted up.
    let heard = receiver.heard();
    for event in outbox.values() {
        let attempts: Vec<i32> = heard.iter().filter(|heard| heard.id == event.id).map(|heard| heard.attempt).collect();
        assert_eq!(attempts, (1..=event.attempts).collect::<Vec<_>>(), "{event:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_with_events_pending_delivers_each_once() {
    let receiver = Receiver::start(true).await;
    let jobs = failing_job(&receiver);
    let mut cluster = Cluster::start_with(3, &jobs, with_secret()).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    wait_for("five events pending", Duration::from_secs(30), || async {
        outbox(&cluster).await.values().filter(|event| event.status == "pending").count() >= 5
    })
    .await;
    cluster.kill(leader);
    receiver.set_down(false);
    let (_, new_term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    assert!(new_term > term);
    more_runs(&cluster, 2).await;
    pause_every_job(&cluster, &jobs).await;
    wait_all_delivered(&cluster, 5, Duration::from_secs(60)).await;
    assert_each_accepted_once(&cluster, &receiver).await;
}
