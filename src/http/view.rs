//! What the dashboard and the JSON API show, assembled from the job file, the ledger and the
//! cluster snapshot. The pages render these structures; the API serialises them unchanged, so
//! both always agree.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::config::{Job, JobSet, Target};
use crate::model::{ClusterSnapshot, RunStatus, TriggerKind};
use crate::store::{JobControl, NotificationRecord, Reads, ReplicaLoad, RunRecord, TermRecord, TriggerRecord};

/// How many outcomes the overview's strip shows per job.
pub const STRIP: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub name: String,
    /// The expressions as written, joined by " | " when there are several.
    pub schedule: String,
    /// Each expression; the job fires at their merged times (an instant they share, once).
    pub schedules: Vec<String>,
    pub description: String,
    pub timezone: String,
    /// The next fire time in the job's zone (RFC 3339 with its offset) and in UTC; none while
    /// paused or when the schedule has no future slot.
    pub next_local: Option<String>,
    pub next_utc: Option<DateTime<Utc>>,
    pub paused: bool,
    /// Who paused it: `file` (the job file says `paused: true`), `operator` (paused from the API
    /// or a page); none while it runs, also when an operator resumed a job the file pauses.
    pub paused_by: Option<&'static str>,
    /// The team that owns it (`team:`).
    pub team: Option<String>,
    pub kind: &'static str,
    /// What it runs: an argv, a script, or an HTTP method and URL (without its password and query
    /// values; `[redacted]` when read from the environment or a file).
    pub target: String,
    /// An HTTP job's header names, each value shown `[redacted]`: any may be a credential.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, &'static str>,
    pub timeout_seconds: u64,
    pub concurrency: &'static str,
    pub catch_up: &'static str,
    pub starting_deadline_seconds: u64,
    pub retries: u32,
    /// Each run starts up to this long after its slot (`jitter`; 0: at its slot).
    pub jitter_seconds: u64,
    /// How long the job's finished rows are kept, when the job sets it (else `--retain`).
    pub retain_seconds: Option<u64>,
    /// The variables a manual run may set (`overrides`), so a form can offer exactly these.
    pub overrides: Vec<String>,
    pub last: Option<RunBrief>,
    /// The last outcomes, oldest first (at most `STRIP`).
    pub recent: Vec<RunBrief>,
    /// The jobs it waits for (`after:`), each with the end of its run that releases it.
    pub after: Vec<AfterView>,
    /// How long a released slot waits for the rest of its awaited runs (`within`, or the starting
    /// deadline); `null` for a job that waits for none.
    pub within_seconds: Option<u64>,
    /// The jobs that wait for it (list it under `after:`).
    pub dependents: Vec<String>,
}

/// One job a job waits for.
#[derive(Debug, Clone, Serialize)]
pub struct AfterView {
    pub job: String,
    /// `success`, `failure` or `always`.
    pub on: &'static str,
}

/// A run linked to another by `after:`: one that released it, or one it released.
#[derive(Debug, Clone, Serialize)]
pub struct LinkedRun {
    pub id: i64,
    pub job: String,
    pub status: RunStatus,
}

/// One run as lists show it.
#[derive(Debug, Clone, Serialize)]
pub struct RunBrief {
    pub id: i64,
    pub slot: DateTime<Utc>,
    pub status: RunStatus,
    pub trigger: TriggerKind,
    pub term: i64,
    pub node: String,
    /// Where it executes: the replica its current attempt is assigned to (`run_on: any` or
    /// `{ tags: [..] }`); `null` for a run its leader (`node`) executes.
    pub executor: Option<String>,
    pub attempt: i32,
    /// From its begin (`began_at`) to its outcome; `null` while it goes and for a run that never
    /// began.
    pub duration_ms: Option<i64>,
    /// From the planned start (the slot plus the job's jitter offset) to its begin: its process
    /// spawned or its request sent, which the ledger learns with the outcome. `null` while it
    /// goes and for a run that never began (missed, skipped, killed before it began, lost).
    pub lateness_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
}

impl RunBrief {
    pub fn of(run: &RunRecord) -> RunBrief {
        RunBrief {
            id: run.id,
            slot: run.slot,
            status: run.status,
            trigger: run.trigger,
            term: run.term,
            node: run.node.clone(),
            executor: run.executor.clone(),
            attempt: run.attempt,
            duration_ms: duration_ms(run),
            lateness_ms: run.began_at.map(|began| (began - run.planned_at).num_milliseconds()),
            exit_code: run.exit_code,
            http_status: run.http_status,
            error: run.error.clone(),
        }
    }
}

fn duration_ms(run: &RunRecord) -> Option<i64> {
    Some((run.finished_at? - run.began_at?).num_milliseconds())
}

/// One run, whole: every timing and the output tail.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    #[serde(flatten)]
    pub brief: RunBrief,
    pub job: String,
    pub config_hash: String,
    pub claimed_at: DateTime<Utc>,
    /// When it was to start: the slot plus the job's jitter offset (when claimed, for a backfill).
    pub planned_at: DateTime<Utc>,
    /// When its fenced start was recorded (the ledger's `started_at`): ahead of the planned
    /// start, so the planned start itself when on time. Not when it began.
    pub start_recorded_at: Option<DateTime<Utc>>,
    /// When its current attempt really began: its process spawned, or its request began to be
    /// sent. Recorded with its outcome; `null` before, and for a run that never began.
    pub began_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The output tail, stdout and stderr as printed.
    pub output: String,
    /// The same, each line with where it came from (pages only).
    #[serde(skip)]
    pub output_lines: Vec<OutputLine>,
    /// The events `notify:` targets were or will be told about this run, with delivery state.
    pub notifications: Vec<NotificationRecord>,
    /// The operator's request behind a manual run: who, why, and what it overrode.
    pub request: Option<RequestView>,
    /// The runs that released it (`after:`): its awaited jobs' runs of its slot.
    pub released_by: Vec<LinkedRun>,
    /// The runs it released: the runs of its slot of the jobs waiting for its job.
    pub released: Vec<LinkedRun>,
}

/// One line of a run's output and whether the job wrote it to stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    pub stderr: bool,
    /// The line with its end, without the stderr mark.
    pub text: String,
}

impl OutputLine {
    /// The lines of an output tail: a line that starts with `executor::STDERR_MARK` is stderr's.
    pub fn split(output: &str) -> Vec<OutputLine> {
        output
            .split_inclusive('\n')
            .map(|line| OutputLine {
                stderr: line.starts_with(crate::executor::STDERR_MARK),
                text: crate::executor::plain_output(line),
            })
            .collect()
    }
}

/// What an operator asked of a manual run.
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub requested_by: String,
    pub reason: Option<String>,
    /// The variables it set, by name. A value that overrides a variable the job inherits from
    /// tenure's environment (`inherit_env`: a deployment's secrets come that way) is shown as
    /// `[redacted]`; the ledger holds it, for the run.
    pub env: BTreeMap<String, String>,
    /// The concurrency policy it asked for instead of the job's; none: the job's.
    pub concurrency: Option<&'static str>,
}

/// A trigger's `env` overrides as the API and pages show them: a value that overrides a
/// variable `job` inherits from tenure's environment (`inherit_env`, where deployments pass
/// secrets), or of a job no longer in the file, is `[redacted]`.
pub fn shown_env(env: BTreeMap<String, String>, job: Option<&Job>) -> BTreeMap<String, String> {
    env.into_iter()
        .map(|(name, value)| {
            let inherited = job.is_none_or(|job| job.inherit_env.contains(&name));
            (name, if inherited { crate::secret::REDACTED.to_owned() } else { value })
        })
        .collect()
}

impl RunView {
    /// `run`, with its notifications and the manual trigger behind it (`request`, shown against
    /// `job`'s file entry).
    pub fn of(
        run: RunRecord,
        notifications: Vec<NotificationRecord>,
        request: Option<TriggerRecord>,
        job: Option<&Job>,
    ) -> RunView {
        let request = request.map(|trigger| RequestView {
            requested_by: trigger.requested_by,
            reason: trigger.overrides.reason,
            env: shown_env(trigger.overrides.env, job),
            concurrency: trigger.overrides.concurrency.map(|policy| policy.as_str()),
        });
        RunView {
            brief: RunBrief::of(&run),
            job: run.job,
            config_hash: run.config_hash,
            claimed_at: run.claimed_at,
            planned_at: run.planned_at,
            start_recorded_at: run.started_at,
            began_at: run.began_at,
            finished_at: run.finished_at,
            output_lines: OutputLine::split(&run.output),
            output: crate::executor::plain_output(&run.output),
            notifications,
            request,
            released_by: Vec::new(),
            released: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub leader: Option<LeaderView>,
    pub replicas: Vec<ReplicaView>,
    /// What a person should look at: no leader, replicas on different job files.
    pub warnings: Vec<String>,
    /// The replica that answered.
    pub answered_by: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeaderView {
    pub node: String,
    pub term: i64,
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    pub node: String,
    pub version: String,
    pub address: String,
    pub config_hash: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub live: bool,
    pub leader: bool,
    /// What it offers for `run_on` jobs and how loaded it is; `null` before it first advertised.
    pub execution: Option<ExecutionView>,
}

/// A replica's side of execution across replicas.
#[derive(Debug, Clone, Serialize)]
pub struct ExecutionView {
    /// Its `--tags`.
    pub tags: Vec<String>,
    /// Its `--max-runs`.
    pub max_runs: u32,
    /// Runs assigned to it or running on it now.
    pub load: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TermView {
    pub term: i64,
    pub node: String,
    pub started_at: DateTime<Utc>,
    /// The leader's last heartbeat in this term; for the current term, recent.
    pub last_seen_at: Option<DateTime<Utc>>,
    /// From the previous leader's last heartbeat to this term's start: how long nobody fired.
    /// An upper bound by the heartbeat interval (1 s) after a crash, exact after a hand-over.
    pub handover_ms: Option<i64>,
    pub current: bool,
}

impl JobView {
    /// What is shown of `job` at `now`: its file entry, the operator's pause or resume from
    /// `controls`, and `runs`, its newest runs first.
    pub fn of(job: &Job, controls: &HashMap<String, JobControl>, runs: &[RunRecord], now: DateTime<Utc>) -> JobView {
        let control = controls.get(job.name.as_str()).map(|control| control.paused);
        let paused = control.unwrap_or(job.paused);
        let paused_by = match (control, job.paused) {
            (Some(true), _) => Some("operator"),
            (None, true) => Some("file"),
            _ => None,
        };
        let tz = job.schedule.timezone();
        let next_utc = if paused { None } else { job.schedule.next_after(now) };
        let target = match &job.target {
            Target::Command { argv } => argv.join(" "),
            Target::Shell { script } => script.clone(),
            Target::Http(http) => format!("{} {}", http.method, http.url.shown_url()),
        };
        let headers = match &job.target {
            Target::Http(http) => http.headers.keys().map(|name| (name.clone(), crate::secret::REDACTED)).collect(),
            Target::Command { .. } | Target::Shell { .. } => BTreeMap::new(),
        };
        let mut recent: Vec<RunBrief> = runs.iter().take(STRIP).map(RunBrief::of).collect();
        let last = recent.first().cloned();
        recent.reverse();
        JobView {
            name: job.name.as_str().to_owned(),
            schedule: job.schedule.expression().to_owned(),
            schedules: job.schedule.expressions().to_vec(),
            description: job.schedule.describe(),
            timezone: tz.name().to_owned(),
            next_local: next_utc.map(|next| next.with_timezone(&tz).to_rfc3339()),
            next_utc,
            paused,
            paused_by,
            team: job.team.clone(),
            kind: job.target.kind().as_str(),
            target,
            headers,
            timeout_seconds: job.timeout.as_secs(),
            concurrency: job.concurrency.as_str(),
            catch_up: job.catch_up.as_str(),
            starting_deadline_seconds: job.starting_deadline.as_secs(),
            retries: job.retries.max,
            jitter_seconds: job.jitter.as_secs(),
            retain_seconds: job.retain.map(|retain| retain.as_secs()),
            overrides: job.overrides.clone(),
            last,
            recent,
            after: job.after.iter().map(|up| AfterView { job: up.job.to_string(), on: up.on.as_str() }).collect(),
            within_seconds: (!job.after.is_empty()).then(|| job.wait_bound().as_secs()),
            dependents: Vec::new(),
        }
    }
}

/// How many jobs one overview page (and one `/api/jobs` page) shows.
pub const JOBS_PER_PAGE: usize = 100;

/// The jobs of the file from `offset`, at most `limit`, with their recent outcomes read from the
/// ledger.
pub async fn read_jobs(store: &Reads, jobs: &JobSet, offset: usize, limit: usize) -> Result<Vec<JobView>, sqlx::Error> {
    read_job_list(store, jobs.jobs().iter().skip(offset).take(limit).collect()).await
}

/// These jobs, with their recent outcomes read from the ledger.
pub async fn read_job_list(store: &Reads, page: Vec<&Job>) -> Result<Vec<JobView>, sqlx::Error> {
    let names: Vec<String> = page.iter().map(|job| job.name.as_str().to_owned()).collect();
    let recent = store.recent_runs(&names, STRIP as i64).await?;
    let controls = store.job_controls().await?;
    let now = Utc::now();
    Ok(page
        .into_iter()
        .map(|job| JobView::of(job, &controls, recent.get(job.name.as_str()).map_or(&[], |runs| &runs[..]), now))
        .collect())
}

/// One job with its recent outcomes read from the ledger.
pub async fn read_job(store: &Reads, job: &Job) -> Result<JobView, sqlx::Error> {
    let runs = store.job_runs(job.name.as_str(), None, None, STRIP as i64).await?;
    let controls = store.job_controls().await?;
    Ok(JobView::of(job, &controls, &runs, Utc::now()))
}

pub fn cluster(
    snapshot: &ClusterSnapshot,
    terms: &[TermRecord],
    loads: &[ReplicaLoad],
    config_hash: &str,
    answered_by: &str,
) -> ClusterView {
    let leader = snapshot.leader.as_ref().map(|(node, term)| LeaderView {
        node: node.clone(),
        term: *term,
        since: terms.iter().find(|t| t.term == *term).map(|t| t.started_at),
    });
    let replicas: Vec<ReplicaView> = snapshot
        .roster
        .iter()
        .map(|entry| ReplicaView {
            node: entry.member.node.clone(),
            version: entry.member.version.clone(),
            address: entry.member.address.clone(),
            config_hash: entry.member.config_hash.clone(),
            started_at: entry.member.started_at,
            last_seen: entry.last_seen,
            live: entry.live,
            leader: leader.as_ref().is_some_and(|leader| leader.node == entry.member.node),
            execution: loads.iter().find(|load| load.offer.node == entry.member.node).map(|load| ExecutionView {
                tags: load.offer.tags.clone(),
                max_runs: load.offer.max_runs,
                load: load.load,
            }),
        })
        .collect();
    let mut warnings = Vec::new();
    if leader.is_none() {
        warnings.push("No leader: no job fires until one is elected.".to_owned());
    }
    let mut hashes: Vec<&str> =
        replicas.iter().filter(|r| r.live).map(|r| r.config_hash.as_str()).chain([config_hash]).collect();
    hashes.sort_unstable();
    hashes.dedup();
    if hashes.len() > 1 {
        warnings.push(format!(
            "Replicas run different job files ({}): the leader's is the one that fires.",
            hashes.join(", ")
        ));
    }
    ClusterView { leader, replicas, warnings, answered_by: answered_by.to_owned() }
}

/// How many terms the terms page and `/api/terms` show, newest first.
pub const TERMS_SHOWN: usize = 200;

/// Terms newest first, with hand-over times.
pub fn terms(records: &[TermRecord], current: Option<i64>) -> Vec<TermView> {
    let mut views: Vec<TermView> = records
        .iter()
        .enumerate()
        .map(|(index, record)| {
            let previous = index.checked_sub(1).map(|i| &records[i]);
            TermView {
                term: record.term,
                node: record.node.clone(),
                started_at: record.started_at,
                last_seen_at: record.last_seen_at,
                handover_ms: previous
                    .and_then(|previous| previous.last_seen_at)
                    .map(|ended| (record.started_at - ended).num_milliseconds().max(0)),
                current: current == Some(record.term),
            }
        })
        .collect();
    views.reverse();
    views
}

/// A duration for people: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 10 min`.
pub fn human_ms(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// An instant for people, in `tz`, with the zone's abbreviation: `2026-11-23 14:05:00 CET`.
pub fn in_zone(instant: DateTime<Utc>, tz: Tz) -> String {
    instant.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S %Z").to_string()
}

pub fn utc(instant: DateTime<Utc>) -> String {
    instant.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// How long ago, for people: `3 s ago`.
pub fn ago(instant: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ago", human_ms((now - instant).num_milliseconds()))
}

pub fn seconds(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}
