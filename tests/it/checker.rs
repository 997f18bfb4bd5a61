//! The checker every cluster scenario uses. It reads the witness file (written by the jobs
//! themselves, outside the database) and the ledger, enumerates the expected slots on its own
//! (whole seconds, not tenure's cron code), and reports what broke a guarantee.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use chrono::{DateTime, Duration, DurationRound, Utc};
use tenure::config::AfterOn;
use tenure::model::{RunStatus, TriggerKind};
use tenure::store::RunRecord;

/// One execution, as the job itself recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    pub job: String,
    pub slot: DateTime<Utc>,
    pub term: i64,
    pub node: String,
    pub pid: u32,
    /// When the job ran (the real clock, even on a replica whose clock a test fakes).
    pub at: DateTime<Utc>,
}

impl Witness {
    pub fn read(path: &Path) -> Vec<Witness> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                Some(Witness {
                    job: fields.next()?.to_owned(),
                    slot: DateTime::parse_from_rfc3339(fields.next()?).ok()?.with_timezone(&Utc),
                    term: fields.next()?.parse().ok()?,
                    node: fields.next()?.to_owned(),
                    pid: fields.next()?.parse().ok()?,
                    at: {
                        let seconds: f64 = fields.next()?.parse().ok()?;
                        DateTime::from_timestamp_micros((seconds * 1e6) as i64)?
                    },
                })
            })
            .collect()
    }
}

/// What the error of a run says when a new term found the ledger had lost its claim and start in
/// a database failover (committed on a primary, never on the promoted standby) and recorded it
/// `lost` rather than run it again. Such a row is written after the fact, by whichever term found
/// the loss: it vouches for an execution of an older term and says nothing of the order in which
/// terms were accepted.
pub const FORGOTTEN_IN_FAILOVER: &str = "the ledger lost this claim in a database failover";

fn recorded_forgotten(row: &RunRecord) -> bool {
    row.status == RunStatus::Lost && row.error.as_deref().is_some_and(|error| error.contains(FORGOTTEN_IN_FAILOVER))
}

/// What went wrong, if anything. `assert_clean` panics with all of it.
#[derive(Debug, Default)]
pub struct Report {
    /// (a) a slot executed more than once.
    pub executed_twice: Vec<(String, DateTime<Utc>, usize)>,
    /// (a) an execution that began before its slot (runs are claimed ahead, never started ahead).
    pub executed_early: Vec<Witness>,
    /// (b) an execution without a ledger row of the same term.
    pub without_ledger_row: Vec<Witness>,
    /// (b) a ledger row accepted with a term below one already accepted for an earlier slot.
    pub stale_term_accepted: Vec<(String, DateTime<Utc>, i64, i64)>,
    /// (c) an expected slot with no ledger row at all, or not executed where it had to be.
    pub missing: Vec<(String, DateTime<Utc>, String)>,
}

impl Report {
    /// How many of each breach, on one line.
    pub fn summary(&self) -> String {
        format!(
            "executed twice {}, executed early {}, without a ledger row {}, stale term accepted {}, missing {}",
            self.executed_twice.len(),
            self.executed_early.len(),
            self.without_ledger_row.len(),
            self.stale_term_accepted.len(),
            self.missing.len()
        )
    }

    pub fn is_clean(&self) -> bool {
        self.executed_twice.is_empty()
            && self.executed_early.is_empty()
            && self.without_ledger_row.is_empty()
            && self.stale_term_accepted.is_empty()
            && self.missing.is_empty()
    }
}

/// Which slots the checker expects: every whole second of `jobs` in `[from, until]`.
pub struct Expect<'a> {
    pub jobs: &'a [&'a str],
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// Whether an expected slot may be recorded `missed` or `skipped` (a policy outcome) or `lost`
    /// (killed with its leader), or must have run.
    pub missed_allowed: bool,
}

/// `check`, excusing expected slots that did not run inside the fault windows, if the ledger
/// recorded them (never a slot without a row: no slot is missed silently; never a double run,
/// never a stale term).
pub fn check_excusing(
    witness: &[Witness],
    ledger: &[RunRecord],
    expect: &Expect<'_>,
    windows: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Report {
    let mut report = check(witness, ledger, expect);
    report.missing.retain(|(_, slot, why)| {
        why == NO_LEDGER_ROW || !windows.iter().any(|(from, until)| from <= slot && slot <= until)
    });
    report
}

const NO_LEDGER_ROW: &str = "no ledger row";

pub fn check(witness: &[Witness], ledger: &[RunRecord], expect: &Expect<'_>) -> Report {
    let mut report = Report::default();

    let mut executions: BTreeMap<(&str, DateTime<Utc>), usize> = BTreeMap::new();
    for w in witness {
        *executions.entry((w.job.as_str(), w.slot)).or_default() += 1;
    }
    for ((job, slot), count) in &executions {
        if *count > 1 {
            report.executed_twice.push((job.to_string(), *slot, *count));
        }
    }

    report.executed_early = witness.iter().filter(|w| w.at < w.slot).cloned().collect();

    let rows: HashMap<(&str, DateTime<Utc>), &RunRecord> =
        ledger.iter().map(|row| ((row.job.as_str(), row.slot), row)).collect();
    for w in witness {
        match rows.get(&(w.job.as_str(), w.slot)) {
            Some(row) if row.term == w.term || recorded_forgotten(row) => {}
            _ => report.without_ledger_row.push(w.clone()),
        }
    }

    // Per job, in slot order, the term never goes back: a row of an older term after a row of a
    // newer one means a stale leader's claim was accepted after the newer term's. A row a newer
    // term recorded `missed` without starting it is written after the fact, for a slot already
    // past (a catch-up, or an older term's claim that never started and was taken over), so it
    // says nothing of the order in which terms were accepted: it is checked, but does not raise
    // the bar for the slots after it (an older term may have claimed those before the newer term
    // began). A row recorded lost in a database failover is after the fact too (see
    // `FORGOTTEN_IN_FAILOVER`), and is left out of this order.
    let mut by_job: BTreeMap<&str, Vec<&RunRecord>> = BTreeMap::new();
    for row in ledger.iter().filter(|row| row.trigger == TriggerKind::Schedule) {
        by_job.entry(row.job.as_str()).or_default().push(row);
    }
    for rows in by_job.values_mut() {
        rows.sort_by_key(|row| row.slot);
        let mut highest = i64::MIN;
        for row in rows.iter().filter(|row| !recorded_forgotten(row)) {
            if row.term < highest {
                report.stale_term_accepted.push((row.job.clone(), row.slot, row.term, highest));
            }
            if !(row.status == RunStatus::Missed && row.started_at.is_none()) {
                highest = highest.max(row.term);
            }
        }
    }

    let executed: HashSet<(&str, DateTime<Utc>)> = executions.keys().copied().collect();
    let mut slot = expect.from.duration_trunc(Duration::seconds(1)).unwrap();
    if slot < expect.from {
        slot += Duration::seconds(1);
    }
    while slot <= expect.until {
        for job in expect.jobs {
            match rows.get(&(*job, slot)) {
                None => report.missing.push((job.to_string(), slot, NO_LEDGER_ROW.into())),
                // Recorded outcomes, not silent gaps: `missed` (catch_up, starting deadline),
                // `skipped` (forbid, while a dead leader's run is not yet reaped) and `lost` (started
                // when its leader was killed; its supervisor killed it too, maybe before the job
                // got as far as its witness line).
                Some(row) if matches!(row.status.as_str(), "missed" | "skipped" | "lost") && expect.missed_allowed => {}
                Some(row) if !executed.contains(&(*job, slot)) => {
                    report.missing.push((job.to_string(), slot, format!("not executed (status {})", row.status)));
                }
                Some(_) => {}
            }
        }
        slot += Duration::seconds(1);
    }
    report
}

// Jobs that wait for other jobs (`after:`).

/// One job waiting for another, as the job file says.
#[derive(Debug, Clone, Copy)]
pub struct Link<'a> {
    pub dependent: &'a str,
    pub upstream: &'a str,
    pub on: AfterOn,
}

fn releases(on: AfterOn, status: RunStatus) -> bool {
    let failed = matches!(status, RunStatus::Failed | RunStatus::TimedOut | RunStatus::Killed);
    match on {
        AfterOn::Success => status == RunStatus::Succeeded,
        AfterOn::Failure => failed,
        AfterOn::Always => status == RunStatus::Succeeded || failed,
    }
}

/// The dependency rule, over every slot in `[from, until]` for which a dependent's awaited jobs
/// have a row: a dependent runs at most once per slot (no doubled link), only once every run it
/// awaits of that slot ended as its link asks, and never before they ended; once they have, it has
/// a row (no dropped link) that ran, or (`faults`: a fault window) was recorded not run; once one
/// of them ended so that it can no longer release it, the dependent is recorded with a reason,
/// never left without a row. Each violation in words.
pub fn check_links(
    witness: &[Witness],
    ledger: &[RunRecord],
    links: &[Link<'_>],
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    faults: bool,
) -> Vec<String> {
    let rows: HashMap<(&str, DateTime<Utc>), &RunRecord> =
        ledger.iter().map(|row| ((row.job.as_str(), row.slot), row)).collect();
    let mut ran: HashMap<(&str, DateTime<Utc>), Vec<&Witness>> = HashMap::new();
    for w in witness {
        ran.entry((w.job.as_str(), w.slot)).or_default().push(w);
    }
    let mut dependents: BTreeMap<&str, Vec<&Link<'_>>> = BTreeMap::new();
    for link in links {
        dependents.entry(link.dependent).or_default().push(link);
    }
    let mut violations = Vec::new();
    for (dependent, links) in dependents {
        let slots: std::collections::BTreeSet<DateTime<Utc>> = ledger
            .iter()
            .filter(|row| links.iter().any(|link| link.upstream == row.job))
            .map(|row| row.slot)
            .filter(|slot| from <= *slot && *slot <= until)
            .collect();
        for slot in slots {
            let awaited: Vec<(&Link<'_>, Option<&&RunRecord>)> =
                links.iter().map(|link| (*link, rows.get(&(link.upstream, slot)))).collect();
            let ended = awaited.iter().all(|(_, row)| row.is_some_and(|row| row.status != RunStatus::Running));
            let released =
                ended && awaited.iter().all(|(link, row)| row.is_some_and(|row| releases(link.on, row.status)));
            let runs = ran.get(&(dependent, slot)).map(Vec::as_slice).unwrap_or_default();
            let row = rows.get(&(dependent, slot));
            if runs.len() > 1 {
                violations.push(format!("doubled link: `{dependent}` ran {} times for slot {slot}", runs.len()));
            }
            if let Some(first) = runs.iter().map(|w| w.at).min() {
                if !released {
                    violations.push(format!(
                        "`{dependent}` ran for slot {slot} although its awaited runs did not all end as required"
                    ));
                }
                for (link, up) in &awaited {
                    if let Some(end) = up.and_then(|up| up.finished_at).filter(|end| *end > first) {
                        violations.push(format!(
                            "`{dependent}` ran for slot {slot} at {first}, before the run of `{}` ended at {end}",
                            link.upstream
                        ));
                    }
                }
            }
            match row {
                None if released => violations.push(format!(
                    "dropped link: `{dependent}` has no row for slot {slot}, though its awaited runs ended as required"
                )),
                None if ended => violations.push(format!(
                    "dropped link: `{dependent}` has no row for slot {slot}, though its awaited runs ended so that \
                     it can no longer run (it must be recorded skipped or missed)"
                )),
                Some(row) if released && runs.is_empty() => {
                    let excused = faults && matches!(row.status.as_str(), "lost" | "killed" | "skipped" | "missed");
                    if !excused {
                        violations.push(format!(
                            "dropped link: `{dependent}`'s row for slot {slot} is {} and it never ran",
                            row.status
                        ));
                    }
                }
                Some(row) if !released && row.error.is_none() && row.status != RunStatus::Running => {
                    violations.push(format!("`{dependent}`'s row for slot {slot} is {} without a reason", row.status));
                }
                _ => {}
            }
        }
    }
    violations
}

// Executions across replicas, each with its start and end.

/// One execution of a run's attempt as the job recorded it: a `start` line when it began and,
/// if it was not killed, an `end` line (see `Execution::shell`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub job: String,
    pub run_id: i64,
    pub attempt: i32,
    pub node: String,
    pub pid: u32,
    pub lease_id: String,
    pub started: DateTime<Utc>,
    /// Its end record; `None` when it was killed (or is still going).
    pub ended: Option<DateTime<Utc>>,
}

impl Execution {
    /// A shell job body that records its start in `path`, sleeps `seconds`, and records its end.
    pub fn shell(path: &Path, seconds: f64) -> String {
        let at = "$(LD_PRELOAD= date +%s.%N)";
        let who = "$TENURE_JOB $TENURE_RUN_ID $TENURE_ATTEMPT $TENURE_NODE $$";
        format!(
            "echo \"start {who} {at} $TENURE_LEASE_ID\" >> {path}; sleep {seconds}; echo \"end {who} {at}\" >> {path}",
            path = path.display()
        )
    }

    pub fn read(path: &Path) -> Vec<Execution> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let instant = |field: Option<&str>| -> Option<DateTime<Utc>> {
            let seconds: f64 = field?.parse().ok()?;
            DateTime::from_timestamp_micros((seconds * 1e6) as i64)
        };
        let mut executions: Vec<Execution> = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let kind = fields.next();
            let (Some(job), Some(run_id), Some(attempt), Some(node), Some(pid)) =
                (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Ok(run_id), Ok(attempt), Ok(pid)) = (run_id.parse(), attempt.parse(), pid.parse()) else { continue };
            let Some(at) = instant(fields.next()) else { continue };
            match kind {
                Some("start") => executions.push(Execution {
                    job: job.to_owned(),
                    run_id,
                    attempt,
                    node: node.to_owned(),
                    pid,
                    lease_id: fields.next().unwrap_or_default().to_owned(),
                    started: at,
                    ended: None,
                }),
                Some("end") => {
                    if let Some(execution) = executions.iter_mut().find(|e| e.pid == pid && e.run_id == run_id) {
                        execution.ended = Some(at);
                    }
                }
                _ => {}
            }
        }
        executions
    }
}

/// Every pair of executions that overlapped in time although they must not: two attempts of
/// one run, or two runs of a job in `forbid_jobs`. An execution lasts from its start record to
/// its end record, or to `died(pid)` (when its process was seen gone from outside), or to `now`.
pub fn execution_overlaps(
    executions: &[Execution],
    forbid_jobs: &[&str],
    died: impl Fn(u32) -> Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<String> {
    let until = |e: &Execution| e.ended.or_else(|| died(e.pid)).unwrap_or(now);
    let mut overlaps = Vec::new();
    for (i, a) in executions.iter().enumerate() {
        for b in &executions[i + 1..] {
            let same_run = a.run_id == b.run_id;
            let forbid = a.job == b.job && forbid_jobs.contains(&a.job.as_str());
            if !(same_run || forbid) || !(a.started < until(b) && b.started < until(a)) {
                continue;
            }
            let what = if same_run { "two attempts of one run" } else { "two runs of a forbid job" };
            overlaps.push(format!(
                "{what}: run {} attempt {} on {} {}..{} and run {} attempt {} on {} {}..{}",
                a.run_id,
                a.attempt,
                a.node,
                a.started,
                until(a),
                b.run_id,
                b.attempt,
                b.node,
                b.started,
                until(b)
            ));
        }
    }
    overlaps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap()
    }

    fn row(job: &str, second: i64, term: i64, status: &str) -> RunRecord {
        RunRecord {
            id: second,
            job: job.into(),
            slot: at(second),
            trigger: TriggerKind::Schedule,
            term,
            node: "n".into(),
            config_hash: "h".into(),
            status: RunStatus::parse(status).expect("a status"),
            attempt: 1,
            claimed_at: at(second),
            planned_at: at(second),
            started_at: None,
            began_at: None,
            finished_at: None,
            exit_code: None,
            http_status: None,
            error: None,
            output: String::new(),
            executor: None,
        }
    }

    fn executed(job: &str, second: i64, term: i64) -> Witness {
        Witness { job: job.into(), slot: at(second), term, node: "n".into(), pid: 1, at: at(second) }
    }

    /// The checker is only worth something if it fails: feed it each violation once.
    #[test]
    fn the_checker_catches_each_kind_of_violation() {
        let expect = Expect { jobs: &["j"], from: at(0), until: at(3), missed_allowed: false };
        let ledger = [
            row("j", 0, 5, "succeeded"),
            row("j", 1, 5, "succeeded"),
            row("j", 2, 4, "succeeded"),
            row("j", 3, 6, "missed"),
        ];
        let early = Witness { at: at(2) - Duration::milliseconds(1), ..executed("j", 2, 4) };
        let witness = [executed("j", 0, 5), executed("j", 0, 5), executed("j", 1, 9), early.clone()];
        let report = check(&witness, &ledger, &expect);
        assert_eq!(report.executed_twice, [("j".to_string(), at(0), 2)]);
        assert_eq!(report.executed_early, [early]);
        assert_eq!(report.without_ledger_row, [executed("j", 1, 9)]);
        assert_eq!(report.stale_term_accepted, [("j".to_string(), at(2), 4, 5)]);
        // Slot 3 was recorded missed where every slot had to run.
        assert_eq!(report.missing.len(), 1, "{:?}", report.missing);
        assert_eq!(report.missing[0].1, at(3));
        assert!(!report.is_clean());
    }

    /// A fault window excuses a slot the ledger recorded as not run (`killed` before its start),
    /// never one it has no row for: that slot was missed silently.
    #[test]
    fn a_fault_window_excuses_recorded_slots_only() {
        let expect = Expect { jobs: &["j"], from: at(0), until: at(3), missed_allowed: true };
        let ledger = [row("j", 0, 5, "succeeded"), row("j", 1, 5, "killed"), row("j", 3, 6, "succeeded")];
        let witness = [executed("j", 0, 5), executed("j", 3, 6)];
        let report = check_excusing(&witness, &ledger, &expect, &[(at(1), at(2))]);
        assert_eq!(report.missing, [("j".to_string(), at(2), NO_LEDGER_ROW.to_string())]);
    }

    /// Seen in a run: term 4 claims slot 2 and, a forbid job, skips slot 3 because of it; then
    /// term 5 begins, takes the never-started claim of slot 2 over and records it missed.
    #[test]
    fn a_slot_a_newer_term_recorded_missed_after_the_fact_does_not_make_later_rows_stale() {
        let expect = Expect { jobs: &["j"], from: at(0), until: at(4), missed_allowed: true };
        let ledger = [
            row("j", 0, 4, "succeeded"),
            row("j", 1, 4, "succeeded"),
            row("j", 2, 5, "missed"),
            row("j", 3, 4, "skipped"),
            row("j", 4, 5, "succeeded"),
        ];
        let witness = [executed("j", 0, 4), executed("j", 1, 4), executed("j", 4, 5)];
        assert!(check(&witness, &ledger, &expect).is_clean());
        // An older term's row after a started row of a newer one is still stale.
        let started = RunRecord { started_at: Some(at(2)), ..row("j", 2, 5, "succeeded") };
        let stale = [row("j", 1, 4, "succeeded"), started, row("j", 3, 4, "skipped")];
        let report = check(&[], &stale, &Expect { from: at(1), until: at(3), ..expect });
        assert_eq!(report.stale_term_accepted, [("j".to_string(), at(3), 4, 5)]);
    }

    /// After a database failover a newer term records a run the promoted ledger forgot `lost`,
    /// in its own term or the one that ran it: that row vouches for the execution and does not
    /// make the older term's later rows stale. A second execution is still a double run.
    #[test]
    fn a_run_recorded_forgotten_in_a_failover_vouches_for_its_execution_only_once() {
        let expect = Expect { jobs: &["j"], from: at(0), until: at(3), missed_allowed: true };
        let forgotten = |second, term| RunRecord {
            error: Some(format!("run 7: {FORGOTTEN_IN_FAILOVER} (started by term 4)")),
            ..row("j", second, term, "lost")
        };
        let ledger = [row("j", 0, 4, "succeeded"), forgotten(1, 6), forgotten(2, 4), row("j", 3, 6, "succeeded")];
        let witness = [executed("j", 0, 4), executed("j", 1, 4), executed("j", 2, 4), executed("j", 3, 6)];
        let report = check(&witness, &ledger, &expect);
        assert!(report.is_clean(), "{report:#?}");
        let twice = [&witness[..], &[executed("j", 1, 6)]].concat();
        assert_eq!(check(&twice, &ledger, &expect).executed_twice, [("j".to_string(), at(1), 2)]);
        // An ordinary `lost` row of another term vouches for nothing.
        let ordinary = [row("j", 0, 4, "succeeded"), row("j", 1, 6, "lost")];
        let report = check(&witness[..2], &ordinary, &Expect { until: at(1), ..expect });
        assert_eq!(report.without_ledger_row, [executed("j", 1, 4)]);
    }

    /// The dependency rule is only worth something if it fails: a doubled link, a dropped link,
    /// a dependent run before (or without) its awaited run, and a slot that cannot run left
    /// without a row are each caught; the clean chain passes.
    #[test]
    fn the_dependency_rule_catches_a_doubled_and_a_dropped_link() {
        let links = [
            Link { dependent: "b", upstream: "a", on: AfterOn::Success },
            Link { dependent: "c", upstream: "b", on: AfterOn::Success },
        ];
        let ended = |job: &str, second: i64, status: &str, end_ms: i64| RunRecord {
            finished_at: Some(at(second) + Duration::milliseconds(end_ms)),
            trigger: if job == "a" { TriggerKind::Schedule } else { TriggerKind::Upstream },
            ..row(job, second, 5, status)
        };
        let ran_at = |job: &str, second: i64, ms: i64| Witness {
            at: at(second) + Duration::milliseconds(ms),
            ..executed(job, second, 5)
        };
        let ledger = vec![
            ended("a", 0, "succeeded", 100),
            ended("b", 0, "succeeded", 300),
            ended("c", 0, "succeeded", 500),
            ended("a", 1, "failed", 100),
            RunRecord {
                error: Some("not run: awaited run 4 of `a` ended failed".into()),
                ..ended("b", 1, "skipped", 150)
            },
            RunRecord {
                error: Some("not run: awaited run 5 of `b` was skipped".into()),
                ..ended("c", 1, "skipped", 200)
            },
        ];
        let witness = vec![ran_at("a", 0, 0), ran_at("b", 0, 200), ran_at("c", 0, 400), ran_at("a", 1, 0)];
        let clean = check_links(&witness, &ledger, &links, at(0), at(1), false);
        assert!(clean.is_empty(), "{clean:#?}");

        // b of slot 0 ran twice.
        let doubled = [&witness[..], &[ran_at("b", 0, 250)]].concat();
        let found = check_links(&doubled, &ledger, &links, at(0), at(1), false);
        assert_eq!(found, ["doubled link: `b` ran 2 times for slot 2027-01-15 08:00:00 UTC"], "{found:#?}");

        // c of slot 0 dropped: no row although b succeeded.
        let dropped: Vec<RunRecord> = ledger.iter().filter(|r| !(r.job == "c" && r.slot == at(0))).cloned().collect();
        let no_c: Vec<Witness> = witness.iter().filter(|w| w.job != "c").cloned().collect();
        let found = check_links(&no_c, &dropped, &links, at(0), at(1), true);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].starts_with("dropped link: `c` has no row for slot"), "{found:#?}");

        // b of slot 1 not recorded although a failed: dropped too, even where faults are allowed.
        let unrecorded: Vec<RunRecord> =
            ledger.iter().filter(|r| !(r.job == "b" && r.slot == at(1))).cloned().collect();
        let found = check_links(&witness, &unrecorded, &links, at(0), at(1), true);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].contains("can no longer run"), "{found:#?}");

        // b ran before a ended, and for a slot a failed.
        let early = [&witness[..], &[ran_at("b", 1, 50)]].concat();
        let mut found = check_links(&early, &ledger, &links, at(0), at(1), false);
        found.sort();
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].contains("did not all end as required"), "{found:#?}");
        assert!(found[1].contains("before the run of `a` ended"), "{found:#?}");
    }

    #[test]
    fn a_clean_run_passes() {
        let expect = Expect { jobs: &["j"], from: at(0), until: at(1), missed_allowed: true };
        let ledger = [row("j", 0, 5, "succeeded"), row("j", 1, 6, "missed")];
        let witness = [executed("j", 0, 5)];
        assert!(check(&witness, &ledger, &expect).is_clean());
        // A run killed with its leader before it wrote its witness line, where faults are allowed.
        let ledger = [row("j", 0, 5, "succeeded"), row("j", 1, 5, "lost")];
        assert!(check(&witness, &ledger, &expect).is_clean());
        let no_faults = Expect { missed_allowed: false, ..expect };
        assert_eq!(check(&witness, &ledger, &no_faults).missing.len(), 1);
    }

    #[test]
    fn the_checker_catches_overlapping_attempts_and_forbid_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("executions.log");
        let lines = [
            "start a 1 1 n1 100 10.0 1-1-n1",
            "start a 1 2 n2 200 12.0 1-2-n2",
            "end a 1 2 n2 200 13.0",
            "start f 2 1 n1 300 20.0 2-1-n1",
            "end f 2 1 n1 300 22.0",
            "start f 3 1 n2 400 21.5 3-1-n2",
            "end f 3 1 n2 400 23.0",
            "start f 4 1 n2 500 23.0 4-1-n2",
            "end f 4 1 n2 500 24.0",
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let executions = Execution::read(&path);
        assert_eq!(executions.len(), 5);
        assert_eq!(executions[0].ended, None);
        assert_eq!(executions[1].lease_id, "1-2-n2");
        let at = |seconds: f64| DateTime::from_timestamp_micros((seconds * 1e6) as i64).unwrap();
        // Attempt 1 of run 1 died (killed) at 11.5: before attempt 2 began, no overlap; at 12.5 it
        // overlapped.
        let now = at(30.0);
        let died_early = |pid: u32| (pid == 100).then(|| at(11.5));
        let died_late = |pid: u32| (pid == 100).then(|| at(12.5));
        assert_eq!(execution_overlaps(&executions, &[], died_early, now), Vec::<String>::new());
        let found = execution_overlaps(&executions, &["f"], died_late, now);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].starts_with("two attempts of one run: run 1"), "{found:#?}");
        // Runs 2 and 3 of `f` overlap (21.5 < 22.0); 3 and 4 only touch.
        assert!(found[1].starts_with("two runs of a forbid job: run 2"), "{found:#?}");
    }
}
