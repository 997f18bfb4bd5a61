//! Leadership through a coordinator, and the registry of live replicas the dashboard and the
//! reaping read. The only module that talks to a coordinator, through one of two backends behind
//! one contract:
//!
//! - `etcd`: the v3 election API on a lease; the term is the leader key's create revision.
//! - `zookeeper`: the ephemeral-sequential znode recipe in a session; the term is the leader
//!   znode's `czxid` (the zxid of its creation).
//!
//! Both keep a local lease deadline on `CLOCK_BOOTTIME` (the send time of the last acknowledged
//! heartbeat, plus the lease or session timeout, minus a margin), verify a win before publishing
//! it, publish `Leadership::Leader` with a `Term` and `Follower` the moment the deadline passes,
//! the coordinator says the lease or session is gone, or someone asks the leader to step down.
//! Then `Election` campaigns again. What the scheduler and the dashboard see is the same
//! `Leadership` channel and `ClusterSnapshot`, whichever backend runs: neither knows which.

pub mod etcd;
pub mod zookeeper;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use self::etcd::{EtcdAccess, connect};
pub use self::zookeeper::{ZooKeeperAccess, ZooKeeperTls};
use crate::clock::ClockCheck;
use crate::leadership::{LeaderTerm, Leadership, LeaseDeadline, StartRecord, StartWitness, Term, WitnessError};
use crate::model::Member;
use crate::telemetry::metric;

/// Which coordinator a cluster elects its leader in, and how to reach it.
#[derive(Debug, Clone)]
pub enum CoordinatorAccess {
    Etcd(EtcdAccess),
    ZooKeeper(ZooKeeperAccess),
}

/// Why a coordinator could not be reached at start: settings that will not get better by waiting
/// (a certificate refused, a wrong password, a malformed address) are told apart from a
/// coordinator that is not up yet.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{coordinator} at {endpoints}: {detail}")]
    Refused { coordinator: &'static str, endpoints: String, detail: String },
    #[error("{coordinator} at {endpoints} is not reachable yet: {detail}")]
    Unreachable { coordinator: &'static str, endpoints: String, detail: String },
    /// The connection was accepted, then closed: what a TLS-only etcd or ZooKeeper does to a
    /// plaintext client, and also what a restarting one may do, so the caller decides after a
    /// few tries.
    #[error("{coordinator} at {endpoints} closed the connection ({detail}); {hint}")]
    Closed { coordinator: &'static str, endpoints: String, detail: String, hint: &'static str },
}

/// A connected coordinator: the handle `tenure run` starts its election, its registration and
/// its view of the cluster from.
#[derive(Clone)]
pub enum Coordinator {
    /// Boxed: etcd's client is a few kilobytes, ZooKeeper's handle a few pointers.
    Etcd(Box<etcd_client::Client>),
    ZooKeeper(zookeeper::ZooKeeper),
}

impl Coordinator {
    /// Connect, and check that the coordinator answers (see `etcd::connect` and
    /// `zookeeper::ZooKeeper::connect`).
    pub async fn connect(access: &CoordinatorAccess, lease_ttl: Duration) -> Result<Coordinator, ConnectError> {
        match access {
            CoordinatorAccess::Etcd(access) => {
                etcd::connect(access, lease_ttl).await.map(|client| Coordinator::Etcd(Box::new(client)))
            }
            CoordinatorAccess::ZooKeeper(access) => {
                zookeeper::ZooKeeper::connect(access, lease_ttl).await.map(Coordinator::ZooKeeper)
            }
        }
    }

    /// Keep this replica's registration under `keys`, re-registering after any loss and
    /// whenever `member` changes, until `shutdown`.
    pub async fn register(
        self,
        keys: Keys,
        lease_ttl: Duration,
        member: watch::Receiver<Member>,
        shutdown: CancellationToken,
    ) {
        match self {
            Coordinator::Etcd(client) => etcd::register(*client, keys, lease_ttl, member, shutdown).await,
            Coordinator::ZooKeeper(zookeeper) => zookeeper.register(keys, member, shutdown).await,
        }
    }

    /// Every live replica, in node order.
    pub async fn list_members(&self, keys: &Keys) -> anyhow::Result<Vec<Member>> {
        match self {
            Coordinator::Etcd(client) => etcd::list_members(&mut (**client).clone(), keys).await,
            Coordinator::ZooKeeper(zookeeper) => zookeeper.list_members(keys).await,
        }
    }

    /// The current leader's node id and term, as the coordinator sees it.
    pub async fn current_leader(&self, keys: &Keys) -> anyhow::Result<Option<(String, i64)>> {
        match self {
            Coordinator::Etcd(client) => etcd::current_leader(&mut (**client).clone(), keys).await,
            Coordinator::ZooKeeper(zookeeper) => zookeeper.current_leader(keys).await,
        }
    }
}

/// What readiness (`/readyz`) may ask of the coordinator: whether it answers. A handle on the
/// replica's connection that can do nothing else, so the HTTP layer holds no coordinator client.
#[derive(Clone)]
pub struct CoordinatorProbe {
    coordinator: Coordinator,
}

impl CoordinatorProbe {
    pub fn new(coordinator: Coordinator) -> CoordinatorProbe {
        CoordinatorProbe { coordinator }
    }

    /// What a term number is with this coordinator, in words (the terms page says it).
    pub fn what_a_term_is(&self) -> &'static str {
        match &self.coordinator {
            Coordinator::Etcd(_) => "the etcd revision at which its leader's key was created",
            Coordinator::ZooKeeper(_) => {
                "the ZooKeeper transaction id (zxid) at which its leader's candidate znode was created"
            }
        }
    }

    /// Whether the coordinator answers a request within `within`.
    pub async fn answers(&self, within: Duration) -> bool {
        match &self.coordinator {
            Coordinator::Etcd(client) => etcd::answers(client, within).await,
            Coordinator::ZooKeeper(zookeeper) => zookeeper.answers(within).await,
        }
    }
}

/// Where a cluster of replicas keeps its election and registry in the coordinator: keys under
/// `/tenure/<election>/` in etcd, znodes at the same paths in ZooKeeper.
#[derive(Debug, Clone)]
pub struct Keys {
    election: String,
    members: String,
    ensemble: String,
    starts: String,
}

impl Keys {
    pub fn new(election_name: &str) -> Keys {
        Keys {
            election: format!("/tenure/{election_name}/leader"),
            // A prefix of its own: under the election prefix the oldest key *is* the leader.
            members: format!("/tenure/{election_name}/members/"),
            // ZooKeeper only: the ensemble's identity, created once (see `zookeeper`).
            ensemble: format!("/tenure/{election_name}/ensemble"),
            // Outside the election prefix, like the registry: the leader's start witness.
            starts: format!("/tenure/{election_name}/starts"),
        }
    }

    /// The election's key prefix (etcd) or the parent of the candidates' znodes (ZooKeeper).
    pub fn election(&self) -> &str {
        &self.election
    }

    /// The registry's prefix, ending in `/`.
    pub fn members(&self) -> &str {
        &self.members
    }

    pub fn ensemble(&self) -> &str {
        &self.ensemble
    }

    /// The start witness (`leadership::StartRecord`), written by each leader before its starts.
    pub fn starts(&self) -> &str {
        &self.starts
    }
}

/// The settings of one replica's campaign.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub keys: Keys,
    pub node_id: String,
    pub lease_ttl: Duration,
}

/// The backend a campaign runs on.
enum Campaign {
    Etcd(Box<etcd::Campaign>),
    ZooKeeper(zookeeper::Campaign),
}

/// The actor that campaigns, holds and gives up leadership, on either coordinator.
pub struct Election {
    campaign: Campaign,
    lease_ttl: Duration,
    leadership: watch::Sender<Leadership>,
    clock: Option<watch::Receiver<ClockCheck>>,
}

impl Election {
    pub fn new(coordinator: Coordinator, config: ElectionConfig, leadership: watch::Sender<Leadership>) -> Election {
        let lease_ttl = config.lease_ttl;
        let campaign = match coordinator {
            Coordinator::Etcd(client) => Campaign::Etcd(Box::new(etcd::Campaign::new(*client, config))),
            Coordinator::ZooKeeper(zookeeper) => Campaign::ZooKeeper(zookeeper.campaign(config)),
        };
        Election { campaign, lease_ttl, leadership, clock: None }
    }

    /// Campaign only while this replica reaches the database and its clock agrees with it.
    pub fn with_clock_guard(mut self, clock: watch::Receiver<ClockCheck>) -> Election {
        self.clock = Some(clock);
        self
    }

    /// Campaign until `shutdown` is cancelled; on the way out resign at once so a follower takes
    /// over within milliseconds.
    pub async fn run(mut self, shutdown: CancellationToken) {
        metrics::gauge!(metric::IS_LEADER).set(0.0);
        let retry_delay = (self.lease_ttl / 4).max(Duration::from_millis(200));
        while !shutdown.is_cancelled() {
            if let Some(clock) = self.clock.as_mut() {
                let refusal = clock.borrow_and_update().refusal();
                if let Some(why) = refusal {
                    tracing::warn!("not campaigning: {why}");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        _ = clock.wait_for(ClockCheck::ok) => {}
                    }
                    continue;
                }
            }
            let term = match &mut self.campaign {
                Campaign::Etcd(campaign) => campaign.one_term(&self.leadership, &shutdown).await,
                Campaign::ZooKeeper(campaign) => campaign.one_term(&self.leadership, &shutdown).await,
            };
            if let Err(error) = term {
                tracing::warn!(error = format!("{error:#}"), "election round failed; retrying");
                publish_follower(&self.leadership);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(retry_delay) => {}
                }
            }
        }
        publish_follower(&self.leadership);
    }
}

/// Publish a verified win; returns the token that ends the term when cancelled.
fn publish_leader(
    leadership: &watch::Sender<Leadership>,
    term: Term,
    lease: &LeaseDeadline,
    starts: Arc<dyn StartWitness>,
) -> CancellationToken {
    let step_down = CancellationToken::new();
    metrics::counter!(metric::ELECTIONS_WON).increment(1);
    metrics::gauge!(metric::IS_LEADER).set(1.0);
    leadership.send_replace(Leadership::Leader(LeaderTerm {
        term,
        since: Utc::now(),
        lease: lease.clone(),
        step_down: step_down.clone(),
        starts,
    }));
    step_down
}

fn publish_follower(leadership: &watch::Sender<Leadership>) {
    metrics::gauge!(metric::IS_LEADER).set(0.0);
    leadership.send_if_modified(|current| {
        if current.is_leader() {
            *current = Leadership::Follower { leader: None };
            true
        } else {
            false
        }
    });
}

/// The start witness as both coordinators store it: JSON.
fn encode_starts(record: &StartRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("a start record serialises")
}

fn decode_starts(bytes: &[u8]) -> Result<Option<StartRecord>, WitnessError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|error| WitnessError::Unavailable(format!("the start record does not parse: {error}")))
}

/// The local deadline is the send time of the last acknowledged heartbeat plus the lease TTL or
/// session timeout, minus at least this margin for clock-rate differences and scheduling delay.
fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(50), Duration::from_millis(1000))
}
