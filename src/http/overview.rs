//! The overview's fleet logic, no IO: what the summary counts (failing now, running, late or
//! missed in the last 24 hours, paused), and which jobs a search, filters and a sort select, in
//! what order, all read from the page's URL (`Filters`) and written back into its links
//! (`Filters::href`). The page renders only the selected page of rows; every job is counted.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::Problem;
use crate::config::{Job, JobSet, RunOn};
use crate::model::RunStatus;
use crate::store::{JobControl, JobState};

/// A run that began this much after its planned start is late (the summary's "late or missed").
pub const LATE_AFTER: Duration = Duration::from_secs(1);

/// How far back the summary looks for late or missed slots.
pub const LATE_SINCE: chrono::Duration = chrono::Duration::hours(24);

/// The overview's URL: `page`, `q` (a part of the name), `outcome` (the last outcome's word, or
/// `never`), `show` (`failing`, `running` or `late`: the summary's links), `kind`, `tag`,
/// `paused` (`yes` or `no`) and `sort` (`name`, `next` or `outcome`).
#[derive(Debug, Default, Deserialize)]
pub(super) struct OverviewQuery {
    pub page: Option<usize>,
    pub q: Option<String>,
    pub outcome: Option<String>,
    pub show: Option<String>,
    pub kind: Option<String>,
    pub tag: Option<String>,
    pub paused: Option<String>,
    pub sort: Option<String>,
}

/// What the summary's links select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Show {
    /// The last outcome failed, timed out or was lost.
    Failing,
    Running,
    /// Missed a slot, or began late, in the last 24 hours.
    Late,
}

impl Show {
    const NAMES: [(&'static str, Show); 3] =
        [("failing", Show::Failing), ("running", Show::Running), ("late", Show::Late)];

    pub fn as_str(self) -> &'static str {
        Show::NAMES.iter().find(|(_, show)| *show == self).map_or("", |(name, _)| name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Sort {
    #[default]
    Name,
    /// Soonest next fire first; paused jobs and jobs that never fire again last.
    Next,
    /// Worst last outcome first (failing, then the other troubles, then succeeded, then never ran).
    Outcome,
}

impl Sort {
    pub const NAMES: [(&'static str, Sort); 3] =
        [("name", Sort::Name), ("next", Sort::Next), ("outcome", Sort::Outcome)];

    pub fn as_str(self) -> &'static str {
        Sort::NAMES.iter().find(|(_, sort)| *sort == self).map_or("name", |(name, _)| name)
    }
}

/// A last outcome filter: a status, or never ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Status(RunStatus),
    Never,
}

/// The search, filters, sort and page the overview's URL asks for, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Filters {
    pub q: String,
    pub outcome: Option<Outcome>,
    pub show: Option<Show>,
    pub kind: Option<String>,
    pub tag: Option<String>,
    pub paused: Option<bool>,
    pub sort: Sort,
    pub page: usize,
}

fn unknown(name: &str, word: &str, expected: &[&str]) -> Problem {
    Problem::bad_request(format!("`{name}`: `{word}` is not one of {}", expected.join(", ")))
}

impl Filters {
    pub fn of(query: OverviewQuery) -> Result<Filters, Problem> {
        let given = |value: Option<String>| value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let outcome = match given(query.outcome).as_deref() {
            None => None,
            Some("never") => Some(Outcome::Never),
            Some(word) => Some(Outcome::Status(RunStatus::parse(word).ok_or_else(|| {
                let mut words: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                words.push("never");
                unknown("outcome", word, &words)
            })?)),
        };
        let show = match given(query.show).as_deref() {
            None => None,
            Some(word) => Some(
                Show::NAMES
                    .iter()
                    .find(|(name, _)| *name == word)
                    .map(|(_, show)| *show)
                    .ok_or_else(|| unknown("show", word, &Show::NAMES.map(|(name, _)| name)))?,
            ),
        };
        let paused = match given(query.paused).as_deref() {
            None => None,
            Some("yes") => Some(true),
            Some("no") => Some(false),
            Some(word) => return Err(unknown("paused", word, &["yes", "no"])),
        };
        let sort = match given(query.sort).as_deref() {
            None => Sort::Name,
            Some(word) => Sort::NAMES
                .iter()
                .find(|(name, _)| *name == word)
                .map(|(_, sort)| *sort)
                .ok_or_else(|| unknown("sort", word, &Sort::NAMES.map(|(name, _)| name)))?,
        };
        Ok(Filters {
            q: given(query.q).unwrap_or_default(),
            outcome,
            show,
            kind: given(query.kind),
            tag: given(query.tag),
            paused,
            sort,
            page: query.page.unwrap_or(1).max(1),
        })
    }

    /// Whether anything narrows the list.
    pub fn narrows(&self) -> bool {
        !self.q.is_empty()
            || self.outcome.is_some()
            || self.show.is_some()
            || self.kind.is_some()
            || self.tag.is_some()
            || self.paused.is_some()
    }

    /// The overview's URL for these filters (page 1 unless `page` says otherwise).
    pub fn href(&self) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if !self.q.is_empty() {
            query.append_pair("q", &self.q);
        }
        match self.outcome {
            Some(Outcome::Status(status)) => {
                query.append_pair("outcome", status.as_str());
            }
            Some(Outcome::Never) => {
                query.append_pair("outcome", "never");
            }
            None => {}
        }
        if let Some(show) = self.show {
            query.append_pair("show", show.as_str());
        }
        if let Some(kind) = &self.kind {
            query.append_pair("kind", kind);
        }
        if let Some(tag) = &self.tag {
            query.append_pair("tag", tag);
        }
        if let Some(paused) = self.paused {
            query.append_pair("paused", if paused { "yes" } else { "no" });
        }
        if self.sort != Sort::Name {
            query.append_pair("sort", self.sort.as_str());
        }
        if self.page > 1 {
            query.append_pair("page", &self.page.to_string());
        }
        let query = query.finish();
        if query.is_empty() { "/".to_owned() } else { format!("/?{query}") }
    }

    /// These filters on another page.
    pub fn on_page(&self, page: usize) -> Filters {
        Filters { page, ..self.clone() }
    }

    /// Only what a summary link selects, keeping the sort.
    pub fn summary_link(&self, show: Option<Show>, paused: Option<bool>) -> Filters {
        Filters { show, paused, sort: self.sort, ..Filters::default() }
    }
}

/// The fleet at a glance: how many jobs are in each kind of trouble.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Summary {
    pub total: usize,
    pub failing: usize,
    pub running: usize,
    pub late: usize,
    pub paused: usize,
}

/// One job as the overview weighs it.
struct Weighed<'a> {
    job: &'a Job,
    state: JobState,
    paused: bool,
}

fn failing(state: &JobState) -> bool {
    matches!(state.last, Some(RunStatus::Failed | RunStatus::TimedOut | RunStatus::Lost))
}

/// Worse outcomes first.
fn severity(state: &JobState) -> u8 {
    match state.last {
        Some(RunStatus::Failed) => 0,
        Some(RunStatus::TimedOut) => 1,
        Some(RunStatus::Lost) => 2,
        Some(RunStatus::Killed) => 3,
        Some(RunStatus::Missed) => 4,
        Some(RunStatus::Skipped) => 5,
        Some(RunStatus::Running) => 6,
        Some(RunStatus::Succeeded) => 7,
        None => 8,
    }
}

/// The tags a job's runs need (`run_on: { tags: [..] }`).
pub(super) fn tags(job: &Job) -> &[String] {
    match &job.run_on {
        RunOn::Tags(tags) => tags,
        RunOn::Leader | RunOn::Any => &[],
    }
}

/// Whether `job` is paused: by an operator's control, else by its file.
pub(super) fn is_paused(job: &Job, controls: &HashMap<String, JobControl>) -> bool {
    controls.get(job.name.as_str()).map_or(job.paused, |control| control.paused)
}

/// The summary of every job, and the jobs `filters` select in their order (every page).
pub(super) fn select<'a>(
    jobs: &'a JobSet,
    states: &HashMap<String, JobState>,
    controls: &HashMap<String, JobControl>,
    filters: &Filters,
    now: DateTime<Utc>,
) -> (Summary, Vec<&'a Job>) {
    let mut summary = Summary::default();
    let needle = filters.q.to_lowercase();
    let mut chosen: Vec<Weighed<'a>> = Vec::new();
    for job in jobs.jobs() {
        let state = states.get(job.name.as_str()).copied().unwrap_or_default();
        let paused = is_paused(job, controls);
        summary.total += 1;
        summary.failing += usize::from(failing(&state));
        summary.running += usize::from(state.running);
        summary.late += usize::from(state.late_or_missed);
        summary.paused += usize::from(paused);
        let name = job.name.as_str();
        let keep = (needle.is_empty() || name.to_lowercase().contains(&needle))
            && filters.outcome.is_none_or(|outcome| match outcome {
                Outcome::Never => state.last.is_none(),
                Outcome::Status(status) => state.last == Some(status),
            })
            && filters.show.is_none_or(|show| match show {
                Show::Failing => failing(&state),
                Show::Running => state.running,
                Show::Late => state.late_or_missed,
            })
            && filters.kind.as_deref().is_none_or(|kind| job.target.kind().as_str() == kind)
            && filters.tag.as_deref().is_none_or(|tag| tags(job).iter().any(|t| t == tag))
            && filters.paused.is_none_or(|wanted| wanted == paused);
        if keep {
            chosen.push(Weighed { job, state, paused });
        }
    }
    match filters.sort {
        Sort::Name => chosen.sort_by(|a, b| a.job.name.as_str().cmp(b.job.name.as_str())),
        Sort::Outcome => chosen
            .sort_by(|a, b| (severity(&a.state), a.job.name.as_str()).cmp(&(severity(&b.state), b.job.name.as_str()))),
        Sort::Next => {
            let mut keyed: Vec<(Option<DateTime<Utc>>, Weighed<'a>)> = chosen
                .into_iter()
                .map(|weighed| {
                    let next = if weighed.paused { None } else { weighed.job.schedule.next_after(now) };
                    (next, weighed)
                })
                .collect();
            // Soonest first; none (paused, or no future slot) last.
            keyed.sort_by(|(a_next, a), (b_next, b)| {
                (a_next.is_none(), a_next, a.job.name.as_str()).cmp(&(b_next.is_none(), b_next, b.job.name.as_str()))
            });
            chosen = keyed.into_iter().map(|(_, weighed)| weighed).collect();
        }
    }
    (summary, chosen.into_iter().map(|weighed| weighed.job).collect())
}

/// The kinds and tags the job file uses, for the filters' choices.
pub(super) fn choices(jobs: &JobSet) -> (Vec<&'static str>, Vec<String>) {
    let mut kinds: Vec<&'static str> = jobs.jobs().iter().map(|job| job.target.kind().as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut tags: Vec<String> = jobs.jobs().iter().flat_map(|job| tags(job).iter().cloned()).collect();
    tags.sort_unstable();
    tags.dedup();
    (kinds, tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> JobSet {
        let yaml = r#"
jobs:
  - { name: beta-report, schedule: "0 3 * * *", shell: "true" }
  - { name: alpha-sync, schedule: "*/5 * * * *", command: ["true"] }
  - { name: gamma-ping, schedule: "* * * * *", http: { url: "http://127.0.0.1:1/" }, run_on: { tags: [edge] } }
  - { name: delta-idle, schedule: "0 0 1 1 *", shell: "true", paused: true }
"#;
        crate::config::parse(yaml, "jobs.yaml").expect("the test's job file")
    }

    fn query(pairs: &[(&str, &str)]) -> Filters {
        let text = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
        Filters::of(serde_urlencoded_like(&text)).expect("valid filters")
    }

    /// The query as axum's `Query` would give it.
    fn serde_urlencoded_like(text: &str) -> OverviewQuery {
        let mut query = OverviewQuery::default();
        for (name, value) in url::form_urlencoded::parse(text.as_bytes()) {
            let value = Some(value.into_owned());
            match name.as_ref() {
                "q" => query.q = value,
                "outcome" => query.outcome = value,
                "show" => query.show = value,
                "kind" => query.kind = value,
                "tag" => query.tag = value,
                "paused" => query.paused = value,
                "sort" => query.sort = value,
                "page" => query.page = value.and_then(|v| v.parse().ok()),
                _ => {}
            }
        }
        query
    }

    fn names(selected: &[&Job]) -> Vec<String> {
        selected.iter().map(|job| job.name.as_str().to_owned()).collect()
    }

    fn states() -> HashMap<String, JobState> {
        HashMap::from([
            (
                "beta-report".to_owned(),
                JobState { last: Some(RunStatus::Failed), running: false, late_or_missed: true },
            ),
            (
                "alpha-sync".to_owned(),
                JobState { last: Some(RunStatus::Succeeded), running: true, late_or_missed: false },
            ),
            ("gamma-ping".to_owned(), JobState { last: Some(RunStatus::Lost), running: false, late_or_missed: false }),
        ])
    }

    #[test]
    fn the_summary_counts_every_job_whatever_the_filters() {
        let jobs = jobs();
        let (summary, selected) = select(&jobs, &states(), &HashMap::new(), &query(&[("q", "alpha")]), Utc::now());
        assert_eq!(summary, Summary { total: 4, failing: 2, running: 1, late: 1, paused: 1 });
        assert_eq!(names(&selected), ["alpha-sync"]);
    }

    #[test]
    fn filters_narrow_and_sorts_order() {
        let jobs = jobs();
        // A fixed minute that is no multiple of 5: at one, `*/5` and `* * * * *` fire together.
        let now = "2026-03-02T10:01:30Z".parse().unwrap();
        let pick = |pairs: &[(&str, &str)]| names(&select(&jobs, &states(), &HashMap::new(), &query(pairs), now).1);
        assert_eq!(pick(&[]), ["alpha-sync", "beta-report", "delta-idle", "gamma-ping"]);
        assert_eq!(pick(&[("q", "A-S")]), ["alpha-sync"], "case-insensitive part of the name");
        assert_eq!(pick(&[("show", "failing")]), ["beta-report", "gamma-ping"]);
        assert_eq!(pick(&[("show", "running")]), ["alpha-sync"]);
        assert_eq!(pick(&[("show", "late")]), ["beta-report"]);
        assert_eq!(pick(&[("outcome", "lost")]), ["gamma-ping"]);
        assert_eq!(pick(&[("outcome", "never")]), ["delta-idle"]);
        assert_eq!(pick(&[("kind", "http")]), ["gamma-ping"]);
        assert_eq!(pick(&[("tag", "edge")]), ["gamma-ping"]);
        assert_eq!(pick(&[("paused", "yes")]), ["delta-idle"]);
        assert_eq!(pick(&[("paused", "no"), ("kind", "shell")]), ["beta-report"]);
        assert_eq!(pick(&[("sort", "outcome")]), ["beta-report", "gamma-ping", "alpha-sync", "delta-idle"]);
        let by_next = pick(&[("sort", "next")]);
        assert_eq!(by_next[0], "gamma-ping", "every minute fires first: {by_next:?}");
        assert_eq!(by_next.last().map(String::as_str), Some("delta-idle"), "paused last: {by_next:?}");
    }

    #[test]
    fn the_url_round_trips_and_a_bad_word_is_refused_by_name() {
        let filters =
            query(&[("q", "a b&c"), ("outcome", "timed_out"), ("tag", "edge"), ("sort", "next"), ("page", "3")]);
        assert_eq!(filters.href(), "/?q=a+b%26c&outcome=timed_out&tag=edge&sort=next&page=3");
        assert_eq!(
            query(&[("q", "a b&c"), ("outcome", "timed_out"), ("tag", "edge"), ("sort", "next"), ("page", "3")]),
            filters
        );
        assert_eq!(Filters::default().href(), "/");
        let error = Filters::of(OverviewQuery { sort: Some("size".into()), ..OverviewQuery::default() }).unwrap_err();
        assert!(error.detail.contains("`sort`: `size` is not one of name, next, outcome"), "{}", error.detail);
    }
}
