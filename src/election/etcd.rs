//! The etcd backend: leadership through etcd's v3 election API, and the registry of live replicas
//! on leased keys. The only code that talks to etcd.
//!
//! Each term (`Campaign::one_term`): grant a lease, keep it alive every TTL/3, campaign, verify
//! the win, publish `Leadership::Leader` with the term (the leader key's create revision), and
//! publish `Follower` the moment the lease deadline passes, etcd reports the lease gone, the
//! keep-alive stream fails, or someone asks it to step down. `Election` then campaigns again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions, ResignOptions,
    TlsOptions, Txn, TxnOp,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ConnectError, ElectionConfig, Keys};
use crate::leadership::{BootInstant, Leadership, LeaseDeadline, StartRecord, StartWitness, Term, WitnessError};
use crate::model::Member;
use crate::secret::Secret;
use crate::telemetry::metric;

/// How long a single unary etcd request may take before we treat etcd as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach etcd: endpoints, TLS (a CA to trust, a client certificate) and user/password
/// authentication. `Debug` shows no password.
#[derive(Debug, Clone, Default)]
pub struct EtcdAccess {
    pub endpoints: Vec<String>,
    /// PEM file of the CA(s) that sign etcd's server certificate; the system bundle when unset.
    pub ca: Option<PathBuf>,
    /// PEM files of this replica's client certificate and its key (`--client-cert-auth`).
    pub identity: Option<(PathBuf, PathBuf)>,
    pub user: Option<(String, Secret)>,
}

/// Where Debian and its derivatives keep the system's trusted CAs, used for `https://`
/// endpoints without `--etcd-ca`.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl EtcdAccess {
    /// Plain endpoints, no TLS, no user: a test's or a development etcd.
    pub fn plain(endpoints: Vec<String>) -> EtcdAccess {
        EtcdAccess { endpoints, ..EtcdAccess::default() }
    }

    fn uses_tls(&self) -> anyhow::Result<bool> {
        let https = self.endpoints.iter().filter(|endpoint| endpoint.starts_with("https://")).count();
        if https != 0 && https != self.endpoints.len() {
            bail!("etcd endpoints mix http:// and https://: {}", self.endpoints.join(","));
        }
        if https == 0 && (self.ca.is_some() || self.identity.is_some()) {
            bail!("--etcd-ca, --etcd-cert and --etcd-key need https:// etcd endpoints");
        }
        Ok(https != 0)
    }

    fn tls_options(&self) -> anyhow::Result<TlsOptions> {
        let ca_path = self.ca.clone().unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
        let ca = std::fs::read(&ca_path).with_context(|| format!("read etcd CA file {}", ca_path.display()))?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &self.identity {
            let cert =
                std::fs::read(cert).with_context(|| format!("read etcd client certificate {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("read etcd client key {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Ok(tls)
    }
}

/// Open a client whose channel notices a frozen etcd: HTTP/2 keep-alive pings every second,
/// answered within `lease_ttl / 3` at most. With TLS, trust `access.ca` and present the client
/// certificate; with a user, authenticate, and refresh the token whenever etcd says it expired
/// (etcd's default "simple" tokens live 5 minutes).
///
/// Checks that etcd answers before returning, so a certificate etcd refuses, a CA that does not
/// sign etcd's certificate or a wrong password stop the replica at start with a `Refused` error.
pub async fn connect(access: &EtcdAccess, lease_ttl: Duration) -> Result<Client, ConnectError> {
    let endpoints = access.endpoints.join(",");
    let refused = |detail: String| ConnectError::Refused { coordinator: "etcd", endpoints: endpoints.clone(), detail };
    let ping_timeout = (lease_ttl / 3).max(Duration::from_millis(300));
    let mut options = ConnectOptions::new()
        .with_keep_alive(Duration::from_secs(1), ping_timeout)
        .with_keep_alive_while_idle(true)
        .with_connect_timeout(REQUEST_TIMEOUT);
    let tls = access.uses_tls().map_err(|error| refused(format!("{error:#}")))?;
    if tls {
        options = options.with_tls(access.tls_options().map_err(|error| refused(format!("{error:#}")))?);
    }
    let hint = if tls {
        "etcd may refuse the client certificate (--etcd-cert expired, or not signed by its --trusted-ca-file)"
    } else {
        "if etcd serves TLS, use https:// endpoints with --etcd-ca"
    };
    if let Some((user, password)) = &access.user {
        options = options.with_user(user.clone(), password.expose()).with_auto_token_refresh(true);
    }
    let classify = |error: etcd_client::Error| {
        let detail = crate::telemetry::one_line(&error);
        if is_refusal(&detail) {
            refused(detail)
        } else if detail.contains("connection closed") || detail.contains("broken pipe") {
            ConnectError::Closed { coordinator: "etcd", endpoints: endpoints.clone(), detail, hint }
        } else {
            ConnectError::Unreachable { coordinator: "etcd", endpoints: endpoints.clone(), detail }
        }
    };
    // With a user, `connect` authenticates (a round trip); without one it connects lazily, so
    // ask for etcd's status to learn now whether TLS and the certificates work.
    let mut client =
        match tokio::time::timeout(REQUEST_TIMEOUT * 2, Client::connect(&access.endpoints, Some(options))).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return Err(classify(error)),
            Err(_) => {
                return Err(ConnectError::Unreachable {
                    coordinator: "etcd",
                    endpoints,
                    detail: "connect timed out".into(),
                });
            }
        };
    match tokio::time::timeout(REQUEST_TIMEOUT, client.status()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(error)) => Err(classify(error)),
        Err(_) => {
            Err(ConnectError::Unreachable { coordinator: "etcd", endpoints, detail: "status request timed out".into() })
        }
    }
}

/// Whether an etcd error is about credentials or certificates, which waiting does not fix.
fn is_refusal(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    [
        "certificate",
        "authentication failed",
        "invalid user id or password",
        "permission denied",
        "unauthenticated",
        "handshake",
        "tls",
        "alert",
        "invalid peer",
        "http2 error",
        "frame with invalid size",
    ]
    .iter()
    .any(|marker| detail.contains(marker))
}

/// One replica's campaigns in etcd, a term at a time.
pub(super) struct Campaign {
    client: Client,
    config: ElectionConfig,
}

impl Campaign {
    pub(super) fn new(client: Client, config: ElectionConfig) -> Campaign {
        Campaign { client, config }
    }

    /// Grant a lease, campaign on it, lead while it lives. Returns Ok when the term ended in an
    /// orderly way (step-down or shutdown), Err when etcd failed us.
    pub(super) async fn one_term(
        &mut self,
        leadership: &watch::Sender<Leadership>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let ttl = self.config.lease_ttl;
        let sent = BootInstant::now();
        let grant = timeout(self.client.lease_grant(ttl.as_secs().max(1) as i64, None)).await.context("grant lease")?;
        let lease_id = grant.id();
        let granted_ttl = Duration::from_secs(grant.ttl().max(0) as u64);
        let lease = LeaseDeadline::new(sent + granted_ttl - safety_margin(granted_ttl));
        let keep_alive_stop = CancellationToken::new();
        let keep_alive = tokio::spawn(keep_lease_alive(
            self.client.clone(),
            lease_id,
            granted_ttl,
            lease.clone(),
            keep_alive_stop.clone(),
        ));
        let _stop_keep_alive = keep_alive_stop.clone().drop_guard();

        let result = self.campaign_and_lead(leadership, lease_id, &lease, keep_alive, shutdown).await;
        keep_alive_stop.cancel();
        // Whatever happened, give the lease back so no key of ours outlives this round.
        let _ = timeout(self.client.lease_revoke(lease_id)).await;
        result
    }

    async fn campaign_and_lead(
        &mut self,
        leadership: &watch::Sender<Leadership>,
        lease_id: i64,
        lease: &LeaseDeadline,
        mut keep_alive: tokio::task::JoinHandle<LeaseEnd>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut election_client = self.client.election_client();
        let node_id = self.config.node_id.clone();
        let name = self.config.keys.election().to_owned();
        let campaign = election_client.campaign(name, node_id.clone(), lease_id);
        let response = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            end = &mut keep_alive => bail!("lease lost while campaigning: {:?}", end.ok()),
            response = campaign => response.context("campaign")?,
        };
        let cluster_id = response.header().map(|h| h.cluster_id()).unwrap_or_default();
        let leader_key = response.leader().cloned().context("campaign answered without a key")?;
        let revision = leader_key.rev();

        // etcd 3.4 can report a win for a session whose lease already died: check that our key
        // still exists, with this revision and on this lease, before acting on it.
        let check = Txn::new().when([
            Compare::create_revision(leader_key.key().to_vec(), CompareOp::Equal, revision),
            Compare::lease(leader_key.key().to_vec(), CompareOp::Equal, lease_id),
        ]);
        let verified = timeout(self.client.txn(check)).await.context("verify leader key")?;
        if !verified.succeeded() || !lease.is_valid() {
            bail!("campaign reported a win at revision {revision} but the key or lease is gone");
        }

        let term = Term::new(revision, cluster_id.to_string());
        tracing::info!(term = revision, node = %node_id, "became leader");
        let starts = EtcdStarts {
            client: self.client.clone(),
            key: self.config.keys.starts().to_owned(),
            leader_key: leader_key.key().to_vec(),
            revision,
        };
        let step_down = super::publish_leader(leadership, term, lease, Arc::new(starts));

        let keep_alive_ended = async {
            let end = (&mut keep_alive).await;
            if crate::testing::no_self_fence() {
                // Test switch: a leader that never learns it lost its lease.
                std::future::pending::<()>().await;
            }
            end
        };
        let outcome = tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            () = step_down.cancelled() => Ok(()),
            end = keep_alive_ended => Err(end.unwrap_or(LeaseEnd::Failed("keep-alive task panicked".into()))),
        };
        // Stop firing first, then tell etcd. A replica shutting down resigns: the runs it has
        // started still execute at their slots (`LeaseDeadline::resign`).
        if outcome.is_ok() && shutdown.is_cancelled() {
            lease.resign();
        } else {
            lease.expire();
        }
        super::publish_follower(leadership);
        metrics::counter!(metric::STEP_DOWNS).increment(1);
        match outcome {
            Ok(()) => {
                let resign = ResignOptions::new().with_leader(leader_key.clone());
                if let Err(error) = timeout(election_client.resign(Some(resign))).await {
                    tracing::warn!(error = format!("{error:#}"), "resign failed; the lease revoke ends the term");
                }
                tracing::info!(term = revision, "stepped down");
                Ok(())
            }
            Err(end) => {
                tracing::warn!(term = revision, reason = ?end, "lost leadership");
                Err(anyhow::anyhow!("lease ended: {end:?}"))
            }
        }
    }
}

/// The start witness of one term in etcd: a plain key (no lease: it must outlive the term),
/// written in a transaction that compares our leader key's create revision, so only the term
/// that still leads writes it.
struct EtcdStarts {
    client: Client,
    key: String,
    leader_key: Vec<u8>,
    revision: i64,
}

impl std::fmt::Debug for EtcdStarts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStarts").field("key", &self.key).field("term", &self.revision).finish()
    }
}

#[async_trait::async_trait]
impl StartWitness for EtcdStarts {
    async fn read(&self) -> Result<Option<StartRecord>, WitnessError> {
        let mut client = self.client.clone();
        let unavailable = |error: anyhow::Error| WitnessError::Unavailable(format!("read {}: {error:#}", self.key));
        let response = timeout(client.get(self.key.as_str(), None)).await.map_err(unavailable)?;
        match response.kvs().first() {
            Some(kv) => super::decode_starts(kv.value()),
            None => Ok(None),
        }
    }

    async fn write(&self, record: &StartRecord) -> Result<(), WitnessError> {
        let mut client = self.client.clone();
        let put = Txn::new()
            .when([Compare::create_revision(self.leader_key.clone(), CompareOp::Equal, self.revision)])
            .and_then([TxnOp::put(self.key.as_str(), super::encode_starts(record), None)]);
        let response = timeout(client.txn(put))
            .await
            .map_err(|error| WitnessError::Unavailable(format!("write {}: {error:#}", self.key)))?;
        if !response.succeeded() {
            return Err(WitnessError::NotLeading { term: self.revision });
        }
        Ok(())
    }
}

/// Why a lease stopped being kept alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEnd {
    /// etcd answered with TTL 0: the lease is gone.
    Expired,
    /// The local deadline passed without an acknowledged keep-alive.
    DeadlinePassed,
    /// The stream or a request failed.
    Failed(String),
    /// We were told to stop.
    Stopped,
}

use super::safety_margin;

/// Keep `lease_id` alive every TTL/3 until stopped or lost. Extends `lease` from the send time of
/// each acknowledged keep-alive; expires it on any failure.
async fn keep_lease_alive(
    client: Client,
    lease_id: i64,
    ttl: Duration,
    lease: LeaseDeadline,
    stop: CancellationToken,
) -> LeaseEnd {
    let end = keep_lease_alive_inner(client, lease_id, ttl, &lease, &stop).await;
    if end != LeaseEnd::Stopped {
        lease.expire();
    }
    end
}

async fn keep_lease_alive_inner(
    mut client: Client,
    lease_id: i64,
    ttl: Duration,
    lease: &LeaseDeadline,
    stop: &CancellationToken,
) -> LeaseEnd {
    let interval = ttl / 3;
    let opened = tokio::select! {
        () = stop.cancelled() => return LeaseEnd::Stopped,
        () = lease.expired() => return LeaseEnd::DeadlinePassed,
        opened = client.lease_keep_alive(lease_id) => opened,
    };
    let (mut keeper, mut stream) = match opened {
        Ok(pair) => pair,
        Err(error) => return LeaseEnd::Failed(format!("open keep-alive stream: {error}")),
    };
    let mut next_send = tokio::time::Instant::now() + interval;
    loop {
        tokio::select! {
            () = stop.cancelled() => return LeaseEnd::Stopped,
            () = lease.expired() => return LeaseEnd::DeadlinePassed,
            () = tokio::time::sleep_until(next_send) => {}
        }
        let sent = BootInstant::now();
        next_send = tokio::time::Instant::now() + interval;
        if let Err(error) = keeper.keep_alive().await {
            return LeaseEnd::Failed(format!("send keep-alive: {error}"));
        }
        let answer = tokio::select! {
            () = stop.cancelled() => return LeaseEnd::Stopped,
            () = lease.expired() => return LeaseEnd::DeadlinePassed,
            answer = stream.message() => answer,
        };
        match answer {
            Ok(Some(response)) if response.ttl() > 0 => {
                let granted = Duration::from_secs(response.ttl() as u64);
                lease.extend_to(sent + granted - safety_margin(granted));
                metrics::histogram!(metric::KEEPALIVE_RTT).record(sent.elapsed().as_secs_f64());
            }
            Ok(Some(_)) => return LeaseEnd::Expired,
            Ok(None) => return LeaseEnd::Failed("keep-alive stream ended".into()),
            Err(error) => return LeaseEnd::Failed(format!("keep-alive stream: {error}")),
        }
    }
}

async fn timeout<T, E>(request: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!("etcd did not answer within {REQUEST_TIMEOUT:?}"),
    }
}

/// Whether etcd answers a status request within `within` (readiness).
pub(super) async fn answers(client: &Client, within: Duration) -> bool {
    let mut client = client.clone();
    tokio::time::timeout(within, client.status()).await.is_ok_and(|status| status.is_ok())
}

/// Keep this replica's registration in etcd under its own lease, re-registering after any loss
/// and whenever `member` changes (a reloaded job file changes the config hash).
pub(super) async fn register(
    client: Client,
    keys: Keys,
    lease_ttl: Duration,
    mut member: watch::Receiver<Member>,
    shutdown: CancellationToken,
) {
    let retry_delay = (lease_ttl / 4).max(Duration::from_millis(200));
    while !shutdown.is_cancelled() {
        match register_once(client.clone(), &keys, lease_ttl, &mut member, &shutdown).await {
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "registration lost; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(retry_delay) => {}
                }
            }
        }
    }
}

async fn register_once(
    mut client: Client,
    keys: &Keys,
    lease_ttl: Duration,
    member: &mut watch::Receiver<Member>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let sent = BootInstant::now();
    let grant = timeout(client.lease_grant(lease_ttl.as_secs().max(1) as i64, None)).await?;
    let lease_id = grant.id();
    let granted = Duration::from_secs(grant.ttl().max(0) as u64);
    let lease = LeaseDeadline::new(sent + granted);
    let stop = CancellationToken::new();
    let mut keep_alive = tokio::spawn(keep_lease_alive(client.clone(), lease_id, granted, lease, stop.clone()));
    let _stop_keep_alive = stop.clone().drop_guard();
    let result = async {
        loop {
            let current = member.borrow_and_update().clone();
            let key = format!("{}{}", keys.members(), current.node);
            let value = serde_json::to_vec(&current)?;
            timeout(client.put(key, value, Some(PutOptions::new().with_lease(lease_id)))).await?;
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                changed = member.changed() => if changed.is_err() { return Ok(()) },
                end = &mut keep_alive => bail!("registration lease ended: {:?}", end.ok()),
            }
        }
    }
    .await;
    stop.cancel();
    let _ = timeout(client.lease_revoke(lease_id)).await;
    result
}

/// Every live replica, in node order.
pub(super) async fn list_members(client: &mut Client, keys: &Keys) -> anyhow::Result<Vec<Member>> {
    let response = timeout(client.get(keys.members().to_owned(), Some(GetOptions::new().with_prefix()))).await?;
    let mut members = Vec::new();
    for kv in response.kvs() {
        match serde_json::from_slice::<Member>(kv.value()) {
            Ok(member) => members.push(member),
            Err(error) => tracing::warn!(key = ?kv.key_str(), %error, "unreadable member record"),
        }
    }
    members.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(members)
}

/// The current leader's node id and term, as etcd sees it.
pub(super) async fn current_leader(client: &mut Client, keys: &Keys) -> anyhow::Result<Option<(String, i64)>> {
    // The leader is the oldest key under the election prefix.
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(etcd_client::SortTarget::Create, etcd_client::SortOrder::Ascend)
        .with_limit(1);
    let response = timeout(client.get(format!("{}/", keys.election()), Some(options))).await?;
    Ok(response.kvs().first().map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.create_revision())))
}
