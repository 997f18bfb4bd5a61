//! The dead-man ping (`--heartbeat-url`) of a real cluster, heard by a real HTTP receiver on
//! loopback: only the leader pings, the new leader takes over after a SIGKILL, and the pings stop
//! when the last leader is gone (etcd down, then every replica stopped).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::any;
use nix::sys::signal::Signal;

use crate::cluster::{Cluster, Options, TICK};
use crate::harness::{wait_for, wait_until};

/// The ping interval the cluster runs with.
const INTERVAL: Duration = Duration::from_millis(500);
/// Between a ping sent and the receiver's clock: scheduling and loopback, on a busy machine.
const SLACK: Duration = Duration::from_millis(250);

/// One ping as the receiver heard it.
#[derive(Debug, Clone)]
pub struct Ping {
    at: Instant,
    method: String,
    path: String,
    node: String,
    term: i64,
    user_agent: String,
}

/// An HTTP server in the test process that records every request.
pub struct Receiver {
    pub url: String,
    pings: Arc<Mutex<Vec<Ping>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pings = Arc::new(Mutex::new(Vec::new()));
        let recorded = pings.clone();
        let app = axum::Router::new().fallback(any(
            move |method: axum::http::Method, uri: axum::http::Uri, headers: HeaderMap| {
                let recorded = recorded.clone();
                async move {
                    let header = |name: &str| {
                        headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned()
                    };
                    recorded.lock().unwrap().push(Ping {
                        at: Instant::now(),
                        method: method.to_string(),
                        path: uri.path().to_owned(),
                        node: header("x-tenure-node"),
                        term: header("x-tenure-term").parse().unwrap_or(-1),
                        user_agent: header("user-agent"),
                    });
                    "OK"
                }
            },
        ));
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        // The token stands in for Healthchecks.io's: nothing in the URL names a node.
        Receiver { url: format!("http://127.0.0.1:{port}/ping/0b6c0d4e-secret-token"), pings, _server: server }
    }

    pub fn pings(&self) -> Vec<Ping> {
        self.pings.lock().unwrap().clone()
    }

    fn from(&self, node: &str) -> Vec<Ping> {
        self.pings().into_iter().filter(|ping| ping.node == node).collect()
    }
}

/// Who pinged, in order, with consecutive pings of one node taken together.
fn speakers(pings: &[Ping]) -> Vec<(String, i64)> {
    let mut runs: Vec<(String, i64)> = Vec::new();
    for ping in pings {
        if runs.last() != Some(&(ping.node.clone(), ping.term)) {
            runs.push((ping.node.clone(), ping.term));
        }
    }
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_pings_and_the_pings_stop_with_the_last_leader() {
    let receiver = Receiver::start().await;
    let options = Options {
        env: vec![
            ("TENURE_HEARTBEAT_URL".into(), receiver.url.clone()),
            ("TENURE_HEARTBEAT_INTERVAL".into(), "500ms".into()),
        ],
        ..Options::default()
    };
    let mut cluster = Cluster::start_with(3, TICK, options).await;
    let (first, first_term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let first_node = cluster.replicas[first].node.clone();
    wait_for("four pings from the leader", Duration::from_secs(10), || async { receiver.from(&first_node).len() >= 4 })
        .await;

    // Only the leader pings, a GET to the URL as given, once an interval, naming itself and its term.
    let pings = receiver.pings();
    assert_eq!(speakers(&pings), [(first_node.clone(), first_term)], "{pings:#?}");
    for ping in &pings {
        assert_eq!(ping.method, "GET");
        assert_eq!(ping.path, "/ping/0b6c0d4e-secret-token");
        assert_eq!(ping.user_agent, concat!("tenure/", env!("CARGO_PKG_VERSION")));
    }
    assert_paced(&pings);
    // The log names the monitor's host, never the token.
    let logs = std::fs::read_to_string(&cluster.replicas[first].log).unwrap();
    assert!(logs.contains("dead-man ping while leading") && logs.contains("127.0.0.1"), "{logs}");
    assert!(!cluster.logs().contains("secret-token"), "the URL's token reached a log");

    // SIGKILL the leader: the new leader pings instead, from its first interval on.
    cluster.kill(first);
    let killed = Instant::now();
    let (second, second_term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    assert_ne!(second, first);
    let second_node = cluster.replicas[second].node.clone();
    wait_for("three pings from the new leader", Duration::from_secs(10), || async {
        receiver.from(&second_node).len() >= 3
    })
    .await;
    let pings = receiver.pings();
    // One hand-over, no two replicas taking turns: the old leader's pings, then the new one's.
    assert_eq!(speakers(&pings), [(first_node.clone(), first_term), (second_node.clone(), second_term)], "{pings:#?}");
    // A ping on its way when the leader died may be taken a moment later.
    assert!(receiver.from(&first_node).iter().all(|ping| ping.at <= killed + SLACK), "a dead leader pinged");
    assert_paced(&receiver.from(&second_node));

    // etcd down: the leader's lease runs out and nobody can lead. The pings stop with it.
    cluster.etcd.kill();
    // Every running replica must say it follows: a slow answer is not one.
    let lost = wait_until(Duration::from_secs(10), || async { cluster.all_follow().await }).await;
    assert!(lost, "a replica still leads without etcd\n{}", cluster.logs());
    let no_leader = Instant::now();
    // Absence is what is asserted: watch for four intervals.
    tokio::time::sleep(INTERVAL * 4).await;
    let late: Vec<Ping> = receiver.pings().into_iter().filter(|ping| ping.at > no_leader + SLACK).collect();
    assert!(late.is_empty(), "pinged with no leader: {late:#?}");
    let last = receiver.pings().last().unwrap().at;
    assert!(last <= no_leader + SLACK, "last ping {:?} after the leader was gone", last - no_leader);

    // etcd back: a leader, and pings again; then every replica stopped at once: no more pings
    // within one interval.
    cluster.etcd.restart().await;
    let (third, third_term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let third_node = cluster.replicas[third].node.clone();
    wait_for("pings from the leader after etcd came back", Duration::from_secs(10), || async {
        receiver.from(&third_node).iter().any(|ping| ping.term == third_term)
    })
    .await;
    let running: Vec<usize> =
        (0..cluster.replicas.len()).filter(|&index| cluster.replicas[index].pid().is_some()).collect();
    for &index in &running {
        cluster.signal(index, Signal::SIGTERM);
    }
    let stopped = Instant::now();
    for &index in &running {
        cluster.wait_exited(index).await;
    }
    let after: Vec<Ping> = receiver.pings().into_iter().filter(|ping| ping.at > stopped + INTERVAL + SLACK).collect();
    assert!(after.is_empty(), "pinged after every replica was stopped: {after:#?}");
    // Every ping came from a leader with the fence raised to the term it named.
    let terms: Vec<i64> = speakers(&receiver.pings()).into_iter().map(|(_, term)| term).collect();
    assert!(terms.windows(2).all(|pair| pair[0] < pair[1]), "terms out of order: {terms:?}");
}

/// Pings come once an interval: each gap within half to twice the interval (a loaded machine
/// may hold one back), and on average the interval itself.
fn assert_paced(pings: &[Ping]) {
    for pair in pings.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= INTERVAL / 2 && gap <= INTERVAL * 2, "gap {gap:?}: {pings:#?}");
    }
    if let [first, .., last] = pings {
        let mean = (last.at - first.at) / (pings.len() as u32 - 1);
        assert!(mean >= INTERVAL - SLACK / 2 && mean <= INTERVAL + SLACK / 2, "mean gap {mean:?}: {pings:#?}");
    }
}
