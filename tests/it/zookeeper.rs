//! The singleton guarantees with ZooKeeper as the coordinator: real `tenure run`
//! replicas on a real ZooKeeper, the leader SIGKILLed, SIGSTOPped past its session timeout, cut
//! from ZooKeeper by a blackhole, and a three-server ensemble losing its own leader. Each
//! scenario ends with the checker on witness and ledger (no slot twice, no stale term accepted,
//! nothing missing outside the fault window) and the healing check.

use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;

use crate::cluster::{Cluster, CoordinatorKind, Options, START_AHEAD, TICK, ZOOKEEPER_TTL};
use crate::faults::{counter, finish, handover_after, window};
use crate::harness::wait_for;
use crate::proxy::Fault;

fn on_zookeeper(servers: usize) -> Options {
    Options { coordinator: CoordinatorKind::ZooKeeper { servers }, ..Options::default() }
}

/// The executions of `node` in `term` for slots after `after`.
fn executed_after(cluster: &Cluster, node: &str, term: i64, after: chrono::DateTime<Utc>) -> Vec<String> {
    cluster
        .witness()
        .into_iter()
        .filter(|w| w.node == node && w.term == term && w.slot > after)
        .map(|w| format!("{} {}", w.job, w.slot))
        .collect()
}

#[tokio::test]
async fn zookeeper_sigkill_of_the_leader_hands_over_once_its_session_expires() {
    let mut cluster = Cluster::start_with(3, TICK, on_zookeeper(1)).await;
    let mut terms = Vec::new();
    for round in 0..2 {
        let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
        if round == 0 {
            // The terms page says what a term is with ZooKeeper, not with etcd.
            let page = reqwest::get(format!("{}/terms", cluster.url(leader))).await.unwrap().text().await.unwrap();
            let what = page.split("id=\"what-a-term-is\">").nth(1).unwrap().split("</p>").next().unwrap();
            assert!(what.contains("ZooKeeper transaction id (zxid)") && !what.contains("etcd"), "{what}");
        }
        terms.push(term);
        cluster.let_it_tick(2).await;
        cluster.event(format!("round {round}: SIGKILL {} (term {term})", cluster.replicas[leader].node));
        let fault_at = Instant::now();
        cluster.kill(leader);
        let handover = handover_after(&cluster, fault_at, term, ZOOKEEPER_TTL * 4 + Duration::from_secs(5)).await;
        eprintln!(
            "ZooKeeper SIGKILL round {round}: new leader after {:?}, first run after {:?} (session timeout {:?})",
            handover.to_leader, handover.to_first_run, ZOOKEEPER_TTL
        );
        assert!(handover.new_term > term, "terms must grow: {} after {term}", handover.new_term);
        cluster.restart(leader);
    }
    let report = finish(&mut cluster, &["tick"], &[]).await;
    cluster.verdict(&report).await;
}

#[tokio::test]
async fn zookeeper_a_leader_paused_past_its_session_timeout_executes_nothing_after_resuming() {
    let mut cluster = Cluster::start_with(3, TICK, on_zookeeper(1)).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.let_it_tick(2).await;
    let node = cluster.replicas[leader].node.clone();
    cluster.event(format!("SIGSTOP {node} (term {term})"));
    let paused_at = Utc::now();
    cluster.signal(leader, Signal::SIGSTOP);
    cluster.wait_for_execution_by_new_term(term, ZOOKEEPER_TTL * 4 + Duration::from_secs(5)).await;
    tokio::time::sleep(ZOOKEEPER_TTL).await;
    cluster.event(format!("SIGCONT {node}"));
    cluster.signal(leader, Signal::SIGCONT);
    // Give the resumed process time to do whatever it would do with its stale view.
    cluster.let_it_tick(3).await;
    let late = executed_after(&cluster, &node, term, paused_at);
    assert!(late.is_empty(), "the paused leader executed after its pause began: {late:?}");
    let report = finish(&mut cluster, &["tick"], &[]).await;
    cluster.verdict(&report).await;
}

#[tokio::test]
async fn zookeeper_a_leader_whose_link_is_blackholed_stops_before_its_session_expires() {
    let options = Options { proxies: true, ..on_zookeeper(1) };
    let mut cluster = Cluster::start_with(3, TICK, options).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.let_it_tick(2).await;
    let node = cluster.replicas[leader].node.clone();
    cluster.event(format!("blackhole between {node} and ZooKeeper"));
    let cut = Utc::now();
    let fault_at = Instant::now();
    cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Blackhole);
    let handover = handover_after(&cluster, fault_at, term, ZOOKEEPER_TTL * 4 + Duration::from_secs(5)).await;
    // From the cut to the new term's first run a slot may go unrun: recorded `killed` (its start
    // was recorded ahead and the deadline passed before the process began) or `missed`.
    let fault_window = window(cut, Utc::now());
    eprintln!(
        "ZooKeeper blackhole: new leader after {:?}, first run after {:?}",
        handover.to_leader, handover.to_first_run
    );
    // Its own deadline stops the cut-off leader before ZooKeeper expires its session: nothing
    // for a slot a session timeout after the cut.
    let late = executed_after(&cluster, &node, term, cut + chrono::Duration::from_std(ZOOKEEPER_TTL).unwrap());
    assert!(late.is_empty(), "the cut-off leader executed after its session could expire: {late:?}");
    cluster.let_it_tick(2).await;
    cluster.event("heal");
    cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Pass);
    let report = finish(&mut cluster, &["tick"], &[fault_window]).await;
    cluster.verdict(&report).await;
}

/// The stale leader believes it leads: it is cut from ZooKeeper and its self-fencing is off, so
/// only the fence (its term, the czxid of its znode, below the new leader's) stands between it and
/// a double run.
#[tokio::test]
async fn zookeeper_with_self_fencing_off_a_cut_leader_is_refused_by_the_database() {
    let options =
        Options { proxies: true, env: vec![("TENURE_TEST_NO_SELF_FENCE".into(), "1".into())], ..on_zookeeper(1) };
    let mut cluster = Cluster::start_with(3, TICK, options).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.let_it_tick(2).await;
    cluster.event(format!("blackhole {} <-> ZooKeeper", cluster.replicas[leader].node));
    let cut = Utc::now();
    let fault_at = Instant::now();
    cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Blackhole);
    let handover = handover_after(&cluster, fault_at, term, ZOOKEEPER_TTL * 4 + Duration::from_secs(5)).await;
    eprintln!(
        "ZooKeeper cut, self-fencing off: new leader after {:?}, first run after {:?}",
        handover.to_leader, handover.to_first_run
    );
    // Both believe they lead for a while; the old one keeps trying.
    cluster.let_it_tick(4).await;
    let rejected = counter(&cluster, leader, "tenure_claims_rejected_total{reason=\"fenced\"}").await;
    assert!(rejected > 0.0, "the stale leader never tried, so this proved nothing\n{}", cluster.logs());
    // Its local deadline (the last acknowledged heartbeat + the session timeout - the margin) may
    // fall up to about a second after the cut, so a slot within it may still run, and so may a
    // run whose start it recorded ahead before then (at most `START_AHEAD` before its slot);
    // nothing for a later slot. The fence refusing the stale term's later claims is the
    // checker's verdict below.
    let session_could_expire = cut + chrono::Duration::from_std(ZOOKEEPER_TTL + START_AHEAD).unwrap();
    let stale: Vec<_> =
        cluster.witness().into_iter().filter(|w| w.term == term && w.slot > session_could_expire).collect();
    assert!(stale.is_empty(), "the stale leader executed after its session could expire: {stale:?}");
    cluster.event("heal");
    cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Pass);
    let report = finish(&mut cluster, &["tick"], &[]).await;
    cluster.verdict(&report).await;
}

#[tokio::test]
async fn zookeeper_the_ensemble_leader_of_three_servers_is_killed_and_restarted() {
    let mut cluster = Cluster::start_with(3, TICK, on_zookeeper(3)).await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.let_it_tick(3).await;
    let zookeeper = cluster.zookeeper.as_mut().unwrap();
    let ensemble_leader = zookeeper.leader().await.expect("a ZooKeeper leader");
    cluster.event(format!("SIGKILL ZooKeeper server {ensemble_leader}, the ensemble's leader"));
    let from = Utc::now();
    let fault_at = Instant::now();
    cluster.zookeeper.as_mut().unwrap().kill(ensemble_leader);
    wait_for("a new ZooKeeper leader", Duration::from_secs(20), || async {
        cluster.zookeeper.as_ref().unwrap().leader().await.is_some_and(|leader| leader != ensemble_leader)
    })
    .await;
    eprintln!("ZooKeeper ensemble leader replaced after {:?}", fault_at.elapsed());
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    eprintln!(
        "tenure leader after the ensemble leader's death: {} (term {term:#x}) after {:?}",
        cluster.replicas[leader].node,
        fault_at.elapsed()
    );
    cluster.let_it_tick(3).await;
    cluster.event("restart the killed ZooKeeper server");
    cluster.zookeeper.as_mut().unwrap().restart(ensemble_leader);
    cluster.let_it_tick(3).await;
    let until = Utc::now();
    let report = finish(&mut cluster, &["tick"], &[window(from, until)]).await;
    cluster.verdict(&report).await;
}
