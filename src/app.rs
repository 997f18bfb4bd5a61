//! Wires one replica together for `tenure run`: the job file and its reloads, the ledger, the
//! election and the registry (on etcd or ZooKeeper), the scheduler and the HTTP server, all under
//! one shutdown token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{self, ClockCheck};
use crate::config::{self, JobSet};
use crate::deadman::DeadManSettings;
use crate::election::{ConnectError, Coordinator, CoordinatorAccess, CoordinatorProbe, Election, ElectionConfig, Keys};
use crate::http::tls::ListenerTls;
use crate::http::{self, AppState, Auth};
use crate::leadership::Leadership;
use crate::local::{LedgerLock, LocalElection};
use crate::model::{ClusterSnapshot, Member};
use crate::scheduler::{self, Scheduler, SchedulerInputs};
use crate::secret::Secret;
use crate::store::{self, Reads, ReplicaOffer, Store};
use crate::supervisor::{self, Supervision};
use crate::telemetry::{self, metric};
use crate::worker::{ExecutionLease, Worker, WorkerInputs};

mod files;
mod retention;

use files::{load_jobs_apart, log_warnings, watch_job_file, watch_policy};
use retention::{prune_audit, prune_ledger};

/// `tenure dev` holds no lease: how long its supervisor lets a frozen replica be silent.
const DEV_SILENCE_LIMIT: Duration = Duration::from_secs(5);
/// `tenure dev` executes every assigned run itself: as many at once as a laptop would.
const DEV_MAX_RUNS: u32 = 64;

/// Everything `tenure run` needs, already parsed.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub jobs_path: PathBuf,
    /// etcd or ZooKeeper, and how to reach it.
    pub coordinator: CoordinatorAccess,
    pub database_url: Secret,
    pub node_id: String,
    pub lease_ttl: Duration,
    pub election: String,
    pub shutdown_grace: Duration,
    pub retain: Duration,
    pub auth: Auth,
    /// HTTPS on `--listen` (`--tls-cert`, `--tls-key`).
    pub tls: Option<ListenerTls>,
    /// The dead-man ping's monitor, when `--heartbeat-url` is given.
    pub dead_man: Option<DeadManSettings>,
    /// `--tags`: what `run_on: { tags: [..] }` jobs look for.
    pub tags: Vec<String>,
    /// `--max-runs`: how many assigned runs this replica executes at once.
    pub max_runs: u32,
}

/// Run one replica until `shutdown` is cancelled, then hand over and drain.
pub async fn run(settings: RunSettings, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let jobs = load_jobs_apart(&settings.jobs_path, settings.retain)
        .await
        .map_err(|errors| anyhow::anyhow!("{}", errors.summary(config::LOGGED_ERRORS)))?;
    log_warnings(&jobs);
    let address = listener.local_addr().context("listener address")?;
    tracing::info!(node = %settings.node_id, %address, jobs = jobs.jobs().len(), hash = jobs.hash(), "starting");

    let pool = store::connect(settings.database_url.expose()).await.context("read --database-url")?;
    migrate_with_retry(settings.database_url.expose(), &pool, &shutdown).await?;
    let store = Store::new(pool);
    crate::clock::report_replication(&store).await;
    let reads = Reads::new(store::connect_reads(settings.database_url.expose()).await?);

    let coordinator = connect_coordinator_with_retry(&settings.coordinator, settings.lease_ttl, &shutdown).await?;
    let keys = Keys::new(&settings.election);
    let replica = Replica::new(&settings.node_id, address, jobs);
    let (members_tx, members_rx) = watch::channel(Vec::new());
    let (cluster_tx, cluster_rx) = watch::channel(ClusterSnapshot::default());
    let (leadership_tx, leadership_rx) = watch::channel(Leadership::Follower { leader: None });

    let tasks = TaskTracker::new();
    // The registry outlives the scheduler's drain, so runs finishing after hand-over still belong
    // to a registered node and are not reaped as lost.
    let registry_shutdown = CancellationToken::new();
    tasks.spawn(coordinator.clone().register(
        keys.clone(),
        settings.lease_ttl,
        replica.member_tx.subscribe(),
        registry_shutdown.clone(),
    ));
    tasks.spawn(watch_members(
        coordinator.clone(),
        keys.clone(),
        settings.lease_ttl,
        members_tx,
        cluster_tx,
        registry_shutdown.clone(),
    ));
    let (clock_tx, clock_rx) = watch::channel(ClockCheck::UNKNOWN);
    tasks.spawn(clock::watch_skew(
        store.clone(),
        clock_tx,
        clock::unreachable_after(settings.lease_ttl),
        registry_shutdown.clone(),
    ));
    tasks.spawn(
        Election::new(
            coordinator.clone(),
            ElectionConfig { keys, node_id: settings.node_id.clone(), lease_ttl: settings.lease_ttl },
            leadership_tx,
        )
        .with_clock_guard(clock_rx.clone())
        .run(shutdown.clone()),
    );
    let wiring = Wiring {
        store,
        reads,
        leadership: leadership_rx,
        members: members_rx,
        cluster: cluster_rx,
        clock: clock_rx,
        coordinator: Some(CoordinatorProbe::new(coordinator)),
        // A replica silent for a lease TTL since its last heartbeat has lost its lease (its
        // deadline is at most a TTL after its last keep-alive): it would stop its runs on waking.
        supervision: Supervision::new(settings.lease_ttl + supervisor::HEARTBEAT),
        tasks,
        registry_shutdown,
    };
    let common = CommonSettings {
        jobs_path: &settings.jobs_path,
        shutdown_grace: settings.shutdown_grace,
        retain: settings.retain,
        auth: settings.auth,
        tls: settings.tls,
        dead_man: settings.dead_man,
        execution: Execution {
            tags: settings.tags,
            max_runs: settings.max_runs,
            lease: ExecutionLease::for_ttl(settings.lease_ttl),
        },
    };
    replica.drive(common, wiring, listener, shutdown).await
}

/// Everything `tenure dev` needs: one replica on an embedded SQLite ledger, leading on its own.
#[derive(Debug, Clone)]
pub struct DevSettings {
    pub jobs_path: PathBuf,
    pub ledger_path: PathBuf,
    pub node_id: String,
    pub shutdown_grace: Duration,
    pub retain: Duration,
    pub auth: Auth,
    /// HTTPS on `--listen` (`--tls-cert`, `--tls-key`).
    pub tls: Option<ListenerTls>,
    pub dead_man: Option<DeadManSettings>,
}

/// Run `tenure dev` until `shutdown`: the same scheduler, ledger semantics and dashboard as a
/// cluster replica, with SQLite for the ledger and in-process leadership instead of etcd.
/// `_ledger_lock` (of `settings.ledger_path`) is held until everything has stopped: terms are
/// minted in this process, so no other process may lead on the same ledger meanwhile.
pub async fn dev(
    settings: DevSettings,
    _ledger_lock: LedgerLock,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let jobs = load_jobs_apart(&settings.jobs_path, settings.retain)
        .await
        .map_err(|errors| anyhow::anyhow!("{}", errors.summary(config::LOGGED_ERRORS)))?;
    log_warnings(&jobs);
    let address = listener.local_addr().context("listener address")?;
    let ledger = store::Sqlite::open(&settings.ledger_path)
        .await
        .with_context(|| format!("open the dev ledger {}", settings.ledger_path.display()))?;
    // One SQLite connection serves both sides: `tenure dev` has no readers to keep apart.
    let (store, reads) = Store::with_reads(ledger);
    // Terms continue above the ledger's fence, so a restart is a new, higher term.
    let fence = store.fence().await.context("read the fence")?;
    let replica = Replica::new(&settings.node_id, address, jobs);
    let (leadership_tx, leadership_rx) = watch::channel(Leadership::Follower { leader: None });
    let member = replica.member_tx.borrow().clone();
    let (members_tx, members_rx) = watch::channel(vec![member.clone()]);
    let mut snapshot = ClusterSnapshot::default();
    snapshot.observe(std::slice::from_ref(&member), Utc::now());
    let (cluster_tx, cluster_rx) = watch::channel(snapshot);

    let tasks = TaskTracker::new();
    let election = LocalElection::new(fence.term);
    tasks.spawn({
        let (node, stop) = (settings.node_id.clone(), shutdown.clone());
        async move { election.campaign(node, leadership_tx, stop).await }
    });
    // The roster and leader the dashboard shows follow this replica's own state.
    let registry_shutdown = CancellationToken::new();
    tasks.spawn(mirror_self(
        replica.member_tx.subscribe(),
        leadership_rx.clone(),
        members_tx,
        cluster_tx,
        registry_shutdown.clone(),
    ));
    let (clock_tx, clock_rx) = watch::channel(ClockCheck::UNKNOWN);
    tasks.spawn(clock::watch_skew(
        store.clone(),
        clock_tx,
        clock::unreachable_after(Duration::ZERO),
        registry_shutdown.clone(),
    ));
    let wiring = Wiring {
        store,
        reads,
        leadership: leadership_rx,
        members: members_rx,
        cluster: cluster_rx,
        clock: clock_rx,
        coordinator: None,
        supervision: Supervision::new(DEV_SILENCE_LIMIT),
        tasks,
        registry_shutdown,
    };
    let common = CommonSettings {
        jobs_path: &settings.jobs_path,
        shutdown_grace: settings.shutdown_grace,
        retain: settings.retain,
        auth: settings.auth,
        tls: settings.tls,
        dead_man: settings.dead_man,
        // The one replica is leader and executor: every `run_on` job runs here.
        execution: Execution {
            tags: Vec::new(),
            max_runs: DEV_MAX_RUNS,
            lease: ExecutionLease::for_ttl(DEV_SILENCE_LIMIT),
        },
    };
    replica.drive(common, wiring, listener, shutdown).await
}

/// `tenure dev`'s cluster is itself: keep the roster and the leader in step with it.
async fn mirror_self(
    mut member: watch::Receiver<Member>,
    mut leadership: watch::Receiver<Leadership>,
    members: watch::Sender<Vec<Member>>,
    cluster: watch::Sender<ClusterSnapshot>,
    shutdown: CancellationToken,
) {
    loop {
        let me = member.borrow_and_update().clone();
        let term = leadership.borrow_and_update().term().map(|term| term.revision());
        members.send_replace(vec![me.clone()]);
        cluster.send_modify(|snapshot| {
            snapshot.observe(std::slice::from_ref(&me), Utc::now());
            snapshot.leader = term.map(|term| (me.node.clone(), term));
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = member.changed() => if changed.is_err() { return },
            changed = leadership.changed() => if changed.is_err() { return },
        }
    }
}

/// The parts of a replica that differ between `run` (etcd, PostgreSQL) and `dev` (in-process,
/// SQLite), already started.
struct Wiring {
    /// The firing path's ledger: the web never reads through it.
    store: Store,
    /// The dashboard's and API's ledger (on PostgreSQL, a pool of its own).
    reads: Reads,
    leadership: watch::Receiver<Leadership>,
    members: watch::Receiver<Vec<Member>>,
    cluster: watch::Receiver<ClusterSnapshot>,
    clock: watch::Receiver<ClockCheck>,
    /// What readiness asks of the coordinator (`tenure dev` has none).
    coordinator: Option<CoordinatorProbe>,
    supervision: Supervision,
    tasks: TaskTracker,
    /// Stops the registration after the scheduler has drained.
    registry_shutdown: CancellationToken,
}

/// What `run` and `dev` configure alike.
struct CommonSettings<'a> {
    jobs_path: &'a Path,
    shutdown_grace: Duration,
    retain: Duration,
    auth: Auth,
    tls: Option<ListenerTls>,
    dead_man: Option<DeadManSettings>,
    execution: Execution,
}

/// What this replica offers for execution, and its execution lease.
struct Execution {
    tags: Vec<String>,
    max_runs: u32,
    lease: ExecutionLease,
}

/// What every replica has: its identity, its job file and the channels they change through.
struct Replica {
    node_id: String,
    jobs: Arc<JobSet>,
    member_tx: watch::Sender<Member>,
}

impl Replica {
    fn new(node_id: &str, address: std::net::SocketAddr, jobs: JobSet) -> Replica {
        let member = Member {
            node: node_id.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            address: address.to_string(),
            config_hash: jobs.hash().to_owned(),
            started_at: Utc::now(),
        };
        telemetry::job_file_loaded(jobs.hash(), None, jobs.jobs().iter().map(|job| job.name.as_ref()));
        Replica { node_id: node_id.to_owned(), jobs: Arc::new(jobs), member_tx: watch::channel(member).0 }
    }

    /// The common part: job file reloads, pruning, the HTTP server and the scheduler, until
    /// `shutdown`; then drain, unregister and stop serving.
    async fn drive(
        self,
        common: CommonSettings<'_>,
        wiring: Wiring,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let CommonSettings { jobs_path, shutdown_grace, retain, auth, tls, dead_man, execution } = common;
        if let Some(dead_man) = &dead_man {
            tracing::info!(host = dead_man.host(), interval = ?dead_man.interval, "dead-man ping while leading");
        }
        let Wiring {
            store,
            reads,
            leadership,
            members,
            cluster,
            clock,
            coordinator,
            supervision,
            tasks,
            registry_shutdown,
        } = wiring;
        let (jobs_tx, jobs_rx) = watch::channel(self.jobs);
        tasks.spawn(prune_ledger(store.clone(), retain, jobs_rx.clone(), leadership.clone(), shutdown.clone()));
        tasks.spawn(prune_audit(store.clone(), auth.audit_retain(), leadership.clone(), shutdown.clone()));
        // The forms' anti-forgery key, one for the whole cluster: whichever replica asks first
        // records it in the ledger, every other reads it.
        let fresh = http::random_bytes::<32>().context("read /dev/urandom")?;
        let key = while_transient("the web's shared key", &shutdown, || reads.web_key("csrf", &fresh))
            .await
            .context("read the web's shared key from the ledger")?;
        let auth = auth.keyed(&key);
        tasks.spawn(watch_job_file(jobs_path.to_owned(), retain, jobs_tx, self.member_tx, shutdown.clone()));
        if let Some(oidc) = auth.oidc()
            && let Some(policy_file) = oidc.policy_file()
        {
            tasks.spawn(watch_policy(oidc.clone(), policy_file.to_owned(), shutdown.clone()));
        }
        let state = AppState {
            node_id: self.node_id.clone(),
            store: reads.clone(),
            leadership: leadership.clone(),
            coordinator,
            jobs: jobs_rx.clone(),
            cluster,
            auth,
            pages: Default::default(),
        };
        let http_shutdown = CancellationToken::new();
        // The connections the server takes leave the firing path its open files (`fds`).
        let budget = crate::fds::Budget::current(execution.max_runs);
        let server =
            http::serve_apart(listener, state, tls, budget, http_shutdown.clone()).context("start the http server")?;

        // Every replica executes what the leader assigns it, the leader's own included.
        let worker = Worker::new(WorkerInputs {
            store: store.clone(),
            offer: ReplicaOffer { node: self.node_id.clone(), tags: execution.tags, max_runs: execution.max_runs },
            lease: execution.lease,
            jobs: jobs_rx.clone(),
            supervision: supervision.clone(),
            shutdown_grace,
        });
        tasks.spawn(worker.run(shutdown.clone()));
        let scheduler = Scheduler::new(SchedulerInputs {
            store,
            execution: execution.lease,
            node_id: self.node_id,
            jobs: jobs_rx,
            leadership,
            members,
            clock_check: clock,
            supervision,
            shutdown_grace,
            clock: scheduler::Clock::system(),
            dead_man,
            reads,
        });
        scheduler.run(shutdown.clone()).await;
        registry_shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        http_shutdown.cancel();
        let served = tokio::task::spawn_blocking(move || server.join()).await.context("http server thread")?;
        served.map_err(|_| anyhow::anyhow!("the http server thread panicked"))??;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Wait for PostgreSQL and bring the schema up to date. A server that is not up yet, or busy, is
/// waited for; settings it refuses (certificate, password, `pg_hba.conf`) and a problem waiting
/// does not solve (a newer schema, a changed migration) stop the replica with one line naming it.
async fn migrate_with_retry(
    database_url: &str,
    pool: &sqlx::PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let error: anyhow::Error = match store::check_connection(database_url).await {
            Err(refused @ store::DatabaseConnectError::Refused { .. }) => return Err(refused.into()),
            Err(unreachable) => unreachable.into(),
            Ok(()) => match store::migrate(pool).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_transient() => error.into(),
                Err(error) => return Err(error.into()),
            },
        };
        tracing::warn!(error = format!("{error:#}"), "database not ready; retrying");
        tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("shut down before the database was ready"),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// `read` from the ledger at start-up, again every second while it fails for a reason that
/// passes (the database busy, restarting, or this process paused past a pool's timeout): a
/// replica waits for its ledger rather than exiting. Any other error is returned at once.
async fn while_transient<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut read: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    loop {
        match read().await {
            Ok(value) => return Ok(value),
            Err(error) if store::transient(&error) => {
                tracing::warn!(%error, "{what} could not be read from the ledger yet; retrying");
            }
            Err(error) => return Err(error.into()),
        }
        tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("shut down before {what} could be read"),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Connect to etcd or ZooKeeper, waiting while it is unreachable; a refusal (certificate, CA,
/// password, a malformed address) stops the replica with one line naming the endpoints and what
/// failed.
async fn connect_coordinator_with_retry(
    access: &CoordinatorAccess,
    lease_ttl: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<Coordinator> {
    // A plaintext client to a TLS-only etcd or ZooKeeper sees its connections accepted, then closed.
    const CLOSED_TRIES: u32 = 3;
    let mut closed = 0;
    loop {
        match Coordinator::connect(access, lease_ttl).await {
            Ok(coordinator) => return Ok(coordinator),
            Err(refused @ ConnectError::Refused { .. }) => return Err(refused.into()),
            Err(error @ ConnectError::Closed { .. }) if closed + 1 >= CLOSED_TRIES => {
                return Err(error.into());
            }
            Err(unreachable) => {
                if matches!(unreachable, ConnectError::Closed { .. }) {
                    closed += 1;
                } else {
                    closed = 0;
                }
                tracing::warn!(error = %unreachable, "coordinator not ready; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => anyhow::bail!("shut down before the coordinator was ready"),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Keep the list of live replicas fresh for the scheduler (reaping), and the cluster snapshot
/// (leader, roster) for the dashboard.
async fn watch_members(
    coordinator: Coordinator,
    keys: Keys,
    lease_ttl: Duration,
    members: watch::Sender<Vec<Member>>,
    cluster: watch::Sender<ClusterSnapshot>,
    shutdown: CancellationToken,
) {
    let every = (lease_ttl / 2).max(Duration::from_millis(500));
    let mut leaderless_since: Option<std::time::Instant> = None;
    loop {
        match coordinator.list_members(&keys).await {
            Ok(list) => {
                cluster.send_modify(|snapshot| snapshot.observe(&list, Utc::now()));
                members.send_if_modified(|current| {
                    let changed = *current != list;
                    *current = list;
                    changed
                });
            }
            // Keep the last list: an empty one would make every run look abandoned.
            Err(error) => tracing::debug!(error = format!("{error:#}"), "could not list members"),
        }
        // How long the cluster has been without a leader, as the coordinator sees it (0 while
        // one leads).
        if let Ok(leader) = coordinator.current_leader(&keys).await {
            if leader.is_some() {
                leaderless_since = None;
            } else {
                let since = *leaderless_since.get_or_insert_with(std::time::Instant::now);
                metrics::gauge!(metric::LEADERLESS).set(since.elapsed().as_secs_f64());
            }
            cluster.send_modify(|snapshot| snapshot.leader = leader);
        }
        if leaderless_since.is_none() {
            metrics::gauge!(metric::LEADERLESS).set(0.0);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica paused at start past a pool's acquire timeout once exited with "pool timed out"
    /// instead of reading its web key again.
    #[tokio::test(start_paused = true)]
    async fn a_start_up_read_is_retried_while_its_error_passes_and_stops_at_one_that_does_not() {
        let shutdown = CancellationToken::new();
        let mut attempts = 0;
        let read = while_transient("a key", &shutdown, || {
            attempts += 1;
            let answer = if attempts < 3 { Err(sqlx::Error::PoolTimedOut) } else { Ok(attempts) };
            async move { answer }
        });
        assert_eq!(read.await.unwrap(), 3, "two pool timeouts, then the key");

        let mut attempts = 0;
        let refused = while_transient("a key", &shutdown, || {
            attempts += 1;
            async { Err::<(), _>(sqlx::Error::RowNotFound) }
        });
        assert!(refused.await.is_err());
        assert_eq!(attempts, 1, "an error that does not pass is not retried");

        shutdown.cancel();
        let stopped = while_transient("a key", &shutdown, || async { Err::<(), _>(sqlx::Error::PoolTimedOut) });
        assert!(stopped.await.unwrap_err().to_string().contains("shut down before a key could be read"));
    }
}
