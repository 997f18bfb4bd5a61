//! The replica's open files: the soft `RLIMIT_NOFILE` raised to the hard one at start (the
//! supervisor, and so every job, gets back the soft limit the replica was started with), and the
//! share the firing path keeps, which is what caps the HTTP server's connections (`http::listen`).

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Files the firing path holds whatever it runs: the ledger's pools (8 firing, 5 reading, the
/// start-up check and migrations) or SQLite's files, etcd's or ZooKeeper's connections, the
/// supervisor's socket, the job file being read, the runtimes' epoll, event and timer
/// descriptors, the notification and dead-man clients' connections, the standard streams and
/// the listener, with room to spare.
pub const BASE_RESERVE: u64 = 128;
/// Files one run holds at most: a process's stdout and stderr pipes (both ends while it starts),
/// or an HTTP job's connection and its name lookup.
pub const PER_RUN_RESERVE: u64 = 4;
/// The fewest connections the HTTP server takes, even when the limit leaves less: health checks
/// and an operator must get in. Below it, the firing path's reserve is not whole (a warning says so).
pub const MIN_CONNECTIONS: usize = 32;
/// The most connections the HTTP server takes: its one thread could not serve more anyway.
pub const MAX_CONNECTIONS: usize = 10_000;

/// The soft limit before `raise_soft_limit`, for the processes this replica starts.
static STARTED_WITH: OnceLock<u64> = OnceLock::new();

/// Raise the soft open-files limit to the hard one (once; later calls change nothing). Returns
/// the soft limit now in force.
pub fn raise_soft_limit() -> std::io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if STARTED_WITH.set(soft).is_err() || soft >= hard {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// Give the calling process back the soft limit the replica was started with (for the
/// supervisor, before it executes: jobs keep the limit they would have had without tenure;
/// programs using `select` need it at most 1,024). Only calls setrlimit, so it may run between
/// fork and exec.
pub fn restore_soft_limit_for_children() -> std::io::Result<()> {
    let Some(&soft) = STARTED_WITH.get() else { return Ok(()) };
    let (current, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < current {
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
    }
    Ok(())
}

/// The open-files budget: the soft limit, and the runs it must leave room for.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// The soft `RLIMIT_NOFILE` (`u64::MAX` when unlimited).
    pub limit: u64,
    /// `--max-runs`: the runs other replicas' leaders may assign this one at once.
    pub max_runs: u32,
}

impl Budget {
    /// The current soft limit, with room for `max_runs` assigned runs.
    pub fn current(max_runs: u32) -> Budget {
        let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
        Budget { limit, max_runs }
    }

    /// Files the firing path keeps when this replica, leading, runs `leader_jobs` jobs itself
    /// (one run each at a time) besides its assigned runs.
    pub fn reserve(&self, leader_jobs: usize) -> u64 {
        let runs = u64::from(self.max_runs).saturating_add(leader_jobs as u64);
        BASE_RESERVE.saturating_add(PER_RUN_RESERVE.saturating_mul(runs))
    }

    /// How many connections the HTTP server may hold open: what the limit leaves after the
    /// reserve (less one, for the connection being accepted), within `MIN_CONNECTIONS` and
    /// `MAX_CONNECTIONS`.
    pub fn connections(&self, leader_jobs: usize) -> usize {
        let left = self.limit.saturating_sub(self.reserve(leader_jobs)).saturating_sub(1);
        usize::try_from(left).unwrap_or(usize::MAX).clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
    }

    /// Whether the limit holds the whole reserve and `MIN_CONNECTIONS` besides.
    pub fn suffices(&self, leader_jobs: usize) -> bool {
        self.limit.saturating_sub(self.reserve(leader_jobs)) > MIN_CONNECTIONS as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_is_the_limit_less_the_firing_paths_reserve() {
        let dev = Budget { limit: 1024, max_runs: 64 };
        assert_eq!(dev.reserve(1), 128 + 4 * 65);
        assert_eq!(dev.connections(1), 1024 - 388 - 1);
        assert!(dev.suffices(1));
        let tight = Budget { limit: 1024, max_runs: 256 };
        assert_eq!(tight.connections(10), MIN_CONNECTIONS, "never below the floor");
        assert!(!tight.suffices(10), "but the reserve is not whole");
        let unlimited = Budget { limit: u64::MAX, max_runs: 256 };
        assert_eq!(unlimited.connections(1_000), MAX_CONNECTIONS);
    }
}
