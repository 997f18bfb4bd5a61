//! Runs released by the runs of the jobs they wait for (`after:`). A dependent run's identity is
//! (its job, the slot of the runs that released it), so the same fenced claim and the same
//! unique (job, slot) row that keep a scheduled slot to one run keep it to one run too.
//!
//! What is ready is read off the ledger alone (`Ledger::awaited_runs`: awaited runs that ended
//! recently, of slots the dependent has no row for), never from what this leader remembers, so
//! a leader that dies between an awaited run's end and the dependent's claim leaves it to the
//! next one, which finds it the same way. `decide` (pure, no IO, no clock) says what each such
//! slot comes to: claimed, recorded `skipped` or `missed` with its reason, or left to wait.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use crate::config::{AfterOn, CatchUp, Job, JobSet};
use crate::leadership::Term;
use crate::model::RunStatus;
use crate::store::{AwaitLink, AwaitedRun, Store};

/// How often the leader looks for released runs when nothing told it sooner (a run of its own
/// that ended asks for a look at once; runs ended on other replicas are found by this).
pub(super) const RELEASE_EVERY: Duration = Duration::from_secs(1);
/// How far back, beyond a dependent's wait and starting deadline, the scan looks for awaited runs
/// that ended: a slot released while no leader looked (a failover) is still found and decided,
/// if only to be recorded `missed`.
pub(super) const RELEASE_MARGIN: Duration = Duration::from_secs(60);

/// What a scan of the ledger found: the awaited runs of slots not released yet.
pub(super) type Found = Result<Vec<AwaitedRun>, sqlx::Error>;

/// The term's looks at the ledger for released runs: one at a time, beside the loop.
pub(super) struct Releases {
    /// Whether any job of the file waits for another; without one, nothing is looked for.
    pub(super) enabled: bool,
    /// When the next look is due (`None` while one is under way).
    pub(super) next: Option<Instant>,
    /// A run ended while a look was under way: look again as soon as it is back.
    pub(super) again: bool,
    /// Released slots whose run tasks have not ended here, by run key: a look that still finds
    /// them without a row (their claim not committed yet) leaves them be.
    pub(super) going: HashMap<u64, (String, DateTime<Utc>)>,
    found_tx: mpsc::Sender<Found>,
    pub(super) found: mpsc::Receiver<Found>,
    scan: Option<AbortOnDropHandle<()>>,
}

impl Releases {
    pub(super) fn new(jobs: &JobSet) -> Releases {
        let (found_tx, found) = mpsc::channel(1);
        Releases {
            enabled: false,
            next: Some(Instant::now()),
            again: false,
            going: HashMap::new(),
            found_tx,
            found,
            scan: None,
        }
        .with_jobs(jobs)
    }

    fn with_jobs(mut self, jobs: &JobSet) -> Releases {
        self.reload(jobs);
        self
    }

    /// The job file changed: whether to look at all.
    pub(super) fn reload(&mut self, jobs: &JobSet) {
        self.enabled = jobs.jobs().iter().any(|job| !job.after.is_empty());
    }

    /// A run ended: its dependents may be released now, so look at once (or right after the
    /// look under way).
    pub(super) fn run_ended(&mut self, key: u64) {
        self.going.remove(&key);
        match self.next {
            Some(_) => self.next = Some(Instant::now()),
            None => self.again = true,
        }
    }

    /// Look at the ledger beside the loop; the answer comes back on `found`.
    pub(super) fn scan(&mut self, store: &Store, term: &Term, jobs: &JobSet, now: DateTime<Utc>) {
        let links: Vec<(String, String, DateTime<Utc>)> = jobs
            .jobs()
            .iter()
            .flat_map(|job| {
                let since = scan_since(job, now);
                job.after.iter().map(move |up| (job.name.to_string(), up.job.to_string(), since))
            })
            .collect();
        let (store, term, found_tx) = (store.clone(), term.clone(), self.found_tx.clone());
        self.next = None;
        self.scan = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let links: Vec<AwaitLink<'_>> = links
                .iter()
                .map(|(dependent, upstream, since)| AwaitLink { dependent, upstream, since: *since })
                .collect();
            let found = store.awaited_runs(&term, &links).await;
            if let Some(hold) = crate::testing::release_hold() {
                tokio::time::sleep(hold).await;
            }
            let _ = found_tx.send(found).await;
        })));
    }

    /// A look came back: the next is due in `RELEASE_EVERY`, or at once if a run ended meanwhile.
    pub(super) fn scanned(&mut self) {
        let wait = if std::mem::take(&mut self.again) { Duration::ZERO } else { RELEASE_EVERY };
        self.next = Some(Instant::now() + wait);
    }
}

/// A released slot and when it was released (its last awaited run's end).
pub(super) type ReleasedAt = (DateTime<Utc>, DateTime<Utc>);

/// A slot released longer ago than this was released while no leader looked (a failover, an
/// outage): it is late, and the job's `catch_up` decides it, as for a scheduled slot that fell due
/// meanwhile. Two looks and a second: a leader that leads finds every release sooner.
pub(super) const LATE_RELEASE: Duration = Duration::from_secs(3);

/// What `catch_up` makes of `released` (the slots of one dependent job found ready at once, each
/// with when it was released, oldest slot first) at `now`: for each, `None` to run it, or why it
/// is recorded `missed`. `all` runs every late slot; `latest` only the newest late one, and none
/// when an on-time one runs; `none` no late slot.
pub(super) fn catch_up(job: &Job, released: &[ReleasedAt], now: DateTime<Utc>) -> Vec<Option<&'static str>> {
    let late_before = now - chrono::Duration::from_std(LATE_RELEASE).unwrap_or_default();
    let late = |released_at: &DateTime<Utc>| *released_at < late_before;
    let newest_late = released.iter().rposition(|(_, at)| late(at));
    let any_on_time = released.iter().any(|(_, at)| !late(at));
    released
        .iter()
        .enumerate()
        .map(|(index, (_, at))| match job.catch_up {
            _ if !late(at) => None,
            CatchUp::All => None,
            CatchUp::Latest if !any_on_time && Some(index) == newest_late => None,
            CatchUp::Latest => Some("not run: released late, and `catch_up: latest` runs only the newest late slot"),
            CatchUp::None => Some("not run: released late, and `catch_up: none` runs no late slot"),
        })
        .collect()
}

/// When the awaited runs of a slot released it: the last one's end.
pub(super) fn released_at(runs: &[&AwaitedRun]) -> Option<DateTime<Utc>> {
    runs.iter().filter_map(|run| run.ended_at).max()
}

/// What one released slot of a dependent job comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Release {
    /// Every awaited run ended as required: claim the slot; these runs released it.
    Run { upstream_run_ids: Vec<i64> },
    /// It can no longer run: recorded so, saying why.
    Record { status: RunStatus, reason: String },
    /// Some awaited runs have not ended (or have no row of the slot yet), and the wait is not over.
    Wait,
}

/// Since when the scan looks for ended awaited runs of `job` at `now`.
pub(super) fn scan_since(job: &Job, now: DateTime<Utc>) -> DateTime<Utc> {
    let back = job.wait_bound() + job.starting_deadline + RELEASE_MARGIN;
    now - chrono::Duration::from_std(back).unwrap_or(chrono::Duration::MAX)
}

/// Whether an awaited run that ended `status` releases a job waiting for it `on`.
fn releases(on: AfterOn, status: RunStatus) -> bool {
    let ran_and_failed = matches!(status, RunStatus::Failed | RunStatus::TimedOut | RunStatus::Killed);
    match on {
        AfterOn::Success => status == RunStatus::Succeeded,
        AfterOn::Failure => ran_and_failed,
        AfterOn::Always => status == RunStatus::Succeeded || ran_and_failed,
    }
}

fn wanted(on: AfterOn) -> &'static str {
    match on {
        AfterOn::Success => "its success",
        AfterOn::Failure => "its failure",
        AfterOn::Always => "its end",
    }
}

/// What `runs` (the awaited runs of one slot of `job`, any order) make of that slot at `now`.
pub(super) fn decide(job: &Job, runs: &[&AwaitedRun], now: DateTime<Utc>) -> Release {
    let first_end = runs.iter().filter_map(|run| run.ended_at).min();
    let mut upstream_run_ids = Vec::with_capacity(job.after.len());
    let mut pending: Option<String> = None;
    for upstream in &job.after {
        let name = upstream.job.as_str();
        let Some(run) = runs.iter().find(|run| run.job == name) else {
            pending.get_or_insert_with(|| format!("`{name}` had no run of this slot"));
            continue;
        };
        let Some(_) = run.ended_at else {
            pending.get_or_insert_with(|| format!("run {} of `{name}` had not ended", run.run_id));
            continue;
        };
        match run.status {
            RunStatus::Skipped | RunStatus::Missed | RunStatus::Lost => {
                let status = if run.status == RunStatus::Missed { RunStatus::Missed } else { RunStatus::Skipped };
                let reason = format!("not run: awaited run {} of `{name}` was {}", run.run_id, run.status);
                return Release::Record { status, reason };
            }
            status if !releases(upstream.on, status) => {
                let reason = format!(
                    "not run: awaited run {} of `{name}` ended {status}, and this job waits for {}",
                    run.run_id,
                    wanted(upstream.on)
                );
                return Release::Record { status: RunStatus::Skipped, reason };
            }
            _ => upstream_run_ids.push(run.run_id),
        }
    }
    let since = |end: DateTime<Utc>| (now - end).to_std().unwrap_or_default();
    if let Some(pending) = pending {
        let bound = job.wait_bound();
        return match first_end {
            Some(first) if since(first) > bound => Release::Record {
                status: RunStatus::Missed,
                reason: format!(
                    "not run: waited {} from the first awaited run's end, and {pending}",
                    humantime::format_duration(bound)
                ),
            },
            _ => Release::Wait,
        };
    }
    let released_at = runs.iter().filter_map(|run| run.ended_at).max();
    if let Some(released_at) = released_at.filter(|at| since(*at) > job.starting_deadline) {
        let reason = format!(
            "not run: released at {}, its starting deadline ({}) had passed before a leader could start it",
            released_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            humantime::format_duration(job.starting_deadline)
        );
        return Release::Record { status: RunStatus::Missed, reason };
    }
    Release::Run { upstream_run_ids }
}

/// The awaited runs a scan returned, by (dependent, slot), in slot order.
pub(super) fn by_slot(runs: &[AwaitedRun]) -> BTreeMap<(DateTime<Utc>, &str), Vec<&AwaitedRun>> {
    let mut slots: BTreeMap<(DateTime<Utc>, &str), Vec<&AwaitedRun>> = BTreeMap::new();
    for run in runs {
        slots.entry((run.slot, run.dependent.as_str())).or_default().push(run);
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap()
    }

    fn job(after: &str) -> Job {
        let text = format!(
            "jobs:\n  - {{ name: a, schedule: '* * * * * *', shell: 'true' }}\n  \
             - {{ name: b, schedule: '* * * * * *', shell: 'true' }}\n  \
             - {{ name: c, after: {after}, within: 10s, starting_deadline: 20s, shell: 'true' }}\n"
        );
        crate::config::parse(&text, "jobs.yaml").unwrap_or_else(|e| panic!("{e}")).get("c").unwrap().clone()
    }

    fn run(job: &str, id: i64, status: RunStatus, ended: Option<i64>) -> AwaitedRun {
        AwaitedRun { dependent: "c".into(), slot: at(0), job: job.into(), run_id: id, status, ended_at: ended.map(at) }
    }

    #[test]
    fn a_slot_is_released_once_every_awaited_run_ended_as_required() {
        let job = job("[a, { job: b, on: failure }]");
        let (a, b) = (run("a", 1, RunStatus::Succeeded, Some(1)), run("b", 2, RunStatus::TimedOut, Some(2)));
        assert_eq!(decide(&job, &[&a, &b], at(3)), Release::Run { upstream_run_ids: vec![1, 2] });
        // b still going, or without a row: wait, up to `within` from a's end.
        let going = run("b", 2, RunStatus::Running, None);
        assert_eq!(decide(&job, &[&a, &going], at(11)), Release::Wait);
        assert_eq!(decide(&job, &[&a], at(11)), Release::Wait);
        let Release::Record { status, reason } = decide(&job, &[&a], at(12)) else { panic!("the wait is over") };
        assert_eq!(status, RunStatus::Missed);
        assert_eq!(reason, "not run: waited 10s from the first awaited run's end, and `b` had no run of this slot");
    }

    #[test]
    fn slots_released_while_no_leader_looked_follow_catch_up() {
        let released = [(at(0), at(9)), (at(1), at(9)), (at(2), at(10))];
        let mut latest = job("[a]");
        assert_eq!(catch_up(&latest, &released, at(11)), [None, None, None], "on time, all three");
        // At 20 s all three are late: `latest` runs the newest only.
        let decided = catch_up(&latest, &released, at(20));
        assert_eq!(decided[2], None);
        assert!(decided[0].is_some_and(|why| why.contains("`catch_up: latest`")) && decided[1].is_some());
        // At 13 s the third is on time: it runs, the two late ones do not.
        assert_eq!(catch_up(&latest, &released, at(13)), [decided[0], decided[1], None]);
        latest.catch_up = CatchUp::All;
        assert_eq!(catch_up(&latest, &released, at(20)), [None, None, None]);
        latest.catch_up = CatchUp::None;
        assert!(catch_up(&latest, &released, at(20)).iter().all(Option::is_some));
    }

    #[test]
    fn a_slot_whose_awaited_run_cannot_release_it_is_recorded_with_its_reason() {
        let job = job("[a, { job: b, on: always }]");
        let b = run("b", 2, RunStatus::Succeeded, Some(1));
        let failed = run("a", 1, RunStatus::Failed, Some(1));
        assert_eq!(
            decide(&job, &[&failed, &b], at(2)),
            Release::Record {
                status: RunStatus::Skipped,
                reason: "not run: awaited run 1 of `a` ended failed, and this job waits for its success".into()
            }
        );
        for (status, recorded) in [
            (RunStatus::Lost, RunStatus::Skipped),
            (RunStatus::Skipped, RunStatus::Skipped),
            (RunStatus::Missed, RunStatus::Missed),
        ] {
            let a = run("a", 1, status, Some(1));
            let reason = format!("not run: awaited run 1 of `a` was {status}");
            assert_eq!(decide(&job, &[&a, &b], at(2)), Release::Record { status: recorded, reason });
        }
        // Released long ago (no leader looked): past its starting deadline, recorded missed.
        let a = run("a", 1, RunStatus::Succeeded, Some(1));
        let Release::Record { status, reason } = decide(&job, &[&a, &b], at(30)) else { panic!("too late") };
        assert_eq!(status, RunStatus::Missed);
        assert!(reason.contains("its starting deadline (20s) had passed"), "{reason}");
    }
}
