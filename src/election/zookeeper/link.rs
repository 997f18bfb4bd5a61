//! How every ZooKeeper session is reached: the servers as `--zookeeper` lists them, the TLS files
//! read once, opening a session, and `diagnose`, which connects to the servers itself when no
//! session could be opened (the client library reports every failed connection as a lost one) to
//! tell a refused TLS handshake, or a plaintext link to a TLS-only port, from a ZooKeeper that is
//! not up yet.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zookeeper_client as zk;

use super::REQUEST_TIMEOUT;
use crate::election::ConnectError;

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
pub(super) struct TlsLink {
    options: zk::TlsOptions,
    probe: Arc<rustls::ClientConfig>,
}

impl TlsLink {
    pub(super) fn load(tls: &ZooKeeperTls) -> anyhow::Result<TlsLink> {
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
pub(super) struct Link {
    pub(super) access: ZooKeeperAccess,
    pub(super) tls: Option<TlsLink>,
}

/// Open a session with `session_timeout` asked for (the server may negotiate another within its
/// `minSessionTimeout`..`maxSessionTimeout`; `Client::session_timeout` is the one that holds).
pub(super) async fn open_session(link: &Link, session_timeout: Duration) -> Result<zk::Client, zk::Error> {
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
pub(super) async fn diagnose(link: &Link, failure: zk::Error) -> ConnectError {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
