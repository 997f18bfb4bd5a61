//! The fault suite: the core guarantees under partitions, pauses, kills, restarts and reloads,
//! on real processes with a fault proxy per replica in front of etcd and PostgreSQL. Every
//! scenario ends with the checker (a-c), the hand-over times (d) and the healing check (e); a
//! failing one leaves a report directory and prints its path.

use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, Utc};
use nix::sys::signal::Signal;
use tenure::model::RunStatus;

use crate::checker::{Expect, Report, check_excusing};
use crate::cluster::{Cluster, CoordinatorKind, Options, START_AHEAD, TICK, TTL};
use crate::harness::{process_gone, wait_for, wait_until};
use crate::proxy::Fault;

/// `TENURE_SOAK=N` runs every repeated fault N times as often, for a longer run by hand
/// (`TENURE_SOAK=20 cargo test --test it faults::`); CI runs N = 1.
fn soak() -> u32 {
    std::env::var("TENURE_SOAK").ok().and_then(|n| n.parse().ok()).filter(|&n| n >= 1).unwrap_or(1)
}

fn with_proxies(env: &[(&str, &str)]) -> Options {
    Options {
        proxies: true,
        env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        etcd_members: 1,
        coordinator: CoordinatorKind::Etcd,
        replica_args: Vec::new(),
        lease_ttl: None,
    }
}

/// The sum of a Prometheus counter's series on one replica (0 when absent or unreachable).
pub async fn counter(cluster: &Cluster, index: usize, name_and_labels: &str) -> f64 {
    let url = format!("{}/metrics", cluster.url(index));
    let Ok(response) = reqwest::get(url).await else { return 0.0 };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with(name_and_labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (d) From a fault to the first leader of a newer term, and to its first execution.
pub struct Handover {
    pub new_leader: usize,
    pub new_term: i64,
    pub to_leader: Duration,
    pub to_first_run: Duration,
}

pub async fn handover_after(cluster: &Cluster, fault_at: Instant, old_term: i64, timeout: Duration) -> Handover {
    let found = std::cell::Cell::new(None);
    let led = wait_until(timeout, || async {
        found.set(cluster.leaders().await.into_iter().find(|(_, term)| *term > old_term));
        found.get().is_some()
    })
    .await;
    assert!(led, "no new leader within {timeout:?} of the fault\n{}", cluster.logs());
    let (new_leader, new_term) = found.get().unwrap();
    let to_leader = fault_at.elapsed();
    cluster.wait_for_execution_by_new_term(old_term, timeout).await;
    Handover { new_leader, new_term, to_leader, to_first_run: fault_at.elapsed() }
}

/// Heal, then check everything the witness and ledger say, excusing missing slots (never a
/// double run or a stale term) inside `windows`.
pub async fn finish(cluster: &mut Cluster, jobs: &[&str], windows: &[(DateTime<Utc>, DateTime<Utc>)]) -> Report {
    cluster.assert_healed(Duration::from_secs(20)).await;
    cluster.let_it_tick(3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.wait_for_reaped(Duration::from_secs(20)).await;
    let witness = cluster.witness();
    let ledger = cluster.ledger().await;
    let from = witness.iter().map(|w| w.slot).min().unwrap();
    let until = witness.iter().map(|w| w.slot).max().unwrap() - chrono::Duration::seconds(2);
    let expect = Expect { jobs, from, until, missed_allowed: true };
    check_excusing(&witness, &ledger, &expect, windows)
}

pub fn window(from: DateTime<Utc>, until: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (from - chrono::Duration::seconds(1), until + chrono::Duration::seconds(1))
}

#[tokio::test]
async fn sigkill_of_the_leader_ten_times_at_random_phases() {
    let mut cluster = Cluster::start(3, TICK).await;
    let mut times = Vec::new();
    for round in 0..10 * soak() {
        let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
        cluster.let_it_tick(1).await;
        // A phase within the second that differs every round: before, at and after slots.
        let now = Utc::now();
        let phase = (u64::from(round) * 347 + u64::from(now.timestamp_subsec_millis())) % 1000;
        let wait = (1000 - u64::from(now.timestamp_subsec_millis()) + phase) % 1000;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        cluster.event(format!(
            "round {round}: SIGKILL {} (term {term}) {phase} ms into the second",
            cluster.replicas[leader].node
        ));
        let fault_at = Instant::now();
        cluster.kill(leader);
        let handover = handover_after(&cluster, fault_at, term, TTL * 5 + Duration::from_secs(5)).await;
        times.push((handover.to_leader, handover.to_first_run));
        cluster.restart(leader);
    }
    for (round, (leader, run)) in times.iter().enumerate() {
        eprintln!("SIGKILL round {round}: new leader after {leader:?}, first run after {run:?} (TTL {TTL:?})");
    }
    let report = finish(&mut cluster, &["tick"], &[]).await;
    cluster.verdict(&report).await;
}

/// The stale leader believes it leads: it is cut from etcd and its self-fencing is off. Only
/// the database fence stands between it and a double run.
#[tokio::test]
async fn with_self_fencing_off_a_leader_cut_from_etcd_is_refused_by_the_database() {
    let mut cluster = Cluster::start_with(3, TICK, with_proxies(&[("TENURE_TEST_NO_SELF_FENCE", "1")])).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;
    cluster.event(format!("blackhole {} <-> etcd", cluster.replicas[leader].node));
    let cut = Utc::now();
    let fault_at = Instant::now();
    cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Blackhole);
    let handover = handover_after(&cluster, fault_at, term, Duration::from_secs(15)).await;
    eprintln!(
        "etcd cut, self-fencing off: new leader after {:?}, first run after {:?}",
        handover.to_leader, handover.to_first_run
    );
    // Both believe they lead for a while; the old one keeps trying.
    cluster.let_it_tick(4).await;
    let rejected = counter(&cluster, leader, "tenure_claims_rejected_total{reason=\"fenced\"}").await;
    eprintln!("fenced claim rejections on the stale leader: {rejected}");
    assert!(rejected > 0.0, "the stale leader never tried, so this proved nothing\n{}", cluster.logs());
    // Its local deadline falls at most a TTL after the cut; a run whose start it recorded ahead
    // (at most `START_AHEAD` before its slot) before then was never the next leader's to claim,
    // and still runs. Nothing later: the fence refusing the stale term's later claims is the
    // checker's verdict below.
    let stale: Vec<_> = cluster
        .witness()
        .into_iter()
        .filter(|w| w.term == term && w.slot > cut + chrono::Duration::from_std(TTL + START_AHEAD).unwrap())
        .collect();
    assert!(stale.is_empty(), "the stale leader executed: {stale:?}");
    cluster.event("heal");
    cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Pass);
    let report = finish(&mut cluster, &["tick"], &[]).await;
    cluster.verdict(&report).await;
}

/// The checker is only worth something if it fails: with the refusals ignored (a test-only
/// switch) the stale leader runs slots the new one runs too, and the checker must say so.
#[tokio::test]
async fn the_checker_catches_the_double_runs_when_the_fence_is_switched_off() {
    let env = [("TENURE_TEST_NO_SELF_FENCE", "1"), ("TENURE_TEST_IGNORE_REFUSALS", "1")];
    let cluster = Cluster::start_with(3, TICK, with_proxies(&env)).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;
    cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Blackhole);
    handover_after(&cluster, Instant::now(), term, Duration::from_secs(15)).await;
    cluster.let_it_tick(4).await;
    let witness = cluster.witness();
    let ledger = cluster.ledger().await;
    let from = witness.first().unwrap().slot;
    let until = witness.last().unwrap().slot;
    let report = check_excusing(&witness, &ledger, &Expect { jobs: &["tick"], from, until, missed_allowed: true }, &[]);
    eprintln!("with the fence off the checker reports {} doubled slots", report.executed_twice.len());
    assert!(!report.executed_twice.is_empty(), "the checker missed the double runs: {report:#?}");
    assert!(!report.is_clean());
}

#[tokio::test]
async fn a_leader_paused_past_its_lease_with_self_fencing_off_is_refused_by_the_database() {
    let mut cluster = Cluster::start_with(3, TICK, with_proxies(&[("TENURE_TEST_NO_SELF_FENCE", "1")])).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;
    let paused = Utc::now();
    cluster.event("SIGSTOP the leader");
    let fault_at = Instant::now();
    cluster.signal(leader, Signal::SIGSTOP);
    let handover = handover_after(&cluster, fault_at, term, Duration::from_secs(15)).await;
    tokio::time::sleep((TTL * 2).saturating_sub(fault_at.elapsed())).await;
    cluster.event("SIGCONT the leader");
    cluster.signal(leader, Signal::SIGCONT);
    cluster.let_it_tick(3).await;
    let rejected = counter(&cluster, leader, "tenure_claims_rejected_total{reason=\"fenced\"}").await;
    eprintln!(
        "SIGSTOP 2xTTL, self-fencing off: new leader after {:?}, first run {:?}, fenced rejections on resume {rejected}",
        handover.to_leader, handover.to_first_run
    );
    // A run whose start it recorded ahead before the pause (at most `START_AHEAD` before its
    // slot) runs on resuming; no slot after that.
    let stale: Vec<_> = cluster
        .witness()
        .into_iter()
        .filter(|w| w.term == term && w.slot > paused + chrono::Duration::from_std(START_AHEAD).unwrap())
        .collect();
    assert!(stale.is_empty(), "the paused leader executed after resuming: {stale:?}");
    let report = finish(&mut cluster, &["tick"], &[]).await;
    cluster.verdict(&report).await;
}

#[tokio::test]
async fn a_leader_cut_from_etcd_by_blackhole_reset_or_delay_steps_down() {
    let mut cluster = Cluster::start_with(3, TICK, with_proxies(&[])).await;
    let faults = [Fault::Blackhole, Fault::Reset, Fault::Delay { ms: 3 * TTL.as_millis() as u64, jitter: 200 }];
    let mut windows = Vec::new();
    for fault in faults.into_iter().cycle().take(3 * soak() as usize) {
        let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
        cluster.let_it_tick(2).await;
        let node = cluster.replicas[leader].node.clone();
        cluster.event(format!("{fault:?} between {node} and etcd"));
        let cut = Utc::now();
        let fault_at = Instant::now();
        cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(fault);
        let handover = handover_after(&cluster, fault_at, term, Duration::from_secs(20)).await;
        // Until the new term's first run a slot may go unrun, recorded `killed` (started ahead,
        // the lease ran out before its process began) or `missed`.
        windows.push(window(cut, Utc::now()));
        eprintln!(
            "etcd {fault:?}: new leader after {:?}, first run after {:?}",
            handover.to_leader, handover.to_first_run
        );
        // Its own lease deadline stops the old leader within a TTL; nothing after that.
        let late: Vec<_> = cluster
            .witness()
            .into_iter()
            .filter(|w| w.node == node && w.term == term && w.slot > cut + chrono::Duration::from_std(TTL).unwrap())
            .collect();
        assert!(late.is_empty(), "{fault:?}: the cut-off leader executed after its lease: {late:?}");
        cluster.let_it_tick(2).await;
        cluster.event("heal");
        cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Pass);
    }
    let report = finish(&mut cluster, &["tick"], &windows).await;
    cluster.verdict(&report).await;
}

/// A leader that cannot reach PostgreSQL hands over to one that can, and does not
/// campaign again until it can; with every replica cut, nobody leads (no flapping) and what fell
/// due is recorded once PostgreSQL is back.
#[tokio::test]
async fn a_leader_cut_from_postgres_then_from_both_then_everyone_cut_then_healed() {
    // `allow`: a `forbid` job waits (recorded `skipped`) while a run of the cut-off leader has no
    // recorded outcome, since nobody can know whether it still goes.
    let jobs = TICK.replace("timeout: 10s", "timeout: 10s\n    concurrency: allow");
    let mut cluster = Cluster::start_with(3, &jobs, with_proxies(&[])).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;

    // PostgreSQL only: etcd is fine, but a leader that cannot record anything must hand over.
    cluster.event("blackhole the leader <-> PostgreSQL");
    let from = Utc::now();
    let fault_at = Instant::now();
    cluster.replicas[leader].pg_proxy.as_ref().unwrap().set(Fault::Blackhole);
    let handover = handover_after(&cluster, fault_at, term, Duration::from_secs(20)).await;
    eprintln!(
        "cut from PostgreSQL: new term in the fence after {:?} (TTL {TTL:?}), first run after {:?}",
        handover.to_leader, handover.to_first_run
    );
    assert_ne!(handover.new_leader, leader, "the cut-off replica cannot lead");
    cluster.let_it_tick(3).await;
    // Still cut: it does not campaign again, so the new leader keeps its term.
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(cluster.leaders().await, [(handover.new_leader, handover.new_term)], "nobody flaps");
    cluster.event("heal PostgreSQL");
    cluster.replicas[leader].pg_proxy.as_ref().unwrap().set(Fault::Pass);
    let pg_window = window(from, Utc::now());
    cluster.let_it_tick(3).await;

    // Both: another replica takes over; the old one can neither claim nor keep its lease.
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.event("blackhole the leader <-> etcd and PostgreSQL");
    let from = Utc::now();
    let fault_at = Instant::now();
    cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Blackhole);
    cluster.replicas[leader].pg_proxy.as_ref().unwrap().set(Fault::Blackhole);
    let handover = handover_after(&cluster, fault_at, term, Duration::from_secs(20)).await;
    eprintln!("cut from both: new leader after {:?}, first run after {:?}", handover.to_leader, handover.to_first_run);
    cluster.let_it_tick(2).await;
    cluster.event("heal both");
    cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Pass);
    cluster.replicas[leader].pg_proxy.as_ref().unwrap().set(Fault::Pass);
    let both_window = window(from, Utc::now());
    cluster.let_it_tick(2).await;

    // Everyone cut from PostgreSQL: the leader steps down and nobody campaigns: no new terms.
    let (_, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.event("blackhole every replica <-> PostgreSQL");
    let from = Utc::now();
    for replica in &cluster.replicas {
        replica.pg_proxy.as_ref().unwrap().set(Fault::Blackhole);
    }
    wait_for("the leader to step down", Duration::from_secs(20), || async { cluster.leaders().await.is_empty() }).await;
    // A follower whose own last answer is younger than the bound may win the campaign the moment
    // the leader resigns; it cannot raise the fence, and steps down when its probe fails too.
    // After one bound (2 s) and a probe, nobody campaigns.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let fence = cluster.store.fence().await.unwrap().term;
    assert_eq!(fence, term, "a term was recorded while nobody could reach PostgreSQL");
    let steady = Instant::now();
    while steady.elapsed() < TTL * 5 {
        assert_eq!(cluster.leaders().await, [], "a replica that cannot reach PostgreSQL took the lead");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.event("heal every replica <-> PostgreSQL");
    for replica in &cluster.replicas {
        replica.pg_proxy.as_ref().unwrap().set(Fault::Pass);
    }
    let (_, healed_term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    assert!(healed_term > term);
    let all_window = window(from, Utc::now());
    cluster.let_it_tick(2).await;
    // What fell due while nobody could record it is in the ledger now (`catch_up: latest`:
    // missed, but the newest).
    let ledger = cluster.ledger().await;
    let during = |r: &&tenure::store::RunRecord| r.job == "tick" && r.slot > from + chrono::Duration::seconds(3);
    let recorded_missed = ledger.iter().filter(during).filter(|r| r.status == RunStatus::Missed).count();
    assert!(recorded_missed > 0, "the outage's slots were not recorded missed");
    let report = finish(&mut cluster, &["tick"], &[pg_window, both_window, all_window]).await;
    cluster.verdict(&report).await;
}

#[tokio::test]
async fn a_candidate_paused_past_its_lease_then_the_leader_killed() {
    let mut cluster = Cluster::start(3, TICK).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    let candidate = (leader + 1) % 3;
    cluster.event("SIGSTOP a waiting candidate");
    cluster.signal(candidate, Signal::SIGSTOP);
    tokio::time::sleep(TTL * 3).await;
    cluster.event("SIGCONT it");
    cluster.signal(candidate, Signal::SIGCONT);
    tokio::time::sleep(TTL).await;
    cluster.event("SIGKILL the leader");
    let fault_at = Instant::now();
    cluster.kill(leader);
    let handover = handover_after(&cluster, fault_at, term, Duration::from_secs(15)).await;
    eprintln!(
        "after a paused candidate: {} leads, new leader after {:?}",
        cluster.replicas[handover.new_leader].node, handover.to_leader
    );
    assert!(handover.new_term > term);
    cluster.restart(leader);
    let report = finish(&mut cluster, &["tick"], &[]).await;
    cluster.verdict(&report).await;
}

#[tokio::test]
async fn rolling_restart_one_by_one_then_all_at_once() {
    let mut cluster = Cluster::start(3, TICK).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;
    let rolling_from = Utc::now();
    for index in 0..3 {
        cluster.event(format!("rolling: SIGTERM and restart {}", cluster.replicas[index].node));
        cluster.terminate(index).await;
        cluster.restart(index);
        cluster.wait_for_leader(Duration::from_secs(15)).await;
        cluster.let_it_tick(2).await;
    }
    let rolling_until = Utc::now();
    // One by one, every hand-over is a resignation: not a single slot may be missed.
    let witness = cluster.witness();
    let ledger = cluster.ledger().await;
    let rolling = Expect { jobs: &["tick"], from: rolling_from, until: rolling_until, missed_allowed: false };
    cluster.verdict(&check_excusing(&witness, &ledger, &rolling, &[])).await;

    cluster.event("all at once: SIGTERM every replica, then start them");
    let from = Utc::now();
    for index in 0..3 {
        cluster.signal(index, Signal::SIGTERM);
    }
    for index in 0..3 {
        cluster.terminate(index).await;
    }
    for index in 0..3 {
        cluster.restart(index);
    }
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    let all_window = window(from, Utc::now());
    let report = finish(&mut cluster, &["tick"], &[all_window]).await;
    cluster.verdict(&report).await;
}

#[tokio::test]
async fn the_job_file_changes_on_every_replica_while_the_leader_is_killed() {
    let before = r#"
jobs:
  - name: stays
    schedule: "* * * * * *"
    shell: WITNESS
  - name: removed
    schedule: "* * * * * *"
    shell: WITNESS
  - name: rescheduled
    schedule: "* * * * * *"
    shell: WITNESS
"#;
    let after = r#"
jobs:
  - name: stays
    schedule: "* * * * * *"
    shell: WITNESS
  - name: added
    schedule: "* * * * * *"
    shell: WITNESS
  - name: rescheduled
    schedule: "*/2 * * * * *"
    shell: WITNESS
"#;
    let mut cluster = Cluster::start(3, before).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(6).await;
    cluster.event("new job file and SIGKILL the leader");
    cluster.write_jobs(after);
    let changed = Utc::now();
    let fault_at = Instant::now();
    cluster.kill(leader);
    handover_after(&cluster, fault_at, term, Duration::from_secs(15)).await;
    let settled = changed + chrono::Duration::seconds(4);
    wait_for("the new file in force", Duration::from_secs(20), || async {
        cluster.witness().iter().any(|w| w.job == "added" && w.slot > settled)
    })
    .await;
    cluster.let_it_tick(6).await;
    let witness = cluster.witness();
    assert!(!witness.iter().any(|w| w.job == "removed" && w.slot > settled), "a removed job fired");
    let odd: Vec<_> =
        witness.iter().filter(|w| w.job == "rescheduled" && w.slot > settled && w.slot.timestamp() % 2 != 0).collect();
    assert!(odd.is_empty(), "the rescheduled job fired on its old schedule: {odd:?}");

    // An invalid file changes nothing.
    cluster.event("invalid job file");
    std::fs::write(&cluster.jobs_path, "jobs:\n  - name: [broken\n").unwrap();
    wait_for("every running replica to refuse the invalid file", Duration::from_secs(10), || async {
        (0..cluster.replicas.len()).filter(|&index| cluster.is_up(index)).all(|index| {
            std::fs::read_to_string(&cluster.replicas[index].log)
                .unwrap_or_default()
                .contains("keeping the last good one")
        })
    })
    .await;
    let invalid_at = Utc::now();
    cluster.let_it_tick(4).await;
    assert!(
        cluster.witness().iter().any(|w| w.job == "added" && w.slot > invalid_at),
        "the last good file keeps running"
    );
    cluster.write_jobs(after);
    restart_killed(&mut cluster, leader);
    let report = finish(&mut cluster, &["stays"], &[window(changed, settled)]).await;
    cluster.verdict(&report).await;
}

fn restart_killed(cluster: &mut Cluster, index: usize) {
    if !cluster.is_up(index) {
        cluster.restart(index);
    }
}

/// A run that outlives its leader's lease: the cut-off leader stops and records it, and `forbid`
/// keeps the new leader from starting an overlapping run until then.
#[tokio::test]
async fn a_long_run_whose_leader_is_cut_from_etcd_is_stopped_before_another_starts() {
    let jobs = r#"
jobs:
  - name: long
    schedule: "* * * * * *"
    concurrency: forbid
    shell: 'WITNESS; sleep 3'
"#;
    let mut cluster = Cluster::start_with(3, jobs, with_proxies(&[])).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    // Started, not only claimed: a claim ahead whose start the cut would stop (a start needs the
    // coordinator's witness) is the next term's, not a long run going.
    wait_for("a long run going", Duration::from_secs(10), || async {
        cluster
            .ledger()
            .await
            .iter()
            .any(|r| r.job == "long" && r.status == RunStatus::Running && r.term == term && r.started_at.is_some())
    })
    .await;
    cluster.event("blackhole the leader <-> etcd during a long run");
    let fault_at = Instant::now();
    cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Blackhole);
    handover_after(&cluster, fault_at, term, Duration::from_secs(20)).await;
    cluster.let_it_tick(2).await;
    cluster.replicas[leader].etcd_proxy.as_ref().unwrap().set(Fault::Pass);

    let ledger = cluster.ledger().await;
    let old: Vec<_> =
        ledger.iter().filter(|r| r.job == "long" && r.term == term && r.status != RunStatus::Skipped).collect();
    let last_old = old.iter().max_by_key(|r| r.slot).unwrap();
    assert_eq!(last_old.status, RunStatus::Killed, "the cut-off leader stopped and recorded its run: {last_old:?}");
    assert!(last_old.error.as_deref().unwrap_or("").contains("leadership"), "{last_old:?}");
    let first_new = ledger
        .iter()
        .filter(|r| r.job == "long" && r.term > term && r.status != RunStatus::Skipped)
        .min_by_key(|r| r.started_at)
        .expect("the new leader ran the job");
    assert!(
        first_new.started_at.unwrap() >= last_old.finished_at.unwrap(),
        "runs overlapped: old {last_old:?} new {first_new:?}"
    );
    let report = finish(&mut cluster, &[], &[]).await;
    cluster.verdict(&report).await;
}

#[tokio::test]
async fn the_etcd_leader_of_a_three_member_cluster_is_killed_and_restarted() {
    let options = Options { etcd_members: 3, ..Options::default() };
    let mut cluster = Cluster::start_with(3, TICK, options).await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.let_it_tick(3).await;
    let members = cluster.etcd_cluster.as_mut().unwrap();
    let etcd_leader = members.leader().await.expect("an etcd leader");
    cluster.event(format!("SIGKILL etcd member {etcd_leader}, the raft leader"));
    let from = Utc::now();
    cluster.etcd_cluster.as_mut().unwrap().kill(etcd_leader);
    let fault_at = Instant::now();
    wait_for("a new etcd leader", Duration::from_secs(10), || async {
        cluster.etcd_cluster.as_ref().unwrap().leader().await.is_some_and(|leader| leader != etcd_leader)
    })
    .await;
    eprintln!("etcd raft leader replaced after {:?}", fault_at.elapsed());
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    eprintln!("tenure leader after the etcd leader's death: {} (term {term})", cluster.replicas[leader].node);
    cluster.let_it_tick(3).await;
    cluster.event("restart the killed etcd member");
    cluster.etcd_cluster.as_mut().unwrap().restart(etcd_leader);
    cluster.let_it_tick(3).await;
    let report = finish(&mut cluster, &["tick"], &[window(from, from + chrono::Duration::seconds(5))]).await;
    cluster.verdict(&report).await;
}

/// libfaketime steps one replica's wall clock (not its monotonic clock) while it runs.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test]
async fn the_leaders_wall_clock_steps_an_hour_forward_then_an_hour_back() {
    let clocks = tempfile::tempdir().unwrap();
    for node in ["node-0", "node-1", "node-2"] {
        std::fs::write(clocks.path().join(node), "+0\n").unwrap();
    }
    let clock_file = clocks.path().join("{node}").display().to_string();
    let env = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME_TIMESTAMP_FILE", clock_file.as_str()),
        ("FAKETIME_NO_CACHE", "1"),
        ("DONT_FAKE_MONOTONIC", "1"),
    ];
    let options =
        Options { env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(), ..Options::default() };
    let mut cluster = Cluster::start_with(3, TICK, options).await;
    let mut windows = Vec::new();
    for step in ["+3600", "-3600"] {
        let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
        cluster.let_it_tick(2).await;
        let node = cluster.replicas[leader].node.clone();
        cluster.event(format!("step {node}'s wall clock by {step} s"));
        let from = Utc::now();
        let fault_at = Instant::now();
        std::fs::write(clocks.path().join(&node), format!("{step}\n")).unwrap();
        let handover = handover_after(&cluster, fault_at, term, Duration::from_secs(20)).await;
        eprintln!(
            "clock step {step} s: new leader after {:?}, first run after {:?}",
            handover.to_leader, handover.to_first_run
        );
        assert_ne!(handover.new_leader, leader, "the replica with the stepped clock led again");
        cluster.let_it_tick(3).await;
        assert!(!cluster.leaders().await.iter().any(|(index, _)| *index == leader), "a skewed replica leads");
        // Nothing was claimed or recorded for slots that are not due yet.
        let future: Vec<_> =
            cluster.ledger().await.into_iter().filter(|r| r.slot > Utc::now() + chrono::Duration::seconds(5)).collect();
        assert!(future.is_empty(), "slots from the future in the ledger: {future:?}");
        cluster.event(format!("{node}'s clock back to normal"));
        std::fs::write(clocks.path().join(&node), "+0\n").unwrap();
        windows.push(window(from, Utc::now()));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let report = finish(&mut cluster, &["tick"], &windows).await;
    cluster.verdict(&report).await;
}

/// The leader is stopped while a claim of its is uncommitted, holding the fence row `FOR SHARE`
/// (a test-only failpoint widens that moment to 2 s). The new leader's fence raise waits for that
/// lock only until PostgreSQL's idle-in-transaction timeout (5 s) ends the stalled session; the
/// stale claim never commits and nothing runs twice.
#[tokio::test]
async fn the_leader_paused_in_the_middle_of_a_claim_blocks_the_next_only_until_the_timeouts() {
    let options = Options { env: vec![("TENURE_TEST_CLAIM_HOLD_MS".into(), "2000".into())], ..Options::default() };
    // Every claim commits 2 s late here, so runs of consecutive slots overlap: `allow`, or
    // `forbid` would (rightly) record them skipped.
    let jobs = TICK.replace("timeout: 10s", "timeout: 10s\n    concurrency: allow");
    let mut cluster = Cluster::start_with(3, &jobs, options).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.let_it_tick(2).await;
    // Just after a slot boundary the leader's claim for it is in its 2 s hold.
    let into_second = u64::from(Utc::now().timestamp_subsec_millis());
    tokio::time::sleep(Duration::from_millis(1000 - into_second + 300)).await;
    cluster.event("SIGSTOP the leader inside an uncommitted claim");
    let paused = Utc::now();
    let fault_at = Instant::now();
    cluster.signal(leader, Signal::SIGSTOP);
    let handover = handover_after(&cluster, fault_at, term, Duration::from_secs(30)).await;
    eprintln!(
        "paused mid-claim: new leader after {:?}, first run after {:?} (TTL {TTL:?}, idle-in-transaction timeout 5 s)",
        handover.to_leader, handover.to_first_run
    );
    // A liveness bound, not a performance target: the lock must not outlive the timeouts.
    let bound = TTL + Duration::from_secs(2 + 5 + 5 + 5);
    assert!(handover.to_first_run < bound, "the next leader was blocked {:?}", handover.to_first_run);
    tokio::time::sleep(TTL).await;
    cluster.event("SIGCONT the old leader");
    cluster.signal(leader, Signal::SIGCONT);
    cluster.let_it_tick(3).await;
    let stale: Vec<_> = cluster.witness().into_iter().filter(|w| w.term == term && w.slot > paused).collect();
    assert!(stale.is_empty(), "the paused leader executed: {stale:?}");
    let report = finish(&mut cluster, &["tick"], &[window(paused, paused + chrono::Duration::seconds(10))]).await;
    cluster.verdict(&report).await;
}

/// Runs are claimed ahead of their slots (here 700 ms ahead, by a test switch, so the window is
/// wide enough to hit) and start at the slot. A fault between the claim and the slot: SIGTERM
/// hands over at once and the claimed slot still runs, on time, by the old term; SIGKILL leaves
/// the slot recorded `lost`, never run and never run again; a leader paused past its lease over
/// its slot runs nothing when it resumes.
#[tokio::test]
async fn a_fault_between_a_claim_ahead_and_its_slot_never_runs_it_twice_or_early() {
    // `catch_up: all`, so a slot the dead leader claimed and never started must be run late by
    // the next leader, not recorded `lost` or `missed`.
    let jobs = TICK.replace("timeout: 10s", "timeout: 10s\n    catch_up: all");
    // The start is recorded 20 ms before the slot (a learned lead could grow past the fault's
    // moment on a loaded machine, and the claim would no longer be unstarted when it comes).
    let options = Options {
        env: vec![
            ("TENURE_TEST_CLAIM_LEAD_MS".into(), "700".into()),
            ("TENURE_TEST_START_LEAD_MS".into(), "20".into()),
        ],
        ..Options::default()
    };
    let mut cluster = Cluster::start_with(3, &jobs, options).await;
    for fault in [Signal::SIGTERM, Signal::SIGKILL, Signal::SIGSTOP] {
        let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
        cluster.let_it_tick(2).await;
        // 450 ms into a second: the next slot was claimed ~150 ms ago and starts in ~550 ms. The
        // claim is read before the fault; if reading it took the moment past the middle of the
        // window (a loaded machine), try the next second.
        let mut tries = 0;
        let slot = loop {
            let into = u64::from(Utc::now().timestamp_subsec_millis());
            tokio::time::sleep(Duration::from_millis((1450 - into) % 1000)).await;
            let slot = Utc::now().duration_trunc(chrono::Duration::seconds(1)).unwrap() + chrono::Duration::seconds(1);
            let claimed = cluster.ledger().await.into_iter().find(|r| r.job == "tick" && r.slot == slot);
            let claimed = claimed.unwrap_or_else(|| panic!("{slot} was not claimed ahead\n{}", cluster.logs()));
            assert_eq!((claimed.term, claimed.started_at), (term, None), "claimed ahead by the leader, not started");
            tries += 1;
            if Utc::now() < slot - chrono::Duration::milliseconds(300) || tries == 10 {
                break slot;
            }
        };
        let from = Utc::now();
        cluster.event(format!(
            "{fault:?} {} (term {term}) between its claim of {slot} and the slot",
            cluster.replicas[leader].node
        ));
        match fault {
            Signal::SIGKILL => cluster.kill(leader),
            _ => cluster.signal(leader, fault),
        }
        let run_of_slot =
            |cluster: &Cluster| cluster.witness().into_iter().filter(|w| w.slot == slot).collect::<Vec<_>>();
        match fault {
            Signal::SIGTERM => cluster.terminate(leader).await,
            Signal::SIGKILL => {}
            _ => {
                tokio::time::sleep(TTL * 3).await;
                // A SIGTERM that arrives while the leader is stopped past its lease
                // is not an orderly resignation: resumed, it must start nothing.
                cluster.signal(leader, Signal::SIGTERM);
                cluster.signal(leader, Signal::SIGCONT);
                let replica = &mut cluster.replicas[leader];
                wait_for("the resumed leader to exit", Duration::from_secs(20), || {
                    let exited = !replica.is_running();
                    async move { exited }
                })
                .await;
            }
        }
        cluster.wait_for_leader(Duration::from_secs(15)).await;
        wait_for("the claimed slot to be run by a leader", Duration::from_secs(20), || async {
            !run_of_slot(&cluster).is_empty()
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ran = run_of_slot(&cluster);
        assert_eq!(ran.len(), 1, "{fault:?}: the claimed slot runs exactly once: {ran:?}\n{}", cluster.logs());
        if fault != Signal::SIGTERM {
            assert!(ran[0].term > term, "{fault:?}: the slot was run by the faulted term {term}: {ran:?}");
        }
        let row = cluster.ledger().await.into_iter().find(|r| r.job == "tick" && r.slot == slot).unwrap();
        assert_eq!((row.term, row.status.as_str()), (ran[0].term, "succeeded"), "{fault:?}: {row:?}");
        cluster.restart(leader);
        cluster.wait_for_leader(Duration::from_secs(15)).await;
        cluster.let_it_tick(2).await;
        // Nothing of the hand-over is missed: late slots run (`catch_up: all`).
        let handed_over =
            Expect { jobs: &["tick"], from, until: Utc::now() - chrono::Duration::seconds(1), missed_allowed: false };
        let report = check_excusing(&cluster.witness(), &cluster.ledger().await, &handed_over, &[]);
        cluster.verdict(&report).await;
    }
    let report = finish(&mut cluster, &["tick"], &[]).await;
    cluster.verdict(&report).await;
}

/// A claimed run records its start a short lead before its slot (`starts_ahead`) and executes
/// at the slot. A crash or a pause between the start and the slot: the run is this term's, so no
/// later term takes it over; SIGKILL leaves it reaped `lost`; a leader paused past its lease
/// records it `killed` when it resumes (or finds it reaped `lost` meanwhile). Never run, never
/// run twice, never early. (An orderly stop runs it: the next test.)
#[tokio::test]
async fn a_kill_or_pause_between_a_start_ahead_and_its_slot_never_runs_it() {
    let mut cluster = Cluster::start_with(3, TICK, starts_ahead()).await;
    let mut windows = Vec::new();
    for (fault, outcomes) in [(Signal::SIGKILL, &["lost"][..]), (Signal::SIGSTOP, &["killed", "lost"][..])] {
        let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
        cluster.let_it_tick(2).await;
        let slot = a_start_seen_ahead(&cluster).await;
        cluster.event(format!(
            "{fault:?} {} (term {term}) between the start of {slot} and the slot",
            cluster.replicas[leader].node
        ));
        let fault_at = Utc::now();
        match fault {
            Signal::SIGKILL => cluster.kill(leader),
            _ => cluster.signal(leader, fault),
        }
        assert!(Utc::now() < slot, "{fault:?} came after the slot it was meant to precede");
        if fault == Signal::SIGSTOP {
            tokio::time::sleep(TTL * 3).await;
            cluster.signal(leader, Signal::SIGCONT);
        }
        wait_for("the started slot's outcome", Duration::from_secs(30), || async {
            let ledger = cluster.ledger().await;
            ledger.iter().any(|r| r.job == "tick" && r.slot == slot && outcomes.contains(&r.status.as_str()))
        })
        .await;
        let ran: Vec<_> = cluster.witness().into_iter().filter(|w| w.slot == slot).collect();
        assert!(ran.is_empty(), "{fault:?}: a slot started by a term that ended before it was run: {ran:?}");
        let row = cluster.ledger().await.into_iter().find(|r| r.job == "tick" && r.slot == slot).unwrap();
        assert_eq!(row.term, term, "{fault:?}: no other term took the started slot over: {row:?}");
        windows.push(window(fault_at, Utc::now()));
        if fault == Signal::SIGKILL {
            cluster.restart(leader);
        }
    }
    let report = finish(&mut cluster, &["tick"], &windows).await;
    cluster.verdict(&report).await;
}

/// The tests' switches for a start recorded 400 ms ahead of its slot (claimed 900 ms ahead):
/// wide enough a window to hit, and with the tests' 1 s lease a start is recorded ahead only
/// while the lease is valid until the slot, which 400 ms leaves room for.
fn starts_ahead() -> Options {
    Options {
        env: vec![
            ("TENURE_TEST_CLAIM_LEAD_MS".into(), "900".into()),
            ("TENURE_TEST_START_LEAD_MS".into(), "400".into()),
        ],
        ..Options::default()
    }
}

/// The first slot of `tick` whose start is seen recorded well before the slot (a loaded machine
/// may record one late, or at its slot when the lease did not reach it), within 10 s.
async fn a_start_seen_ahead(cluster: &Cluster) -> DateTime<Utc> {
    for _ in 0..10 {
        let into = u64::from(Utc::now().timestamp_subsec_millis());
        tokio::time::sleep(Duration::from_millis((1600 - into) % 1000)).await;
        let slot = Utc::now().duration_trunc(chrono::Duration::seconds(1)).unwrap() + chrono::Duration::seconds(1);
        while Utc::now() < slot - chrono::Duration::milliseconds(150) {
            let ledger = cluster.ledger().await;
            if ledger.iter().any(|r| r.job == "tick" && r.slot == slot && r.started_at == Some(slot)) {
                return slot;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    panic!("no start recorded ahead in 10 s\n{}", cluster.logs())
}

/// SIGTERM between a run's start, recorded ahead, and its slot: the leader hands over at once,
/// and still executes that run at its slot, once. The start is its term's, so no later term
/// takes it over, and an orderly stop lets what it has begun finish, as it does a run in flight
/// (a SIGKILL or a lease that ran out leaves it unrun: the test above). Nothing is missed.
#[tokio::test]
async fn a_leader_stopped_between_a_start_ahead_and_its_slot_still_runs_it_once_at_its_slot() {
    let mut cluster = Cluster::start_with(3, TICK, starts_ahead()).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    cluster.let_it_tick(2).await;
    let slot = a_start_seen_ahead(&cluster).await;
    cluster.event(format!(
        "SIGTERM {} (term {term}) between the start of {slot} and the slot",
        cluster.replicas[leader].node
    ));
    cluster.signal(leader, Signal::SIGTERM);
    assert!(Utc::now() < slot, "SIGTERM came after the slot it was meant to precede");
    cluster.terminate(leader).await;
    let (_, new_term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    assert!(new_term > term, "a new term after the hand-over: {new_term} after {term}");
    let row = cluster.ledger().await.into_iter().find(|r| r.job == "tick" && r.slot == slot).unwrap();
    let ran: Vec<_> = cluster.witness().into_iter().filter(|w| w.slot == slot).collect();
    assert_eq!(ran.len(), 1, "the started slot runs once: {ran:?}; its row {row:?}\n{}", cluster.logs());
    assert_eq!((ran[0].term, row.term, row.status.as_str()), (term, term, "succeeded"), "{row:?}");
    let report = finish(&mut cluster, &["tick"], &[]).await;
    cluster.verdict(&report).await;
}

/// How long each run of the long `forbid` job below lasts: several of its 2 s periods, so a run its leader
/// left behind would still be going when the next leader's `forbid` lets the next slot run.
const LONG_RUN_SECS: u64 = 8;

/// A job's processes must not outlive the replica that started them. A
/// `forbid` job due every 2 s runs for 8 s. Its leader is SIGKILLed mid-run; then the next
/// leader is SIGSTOPped mid-run past its lease and resumed. Each run is watched from outside
/// tenure: its start record (the witness), its end record, and the moment its shell disappears.
/// No two runs may overlap in real time, and no run recorded `lost` may have written its end.
#[tokio::test]
async fn a_forbid_job_never_overlaps_itself_across_sigkill_and_sigstop_of_its_leader() {
    let records = tempfile::tempdir().unwrap();
    let ends_path = records.path().join("ends.log");
    let jobs = format!(
        r#"
jobs:
  - name: long
    schedule: "*/2 * * * * *"
    concurrency: forbid
    timeout: 1m
    shell: 'WITNESS; sleep {LONG_RUN_SECS}; echo "$TENURE_SLOT $$ $(date +%s.%N)" >> {}'
"#,
        ends_path.display()
    );
    let mut cluster = Cluster::start(3, &jobs).await;

    // Outside tenure, every 20 ms: when did each run's shell (its `$$`) disappear?
    let deaths = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<u32, DateTime<Utc>>::new()));
    let watcher = {
        let (deaths, witness_path) = (deaths.clone(), cluster.witness_path.clone());
        tokio::spawn(async move {
            loop {
                for run in crate::checker::Witness::read(&witness_path) {
                    if !deaths.lock().unwrap().contains_key(&run.pid) && process_gone(run.pid) {
                        deaths.lock().unwrap().insert(run.pid, Utc::now());
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let died = |pid: u32| deaths.lock().unwrap().get(&pid).copied();
    // A run of `term` that has been going for a second (so the fault lands mid-run).
    let run_going = |cluster: &Cluster, term: i64| {
        let witness = cluster.witness();
        witness
            .into_iter()
            .find(|w| w.term == term && died(w.pid).is_none() && Utc::now() - w.at > chrono::Duration::seconds(1))
    };

    let (first, first_term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    wait_for("a run of the first leader going", Duration::from_secs(15), || async {
        run_going(&cluster, first_term).is_some()
    })
    .await;
    let killed_run = run_going(&cluster, first_term).unwrap();
    cluster.event(format!(
        "SIGKILL {} (term {first_term}) during the run of {}",
        cluster.replicas[first].node, killed_run.slot
    ));
    let killed_at = Utc::now();
    cluster.kill(first);

    let found = std::cell::Cell::new(None);
    wait_for("a run of the next leader going", Duration::from_secs(30), || async {
        let leader = cluster.leaders().await.into_iter().find(|(_, term)| *term > first_term);
        found.set(leader.filter(|(_, term)| run_going(&cluster, *term).is_some()));
        found.get().is_some()
    })
    .await;
    let (second, second_term) = found.get().unwrap();
    let stopped_run = run_going(&cluster, second_term).unwrap();
    cluster.event(format!(
        "SIGSTOP {} (term {second_term}) during the run of {}",
        cluster.replicas[second].node, stopped_run.slot
    ));
    let stopped_at = Utc::now();
    let stop_instant = Instant::now();
    cluster.signal(second, Signal::SIGSTOP);
    handover_after(&cluster, stop_instant, second_term, Duration::from_secs(30)).await;
    tokio::time::sleep((TTL * 3).saturating_sub(stop_instant.elapsed())).await;
    cluster.event("SIGCONT the stopped leader");
    let resumed_at = Utc::now();
    cluster.signal(second, Signal::SIGCONT);

    // Every run started before the resume has ended, and a later leader's run has started.
    wait_for("the runs before the resume to end", Duration::from_secs(LONG_RUN_SECS * 3), || async {
        let witness = cluster.witness();
        witness.iter().filter(|w| w.at < resumed_at).all(|w| died(w.pid).is_some())
            && witness.iter().any(|w| w.term > second_term)
    })
    .await;
    wait_for("no run of the faulted terms left running in the ledger", Duration::from_secs(20), || async {
        !cluster.ledger().await.iter().any(|r| r.term <= second_term && r.status == RunStatus::Running)
    })
    .await;
    watcher.abort();

    let witness = cluster.witness();
    let ends: Vec<(DateTime<Utc>, u32, DateTime<Utc>)> = std::fs::read_to_string(&ends_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let slot = DateTime::parse_from_rfc3339(fields.next()?).ok()?.with_timezone(&Utc);
            let pid = fields.next()?.parse().ok()?;
            let seconds: f64 = fields.next()?.parse().ok()?;
            Some((slot, pid, DateTime::from_timestamp_micros((seconds * 1e6) as i64)?))
        })
        .collect();
    // A run lasts from its start record to its end record, or to when its shell disappeared, or
    // (still going) to now.
    let now = Utc::now();
    let intervals: Vec<(DateTime<Utc>, DateTime<Utc>, &crate::checker::Witness)> = witness
        .iter()
        .map(|w| {
            let end = ends.iter().find(|(_, pid, _)| *pid == w.pid).map(|(_, _, at)| *at);
            (w.at, end.or(died(w.pid)).unwrap_or(now), w)
        })
        .collect();
    let mut overlaps = Vec::new();
    for (i, (start_a, end_a, a)) in intervals.iter().enumerate() {
        for (start_b, end_b, b) in &intervals[i + 1..] {
            if start_a < end_b && start_b < end_a {
                overlaps.push(format!(
                    "{} (term {}) {start_a}..{end_a} and {} (term {}) {start_b}..{end_b}",
                    a.slot, a.term, b.slot, b.term
                ));
            }
        }
    }
    let ledger = cluster.ledger().await;
    let lost_but_finished: Vec<_> = ledger
        .iter()
        .filter(|r| r.status == RunStatus::Lost && ends.iter().any(|(slot, _, _)| *slot == r.slot))
        .map(|r| format!("{} (term {}, {})", r.slot, r.term, r.node))
        .collect();
    let gone_after_kill = died(killed_run.pid).map(|at| (at - killed_at).to_std().unwrap_or_default());
    let gone_after_stop = died(stopped_run.pid).map(|at| (at - stopped_at).to_std().unwrap_or_default());
    eprintln!(
        "the SIGKILLed leader's run gone {gone_after_kill:?} after the kill; the SIGSTOPped \
         leader's run gone {gone_after_stop:?} after the stop (TTL {TTL:?})"
    );
    assert!(overlaps.is_empty(), "runs of a forbid job overlapped:\n{}\n{}", overlaps.join("\n"), cluster.logs());
    assert!(lost_but_finished.is_empty(), "runs recorded lost went on to finish: {lost_but_finished:?}");
    // Dead with its replica: at once after SIGKILL, within the silence limit (one TTL) after SIGSTOP.
    let bound = |limit: Duration| move |gone: Option<Duration>| gone.is_some_and(|gone| gone < limit);
    assert!(bound(Duration::from_secs(2))(gone_after_kill), "the killed leader's run lived on: {gone_after_kill:?}");
    assert!(
        bound(TTL + Duration::from_secs(2))(gone_after_stop),
        "the stopped leader's run lived on: {gone_after_stop:?}"
    );
    let expect = Expect { jobs: &[], from: witness[0].slot, until: now, missed_allowed: true };
    let report = check_excusing(&witness, &ledger, &expect, &[]);
    cluster.verdict(&report).await;
}
