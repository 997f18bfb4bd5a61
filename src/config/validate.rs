//! The validation of a job file's node tree: [`Validator`] walks the [`Node`]s, builds the
//! [`Job`]s and collects one located [`ConfigError`] per problem instead of stopping at the
//! first. This file holds the walk over the file (`defaults:`, `jobs:`), the policies a job may
//! inherit, and the readers every field uses (strings, durations, names from a table); the
//! fields only a job has are in `job.rs`. Nothing here reads a file.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use chrono_tz::Tz;
use serde_saphyr::{Location, Spanned};

use super::node::Node;
use super::notify::NotifyTarget;
use super::{CatchUp, Concurrency, ConfigError, Job, MAX_JOBS, Retries, Runner, TargetKind};
use crate::schedule;

/// The fields `defaults:` takes; a job takes them too, to override.
pub(super) const POLICY_KEYS: &[&str] =
    &["timezone", "timeout", "concurrency", "catch_up", "starting_deadline", "retries", "notify", "jitter", "retain"];
/// The fields of `retries:`.
pub(super) const RETRY_KEYS: &[&str] = &["max", "backoff"];
/// The fields of `http:`.
pub(super) const HTTP_KEYS: &[&str] = &["url", "method", "headers", "body", "expect_status"];
/// The fields of a job, in the order the unknown-field error lists them.
pub(super) static JOB_KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let targets = TargetKind::NAMES.iter().map(|(name, _)| *name);
    let own =
        ["env", "inherit_env", "overrides", "workdir", "user", "group", "paused", "run_on", "team", "after", "within"];
    ["name", "schedule"].into_iter().chain(targets).chain(own).chain(POLICY_KEYS.iter().copied()).collect()
});
const MAX_RETRIES: i128 = 100;

/// The policies `defaults:` sets and each job may override.
#[derive(Debug, Clone)]
pub(super) struct Policies {
    pub timezone: Tz,
    pub timeout: Duration,
    pub concurrency: Concurrency,
    pub catch_up: CatchUp,
    pub starting_deadline: Duration,
    /// Where `starting_deadline` was set (line, column), if it was.
    pub starting_deadline_at: Option<(u32, u32)>,
    pub retries: Retries,
    pub notify: Vec<NotifyTarget>,
    /// Each run delayed by a deterministic offset below this (`schedule::jitter_offset`).
    pub jitter: Duration,
    pub jitter_at: Option<(u32, u32)>,
    /// How long the job's finished rows are kept; `None`: the ledger's `--retain`.
    pub retain: Option<Duration>,
    pub retain_at: Option<(u32, u32)>,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            timezone: Tz::UTC,
            timeout: Duration::from_secs(10 * 60),
            concurrency: Concurrency::Forbid,
            catch_up: CatchUp::Latest,
            starting_deadline: Duration::from_secs(5 * 60),
            starting_deadline_at: None,
            retries: Retries { max: 0, backoff: Duration::from_secs(10) },
            notify: Vec::new(),
            jitter: Duration::ZERO,
            jitter_at: None,
            retain: None,
            retain_at: None,
        }
    }
}

/// One validation of one job file: its name (for error locations), who loads it (`user:` needs
/// root) and the errors and warnings found so far.
pub(super) struct Validator<'a> {
    file: &'a str,
    pub(super) runner: Runner,
    pub(super) errors: Vec<ConfigError>,
    /// What loads but may not do what the user meant (a step that does not divide its field).
    pub(super) warnings: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    pub(super) fn new(file: &'a str, runner: Runner) -> Validator<'a> {
        Validator { file, runner, errors: Vec::new(), warnings: Vec::new() }
    }

    /// A warning at `column` chars right of `at` (on its line).
    pub(super) fn warn(&mut self, at: &Location, right: usize, job: Option<&str>, message: String) {
        let (line, column) = line_column(at);
        let column = column.saturating_add(u32::try_from(right).unwrap_or(u32::MAX));
        self.warnings.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            job: job.map(str::to_owned),
            message,
        });
    }

    /// The errors found, in file order.
    pub(super) fn into_errors(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|e| (e.line, e.column));
        self.errors
    }

    pub(super) fn error_at(&mut self, line: u32, column: u32, job: Option<&str>, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            job: job.map(str::to_owned),
            message,
        });
    }

    pub(super) fn error(&mut self, at: &Location, job: Option<&str>, message: String) {
        let (line, column) = line_column(at);
        self.error_at(line, column, job, message);
    }

    /// `file:line:column`, to point at another place in the file from an error.
    pub(super) fn place(&self, at: &Location) -> String {
        format!("{}:{}:{}", self.file, at.line(), at.column())
    }

    /// Every job of the file at `root`, each valid one built, each problem recorded.
    pub(super) fn job_file(&mut self, root: &Spanned<Node>) -> Vec<Job> {
        let Some(entries) = self.mapping(root, None, "the job file", &["defaults", "jobs"]) else {
            return Vec::new();
        };
        let mut defaults = Policies::default();
        if let Some((_, node)) = entries.iter().find(|(k, _)| k.value == "defaults")
            && let Some(fields) = self.mapping(node, None, "`defaults`", POLICY_KEYS)
        {
            self.policies(fields, None, &mut defaults);
        }
        let Some((jobs_key, jobs_node)) = entries.iter().find(|(k, _)| k.value == "jobs") else {
            self.error(&root.referenced, None, "missing `jobs:`: expected a list of jobs".into());
            return Vec::new();
        };
        let items = match &jobs_node.value {
            Node::Seq(items) => items,
            Node::Null => return Vec::new(),
            other => {
                let message = format!("`jobs`: expected a list of jobs, found {}", other.kind());
                self.error(&jobs_node.referenced, None, message);
                return Vec::new();
            }
        };
        if items.len() > MAX_JOBS {
            let message = format!("{} jobs; at most {MAX_JOBS} are accepted in one file", items.len());
            self.error(&jobs_key.referenced, None, message);
            return Vec::new();
        }
        let mut first_seen: HashMap<String, Location> = HashMap::with_capacity(items.len());
        // Sized up front: a `Job` is large, and a growing vector would hold up to twice the jobs.
        let mut jobs = Vec::with_capacity(items.len());
        jobs.extend(items.iter().filter_map(|item| self.job(item, &defaults, &mut first_seen)));
        self.dependencies(&jobs, &first_seen);
        jobs
    }

    /// What `after:` entries name must be jobs of the file (`seen`: every name defined, valid
    /// or not), and no job may wait for itself through any chain: each cycle is reported once,
    /// at the `after` entry that closes it.
    fn dependencies(&mut self, jobs: &[Job], seen: &HashMap<String, Location>) {
        let index: HashMap<&str, usize> = jobs.iter().enumerate().map(|(i, job)| (job.name.as_str(), i)).collect();
        for job in jobs {
            for upstream in &job.after {
                if !seen.contains_key(upstream.job.as_str()) {
                    let message = format!("`after`: there is no job `{}` in the file", upstream.job);
                    self.error_at(upstream.at.0, upstream.at.1, Some(job.name.as_str()), message);
                }
            }
        }
        // Depth-first, iteratively (a chain may be as long as the file): 0 unseen, 1 on the
        // path, 2 done.
        let mut state = vec![0u8; jobs.len()];
        for root in 0..jobs.len() {
            if state[root] != 0 {
                continue;
            }
            let mut path: Vec<(usize, usize)> = vec![(root, 0)];
            state[root] = 1;
            while let Some((node, next)) = path.last_mut() {
                let (node, entry) = (*node, *next);
                let Some(upstream) = jobs[node].after.get(entry) else {
                    state[node] = 2;
                    path.pop();
                    continue;
                };
                *next += 1;
                let Some(&up) = index.get(upstream.job.as_str()) else { continue };
                match state[up] {
                    0 => {
                        state[up] = 1;
                        path.push((up, 0));
                    }
                    1 => {
                        let from = path.iter().position(|(n, _)| *n == up).unwrap_or(0);
                        // From the job whose entry closes the cycle, round to it again.
                        let mut names: Vec<&str> = path[from..].iter().map(|(n, _)| jobs[*n].name.as_str()).collect();
                        names.rotate_right(1);
                        names.push(jobs[node].name.as_str());
                        let message =
                            format!("`after`: a cycle: {}; a job may not wait for itself", names.join(" waits for "));
                        self.error_at(upstream.at.0, upstream.at.1, Some(jobs[node].name.as_str()), message);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Apply the policy fields present in `entries` over `base`. Returns whether all were valid.
    pub(super) fn policies(
        &mut self,
        entries: &[(Spanned<String>, Spanned<Node>)],
        job: Option<&str>,
        base: &mut Policies,
    ) -> bool {
        let before = self.errors.len();
        for (key, value) in entries {
            match key.value.as_str() {
                "timezone" => {
                    if let Some(tz) = self.timezone(value, job) {
                        base.timezone = tz;
                    }
                }
                "timeout" => {
                    if let Some(d) = self.duration(value, job, "timeout") {
                        base.timeout = d;
                    }
                }
                "starting_deadline" => {
                    if let Some(d) = self.duration(value, job, "starting_deadline") {
                        base.starting_deadline = d;
                        base.starting_deadline_at = Some(line_column(&value.referenced));
                    }
                }
                "concurrency" => {
                    if let Some(c) = self.choice(value, job, "concurrency", Concurrency::NAMES) {
                        base.concurrency = c;
                    }
                }
                "catch_up" => {
                    if let Some(c) = self.choice(value, job, "catch_up", CatchUp::NAMES) {
                        base.catch_up = c;
                    }
                }
                "retries" => self.retries(value, job, &mut base.retries),
                "notify" => {
                    if let Some(notify) = self.notify(value, job) {
                        base.notify = notify;
                    }
                }
                "jitter" => {
                    if let Some(d) = self.duration(value, job, "jitter") {
                        base.jitter = d;
                        base.jitter_at = Some(line_column(&value.referenced));
                    }
                }
                "retain" => {
                    if let Some(d) = self.duration(value, job, "retain") {
                        base.retain = Some(d);
                        base.retain_at = Some(line_column(&value.referenced));
                    }
                }
                _ => {}
            }
        }
        self.errors.len() == before
    }

    /// The policies that bound each other, once a job's are all known: a run delayed by its
    /// jitter must still be able to start within its starting deadline, and a row is kept at
    /// least as long as its slot may still be decided (the starting deadline), or a slot that
    /// late could be decided again after its row was pruned.
    pub(super) fn policy_bounds(&mut self, policies: &Policies, job: Option<&str>, job_at: (u32, u32)) -> bool {
        let before = self.errors.len();
        let deadline = humantime::format_duration(policies.starting_deadline);
        if policies.jitter > policies.starting_deadline {
            let (line, column) = policies.jitter_at.unwrap_or(job_at);
            let message = format!(
                "`jitter` {} is longer than the job's `starting_deadline` {deadline}: a run delayed that far \
                 could never start; expected at most the starting deadline",
                humantime::format_duration(policies.jitter)
            );
            self.error_at(line, column, job, message);
        }
        if let Some(retain) = policies.retain.filter(|retain| *retain < policies.starting_deadline) {
            let (line, column) = policies.retain_at.unwrap_or(job_at);
            let message = format!(
                "`retain` {} is shorter than the job's `starting_deadline` {deadline}; expected at least the \
                 starting deadline",
                humantime::format_duration(retain)
            );
            self.error_at(line, column, job, message);
        }
        self.errors.len() == before
    }

    /// `retries: { max, backoff }` over `base`.
    fn retries(&mut self, node: &Spanned<Node>, job: Option<&str>, base: &mut Retries) {
        let Some(fields) = self.mapping(node, job, "`retries`", RETRY_KEYS) else {
            return;
        };
        for (k, v) in fields {
            match (k.value.as_str(), &v.value) {
                ("max", Node::Int(n)) if (0..=MAX_RETRIES).contains(n) => base.max = *n as u32,
                ("max", other) => {
                    let found = match other {
                        Node::Int(n) => n.to_string(),
                        other => other.kind().to_owned(),
                    };
                    let message =
                        format!("`retries.max`: expected a whole number from 0 to {MAX_RETRIES}, found {found}");
                    self.error(&v.referenced, job, message);
                }
                ("backoff", _) => {
                    if let Some(d) = self.duration(v, job, "retries.backoff") {
                        base.backoff = d;
                    }
                }
                _ => {}
            }
        }
    }

    /// The entries of a mapping; `None` (reported) if `node` is not a mapping.
    pub(super) fn entries<'n>(
        &mut self,
        node: &'n Spanned<Node>,
        job: Option<&str>,
        what: &str,
    ) -> Option<&'n [(Spanned<String>, Spanned<Node>)]> {
        match &node.value {
            Node::Map(entries) => Some(entries),
            other => {
                self.error(&node.referenced, job, format!("expected {what} (a mapping), found {}", other.kind()));
                None
            }
        }
    }

    /// The entries of a mapping whose keys must be `known`; unknown keys are reported.
    pub(super) fn mapping<'n>(
        &mut self,
        node: &'n Spanned<Node>,
        job: Option<&str>,
        what: &str,
        known: &[&str],
    ) -> Option<&'n [(Spanned<String>, Spanned<Node>)]> {
        let entries = self.entries(node, job, what)?;
        for (key, _) in entries {
            if !known.contains(&key.value.as_str()) {
                let hint = did_you_mean(&key.value, known);
                self.error(
                    &key.referenced,
                    job,
                    format!("unknown field `{}` in {what}{hint}; expected one of: {}", key.value, known.join(", ")),
                );
            }
        }
        Some(entries)
    }

    /// The text of a string node; anything else is reported as not `expected`.
    pub(super) fn string<'n>(
        &mut self,
        node: &'n Spanned<Node>,
        job: Option<&str>,
        field: &str,
        expected: &str,
    ) -> Option<&'n str> {
        match &node.value {
            Node::Str(s) => Some(s),
            other => {
                // YAML reads `yes`, `on`, `8080` as booleans and numbers; say how to keep the text.
                let hint = match other {
                    Node::Bool(_) | Node::Int(_) | Node::Float => " (put it in quotes to make it text)",
                    _ => "",
                };
                self.error(
                    &node.referenced,
                    job,
                    format!("`{field}`: expected {expected}, found {}{hint}", other.kind()),
                );
                None
            }
        }
    }

    pub(super) fn duration(&mut self, node: &Spanned<Node>, job: Option<&str>, field: &str) -> Option<Duration> {
        const EXPECTED: &str = "a duration such as 30s, 10m or 1h30m";
        let text = self.string(node, job, field, EXPECTED)?;
        match humantime::parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(1) => Some(d),
            Ok(_) => {
                self.error(&node.referenced, job, format!("`{field}`: `{text}` is too short; expected at least 1s"));
                None
            }
            Err(e) => {
                self.error(&node.referenced, job, format!("`{field}`: `{text}` is not {EXPECTED} ({e})"));
                None
            }
        }
    }

    /// One of the names in `names` (an enum's table of YAML names), as its value.
    pub(super) fn choice<T: Copy>(
        &mut self,
        node: &Spanned<Node>,
        job: Option<&str>,
        field: &str,
        names: &[(&str, T)],
    ) -> Option<T> {
        let listed: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
        let expected = format!("one of {}", listed.join(", "));
        let text = self.string(node, job, field, &expected)?;
        match names.iter().find(|(name, _)| *name == text) {
            Some((_, value)) => Some(*value),
            None => {
                self.error(&node.referenced, job, format!("`{field}`: `{text}` is not {expected}"));
                None
            }
        }
    }

    fn timezone(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Option<Tz> {
        let text = self.string(node, job, "timezone", "an IANA time zone name such as Europe/Berlin or UTC")?;
        match schedule::parse_timezone(text) {
            Ok(tz) => Some(tz),
            Err(e) => {
                self.error(&node.referenced, job, format!("`timezone`: {e}"));
                None
            }
        }
    }
}

/// A location as the (line, column) errors show: 1-based, never 0.
pub(super) fn line_column(at: &Location) -> (u32, u32) {
    (at.line().max(1) as u32, at.column().max(1) as u32)
}

/// " (did you mean `x`?)" when an unknown key is a near miss of a known one, else nothing.
/// Keys whose lengths differ by more than the distance allowed are never compared: the edit
/// distance is at least that difference, and a hostile 64 KB key must cost no more than a short one.
fn did_you_mean(key: &str, known: &[&str]) -> String {
    let length = key.chars().count();
    known
        .iter()
        .filter(|k| k.chars().count().abs_diff(length) <= 2)
        .map(|k| (strsim::levenshtein(key, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::did_you_mean;
    use crate::config::tests::errors;
    use crate::config::{CatchUp, Concurrency, parse};

    #[test]
    fn job_fields_override_defaults() {
        let text = "defaults: { timeout: 1m, concurrency: allow, retries: { max: 3 } }\njobs:\n  - { name: a, schedule: '@daily', shell: 'true', timeout: 5s, catch_up: all }\n  - { name: b, schedule: '@daily', shell: 'true' }\n";
        let set = parse(text, "f").unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (set.get("a").unwrap(), set.get("b").unwrap());
        assert_eq!(
            (a.timeout, a.catch_up, a.concurrency, a.retries.max),
            (Duration::from_secs(5), CatchUp::All, Concurrency::Allow, 3)
        );
        assert_eq!(
            (b.timeout, b.catch_up, b.retries.backoff),
            (Duration::from_secs(60), CatchUp::Latest, Duration::from_secs(10))
        );
    }

    #[test]
    fn policy_errors_are_explained() {
        let text = "defaults: { timeout: 10, concurrency: sometimes, retries: { max: -1, backoff: soon } }
jobs:
  - { name: a, schedule: '@daily', shell: 'true', catch_up: never, starting_deadline: 10ms, retries: { tries: 2 } }
";
        let got = errors(text);
        let want = [
            "jobs.yaml:1:22: `timeout`: expected a duration such as 30s, 10m or 1h30m, found a number (put it in quotes to make it text)",
            "jobs.yaml:1:39: `concurrency`: `sometimes` is not one of allow, forbid, replace",
            "jobs.yaml:1:66: `retries.max`: expected a whole number from 0 to 100, found -1",
            "jobs.yaml:1:79: `retries.backoff`: `soon` is not a duration such as 30s, 10m or 1h30m",
            "jobs.yaml:3:61: job `a`: `catch_up`: `never` is not one of none, latest, all",
            "jobs.yaml:3:87: job `a`: `starting_deadline`: `10ms` is too short; expected at least 1s",
            "jobs.yaml:3:104: job `a`: unknown field `tries` in `retries`; expected one of: max, backoff",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (got, want) in got.iter().zip(want) {
            assert!(got.starts_with(want), "got  {got}\nwant {want}…");
        }
    }

    #[test]
    fn near_misses_are_suggested_and_far_ones_are_not() {
        assert_eq!(did_you_mean("tiemout", &["timeout", "timezone"]), " (did you mean `timeout`?)");
        assert_eq!(did_you_mean("frequency", &["timeout", "timezone"]), "");
    }
}
