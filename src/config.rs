//! The job file: parse and validate YAML into a [`JobSet`]. Pure apart from [`load`] reading the
//! file.
//!
//! Parsing runs in two steps so that *every* error in a file is reported at once, each located:
//! serde-saphyr reads the YAML into a tree of [`Spanned`] nodes (it rejects syntax errors,
//! duplicate keys and alias bombs, with a location), then this module walks the tree, checks each
//! field and collects one [`ConfigError`] per problem.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};
use sha2::{Digest, Sha256};

use crate::schedule::{self, Schedule};

/// A job file larger than this is refused before parsing.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
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
}

impl JobSet {
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    pub fn get(&self, name: &str) -> Option<&Job> {
        self.index.get(&JobName(name.to_owned())).map(|&i| &self.jobs[i])
    }

    /// The first 12 hex digits of the SHA-256 of the file's bytes: which file a replica runs.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

impl JobSet {
    /// Refuse jobs whose `starting_deadline` is longer than the ledger keeps its rows
    /// (`--retain`): a slot that late could be decided again after its row was pruned.
    pub fn check_retention(&self, file: &str, retain: Duration) -> Result<(), ConfigErrors> {
        let errors: Vec<ConfigError> = self
            .jobs()
            .iter()
            .filter(|job| job.starting_deadline > retain)
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
    pub paused: bool,
    pub env: BTreeMap<String, String>,
    /// Variables of tenure's own environment passed on to the job, beyond the few every job
    /// inherits (see `executor`). Never a `TENURE_*` name.
    pub inherit_env: Vec<String>,
    pub workdir: Option<PathBuf>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// Statuses that count as success; empty means any 2xx.
    pub expect_status: Vec<u16>,
}

/// What happens when a slot comes due while an earlier run of the job still goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    Allow,
    Forbid,
    Replace,
}

impl Concurrency {
    pub fn as_str(self) -> &'static str {
        match self {
            Concurrency::Allow => "allow",
            Concurrency::Forbid => "forbid",
            Concurrency::Replace => "replace",
        }
    }
}

/// What happens to slots that came due while no leader fired them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    None,
    Latest,
    All,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::Latest => "latest",
            CatchUp::All => "all",
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

/// Read and validate the job file at `path`.
pub fn load(path: &Path) -> Result<JobSet, ConfigErrors> {
    let file = path.display().to_string();
    let whole_file = |message: String| {
        ConfigErrors(vec![ConfigError { file: file.clone(), line: 1, column: 1, job: None, message }])
    };
    let size = std::fs::metadata(path).map_err(|e| whole_file(format!("cannot read the job file: {e}")))?.len();
    if size > MAX_FILE_BYTES {
        return Err(whole_file(format!(
            "the job file is {size} bytes; at most {MAX_FILE_BYTES} (64 MiB) are accepted"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| whole_file(format!("cannot read the job file: {e}")))?;
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

/// Validate the text of a job file; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<JobSet, ConfigErrors> {
    let mut ctx = Ctx { file, errors: Vec::new() };
    if text.len() as u64 > MAX_FILE_BYTES {
        ctx.error_at(
            1,
            1,
            None,
            format!("the job file is {} bytes; at most {MAX_FILE_BYTES} (64 MiB) are accepted", text.len()),
        );
        return Err(ConfigErrors(ctx.errors));
    }
    const MAX_DEPTH: usize = 16;
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_nodes: 20 * MAX_JOBS + 1_000,
            max_events: 40 * MAX_JOBS + 10_000,
            // A job file nests six deep at most (jobs, job, http, headers). Each level costs the
            // deserializer a deep stack frame: about 50 levels overflow a 2 MiB thread stack
            // (tokio's workers, where reloads parse) in a debug build.
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
        },
    };
    let root: Option<Spanned<Node>> = match serde_saphyr::from_str_with_options(text, options) {
        Ok(root) => root,
        Err(error) => {
            let (line, column) = error.location().map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
            let message = error.without_snippet().to_string();
            let message = message.lines().next().unwrap_or("invalid YAML").to_owned();
            let message = if message.contains("recursion limit") || message.contains("depth limit") {
                format!("nested deeper than {MAX_DEPTH} levels; a job file needs at most 6")
            } else {
                message
            };
            ctx.error_at(line as u32, column as u32, None, message);
            return Err(ConfigErrors(ctx.errors));
        }
    };
    let jobs = match root {
        Some(root) => ctx.file_(&root),
        None => {
            ctx.error_at(1, 1, None, "the job file is empty: expected a mapping with a `jobs:` list".into());
            Vec::new()
        }
    };
    if !ctx.errors.is_empty() {
        ctx.errors.sort_by_key(|e| (e.line, e.column));
        return Err(ConfigErrors(ctx.errors));
    }
    let index = jobs.iter().enumerate().map(|(i, job)| (job.name.clone(), i)).collect();
    let hash = hex::encode(Sha256::digest(text.as_bytes()))[..12].to_owned();
    Ok(JobSet { jobs, index, hash })
}

/// A YAML node with its location, as read by serde-saphyr.
#[derive(Debug, Clone)]
enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float,
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Null => "nothing",
            Node::Bool(_) => "a boolean",
            Node::Int(_) | Node::Float => "a number",
            Node::Str(_) => "a string",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Int(v.into()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
                Ok(i128::try_from(v).map_or(Node::Float, Node::Int))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                {
                    let _ = v;
                    Ok(Node::Float)
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    entries.push((key, map.next_value::<Spanned<Node>>()?));
                }
                Ok(Node::Map(entries))
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// The policies `defaults:` sets and each job may override.
#[derive(Debug, Clone)]
struct Policies {
    timezone: Tz,
    timeout: Duration,
    concurrency: Concurrency,
    catch_up: CatchUp,
    starting_deadline: Duration,
    /// Where `starting_deadline` was set (line, column), if it was.
    starting_deadline_at: Option<(u32, u32)>,
    retries: Retries,
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
        }
    }
}

const POLICY_KEYS: &[&str] = &["timezone", "timeout", "concurrency", "catch_up", "starting_deadline", "retries"];
const JOB_KEYS: &[&str] = &[
    "name",
    "schedule",
    "command",
    "shell",
    "http",
    "env",
    "inherit_env",
    "workdir",
    "paused",
    "timezone",
    "timeout",
    "concurrency",
    "catch_up",
    "starting_deadline",
    "retries",
];
const HTTP_KEYS: &[&str] = &["url", "method", "headers", "body", "expect_status"];
const RETRY_KEYS: &[&str] = &["max", "backoff"];
const MAX_RETRIES: i128 = 100;

struct Ctx<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn error_at(&mut self, line: u32, column: u32, job: Option<&str>, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            job: job.map(str::to_owned),
            message,
        });
    }

    fn error(&mut self, at: &Location, job: Option<&str>, message: String) {
        self.error_at(at.line().max(1) as u32, at.column().max(1) as u32, job, message);
    }

    fn place(&self, at: &Location) -> String {
        format!("{}:{}:{}", self.file, at.line(), at.column())
    }

    /// The entries of a mapping; `None` (reported) if `node` is not a mapping.
    fn entries<'n>(
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
    fn mapping<'n>(
        &mut self,
        node: &'n Spanned<Node>,
        job: Option<&str>,
        what: &str,
        known: &[&str],
    ) -> Option<&'n [(Spanned<String>, Spanned<Node>)]> {
        let entries = self.entries(node, job, what)?;
        for (key, _) in entries {
            if !known.contains(&key.value.as_str()) {
                let hint = strsim_hint(&key.value, known);
                self.error(
                    &key.referenced,
                    job,
                    format!("unknown field `{}` in {what}{hint}; expected one of: {}", key.value, known.join(", ")),
                );
            }
        }
        Some(entries)
    }

    fn string<'n>(
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

    fn duration(&mut self, node: &Spanned<Node>, job: Option<&str>, field: &str) -> Option<Duration> {
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

    fn choice<T: Copy>(
        &mut self,
        node: &Spanned<Node>,
        job: Option<&str>,
        field: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let expected = format!("one of {}", names.join(", "));
        let text = self.string(node, job, field, &expected)?;
        match options.iter().find(|(n, _)| *n == text) {
            Some((_, v)) => Some(*v),
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

    /// Apply the policy fields present in `entries` over `base`. Returns whether all were valid.
    fn policies(
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
                        let at = &value.referenced;
                        base.starting_deadline_at = Some((at.line().max(1) as u32, at.column().max(1) as u32));
                    }
                }
                "concurrency" => {
                    let options = [
                        ("allow", Concurrency::Allow),
                        ("forbid", Concurrency::Forbid),
                        ("replace", Concurrency::Replace),
                    ];
                    if let Some(c) = self.choice(value, job, "concurrency", &options) {
                        base.concurrency = c;
                    }
                }
                "catch_up" => {
                    let options = [("none", CatchUp::None), ("latest", CatchUp::Latest), ("all", CatchUp::All)];
                    if let Some(c) = self.choice(value, job, "catch_up", &options) {
                        base.catch_up = c;
                    }
                }
                "retries" => {
                    let Some(fields) = self.mapping(value, job, "`retries`", RETRY_KEYS) else {
                        continue;
                    };
                    for (k, v) in fields {
                        match (k.value.as_str(), &v.value) {
                            ("max", Node::Int(n)) if (0..=MAX_RETRIES).contains(n) => base.retries.max = *n as u32,
                            ("max", other) => {
                                let found = match other {
                                    Node::Int(n) => n.to_string(),
                                    other => other.kind().to_owned(),
                                };
                                self.error(
                                    &v.referenced,
                                    job,
                                    format!(
                                        "`retries.max`: expected a whole number from 0 to {MAX_RETRIES}, found {found}"
                                    ),
                                );
                            }
                            ("backoff", _) => {
                                if let Some(d) = self.duration(v, job, "retries.backoff") {
                                    base.retries.backoff = d;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        self.errors.len() == before
    }

    fn file_(&mut self, root: &Spanned<Node>) -> Vec<Job> {
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
                self.error(
                    &jobs_node.referenced,
                    None,
                    format!("`jobs`: expected a list of jobs, found {}", other.kind()),
                );
                return Vec::new();
            }
        };
        if items.len() > MAX_JOBS {
            self.error(
                &jobs_key.referenced,
                None,
                format!("{} jobs; at most {MAX_JOBS} are accepted in one file", items.len()),
            );
            return Vec::new();
        }
        let mut seen: HashMap<String, Location> = HashMap::with_capacity(items.len());
        let mut jobs = Vec::with_capacity(items.len());
        for item in items {
            if let Some(job) = self.job(item, &defaults, &mut seen) {
                jobs.push(job);
            }
        }
        jobs
    }

    fn job(&mut self, node: &Spanned<Node>, defaults: &Policies, seen: &mut HashMap<String, Location>) -> Option<Job> {
        let before = self.errors.len();
        // The name first, so that every other error can say which job it is about.
        let name_node = match &node.value {
            Node::Map(entries) => entries.iter().find(|(k, _)| k.value == "name").map(|(_, v)| v),
            _ => None,
        };
        let label = match name_node.map(|n| &n.value) {
            Some(Node::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let job = label.as_deref();
        let entries = self.mapping(node, job, "a job", JOB_KEYS)?;
        let get = |key: &str| entries.iter().find(|(k, _)| k.value == key).map(|(_, v)| v);

        let name = match name_node {
            None => {
                self.error(&node.referenced, None, "missing `name`: every job needs a unique name".into());
                None
            }
            Some(n) => match self.string(n, None, "name", "a job name").map(|text| (text, JobName::parse(text))) {
                None => None,
                Some((text, parsed)) => match parsed {
                    Ok(name) => {
                        if let Some(first) = seen.get(text) {
                            let first = self.place(first);
                            self.error(
                                &n.referenced,
                                job,
                                format!("duplicate job name `{text}`: already defined at {first}"),
                            );
                        } else {
                            seen.insert(text.to_owned(), n.referenced);
                        }
                        Some(name)
                    }
                    Err(e) => {
                        self.error(&n.referenced, None, e);
                        None
                    }
                },
            },
        };

        let mut policies = defaults.clone();
        let policies_ok = self.policies(entries, job, &mut policies);

        let schedule = match get("schedule") {
            None => {
                self.error(&node.referenced, job, "missing `schedule`: expected a crontab line such as \"30 2 * * *\", a macro such as @daily, or \"@every 30s\"".into());
                None
            }
            Some(s) => {
                // With an invalid zone (already reported) the expression is still checked, in UTC.
                match self
                    .string(s, job, "schedule", "a crontab line, a macro or \"@every 30s\"")
                    .map(|text| Schedule::parse(text, policies.timezone))
                {
                    None => None,
                    Some(Ok(schedule)) => Some(schedule),
                    Some(Err(e)) => {
                        self.error(&s.referenced, job, format!("`schedule`: {e}"));
                        None
                    }
                }
            }
        };

        let targets: Vec<&(Spanned<String>, Spanned<Node>)> =
            entries.iter().filter(|(k, _)| matches!(k.value.as_str(), "command" | "shell" | "http")).collect();
        let target = match targets.as_slice() {
            [] => {
                self.error(
                    &node.referenced,
                    job,
                    "nothing to run: expected exactly one of `command`, `shell` or `http`".into(),
                );
                None
            }
            [(key, value)] => self.target(key.value.as_str(), value, job),
            [_, (second, _), ..] => {
                self.error(
                    &second.referenced,
                    job,
                    "expected exactly one of `command`, `shell` or `http`, found several".into(),
                );
                None
            }
        };

        let mut env = BTreeMap::new();
        if let Some(e) = get("env")
            && let Some(vars) = self.entries(e, job, "`env`")
        {
            for (k, v) in vars {
                if !is_variable_name(&k.value) {
                    self.error(
                        &k.referenced,
                        job,
                        format!(
                            "`env`: `{}` is not a variable name (letters, digits and `_`, not starting with a digit)",
                            k.value
                        ),
                    );
                } else if k.value.starts_with("TENURE_") {
                    self.error(
                        &k.referenced,
                        job,
                        format!("`env`: `{}` is reserved: tenure sets the TENURE_* variables itself", k.value),
                    );
                }
                match &v.value {
                    Node::Str(s) => _ = env.insert(k.value.clone(), s.clone()),
                    Node::Int(n) => _ = env.insert(k.value.clone(), n.to_string()),
                    Node::Bool(b) => _ = env.insert(k.value.clone(), b.to_string()),
                    other => self.error(
                        &v.referenced,
                        job,
                        format!("`env.{}`: expected a string, found {}", k.value, other.kind()),
                    ),
                }
            }
        }

        let inherit_env = match entries.iter().find(|(k, _)| k.value == "inherit_env") {
            None => Vec::new(),
            Some((key, node)) => {
                if matches!(target, Some(Target::Http(_))) {
                    self.error(
                        &key.referenced,
                        job,
                        "`inherit_env` applies to `command` and `shell` jobs; an HTTP job gets no environment".into(),
                    );
                }
                self.inherit_env(node, job)
            }
        };

        let workdir =
            get("workdir").and_then(|w| self.string(w, job, "workdir", "a directory path")).map(PathBuf::from);
        let paused = match get("paused").map(|p| (p, &p.value)) {
            None => false,
            Some((_, Node::Bool(b))) => *b,
            Some((p, other)) => {
                self.error(&p.referenced, job, format!("`paused`: expected true or false, found {}", other.kind()));
                false
            }
        };

        if self.errors.len() != before || !policies_ok {
            return None;
        }
        Some(Job {
            name: name?,
            schedule: schedule?,
            target: target?,
            timeout: policies.timeout,
            concurrency: policies.concurrency,
            catch_up: policies.catch_up,
            starting_deadline: policies.starting_deadline,
            starting_deadline_at: policies
                .starting_deadline_at
                .unwrap_or((node.referenced.line().max(1) as u32, node.referenced.column().max(1) as u32)),
            retries: policies.retries,
            paused,
            env,
            inherit_env,
            workdir,
        })
    }

    /// `inherit_env`: a list of variable names to pass on from tenure's environment.
    fn inherit_env(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Vec<String> {
        let Node::Seq(items) = &node.value else {
            self.error(
                &node.referenced,
                job,
                format!("`inherit_env`: expected a list of variable names, found {}", node.value.kind()),
            );
            return Vec::new();
        };
        let mut names = Vec::with_capacity(items.len());
        for item in items {
            let Some(name) = self.string(item, job, "inherit_env", "a variable name") else {
                continue;
            };
            if !is_variable_name(name) {
                self.error(
                    &item.referenced,
                    job,
                    format!(
                        "`inherit_env`: `{name}` is not a variable name (letters, digits and `_`, not starting with a digit)"
                    ),
                );
            } else if name.starts_with("TENURE_") {
                self.error(
                    &item.referenced,
                    job,
                    format!(
                        "`inherit_env`: `{name}` is tenure's own setting or a per-run value; it never reaches a job"
                    ),
                );
            } else if !names.iter().any(|known| known == name) {
                names.push(name.to_owned());
            }
        }
        names
    }

    fn target(&mut self, kind: &str, node: &Spanned<Node>, job: Option<&str>) -> Option<Target> {
        match kind {
            "command" => {
                let expected = "an argv list such as [\"/usr/local/bin/report\", \"--nightly\"]";
                let Node::Seq(items) = &node.value else {
                    self.error(
                        &node.referenced,
                        job,
                        format!(
                            "`command`: expected {expected}, found {}; use `shell` for a shell line",
                            node.value.kind()
                        ),
                    );
                    return None;
                };
                let mut argv = Vec::with_capacity(items.len());
                for item in items {
                    match &item.value {
                        Node::Str(s) => argv.push(s.clone()),
                        Node::Int(n) => argv.push(n.to_string()),
                        other => self.error(
                            &item.referenced,
                            job,
                            format!("`command`: expected a string argument, found {}", other.kind()),
                        ),
                    }
                }
                if argv.first().is_none_or(|program| program.is_empty()) {
                    self.error(
                        &node.referenced,
                        job,
                        format!("`command`: expected {expected}, with the program first"),
                    );
                    return None;
                }
                (argv.len() == items.len()).then_some(Target::Command { argv })
            }
            "shell" => {
                let script = self.string(node, job, "shell", "a shell script")?;
                if script.trim().is_empty() {
                    self.error(&node.referenced, job, "`shell`: the script is empty".into());
                    return None;
                }
                Some(Target::Shell { script: script.to_owned() })
            }
            _ => self.http(node, job).map(Target::Http),
        }
    }

    fn http(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Option<HttpTarget> {
        let before = self.errors.len();
        let fields = self.mapping(node, job, "`http`", HTTP_KEYS)?;
        let mut target = HttpTarget {
            url: String::new(),
            method: "GET".into(),
            headers: BTreeMap::new(),
            body: String::new(),
            expect_status: Vec::new(),
        };
        let mut has_url = false;
        for (k, v) in fields {
            match k.value.as_str() {
                "url" => {
                    let Some(url) = self.string(v, job, "http.url", "an http:// or https:// URL") else {
                        continue;
                    };
                    match reqwest::Url::parse(url) {
                        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
                            target.url = url.to_owned();
                            has_url = true;
                        }
                        Ok(_) => self.error(
                            &v.referenced,
                            job,
                            format!("`http.url`: `{url}` is not an http:// or https:// URL"),
                        ),
                        Err(e) => self.error(&v.referenced, job, format!("`http.url`: `{url}` is not a URL ({e})")),
                    }
                }
                "method" => {
                    let Some(method) = self.string(v, job, "http.method", "an HTTP method such as GET or POST") else {
                        continue;
                    };
                    let method = method.to_ascii_uppercase();
                    if reqwest::Method::from_bytes(method.as_bytes()).is_err() {
                        self.error(&v.referenced, job, format!("`http.method`: `{method}` is not an HTTP method"));
                    }
                    target.method = method;
                }
                "headers" => {
                    let Some(headers) = self.entries(v, job, "`http.headers`") else {
                        continue;
                    };
                    for (name, value) in headers {
                        if reqwest::header::HeaderName::from_bytes(name.value.as_bytes()).is_err() {
                            self.error(
                                &name.referenced,
                                job,
                                format!("`http.headers`: `{}` is not a header name", name.value),
                            );
                        }
                        let Some(value) = self.string(value, job, "http.headers", "a header value") else {
                            continue;
                        };
                        if reqwest::header::HeaderValue::from_str(value).is_err() {
                            self.error(
                                &name.referenced,
                                job,
                                format!("`http.headers.{}`: the value is not a valid header value", name.value),
                            );
                        }
                        target.headers.insert(name.value.clone(), value.to_owned());
                    }
                }
                "body" => {
                    if let Some(body) = self.string(v, job, "http.body", "a string") {
                        target.body = body.to_owned();
                    }
                }
                "expect_status" => {
                    let items = match &v.value {
                        Node::Seq(items) => items.as_slice(),
                        Node::Int(_) => std::slice::from_ref(v),
                        other => {
                            self.error(&v.referenced, job, format!("`http.expect_status`: expected a list of HTTP statuses such as [200, 204], found {}", other.kind()));
                            continue;
                        }
                    };
                    for item in items {
                        match item.value {
                            Node::Int(n) if (100..=599).contains(&n) => target.expect_status.push(n as u16),
                            _ => self.error(
                                &item.referenced,
                                job,
                                "`http.expect_status`: expected an HTTP status from 100 to 599".into(),
                            ),
                        }
                    }
                }
                _ => {}
            }
        }
        if !has_url && self.errors.len() == before {
            self.error(&node.referenced, job, "missing `http.url`: expected an http:// or https:// URL".into());
        }
        (self.errors.len() == before).then_some(target)
    }
}

/// ", did you mean `x`?" when an unknown key is a near miss of a known one.
/// An environment variable name: letters, digits and `_`, not starting with a digit.
fn is_variable_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn strsim_hint(key: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (strsim::levenshtein(key, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
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
    fn wrong_types_and_values_are_explained() {
        let text = "defaults: { timeout: 10, concurrency: sometimes, retries: { max: -1, backoff: soon } }
jobs:
  - name: a
    schedule: 5
    http: { url: 'ftp://x', method: 'NOT A METHOD', expect_status: [700] }
    env: { 1X: y, TENURE_JOB: z }
    paused: 'no'
";
        let got = errors(text).join("\n");
        for needle in [
            "jobs.yaml:1:22: `timeout`: expected a duration such as 30s, 10m or 1h30m, found a number",
            "`concurrency`: `sometimes` is not one of allow, forbid, replace",
            "`retries.max`: expected a whole number from 0 to 100, found -1",
            "`retries.backoff`: `soon` is not a duration",
            "job `a`: `schedule`: expected a crontab line",
            "`http.url`: `ftp://x` is not an http:// or https:// URL",
            "`http.method`: `NOT A METHOD` is not an HTTP method",
            "`http.expect_status`: expected an HTTP status from 100 to 599",
            "`env`: `1X` is not a variable name",
            "`env`: `TENURE_JOB` is reserved",
            "`paused`: expected true or false, found a string",
        ] {
            assert!(got.contains(needle), "missing {needle:?} in:\n{got}");
        }
    }

    #[test]
    fn inherit_env_names_variables_and_never_tenures_own() {
        let text = "jobs:
  - name: a
    schedule: '@daily'
    shell: 'true'
    inherit_env: [AWS_REGION, TENURE_ADMIN_TOKEN, 9LIVES, AWS_REGION]
  - name: b
    schedule: '@daily'
    http: { url: 'http://x' }
    inherit_env: [AWS_REGION]
  - name: c
    schedule: '@daily'
    shell: 'true'
    inherit_env: AWS_REGION
";
        let got = errors(text);
        let want = [
            "jobs.yaml:5:31: job `a`: `inherit_env`: `TENURE_ADMIN_TOKEN` is tenure's own setting or a per-run value; it never reaches a job",
            "jobs.yaml:5:51: job `a`: `inherit_env`: `9LIVES` is not a variable name",
            "jobs.yaml:9:5: job `b`: `inherit_env` applies to `command` and `shell` jobs",
            "jobs.yaml:13:18: job `c`: `inherit_env`: expected a list of variable names, found a string",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (got, want) in got.iter().zip(want) {
            assert!(got.starts_with(want), "got  {got}\nwant {want}…");
        }
        let jobs = parse("jobs:\n  - name: a\n    schedule: '@daily'\n    shell: 'true'\n    inherit_env: [AWS_REGION, AWS_REGION, LC_ALL]\n", "jobs.yaml").unwrap();
        assert_eq!(jobs.jobs()[0].inherit_env, ["AWS_REGION", "LC_ALL"]);
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
}

#[cfg(test)]
mod schema_tests {
    use std::collections::BTreeSet;

    use super::{HTTP_KEYS, JOB_KEYS, POLICY_KEYS, RETRY_KEYS};

    fn keys(value: &serde_json::Value) -> BTreeSet<String> {
        value["properties"].as_object().expect("properties").keys().cloned().collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    /// `tenure schema` must accept exactly what the parser accepts, field for field.
    #[test]
    fn the_json_schema_names_exactly_the_fields_the_parser_accepts() {
        let schema: serde_json::Value = serde_json::from_str(crate::cli::JOB_FILE_SCHEMA).unwrap();
        let defs = &schema["$defs"];
        assert_eq!(keys(&schema), set(&["defaults", "jobs"]));
        assert_eq!(keys(&defs["policies"]), set(POLICY_KEYS));
        let job: BTreeSet<String> = keys(&defs["job"]).union(&keys(&defs["policies"])).cloned().collect();
        assert_eq!(job, set(JOB_KEYS));
        assert_eq!(keys(&defs["job"]["properties"]["http"]), set(HTTP_KEYS));
        assert_eq!(keys(&defs["policies"]["properties"]["retries"]), set(RETRY_KEYS));
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
