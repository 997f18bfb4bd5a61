//! The domain's shared vocabulary: what happened to a slot (`RunStatus`, `RunOutcome`), why a
//! slot was claimed (`Trigger`, `TriggerKind`), and the cluster as a replica sees it (`Member`,
//! `ClusterSnapshot`). `store`, `executor`, `scheduler`, `election` and `http` all speak it, so
//! none of them imports another only for its types. Plain data: no IO, no clock.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What the ledger says happened to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Claimed (`started_at` empty: not started, a newer term may take it over) or started
    /// (`started_at` set, through the fenced `start_runs`).
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// Stopped by tenure: leadership lost, `replace`, shutdown grace exceeded.
    Killed,
    /// Not started because the previous run was still going (`concurrency: forbid`).
    Skipped,
    /// Not run: the leader was down or late beyond the job's policy.
    Missed,
    /// Started by a leader that vanished without recording an outcome.
    Lost,
}

impl RunStatus {
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::TimedOut,
        RunStatus::Killed,
        RunStatus::Skipped,
        RunStatus::Missed,
        RunStatus::Lost,
    ];

    /// The ledger's spelling (the `status` column, the API, the pages' CSS classes).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Killed => "killed",
            RunStatus::Skipped => "skipped",
            RunStatus::Missed => "missed",
            RunStatus::Lost => "lost",
        }
    }

    /// `None` for a word that is no status: callers decide whether that is a client's mistake
    /// (a filter in a URL) or a row this binary cannot read (a decode error), never a default.
    pub fn parse(text: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a slot is claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    /// An operator's trigger request (`TriggerRecord::id`); the claim that records its slot
    /// marks it handled, and a refused claim leaves it pending for the next leader.
    Manual {
        request: i64,
    },
    /// A slot of an operator's backfill (`backfills.id`), claimed like a scheduled slot; it
    /// leaves the backfill's queue once its row has started or ended.
    Backfill {
        request: i64,
    },
    /// A run released by the runs of the jobs it waits for (`after:`), for their slot: its
    /// identity is (job, that slot), claimed like a scheduled slot.
    Upstream,
}

impl Trigger {
    pub fn kind(self) -> TriggerKind {
        match self {
            Trigger::Schedule => TriggerKind::Schedule,
            Trigger::Manual { .. } => TriggerKind::Manual,
            Trigger::Backfill { .. } => TriggerKind::Backfill,
            Trigger::Upstream => TriggerKind::Upstream,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.kind().as_str()
    }

    /// The request behind a manual or backfill claim.
    pub fn request_id(self) -> Option<i64> {
        match self {
            Trigger::Schedule | Trigger::Upstream => None,
            Trigger::Manual { request } | Trigger::Backfill { request } => Some(request),
        }
    }

    /// The trigger request a manual claim fulfils.
    pub fn request(self) -> Option<i64> {
        match self {
            Trigger::Schedule | Trigger::Backfill { .. } | Trigger::Upstream => None,
            Trigger::Manual { request } => Some(request),
        }
    }
}

/// What a ledger row says about why its slot was claimed. The row keeps the kind only: the
/// request behind a manual run is the trigger row linked to it (`TriggerRecord::run_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    Schedule,
    Manual,
    Backfill,
    /// Released by the runs of the jobs it waits for (`after:`).
    Upstream,
}

impl TriggerKind {
    /// The ledger's spelling (the `trigger` column, the API).
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Schedule => "schedule",
            TriggerKind::Manual => "manual",
            TriggerKind::Backfill => "backfill",
            TriggerKind::Upstream => "upstream",
        }
    }

    pub fn parse(text: &str) -> Option<TriggerKind> {
        [TriggerKind::Schedule, TriggerKind::Manual, TriggerKind::Backfill, TriggerKind::Upstream]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

impl fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operator's word on one job, recorded in the ledger for the leader to act on. It overrides
/// the job file's `paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
}

/// Largest output tail kept per run.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// How a run ended, as recorded on its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub status: RunStatus,
    pub exit_code: Option<i32>,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    /// At most `OUTPUT_LIMIT` bytes: the tail.
    pub output: String,
    /// When the attempt really began: its process spawned (the supervisor reported it), or its
    /// HTTP request began to be sent. `None` for an attempt that never began.
    pub began_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
}

/// What a replica tells the cluster about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: String,
    pub version: String,
    pub address: String,
    pub config_hash: String,
    pub started_at: DateTime<Utc>,
}

/// The cluster as one replica last saw it: who leads and every replica seen in the last hour
/// (gone ones kept with `live: false`, so a crashed replica stays visible for a while).
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    /// The leader's node id and term.
    pub leader: Option<(String, i64)>,
    pub roster: Vec<RosterEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterEntry {
    pub member: Member,
    pub last_seen: DateTime<Utc>,
    pub live: bool,
}

impl ClusterSnapshot {
    /// How long a replica that left stays on the roster.
    const FORGET_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(1);

    /// Fold a fresh list of live members in at `now`.
    pub fn observe(&mut self, live: &[Member], now: DateTime<Utc>) {
        for entry in &mut self.roster {
            entry.live = false;
        }
        for member in live {
            match self.roster.iter_mut().find(|entry| entry.member.node == member.node) {
                Some(entry) => *entry = RosterEntry { member: member.clone(), last_seen: now, live: true },
                None => self.roster.push(RosterEntry { member: member.clone(), last_seen: now, live: true }),
            }
        }
        self.roster.retain(|entry| entry.live || now - entry.last_seen < Self::FORGET_AFTER);
        self.roster.sort_by(|a, b| a.member.node.cmp(&b.member.node));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_trigger_kinds_read_back_what_they_write() {
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(RunStatus::parse("paused"), None);
        for kind in [TriggerKind::Schedule, TriggerKind::Manual, TriggerKind::Backfill] {
            assert_eq!(TriggerKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert_eq!(Trigger::Manual { request: 7 }.kind(), TriggerKind::Manual);
        assert_eq!(TriggerKind::parse("webhook"), None);
    }
}
