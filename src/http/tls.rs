//! HTTPS on `--listen` (`--tls-cert`, `--tls-key`; rustls on the ring provider): the pair is read
//! at start (a file that cannot be used stops the start with one line naming it), read again when
//! either file changes (compared every `POLL`) and on SIGHUP; a new pair that does not load is
//! logged and the one served is kept. Each connection the accept loop admits (`listen`, within its
//! cap) goes through its TLS handshake on its own task (`handshake`, bounded in time), so a slow
//! client holds up no other; a plaintext request is answered 400 and closed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How often the certificate and key files are compared with what is served.
const POLL: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// A certificate or key file that cannot be served; each names the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("read --tls-cert {}: {error}", path.display())]
    ReadCert { path: PathBuf, error: std::io::Error },
    #[error("read --tls-key {}: {error}", path.display())]
    ReadKey { path: PathBuf, error: std::io::Error },
    #[error("--tls-cert {}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("--tls-cert {}: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("--tls-key {}: no PEM private key in it", path.display())]
    NoKey { path: PathBuf },
    #[error("--tls-key {}: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("--tls-key {} is not the key of the certificate in --tls-cert {}", key.display(), cert.display())]
    NotItsKey { cert: PathBuf, key: PathBuf },
}

/// HTTPS on the listener: the files, and the pair read from them last, which every new
/// handshake is served.
#[derive(Clone, Debug)]
pub struct ListenerTls {
    cert: PathBuf,
    key: PathBuf,
    served: Arc<Served>,
}

/// The pair served, swapped whole when the files change.
#[derive(Debug)]
struct Served {
    pair: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Served {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pair.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The two files' contents, and their digest (what a change is noticed by).
struct Contents {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    digest: [u8; 32],
}

fn read_files(cert: &Path, key: &Path) -> Result<Contents, TlsFileError> {
    let cert_pem = std::fs::read(cert).map_err(|error| TlsFileError::ReadCert { path: cert.to_owned(), error })?;
    let key_pem = std::fs::read(key).map_err(|error| TlsFileError::ReadKey { path: key.to_owned(), error })?;
    let digest = Sha256::new().chain_update(&cert_pem).chain_update([0]).chain_update(&key_pem).finalize().into();
    Ok(Contents { cert_pem, key_pem, digest })
}

/// The pair in the files' contents, its key checked against the certificate.
fn certified(cert: &Path, cert_pem: &[u8], key: &Path, key_pem: &[u8]) -> Result<CertifiedKey, TlsFileError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsFileError::BadCertificate { path: cert.to_owned(), reason: error.to_string() })?;
    if chain.is_empty() {
        return Err(TlsFileError::NoCertificate { path: cert.to_owned() });
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| match error {
        pem::Error::NoItemsFound => TlsFileError::NoKey { path: key.to_owned() },
        other => TlsFileError::BadKey { path: key.to_owned(), reason: other.to_string() },
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => TlsFileError::NotItsKey { cert: cert.to_owned(), key: key.to_owned() },
        other => TlsFileError::BadKey { path: key.to_owned(), reason: other.to_string() },
    })
}

impl ListenerTls {
    /// Read the pair at start.
    pub fn load(cert: &Path, key: &Path) -> Result<ListenerTls, TlsFileError> {
        let contents = read_files(cert, key)?;
        let pair = certified(cert, &contents.cert_pem, key, &contents.key_pem)?;
        Ok(ListenerTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            served: Arc::new(Served { pair: RwLock::new(Arc::new(pair)) }),
        })
    }

    /// The handshake side: TLS 1.2 and 1.3 (ring's safe defaults), HTTP/1.1, the pair served now.
    pub fn acceptor(&self) -> anyhow::Result<TlsAcceptor> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.served.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Read the files again whenever they change (every `POLL`) or on SIGHUP, until `shutdown`.
    /// A pair that loads is served to every handshake after; one that does not is logged, once
    /// per change, and the pair served is kept.
    pub async fn keep_fresh(self, shutdown: CancellationToken) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reading the TLS files again when they change only");
                None
            }
        };
        let mut seen = read_files(&self.cert, &self.key).ok().map(|contents| contents.digest);
        let mut complained: Option<String> = None;
        loop {
            let forced = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(POLL) => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let loaded = read_files(&self.cert, &self.key).and_then(|contents| {
                if !forced && seen == Some(contents.digest) {
                    return Ok(None);
                }
                let pair = certified(&self.cert, &contents.cert_pem, &self.key, &contents.key_pem)?;
                Ok(Some((pair, contents.digest)))
            });
            match loaded {
                Ok(None) => {}
                Ok(Some((pair, digest))) => {
                    *self.served.pair.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(pair);
                    seen = Some(digest);
                    complained = None;
                    tracing::info!(cert = %self.cert.display(), "TLS certificate read again; new connections get it");
                }
                Err(error) => {
                    let message = error.to_string();
                    if complained.as_deref() != Some(message.as_str()) {
                        tracing::error!(%error, "the TLS certificate or key files do not load; keeping the one served");
                        complained = Some(message);
                    }
                }
            }
        }
    }
}

/// The TLS handshake of one accepted connection, within `HANDSHAKE_TIMEOUT`; `None` if it failed.
/// A client speaking plain HTTP is told to use HTTPS (400) and the connection closed.
pub async fn handshake(acceptor: &TlsAcceptor, stream: TcpStream) -> Option<TlsStream<TcpStream>> {
    let attempt = async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) if first[0] != TLS_HANDSHAKE => {
                refuse_plaintext(stream).await;
                return None;
            }
            Ok(1) => {}
            _ => return None,
        }
        match acceptor.accept(stream).await {
            Ok(tls) => Some(tls),
            Err(error) => {
                tracing::debug!(%error, "TLS handshake failed");
                None
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await.ok().flatten()
}

/// Answer a plaintext request on the TLS port: 400, what to do instead, and close. Its request
/// head is read first, so that the client reads the answer rather than a reset.
async fn refuse_plaintext(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while head.len() < 8192 && !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    let body = "this listener speaks HTTPS only: use https://\n";
    let mut answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in super::protect::HEADERS {
        answer.push_str(&format!("{name}: {value}\r\n"));
    }
    answer.push_str("\r\n");
    answer.push_str(body);
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}
