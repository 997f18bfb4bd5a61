//! The database failing over to a standby: a PostgreSQL primary streaming to one standby, the
//! replicas reaching it through one service address (a proxy) that moves to the standby once it
//! is promoted, as a virtual IP would. An asynchronous standby may lack the primary's last
//! commits (claims, starts, cursors): a slot whose run had executed must not run again under the
//! next term, and is recorded `lost` with the reason. A synchronous standby loses nothing. A
//! replica pointed at a standby refuses to lead.

use std::collections::HashSet;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tenure::model::RunStatus;
use tenure::store::{Reads, RunRecord};

use crate::checker::{Expect, FORGOTTEN_IN_FAILOVER, Report, Witness, check};
use crate::cluster::{Cluster, Options, TTL, witness_command};
use crate::harness::{Etcd, Postgres, free_port, wait_for, wait_until};
use crate::proxy::Proxy;

/// Per-second jobs that run every slot they are late for (`catch_up: all`), so a term that
/// believes a slot never ran runs it; `allow`, so a late slot is never skipped for a running one.
const JOBS: &str = r#"
defaults:
  catch_up: all
  concurrency: allow
  timeout: 10s
jobs:
  - name: alpha
    schedule: "* * * * * *"
    shell: WITNESS
  - name: beta
    schedule: "* * * * * *"
    shell: WITNESS
  - name: gamma
    schedule: "* * * * * *"
    shell: WITNESS
"#;

const JOB_NAMES: &[&str] = &["alpha", "beta", "gamma"];

/// The standby's `application_name`.
const STANDBY: &str = "standby";

/// The variable that switches the start witness off (the one kept outside the database), in
/// builds with the `testing` feature.
const NO_START_WITNESS: &str = "TENURE_TEST_NO_START_WITNESS";

/// A cluster of three replicas on a primary with one standby (`synchronous` or not), reaching
/// the database through one service address. The primary is the cluster's `pg`.
struct Replicated {
    cluster: Cluster,
    standby: Postgres,
    service: Proxy,
}

impl Replicated {
    async fn start(synchronous: bool, env: &[(&str, &str)]) -> Replicated {
        let primary = Postgres::start_primary().await;
        let standby = primary.start_standby(STANDBY).await;
        if synchronous {
            primary.require_synchronous(STANDBY).await;
        }
        let service = Proxy::start(([127, 0, 0, 1], primary.port()).into()).await;
        let url = primary
            .create_database("tenure")
            .await
            .replace(&format!(":{}/", primary.port()), &format!(":{}/", service.port()));
        let options = Options {
            env: env.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
            ..Options::default()
        };
        let cluster = Cluster::start_on_database(3, JOBS, options, primary, url).await;
        Replicated { cluster, standby, service }
    }

    /// The primary and the leader replica die together, as a lost site: the primary at once
    /// (`-m immediate`), the leader by SIGKILL, half a second into a second (no run in flight:
    /// runs start at whole seconds). The leader must not live on against the promoted standby:
    /// its cursors, ahead of the promoted ledger's, would carry it past the forgotten slots and
    /// only the next term is put to the test. A frozen WAL receiver is killed (see
    /// `Postgres::kill_frozen_walreceiver`); the standby is promoted, its ledger read before any
    /// replica reaches it, and the service address moved to it.
    async fn fail_over(&mut self) -> Failover {
        let cluster = &mut self.cluster;
        let (leader, old_term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
        let into = u64::from(Utc::now().timestamp_subsec_millis());
        tokio::time::sleep(Duration::from_millis((1500 - into) % 1000)).await;
        cluster.event(format!(
            "kill the primary (immediate) and SIGKILL the leader {} (term {old_term})",
            cluster.replicas[leader].node
        ));
        cluster.pg.stop_immediate();
        let (primary_killed, killed) = (Utc::now(), Instant::now());
        cluster.kill(leader);
        if self.standby.walreceiver_frozen() {
            cluster.event("SIGKILL the frozen WAL receiver: the standby keeps what it had received");
            self.standby.kill_frozen_walreceiver().await;
        }
        self.standby.promote().await;
        cluster.event("standby promoted");
        let promoted = tenure::store::connect_reads(&self.standby.url_of("tenure")).await.expect("reach the standby");
        let rows = Reads::new(promoted.clone()).all_runs().await.expect("read the promoted ledger");
        promoted.close().await;
        let promoted_started =
            rows.iter().filter(|row| row.started_at.is_some()).map(|row| (row.job.clone(), row.slot)).collect();
        cluster.event(format!("move the service address to the promoted standby ({} rows)", rows.len()));
        self.service.retarget(([127, 0, 0, 1], self.standby.port()).into());
        Failover { old_term, primary_killed, killed, moved: Instant::now(), moved_at: Utc::now(), promoted_started }
    }

    /// Firing resumes on the promoted standby within the lease TTL plus a few seconds of the
    /// service address moving (a slot after the move executed by a newer term); then the cluster
    /// runs 8 s more, and the leader reaps what the dead leader left running.
    async fn resume(&self, failover: &Failover) -> Outcome {
        let cluster = &self.cluster;
        let bound = TTL + Duration::from_secs(5);
        let after_move =
            |w: &Witness, by: chrono::Duration| w.term > failover.old_term && w.slot >= failover.moved_at + by;
        let resumed =
            wait_until(bound, || async { cluster.witness().iter().any(|w| after_move(w, chrono::Duration::zero())) })
                .await;
        assert!(
            resumed,
            "no slot after the failover ran within {bound:?} of the service address moving\n{}",
            cluster.logs()
        );
        let (since_move, since_death) = (failover.moved.elapsed(), failover.killed.elapsed());
        let what = "8 s of slots on the promoted standby";
        wait_for(what, Duration::from_secs(30), || async {
            cluster.witness().iter().any(|w| after_move(w, chrono::Duration::seconds(8)))
        })
        .await;
        cluster.wait_for_reaped(Duration::from_secs(20)).await;
        let witness = cluster.witness();
        let ledger = cluster.ledger().await;
        // Every job's slots from the first one all of them ran, to two seconds before the end.
        let from = JOB_NAMES
            .iter()
            .filter_map(|job| witness.iter().filter(|w| w.job == *job).map(|w| w.slot).min())
            .max()
            .expect("the jobs ran");
        let until = witness.iter().map(|w| w.slot).max().unwrap() - chrono::Duration::seconds(2);
        let report = check(&witness, &ledger, &Expect { jobs: JOB_NAMES, from, until, missed_allowed: true });
        // The executions of the old terms the promoted ledger held no started run for.
        let forgotten: Vec<Witness> = witness
            .iter()
            .filter(|w| w.term <= failover.old_term)
            .filter(|w| !failover.promoted_started.contains(&(w.job.clone(), w.slot)))
            .cloned()
            .collect();
        let extra_runs: usize = report.executed_twice.iter().map(|(_, _, count)| count - 1).sum();
        eprintln!(
            "failover: {} executions before it, {} of them forgotten by the promoted ledger; {} slots executed \
             twice ({extra_runs} extra runs); firing resumed {since_move:?} after the service address moved \
             ({since_death:?} after the primary died)",
            witness.iter().filter(|w| w.term <= failover.old_term).count(),
            forgotten.len(),
            report.executed_twice.len(),
        );
        Outcome { witness, ledger, report, forgotten, until }
    }
}

/// What the failover left behind.
struct Failover {
    old_term: i64,
    /// When the primary died.
    primary_killed: DateTime<Utc>,
    killed: Instant,
    /// When the service address moved to the promoted standby.
    moved: Instant,
    moved_at: DateTime<Utc>,
    /// The (job, slot) of every run the promoted ledger held as started, before any replica
    /// reached it.
    promoted_started: HashSet<(String, DateTime<Utc>)>,
}

/// The verdict after the failover.
struct Outcome {
    witness: Vec<Witness>,
    ledger: Vec<RunRecord>,
    report: Report,
    /// Executions of the old terms whose runs the promoted ledger did not hold as started.
    forgotten: Vec<Witness>,
    /// The last slot the checker judged.
    until: DateTime<Utc>,
}

impl Outcome {
    fn row(&self, job: &str, slot: DateTime<Utc>) -> Option<&RunRecord> {
        self.ledger.iter().find(|row| row.job == job && row.slot == slot)
    }
}

/// Scenario (a), and (c) with `env`: an asynchronous standby whose WAL receiver is frozen while
/// the primary commits on for four seconds and more, then the failover.
async fn asynchronous_failover_losing_commits(env: &[(&str, &str)]) -> (Replicated, Failover, Outcome) {
    let mut replicated = Replicated::start(false, env).await;
    replicated.cluster.wait_for_leader(Duration::from_secs(15)).await;
    replicated.cluster.let_it_tick(3 * JOB_NAMES.len()).await;
    assert_eq!(replicated.cluster.pg.replication_state(STANDBY).await.map(|(_, sync)| sync).as_deref(), Some("async"));
    replicated.cluster.event("freeze the standby's WAL receiver (SIGSTOP)");
    replicated.standby.freeze_walreceiver().await;
    let frozen = Instant::now();
    // At least four seconds of every job's slots that reach the primary only.
    replicated.cluster.let_it_tick(4 * JOB_NAMES.len()).await;
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(frozen.elapsed())).await;
    let failover = replicated.fail_over().await;
    let outcome = replicated.resume(&failover).await;
    // The ledger before reconciliation lacked runs that had executed: else nothing was tested.
    assert!(
        !outcome.forgotten.is_empty(),
        "the promoted ledger held every run that had executed: no commits were lost, the scenario proved nothing"
    );
    (replicated, failover, outcome)
}

#[tokio::test]
async fn an_asynchronous_failover_that_loses_commits_runs_no_slot_twice() {
    let (mut replicated, failover, outcome) = asynchronous_failover_losing_commits(&[]).await;
    replicated.cluster.verdict(&outcome.report).await;
    // Each run the promoted ledger forgot is recorded `lost`, saying why, and never run again.
    for w in &outcome.forgotten {
        let row = outcome.row(&w.job, w.slot);
        assert!(
            row.is_some_and(|row| row.status == RunStatus::Lost
                && row.error.as_deref().is_some_and(|error| error.contains(FORGOTTEN_IN_FAILOVER))),
            "{} {} executed (term {}), the promoted ledger forgot it, and it is not recorded lost in the \
             failover: {row:?}",
            w.job,
            w.slot,
            w.term
        );
    }
    // Firing goes on normally on the promoted standby: every slot from a few seconds after the
    // move succeeds.
    let settled = failover.moved_at + chrono::Duration::from_std(TTL + Duration::from_secs(5)).unwrap();
    let not_run: Vec<&RunRecord> = outcome
        .ledger
        .iter()
        .filter(|row| row.slot >= settled && row.slot <= outcome.until && row.status != RunStatus::Succeeded)
        .collect();
    assert!(not_run.is_empty(), "slots after the failover did not succeed: {not_run:#?}");
}

/// The checker is only worth something if it fails: without the start witness kept outside
/// the database (a test-only switch), the next term runs again what the promoted ledger forgot.
#[tokio::test]
async fn the_checker_catches_a_double_run_when_the_start_witness_is_off() {
    let (_replicated, _failover, outcome) = asynchronous_failover_losing_commits(&[(NO_START_WITNESS, "1")]).await;
    assert!(
        !outcome.report.executed_twice.is_empty(),
        "{} executions were forgotten and none ran twice: the checker missed the double runs, or the \
         switch did not switch the witness off\n{:#?}",
        outcome.forgotten.len(),
        outcome.report
    );
}

/// With the standby synchronous (a commit returns only once the standby has it, shown by
/// freezing its WAL receiver under a commit), the promoted ledger holds every run that executed,
/// as it ended: nothing that ran is recorded lost in the failover (only a batch of starts in
/// flight at the kill, which never ran), nothing runs twice.
#[tokio::test]
async fn a_synchronous_failover_loses_nothing() {
    let mut replicated = Replicated::start(true, &[]).await;
    replicated.cluster.wait_for_leader(Duration::from_secs(15)).await;
    replicated.cluster.let_it_tick(2 * JOB_NAMES.len()).await;
    assert_eq!(replicated.cluster.pg.replication_state(STANDBY).await.map(|(_, sync)| sync).as_deref(), Some("sync"));
    // Synchronous indeed: with the standby's WAL receiver frozen, a commit on the primary waits.
    replicated.cluster.event("freeze the standby's WAL receiver (SIGSTOP) under a commit");
    replicated.standby.freeze_walreceiver().await;
    let primary_url = replicated.cluster.pg.url();
    let commit = tokio::spawn(async move {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&primary_url).await.expect("connect to the primary");
        sqlx::query("CREATE TABLE commit_probe (at timestamptz)").execute(&mut conn).await.expect("commit");
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!commit.is_finished(), "a commit returned while the synchronous standby could not receive it");
    replicated.cluster.event("thaw the WAL receiver");
    replicated.standby.thaw_walreceiver();
    tokio::time::timeout(Duration::from_secs(10), commit)
        .await
        .expect("the commit returns once the standby receives it")
        .unwrap();
    replicated.cluster.let_it_tick(2 * JOB_NAMES.len()).await;

    let failover = replicated.fail_over().await;
    let outcome = replicated.resume(&failover).await;
    replicated.cluster.verdict(&outcome.report).await;
    assert!(
        outcome.forgotten.is_empty(),
        "a synchronous standby lacked started runs that had executed: {:#?}",
        outcome.forgotten
    );
    // A batch of starts in flight when the primary died (sent, its answer never received) is
    // recorded lost by the next term: after a promotion it cannot tell whether the batch
    // committed, so it runs none of it again. None of those ran (a job executes only once its
    // start's commit is acknowledged, and a synchronous standby holds every acknowledged commit),
    // and they are the slots whose starts go out around the kill: a start is sent up to the claim
    // lead ahead of its slot. Any other row recorded forgotten is a loss.
    let recorded_forgotten: Vec<&RunRecord> = outcome
        .ledger
        .iter()
        .filter(|row| row.error.as_deref().is_some_and(|error| error.contains(FORGOTTEN_IN_FAILOVER)))
        .filter(|row| {
            let executed = outcome.witness.iter().any(|w| w.job == row.job && w.slot == row.slot);
            let in_flight = row.slot >= failover.primary_killed - chrono::Duration::seconds(1)
                && row.slot <= failover.primary_killed + chrono::Duration::seconds(3);
            executed || !in_flight
        })
        .collect();
    assert!(
        recorded_forgotten.is_empty(),
        "runs recorded forgotten that executed, or whose start was not in flight at the kill ({}): \
         {recorded_forgotten:#?}",
        failover.primary_killed
    );
    // Every run that executed before the failover is the ledger's as it ended: succeeded. Only a
    // run executing within the last second before the primary died may have had its end go
    // unrecorded (then `lost`, its leader gone, like any run whose leader vanished).
    let in_flight_from = failover.primary_killed - chrono::Duration::seconds(1);
    for w in outcome.witness.iter().filter(|w| w.term <= failover.old_term) {
        let row = outcome.row(&w.job, w.slot).expect("the checker found a row");
        let ended = row.status == RunStatus::Succeeded || (w.at >= in_flight_from && row.status == RunStatus::Lost);
        assert!(ended, "{} {} executed before the failover and is recorded {row:?}", w.job, w.slot);
    }
}

/// A replica whose database URL leads to a standby (read-only, recovering) must not lead: it
/// exits non-zero or never fires, and says in one line that the database is a standby.
#[tokio::test]
async fn a_replica_pointed_at_a_standby_refuses_to_lead() {
    let primary = Postgres::start_primary().await;
    let primary_url = primary.create_database("tenure").await;
    // The schema is there, as on any standby of a primary replicas have used.
    let pool = tenure::store::connect(&primary_url).await.unwrap();
    tenure::store::migrate(&pool).await.unwrap();
    pool.close().await;
    let standby = primary.start_standby(STANDBY).await;
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let witness = dir.path().join("witness.log");
    fs::write(&witness, "").unwrap();
    let jobs = dir.path().join("jobs.yaml");
    fs::write(&jobs, JOBS.replace("WITNESS", &witness_command(&witness))).unwrap();
    let log = dir.path().join("replica.log");
    let output = fs::File::create(&log).unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["run", "--jobs"])
        .arg(&jobs)
        .args(["--etcd", &etcd.client_url()])
        .args(["--database-url", &standby.url_of("tenure")])
        .args(["--node-id", "lone"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--lease-ttl", &format!("{}s", TTL.as_secs())])
        .args(["--election", "test"])
        .env("RUST_LOG", "info,tenure=debug")
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .expect("start tenure");
    let exited = std::cell::Cell::new(None);
    wait_until(Duration::from_secs(10), || {
        exited.set(child.try_wait().unwrap());
        let done = exited.get().is_some();
        async move { done }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = fs::read_to_string(&log).unwrap_or_default();
    let fired = Witness::read(&witness);
    assert!(fired.is_empty(), "a replica on a standby fired: {fired:?}\n{text}");
    let fence = tenure::store::Store::new(tenure::store::connect(&primary_url).await.unwrap()).fence().await.unwrap();
    assert_eq!(fence.term, 0, "the fence was raised");
    if let Some(status) = exited.get() {
        assert!(!status.success(), "a replica on a standby exited successfully:\n{text}");
    }
    let said: Vec<&str> = text.lines().filter(|line| line.to_lowercase().contains("standby")).collect();
    assert!(
        !said.is_empty(),
        "a replica on a standby (exit: {:?}) never said the database is a standby:\n{text}",
        exited.get()
    );
}
