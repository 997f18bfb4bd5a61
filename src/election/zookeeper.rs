//! The ZooKeeper backend: leadership by the ephemeral-sequential znode recipe, and the registry
//! of live replicas on ephemeral znodes. The only code that talks to ZooKeeper.
//!
//! Each term (`Campaign::one_term`) is one ZooKeeper session, whose expiry is the lease: create
//! `<election>/candidate-` EPHEMERAL_SEQUENTIAL holding the node id; the lowest sequence leads;
//! every other candidate watches only its predecessor, and looks again when it goes. The win is
//! verified (after a `sync`, our znode still exists with our `czxid` in our session, and none
//! precedes it) before `Leadership::Leader` is published. The term is the `czxid` of the leader's
//! znode: the zxid at which it was created, which only grows (epoch in the high 32 bits, counter
//! below), so a later leader always holds a higher term, as with etcd's create revisions.
//!
//! The local deadline follows etcd's rule: the send time of the last acknowledged heartbeat plus
//! the negotiated session timeout, minus a margin. A heartbeat is a `sync` (which the server a
//! client is connected to forwards to the ensemble's leader) followed by a read of our own znode.
//! The margin is wider than etcd's because ZooKeeper's leader does not see a session's requests
//! itself: each server records them and reports them when the leader pings it, every half tick,
//! and a tick is at most half the session timeout. So the leader's view of our last request can
//! lag by a quarter of the session timeout, plus the interval between two of our requests. A
//! disconnected session therefore publishes `Follower` once that deadline passes, an expired or
//! closed one at once, and a cut-off or paused leader stops before its session can expire.
//!
//! The ensemble's identity, which `Term::cluster_id` carries into the fence (ZooKeeper has no
//! cluster id), is a random value created once under the election (`Keys::ensemble`): a rebuilt
//! ensemble gets a new one, and its zxids restart below the fence, which `begin_term` refuses.
//!
//! Every session goes to the servers the same way: plaintext, or TLS (`tcp+tls://` servers, the
//! CA of `--zookeeper-ca`, the client certificate ZooKeeper's `ssl.clientAuth=need` asks for),
//! with the server's name checked against its certificate. The client library reports every
//! failed connection as a lost one, so when the first session cannot be opened `diagnose`
//! connects to the servers itself to tell a refused handshake, or a plaintext link to a TLS-only
//! port, from a ZooKeeper that is not up yet. No SASL.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::{ConnectError, ElectionConfig, Keys, safety_margin};
use crate::leadership::{BootInstant, Leadership, LeaseDeadline, Term};
use crate::model::Member;
use crate::telemetry::metric;

/// How long a single request may take before we treat ZooKeeper as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The name of a candidate's znode before the sequence ZooKeeper appends.
const CANDIDATE_PREFIX: &str = "candidate-";

/// The prefix of the ensemble ids this backend creates; etcd's cluster ids are numbers.
const ENSEMBLE_ID_PREFIX: &str = "zookeeper-";

/// How to reach ZooKeeper: its connect string (`host:port,host:port`, optionally with a chroot
/// path at the end, as ZooKeeper's own clients take it), and TLS when every server is
/// `tcp+tls://`. `Debug` shows file paths, never a key.
#[derive(Debug, Clone)]
pub struct ZooKeeperAccess {
    pub servers: String,
    /// Each server's host and port, for the diagnosis of a failed start (`diagnose`).
    addresses: Vec<(String, u16)>,
    /// Set when the servers are `tcp+tls://`.
    pub tls: Option<ZooKeeperTls>,
}

/// The files of a TLS link to ZooKeeper (`secureClientPort`).
#[derive(Debug, Clone, Default)]
pub struct ZooKeeperTls {
    /// PEM file of the CA(s) that sign the servers' certificates; the system bundle when unset.
    pub ca: Option<PathBuf>,
    /// PEM files of this replica's client certificate and its key (`ssl.clientAuth=need`).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ZooKeeperTls {
    fn is_given(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }
}

const TLS_SCHEME: &str = "tcp+tls://";

/// ZooKeeper's client port when a server is given without one.
const DEFAULT_PORT: u16 = 2181;

impl ZooKeeperAccess {
    /// The servers as `--zookeeper` lists them, checked as ZooKeeper's clients read them: each
    /// `host:port` (the port 2181 when left out), a chroot path after the last one at most; all
    /// `tcp+tls://` (then `tls` applies) or none.
    pub fn new(servers: &[String], tls: ZooKeeperTls) -> anyhow::Result<ZooKeeperAccess> {
        let given = servers.join(",");
        let last = servers.len().saturating_sub(1);
        let secure = servers.iter().filter(|server| server.trim().starts_with(TLS_SCHEME)).count();
        if secure != 0 && secure != servers.len() {
            bail!("--zookeeper {given}: mixes tcp+tls:// and plaintext servers (all TLS or none)");
        }
        if secure == 0 && tls.is_given() {
            bail!("--zookeeper-ca, --zookeeper-cert and --zookeeper-key need tcp+tls:// ZooKeeper servers");
        }
        let mut addresses = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            let server = server.trim();
            let server = server.strip_prefix(TLS_SCHEME).or_else(|| server.strip_prefix("tcp://")).unwrap_or(server);
            let address = match server.find('/') {
                Some(slash) if index == last => {
                    let chroot = &server[slash..];
                    if chroot.len() > 1 && (chroot.ends_with('/') || chroot.contains("//")) {
                        bail!("--zookeeper {given}: the chroot path {chroot} is not a znode path");
                    }
                    &server[..slash]
                }
                Some(_) => bail!("--zookeeper {given}: only the last server may carry a chroot path ({server})"),
                None => server,
            };
            let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
            if host.is_empty() {
                bail!("--zookeeper {given}: {server} has no host");
            }
            let port = match port {
                "" => DEFAULT_PORT,
                port => match port.parse::<u16>() {
                    Ok(port) if port != 0 => port,
                    _ => bail!("--zookeeper {given}: {server} has no valid port (host:port)"),
                },
            };
            addresses.push((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port));
        }
        let tls = (secure != 0).then_some(tls);
        Ok(ZooKeeperAccess { servers: given, addresses, tls })
    }
}

/// Where Debian and its derivatives keep the system's trusted CAs, used for `tcp+tls://`
/// servers without `--zookeeper-ca`.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The TLS settings read from their files: the client library's, and the same trust and
/// identity for our own look at a server that refused a session (`diagnose`).
#[derive(Clone)]
struct TlsLink {
    options: zk::TlsOptions,
    probe: Arc<rustls::ClientConfig>,
}

impl TlsLink {
    fn load(tls: &ZooKeeperTls) -> anyhow::Result<TlsLink> {
        // The client library builds its rustls configuration with the process's default
        // provider, and its rustls dependency compiles aws-lc-rs beside the ring every other
        // TLS link of ours uses: with two compiled in, rustls cannot pick one and the library
        // would panic. Install ring once (a provider installed before stays: this one is equal).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_path = tls.ca.clone().unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
        let ca = std::fs::read_to_string(&ca_path)
            .with_context(|| format!("read ZooKeeper CA file {}", ca_path.display()))?;
        let mut options = zk::TlsOptions::new()
            .with_pem_ca(&ca)
            .with_context(|| format!("read ZooKeeper CA file {}", ca_path.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        // Unparsable entries were refused above; a bundle may hold a CA rustls does not take.
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()).flatten() {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
        let probe = match &tls.identity {
            Some((cert_path, key_path)) => {
                let cert = std::fs::read_to_string(cert_path)
                    .with_context(|| format!("read ZooKeeper client certificate {}", cert_path.display()))?;
                // Not in any message: only the path is.
                let key = std::fs::read_to_string(key_path)
                    .with_context(|| format!("read ZooKeeper client key {}", key_path.display()))?;
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("read ZooKeeper client certificate {}", cert_path.display()))?;
                if chain.is_empty() {
                    bail!("read ZooKeeper client certificate {}: no certificate in it", cert_path.display());
                }
                options = options.with_pem_identity(&cert, &key).with_context(|| {
                    format!("read ZooKeeper client certificate {} and key {}", cert_path.display(), key_path.display())
                })?;
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|_| anyhow::anyhow!("read ZooKeeper client key {}: no usable key", key_path.display()))?;
                builder.with_client_auth_cert(chain, key).with_context(|| {
                    format!("ZooKeeper client certificate {} and key {}", cert_path.display(), key_path.display())
                })?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(TlsLink { options, probe: Arc::new(probe) })
    }
}

/// The connect string and, for `tcp+tls://` servers, the TLS settings read from their files:
/// what every session is opened with.
#[derive(Clone)]
struct Link {
    access: ZooKeeperAccess,
    tls: Option<TlsLink>,
}

/// Open a session with `session_timeout` asked for (the server may negotiate another within its
/// `minSessionTimeout`..`maxSessionTimeout`; `Client::session_timeout` is the one that holds).
async fn open_session(link: &Link, session_timeout: Duration) -> Result<zk::Client, zk::Error> {
    let mut connector = zk::Client::connector().with_session_timeout(session_timeout).with_fail_eagerly();
    if let Some(tls) = &link.tls {
        connector = connector.with_tls(tls.options.clone());
    }
    let connect = connector.connect(&link.access.servers);
    match tokio::time::timeout(session_timeout.max(REQUEST_TIMEOUT), connect).await {
        Ok(result) => result,
        Err(_) => Err(zk::Error::Timeout),
    }
}

/// Why no session could be opened, which the client library does not say (every failed
/// connection is a lost one to it): connect to the servers ourselves, one at a time, and send
/// `srvr`. Over TLS, a handshake refused (our CA does not sign the server's certificate, the
/// server refuses ours) is a `Refused`. A plaintext connection the server closes without a word
/// is what a TLS-only port does, a `Closed` with a hint. Anything else: ZooKeeper is not up yet.
async fn diagnose(link: &Link, failure: zk::Error) -> ConnectError {
    let link = link.clone();
    let endpoints = link.access.servers.clone();
    let unreachable =
        |detail: String| ConnectError::Unreachable { coordinator: "ZooKeeper", endpoints: endpoints.clone(), detail };
    let probe = tokio::task::spawn_blocking(move || {
        let mut last = None;
        for (host, port) in &link.access.addresses {
            match look_at_server(host, *port, link.tls.as_ref()) {
                Ok(seen) => return Some(seen),
                Err(error) => last = Some(format!("{host}:{port}: {error}")),
            }
        }
        last.map(ServerSeen::Unreachable)
    });
    match probe.await.ok().flatten() {
        Some(ServerSeen::TlsRefused(detail)) => {
            ConnectError::Refused { coordinator: "ZooKeeper", endpoints, detail: format!("TLS {detail}") }
        }
        Some(ServerSeen::ClosedSilently(address)) => ConnectError::Closed {
            coordinator: "ZooKeeper",
            endpoints,
            detail: format!("{address} answered nothing"),
            hint: "if ZooKeeper serves TLS only (secureClientPort), give tcp+tls:// servers and --zookeeper-ca",
        },
        Some(ServerSeen::Unreachable(detail)) => unreachable(format!("{failure}; {detail}")),
        Some(ServerSeen::Answers) | None => unreachable(failure.to_string()),
    }
}

/// What one server did when we connected ourselves (`diagnose`).
enum ServerSeen {
    /// The TLS handshake failed, or the server ended it with an alert.
    TlsRefused(String),
    /// Plaintext: connection accepted and closed with no answer.
    ClosedSilently(String),
    /// No server took a connection and answered or closed it (the last one's error).
    Unreachable(String),
    /// It answered: the trouble is elsewhere (not serving yet, a session refused).
    Answers,
}

fn look_at_server(host: &str, port: u16, tls: Option<&TlsLink>) -> std::io::Result<ServerSeen> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let address = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let stream = std::net::TcpStream::connect_timeout(&address, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut answer = Vec::new();
    let Some(tls) = tls else {
        let mut stream = stream;
        // Five bytes: Netty's TLS handler waits for a whole record header before it closes.
        stream.write_all(b"srvr\n")?;
        return Ok(match stream.read_to_end(&mut answer) {
            Ok(_) if !answer.is_empty() => ServerSeen::Answers,
            Ok(_) => ServerSeen::ClosedSilently(format!("{host}:{port}")),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                ServerSeen::ClosedSilently(format!("{host}:{port}"))
            }
            Err(error) => return Err(error),
        });
    };
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let connection = rustls::ClientConnection::new(tls.probe.clone(), name)
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let mut stream = rustls::StreamOwned::new(connection, stream);
    // The handshake runs on the write; with TLS 1.3 a server refusing our certificate says so
    // after it, in an alert the read sees.
    let outcome = stream.write_all(b"srvr").and_then(|()| stream.read_to_end(&mut answer));
    match outcome {
        Ok(_) => Ok(ServerSeen::Answers),
        Err(error) => match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(refusal) => Ok(ServerSeen::TlsRefused(format!("with {host}:{port}: {refusal}"))),
            // Closed without close_notify after the handshake: TLS itself worked.
            None if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(ServerSeen::Answers),
            None => Err(error),
        },
    }
}

/// A request bounded by `REQUEST_TIMEOUT` (a timeout reads as `zk::Error::Timeout`).
async fn request<T>(request: impl Future<Output = Result<T, zk::Error>>) -> Result<T, zk::Error> {
    tokio::time::timeout(REQUEST_TIMEOUT, request).await.unwrap_or(Err(zk::Error::Timeout))
}

/// States after which a session does nothing more.
fn is_terminal(state: zk::SessionState) -> bool {
    matches!(state, zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed)
}

/// A connected ZooKeeper: how to open more sessions (one per term, one for the registration),
/// and one session of its own for reads (the registry, the leader, readiness).
#[derive(Clone)]
pub struct ZooKeeper {
    /// Shared: every term and the registration open their sessions with it.
    link: Arc<Link>,
    session_timeout: Duration,
    reader: Arc<Mutex<zk::Client>>,
}

impl ZooKeeper {
    /// Open the read session, which checks that ZooKeeper answers. A malformed connect string,
    /// a TLS file that cannot be read, a CA that does not sign the servers' certificates or a
    /// client certificate they refuse is a `Refused` error; a plaintext connection to a TLS-only
    /// port, `Closed`; a ZooKeeper that is not up yet, `Unreachable`.
    pub async fn connect(access: &ZooKeeperAccess, lease_ttl: Duration) -> Result<ZooKeeper, ConnectError> {
        let endpoints = access.servers.clone();
        let refused =
            |detail: String| ConnectError::Refused { coordinator: "ZooKeeper", endpoints: endpoints.clone(), detail };
        let tls = match &access.tls {
            Some(tls) => Some(TlsLink::load(tls).map_err(|error| refused(format!("{error:#}")))?),
            None => None,
        };
        let link = Link { access: access.clone(), tls };
        let client = match open_session(&link, lease_ttl).await {
            Ok(client) => client,
            Err(error @ (zk::Error::BadArguments(_) | zk::Error::AuthFailed | zk::Error::NoAuth)) => {
                return Err(refused(error.to_string()));
            }
            Err(error) => return Err(diagnose(&link, error).await),
        };
        let negotiated = client.session_timeout();
        if negotiated != lease_ttl {
            // The server's minSessionTimeout/maxSessionTimeout (2 and 20 ticks by default) win.
            tracing::warn!(
                asked = ?lease_ttl,
                negotiated = ?negotiated,
                "ZooKeeper negotiated another session timeout than --lease-ttl; leases last the negotiated one"
            );
        }
        Ok(ZooKeeper { link: Arc::new(link), session_timeout: lease_ttl, reader: Arc::new(Mutex::new(client)) })
    }

    pub(super) fn campaign(self, config: ElectionConfig) -> Campaign {
        Campaign { zookeeper: self, config }
    }

    /// The read session, opened again if it expired (ZooKeeper was down for longer than it).
    async fn reader(&self) -> anyhow::Result<zk::Client> {
        let mut reader = self.reader.lock().await;
        if is_terminal(reader.state()) {
            *reader = open_session(&self.link, self.session_timeout).await.context("reopen the ZooKeeper session")?;
        }
        Ok(reader.clone())
    }

    /// Whether ZooKeeper answers a read within `within` (readiness).
    pub(super) async fn answers(&self, within: Duration) -> bool {
        let attempt = async { self.reader().await.ok()?.check_stat("/").await.ok() };
        matches!(tokio::time::timeout(within, attempt).await, Ok(Some(_)))
    }

    /// Keep this replica's registration (an ephemeral znode holding its `Member`) in a session of
    /// its own, registering again after the session ends and whenever `member` changes.
    pub(super) async fn register(self, keys: Keys, mut member: watch::Receiver<Member>, shutdown: CancellationToken) {
        let retry_delay = (self.session_timeout / 4).max(Duration::from_millis(200));
        while !shutdown.is_cancelled() {
            if let Err(error) = self.register_once(&keys, &mut member, &shutdown).await {
                tracing::warn!(error = format!("{error:#}"), "registration lost; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(retry_delay) => {}
                }
            }
        }
    }

    async fn register_once(
        &self,
        keys: &Keys,
        member: &mut watch::Receiver<Member>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let client = open_session(&self.link, self.session_timeout).await.context("open a ZooKeeper session")?;
        let members = keys.members().trim_end_matches('/');
        request(client.mkdir(members, &persistent())).await.context("create the registry znode")?;
        let mut states = client.state_watcher();
        loop {
            let current = member.borrow_and_update().clone();
            let path = format!("{members}/{}", znode_name(&current.node));
            let value = serde_json::to_vec(&current)?;
            put_ephemeral(&client, &path, &value).await.with_context(|| format!("register at {path}"))?;
            tokio::select! {
                () = shutdown.cancelled() => {
                    // Closing the session would remove it too, but not before this process exits.
                    let _ = request(client.delete(&path, None)).await;
                    return Ok(());
                }
                changed = member.changed() => if changed.is_err() { return Ok(()) },
                state = states.changed() => if is_terminal(state) { bail!("the registration's session ended: {state:?}") },
            }
        }
    }

    /// Every live replica, in node order.
    pub(super) async fn list_members(&self, keys: &Keys) -> anyhow::Result<Vec<Member>> {
        let client = self.reader().await?;
        let dir = keys.members().trim_end_matches('/');
        let children = match request(client.list_children(dir)).await {
            Ok(children) => children,
            Err(zk::Error::NoNode) => return Ok(Vec::new()),
            Err(error) => return Err(error).context("list the registry"),
        };
        // Every read is sent before the first answer is awaited.
        let reads: Vec<_> = children.iter().map(|child| (child, client.get_data(&format!("{dir}/{child}")))).collect();
        let mut members = Vec::new();
        for (child, read) in reads {
            match request(read).await {
                Ok((data, _)) => match serde_json::from_slice::<Member>(&data) {
                    Ok(member) => members.push(member),
                    Err(error) => tracing::warn!(znode = %child, %error, "unreadable member record"),
                },
                // Gone since the listing: its session ended.
                Err(zk::Error::NoNode) => {}
                Err(error) => return Err(error).context("read the registry"),
            }
        }
        members.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(members)
    }

    /// The current leader's node id and term, as ZooKeeper sees it: the lowest candidate.
    pub(super) async fn current_leader(&self, keys: &Keys) -> anyhow::Result<Option<(String, i64)>> {
        let client = self.reader().await?;
        // A leader that goes between the listing and the read: look again.
        for _ in 0..3 {
            let children = match request(client.list_children(keys.election())).await {
                Ok(children) => children,
                Err(zk::Error::NoNode) => return Ok(None),
                Err(error) => return Err(error).context("list the candidates"),
            };
            let Some((_, lowest)) = candidates(&children).into_iter().next() else {
                return Ok(None);
            };
            match request(client.get_data(&format!("{}/{lowest}", keys.election()))).await {
                Ok((data, stat)) => return Ok(Some((String::from_utf8_lossy(&data).into_owned(), stat.czxid))),
                Err(zk::Error::NoNode) => continue,
                Err(error) => return Err(error).context("read the leader's znode"),
            }
        }
        Ok(None)
    }
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

/// Create `path` as an ephemeral znode of this session holding `value`, or update it if this
/// session already holds it. One left by an earlier process with the same node id (whose session
/// has not expired yet) is replaced, as etcd's registration overwrites its key.
async fn put_ephemeral(client: &zk::Client, path: &str, value: &[u8]) -> anyhow::Result<()> {
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    for _ in 0..3 {
        match request(client.create(path, value, &ephemeral)).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NodeExists) => {}
            Err(error) => return Err(error.into()),
        }
        match request(client.check_stat(path)).await? {
            Some(stat) if stat.ephemeral_owner == client.session_id().0 => {
                request(client.set_data(path, value, Some(stat.version))).await?;
                return Ok(());
            }
            Some(stat) => match request(client.delete(path, Some(stat.version))).await {
                Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => {}
                Err(error) => return Err(error.into()),
            },
            None => {}
        }
    }
    bail!("{path} kept changing under us")
}

/// A node id as one znode name: characters ZooKeeper paths take as they are, the rest (and a
/// name of only dots) as `%XX`.
fn znode_name(node: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@');
    if !node.is_empty() && node.chars().all(plain) && node.chars().any(|c| c != '.') {
        return node.to_owned();
    }
    let mut name = String::new();
    for byte in node.bytes() {
        if (byte as char).is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b':' | b'@') {
            name.push(byte as char);
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    if name.is_empty() { "%".to_owned() } else { name }
}

/// The candidates among an election znode's children, lowest sequence first.
fn candidates(children: &[String]) -> Vec<(i64, &str)> {
    let mut candidates: Vec<(i64, &str)> = children
        .iter()
        .filter_map(|child| Some((child.strip_prefix(CANDIDATE_PREFIX)?.parse().ok()?, child.as_str())))
        .collect();
    candidates.sort();
    candidates
}

/// The ensemble's identity: created once under the election with a random value, read after.
async fn ensemble_id(client: &zk::Client, keys: &Keys) -> anyhow::Result<String> {
    let mut random = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random).context("read /dev/urandom")?;
    let fresh = format!("{ENSEMBLE_ID_PREFIX}{}", hex::encode(random));
    match request(client.create(keys.ensemble(), fresh.as_bytes(), &persistent())).await {
        Ok(_) => return Ok(fresh),
        Err(zk::Error::NodeExists) => {}
        Err(error) => return Err(error).context("create the ensemble id"),
    }
    let (data, _) = request(client.get_data(keys.ensemble())).await.context("read the ensemble id")?;
    String::from_utf8(data).context("the ensemble id is not UTF-8")
}

/// Our candidate znode.
#[derive(Debug, Clone)]
struct Candidate {
    path: String,
    sequence: i64,
    czxid: i64,
}

/// Why a term's session stopped being kept.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SessionEnd {
    /// ZooKeeper expired the session (or closed it, or refused its authentication).
    Ended(String),
    /// Our candidate znode is gone or is another's: someone deleted it.
    CandidateGone,
    /// The local deadline passed without an acknowledged heartbeat.
    DeadlinePassed,
    /// We were told to stop.
    Stopped,
}

/// One replica's campaigns in ZooKeeper, a session per term.
pub(super) struct Campaign {
    zookeeper: ZooKeeper,
    config: ElectionConfig,
}

impl Campaign {
    /// Open a session, create our candidate, wait to be the lowest, lead while the session
    /// lives. Returns Ok when the term ended in an orderly way (step-down or shutdown), Err when
    /// ZooKeeper failed us. The session is closed on the way out (dropped), which removes
    /// whatever znode of ours is left.
    pub(super) async fn one_term(
        &mut self,
        leadership: &watch::Sender<Leadership>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let client =
            open_session(&self.zookeeper.link, self.config.lease_ttl).await.context("open a ZooKeeper session")?;
        self.campaign_and_lead(&client, leadership, shutdown).await
    }

    async fn campaign_and_lead(
        &mut self,
        client: &zk::Client,
        leadership: &watch::Sender<Leadership>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let keys = &self.config.keys;
        let session_timeout = client.session_timeout();
        // Also creates `/tenure/<election>`, where the ensemble id lives.
        request(client.mkdir(keys.election(), &persistent())).await.context("create the election znode")?;
        let cluster_id = ensemble_id(client, keys).await?;
        let ephemeral = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let prefix = format!("{}/{CANDIDATE_PREFIX}", keys.election());
        let sent = BootInstant::now();
        let (stat, sequence) = request(client.create(&prefix, self.config.node_id.as_bytes(), &ephemeral))
            .await
            .context("create the candidate znode")?;
        let own = Candidate { path: format!("{prefix}{sequence}"), sequence: sequence.into_i64(), czxid: stat.czxid };
        let lease = LeaseDeadline::new(sent + session_timeout - lease_margin(session_timeout));
        let stop = CancellationToken::new();
        let _stop_heartbeat = stop.clone().drop_guard();
        let mut heartbeat =
            tokio::spawn(keep_session(client.clone(), keys.election().to_owned(), own.clone(), lease.clone(), stop));

        // Wait for every candidate before ours to go, watching only the one just before it.
        loop {
            let predecessor = tokio::select! {
                () = shutdown.cancelled() => return resign(client, &own).await,
                end = &mut heartbeat => bail!("session lost while campaigning: {:?}", end.ok()),
                predecessor = predecessor_of(client, keys, &own) => predecessor?,
            };
            let Some(predecessor) = predecessor else { break };
            let (stat, watcher) =
                request(client.check_and_watch_stat(&predecessor)).await.context("watch the predecessor")?;
            if stat.is_none() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return resign(client, &own).await,
                end = &mut heartbeat => bail!("session lost while campaigning: {:?}", end.ok()),
                _ = watcher.changed() => {}
            }
        }

        // As on etcd, check the win before acting on it: after a sync with the ensemble's leader
        // our znode still exists with this czxid in this session, none precedes it, and the
        // session's deadline has not passed.
        request(client.sync(keys.election())).await.context("sync before verifying the win")?;
        let stat = request(client.check_stat(&own.path)).await.context("verify the candidate znode")?;
        let ours = stat.is_some_and(|stat| stat.czxid == own.czxid && stat.ephemeral_owner == client.session_id().0);
        if !ours || predecessor_of(client, keys, &own).await?.is_some() || !lease.is_valid() {
            bail!("the election reported a win at zxid {} but the znode, its rank or the session is gone", own.czxid);
        }

        let term = Term::new(own.czxid, cluster_id);
        tracing::info!(term = own.czxid, node = %self.config.node_id, znode = %own.path, "became leader");
        let step_down = super::publish_leader(leadership, term, &lease);
        let heartbeat_ended = async {
            let end = (&mut heartbeat).await;
            if crate::testing::no_self_fence() {
                // Test switch: a leader that never learns it lost its session.
                std::future::pending::<()>().await;
            }
            end
        };
        let outcome = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            () = step_down.cancelled() => Ok(()),
            end = heartbeat_ended => Err(end.unwrap_or(SessionEnd::Ended("heartbeat task panicked".into()))),
        };
        // Stop firing first, then tell ZooKeeper.
        lease.expire();
        super::publish_follower(leadership);
        metrics::counter!(metric::STEP_DOWNS).increment(1);
        match outcome {
            Ok(()) => {
                resign(client, &own).await?;
                tracing::info!(term = own.czxid, "stepped down");
                Ok(())
            }
            Err(end) => {
                tracing::warn!(term = own.czxid, reason = ?end, "lost leadership");
                Err(anyhow::anyhow!("session ended: {end:?}"))
            }
        }
    }
}

/// Delete our candidate so the next one is told at once; if that fails, the session's close
/// (or expiry) removes it.
async fn resign(client: &zk::Client, own: &Candidate) -> anyhow::Result<()> {
    match request(client.delete(&own.path, None)).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(error) => Err(error).context("delete the candidate znode"),
    }
}

/// The candidate just before ours (its path), or None when ours is the lowest. An error when
/// ours is gone.
async fn predecessor_of(client: &zk::Client, keys: &Keys, own: &Candidate) -> anyhow::Result<Option<String>> {
    let children = request(client.list_children(keys.election())).await.context("list the candidates")?;
    let candidates = candidates(&children);
    let position = candidates
        .iter()
        .position(|(sequence, _)| *sequence == own.sequence)
        .with_context(|| format!("our candidate znode {} is gone", own.path))?;
    Ok(position.checked_sub(1).map(|before| format!("{}/{}", keys.election(), candidates[before].1)))
}

/// How far before the session could expire the local deadline falls: a quarter of the timeout
/// (the leader's view of our requests lags by up to half a tick, and a tick is at most half the
/// timeout), one heartbeat interval (our request before that report), and etcd's margin.
fn lease_margin(session_timeout: Duration) -> Duration {
    session_timeout / 4 + heartbeat_interval(session_timeout) + safety_margin(session_timeout)
}

fn heartbeat_interval(session_timeout: Duration) -> Duration {
    session_timeout / 6
}

/// Heartbeat the term's session every `heartbeat_interval` until stopped or lost. Extends
/// `lease` from the send time of each acknowledged heartbeat; expires it when the session ends.
async fn keep_session(
    client: zk::Client,
    election: String,
    own: Candidate,
    lease: LeaseDeadline,
    stop: CancellationToken,
) -> SessionEnd {
    let end = keep_session_inner(&client, &election, &own, &lease, &stop).await;
    if end != SessionEnd::Stopped {
        lease.expire();
    }
    end
}

async fn keep_session_inner(
    client: &zk::Client,
    election: &str,
    own: &Candidate,
    lease: &LeaseDeadline,
    stop: &CancellationToken,
) -> SessionEnd {
    let session_timeout = client.session_timeout();
    let interval = heartbeat_interval(session_timeout);
    let mut states = client.state_watcher();
    let mut next_send = tokio::time::Instant::now() + interval;
    loop {
        tokio::select! {
            () = stop.cancelled() => return SessionEnd::Stopped,
            () = lease.expired() => return SessionEnd::DeadlinePassed,
            // `Expired` ends the term at once; `Disconnected` leaves it to the deadline, which
            // a reconnection in time (the session still alive) extends again.
            state = states.changed() => {
                if is_terminal(state) {
                    return SessionEnd::Ended(format!("{state:?}"));
                }
                continue;
            }
            () = tokio::time::sleep_until(next_send) => {}
        }
        let sent = BootInstant::now();
        next_send = tokio::time::Instant::now() + interval;
        // Both are sent now, in this order, and answered in order.
        let sync = client.sync(election);
        let check = client.check_stat(&own.path);
        let answer = async {
            sync.await?;
            check.await
        };
        let answer = tokio::select! {
            () = stop.cancelled() => return SessionEnd::Stopped,
            () = lease.expired() => return SessionEnd::DeadlinePassed,
            answer = answer => answer,
        };
        match answer {
            Ok(Some(stat)) if stat.czxid == own.czxid => {
                lease.extend_to(sent + session_timeout - lease_margin(session_timeout));
                metrics::histogram!(metric::KEEPALIVE_RTT).record(sent.elapsed().as_secs_f64());
            }
            Ok(_) => return SessionEnd::CandidateGone,
            Err(zk::Error::SessionExpired) => return SessionEnd::Ended("Expired".into()),
            Err(zk::Error::ClientClosed) => return SessionEnd::Ended("Closed".into()),
            Err(error) => tracing::debug!(%error, "ZooKeeper heartbeat failed; the deadline decides"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_sequence_comes_first_and_other_znodes_are_ignored() {
        let children: Vec<String> =
            ["candidate-0000000012", "candidate-0000000003", "lock", "candidate-x", "candidate-0000000010"]
                .iter()
                .map(|name| name.to_string())
                .collect();
        assert_eq!(
            candidates(&children),
            vec![(3, "candidate-0000000003"), (10, "candidate-0000000010"), (12, "candidate-0000000012")]
        );
    }

    #[test]
    fn server_lists_are_checked_as_zookeeper_reads_them() {
        let servers = |list: &str| list.split(',').map(str::to_owned).collect::<Vec<_>>();
        for good in ["zk-1:2181", "zk-1:2181,zk-2:2182,zk-3", "10.0.0.1:2181,10.0.0.2:2181/apps/tenure", "zk/"] {
            let access = ZooKeeperAccess::new(&servers(good), ZooKeeperTls::default())
                .unwrap_or_else(|error| panic!("{good}: {error}"));
            assert_eq!(access.servers, good);
            assert!(access.tls.is_none(), "{good}");
        }
        for (bad, why) in [
            ("zk-1:abc", "valid port"),
            ("zk-1:0", "valid port"),
            (":2181", "no host"),
            ("zk-1:2181/a,zk-2:2181", "only the last"),
            ("zk-1:2181/a/", "chroot"),
            ("tcp+tls://zk-1:2281,zk-2:2181", "all TLS or none"),
            ("tcp+tls://:2281", "no host"),
        ] {
            let error = ZooKeeperAccess::new(&servers(bad), ZooKeeperTls::default()).unwrap_err().to_string();
            assert!(error.contains(why) && error.contains(bad), "{bad}: {error}");
        }
    }

    #[test]
    fn tls_servers_take_the_tls_files_and_plaintext_servers_refuse_them() {
        let servers = |list: &str| list.split(',').map(str::to_owned).collect::<Vec<_>>();
        let files = ZooKeeperTls {
            ca: Some(PathBuf::from("/etc/tenure/zk-ca.pem")),
            identity: Some((PathBuf::from("/etc/tenure/zk.crt"), PathBuf::from("/etc/tenure/zk.key"))),
        };
        let access = ZooKeeperAccess::new(&servers("tcp+tls://zk-1:2281,tcp+tls://zk-2/apps"), files.clone()).unwrap();
        assert_eq!(access.addresses, [("zk-1".to_owned(), 2281), ("zk-2".to_owned(), DEFAULT_PORT)]);
        assert_eq!(access.tls.as_ref().and_then(|tls| tls.ca.clone()), files.ca);
        // The system bundle when no CA is given.
        let access = ZooKeeperAccess::new(&servers("tcp+tls://zk-1:2281"), ZooKeeperTls::default()).unwrap();
        assert!(access.tls.is_some_and(|tls| tls.ca.is_none() && tls.identity.is_none()));
        let error = ZooKeeperAccess::new(&servers("zk-1:2181"), files).unwrap_err().to_string();
        assert_eq!(error, "--zookeeper-ca, --zookeeper-cert and --zookeeper-key need tcp+tls:// ZooKeeper servers");
    }

    #[test]
    fn tls_files_that_cannot_be_read_are_named() {
        let missing = ZooKeeperTls { ca: Some(PathBuf::from("/nonexistent/zk-ca.pem")), identity: None };
        let error = format!("{:#}", TlsLink::load(&missing).err().expect("a missing CA file"));
        assert!(error.starts_with("read ZooKeeper CA file /nonexistent/zk-ca.pem: "), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let error = format!("{:#}", TlsLink::load(&ZooKeeperTls { ca: Some(not_pem), identity: None }).err().unwrap());
        assert!(error.contains("read ZooKeeper CA file") && error.contains("trust anchor"), "{error}");
    }

    #[test]
    fn node_ids_become_single_znode_names() {
        assert_eq!(znode_name("node-0"), "node-0");
        assert_eq!(znode_name("host.example:8080"), "host.example:8080");
        assert_eq!(znode_name("a/b"), "a%2Fb");
        assert_eq!(znode_name(".."), "%2E%2E");
        assert_eq!(znode_name(""), "%");
    }

    #[test]
    fn the_deadline_falls_before_the_session_can_expire_and_after_two_heartbeats() {
        for millis in [1_000, 2_000, 10_000, 40_000] {
            let timeout = Duration::from_millis(millis);
            let valid_for = timeout - lease_margin(timeout);
            // Before the ensemble's leader can expire the session (its view lags by up to a
            // quarter of the timeout and one of our intervals)...
            assert!(valid_for < timeout - timeout / 4 - heartbeat_interval(timeout), "{timeout:?}");
            // ...and long enough that one late heartbeat does not end a term.
            assert!(valid_for > heartbeat_interval(timeout) * 2, "{timeout:?}");
        }
    }
}
