//! Throwaway etcd, ZooKeeper and PostgreSQL servers on free loopback ports in temporary
//! directories, with the faults later tests inject (stop, kill, pause, restart). Every server is killed on drop,
//! also when the test panics.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// A port nobody listens on right now, handed out once per process, from below the kernel's
/// ephemeral range (32768 and up by default): a port from `bind(:0)` could meanwhile become the
/// source port of some outgoing connection and a replica started on it would find it taken.
/// Another process may still take it before we bind; starters retry on "address in use".
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let seed = std::process::id().wrapping_mul(7_919) % SPAN;
    let _ = NEXT.compare_exchange(u32::MAX, seed, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Wait until `condition` holds, checking every 50 ms; panic with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !wait_until(timeout, condition).await {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Whether `condition` came to hold within `timeout`, checking every 50 ms. A check that hangs
/// (a request without an answer) counts as not holding once the deadline has passed, with at
/// least 5 s of its own, so a wait ends however its checks behave.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let allowed = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5));
        if tokio::time::timeout(allowed, condition()).await.unwrap_or(false) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a process is gone: no `/proc` entry, or a zombie (dead, waiting to be reaped).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(30).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn signal(child: &Option<Child>, signal: Signal) {
    if let Some(child) = child {
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
    }
}

fn reap(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Raft timing of an etcd member, in milliseconds.
#[derive(Clone, Copy)]
struct RaftTiming {
    election_timeout: u32,
    heartbeat_interval: u32,
}

impl RaftTiming {
    /// A lone member elects itself at once; low values let a 1 s lease TTL work.
    const LONE_MEMBER: RaftTiming = RaftTiming { election_timeout: 100, heartbeat_interval: 10 };
    /// Members of a cluster talk over loopback under test load: room enough not to flap.
    const CLUSTER_MEMBER: RaftTiming = RaftTiming { election_timeout: 300, heartbeat_interval: 30 };
}

/// One etcd member to start. [`Etcd`] and [`EtcdCluster`] both start theirs through
/// [`spawn_etcd`], so the two cannot drift apart in how etcd is run.
struct EtcdLaunch<'a> {
    name: &'a str,
    data_dir: PathBuf,
    client_url: String,
    peer_port: u16,
    /// `--initial-cluster`: every member as `name=peer-url`, this one included.
    initial_cluster: String,
    timing: RaftTiming,
    /// TLS and client-certificate flags, for a secure `Etcd`.
    tls_args: Vec<String>,
    /// Standard output and error are appended here.
    log: PathBuf,
}

fn spawn_etcd(launch: EtcdLaunch<'_>) -> Child {
    let log = fs::OpenOptions::new().create(true).append(true).open(&launch.log).unwrap();
    let peer = format!("http://127.0.0.1:{}", launch.peer_port);
    Command::new("etcd")
        .args(launch.tls_args)
        .arg(format!("--name={}", launch.name))
        .arg(format!("--data-dir={}", launch.data_dir.display()))
        .arg(format!("--listen-client-urls={}", launch.client_url))
        .arg(format!("--advertise-client-urls={}", launch.client_url))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={}", launch.initial_cluster))
        .arg("--initial-cluster-state=new")
        .arg(format!("--election-timeout={}", launch.timing.election_timeout))
        .arg(format!("--heartbeat-interval={}", launch.timing.heartbeat_interval))
        .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start etcd (is etcd-server installed? scripts/test installs it)")
}

/// A single-member etcd. Started with a low election timeout so a 1 s lease TTL works.
pub struct Etcd {
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// TLS-only with client certificates and authentication (`Etcd::start_secure`).
    secure: Option<SecureEtcd>,
}

impl Etcd {
    pub async fn start() -> Etcd {
        let mut dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let mut etcd = Etcd { client_port: free_port(), peer_port: free_port(), child: None, dir, secure: None };
            etcd.spawn();
            if etcd.wait_ready(Duration::from_secs(15)).await {
                return etcd;
            }
            reap(&mut etcd.child);
            dir = std::mem::replace(&mut etcd.dir, tempfile::tempdir().unwrap());
            let _ = fs::remove_dir_all(dir.path().join("data"));
        }
        panic!("etcd did not start");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        self.child = Some(spawn_etcd(EtcdLaunch {
            name: "test",
            data_dir: self.dir.path().join("data"),
            client_url: self.client_url(),
            peer_port: self.peer_port,
            initial_cluster: format!("test={peer}"),
            timing: RaftTiming::LONE_MEMBER,
            tls_args: self.secure.as_ref().map(SecureEtcd::server_args).unwrap_or_default(),
            log: self.log_path(),
        }));
    }

    async fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if self.answers().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Whether etcd answers a status request within half a second.
    pub async fn answers(&self) -> bool {
        let options = self.connect_options().with_connect_timeout(Duration::from_millis(300));
        let attempt = async {
            let mut client = etcd_client::Client::connect([self.client_url()], Some(options)).await.ok()?;
            client.status().await.ok()
        };
        matches!(tokio::time::timeout(Duration::from_millis(500), attempt).await, Ok(Some(_)))
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn client_url(&self) -> String {
        let scheme = if self.secure.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// How a test client reaches this etcd: plain, or with the CA, a client certificate and the
    /// root user once authentication is on.
    pub fn connect_options(&self) -> etcd_client::ConnectOptions {
        match &self.secure {
            None => etcd_client::ConnectOptions::new(),
            Some(secure) => secure.client_options(),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        signal(&self.child, Signal::SIGTERM);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) {
        reap(&mut self.child);
    }

    pub fn pause(&self) {
        signal(&self.child, Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(&self.child, Signal::SIGCONT);
    }

    /// Start again on the same ports and data directory, and wait until it answers.
    pub async fn restart(&mut self) {
        reap(&mut self.child);
        self.spawn();
        if !self.wait_ready(Duration::from_secs(15)).await {
            panic!("etcd did not restart:\n{}", tail(&self.log_path()));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        signal(&self.child, Signal::SIGCONT);
        reap(&mut self.child);
    }
}

/// A three-member (or n-member) etcd cluster on loopback, for killing the etcd leader.
pub struct EtcdCluster {
    dir: TempDir,
    members: Vec<EtcdMember>,
}

struct EtcdMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdMember {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

impl EtcdCluster {
    pub async fn start(size: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let members = (0..size)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster { dir, members };
        for index in 0..size {
            cluster.spawn(index);
        }
        let urls = cluster.client_urls();
        wait_for("the etcd cluster to answer", Duration::from_secs(30), || async {
            let options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_millis(300));
            let Ok(Ok(mut client)) =
                tokio::time::timeout(Duration::from_secs(1), etcd_client::Client::connect(&urls, Some(options))).await
            else {
                return false;
            };
            matches!(tokio::time::timeout(Duration::from_secs(1), client.put("ready", "1", None)).await, Ok(Ok(_)))
        })
        .await;
        cluster
    }

    fn spawn(&mut self, index: usize) {
        let initial: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        let member = &self.members[index];
        let child = spawn_etcd(EtcdLaunch {
            name: &member.name,
            data_dir: self.dir.path().join(&member.name),
            client_url: member.client_url(),
            peer_port: member.peer_port,
            initial_cluster: initial.join(","),
            timing: RaftTiming::CLUSTER_MEMBER,
            tls_args: Vec::new(),
            log: self.dir.path().join(format!("{}.log", member.name)),
        });
        self.members[index].child = Some(child);
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }

    /// The member that is the raft leader now, as the members themselves report it.
    pub async fn leader(&self) -> Option<usize> {
        for (index, member) in self.members.iter().enumerate() {
            if member.child.is_none() {
                continue;
            }
            let attempt = async {
                let mut client = etcd_client::Client::connect([member.client_url()], None).await.ok()?;
                let status = client.status().await.ok()?;
                let own = status.header()?.member_id();
                Some(status.leader() == own)
            };
            if let Ok(Some(true)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
                return Some(index);
            }
        }
        None
    }

    pub fn kill(&mut self, index: usize) {
        reap(&mut self.members[index].child);
    }

    /// Start a killed member again on its data directory (it rejoins the cluster): the same
    /// flags, as etcd ignores the initial-cluster settings once a data directory exists.
    pub fn restart(&mut self, index: usize) {
        reap(&mut self.members[index].child);
        self.spawn(index);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            reap(&mut member.child);
        }
    }
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Run a PostgreSQL tool directly as the unprivileged `postgres` user when we are root (initdb
/// refuses to run as root). No `runuser` in between, so signals reach the server itself.
fn as_postgres(tool: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(format!("{PG_BIN}/{tool}"));
    if nix::unistd::geteuid().is_root() {
        let user =
            nix::unistd::User::from_name("postgres").ok().flatten().expect("a `postgres` user to run PostgreSQL as");
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    command
}

/// Make a fresh database cluster in `data` (not there yet), as `initdb` does. The suite starts
/// a server for most of its tests, and `initdb` costs about a second of CPU each time: the
/// cluster is copied instead from one made once per PostgreSQL version in cargo's scratch
/// directory for tests (`CARGO_TARGET_TMPDIR`), and made in place where there is none (the
/// benchmarks, which include this file).
fn new_cluster(data: &Path) {
    match cluster_template() {
        Some(template) => {
            // `-a`: the files keep their owner (the `postgres` user, when we are root) and modes.
            let status = Command::new("cp").arg("-a").arg(template).arg(data).status().expect("run cp");
            assert!(status.success(), "copy the template cluster {} to {}", template.display(), data.display());
        }
        None => initdb(data),
    }
}

fn initdb(data: &Path) {
    let output = as_postgres("initdb")
        .args(["--auth=trust", "--username=postgres", "--no-sync", "--encoding=UTF8", "--locale=C", "-D"])
        .arg(data)
        .output()
        .expect("run initdb (is PostgreSQL 15 installed? scripts/test installs it)");
    assert!(output.status.success(), "initdb failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// The template cluster, made by the first test that needs it. `initdb` runs in a temporary
/// directory the `postgres` user can reach (it may not reach the checkout), and the result is
/// copied under the scratch directory and renamed into place, so a test process finds either no
/// template or a whole one. Its name carries `initdb --version`: another PostgreSQL makes its own.
fn cluster_template() -> Option<&'static Path> {
    static TEMPLATE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let scratch = Path::new(option_env!("CARGO_TARGET_TMPDIR")?);
            let version = Command::new(format!("{PG_BIN}/initdb")).arg("--version").output().ok()?;
            let version: String = String::from_utf8_lossy(&version.stdout)
                .trim()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
                .collect();
            let template = scratch.join(format!("postgres-template-{version}"));
            if template.join("PG_VERSION").exists() {
                return Some(template);
            }
            let made = Postgres::server_dir();
            initdb(&made.path().join("data"));
            let partial = scratch.join(format!("postgres-template-{version}.{}", std::process::id()));
            let copied = Command::new("cp").arg("-a").arg(made.path().join("data")).arg(&partial).status().ok()?;
            if !copied.success() || fs::rename(&partial, &template).is_err() {
                // Another process put its template in place first (or the copy failed).
                let _ = fs::remove_dir_all(&partial);
            }
            template.join("PG_VERSION").exists().then_some(template)
        })
        .as_deref()
}

/// A throwaway PostgreSQL 15 on 127.0.0.1, fsync off.
pub struct Postgres {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    /// fsync on (benchmarks), or off (tests: a killed server still loses nothing the kernel has).
    durable: bool,
    /// TLS only (`Postgres::start_secure`).
    secure: Option<SecurePostgres>,
    /// A standby's WAL receiver this harness froze (SIGSTOP): continued before the server is
    /// stopped, or a frozen child would hold its shutdown up.
    frozen_walreceiver: Option<Pid>,
}

impl Postgres {
    pub async fn start() -> Postgres {
        Postgres::start_with(false).await
    }

    /// A server with fsync on, as production runs it (benchmarks).
    #[allow(dead_code)] // used by examples/bench.rs, which includes this file
    pub async fn start_durable() -> Postgres {
        Postgres::start_with(true).await
    }

    async fn start_with(durable: bool) -> Postgres {
        Postgres::start_in(Postgres::initdb(""), durable).await
    }

    /// A primary that streams its WAL to standbys (`Postgres::start_standby`): WAL for a
    /// replica, WAL senders, hot standbys, and replication connections from loopback trusted.
    pub async fn start_primary() -> Postgres {
        let settings = "wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\n";
        let dir = Postgres::initdb(settings);
        let hba = dir.path().join("data/pg_hba.conf");
        let mut rules = fs::read_to_string(&hba).unwrap();
        rules.push_str("host replication all 127.0.0.1/32 trust\n");
        fs::write(&hba, rules).unwrap();
        Postgres::start_in(dir, false).await
    }

    /// A temporary directory the server's user owns (initdb and the server refuse to run as
    /// root), world-readable so this process reaches the socket and log.
    fn server_dir() -> TempDir {
        let dir = tempfile::Builder::new().prefix("tenure-pg").tempdir().expect("temp dir");
        if nix::unistd::geteuid().is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
            assert!(status.success(), "chown the temp dir to postgres");
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    /// A fresh cluster in `data` of a new `server_dir`, with `settings` appended to its
    /// postgresql.conf.
    fn initdb(settings: &str) -> TempDir {
        let dir = Postgres::server_dir();
        let data = dir.path().join("data");
        new_cluster(&data);
        if !settings.is_empty() {
            let mut conf = fs::read_to_string(data.join("postgresql.conf")).unwrap();
            conf.push_str(settings);
            fs::write(data.join("postgresql.conf"), conf).unwrap();
        }
        dir
    }

    /// Start a server on the data directory in `dir`, on a free port; wait until it answers.
    async fn start_in(mut dir: TempDir, durable: bool) -> Postgres {
        for _ in 0..5 {
            let mut pg =
                Postgres { dir, port: free_port(), child: None, durable, secure: None, frozen_walreceiver: None };
            pg.spawn();
            if pg.wait_ready(Duration::from_secs(20)).await {
                return pg;
            }
            // Most likely another process took the port: same data, another port.
            pg.stop_immediate();
            dir = std::mem::replace(&mut pg.dir, tempfile::tempdir().unwrap());
        }
        panic!("postgres did not start");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn spawn(&mut self) {
        let log_path = self.log_path();
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        if nix::unistd::geteuid().is_root() {
            let _ = Command::new("chown").args(["postgres:postgres"]).arg(&log_path).status();
        }
        let child = as_postgres("postgres")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.dir.path())
            // fsync off only: a killed server loses nothing the kernel already has, and every commit
            // reaches the kernel before it is acknowledged (synchronous_commit stays on).
            .args(if self.durable {
                ["-c", "fsync=on", "-c", "full_page_writes=on"]
            } else {
                ["-c", "fsync=off", "-c", "full_page_writes=off"]
            })
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if self.answers().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Whether `select 1` answers within a second.
    pub async fn answers(&self) -> bool {
        use sqlx::Connection;
        let attempt = async {
            let mut conn = sqlx::PgConnection::connect(&self.url()).await.ok()?;
            sqlx::query("SELECT 1").execute(&mut conn).await.ok()
        };
        matches!(tokio::time::timeout(Duration::from_secs(1), attempt).await, Ok(Some(_)))
    }

    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` on this server, as the superuser.
    pub fn url_of(&self, database: &str) -> String {
        match &self.secure {
            None => format!("postgres://postgres@127.0.0.1:{}/{database}", self.port),
            Some(secure) => format!(
                "postgres://postgres@127.0.0.1:{}/{database}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
                self.port,
                secure.ca.display(),
                secure.admin.cert.display(),
                secure.admin.key.display()
            ),
        }
    }

    /// A new empty database; returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url()).await.expect("connect to postgres");
        let statement = format!("CREATE DATABASE \"{name}\"");
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.expect("create database");
        self.url_of(name)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    fn stop_with(&mut self, signal_to_send: Signal) {
        if let Some(walreceiver) = self.frozen_walreceiver.take() {
            let _ = kill(walreceiver, Signal::SIGCONT);
        }
        signal(&self.child, Signal::SIGCONT);
        signal(&self.child, signal_to_send);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Fast shutdown (SIGINT): roll back sessions, checkpoint, exit.
    pub fn stop_fast(&mut self) {
        self.stop_with(Signal::SIGINT);
    }

    /// Immediate shutdown (`pg_ctl -m immediate`, SIGQUIT): no checkpoint, crash recovery on start.
    pub fn stop_immediate(&mut self) {
        self.stop_with(Signal::SIGQUIT);
    }

    pub fn kill(&mut self) {
        signal(&self.child, Signal::SIGKILL);
        reap(&mut self.child);
        // Orphaned backends keep the shared memory; the immediate restart handles it.
    }

    pub fn pause(&self) {
        signal(&self.child, Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(&self.child, Signal::SIGCONT);
    }

    /// Start again on the same port and data directory; wait until it answers.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop_fast();
        }
        let _ = fs::remove_file(self.dir.path().join("data/postmaster.pid"));
        self.spawn();
        if !self.wait_ready(Duration::from_secs(30)).await {
            panic!("postgres did not restart:\n{}", tail(&self.log_path()));
        }
    }
}

// ---- Streaming replication: a primary, a standby, the standby's WAL receiver, a promotion ----

impl Postgres {
    /// A streaming standby of this primary (`Postgres::start_primary`): `pg_basebackup -R`
    /// into a directory of its own (it writes `standby.signal` and `primary_conninfo`), named
    /// `name` (the conninfo's `application_name`, what `synchronous_standby_names` matches), on a
    /// port of its own. Returned once the primary sees it streaming, asynchronously.
    pub async fn start_standby(&self, name: &str) -> Postgres {
        let dir = Postgres::server_dir();
        let data = dir.path().join("data");
        let output = as_postgres("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            // `-R`: standby.signal and primary_conninfo; a fast checkpoint, not a spread one.
            .args(["-R", "-X", "stream", "--checkpoint=fast", "-D"])
            .arg(&data)
            .output()
            .expect("run pg_basebackup");
        assert!(output.status.success(), "pg_basebackup failed: {}", String::from_utf8_lossy(&output.stderr));
        let auto = data.join("postgresql.auto.conf");
        let conf = fs::read_to_string(&auto).unwrap();
        assert!(conf.contains("primary_conninfo = '"), "pg_basebackup -R wrote no primary_conninfo:\n{conf}");
        let named = conf.replacen("primary_conninfo = '", &format!("primary_conninfo = 'application_name={name} "), 1);
        fs::write(&auto, named).unwrap();
        let standby = Postgres::start_in(dir, false).await;
        let streaming = wait_until(Duration::from_secs(20), || async {
            self.replication_state(name).await.is_some_and(|(state, _)| state == "streaming")
        })
        .await;
        assert!(streaming, "standby {name} does not stream:\n{}", tail(&standby.log_path()));
        standby
    }

    /// How this primary sees standby `name`: its `state` and `sync_state` in
    /// `pg_stat_replication`, or None when it is not connected.
    pub async fn replication_state(&self, name: &str) -> Option<(String, String)> {
        use sqlx::Connection;
        let attempt = async {
            let mut conn = sqlx::PgConnection::connect(&self.url()).await.ok()?;
            sqlx::query_as("SELECT state, sync_state FROM pg_stat_replication WHERE application_name = $1")
                .bind(name)
                .fetch_optional(&mut conn)
                .await
                .ok()?
        };
        tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten()
    }

    /// Make standby `name` synchronous: from now on a commit returns only once that standby has
    /// flushed it. Only once it streams (set before, every commit would wait for it forever).
    pub async fn require_synchronous(&self, name: &str) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url()).await.expect("connect to the primary");
        let statement = format!("ALTER SYSTEM SET synchronous_standby_names = '{name}'");
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.expect("name the synchronous standby");
        sqlx::query("SELECT pg_reload_conf()").execute(&mut conn).await.expect("reload the configuration");
        let what = format!("standby {name} to be synchronous");
        wait_for(&what, Duration::from_secs(10), || async {
            self.replication_state(name).await.is_some_and(|(_, sync)| sync == "sync")
        })
        .await;
    }

    /// The pid of this standby's WAL receiver (`pg_stat_wal_receiver`), once it has one.
    async fn walreceiver_pid(&self) -> Pid {
        use sqlx::Connection;
        let found = std::cell::Cell::new(None);
        wait_for("the standby's WAL receiver", Duration::from_secs(10), || async {
            let attempt = async {
                let mut conn = sqlx::PgConnection::connect(&self.url()).await.ok()?;
                sqlx::query_scalar::<_, i32>("SELECT pid FROM pg_stat_wal_receiver")
                    .fetch_optional(&mut conn)
                    .await
                    .ok()?
            };
            found.set(tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten());
            found.get().is_some()
        })
        .await;
        Pid::from_raw(found.get().unwrap())
    }

    /// SIGSTOP this standby's WAL receiver: the primary's commits stop reaching it (they wait in
    /// kernel buffers it does not read), and an asynchronous primary commits on regardless.
    pub async fn freeze_walreceiver(&mut self) {
        assert!(self.frozen_walreceiver.is_none(), "the WAL receiver is already frozen");
        let pid = self.walreceiver_pid().await;
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP the WAL receiver");
        self.frozen_walreceiver = Some(pid);
    }

    pub fn walreceiver_frozen(&self) -> bool {
        self.frozen_walreceiver.is_some()
    }

    /// SIGCONT the frozen WAL receiver: it reads on where it stopped.
    pub fn thaw_walreceiver(&mut self) {
        let pid = self.frozen_walreceiver.take().expect("a frozen WAL receiver");
        let _ = kill(pid, Signal::SIGCONT);
    }

    /// SIGKILL the frozen WAL receiver, discarding what the primary sent that it never read, and
    /// wait until the standby serves again. A promotion waits for the WAL receiver to stop,
    /// which a frozen one never does, and a thawed one may first read what the kernel buffered
    /// (on loopback, the whole gap). Killed, it takes the standby's other processes with it
    /// (PostgreSQL restarts them all after a child's crash), and the standby recovers from its
    /// own WAL: exactly what it had received before the freeze.
    pub async fn kill_frozen_walreceiver(&mut self) {
        const READY: &str = "ready to accept read-only connections";
        let log = self.log_path();
        let ready_before = fs::read_to_string(&log).unwrap_or_default().matches(READY).count();
        let pid = self.frozen_walreceiver.take().expect("a frozen WAL receiver");
        kill(pid, Signal::SIGKILL).expect("SIGKILL the WAL receiver");
        let recovered = wait_until(Duration::from_secs(30), || {
            let ready = fs::read_to_string(&log).unwrap_or_default().matches(READY).count();
            async move { ready > ready_before }
        })
        .await;
        assert!(recovered, "the standby did not serve again after its WAL receiver was killed:\n{}", tail(&log));
        wait_for("the recovered standby to answer", Duration::from_secs(10), || self.answers()).await;
    }

    /// Promote this standby to a primary (`pg_promote`, waiting for it), on a new timeline with
    /// what it has.
    pub async fn promote(&self) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url()).await.expect("connect to the standby");
        let promoted: bool =
            sqlx::query_scalar("SELECT pg_promote(true, 30)").fetch_one(&mut conn).await.expect("promote");
        assert!(promoted, "the standby was not promoted within 30 s:\n{}", tail(&self.log_path()));
        let recovering: bool =
            sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await.expect("read the role");
        assert!(!recovering, "promoted, yet still in recovery");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}

// ---- TLS: a throwaway CA and servers that take only TLS (tests/it/tls.rs) ----

/// The etcd user replicas authenticate as, and its password (also given in a file).
pub const ETCD_USER: &str = "tenure";
pub const ETCD_PASSWORD: &str = "etcd-pw-3f9a1c";
/// The PostgreSQL role replicas log in as (client certificate with this CN, and a password).
pub const PG_USER: &str = "tenure";
pub const PG_PASSWORD: &str = "pg-pw-7be2d4";
const ETCD_ROOT_PASSWORD: &str = "etcd-root-pw";

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A throwaway CA with the certificates the TLS tests need, generated with rcgen. Every name
/// certificate carries a `localhost` DNS SAN and a 127.0.0.1 IP SAN (rustls checks names).
#[derive(Debug)]
pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    /// A CA that signed nothing here: trusting it instead of `ca` must fail.
    pub other_ca: PathBuf,
    pub server: CertFiles,
    /// The same names, valid only in 2020.
    pub expired_server: CertFiles,
    /// CN `tenure`: the replicas' client certificate (etcd and PostgreSQL).
    pub client: CertFiles,
    /// CN `tenure`, valid only in 2020.
    pub expired_client: CertFiles,
    /// CN `postgres`: the harness's own administrative connections.
    pub admin: CertFiles,
    /// An ES256 key pair for etcd's JWT tokens (`cert` holds the public key).
    pub jwt_keys: CertFiles,
}

impl Pki {
    pub fn generate() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let dir = tempfile::Builder::new().prefix("tenure-pki").tempdir().expect("temp dir");
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            fs::write(&path, text).unwrap();
            path
        };
        let new_ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = new_ca("tenure test CA");
        let (other_pem, _) = new_ca("some other CA");
        let issue = |name: &str, common_name: &str, expired: bool| {
            let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, common_name);
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2020, 12, 31);
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            CertFiles {
                cert: write(&format!("{name}.crt"), cert.pem()),
                key: write(&format!("{name}.key"), key.serialize_pem()),
            }
        };
        let server = issue("server", "localhost", false);
        let expired_server = issue("expired-server", "localhost", true);
        let client = issue("client", PG_USER, false);
        let expired_client = issue("expired-client", PG_USER, true);
        let admin = issue("admin", "postgres", false);
        let ca = write("ca.crt", ca_pem);
        let other_ca = write("other-ca.crt", other_pem);
        let jwt = KeyPair::generate().unwrap();
        let jwt_keys =
            CertFiles { cert: write("jwt.pub", jwt.public_key_pem()), key: write("jwt.key", jwt.serialize_pem()) };
        Pki { dir, ca, other_ca, server, expired_server, client, expired_client, admin, jwt_keys }
    }

    /// Write `text` to a file in the PKI's directory (secrets for `--*-file` flags).
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap();
        path
    }
}

/// What makes an `Etcd` secure: its certificates and the root user's credentials.
struct SecureEtcd {
    ca: PathBuf,
    server: CertFiles,
    client: CertFiles,
    /// JWT tokens that expire this many seconds after they are issued, however much they are
    /// used; etcd's default "simple" tokens live 300 s from their *last* use, so an active
    /// client never sees one expire.
    jwt_ttl: Option<u32>,
    jwt_keys: CertFiles,
    /// Set once authentication is on.
    root_password: Option<&'static str>,
}

impl SecureEtcd {
    fn server_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--cert-file={}", self.server.cert.display()),
            format!("--key-file={}", self.server.key.display()),
            format!("--trusted-ca-file={}", self.ca.display()),
            "--client-cert-auth".to_owned(),
        ];
        if let Some(ttl) = self.jwt_ttl {
            args.push(format!(
                "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256,ttl={ttl}s",
                self.jwt_keys.cert.display(),
                self.jwt_keys.key.display()
            ));
        }
        args
    }

    fn client_options(&self) -> etcd_client::ConnectOptions {
        let read = |path: &Path| fs::read(path).unwrap();
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)))
            .identity(etcd_client::Identity::from_pem(read(&self.client.cert), read(&self.client.key)));
        let options = etcd_client::ConnectOptions::new().with_tls(tls);
        match self.root_password {
            Some(password) => options.with_user("root", password).with_auto_token_refresh(true),
            None => options,
        }
    }
}

impl Etcd {
    /// An etcd that serves only TLS, asks every client for a certificate signed by `pki.ca`,
    /// and has authentication on: user `ETCD_USER` may read and write `/tenure/`. With
    /// `jwt_ttl`, its tokens are JWTs that expire that many seconds after they are issued.
    pub async fn start_secure(pki: &Pki, jwt_ttl: Option<u32>) -> Etcd {
        let secure = SecureEtcd {
            ca: pki.ca.clone(),
            server: pki.server.clone(),
            client: pki.client.clone(),
            jwt_ttl,
            jwt_keys: pki.jwt_keys.clone(),
            root_password: None,
        };
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            secure: Some(secure),
        };
        etcd.spawn();
        if !etcd.wait_ready(Duration::from_secs(15)).await {
            panic!("secure etcd did not start:\n{}", tail(&etcd.log_path()));
        }
        let mut client =
            etcd_client::Client::connect([etcd.client_url()], Some(etcd.connect_options())).await.expect("connect");
        client.user_add("root", ETCD_ROOT_PASSWORD, None).await.expect("add root");
        client.user_grant_role("root", "root").await.expect("root role");
        client.user_add(ETCD_USER, ETCD_PASSWORD, None).await.expect("add user");
        client.role_add(ETCD_USER).await.expect("add role");
        let permission = etcd_client::Permission::read_write("/tenure/").with_prefix();
        client.role_grant_permission(ETCD_USER, permission).await.expect("grant");
        client.user_grant_role(ETCD_USER, ETCD_USER).await.expect("grant role");
        client.auth_enable().await.expect("enable auth");
        etcd.secure.as_mut().unwrap().root_password = Some(ETCD_ROOT_PASSWORD);
        etcd
    }
}

/// What makes a `Postgres` secure: `ssl = on` with these files (copied into the data
/// directory, owned by the server's user, key 0600), and `pg_hba.conf` with `hostssl` rules only.
struct SecurePostgres {
    ca: PathBuf,
    admin: CertFiles,
}

impl Postgres {
    /// A PostgreSQL that takes only TLS connections: `postgres` by client certificate (`cert`),
    /// every other role by password (`scram-sha-256`) *and* a client certificate whose CN is the
    /// role (`clientcert=verify-full`). `server` is the certificate it presents.
    pub async fn start_secure(pki: &Pki, server: &CertFiles) -> Postgres {
        use std::os::unix::fs::PermissionsExt;
        let dir = Postgres::server_dir();
        let data = dir.path().join("data");
        new_cluster(&data);
        for (name, from) in [("server.crt", &server.cert), ("server.key", &server.key), ("root.crt", &pki.ca)] {
            let to = data.join(name);
            fs::copy(from, &to).unwrap();
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
            if nix::unistd::geteuid().is_root() {
                let _ = Command::new("chown").args(["postgres:postgres"]).arg(&to).status();
            }
        }
        let settings = "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                        ssl_ca_file = 'root.crt'\npassword_encryption = 'scram-sha-256'\n";
        let mut conf = fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(settings);
        fs::write(data.join("postgresql.conf"), conf).unwrap();
        let hba = "local all all trust\n\
                   hostssl all postgres 127.0.0.1/32 cert\n\
                   hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n";
        fs::write(data.join("pg_hba.conf"), hba).unwrap();
        let secure = SecurePostgres { ca: pki.ca.clone(), admin: pki.admin.clone() };
        let mut pg = Postgres {
            dir,
            port: free_port(),
            child: None,
            durable: false,
            secure: Some(secure),
            frozen_walreceiver: None,
        };
        pg.spawn();
        // Ready by its own word: a server with an expired certificate never answers a client.
        let log = pg.log_path();
        let ready = wait_until(Duration::from_secs(20), || {
            let text = fs::read_to_string(&log).unwrap_or_default();
            async move { text.contains("database system is ready to accept connections") }
        })
        .await;
        if !ready {
            panic!("secure postgres did not start:\n{}", tail(&pg.log_path()));
        }
        pg
    }

    /// A login role `PG_USER` with `PG_PASSWORD` owning `database`; returns the URL a replica
    /// uses: verify-full against the CA, the client certificate, the password.
    pub async fn create_login(&self, database: &str, pki: &Pki) -> String {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url()).await.expect("connect as postgres");
        for statement in [
            format!("CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PASSWORD}'"),
            format!("ALTER DATABASE \"{database}\" OWNER TO {PG_USER}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.expect("create login");
        }
        format!(
            "postgres://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{}/{database}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            self.port,
            pki.ca.display(),
            pki.client.cert.display(),
            pki.client.key.display()
        )
    }
}

// ---- ZooKeeper: a single server or an ensemble (Debian's `zookeeper` package, run by hand) ----

/// Where Debian's `zookeeper` package puts the server's jar (its dependencies are on the jar's
/// manifest class path).
const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

/// What the Netty connection factory (ZooKeeper's only TLS one) needs beyond the jar's manifest
/// class path, which names netty-buffer, -common, -handler and -transport but not the codec
/// Netty's `SslHandler` is built on: without it the server starts and never opens its secure
/// port (its log says nothing: Debian's ZooKeeper logs through a no-op SLF4J).
const NETTY_TLS_JARS: &[&str] = &["/usr/share/java/netty-codec.jar", "/usr/share/java/netty-resolver.jar"];

/// ZooKeeper's tick: sessions may last from 2 to 20 ticks, so 500 ms allows 1 s to 10 s.
pub const ZOOKEEPER_TICK: Duration = Duration::from_millis(500);

struct ZooKeeperServer {
    client_port: u16,
    quorum_port: u16,
    election_port: u16,
    child: Option<Child>,
}

/// A throwaway ZooKeeper on loopback: one standalone server (`ZooKeeper::start`) or an ensemble
/// of several (`ZooKeeper::start_ensemble`), each a `QuorumPeerMain` JVM in its own process group
/// with its data in a temporary directory. Killed on drop, also when the test panics.
pub struct ZooKeeper {
    dir: TempDir,
    servers: Vec<ZooKeeperServer>,
    /// Set for a TLS-only server (`ZooKeeper::start_secure`).
    secure: Option<SecureZooKeeper>,
}

/// What makes a `ZooKeeper` TLS-only: `secureClientPort` and no `clientPort`, the Netty
/// connection factory, PEM key and trust stores, and `ssl.clientAuth=need`. The harness's own
/// connections (`srvr`, `connector`) present the replicas' client certificate.
struct SecureZooKeeper {
    ca: PathBuf,
    /// The server's key and certificate in one PEM file: ZooKeeper's PEM key store.
    key_store: PathBuf,
    client: CertFiles,
}

impl ZooKeeper {
    /// One standalone server.
    pub async fn start() -> ZooKeeper {
        ZooKeeper::start_ensemble(1).await
    }

    /// `size` servers in one ensemble (1: standalone), ready once one leads and all answer.
    pub async fn start_ensemble(size: usize) -> ZooKeeper {
        let dir = tempfile::Builder::new().prefix("tenure-zk").tempdir().expect("temp dir");
        let servers = (0..size)
            .map(|_| ZooKeeperServer {
                client_port: free_port(),
                quorum_port: free_port(),
                election_port: free_port(),
                child: None,
            })
            .collect();
        ZooKeeper::start_on(dir, servers, None).await
    }

    /// One standalone server that serves only TLS and asks every client for a certificate
    /// signed by `pki.ca`; it presents `pki.server`.
    pub async fn start_secure(pki: &Pki) -> ZooKeeper {
        let dir = tempfile::Builder::new().prefix("tenure-zk").tempdir().expect("temp dir");
        let key_store = dir.path().join("server.pem");
        let pem = format!(
            "{}{}",
            fs::read_to_string(&pki.server.key).unwrap(),
            fs::read_to_string(&pki.server.cert).unwrap()
        );
        fs::write(&key_store, pem).unwrap();
        let secure = SecureZooKeeper { ca: pki.ca.clone(), key_store, client: pki.client.clone() };
        let server = ZooKeeperServer {
            client_port: free_port(),
            quorum_port: free_port(),
            election_port: free_port(),
            child: None,
        };
        ZooKeeper::start_on(dir, vec![server], Some(secure)).await
    }

    async fn start_on(dir: TempDir, servers: Vec<ZooKeeperServer>, secure: Option<SecureZooKeeper>) -> ZooKeeper {
        let size = servers.len();
        let mut zookeeper = ZooKeeper { dir, servers, secure };
        for index in 0..size {
            zookeeper.spawn(index);
        }
        let ready = wait_until(Duration::from_secs(40), || async {
            let mut modes = Vec::new();
            for index in 0..zookeeper.servers.len() {
                modes.push(zookeeper.mode(index).await);
            }
            let serving = modes.iter().filter(|mode| mode.is_some()).count() == modes.len();
            serving && modes.iter().any(|mode| matches!(mode.as_deref(), Some("leader" | "standalone")))
        })
        .await;
        if !ready {
            let logs: Vec<String> = (0..size).map(|index| tail(&zookeeper.log_path(index))).collect();
            panic!("ZooKeeper did not start:\n{}", logs.join("\n---\n"));
        }
        zookeeper
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("zk{index}.log"))
    }

    fn spawn(&mut self, index: usize) {
        use std::os::unix::process::CommandExt;
        let data = self.dir.path().join(format!("zk{index}"));
        fs::create_dir_all(&data).unwrap();
        let server = &self.servers[index];
        let mut config = format!(
            "tickTime={}\ninitLimit=10\nsyncLimit=4\ndataDir={}\nadmin.enableServer=false\n4lw.commands.whitelist=*\n",
            ZOOKEEPER_TICK.as_millis(),
            data.display(),
        );
        let mut class_path = ZOOKEEPER_JAR.to_owned();
        match &self.secure {
            None => config.push_str(&format!("clientPort={}\nclientPortAddress=127.0.0.1\n", server.client_port)),
            Some(secure) => {
                config.push_str(&format!(
                    "secureClientPort={}\nsecureClientPortAddress=127.0.0.1\n\
                     serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
                     ssl.keyStore.location={}\nssl.keyStore.type=PEM\n\
                     ssl.trustStore.location={}\nssl.trustStore.type=PEM\nssl.clientAuth=need\n",
                    server.client_port,
                    secure.key_store.display(),
                    secure.ca.display()
                ));
                for jar in NETTY_TLS_JARS {
                    class_path.push(':');
                    class_path.push_str(jar);
                }
            }
        }
        if self.servers.len() > 1 {
            fs::write(data.join("myid"), format!("{}\n", index + 1)).unwrap();
            for (id, peer) in self.servers.iter().enumerate() {
                config.push_str(&format!("server.{}=127.0.0.1:{}:{}\n", id + 1, peer.quorum_port, peer.election_port));
            }
        }
        let config_path = self.dir.path().join(format!("zoo{index}.cfg"));
        fs::write(&config_path, config).unwrap();
        let log = fs::OpenOptions::new().create(true).append(true).open(self.log_path(index)).unwrap();
        let child = Command::new("java")
            .args(["-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", &class_path])
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(&config_path)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ZooKeeper (is Debian's zookeeper installed? scripts/test installs it)");
        self.servers[index].child = Some(child);
    }

    /// The connect string of every server: `127.0.0.1:port,...`, each `tcp+tls://` when the
    /// server is TLS-only.
    pub fn connect_string(&self) -> String {
        let scheme = self.scheme();
        let servers: Vec<String> =
            self.servers.iter().map(|server| format!("{scheme}127.0.0.1:{}", server.client_port)).collect();
        servers.join(",")
    }

    /// What a server address is prefixed with in a connect string: `tcp+tls://` or nothing.
    pub fn scheme(&self) -> &'static str {
        if self.secure.is_some() { "tcp+tls://" } else { "" }
    }

    /// A client connector for these servers: over TLS with the replicas' client certificate
    /// when they are TLS-only.
    pub fn connector(&self) -> zookeeper_client::Connector {
        let connector = zookeeper_client::Client::connector();
        let Some(secure) = &self.secure else {
            return connector;
        };
        // The client library needs a process-wide rustls provider (see `election::zookeeper`).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |path: &Path| fs::read_to_string(path).unwrap();
        let tls = zookeeper_client::TlsOptions::new()
            .with_pem_ca(&read(&secure.ca))
            .unwrap()
            .with_pem_identity(&read(&secure.client.cert), &read(&secure.client.key))
            .unwrap();
        connector.with_tls(tls)
    }

    /// Send a four-letter word to a server (over TLS with the client certificate when it is
    /// TLS-only: the Netty factory serves them there too) and read its answer.
    async fn four_letter_word(&self, index: usize, word: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = self.servers[index].client_port;
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut answer = String::new();
        match &self.secure {
            None => {
                let mut stream = stream;
                stream.write_all(word.as_bytes()).await.ok()?;
                stream.read_to_string(&mut answer).await.ok()?;
            }
            Some(secure) => {
                use rustls::pki_types::pem::PemObject;
                use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(&secure.ca).ok()? {
                    roots.add(cert.ok()?).ok()?;
                }
                let chain: Vec<_> =
                    CertificateDer::pem_file_iter(&secure.client.cert).ok()?.collect::<Result<_, _>>().ok()?;
                let key = PrivateKeyDer::from_pem_file(&secure.client.key).ok()?;
                let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .ok()?
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain, key)
                    .ok()?;
                let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
                let name = ServerName::try_from("127.0.0.1").ok()?;
                let mut stream = connector.connect(name, stream).await.ok()?;
                stream.write_all(word.as_bytes()).await.ok()?;
                // Netty closes without close_notify: what came before the end is the answer.
                let mut bytes = Vec::new();
                let _ = stream.read_to_end(&mut bytes).await;
                answer = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        Some(answer)
    }

    pub fn client_port(&self, index: usize) -> u16 {
        self.servers[index].client_port
    }

    /// What a server says it is (`srvr`'s `Mode:`: standalone, leader or follower), or None
    /// when it does not serve.
    pub async fn mode(&self, index: usize) -> Option<String> {
        self.servers[index].child.as_ref()?;
        let attempt = async {
            let answer = self.four_letter_word(index, "srvr").await?;
            let mode = answer.lines().find_map(|line| line.strip_prefix("Mode: "))?;
            Some(mode.trim().to_owned())
        };
        tokio::time::timeout(Duration::from_secs(1), attempt).await.ok().flatten()
    }

    /// The server that leads the ensemble now, by its own word.
    pub async fn leader(&self) -> Option<usize> {
        for index in 0..self.servers.len() {
            if self.mode(index).await.as_deref() == Some("leader") {
                return Some(index);
            }
        }
        None
    }

    fn signal_group(&self, index: usize, signal: Signal) {
        if let Some(child) = &self.servers[index].child {
            let _ = kill(Pid::from_raw(-(child.id() as i32)), signal);
        }
    }

    /// SIGKILL a server's process group and reap it.
    pub fn kill(&mut self, index: usize) {
        self.signal_group(index, Signal::SIGKILL);
        reap(&mut self.servers[index].child);
    }

    /// Start a killed server again on its data directory and ports.
    pub fn restart(&mut self, index: usize) {
        self.kill(index);
        self.spawn(index);
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        for index in 0..self.servers.len() {
            self.kill(index);
        }
    }
}
