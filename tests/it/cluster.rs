//! A cluster of real `tenure run` processes on a throwaway etcd (or ZooKeeper) and PostgreSQL,
//! with jobs that append to a witness file, and the signals fault tests send them.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use tempfile::TempDir;
use tenure::election::Keys;
use tenure::model::RunStatus;
use tenure::store::{Reads, RunRecord, Store};

use crate::checker::{Report, Witness};
use crate::harness::{
    ETCD_PASSWORD, ETCD_USER, Etcd, EtcdCluster, Pki, Postgres, ZooKeeper, free_port, wait_for, wait_until,
};
use crate::proxy::Proxy;

/// The admin token every test replica is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The lease TTL cluster tests run with (etcd is started with a low election timeout).
pub const TTL: Duration = Duration::from_secs(1);

/// The session timeout clusters on ZooKeeper run with. ZooKeeper's leader learns of a session's
/// requests only through the server it reaches, every half tick, so a replica's local deadline
/// falls about half a timeout after its last heartbeat (see `election::zookeeper`): 2 s leaves a
/// loaded two-core machine room for a late heartbeat without ending a term.
pub const ZOOKEEPER_TTL: Duration = Duration::from_secs(2);

/// The furthest ahead of its slot a leader records a run's start (`scheduler::lead_time`'s
/// bound): a leader that stops after recording it may still execute that slot, which is no
/// longer the next leader's to claim.
pub const START_AHEAD: Duration = Duration::from_secs(1);

/// The job file most cluster scenarios run: one job firing every second, witnessed.
pub const TICK: &str = r#"
jobs:
  - name: tick
    schedule: "* * * * * *"
    shell: WITNESS
    timeout: 10s
"#;

/// A shell command for a job that records each execution outside the database.
pub fn witness_command(witness: &std::path::Path) -> String {
    // `date` without LD_PRELOAD: the real clock, even where a test fakes the replica's.
    format!(
        "echo \"$TENURE_JOB $TENURE_SLOT $TENURE_TERM $TENURE_NODE $$ $(LD_PRELOAD= date +%s.%N)\" >> {}",
        witness.display()
    )
}

pub struct Replica {
    pub node: String,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
    /// This replica's own way to its coordinator (etcd, or ZooKeeper's single server) and to
    /// PostgreSQL, when the cluster runs with proxies.
    pub etcd_proxy: Option<Proxy>,
    pub pg_proxy: Option<Proxy>,
}

impl Replica {
    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|child| Pid::from_raw(child.id() as i32))
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How a cluster is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Put a fault proxy between each replica and etcd, and each replica and PostgreSQL.
    pub proxies: bool,
    /// Extra environment for every replica (test switches); `{node}` in a value becomes the
    /// replica's node id, `{port}` its listening port.
    pub env: Vec<(String, String)>,
    /// Run on an etcd cluster of this many members instead of a single one (no etcd proxies).
    pub etcd_members: usize,
    /// Which coordinator the replicas elect their leader in.
    pub coordinator: CoordinatorKind,
    /// Extra flags for one replica, by node id.
    pub replica_args: Vec<(String, Vec<String>)>,
    /// Another lease TTL than `TTL` (etcd only), for a test that freezes a process for longer
    /// than `TTL` allows.
    pub lease_ttl: Option<Duration>,
}

/// The coordinator of a test cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CoordinatorKind {
    #[default]
    Etcd,
    /// ZooKeeper with this many servers (1: standalone; proxies reach only a standalone one).
    ZooKeeper { servers: usize },
}

/// A cluster on TLS-only servers: the throwaway CA and certificates, and how long etcd's
/// authentication tokens (JWTs) live.
pub struct Secure {
    pub pki: Pki,
    pub jwt_ttl: Option<u32>,
}

pub struct Cluster {
    pub etcd: Etcd,
    /// The multi-member etcd the replicas use when `Options::etcd_members` > 1.
    pub etcd_cluster: Option<EtcdCluster>,
    /// The ZooKeeper the replicas use instead of etcd (`Options::coordinator`).
    pub zookeeper: Option<ZooKeeper>,
    pub pg: Postgres,
    pub database_url: String,
    pub dir: TempDir,
    pub jobs_path: PathBuf,
    pub witness_path: PathBuf,
    pub store: Store,
    /// The ledger's read side (rows and terms), on the same pool.
    pub reads: Reads,
    pub replicas: Vec<Replica>,
    election: String,
    options: Options,
    /// TLS-only servers and the secrets replicas read from files (`Cluster::start_secure`).
    pub secure: Option<Secure>,
    /// What the test did when, for a failing scenario's report.
    timeline: std::sync::Mutex<Vec<(chrono::DateTime<chrono::Utc>, String)>>,
}

#[derive(Debug, Deserialize)]
struct Ready {
    role: String,
    term: Option<i64>,
}

impl Cluster {
    /// Start etcd, PostgreSQL and `replicas` tenure processes on `jobs_yaml`, in which the text
    /// `WITNESS` stands for a shell command that appends to the witness file.
    pub async fn start(replicas: usize, jobs_yaml: &str) -> Cluster {
        Cluster::start_with(replicas, jobs_yaml, Options::default()).await
    }

    pub async fn start_with(replicas: usize, jobs_yaml: &str, options: Options) -> Cluster {
        Cluster::start_on(replicas, jobs_yaml, options, None).await
    }

    /// The same cluster on TLS-only servers (see `Secure`): replicas reach etcd over https with
    /// a client certificate and a user, PostgreSQL with verify-full, a client certificate and a
    /// password, and read every secret from a file. With `jwt_ttl`, etcd's auth tokens expire
    /// that many seconds after they are issued.
    pub async fn start_secure(replicas: usize, jobs_yaml: &str, jwt_ttl: Option<u32>) -> Cluster {
        let pki = Pki::generate();
        Cluster::start_on(replicas, jobs_yaml, Options::default(), Some(Secure { pki, jwt_ttl })).await
    }

    /// `start_secure` with `options`: with `CoordinatorKind::ZooKeeper { servers: 1 }`, replicas
    /// elect their leader in a TLS-only ZooKeeper (`tcp+tls://`, a client certificate) instead.
    pub async fn start_secure_with(replicas: usize, jobs_yaml: &str, options: Options) -> Cluster {
        let pki = Pki::generate();
        Cluster::start_on(replicas, jobs_yaml, options, Some(Secure { pki, jwt_ttl: None })).await
    }

    async fn start_on(replicas: usize, jobs_yaml: &str, options: Options, secure: Option<Secure>) -> Cluster {
        let (etcd, pg, database_url) = match &secure {
            None => {
                let pg = Postgres::start().await;
                let url = pg.create_database("tenure").await;
                (Etcd::start().await, pg, url)
            }
            Some(Secure { pki, jwt_ttl }) => {
                let pg = Postgres::start_secure(pki, &pki.server).await;
                pg.create_database("tenure").await;
                let url = pg.create_login("tenure", pki).await;
                pki.file("database-url", &url);
                pki.file("admin-token", &format!("{ADMIN_TOKEN}\n"));
                pki.file("etcd-password", ETCD_PASSWORD);
                (Etcd::start_secure(pki, *jwt_ttl).await, pg, url)
            }
        };
        Cluster::assemble(replicas, jobs_yaml, options, secure, etcd, pg, database_url).await
    }

    /// A cluster whose replicas (and this test's ledger handles) reach the database `pg` holds
    /// through `database_url`, which may lead elsewhere (a service address in front of it).
    pub async fn start_on_database(
        replicas: usize,
        jobs_yaml: &str,
        options: Options,
        pg: Postgres,
        database_url: String,
    ) -> Cluster {
        let etcd = Etcd::start().await;
        Cluster::assemble(replicas, jobs_yaml, options, None, etcd, pg, database_url).await
    }

    async fn assemble(
        replicas: usize,
        jobs_yaml: &str,
        options: Options,
        secure: Option<Secure>,
        etcd: Etcd,
        pg: Postgres,
        database_url: String,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let witness_path = dir.path().join("witness.log");
        fs::write(&witness_path, "").unwrap();
        let jobs_path = dir.path().join("jobs.yaml");
        fs::write(&jobs_path, jobs_yaml.replace("WITNESS", &witness_command(&witness_path))).unwrap();
        let pool = tenure::store::connect(&database_url).await.unwrap();
        // The replicas' `TENURE_TEST_MIGRATE_TO`: the schema an upgrade starts from.
        match options.env.iter().find(|(name, _)| name == "TENURE_TEST_MIGRATE_TO") {
            Some((_, version)) => {
                let mut conn = pool.acquire().await.unwrap();
                let version = version.parse().expect("a migration version");
                sqlx::migrate!("./migrations/postgres").run_to(version, &mut *conn).await.unwrap();
            }
            None => tenure::store::migrate(&pool).await.unwrap(),
        }
        let etcd_cluster = match options.etcd_members {
            0 | 1 => None,
            members => Some(EtcdCluster::start(members).await),
        };
        let zookeeper = match (options.coordinator, &secure) {
            (CoordinatorKind::Etcd, _) => None,
            (CoordinatorKind::ZooKeeper { servers }, None) => Some(ZooKeeper::start_ensemble(servers).await),
            (CoordinatorKind::ZooKeeper { servers }, Some(Secure { pki, .. })) => {
                assert_eq!(servers, 1, "a TLS-only ZooKeeper is a single server");
                Some(ZooKeeper::start_secure(pki).await)
            }
        };
        let mut cluster = Cluster {
            etcd,
            etcd_cluster,
            zookeeper,
            pg,
            database_url,
            dir,
            jobs_path,
            witness_path,
            store: Store::new(pool.clone()),
            reads: Reads::new(pool),
            replicas: Vec::new(),
            election: "test".to_owned(),
            options,
            secure,
            timeline: std::sync::Mutex::new(Vec::new()),
        };
        for _ in 0..replicas {
            cluster.add_replica().await;
        }
        cluster
    }

    /// Start one more replica; returns its index.
    pub async fn add_replica(&mut self) -> usize {
        let index = self.replicas.len();
        let node = format!("node-{index}");
        let port = free_port();
        let log = self.dir.path().join(format!("{node}.log"));
        let (etcd_proxy, pg_proxy) = if self.options.proxies {
            let coordinator_port = match &self.zookeeper {
                Some(zookeeper) => zookeeper.client_port(0),
                None => self.etcd.client_port(),
            };
            let etcd = Proxy::start(([127, 0, 0, 1], coordinator_port).into()).await;
            let pg = Proxy::start(([127, 0, 0, 1], self.pg.port()).into()).await;
            (Some(etcd), Some(pg))
        } else {
            (None, None)
        };
        let mut replica = Replica { node, port, log, child: None, etcd_proxy, pg_proxy };
        self.spawn(&mut replica);
        self.replicas.push(replica);
        index
    }

    fn spawn(&self, replica: &mut Replica) {
        let etcd_url = match (&replica.etcd_proxy, &self.etcd_cluster) {
            (Some(proxy), _) => format!("http://127.0.0.1:{}", proxy.port()),
            (None, Some(members)) => members.client_urls().join(","),
            (None, None) => self.etcd.client_url(),
        };
        let database_url = match &replica.pg_proxy {
            Some(proxy) => self.database_url.replace(&format!(":{}/", self.pg.port()), &format!(":{}/", proxy.port())),
            None => self.database_url.clone(),
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_tenure"));
        command.args(["run", "--jobs"]).arg(&self.jobs_path);
        match (&self.zookeeper, &replica.etcd_proxy) {
            (Some(zookeeper), Some(proxy)) => {
                command.args(["--zookeeper", &format!("{}127.0.0.1:{}", zookeeper.scheme(), proxy.port())])
            }
            (Some(zookeeper), None) => command.args(["--zookeeper", &zookeeper.connect_string()]),
            (None, _) => command.args(["--etcd", &etcd_url]),
        };
        match &self.secure {
            None => {
                command.args(["--database-url", &database_url]).args(["--admin-token", ADMIN_TOKEN]);
            }
            // Every secret from a file (written once in `start_on`: a replica starting meanwhile
            // must never read one half-written), every connection over TLS with a client certificate.
            Some(Secure { pki, .. }) => {
                let secret = |name: &str| pki.dir.path().join(name);
                command
                    .arg("--database-url-file")
                    .arg(secret("database-url"))
                    .arg("--admin-token-file")
                    .arg(secret("admin-token"));
                if self.zookeeper.is_some() {
                    command
                        .arg("--zookeeper-ca")
                        .arg(&pki.ca)
                        .arg("--zookeeper-cert")
                        .arg(&pki.client.cert)
                        .arg("--zookeeper-key")
                        .arg(&pki.client.key);
                    return self.spawn_with(replica, command);
                }
                command
                    .arg("--etcd-ca")
                    .arg(&pki.ca)
                    .arg("--etcd-cert")
                    .arg(&pki.client.cert)
                    .arg("--etcd-key")
                    .arg(&pki.client.key)
                    .args(["--etcd-user", ETCD_USER])
                    .arg("--etcd-password-file")
                    .arg(secret("etcd-password"));
            }
        }
        self.spawn_with(replica, command);
    }

    /// Start `command` (the coordinator, database and secrets chosen) with the replica's own
    /// flags, logging to its log file.
    fn spawn_with(&self, replica: &mut Replica, mut command: Command) {
        let log = fs::OpenOptions::new().create(true).append(true).open(&replica.log).unwrap();
        let child = command
            .envs(self.options.env.iter().map(|(k, v)| {
                (k.clone(), v.replace("{node}", &replica.node).replace("{port}", &replica.port.to_string()))
            }))
            .args(["--node-id", &replica.node])
            .args(["--listen", &format!("127.0.0.1:{}", replica.port)])
            .args(["--lease-ttl", &format!("{}s", self.lease_ttl().as_secs())])
            .args(["--election", &self.election])
            .args(["--shutdown-grace", "5s"])
            .args(self.options.replica_args.iter().filter(|(node, _)| *node == replica.node).flat_map(|(_, args)| args))
            .env("RUST_LOG", "info,tenure=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tenure");
        replica.child = Some(child);
    }

    /// The replicas' lease TTL (etcd) or session timeout (ZooKeeper).
    pub fn lease_ttl(&self) -> Duration {
        match (&self.zookeeper, self.options.lease_ttl) {
            (Some(_), _) => ZOOKEEPER_TTL,
            (None, Some(ttl)) => ttl,
            (None, None) => TTL,
        }
    }

    /// Start a stopped or killed replica again (same node id and port).
    pub fn restart(&mut self, index: usize) {
        let mut replica = std::mem::replace(
            &mut self.replicas[index],
            Replica {
                node: String::new(),
                port: 0,
                log: PathBuf::new(),
                child: None,
                etcd_proxy: None,
                pg_proxy: None,
            },
        );
        if let Some(mut child) = replica.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn(&mut replica);
        self.replicas[index] = replica;
    }

    pub fn signal(&self, index: usize, signal: Signal) {
        let pid = self.replicas[index].pid().expect("replica is running");
        kill(pid, signal).expect("signal replica");
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.replicas[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the process to exit.
    pub async fn terminate(&mut self, index: usize) {
        self.signal(index, Signal::SIGTERM);
        self.wait_exited(index).await;
    }

    /// Wait for a replica that was sent SIGTERM to exit.
    pub async fn wait_exited(&mut self, index: usize) {
        let replica = &mut self.replicas[index];
        let what = format!("{} to exit after SIGTERM", replica.node);
        wait_for(&what, Duration::from_secs(20), || {
            let exited = !replica.is_running();
            async move { exited }
        })
        .await;
        replica.child = None;
    }

    async fn ready(&self, index: usize) -> Option<Ready> {
        let url = format!("http://127.0.0.1:{}/readyz", self.replicas[index].port);
        // The dashboard's thread runs at a lower priority: on a loaded machine an answer may take
        // a while, and a slow answer is not "not the leader".
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
        client.get(url).send().await.ok()?.json().await.ok()
    }

    /// The base URL of a replica's HTTP server.
    pub fn url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.replicas[index].port)
    }

    /// The replicas that believe they lead, with their terms.
    pub async fn leaders(&self) -> Vec<(usize, i64)> {
        let mut leaders = Vec::new();
        for index in 0..self.replicas.len() {
            if self.replicas[index].child.is_none() {
                continue;
            }
            if let Some(ready) = self.ready(index).await {
                if ready.role == "leader" {
                    leaders.push((index, ready.term.unwrap_or_default()));
                }
            }
        }
        leaders
    }

    /// Whether every running replica answers that it does not lead (one that does not answer
    /// may still lead).
    pub async fn all_follow(&self) -> bool {
        for index in (0..self.replicas.len()).filter(|&i| self.is_up(i)) {
            if self.ready(index).await.is_none_or(|ready| ready.role == "leader") {
                return false;
            }
        }
        true
    }

    /// Wait until exactly one replica leads and has raised the fence to its term.
    pub async fn wait_for_leader(&self, timeout: Duration) -> (usize, i64) {
        let found = std::cell::Cell::new(None);
        let led = wait_until(timeout, || async {
            let leaders = self.leaders().await;
            if let [(index, term)] = leaders[..] {
                if self.store.fence().await.is_ok_and(|fence| fence.term == term) {
                    found.set(Some((index, term)));
                    return true;
                }
            }
            false
        })
        .await;
        assert!(led, "no single leader with the fence raised after {timeout:?}\n{}", self.logs());
        found.get().unwrap()
    }

    /// Wait until the witness shows an execution by a term other than `old_term`; returns when.
    pub async fn wait_for_execution_by_new_term(&self, old_term: i64, timeout: Duration) -> Instant {
        let ran = wait_until(timeout, || async { self.witness().iter().any(|w| w.term > old_term) }).await;
        assert!(ran, "no execution in a term after {old_term} within {timeout:?}\n{}", self.logs());
        Instant::now()
    }

    /// Let the cluster run until the witness holds at least `count` executions more than now
    /// (of any job), allowing 2 s per execution and 10 s more for a hand-over.
    pub async fn let_it_tick(&self, count: usize) {
        let target = self.witness().len() + count;
        wait_for("the jobs to keep firing", Duration::from_secs(10 + count as u64 * 2), || async {
            self.witness().len() >= target
        })
        .await;
    }

    pub fn witness(&self) -> Vec<Witness> {
        Witness::read(&self.witness_path)
    }

    pub async fn ledger(&self) -> Vec<RunRecord> {
        self.reads.all_runs().await.expect("read ledger")
    }

    /// Wait until no run of a term below the fence is still `running`: the leader has reaped what
    /// vanished replicas left (their supervisors killed those runs, some before the job wrote its
    /// witness line), so a verdict judges the ledger as it settles, not a moment before.
    pub async fn wait_for_reaped(&self, timeout: Duration) {
        wait_for("the runs of vanished replicas to be reaped", timeout, || async {
            let Ok(fence) = self.store.fence().await else { return false };
            !self.ledger().await.iter().any(|run| run.status == RunStatus::Running && run.term < fence.term)
        })
        .await;
    }

    /// Replace the job file (the replicas reload it within about a second).
    pub fn write_jobs(&self, jobs_yaml: &str) {
        let text = jobs_yaml.replace("WITNESS", &witness_command(&self.witness_path));
        let temporary = self.dir.path().join("jobs.yaml.new");
        fs::write(&temporary, text).unwrap();
        fs::rename(&temporary, &self.jobs_path).unwrap();
    }

    /// Note a fault or step in the scenario's timeline.
    pub fn event(&self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("[{}] {what}", chrono::Utc::now().format("%H:%M:%S%.3f"));
        self.timeline.lock().unwrap().push((chrono::Utc::now(), what));
    }

    pub fn is_up(&self, index: usize) -> bool {
        self.replicas[index].child.is_some()
    }

    /// (e) After healing: exactly one leader with the fence raised, every running replica names
    /// the same leader, and no election key is left of a candidate that is gone. The leader is
    /// looked at again on every round: a hand-over while the cluster settles (a loaded machine,
    /// a one-second lease) is no failure, as long as the cluster comes to rest within `timeout`.
    pub async fn assert_healed(&self, timeout: Duration) -> (usize, i64) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        let settled = std::cell::Cell::new(None);
        let last_seen = std::cell::RefCell::new(String::from("nothing answered"));
        let agreed = wait_until(timeout, || async {
            let leaders = self.leaders().await;
            let fence = self.store.fence().await.ok().map(|fence| fence.term);
            let mut seen = format!("leaders (replica, term) {leaders:?}, fence {fence:?}");
            let mut agree = false;
            if let [(leader, term)] = leaders[..] {
                let leader_node = self.replicas[leader].node.as_str();
                agree = fence == Some(term);
                for index in (0..self.replicas.len()).filter(|&i| self.is_up(i)) {
                    let url = format!("{}/api/cluster", self.url(index));
                    let view: Result<serde_json::Value, String> = async {
                        let response = client.get(&url).send().await.map_err(|error| error.to_string())?;
                        response.json().await.map_err(|error| error.to_string())
                    }
                    .await;
                    let named = match &view {
                        Ok(view) => view["leader"]["node"].to_string(),
                        Err(error) => format!("no view: {error}"),
                    };
                    agree &= view.is_ok_and(|view| view["leader"]["node"] == leader_node);
                    seen.push_str(&format!("; {} names {named}", self.replicas[index].node));
                }
                if agree {
                    settled.set(Some((leader, term)));
                }
            }
            *last_seen.borrow_mut() = seen;
            agree
        })
        .await;
        assert!(
            agreed,
            "no single leader all replicas agree on after {timeout:?}; last seen: {}\n{}",
            last_seen.borrow(),
            self.logs()
        );
        let (leader, term) = settled.get().unwrap();
        let live: Vec<String> =
            (0..self.replicas.len()).filter(|&i| self.is_up(i)).map(|i| self.replicas[i].node.clone()).collect();
        let keys = Keys::new(&self.election);
        if let Some(zookeeper) = &self.zookeeper {
            let clean = wait_until(timeout, || async {
                let candidates = zookeeper_election_values(zookeeper, &keys).await;
                candidates.is_some_and(|values| values.iter().all(|value| live.contains(value)))
            })
            .await;
            assert!(clean, "candidate znodes of gone replicas are left over");
            return (leader, term);
        }
        let clean = wait_until(timeout, || async {
            let urls = match &self.etcd_cluster {
                Some(members) => members.client_urls(),
                None => vec![self.etcd.client_url()],
            };
            let Ok(mut client) = etcd_client::Client::connect(urls, Some(self.etcd.connect_options())).await else {
                return false;
            };
            let prefix = format!("{}/", keys.election());
            let Ok(response) = client.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await else {
                return false;
            };
            response.kvs().iter().all(|kv| live.iter().any(|node| node.as_bytes() == kv.value()))
        })
        .await;
        assert!(clean, "election keys of gone candidates are left over");
        (leader, term)
    }

    /// Pass the checker's report, or leave a report directory (witness, ledger, terms, logs,
    /// timeline) that outlives the test, and fail with its path.
    pub async fn verdict(&mut self, report: &Report) {
        if report.is_clean() {
            return;
        }
        let dir = self.dir.path().join("report");
        fs::create_dir_all(&dir).unwrap();
        let _ = fs::copy(&self.witness_path, dir.join("witness.log"));
        let ledger = self.reads.all_runs().await.unwrap_or_default();
        fs::write(dir.join("ledger.json"), serde_json::to_string_pretty(&ledger).unwrap()).unwrap();
        let terms = self.reads.terms().await.unwrap_or_default();
        fs::write(dir.join("terms.json"), serde_json::to_string_pretty(&terms).unwrap()).unwrap();
        for replica in &self.replicas {
            let _ = fs::copy(&replica.log, dir.join(format!("{}.log", replica.node)));
        }
        let timeline: String =
            self.timeline.lock().unwrap().iter().map(|(at, what)| format!("{} {what}\n", at.to_rfc3339())).collect();
        fs::write(dir.join("timeline.txt"), timeline).unwrap();
        fs::write(dir.join("report.txt"), format!("{report:#?}")).unwrap();
        // Keep the directory: swap in a fresh one to be removed instead.
        let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
        // The summary last: a log cut short keeps its end.
        panic!("{report:#?}\nguarantee broken ({}); report in {}", report.summary(), kept.join("report").display());
    }

    /// Every replica's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for replica in &self.replicas {
            let text = fs::read_to_string(&replica.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            all.push_str(&format!("--- {} ---\n", replica.node));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }
}

/// The values (node ids) of every candidate znode under the election, or None when ZooKeeper
/// does not answer.
async fn zookeeper_election_values(zookeeper: &ZooKeeper, keys: &Keys) -> Option<Vec<String>> {
    let servers = zookeeper.connect_string();
    let connect = zookeeper.connector().with_session_timeout(Duration::from_secs(2)).connect(&servers);
    let client = tokio::time::timeout(Duration::from_secs(3), connect).await.ok()?.ok()?;
    let children = client.list_children(keys.election()).await.ok()?;
    let mut values = Vec::new();
    for child in children {
        let (data, _) = client.get_data(&format!("{}/{child}", keys.election())).await.ok()?;
        values.push(String::from_utf8_lossy(&data).into_owned());
    }
    Some(values)
}
