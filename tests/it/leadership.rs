//! The leadership contract: what `tenure run` (on etcd or on ZooKeeper) and `tenure dev`
//! (in-process) all promise. One suite, three backends: exactly one of several candidates leads, with a term; a resigning
//! leader hands over at once to another with a higher term; terms grow with every new leader.

use std::time::Duration;

use tenure::election::{Coordinator, CoordinatorAccess, Election, ElectionConfig, Keys, ZooKeeperAccess, ZooKeeperTls};
use tenure::leadership::{Leadership, StartRecord, StartWitness, WitnessError};
use tenure::local::LocalElection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::harness::{Etcd, ZooKeeper, wait_for};

/// Long enough that a hand-over which waited for the lease to expire is told apart from a
/// resignation with room to spare on a loaded machine.
const LEASE_TTL: Duration = Duration::from_secs(5);

/// Where candidates campaign.
enum Backend {
    Etcd {
        _etcd: Etcd,
        coordinator: Coordinator,
    },
    /// One ZooKeeper server; every candidate opens its own sessions on it.
    ZooKeeper {
        _zookeeper: ZooKeeper,
        coordinator: Coordinator,
    },
    Local(LocalElection),
}

/// One campaigning candidate.
struct Candidate {
    leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Candidate {
    fn term(&self) -> Option<i64> {
        self.leadership.borrow().term().map(|term| term.revision())
    }

    /// The start witness of the term this candidate leads.
    fn starts(&self) -> std::sync::Arc<dyn StartWitness> {
        match &*self.leadership.borrow() {
            Leadership::Leader(leader) => leader.starts.clone(),
            Leadership::Follower { .. } => panic!("not leading"),
        }
    }

    /// Resign (as on SIGTERM) and wait until the campaign has ended.
    async fn resign(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
        assert!(!self.leadership.borrow().is_leader(), "a resigned candidate still says it leads");
    }
}

impl Backend {
    async fn etcd() -> Backend {
        let etcd = Etcd::start().await;
        let access = CoordinatorAccess::Etcd(tenure::election::EtcdAccess::plain(vec![etcd.client_url()]));
        let coordinator = Coordinator::connect(&access, LEASE_TTL).await.unwrap();
        Backend::Etcd { _etcd: etcd, coordinator }
    }

    async fn zookeeper() -> Backend {
        let zookeeper = ZooKeeper::start().await;
        let access = CoordinatorAccess::ZooKeeper(
            ZooKeeperAccess::new(&[zookeeper.connect_string()], ZooKeeperTls::default()).unwrap(),
        );
        let coordinator = Coordinator::connect(&access, LEASE_TTL).await.unwrap();
        Backend::ZooKeeper { _zookeeper: zookeeper, coordinator }
    }

    fn local() -> Backend {
        Backend::Local(LocalElection::new(0))
    }

    fn candidate(&self, node: &str) -> Candidate {
        let (tx, rx) = watch::channel(Leadership::Follower { leader: None });
        let shutdown = CancellationToken::new();
        let task = match self {
            Backend::Etcd { coordinator, .. } | Backend::ZooKeeper { coordinator, .. } => {
                let config =
                    ElectionConfig { keys: Keys::new("contract"), node_id: node.to_owned(), lease_ttl: LEASE_TTL };
                tokio::spawn(Election::new(coordinator.clone(), config, tx).run(shutdown.clone()))
            }
            Backend::Local(election) => {
                let election = election.clone();
                let (node, stop) = (node.to_owned(), shutdown.clone());
                tokio::spawn(async move { election.campaign(node, tx, stop).await })
            }
        };
        Candidate { leadership: rx, shutdown, task }
    }
}

macro_rules! contract {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn etcd() {
                super::$name(super::Backend::etcd().await).await;
            }

            #[tokio::test]
            async fn zookeeper() {
                super::$name(super::Backend::zookeeper().await).await;
            }

            #[tokio::test]
            async fn in_process() {
                super::$name(super::Backend::local()).await;
            }
        }
    };
}

contract!(exactly_one_of_three_candidates_leads_with_a_term);
contract!(a_resigning_leader_hands_over_at_once_with_a_higher_term);

fn leaders(candidates: &[Candidate]) -> Vec<usize> {
    (0..candidates.len()).filter(|&i| candidates[i].leadership.borrow().is_leader()).collect()
}

async fn exactly_one_of_three_candidates_leads_with_a_term(backend: Backend) {
    let candidates: Vec<Candidate> = ["a", "b", "c"].iter().map(|node| backend.candidate(node)).collect();
    wait_for("a leader", Duration::from_secs(10), || async { !leaders(&candidates).is_empty() }).await;
    // Stays one: nobody else joins in over a few lease periods.
    for _ in 0..20 {
        assert_eq!(leaders(&candidates).len(), 1, "two leaders at once");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = leaders(&candidates)[0];
    assert!(candidates[leader].term().unwrap() > 0);
    for candidate in candidates {
        candidate.resign().await;
    }
}

async fn a_resigning_leader_hands_over_at_once_with_a_higher_term(backend: Backend) {
    let mut candidates: Vec<Candidate> = ["a", "b", "c"].iter().map(|node| backend.candidate(node)).collect();
    let mut terms = Vec::new();
    for round in 0..3 {
        wait_for("a leader", Duration::from_secs(10), || async { leaders(&candidates).len() == 1 }).await;
        let leader = leaders(&candidates)[0];
        terms.push(candidates[leader].term().unwrap());
        let resigning = candidates.remove(leader);
        let started = std::time::Instant::now();
        resigning.resign().await;
        if candidates.is_empty() {
            break;
        }
        // A resignation is not a crash: the next leader must not wait for a lease to expire.
        wait_for("the next leader", LEASE_TTL / 2, || async { leaders(&candidates).len() == 1 }).await;
        eprintln!("round {round}: hand-over in {:?}", started.elapsed());
    }
    assert!(terms.windows(2).all(|pair| pair[0] < pair[1]), "terms must grow: {terms:?}");
    for candidate in candidates {
        candidate.resign().await;
    }
}

mod a_start_record_outlives_its_term_and_only_the_leading_term_writes_it {
    #[tokio::test]
    async fn etcd() {
        super::a_start_record_outlives_its_term_and_only_the_leading_term_writes_it(super::Backend::etcd().await).await;
    }

    #[tokio::test]
    async fn zookeeper() {
        super::a_start_record_outlives_its_term_and_only_the_leading_term_writes_it(super::Backend::zookeeper().await)
            .await;
    }
}

/// The coordinators' start witness (not the in-process one, whose ledger cannot fail over): a
/// record written by a term is what the next term reads, although the writer's lease or session
/// is gone; a term that no longer leads cannot write it.
async fn a_start_record_outlives_its_term_and_only_the_leading_term_writes_it(backend: Backend) {
    let mut candidates: Vec<Candidate> = ["a", "b"].iter().map(|node| backend.candidate(node)).collect();
    wait_for("a leader", Duration::from_secs(10), || async { leaders(&candidates).len() == 1 }).await;
    let first = candidates.remove(leaders(&candidates)[0]);
    let first_starts = first.starts();
    assert_eq!(first_starts.read().await.unwrap(), None, "a new election has no record");
    let through = chrono::DateTime::from_timestamp(1_800_000_000, 0);
    let record = StartRecord { term: first.term().unwrap(), through, ..StartRecord::default() };
    first_starts.write(&record).await.unwrap();
    first.resign().await;
    wait_for("the next leader", Duration::from_secs(10), || async { leaders(&candidates).len() == 1 }).await;
    let second = &candidates[0];
    let second_starts = second.starts();
    assert_eq!(second_starts.read().await.unwrap(), Some(record.clone()), "the record outlives its term");
    let stale = StartRecord { through: chrono::DateTime::from_timestamp(1_900_000_000, 0), ..record.clone() };
    match first_starts.write(&stale).await {
        Err(WitnessError::NotLeading { .. }) => {}
        other => panic!("a term that no longer leads wrote the start record: {other:?}"),
    }
    let newer = StartRecord { term: second.term().unwrap(), ..record };
    second_starts.write(&newer).await.unwrap();
    assert_eq!(second_starts.read().await.unwrap(), Some(newer));
    for candidate in candidates {
        candidate.resign().await;
    }
}
