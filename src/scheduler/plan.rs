//! Pure planning: which slots of which jobs are due, and what each job's `catch_up` policy and
//! `starting_deadline` make of them (run, or recorded missed); where a new term resumes each job.
//! No IO and no clock: "now" is always an argument.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::witness::ForgottenSlots;
use crate::config::{CatchUp, Job, JobSet};
use crate::store::{JobControl, JobCursor};
use crate::telemetry::JobRunMetrics;

/// A slot this close behind "now" is on time; older due slots are catch-up slots and follow the
/// job's `catch_up` policy.
const ON_TIME_TOLERANCE: Duration = Duration::from_secs(1);
/// At most this many missed slots per job are written individually in one catch-up; the rest are
/// counted and logged (a per-second job down for a day would otherwise write 86,400 rows).
const MAX_MISSED_ROWS: usize = 10_000;

/// Per-job firing state for one term.
pub(super) struct JobState {
    pub(super) job: Arc<Job>,
    /// The last slot handled (recorded, claimed or being claimed). Never fire at or before it.
    pub(super) cursor: DateTime<Utc>,
    /// Paused in the job file or by an operator (recorded in the ledger database).
    pub(super) paused: bool,
    /// The series its runs record, registered once for the term (not at each run's end).
    pub(super) metrics: JobRunMetrics,
}

/// A job an operator resumed starts again at its resume, whichever leader saw it: the slots of
/// its pause are not owed, neither run nor recorded `missed`. The instant is in the ledger, so a
/// term that loads the job's cursor after a resume (the leader that saw it died before the job
/// fired again) does not replay the pause from the job's last recorded slot.
pub(super) fn start_after_resume(state: &mut JobState, control: &JobControl) {
    if let Some(resumed_at) = control.resumed_at.filter(|_| !control.paused) {
        state.cursor = state.cursor.max(resumed_at);
    }
}

/// What to do with one job's due slots.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct DuePlan {
    /// Slots to claim and run, oldest first.
    pub(super) run: Vec<DateTime<Utc>>,
    /// Slots to record as missed (at most `MAX_MISSED_ROWS`, newest kept).
    pub(super) missed: Vec<DateTime<Utc>>,
    pub(super) missed_total: usize,
    /// The newest due slot: the job's new cursor.
    pub(super) last_slot: Option<DateTime<Utc>>,
    /// Slots an older term may have started although the ledger forgot it
    /// (`set_apart_forgotten`): recorded `lost`, neither run nor `missed`.
    pub(super) forgotten: Vec<DateTime<Utc>>,
}

/// Pure: move the slots of `plan` whose planned start (the slot plus its jitter offset) the
/// ledger may have forgotten out of `run` and `missed` into `forgotten`: an older term may have
/// started them (the coordinator's start witness covers them) although the ledger has no record.
pub(super) fn set_apart_forgotten(job: &Job, plan: &mut DuePlan, covered: &ForgottenSlots) {
    let forgotten = |slot: &DateTime<Utc>| {
        let offset = crate::schedule::jitter_offset(job.name.as_ref(), *slot, job.jitter);
        covered.covers(*slot + chrono::Duration::from_std(offset).unwrap_or_default())
    };
    plan.forgotten.extend(plan.run.iter().filter(|slot| forgotten(slot)));
    plan.run.retain(|slot| !forgotten(slot));
    let missed_before = plan.missed.len();
    plan.forgotten.extend(plan.missed.iter().filter(|slot| forgotten(slot)));
    plan.missed.retain(|slot| !forgotten(slot));
    plan.missed_total -= missed_before - plan.missed.len();
    plan.forgotten.sort();
}

/// Pure: the slots of `job` in `(cursor, until]` and what its policies make of them; slots after
/// `now` (claimed ahead) are on time.
pub(super) fn plan_due_slots(job: &Job, cursor: DateTime<Utc>, now: DateTime<Utc>, until: DateTime<Utc>) -> DuePlan {
    let mut plan = DuePlan::default();
    let on_time_after = now - chrono::Duration::from_std(ON_TIME_TOLERANCE).unwrap_or_default();
    let deadline = now - chrono::Duration::from_std(job.starting_deadline).unwrap_or_default();
    let mut late = Vec::new();
    let mut on_time = Vec::new();
    let mut too_old = std::collections::VecDeque::new();
    let mut slot = cursor;
    while let Some(next) = job.schedule.next_after(slot) {
        if next > until {
            break;
        }
        slot = next;
        plan.last_slot = Some(next);
        if next >= on_time_after {
            on_time.push(next);
        } else if next < deadline {
            plan.missed_total += 1;
            if too_old.len() == MAX_MISSED_ROWS {
                too_old.pop_front();
            }
            too_old.push_back(next);
        } else {
            late.push(next);
        }
    }
    plan.missed.extend(too_old);
    let miss = |slots: &[DateTime<Utc>], plan: &mut DuePlan| {
        plan.missed_total += slots.len();
        plan.missed.extend_from_slice(slots);
    };
    match job.catch_up {
        CatchUp::None => miss(&late, &mut plan),
        CatchUp::Latest => match (on_time.is_empty(), late.split_last()) {
            (true, Some((newest, older))) => {
                miss(older, &mut plan);
                plan.run.push(*newest);
            }
            (_, _) => miss(&late, &mut plan),
        },
        CatchUp::All => plan.run.extend_from_slice(&late),
    }
    // Several on-time slots (a sub-second stall of a per-second job) are all run.
    plan.run.extend_from_slice(&on_time);
    plan.missed.sort();
    plan
}

/// The next slot of every job, in two queues: slots claimed ahead (woken `lead` before them) and
/// slots decided only when they come (see `OwnRuns::decided_at_slot`). A job is in at most one.
#[derive(Default)]
pub(super) struct DueSlots {
    ahead: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
    at_slot: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
}

impl DueSlots {
    pub(super) fn reset(&mut self, states: &[JobState]) {
        self.ahead.clear();
        self.at_slot.clear();
        for (index, state) in states.iter().enumerate() {
            self.push(state, index);
        }
    }

    pub(super) fn push(&mut self, state: &JobState, index: usize) {
        if let Some(next) = next_slot(state) {
            self.ahead.push(Reverse((next, index)));
        }
    }

    pub(super) fn wake_at(&self, lead: Duration) -> Option<DateTime<Utc>> {
        let lead = chrono::Duration::from_std(lead).unwrap_or_default();
        let ahead = self.ahead.peek().map(|Reverse((slot, _))| *slot - lead);
        let at_slot = self.at_slot.peek().map(|Reverse((slot, _))| *slot);
        ahead.into_iter().chain(at_slot).min()
    }

    /// The jobs to fire now: slots due by `now`, and slots due within `lead` unless
    /// `decided_at_slot`, which wait in the second queue instead.
    pub(super) fn pop_ready(
        &mut self,
        now: DateTime<Utc>,
        lead: Duration,
        decided_at_slot: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let horizon = now + chrono::Duration::from_std(lead).unwrap_or_default();
        let mut ready = Vec::new();
        while let Some(Reverse((slot, index))) = self.at_slot.peek().copied() {
            if slot > now {
                break;
            }
            self.at_slot.pop();
            ready.push(index);
        }
        while let Some(Reverse((slot, index))) = self.ahead.peek().copied() {
            if slot > horizon {
                break;
            }
            self.ahead.pop();
            if slot > now && decided_at_slot(index) {
                self.at_slot.push(Reverse((slot, index)));
            } else {
                ready.push(index);
            }
        }
        ready
    }
}

fn next_slot(state: &JobState) -> Option<DateTime<Utc>> {
    if state.paused {
        return None;
    }
    state.job.schedule.next_after(state.cursor)
}

/// Where a new term resumes a job: after its recorded cursor, or, when an older term claimed
/// slots and never started them, just before the oldest of those, so they are decided again (run
/// or recorded missed, per the job's policy); the rows of slots in between answer for themselves.
pub(super) fn resume_from(cursor: Option<&JobCursor>, now: DateTime<Utc>) -> DateTime<Utc> {
    match cursor {
        None => now,
        Some(JobCursor { slot, unstarted: None }) => *slot,
        Some(JobCursor { slot, unstarted: Some(unstarted) }) => {
            (*slot).min(*unstarted - chrono::Duration::milliseconds(1))
        }
    }
}

/// After a reload: keep the cursor of every job that still exists; a new job, or one that was
/// paused, starts from now.
pub(super) fn rebuild_states(old: Vec<JobState>, jobs: &JobSet, now: DateTime<Utc>) -> Vec<JobState> {
    let mut old: HashMap<String, JobState> = old.into_iter().map(|state| (state.job.name.to_string(), state)).collect();
    jobs.jobs()
        .iter()
        .map(|job| {
            let previous = old.remove(job.name.as_ref());
            let cursor = match &previous {
                Some(previous) if !previous.paused => previous.cursor,
                _ => now,
            };
            let metrics = previous.map_or_else(|| JobRunMetrics::new(job.name.as_ref()), |previous| previous.metrics);
            JobState { job: Arc::new(job.clone()), cursor, paused: job.paused, metrics }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(yaml: &str) -> Job {
        crate::config::parse(&format!("jobs:\n  - name: j\n    shell: \"true\"\n{yaml}"), "jobs.yaml").unwrap().jobs()
            [0]
        .clone()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_slot_within_the_lead_is_claimed_on_time_and_catch_up_is_judged_by_now() {
        let job = job("    schedule: \"* * * * * *\"\n    catch_up: none\n");
        let now = at("2026-01-01T00:00:09.900Z");
        // Down since 00:00:00: 1-8 are late (catch_up none: missed), 9 is on time, 10 is ahead.
        let plan = plan_due_slots(&job, at("2026-01-01T00:00:00Z"), now, now + chrono::Duration::milliseconds(200));
        assert_eq!(plan.run, [at("2026-01-01T00:00:09Z"), at("2026-01-01T00:00:10Z")]);
        assert_eq!(plan.missed_total, 8);
        assert_eq!(plan.last_slot, Some(at("2026-01-01T00:00:10Z")));
        // Without a lead, the next slot is not due.
        let plan = plan_due_slots(&job, at("2026-01-01T00:00:09Z"), now, now);
        assert!(plan.run.is_empty() && plan.last_slot.is_none());
    }

    #[test]
    fn slots_decided_at_the_slot_wait_in_their_own_queue() {
        let states: Vec<JobState> = (0..2)
            .map(|_| JobState {
                job: Arc::new(job("    schedule: \"* * * * * *\"\n")),
                cursor: at("2026-01-01T00:00:00Z"),
                paused: false,
                metrics: JobRunMetrics::new("j"),
            })
            .collect();
        let mut due = DueSlots::default();
        due.reset(&states);
        let lead = Duration::from_millis(100);
        let first = at("2026-01-01T00:00:01Z");
        assert_eq!(due.wake_at(lead), Some(first - chrono::Duration::milliseconds(100)));
        // 50 ms before the slot: job 0 is claimed ahead, job 1 (a run going) waits for the slot.
        let ready = due.pop_ready(first - chrono::Duration::milliseconds(50), lead, |index| index == 1);
        assert_eq!(ready, [0]);
        assert_eq!(due.wake_at(lead), Some(first));
        assert!(due.pop_ready(first - chrono::Duration::milliseconds(1), lead, |_| true).is_empty());
        assert_eq!(due.pop_ready(first, lead, |_| true), [1]);
        assert_eq!(due.wake_at(lead), None);
    }
}
