//! The job file: its model ([`JobSet`], [`Job`], [`Target`] and the policy enums), and [`load`] /
//! [`parse`], which turn a file into it. Pure apart from [`load`] reading the file.
//!
//! Parsing runs in two steps so that *every* error in a file is reported at once, each located:
//! serde-saphyr reads the YAML into a tree of located nodes (`node`; it rejects syntax errors,
//! duplicate keys and alias bombs, with a location), then a `validate::Validator` walks the tree
//! (`validate` for the file and the policies, `job` for a job's own fields), checks each field
//! and collects one [`ConfigError`] per problem. `schema` gives the JSON Schema of the same
//! format (`tenure schema`).
//!
//! Each enum the file names by a word (`concurrency`, `catch_up`, the target kinds) has its words
//! in one table, `NAMES`, made by `yaml_names!`: parsing, `as_str` and the schema read it.

mod job;
mod node;
mod schema;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use self::node::Node;
use self::validate::Validator;
use crate::schedule::Schedule;

pub use self::job::{is_variable_name, refused_override};
pub use self::schema::job_file_schema;

/// A job file larger than this is refused before it is read: 100,000 jobs of four lines each
/// take about 10 MiB. It bounds the memory and time a reload may take (about 15 times the file
/// in memory for the node tree, at most `MAX_NODES` nodes).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// A job file of more YAML nodes (scalars, lists and mappings, aliases expanded) than this is
/// refused while it is read.
pub const MAX_NODES: usize = 12 * MAX_JOBS + 1_000;
/// How many errors a reload logs; the rest are counted (`tenure validate` lists them all).
pub const LOGGED_ERRORS: usize = 20;
/// An error's message is cut to this many characters where it is logged.
const LOGGED_MESSAGE_CHARS: usize = 300;
/// A job file with more jobs than this is refused.
pub const MAX_JOBS: usize = 100_000;

/// A job's name: `[a-z0-9][a-z0-9_-]{0,62}`, unique in its file. Safe in URLs, logs and labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobName(String);

impl JobName {
    pub fn parse(name: &str) -> Result<JobName, String> {
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if first_ok && rest_ok && name.len() <= 63 {
            Ok(JobName(name.to_owned()))
        } else {
            Err(format!(
                "invalid job name `{name}`: expected 1 to 63 characters of a-z, 0-9, `_` and `-`, starting with a letter or digit"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for JobName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Every job of one file, in file order, with the file's hash.
#[derive(Debug, Clone)]
pub struct JobSet {
    jobs: Vec<Job>,
    index: HashMap<JobName, usize>,
    hash: String,
    warnings: Vec<ConfigError>,
}

impl JobSet {
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// What loads but may not do what the user meant, located like errors, in file order: a
    /// step that does not divide its field (`*/45` in minutes fires at :00 and :45). Never
    /// stops the file from loading; `tenure validate` prints them (errors with `--strict`),
    /// and a replica logs them when it loads the file.
    pub fn warnings(&self) -> &[ConfigError] {
        &self.warnings
    }

    pub fn get(&self, name: &str) -> Option<&Job> {
        self.index.get(&JobName(name.to_owned())).map(|&i| &self.jobs[i])
    }

    /// The jobs `keep` keeps, as a set of their own (the same hash and warnings): what one
    /// caller may read of the file.
    pub fn only(&self, keep: impl Fn(&Job) -> bool) -> JobSet {
        let jobs: Vec<Job> = self.jobs.iter().filter(|job| keep(job)).cloned().collect();
        let index = jobs.iter().enumerate().map(|(i, job)| (job.name.clone(), i)).collect();
        JobSet { jobs, index, hash: self.hash.clone(), warnings: self.warnings.clone() }
    }

    /// The jobs that wait for `name` (list it under `after:`), in file order.
    pub fn dependents(&self, name: &str) -> Vec<&Job> {
        self.jobs.iter().filter(|job| job.after.iter().any(|up| up.job.as_str() == name)).collect()
    }

    /// The first 12 hex digits of the SHA-256 of the file's bytes: which file a replica runs.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Refuse jobs whose `starting_deadline` is longer than the ledger keeps their rows
    /// (`--retain`, unless the job sets its own `retain`, checked when parsed): a slot that late
    /// could be decided again after its row was pruned.
    pub fn check_retention(&self, file: &str, retain: Duration) -> Result<(), ConfigErrors> {
        let errors: Vec<ConfigError> = self
            .jobs()
            .iter()
            .filter(|job| job.retain.is_none() && job.starting_deadline > retain)
            .map(|job| ConfigError {
                file: file.to_owned(),
                line: job.starting_deadline_at.0,
                column: job.starting_deadline_at.1,
                job: Some(job.name.to_string()),
                message: format!(
                    "`starting_deadline` {} is longer than the ledger's retention (--retain {}); \
                     expected at most the retention",
                    humantime::format_duration(job.starting_deadline),
                    humantime::format_duration(retain)
                ),
            })
            .collect();
        if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
    }
}

/// One validated job with every default applied.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: JobName,
    pub schedule: Schedule,
    pub target: Target,
    pub timeout: Duration,
    pub concurrency: Concurrency,
    pub catch_up: CatchUp,
    pub starting_deadline: Duration,
    /// Where `starting_deadline` was set (line, column), or where the job starts if defaulted.
    pub starting_deadline_at: (u32, u32),
    pub retries: Retries,
    /// Who is told about which outcomes (`notify:`, or the defaults').
    pub notify: Vec<NotifyTarget>,
    /// Each run starts this much after its slot at most, by a deterministic offset (zero: at
    /// its slot). The slot stays the run's identity.
    pub jitter: Duration,
    /// How long the job's finished rows are kept; `None`: the ledger's `--retain`.
    pub retain: Option<Duration>,
    pub paused: bool,
    pub env: BTreeMap<String, String>,
    /// Variables of tenure's own environment passed on to the job, beyond the few every job
    /// inherits (see `executor`). Never a `TENURE_*` name.
    pub inherit_env: Vec<String>,
    pub workdir: Option<PathBuf>,
    /// Where its runs execute: on the leader (the default), or on a live replica that matches.
    pub run_on: RunOn,
    /// The variables a manual run may set (`overrides:`), in file order; none when absent. Never
    /// a loader, shell start-up or `TENURE_*` variable.
    pub overrides: Vec<String>,
    /// Whom its processes run as (`user:`, `group:`); `None`: tenure's own user.
    pub run_as: Option<RunAs>,
    /// The team that owns it (`team:`): an operator scoped to teams acts only on their jobs
    /// (see `http::identity`). `None`: no team's, so only unscoped principals and admins.
    pub team: Option<String>,
    /// The jobs it waits for (`after:`), in file order: a run of it is released for a slot once
    /// every one of them has a run of that slot that ended as required. Empty: none.
    pub after: Vec<Upstream>,
    /// How long it waits for the rest of its awaited runs, from the first one's end (`within:`);
    /// `None`: its `starting_deadline`.
    pub within: Option<Duration>,
}

impl Job {
    /// How long a released slot of it may wait for its awaited runs, from the first one's end.
    pub fn wait_bound(&self) -> Duration {
        self.within.unwrap_or(self.starting_deadline)
    }
}

/// One job another waits for (`after:`), with the outcome that releases it, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub job: JobName,
    pub on: AfterOn,
    /// Where the entry is written (line, column).
    pub at: (u32, u32),
}

/// Whom a job's processes run as, resolved when the job file was loaded (`user:` and `group:`,
/// names or numeric ids), as cron does: the user's id, a primary group, every group of the user
/// (`initgroups`), and its name and home for `USER`, `LOGNAME` and `HOME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    /// `group:`, or the user's own primary group.
    pub gid: u32,
    /// Every group the process gets: the primary one first, then the user's others.
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

/// Who loads the job file: `user:` needs tenure to run as root (only root may switch users).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runner {
    pub euid: u32,
}

impl Runner {
    /// This process.
    pub fn current() -> Runner {
        Runner { euid: nix::unistd::geteuid().as_raw() }
    }
}

/// Where a job's runs execute (`run_on`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RunOn {
    /// On the leader that claimed the run, as a singleton scheduler does (the default).
    #[default]
    Leader,
    /// On any live replica (the leader's own included), least loaded first.
    Any,
    /// On a live replica that has every one of these tags (`--tags`).
    Tags(Vec<String>),
}

impl RunOn {
    /// Whether a replica offering `tags` may execute the job's runs. The leader executes
    /// `Leader` jobs itself: no replica is asked.
    pub fn accepts(&self, tags: &[String]) -> bool {
        match self {
            RunOn::Leader => false,
            RunOn::Any => true,
            RunOn::Tags(wanted) => wanted.iter().all(|tag| tags.contains(tag)),
        }
    }

    /// Whether the runs are handed to a replica under an execution lease.
    pub fn is_remote(&self) -> bool {
        !matches!(self, RunOn::Leader)
    }
}

/// Whether `text` may be a replica tag: letters, digits, `-`, `_` and `.` (the ledger keeps a
/// replica's tags comma-separated).
pub fn is_tag(text: &str) -> bool {
    !text.is_empty() && text.len() <= 64 && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// What a run executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An argv, executed without a shell.
    Command {
        argv: Vec<String>,
    },
    /// A script run by `/bin/sh -c`.
    Shell {
        script: String,
    },
    Http(HttpTarget),
}

impl Target {
    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Command { .. } => TargetKind::Command,
            Target::Shell { .. } => TargetKind::Shell,
            Target::Http(_) => TargetKind::Http,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// Written in the file, or read from the environment or a file when a run is prepared.
    pub url: Sourced,
    pub method: String,
    /// Each value written in the file, or read like `url`.
    pub headers: BTreeMap<String, Sourced>,
    pub body: String,
    /// Statuses that count as success; empty means any 2xx.
    pub expect_status: Vec<u16>,
}

/// An enum whose values the job file spells as words: the words are written once, here, in
/// `NAMES` (file order, which error messages and the schema list), and `as_str` is made from the
/// same words, so parsing, display and `tenure schema` cannot disagree.
macro_rules! yaml_names {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$variant_meta:meta])* $variant:ident = $word:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$variant_meta])* $variant,)+ }

        impl $name {
            /// Every value with its word in the job file, in the order messages list them.
            pub const NAMES: &[(&str, $name)] = &[$(($word, $name::$variant),)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }
    };
}

// After `yaml_names!`, which it uses.
mod notify;
mod sourced;

pub use self::notify::{NotifyOn, NotifyTarget, Webhook, WebhookFormat, url_label};
pub use self::sourced::{Sourced, is_http_url};

yaml_names! {
    /// What happens when a slot comes due while an earlier run of the job still goes.
    pub enum Concurrency {
        Allow = "allow",
        Forbid = "forbid",
        Replace = "replace",
    }
}

yaml_names! {
    /// What happens to slots that came due while no leader fired them.
    pub enum CatchUp {
        None = "none",
        Latest = "latest",
        All = "all",
    }
}

yaml_names! {
    /// Which end of an awaited run releases a dependent run (`after: [{ job, on }]`).
    pub enum AfterOn {
        /// The awaited run succeeded (the default).
        Success = "success",
        /// It failed, timed out or was killed.
        Failure = "failure",
        /// It ran and ended, whatever its outcome.
        Always = "always",
    }
}

yaml_names! {
    /// Which kind of [`Target`] a job has: the field that sets it (`command: [...]`).
    pub enum TargetKind {
        Command = "command",
        Shell = "shell",
        Http = "http",
    }
}

impl TargetKind {
    /// "`command`, `shell` or `http`", as messages list the choices.
    fn listed() -> String {
        let quoted: Vec<String> = Self::NAMES.iter().map(|(name, _)| format!("`{name}`")).collect();
        match quoted.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    pub max: u32,
    pub backoff: Duration,
}

/// One problem in a job file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub job: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(job) = &self.job {
            write!(f, "job `{job}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl ConfigError {
    /// As a warning: `file:line:column: warning: job `x`: message`.
    pub fn as_warning(&self) -> String {
        let mut text = format!("{}:{}:{}: warning: ", self.file, self.line, self.column);
        if let Some(job) = &self.job {
            text.push_str(&format!("job `{job}`: "));
        }
        text.push_str(&self.message);
        text
    }
}

/// Every problem found in a job file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// The first `shown` errors, each message cut to a few hundred characters, and how many more
    /// there are: what a log line or a start-up failure holds, whatever the file (a file of
    /// 100,000 invalid jobs, an unknown field with a name of megabytes).
    pub fn summary(&self, shown: usize) -> String {
        let mut text = String::new();
        for (i, error) in self.0.iter().take(shown).enumerate() {
            if i > 0 {
                text.push('\n');
            }
            let line = error.to_string();
            match line.char_indices().nth(LOGGED_MESSAGE_CHARS) {
                Some((cut, _)) => {
                    text.push_str(&line[..cut]);
                    text.push_str("...");
                }
                None => text.push_str(&line),
            }
        }
        if let Some(more) = self.0.len().checked_sub(shown).filter(|more| *more > 0) {
            let file = self.0.first().map_or("FILE", |error| error.file.as_str());
            text.push_str(&format!("\n... and {more} more errors (`tenure validate {file}` lists them all)"));
        }
        text
    }
}

/// Read and validate the job file at `path`.
pub fn load(path: &Path) -> Result<JobSet, ConfigErrors> {
    let file = path.display().to_string();
    let whole_file = |message: String| {
        ConfigErrors(vec![ConfigError { file: file.clone(), line: 1, column: 1, job: None, message }])
    };
    let too_large =
        |size: u64| whole_file(format!("the job file is {size} bytes; at most {MAX_FILE_BYTES} (16 MiB) are accepted"));
    let file_handle = std::fs::File::open(path).map_err(|e| whole_file(format!("cannot read the job file: {e}")))?;
    let size = file_handle.metadata().map_err(|e| whole_file(format!("cannot read the job file: {e}")))?.len();
    if size > MAX_FILE_BYTES {
        return Err(too_large(size));
    }
    // Never more than the limit, even from a file that grows while it is read.
    let mut bytes = Vec::with_capacity(size as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file_handle, MAX_FILE_BYTES + 1), &mut bytes)
        .map_err(|e| whole_file(format!("cannot read the job file: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let valid = std::str::from_utf8(valid).unwrap_or_default();
            let line = valid.matches('\n').count() + 1;
            let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Err(ConfigErrors(vec![ConfigError {
                file,
                line: line as u32,
                column: column as u32,
                job: None,
                message: "the job file is not valid UTF-8".into(),
            }]));
        }
    };
    parse(&text, &file)
}

/// Validate the text of a job file; `file` names it in errors. Users and groups are looked up
/// on this machine, and `user:` is accepted only when this process runs as root.
pub fn parse(text: &str, file: &str) -> Result<JobSet, ConfigErrors> {
    parse_as(text, file, Runner::current())
}

/// [`parse`] as if `runner` loaded the file.
pub fn parse_as(text: &str, file: &str, runner: Runner) -> Result<JobSet, ConfigErrors> {
    let mut validator = Validator::new(file, runner);
    if text.len() as u64 > MAX_FILE_BYTES {
        validator.error_at(
            1,
            1,
            None,
            format!("the job file is {} bytes; at most {MAX_FILE_BYTES} (16 MiB) are accepted", text.len()),
        );
        return Err(ConfigErrors(validator.into_errors()));
    }
    let root = match read_nodes(text) {
        Ok(root) => root,
        Err((line, column, message)) => {
            validator.error_at(line, column, None, message);
            return Err(ConfigErrors(validator.into_errors()));
        }
    };
    let jobs = match root {
        Some(root) => validator.job_file(&root),
        None => {
            validator.error_at(1, 1, None, "the job file is empty: expected a mapping with a `jobs:` list".into());
            Vec::new()
        }
    };
    let mut warnings = std::mem::take(&mut validator.warnings);
    warnings.sort_by_key(|w| (w.line, w.column));
    let errors = validator.into_errors();
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let index = jobs.iter().enumerate().map(|(i, job)| (job.name.clone(), i)).collect();
    let hash = hex::encode(Sha256::digest(text.as_bytes()))[..12].to_owned();
    Ok(JobSet { jobs, index, hash, warnings })
}

/// The YAML of a job file as a node tree (`None` for an empty file), or the one error that
/// stopped serde-saphyr, located.
fn read_nodes(text: &str) -> Result<Option<Spanned<Node>>, (u32, u32, String)> {
    const MAX_DEPTH: usize = 16;
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            // The tree costs about 100 bytes a node: these bound a reload's memory, whatever the
            // file (a flood of tiny nodes, an alias bomb expanding to billions). 100,000 jobs of
            // five fields each take 1.1 million nodes.
            max_nodes: MAX_NODES,
            max_events: 2 * MAX_NODES + 10_000,
            max_total_scalar_bytes: MAX_FILE_BYTES as usize,
            // A job file nests six deep at most (jobs, job, http, headers). Each level costs the
            // deserializer a deep stack frame: about 50 levels overflow a 2 MiB thread stack
            // (tokio's workers, where reloads parse) in a debug build.
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
        },
    };
    serde_saphyr::from_str_with_options(text, options).map_err(|error| {
        let (line, column) = error.location().map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
        let message = error.without_snippet().to_string();
        let message = message.lines().next().unwrap_or("invalid YAML").to_owned();
        let message = if message.contains("recursion limit") || message.contains("depth limit") {
            format!("nested deeper than {MAX_DEPTH} levels; a job file needs at most 6")
        } else {
            message
        };
        (line as u32, column as u32, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error `parse` reports for `text` (as `jobs.yaml`), displayed.
    pub(crate) fn errors(text: &str) -> Vec<String> {
        match parse(text, "jobs.yaml") {
            Ok(_) => panic!("expected errors in:\n{text}"),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_issue_example_parses_with_defaults_applied() {
        let text = r#"
defaults:
  timezone: UTC
  timeout: 10m
  concurrency: forbid
  catch_up: latest
  starting_deadline: 5m
  retries: { max: 0, backoff: 10s }
jobs:
  - name: nightly-report
    schedule: "30 2 * * *"
    timezone: Europe/Berlin
    command: ["/usr/local/bin/report", "--nightly"]
    env: { REPORT_DIR: /srv/reports }
    workdir: /srv/app
  - name: cleanup
    schedule: "*/15 * * * *"
    shell: "find /tmp/app -mtime +1 -delete"
  - name: ping-billing
    schedule: "@every 30s"
    http: { url: "http://127.0.0.1:9000/tick", method: POST, headers: {}, body: "", expect_status: [200, 204] }
    paused: true
"#;
        let set = parse(text, "jobs.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.jobs().len(), 3);
        let report = set.get("nightly-report").unwrap();
        assert_eq!(report.schedule.timezone(), chrono_tz::Europe::Berlin);
        assert_eq!(report.target, Target::Command { argv: vec!["/usr/local/bin/report".into(), "--nightly".into()] });
        assert_eq!(report.env.get("REPORT_DIR").map(String::as_str), Some("/srv/reports"));
        assert_eq!(report.workdir.as_deref(), Some(Path::new("/srv/app")));
        assert_eq!(report.timeout, Duration::from_secs(600));
        assert_eq!(report.concurrency, Concurrency::Forbid);
        assert_eq!(report.catch_up, CatchUp::Latest);
        let ping = set.get("ping-billing").unwrap();
        assert!(ping.paused);
        let Target::Http(http) = &ping.target else { panic!("http target") };
        assert_eq!(http.method, "POST");
        assert_eq!(http.expect_status, vec![200, 204]);
        assert_eq!(set.hash().len(), 12);
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_place() {
        let text = "jobs:
  - name: first
    schedule: \"0 0 30 2 *\"
    shell: 'true'
  - name: second
    schedule: \"* * * * *\"
    timezone: Mars/Olympus
    shell: 'true'
    tiemout: 5m
  - name: Bad Name
    schedule: \"@daily\"
    command: []
  - name: first
    schedule: \"@every 10s\"
    shell: 'true'
    http: { url: 'http://x' }
";
        let got = errors(text);
        let want = [
            "jobs.yaml:3:15: job `first`: `schedule`: schedule `0 0 30 2 *` can never fire",
            "jobs.yaml:7:15: job `second`: `timezone`: unknown time zone `Mars/Olympus`",
            "jobs.yaml:9:5: job `second`: unknown field `tiemout` in a job (did you mean `timeout`?)",
            "jobs.yaml:10:11: invalid job name `Bad Name`",
            "jobs.yaml:12:14: job `Bad Name`: `command`: expected an argv list",
            "jobs.yaml:13:11: job `first`: duplicate job name `first`: already defined at jobs.yaml:2:11",
            "jobs.yaml:16:5: job `first`: expected exactly one of `command`, `shell` or `http`, found several",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (got, want) in got.iter().zip(want) {
            assert!(got.starts_with(want), "got  {got}\nwant {want}…");
        }
    }

    #[test]
    fn yaml_errors_are_located() {
        let got = errors("jobs:\n  - name: a\n    schedule: '@daily'\n    schedule: '@hourly'\n    shell: 'true'\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("jobs.yaml:4:"), "{got:?}");
        let got = errors("jobs:\n  - name: [unclosed\n");
        assert!(got[0].starts_with("jobs.yaml:"), "{got:?}");
        assert!(errors("")[0].contains("empty"));
        assert!(errors("defaults: {}\n")[0].contains("missing `jobs:`"));
        assert!(errors("jobs: 3\n")[0].contains("expected a list of jobs"));
    }

    #[test]
    fn a_summary_holds_the_first_errors_cut_short_and_counts_the_rest() {
        let mut text = String::from("jobs:\n");
        for i in 0..1_000 {
            text.push_str(&format!("  - {{ name: bad-{i}-{}, schedule: never, shell: 'true' }}\n", "K".repeat(5_000)));
        }
        let errors = parse(&text, "jobs.yaml").unwrap_err();
        assert_eq!(errors.0.len(), 2_000);
        let summary = errors.summary(LOGGED_ERRORS);
        assert_eq!(summary.lines().count(), LOGGED_ERRORS + 1, "{summary}");
        assert!(summary.lines().all(|line| line.len() < 400), "{summary}");
        assert!(summary.starts_with("jobs.yaml:2:"), "{summary}");
        assert!(
            summary.ends_with("... and 1980 more errors (`tenure validate jobs.yaml` lists them all)"),
            "{summary}"
        );
        assert_eq!(errors.summary(5_000).lines().count(), 2_000, "nothing more to count");
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.yaml");
        let mut text = b"jobs: []\n".to_vec();
        text.resize(MAX_FILE_BYTES as usize + 1, b'\n');
        std::fs::write(&path, &text).unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.ends_with("the job file is 16777217 bytes; at most 16777216 (16 MiB) are accepted"), "{error}");
        text.truncate(MAX_FILE_BYTES as usize);
        std::fs::write(&path, &text).unwrap();
        assert!(load(&path).is_ok());
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        text.push_str("jobs: []\n");
        assert_eq!(errors(&text).len(), 1);
    }

    #[test]
    fn a_hundred_thousand_jobs_validate_and_one_more_is_refused() {
        let mut text = String::from("jobs:\n");
        for i in 0..MAX_JOBS {
            text.push_str(&format!("  - {{ name: job-{i}, schedule: '*/5 * * * *', shell: 'true' }}\n"));
        }
        assert_eq!(parse(&text, "big.yaml").map(|s| s.jobs().len()).unwrap_or_else(|e| panic!("{}", e.0[0])), MAX_JOBS);
        text.push_str("  - { name: one-more, schedule: '@daily', shell: 'true' }\n");
        assert!(errors(&text)[0].contains("at most 100000"));
    }

    #[test]
    fn a_step_that_does_not_divide_its_field_warns_located_and_the_file_still_loads() {
        let text = "jobs:\n  - name: digest\n    schedule: \"*/45 * * * *\"\n    shell: 'true'\n\
                    \x20 - name: several\n    schedule: ['0 0 * * *', 0 */5 * * *]\n    shell: 'true'\n\
                    \x20 - name: fine\n    schedule: '*/15 5-59/7 */6 * * *'\n    shell: 'true'\n";
        let jobs = parse(text, "jobs.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(jobs.jobs().len(), 3, "warnings never stop a job from loading");
        let warnings: Vec<String> = jobs.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        // The column of the term itself: inside the quotes, inside the flow list.
        assert!(warnings[0].starts_with("jobs.yaml:3:16: job `digest`: `*/45` in the minute field"), "{}", warnings[0]);
        assert!(warnings[0].contains("fires at minutes 0 and 45 of every hour"), "{}", warnings[0]);
        assert!(warnings[0].contains("45 minutes apart, then 15"), "{}", warnings[0]);
        assert!(warnings[0].contains("`@every 45m`"), "{}", warnings[0]);
        assert!(warnings[1].starts_with("jobs.yaml:6:31: job `several`: `*/5` in the hour field"), "{}", warnings[1]);
        assert!(warnings[1].contains("hours 0, 5, 10, 15 and 20"), "{}", warnings[1]);
        assert!(warnings[1].contains("`@every 5h`"), "{}", warnings[1]);
    }
}

#[cfg(test)]
mod after_tests {
    use super::*;

    #[test]
    fn after_names_the_awaited_jobs_with_the_outcome_that_releases_and_a_schedule_is_optional() {
        let text = "jobs:\n  - name: extract\n    schedule: '* * * * * *'\n    shell: 'true'\n\
                    \x20 - name: load\n    schedule: '@daily'\n    shell: 'true'\n\
                    \x20 - name: transform\n    after: [extract]\n    shell: 'true'\n\
                    \x20 - name: report\n    after:\n      - transform\n      - { job: load, on: failure }\n      - { job: extract, on: always }\n    within: 30s\n    shell: 'true'\n";
        let set = parse(text, "jobs.yaml").unwrap_or_else(|e| panic!("{e}"));
        let transform = set.get("transform").unwrap();
        assert!(!transform.schedule.fires(), "an `after` job without a schedule never fires by itself");
        assert_eq!(transform.after.len(), 1);
        assert_eq!((transform.after[0].job.as_str(), transform.after[0].on), ("extract", AfterOn::Success));
        assert_eq!(transform.wait_bound(), transform.starting_deadline);
        let report = set.get("report").unwrap();
        let after: Vec<(&str, AfterOn)> = report.after.iter().map(|up| (up.job.as_str(), up.on)).collect();
        assert_eq!(after, [("transform", AfterOn::Success), ("load", AfterOn::Failure), ("extract", AfterOn::Always)]);
        assert_eq!(report.after[1].at, (14, 9));
        assert_eq!(report.wait_bound(), Duration::from_secs(30));
        let dependents: Vec<&str> = set.dependents("extract").iter().map(|job| job.name.as_str()).collect();
        assert_eq!(dependents, ["transform", "report"]);
    }

    #[test]
    fn an_unknown_awaited_job_and_a_cycle_are_refused_where_they_are_written() {
        let text = "jobs:\n  - name: a\n    after: [c]\n    shell: 'true'\n\
                    \x20 - name: b\n    after: [a]\n    shell: 'true'\n\
                    \x20 - name: c\n    after: [b, nowhere]\n    shell: 'true'\n\
                    \x20 - name: d\n    shell: 'true'\n\
                    \x20 - name: e\n    after: [{ job: a, on: sometimes }]\n    shell: 'true'\n";
        let got = super::tests::errors(text);
        let want = [
            "jobs.yaml:6:13: job `b`: `after`: a cycle: b waits for a waits for c waits for b; a job may not wait for itself",
            "jobs.yaml:9:16: job `c`: `after`: there is no job `nowhere` in the file",
            "jobs.yaml:11:5: job `d`: missing `schedule`",
            "jobs.yaml:14:27: job `e`: `after.on`: `sometimes` is not one of success, failure, always",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (got, want) in got.iter().zip(want) {
            assert!(got.starts_with(want), "got  {got}\nwant {want}…");
        }
        let itself = super::tests::errors("jobs:\n  - name: a\n    after: a\n    shell: 'true'\n");
        assert_eq!(itself, ["jobs.yaml:3:12: job `a`: `after`: a job may not wait for itself"]);
    }
}

#[cfg(test)]
mod depth_tests {
    /// Deep nesting is refused by the parser's budget before it can exhaust a 2 MiB stack (the
    /// size of tokio's worker threads and of this test's thread).
    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        for depth in [17, 64, 1_000, 50_000] {
            for (open, close) in [("{a: ", "}"), ("[", "]")] {
                let text = format!("jobs:\n  - name: x\n    env: {}{}", open.repeat(depth), close.repeat(depth));
                let errors = super::parse(&text, "deep.yaml").unwrap_err();
                assert!(errors.to_string().contains("depth") || errors.to_string().contains("nest"), "{errors}");
            }
        }
        let block: String = (0..200).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect();
        assert!(super::parse(&block, "deep.yaml").is_err());
    }
}
