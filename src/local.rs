//! In-process leadership for `tenure dev`: the candidates of one process share a lock instead of
//! an etcd election. It publishes the same `Leadership` as `election`, mints terms that grow with
//! every new leader (starting above the ledger's fence, so a restart is a new, higher term), and
//! passes the same contract suite (tests/it/leadership.rs).
//!
//! Terms minted in one process are unique only while no other process mints them from the same
//! ledger: [`LedgerLock`] keeps a second `tenure dev` off a ledger that one already uses.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::leadership::{BootInstant, LeaderTerm, Leadership, LeaseDeadline, NoStartWitness, Term};
use crate::telemetry::metric;

/// The cluster id local terms carry (etcd terms carry the etcd cluster's id).
pub const CLUSTER_ID: &str = "local";

/// After a step-down (the ledger refused the term), wait this long before campaigning again.
const STEP_DOWN_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct State {
    holder: Option<String>,
    last_term: i64,
}

/// One process's election: at most one candidate holds it at a time.
#[derive(Debug, Clone, Default)]
pub struct LocalElection {
    state: Arc<Mutex<State>>,
    released: Arc<Notify>,
}

impl LocalElection {
    /// An election whose first term is `after + 1` (pass the ledger's fence).
    pub fn new(after: i64) -> LocalElection {
        LocalElection {
            state: Arc::new(Mutex::new(State { holder: None, last_term: after })),
            released: Arc::default(),
        }
    }

    fn try_take(&self, node: &str) -> Option<i64> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.holder.is_some() {
            return None;
        }
        state.holder = Some(node.to_owned());
        state.last_term += 1;
        Some(state.last_term)
    }

    fn release(&self, node: &str) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.holder.as_deref() == Some(node) {
            state.holder = None;
        }
        drop(state);
        self.released.notify_waiters();
    }

    /// The node holding the election, if any.
    pub fn holder(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).holder.clone()
    }

    /// Campaign as `node` until `shutdown`; lead while holding the lock; on shutdown resign at
    /// once, so another candidate takes over immediately.
    pub async fn campaign(&self, node: String, leadership: watch::Sender<Leadership>, shutdown: CancellationToken) {
        metrics::gauge!(metric::IS_LEADER).set(0.0);
        while !shutdown.is_cancelled() {
            let released = self.released.notified();
            let Some(term) = self.try_take(&node) else {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = released => continue,
                }
            };
            let step_down = CancellationToken::new();
            metrics::counter!(metric::ELECTIONS_WON).increment(1);
            metrics::gauge!(metric::IS_LEADER).set(1.0);
            tracing::info!(term, %node, "elected (in-process)");
            leadership.send_replace(Leadership::Leader(LeaderTerm {
                term: Term::new(term, CLUSTER_ID.to_owned()),
                since: Utc::now(),
                // Nothing can take an in-process lock away: the lease never runs out.
                lease: LeaseDeadline::new(BootInstant::now() + Duration::from_secs(100 * 365 * 24 * 3600)),
                step_down: step_down.clone(),
                // Its ledger is a file on this machine, which no failover replaces.
                starts: Arc::new(NoStartWitness),
            }));
            let stepped_down = tokio::select! {
                () = shutdown.cancelled() => false,
                () = step_down.cancelled() => true,
            };
            metrics::gauge!(metric::IS_LEADER).set(0.0);
            leadership.send_replace(Leadership::Follower { leader: None });
            self.release(&node);
            if stepped_down {
                metrics::counter!(metric::STEP_DOWNS).increment(1);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(STEP_DOWN_PAUSE) => {}
                }
            }
        }
    }
}

/// The right to use one ledger file: an exclusive `flock` on `<ledger>.lock`, held until it is
/// dropped. The kernel releases it when the process ends, however it ends, so a SIGKILLed dev
/// does not keep the next one out. The file holds the holder's pid, so a refusal can name it.
#[derive(Debug)]
pub struct LedgerLock {
    _lock: Flock<File>,
}

/// Why a ledger could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LedgerLockError {
    #[error(
        "another tenure dev ({holder}) already runs on the ledger {}; stop it, or give this one its own --ledger",
        ledger.display()
    )]
    Held { ledger: PathBuf, holder: String },
    #[error("lock the ledger {}: {source}", lock_file.display())]
    Io { lock_file: PathBuf, source: std::io::Error },
}

impl LedgerLock {
    /// Take `ledger` for this process, or say who holds it. Creates the ledger's directory.
    pub fn acquire(ledger: &Path) -> Result<LedgerLock, LedgerLockError> {
        let parent = ledger.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|source| LedgerLockError::Io { lock_file: parent.to_owned(), source })?;
        // Beside the real file, so a ledger reached through a symlink meets the same lock.
        let real = std::fs::canonicalize(ledger).ok().or_else(|| {
            let parent = std::fs::canonicalize(parent).ok()?;
            Some(parent.join(ledger.file_name()?))
        });
        let mut name = real.unwrap_or_else(|| ledger.to_owned()).into_os_string();
        name.push(".lock");
        let lock_file = PathBuf::from(name);
        let io = |source| LedgerLockError::Io { lock_file: lock_file.clone(), source };
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_file).map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let pid = std::process::id();
                lock.set_len(0).and_then(|()| lock.rewind()).and_then(|_| writeln!(lock, "{pid}")).map_err(io)?;
                Ok(LedgerLock { _lock: lock })
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                // The holder writes its pid just after locking; it may not be there yet.
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "pid unknown".to_owned(),
                };
                Err(LedgerLockError::Held { ledger: ledger.to_owned(), holder })
            }
            Err((_, errno)) => Err(io(errno.into())),
        }
    }
}
