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
//! Every session goes to the servers the same way (`link`): plaintext, or TLS (`tcp+tls://`
//! servers, the CA of `--zookeeper-ca`, the client certificate ZooKeeper's `ssl.clientAuth=need`
//! asks for), with the server's name checked against its certificate. No SASL.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

mod link;

use super::{ConnectError, ElectionConfig, Keys, safety_margin};
use crate::leadership::{BootInstant, Leadership, LeaseDeadline, StartRecord, StartWitness, Term, WitnessError};
use crate::model::Member;
use crate::telemetry::metric;
use link::{Link, TlsLink, diagnose, open_session};
pub use link::{ZooKeeperAccess, ZooKeeperTls};

/// How long a single request may take before we treat ZooKeeper as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The name of a candidate's znode before the sequence ZooKeeper appends.
const CANDIDATE_PREFIX: &str = "candidate-";

/// The prefix of the ensemble ids this backend creates; etcd's cluster ids are numbers.
const ENSEMBLE_ID_PREFIX: &str = "zookeeper-";

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

/// The start witness of one term in ZooKeeper: a persistent znode (it must outlive the term's
/// session), set in a multi that first checks our candidate znode, so only the term whose
/// candidate still exists (its session alive, so still the lowest) writes it.
struct ZooKeeperStarts {
    client: zk::Client,
    path: String,
    candidate: String,
    term: i64,
}

impl std::fmt::Debug for ZooKeeperStarts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperStarts").field("path", &self.path).field("term", &self.term).finish()
    }
}

#[async_trait::async_trait]
impl StartWitness for ZooKeeperStarts {
    async fn read(&self) -> Result<Option<StartRecord>, WitnessError> {
        // A sync first: the read must see the last write of any term, not a lagging server's view.
        let read = async {
            self.client.sync(&self.path).await?;
            self.client.get_data(&self.path).await
        };
        match request(read).await {
            Ok((data, _)) => super::decode_starts(&data),
            Err(zk::Error::NoNode) => Ok(None),
            Err(error) => Err(WitnessError::Unavailable(format!("read {}: {error}", self.path))),
        }
    }

    async fn write(&self, record: &StartRecord) -> Result<(), WitnessError> {
        let unavailable = |error: String| WitnessError::Unavailable(format!("write {}: {error}", self.path));
        let mut writer = self.client.new_check_writer(&self.candidate, None).map_err(|e| unavailable(e.to_string()))?;
        writer.add_set_data(&self.path, &super::encode_starts(record), None).map_err(|e| unavailable(e.to_string()))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, writer.commit()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(zk::CheckWriteError::CheckFailed { .. })) => Err(WitnessError::NotLeading { term: self.term }),
            Ok(Err(error)) => Err(unavailable(error.to_string())),
            Err(_) => Err(unavailable(format!("no answer within {REQUEST_TIMEOUT:?}"))),
        }
    }
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
        match request(client.create(keys.starts(), &[], &persistent())).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(error) => return Err(error).context("create the start witness znode"),
        }
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
        let starts = ZooKeeperStarts {
            client: client.clone(),
            path: keys.starts().to_owned(),
            candidate: own.path.clone(),
            term: own.czxid,
        };
        let step_down = super::publish_leader(leadership, term, &lease, Arc::new(starts));
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
        // Stop firing first, then tell ZooKeeper. A replica shutting down resigns: the runs it has
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
