//! The fields only a job has (`name`, `schedule`, its target, `env`, `inherit_env`, `workdir`,
//! `paused`), one [`Validator`] function each; [`Validator::job`] puts them together with the
//! job's policies. The walk over the file and the shared readers are in `validate.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde_saphyr::{Location, Spanned};

use super::node::Node;
use super::validate::{HTTP_KEYS, JOB_KEYS, Policies, Validator, line_column};
use super::{HttpTarget, Job, JobName, RunOn, Sourced, Target, TargetKind, is_tag};
use crate::schedule::Schedule;

/// A mapping's entries: each key and its value, located.
type Entries = [(Spanned<String>, Spanned<Node>)];

impl Validator<'_> {
    /// One job: every field checked (each problem recorded), the job built only if all were
    /// valid. `first_seen` holds where each name was first defined, to report duplicates.
    pub(super) fn job(
        &mut self,
        node: &Spanned<Node>,
        defaults: &Policies,
        first_seen: &mut HashMap<String, Location>,
    ) -> Option<Job> {
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
        let entries = self.mapping(node, job, "a job", &JOB_KEYS)?;
        let get = |key: &str| entries.iter().find(|(k, _)| k.value == key).map(|(_, v)| v);

        let name = match name_node {
            None => {
                self.error(&node.referenced, None, "missing `name`: every job needs a unique name".into());
                None
            }
            Some(name_node) => self.job_name(name_node, job, first_seen),
        };
        let mut policies = defaults.clone();
        let policies_ok = self.policies(entries, job, &mut policies)
            && self.policy_bounds(&policies, job, line_column(&node.referenced));
        let schedule = self.schedule(node, get("schedule"), job, &policies);
        let target = self.target(node, entries, job);
        let env = get("env").map(|env| self.env(env, job)).unwrap_or_default();
        let inherit_env = self.inherit_env(entries, target.as_ref(), job);
        let workdir =
            get("workdir").and_then(|w| self.string(w, job, "workdir", "a directory path")).map(PathBuf::from);
        let paused = get("paused").is_some_and(|paused| self.paused(paused, job));
        let run_on = get("run_on").map(|run_on| self.run_on(run_on, job)).unwrap_or_default();

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
            starting_deadline_at: policies.starting_deadline_at.unwrap_or(line_column(&node.referenced)),
            retries: policies.retries,
            notify: policies.notify,
            jitter: policies.jitter,
            retain: policies.retain,
            paused,
            env,
            inherit_env,
            workdir,
            run_on,
        })
    }

    /// `run_on`: `leader` (the default), `any`, or `{ tags: [..] }` (at least one tag, each
    /// letters, digits, `-`, `_` or `.`). A wrong value is reported and taken as `leader`.
    fn run_on(&mut self, node: &Spanned<Node>, job: Option<&str>) -> RunOn {
        const EXPECTED: &str = "`leader`, `any` or `{ tags: [..] }`";
        match &node.value {
            Node::Str(word) if word == "leader" => RunOn::Leader,
            Node::Str(word) if word == "any" => RunOn::Any,
            Node::Map(_) => {
                let Some(entries) = self.mapping(node, job, "`run_on`", &["tags"]) else { return RunOn::Leader };
                let Some((key, tags)) = entries.iter().find(|(k, _)| k.value == "tags") else {
                    self.error(&node.referenced, job, format!("`run_on`: missing `tags`; expected {EXPECTED}"));
                    return RunOn::Leader;
                };
                let items = match &tags.value {
                    Node::Seq(items) if !items.is_empty() => items,
                    Node::Seq(_) => {
                        self.error(
                            &key.referenced,
                            job,
                            "`run_on.tags`: the list is empty; expected at least one tag".into(),
                        );
                        return RunOn::Leader;
                    }
                    other => {
                        let message = format!("`run_on.tags`: expected a list of tags, found {}", other.kind());
                        self.error(&tags.referenced, job, message);
                        return RunOn::Leader;
                    }
                };
                let mut wanted: Vec<String> = Vec::with_capacity(items.len());
                for item in items {
                    let Some(tag) = self.string(item, job, "run_on.tags", "a tag") else { continue };
                    if !is_tag(tag) {
                        let message =
                            format!("`run_on.tags`: `{tag}` is not a tag (letters, digits, `-`, `_` and `.`)");
                        self.error(&item.referenced, job, message);
                    } else if !wanted.iter().any(|known| known == tag) {
                        wanted.push(tag.to_owned());
                    }
                }
                RunOn::Tags(wanted)
            }
            Node::Str(word) => {
                self.error(&node.referenced, job, format!("`run_on`: `{word}` is not one of {EXPECTED}"));
                RunOn::Leader
            }
            other => {
                self.error(&node.referenced, job, format!("`run_on`: expected {EXPECTED}, found {}", other.kind()));
                RunOn::Leader
            }
        }
    }

    /// `name`: valid and not defined before in the file.
    fn job_name(
        &mut self,
        node: &Spanned<Node>,
        job: Option<&str>,
        first_seen: &mut HashMap<String, Location>,
    ) -> Option<JobName> {
        let text = self.string(node, None, "name", "a job name")?;
        match JobName::parse(text) {
            Ok(name) => {
                if let Some(first) = first_seen.get(text) {
                    let first = self.place(first);
                    let message = format!("duplicate job name `{text}`: already defined at {first}");
                    self.error(&node.referenced, job, message);
                } else {
                    first_seen.insert(text.to_owned(), node.referenced);
                }
                Some(name)
            }
            Err(e) => {
                self.error(&node.referenced, None, e);
                None
            }
        }
    }

    /// `schedule`, in the job's zone: one expression, or a list of them (merged: one cursor,
    /// one slot per instant). With an invalid zone (already reported) the expressions are still
    /// checked, in UTC.
    fn schedule(
        &mut self,
        job_node: &Spanned<Node>,
        node: Option<&Spanned<Node>>,
        job: Option<&str>,
        policies: &Policies,
    ) -> Option<Schedule> {
        let Some(node) = node else {
            self.error(&job_node.referenced, job, "missing `schedule`: expected a crontab line such as \"30 2 * * *\", a macro such as @daily, or \"@every 30s\" (or a list of them)".into());
            return None;
        };
        let items = match &node.value {
            Node::Seq(items) if items.is_empty() => {
                self.error(
                    &node.referenced,
                    job,
                    "`schedule`: the list is empty; expected at least one expression".into(),
                );
                return None;
            }
            Node::Seq(items) => items.as_slice(),
            _ => std::slice::from_ref(node),
        };
        let before = self.errors.len();
        let mut parts = Vec::with_capacity(items.len());
        for item in items {
            let expected = "a crontab line, a macro or \"@every 30s\" (or a list of them)";
            let Some(text) = self.string(item, job, "schedule", expected) else { continue };
            match Schedule::parse(text, policies.timezone) {
                Ok(schedule) => parts.push(schedule),
                Err(e) => self.error(&item.referenced, job, format!("`schedule`: {e}")),
            }
        }
        if self.errors.len() != before {
            return None;
        }
        Schedule::union(parts)
    }

    /// Exactly one of the target fields (`command`, `shell`, `http`), valid.
    fn target(&mut self, job_node: &Spanned<Node>, entries: &Entries, job: Option<&str>) -> Option<Target> {
        let targets: Vec<(TargetKind, &Spanned<String>, &Spanned<Node>)> = entries
            .iter()
            .filter_map(|(key, value)| {
                let (_, kind) = TargetKind::NAMES.iter().find(|(name, _)| *name == key.value)?;
                Some((*kind, key, value))
            })
            .collect();
        match targets.as_slice() {
            [] => {
                let message = format!("nothing to run: expected exactly one of {}", TargetKind::listed());
                self.error(&job_node.referenced, job, message);
                None
            }
            [(kind, _, value)] => match kind {
                TargetKind::Command => self.command(value, job),
                TargetKind::Shell => self.shell(value, job),
                TargetKind::Http => self.http(value, job).map(Target::Http),
            },
            [_, (_, second, _), ..] => {
                let message = format!("expected exactly one of {}, found several", TargetKind::listed());
                self.error(&second.referenced, job, message);
                None
            }
        }
    }

    /// `command`: an argv list, the program first; numbers are taken as their text.
    fn command(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Option<Target> {
        let expected = "an argv list such as [\"/usr/local/bin/report\", \"--nightly\"]";
        let Node::Seq(items) = &node.value else {
            let message =
                format!("`command`: expected {expected}, found {}; use `shell` for a shell line", node.value.kind());
            self.error(&node.referenced, job, message);
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
            self.error(&node.referenced, job, format!("`command`: expected {expected}, with the program first"));
            return None;
        }
        (argv.len() == items.len()).then_some(Target::Command { argv })
    }

    /// `shell`: a script for `/bin/sh -c`, not blank.
    fn shell(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Option<Target> {
        let script = self.string(node, job, "shell", "a shell script")?;
        if script.trim().is_empty() {
            self.error(&node.referenced, job, "`shell`: the script is empty".into());
            return None;
        }
        Some(Target::Shell { script: script.to_owned() })
    }

    /// `env`: variable names to strings (numbers and booleans taken as their text).
    fn env(&mut self, node: &Spanned<Node>, job: Option<&str>) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let Some(vars) = self.entries(node, job, "`env`") else {
            return env;
        };
        for (k, v) in vars {
            if !is_variable_name(&k.value) {
                let message = format!(
                    "`env`: `{}` is not a variable name (letters, digits and `_`, not starting with a digit)",
                    k.value
                );
                self.error(&k.referenced, job, message);
            } else if k.value.starts_with("TENURE_") {
                let message = format!("`env`: `{}` is reserved: tenure sets the TENURE_* variables itself", k.value);
                self.error(&k.referenced, job, message);
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
        env
    }

    /// `inherit_env`: a list of variable names to pass on from tenure's environment, for
    /// `command` and `shell` jobs only. Duplicates are dropped.
    fn inherit_env(&mut self, entries: &Entries, target: Option<&Target>, job: Option<&str>) -> Vec<String> {
        let Some((key, node)) = entries.iter().find(|(k, _)| k.value == "inherit_env") else {
            return Vec::new();
        };
        if matches!(target, Some(Target::Http(_))) {
            let message = "`inherit_env` applies to `command` and `shell` jobs; an HTTP job gets no environment";
            self.error(&key.referenced, job, message.into());
        }
        let Node::Seq(items) = &node.value else {
            let message = format!("`inherit_env`: expected a list of variable names, found {}", node.value.kind());
            self.error(&node.referenced, job, message);
            return Vec::new();
        };
        let mut names = Vec::with_capacity(items.len());
        for item in items {
            let Some(name) = self.string(item, job, "inherit_env", "a variable name") else {
                continue;
            };
            if !is_variable_name(name) {
                let message = format!(
                    "`inherit_env`: `{name}` is not a variable name (letters, digits and `_`, not starting with a digit)"
                );
                self.error(&item.referenced, job, message);
            } else if name.starts_with("TENURE_") {
                let message = format!(
                    "`inherit_env`: `{name}` is tenure's own setting or a per-run value; it never reaches a job"
                );
                self.error(&item.referenced, job, message);
            } else if !names.iter().any(|known| known == name) {
                names.push(name.to_owned());
            }
        }
        names
    }

    /// `paused`: true or false (a wrong value is reported and taken as false).
    fn paused(&mut self, node: &Spanned<Node>, job: Option<&str>) -> bool {
        match &node.value {
            Node::Bool(paused) => *paused,
            other => {
                self.error(&node.referenced, job, format!("`paused`: expected true or false, found {}", other.kind()));
                false
            }
        }
    }

    /// `http`: the request a run sends; `url` is required.
    fn http(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Option<HttpTarget> {
        let before = self.errors.len();
        let fields = self.mapping(node, job, "`http`", HTTP_KEYS)?;
        let mut url = None;
        let mut target = HttpTarget {
            url: Sourced::Inline(String::new()),
            method: "GET".into(),
            headers: BTreeMap::new(),
            body: String::new(),
            expect_status: Vec::new(),
        };
        for (k, v) in fields {
            match k.value.as_str() {
                "url" => url = self.url(v, job, "http.url"),
                "method" => target.method = self.http_method(v, job).unwrap_or(target.method),
                "headers" => self.headers(v, job, "http.headers", &mut target.headers),
                "body" => {
                    if let Some(body) = self.string(v, job, "http.body", "a string") {
                        target.body = body.to_owned();
                    }
                }
                "expect_status" => self.http_expect_status(v, job, &mut target.expect_status),
                _ => {}
            }
        }
        if url.is_none() && self.errors.len() == before {
            self.error(&node.referenced, job, "missing `http.url`: expected an http:// or https:// URL".into());
        }
        target.url = url?;
        (self.errors.len() == before).then_some(target)
    }

    /// `http.method`, upper-cased.
    fn http_method(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Option<String> {
        let method = self.string(node, job, "http.method", "an HTTP method such as GET or POST")?;
        let method = method.to_ascii_uppercase();
        if reqwest::Method::from_bytes(method.as_bytes()).is_err() {
            self.error(&node.referenced, job, format!("`http.method`: `{method}` is not an HTTP method"));
        }
        Some(method)
    }

    /// `http.expect_status`: one status or a list of them.
    fn http_expect_status(&mut self, node: &Spanned<Node>, job: Option<&str>, statuses: &mut Vec<u16>) {
        let items = match &node.value {
            Node::Seq(items) => items.as_slice(),
            Node::Int(_) => std::slice::from_ref(node),
            other => {
                let message = format!(
                    "`http.expect_status`: expected a list of HTTP statuses such as [200, 204], found {}",
                    other.kind()
                );
                self.error(&node.referenced, job, message);
                return;
            }
        };
        for item in items {
            match item.value {
                Node::Int(n) if (100..=599).contains(&n) => statuses.push(n as u16),
                _ => self.error(
                    &item.referenced,
                    job,
                    "`http.expect_status`: expected an HTTP status from 100 to 599".into(),
                ),
            }
        }
    }
}

/// An environment variable name: letters, digits and `_`, not starting with a digit.
pub fn is_variable_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::RunOn;
    use crate::config::parse;
    use crate::config::tests::errors;

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
            "`http.url`: expected an http:// or https:// URL with a host",
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
    fn issue_19_run_on_is_leader_any_or_tags_and_bad_values_are_located() {
        let text = "jobs:
  - { name: a, schedule: '@daily', shell: 'true' }
  - { name: b, schedule: '@daily', shell: 'true', run_on: any }
  - { name: c, schedule: '@daily', shell: 'true', run_on: { tags: [gpu, eu-west, gpu] } }
  - { name: d, schedule: '@daily', shell: 'true', run_on: leader }
";
        let jobs = crate::config::parse(text, "jobs.yaml").expect("valid");
        let run_on: Vec<RunOn> = jobs.jobs().iter().map(|job| job.run_on.clone()).collect();
        assert_eq!(
            run_on,
            vec![RunOn::Leader, RunOn::Any, RunOn::Tags(vec!["gpu".into(), "eu-west".into()]), RunOn::Leader]
        );
        assert!(run_on[2].accepts(&["eu-west".into(), "gpu".into(), "big".into()]));
        assert!(!run_on[2].accepts(&["gpu".into()]));
        assert!(!run_on[0].accepts(&[]) && run_on[1].accepts(&[]));
        let text = "jobs:
  - { name: a, schedule: '@daily', shell: 'true', run_on: everywhere }
  - { name: b, schedule: '@daily', shell: 'true', run_on: { tags: [] } }
  - { name: c, schedule: '@daily', shell: 'true', run_on: { tags: ['a,b'] } }
  - { name: d, schedule: '@daily', shell: 'true', run_on: { nodes: [x] } }
  - { name: e, schedule: '@daily', shell: 'true', run_on: 3 }
";
        let got = errors(text);
        let want = [
            "jobs.yaml:2:59: job `a`: `run_on`: `everywhere` is not one of `leader`, `any` or `{ tags: [..] }`",
            "jobs.yaml:3:61: job `b`: `run_on.tags`: the list is empty; expected at least one tag",
            "jobs.yaml:4:68: job `c`: `run_on.tags`: `a,b` is not a tag (letters, digits, `-`, `_` and `.`)",
        ];
        for want in want {
            assert!(got.iter().any(|line| line == want), "missing {want:?} in {got:#?}");
        }
        assert!(got.iter().any(|line| line.starts_with("jobs.yaml:5:") && line.contains("nodes")), "{got:#?}");
        assert!(
            got.iter().any(|line| line.starts_with("jobs.yaml:6:") && line.contains("`run_on`: expected")),
            "{got:#?}"
        );
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
    fn issue_17_a_schedule_may_be_a_list_merged_into_one() {
        let text = "jobs:
  - name: a
    schedule: ['0 9 * * MON-FRI', '0 12 * * SAT', '0 9 * * MON']
    shell: 'true'
";
        let set = parse(text, "jobs.yaml").unwrap_or_else(|e| panic!("{e}"));
        let schedule = &set.jobs()[0].schedule;
        assert_eq!(schedule.expressions(), ["0 9 * * MON-FRI", "0 12 * * SAT", "0 9 * * MON"]);
        let monday = chrono::DateTime::parse_from_rfc3339("2026-05-04T08:00:00Z").unwrap().to_utc();
        // Monday 09:00 is in two expressions: one slot.
        let next = schedule.next_after(monday).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-05-04T09:00:00+00:00");
        assert_eq!(schedule.next_after(next).unwrap().to_rfc3339(), "2026-05-05T09:00:00+00:00");

        let text = "jobs:
  - name: b
    schedule: ['0 9 * * *', '61 * * * *', 7]
    shell: 'true'
  - name: c
    schedule: []
    shell: 'true'
";
        let got = errors(text);
        let want = [
            "jobs.yaml:3:29: job `b`: `schedule`: invalid schedule `61 * * * *`: minute field `61`",
            "jobs.yaml:3:43: job `b`: `schedule`: expected a crontab line, a macro or \"@every 30s\" (or a list of them), found a number",
            "jobs.yaml:6:15: job `c`: `schedule`: the list is empty",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (got, want) in got.iter().zip(want) {
            assert!(got.starts_with(want), "got  {got}\nwant {want}…");
        }
    }

    #[test]
    fn issue_17_jitter_and_retain_are_policies_bounded_by_the_starting_deadline() {
        let text = "defaults: { jitter: 30s, retain: 7d }
jobs:
  - { name: a, schedule: '@hourly', shell: 'true' }
  - { name: b, schedule: '@hourly', shell: 'true', jitter: 1m, retain: 1h, starting_deadline: 2m }
";
        let set = parse(text, "jobs.yaml").unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (set.get("a").unwrap(), set.get("b").unwrap());
        assert_eq!((a.jitter, a.retain), (Duration::from_secs(30), Some(Duration::from_secs(7 * 86_400))));
        assert_eq!((b.jitter, b.retain), (Duration::from_secs(60), Some(Duration::from_secs(3_600))));
        let plain = parse("jobs:\n  - { name: p, schedule: '@hourly', shell: 'true' }\n", "jobs.yaml").unwrap();
        assert_eq!((plain.jobs()[0].jitter, plain.jobs()[0].retain), (Duration::ZERO, None));

        let text = "defaults: { retain: 1m }
jobs:
  - { name: a, schedule: '@hourly', shell: 'true', jitter: 10m }
  - { name: b, schedule: '@hourly', shell: 'true', starting_deadline: 30s }
  - { name: c, schedule: '@hourly', shell: 'true', retain: 10s, starting_deadline: 20s }
  - { name: d, schedule: '@hourly', shell: 'true', jitter: soon }
";
        let got = errors(text);
        let want = [
            "jobs.yaml:1:21: job `a`: `retain` 1m is shorter than the job's `starting_deadline` 5m",
            "jobs.yaml:3:60: job `a`: `jitter` 10m is longer than the job's `starting_deadline` 5m",
            "jobs.yaml:5:60: job `c`: `retain` 10s is shorter than the job's `starting_deadline` 20s",
            "jobs.yaml:6:60: job `d`: `jitter`: `soon` is not a duration",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (got, want) in got.iter().zip(want) {
            assert!(got.starts_with(want), "got  {got}\nwant {want}…");
        }
    }

    #[test]
    fn each_target_kind_is_read_from_its_field() {
        let text = "jobs:
  - { name: c, schedule: '@daily', command: [/bin/echo, 42] }
  - { name: s, schedule: '@daily', shell: 'echo hi' }
  - { name: h, schedule: '@daily', http: { url: 'http://x/y', method: post, expect_status: 204 } }
";
        let set = parse(text, "jobs.yaml").unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<&str> = set.jobs().iter().map(|job| job.target.kind().as_str()).collect();
        assert_eq!(kinds, ["command", "shell", "http"]);
        assert_eq!(
            set.jobs()[0].target,
            crate::config::Target::Command { argv: vec!["/bin/echo".into(), "42".into()] }
        );
        let crate::config::Target::Http(http) = &set.jobs()[2].target else { panic!("an http target") };
        assert_eq!((http.method.as_str(), http.expect_status.as_slice()), ("POST", &[204][..]));
    }
}
