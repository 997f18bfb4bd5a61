//! The fields only a job has (`name`, `schedule`, its target, `env`, `inherit_env`, `overrides`,
//! `workdir`, `user` and `group`, `paused`, `team`), one [`Validator`] function each; [`Validator::job`]
//! puts them together with the job's policies. The walk over the file and the shared readers are
//! in `validate.rs`. `user` and `group` are looked up on this machine when the file is loaded.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde_saphyr::{Location, Spanned};

use super::node::Node;
use super::validate::{HTTP_KEYS, JOB_KEYS, Policies, Validator, line_column};
use super::{AfterOn, HttpTarget, Job, JobName, RunAs, RunOn, Sourced, Target, TargetKind, Upstream, is_tag};
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
        let after = get("after").map(|after| self.after(after, job)).unwrap_or_default();
        let within = get("within").and_then(|within| self.duration(within, job, "within"));
        let schedule = match get("schedule") {
            None if get("after").is_some() => Some(Schedule::never(policies.timezone)),
            schedule => self.schedule(node, schedule, job, &policies),
        };
        let target = self.target(node, entries, job);
        let env = get("env").map(|env| self.env(env, job)).unwrap_or_default();
        let inherit_env = self.inherit_env(entries, target.as_ref(), job);
        let overrides = self.overrides(entries, target.as_ref(), job);
        let run_as = self.run_as(entries, target.as_ref(), job);
        let workdir =
            get("workdir").and_then(|w| self.string(w, job, "workdir", "a directory path")).map(PathBuf::from);
        let paused = get("paused").is_some_and(|paused| self.paused(paused, job));
        let run_on = get("run_on").map(|run_on| self.run_on(run_on, job)).unwrap_or_default();
        let team = get("team").and_then(|team| self.team(team, job));

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
            overrides,
            run_as,
            team,
            after,
            within,
        })
    }

    /// `after`: the jobs this one waits for, a name each (`on: success`) or `{ job, on }` with
    /// `on` one of `success`, `failure`, `always`; a list, or one name. Whether the names are
    /// jobs of the file, and cycles, are checked once every job is read (`dependencies`).
    fn after(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Vec<Upstream> {
        let items = match &node.value {
            Node::Seq(items) if items.is_empty() => {
                self.error(&node.referenced, job, "`after`: the list is empty; expected at least one job".into());
                return Vec::new();
            }
            Node::Seq(items) => items.as_slice(),
            _ => std::slice::from_ref(node),
        };
        let mut after: Vec<Upstream> = Vec::with_capacity(items.len());
        for item in items {
            let at = line_column(&item.referenced);
            let (name_node, on) = match &item.value {
                Node::Map(_) => {
                    let Some(entries) = self.mapping(item, job, "an `after` entry", &["job", "on"]) else { continue };
                    let on = match entries.iter().find(|(k, _)| k.value == "on") {
                        Some((_, on)) => match self.choice(on, job, "after.on", AfterOn::NAMES) {
                            Some(on) => on,
                            None => continue,
                        },
                        None => AfterOn::Success,
                    };
                    match entries.iter().find(|(k, _)| k.value == "job") {
                        Some((_, name)) => (name, on),
                        None => {
                            self.error(&item.referenced, job, "`after`: missing `job` in an entry".into());
                            continue;
                        }
                    }
                }
                _ => (item, AfterOn::Success),
            };
            let Some(text) = self.string(name_node, job, "after", "a job name or `{ job, on }`") else { continue };
            match JobName::parse(text) {
                Ok(name) if Some(name.as_str()) == job => {
                    self.error(&name_node.referenced, job, "`after`: a job may not wait for itself".into());
                }
                Ok(name) if after.iter().any(|known| known.job == name) => {
                    self.error(&name_node.referenced, job, format!("`after`: `{text}` is listed twice"));
                }
                Ok(name) => after.push(Upstream { job: name, on, at }),
                Err(e) => self.error(&name_node.referenced, job, format!("`after`: {e}")),
            }
        }
        after
    }

    /// `team`: the team that owns the job, a name as tags are (letters, digits, `-`, `_`, `.`).
    fn team(&mut self, node: &Spanned<Node>, job: Option<&str>) -> Option<String> {
        let team = self.string(node, job, "team", "a team name")?;
        if !is_tag(team) {
            let message =
                format!("`team`: `{team}` is not a team name (letters, digits, `-`, `_` and `.`, at most 64)");
            self.error(&node.referenced, job, message);
            return None;
        }
        Some(team.to_owned())
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
            self.error(&job_node.referenced, job, "missing `schedule`: expected a crontab line such as \"30 2 * * *\", a macro such as @daily, or \"@every 30s\" (or a list of them), or `after:` the jobs it waits for".into());
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
                Ok(schedule) => {
                    self.warn_uneven_steps(item, text, &schedule, job);
                    parts.push(schedule);
                }
                Err(e) => self.error(&item.referenced, job, format!("`schedule`: {e}")),
            }
        }
        if self.errors.len() != before {
            return None;
        }
        Schedule::union(parts)
    }

    /// A warning for each step of `schedule` (written as `text` at `item`) that does not divide
    /// its field, at the step itself: inside the quotes when the scalar is quoted and on one line,
    /// else at the scalar.
    fn warn_uneven_steps(&mut self, item: &Spanned<Node>, text: &str, schedule: &Schedule, job: Option<&str>) {
        let chars = text.chars().count() as u64;
        let span = item.referenced.span().len();
        // A plain scalar spans its text; a quoted one without escapes, two more; anything else
        // (escapes, folded lines) is pointed at as a whole.
        let quote = match span {
            _ if span == chars => Some(0),
            _ if span == chars + 2 => Some(1),
            _ => None,
        };
        let leading = text.len() - text.trim_start().len();
        for (_, step) in schedule.uneven_steps() {
            let right = quote.map_or(0, |quote| quote + text[..leading].chars().count() + step.offset);
            self.warn(&item.referenced, right, job, step.message);
        }
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

    /// `overrides`: the variables a manual run may set, for `command` and `shell` jobs only. A
    /// name that changes what the loader, the C library, a shell or an interpreter runs or
    /// loads, and tenure's own `TENURE_*`, are refused ([`refused_override`]). Duplicates are
    /// dropped.
    fn overrides(&mut self, entries: &Entries, target: Option<&Target>, job: Option<&str>) -> Vec<String> {
        let Some((key, node)) = entries.iter().find(|(k, _)| k.value == "overrides") else {
            return Vec::new();
        };
        if matches!(target, Some(Target::Http(_))) {
            let message = "`overrides` applies to `command` and `shell` jobs; an HTTP job has no environment";
            self.error(&key.referenced, job, message.into());
        }
        let Node::Seq(items) = &node.value else {
            let message = format!("`overrides`: expected a list of variable names, found {}", node.value.kind());
            self.error(&node.referenced, job, message);
            return Vec::new();
        };
        let mut names: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let Some(name) = self.string(item, job, "overrides", "a variable name") else {
                continue;
            };
            if !is_variable_name(name) {
                let message = format!(
                    "`overrides`: `{name}` is not a variable name (letters, digits and `_`, not starting with a digit)"
                );
                self.error(&item.referenced, job, message);
            } else if name.starts_with("TENURE_") {
                let message =
                    format!("`overrides`: `{name}` is reserved: tenure sets the TENURE_* variables of a run itself");
                self.error(&item.referenced, job, message);
            } else if let Some(why) = refused_override(name) {
                let message = format!("`overrides`: `{name}` {why}; a manual run may not set it");
                self.error(&item.referenced, job, message);
            } else if !names.iter().any(|known| known == name) {
                names.push(name.to_owned());
            }
        }
        names
    }

    /// `user` and `group`: whom the job's processes run as, each a name or a numeric id that
    /// this machine knows, looked up now. `group` (the primary group, the user's own by default)
    /// needs `user`; both need tenure to run as root, the only user that may switch.
    fn run_as(&mut self, entries: &Entries, target: Option<&Target>, job: Option<&str>) -> Option<RunAs> {
        let find = |field: &str| entries.iter().find(|(k, _)| k.value == field);
        let (user_entry, group_entry) = (find("user"), find("group"));
        if user_entry.is_none() && group_entry.is_none() {
            return None;
        }
        let user = user_entry.and_then(|(key, node)| {
            if matches!(target, Some(Target::Http(_))) {
                let message = "`user` applies to `command` and `shell` jobs; an HTTP job starts no process";
                self.error(&key.referenced, job, message.into());
                return None;
            }
            self.account(node, job, "user")
        });
        let group = group_entry.and_then(|(key, node)| {
            if user_entry.is_none() {
                let message = "`group` needs `user`: it sets the primary group of the user the job runs as";
                self.error(&key.referenced, job, message.into());
                return None;
            }
            self.account(node, job, "group")
        });
        let (user_node, user) = (&user_entry?.1, user?);
        if self.runner.euid != 0 {
            let message = format!(
                "`user`: tenure runs as uid {}, not root: it cannot run a job as another user",
                self.runner.euid
            );
            self.error(&user_node.referenced, job, message);
            return None;
        }
        let Account::User(user) = user else { return None };
        let gid = match (group_entry, group) {
            (None, _) => user.gid,
            (Some(_), Some(Account::Group(group))) => group.gid,
            (Some(_), _) => return None,
        };
        let name = std::ffi::CString::new(user.name.clone()).ok()?;
        let mut groups = vec![gid.as_raw()];
        match nix::unistd::getgrouplist(&name, gid) {
            Ok(all) => groups.extend(all.into_iter().map(|g| g.as_raw()).filter(|g| *g != gid.as_raw())),
            Err(error) => {
                let message = format!("`user`: the groups of `{}` could not be read: {error}", user.name);
                self.error(&user_node.referenced, job, message);
                return None;
            }
        }
        Some(RunAs { user: user.name, uid: user.uid.as_raw(), gid: gid.as_raw(), groups, home: user.dir })
    }

    /// A user (`field` is `user`) or group on this machine, by name or numeric id.
    fn account(&mut self, node: &Spanned<Node>, job: Option<&str>, field: &str) -> Option<Account> {
        use nix::unistd::{Gid, Group, Uid, User};
        let (found, missing) = match &node.value {
            Node::Str(name) => {
                let found = if field == "user" {
                    User::from_name(name).map(|u| u.map(Account::User))
                } else {
                    Group::from_name(name).map(|g| g.map(Account::Group))
                };
                (found, format!("no {field} `{name}` on this machine"))
            }
            Node::Int(id) => {
                let kind = if field == "user" { "uid" } else { "gid" };
                let missing = format!("no {field} with {kind} {id} on this machine");
                let Ok(id) = u32::try_from(*id) else {
                    self.error(&node.referenced, job, format!("`{field}`: {missing}"));
                    return None;
                };
                let found = if field == "user" {
                    User::from_uid(Uid::from_raw(id)).map(|u| u.map(Account::User))
                } else {
                    Group::from_gid(Gid::from_raw(id)).map(|g| g.map(Account::Group))
                };
                (found, missing)
            }
            other => {
                let message =
                    format!("`{field}`: expected a {field} name or {}, found {}", id_word(field), other.kind());
                self.error(&node.referenced, job, message);
                return None;
            }
        };
        match found {
            Ok(Some(account)) => Some(account),
            Ok(None) => {
                self.error(&node.referenced, job, format!("`{field}`: {missing}"));
                None
            }
            Err(error) => {
                self.error(&node.referenced, job, format!("`{field}`: could not look it up: {error}"));
                None
            }
        }
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

/// A user or group of this machine.
enum Account {
    User(nix::unistd::User),
    Group(nix::unistd::Group),
}

fn id_word(field: &str) -> &'static str {
    if field == "user" { "uid" } else { "gid" }
}

/// Why a manual run may never set `name`, if it may not: it would make a job run or load code its
/// job file did not name. The allow-list (`overrides`) is the control; this refuses the known
/// doors in it, so that no job file opens one by mistake:
///
/// - the dynamic loader's (`LD_*`, `DYLD_*`), and every variable the C library ignores for
///   privileged programs (glibc's `unsecvars.h`: the converters, tunables, locale and resolver
///   files, the time zone directory, `TMPDIR`);
/// - `PATH`: it chooses which program a bare command name is, and `sh -c` looks up every one;
/// - a shell's start-up and tracing code (`ENV`, `BASH_ENV`, `PS4`, `SHELLOPTS`, `BASHOPTS`,
///   `PROMPT_COMMAND`) and how it reads the script (`IFS`, `CDPATH`, `GLOBIGNORE`);
/// - an interpreter's start-up options and module paths (Perl, Python, Ruby, Node, the JVM, Lua).
pub fn refused_override(name: &str) -> Option<&'static str> {
    REFUSED_OVERRIDES.iter().find(|(refused, _)| refused.matches(name)).map(|(_, why)| *why)
}

/// A name or a family of names (`LD_*`) a manual run may never set.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refused {
    Name(&'static str),
    Prefix(&'static str),
}

impl Refused {
    fn matches(self, name: &str) -> bool {
        match self {
            Refused::Name(refused) => name == refused,
            Refused::Prefix(prefix) => name.starts_with(prefix),
        }
    }

    /// The same as a JSON Schema `pattern`.
    pub(super) fn pattern(self) -> String {
        match self {
            Refused::Name(name) => format!("^{name}$"),
            Refused::Prefix(prefix) => format!("^{prefix}"),
        }
    }
}

const LOADER: &str = "changes what the dynamic loader loads";
const C_LIBRARY: &str =
    "is one the C library ignores for privileged programs (it changes what the library loads or reads)";
const SHELL_CODE: &str = "makes a shell run code before the job's";
const SHELL_WORDS: &str = "changes how a shell splits the job's words";
const SHELL_COMMANDS: &str = "changes what a shell's commands do";
const INTERPRETER: &str = "makes an interpreter run code before the job's";

/// What [`refused_override`] refuses, and why (the schema's `overrides` refuses the same).
pub(super) const REFUSED_OVERRIDES: &[(Refused, &str)] = &[
    (Refused::Prefix("LD_"), LOADER),
    (Refused::Prefix("DYLD_"), LOADER),
    (Refused::Name("GCONV_PATH"), C_LIBRARY),
    (Refused::Name("GETCONF_DIR"), C_LIBRARY),
    (Refused::Name("GLIBC_TUNABLES"), C_LIBRARY),
    (Refused::Name("HOSTALIASES"), C_LIBRARY),
    (Refused::Name("LOCALDOMAIN"), C_LIBRARY),
    (Refused::Name("LOCPATH"), C_LIBRARY),
    (Refused::Name("MALLOC_TRACE"), C_LIBRARY),
    (Refused::Name("NIS_PATH"), C_LIBRARY),
    (Refused::Name("NLSPATH"), C_LIBRARY),
    (Refused::Name("RESOLV_HOST_CONF"), C_LIBRARY),
    (Refused::Name("RES_OPTIONS"), C_LIBRARY),
    (Refused::Name("TMPDIR"), C_LIBRARY),
    (Refused::Name("TZDIR"), C_LIBRARY),
    (Refused::Name("PATH"), "chooses which programs the job runs"),
    (Refused::Name("ENV"), SHELL_CODE),
    (Refused::Name("BASH_ENV"), SHELL_CODE),
    (Refused::Name("PS4"), SHELL_CODE),
    (Refused::Name("SHELLOPTS"), SHELL_CODE),
    (Refused::Name("BASHOPTS"), SHELL_CODE),
    (Refused::Name("PROMPT_COMMAND"), SHELL_CODE),
    (Refused::Name("IFS"), SHELL_WORDS),
    (Refused::Name("CDPATH"), SHELL_COMMANDS),
    (Refused::Name("GLOBIGNORE"), SHELL_COMMANDS),
    (Refused::Prefix("PYTHON"), INTERPRETER),
    (Refused::Name("PERL5OPT"), INTERPRETER),
    (Refused::Name("PERL5LIB"), INTERPRETER),
    (Refused::Name("PERLLIB"), INTERPRETER),
    (Refused::Name("PERL5DB"), INTERPRETER),
    (Refused::Name("RUBYOPT"), INTERPRETER),
    (Refused::Name("RUBYLIB"), INTERPRETER),
    (Refused::Name("NODE_OPTIONS"), INTERPRETER),
    (Refused::Name("NODE_PATH"), INTERPRETER),
    (Refused::Name("JAVA_TOOL_OPTIONS"), INTERPRETER),
    (Refused::Name("_JAVA_OPTIONS"), INTERPRETER),
    (Refused::Name("JDK_JAVA_OPTIONS"), INTERPRETER),
    (Refused::Prefix("LUA_INIT"), INTERPRETER),
    (Refused::Name("LUA_PATH"), INTERPRETER),
    (Refused::Name("LUA_CPATH"), INTERPRETER),
];

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
    fn team_names_the_owning_team_and_bad_values_are_located() {
        let text = "jobs:
  - { name: a, schedule: '@daily', shell: 'true', team: payments }
  - { name: b, schedule: '@daily', shell: 'true' }
";
        let jobs = crate::config::parse(text, "jobs.yaml").expect("valid");
        let teams: Vec<Option<String>> = jobs.jobs().iter().map(|job| job.team.clone()).collect();
        assert_eq!(teams, vec![Some("payments".to_owned()), None]);
        let text = "jobs:
  - { name: a, schedule: '@daily', shell: 'true', team: 'pay ments' }
  - { name: b, schedule: '@daily', shell: 'true', team: [x] }
";
        let got = errors(text);
        assert!(got[0].starts_with("jobs.yaml:2:57: job `a`: `team`: `pay ments` is not a team name"), "{got:?}");
        assert!(got[1].starts_with("jobs.yaml:3:57: job `b`: `team`: expected a team name"), "{got:?}");
    }

    #[test]
    fn run_on_is_leader_any_or_tags_and_bad_values_are_located() {
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
    fn overrides_lists_the_variables_a_manual_run_may_set_and_never_a_loader_or_shell_one() {
        let jobs = parse(
            "jobs:\n  - name: a\n    schedule: '@daily'\n    shell: 'true'\n    overrides: [DRY_RUN, REGION, DRY_RUN]\n\
             \x20 - name: b\n    schedule: '@daily'\n    shell: 'true'\n",
            "jobs.yaml",
        )
        .unwrap();
        assert_eq!(jobs.jobs()[0].overrides, ["DRY_RUN", "REGION"]);
        assert!(jobs.jobs()[1].overrides.is_empty(), "no `overrides:`, no overrides");
        let text = "jobs:
  - name: a
    schedule: '@daily'
    shell: 'true'
    overrides: [LD_PRELOAD, DYLD_INSERT_LIBRARIES, BASH_ENV, ENV, IFS, PATH, PS4, SHELLOPTS, BASHOPTS]
  - name: b
    schedule: '@daily'
    shell: 'true'
    overrides: [PERL5OPT, PYTHONSTARTUP, NODE_OPTIONS, TENURE_SLOT, 9LIVES]
  - name: c
    schedule: '@daily'
    http: { url: 'http://x' }
    overrides: [DRY_RUN]
  - name: d
    schedule: '@daily'
    shell: 'true'
    overrides: DRY_RUN
";
        let got = errors(text);
        let want = [
            "jobs.yaml:5:17: job `a`: `overrides`: `LD_PRELOAD` changes what the dynamic loader loads; a manual run may not set it",
            "jobs.yaml:5:29: job `a`: `overrides`: `DYLD_INSERT_LIBRARIES` changes what the dynamic loader loads",
            "jobs.yaml:5:52: job `a`: `overrides`: `BASH_ENV` makes a shell run code before the job's",
            "jobs.yaml:5:62: job `a`: `overrides`: `ENV` makes a shell run code before the job's",
            "jobs.yaml:5:67: job `a`: `overrides`: `IFS` changes how a shell splits the job's words",
            "jobs.yaml:5:72: job `a`: `overrides`: `PATH` chooses which programs the job runs",
            "jobs.yaml:5:78: job `a`: `overrides`: `PS4` makes a shell run code before the job's",
            "jobs.yaml:5:83: job `a`: `overrides`: `SHELLOPTS` makes a shell run code before the job's",
            "jobs.yaml:5:94: job `a`: `overrides`: `BASHOPTS` makes a shell run code before the job's",
            "jobs.yaml:9:17: job `b`: `overrides`: `PERL5OPT` makes an interpreter run code before the job's",
            "jobs.yaml:9:27: job `b`: `overrides`: `PYTHONSTARTUP` makes an interpreter run code before the job's",
            "jobs.yaml:9:42: job `b`: `overrides`: `NODE_OPTIONS` makes an interpreter run code before the job's",
            "jobs.yaml:9:56: job `b`: `overrides`: `TENURE_SLOT` is reserved: tenure sets the TENURE_* variables of a run itself",
            "jobs.yaml:9:69: job `b`: `overrides`: `9LIVES` is not a variable name",
            "jobs.yaml:13:5: job `c`: `overrides` applies to `command` and `shell` jobs; an HTTP job has no environment",
            "jobs.yaml:17:16: job `d`: `overrides`: expected a list of variable names, found a string",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (got, want) in got.iter().zip(want) {
            assert!(got.starts_with(want), "got  {got}\nwant {want}…");
        }
    }

    #[test]
    fn user_and_group_are_resolved_when_the_file_is_loaded() {
        let root = crate::config::Runner { euid: 0 };
        let text = "jobs:
  - { name: a, schedule: '@daily', shell: 'true', user: nobody }
  - { name: b, schedule: '@daily', shell: 'true', user: 0, group: 65534 }
  - { name: c, schedule: '@daily', shell: 'true' }
";
        let jobs = crate::config::parse_as(text, "jobs.yaml", root).expect("valid");
        let nobody = jobs.jobs()[0].run_as.clone().expect("run as nobody");
        assert_eq!((nobody.user.as_str(), nobody.uid, nobody.gid), ("nobody", 65534, 65534));
        assert!(nobody.groups.contains(&65534), "{nobody:?}");
        let b = jobs.jobs()[1].run_as.clone().expect("run as root");
        assert_eq!((b.user.as_str(), b.uid, b.gid, b.home.to_str()), ("root", 0, 65534, Some("/root")));
        assert_eq!(b.groups.first(), Some(&65534), "the primary group first: {b:?}");
        assert_eq!(jobs.jobs()[2].run_as, None);
    }

    #[test]
    fn user_and_group_are_refused_where_the_file_says_them() {
        let text = "jobs:
  - { name: a, schedule: '@daily', shell: 'true', user: no-such-user-here }
  - { name: b, schedule: '@daily', shell: 'true', user: nobody, group: no-such-group }
  - { name: c, schedule: '@daily', shell: 'true', group: nogroup }
  - { name: d, schedule: '@daily', http: { url: 'http://x' }, user: nobody }
  - { name: e, schedule: '@daily', shell: 'true', user: 4000000000 }
  - { name: f, schedule: '@daily', shell: 'true', user: [nobody] }
";
        let root = crate::config::Runner { euid: 0 };
        let got: Vec<String> = match crate::config::parse_as(text, "jobs.yaml", root) {
            Ok(_) => panic!("expected errors"),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        };
        let want = [
            "jobs.yaml:2:57: job `a`: `user`: no user `no-such-user-here` on this machine",
            "jobs.yaml:3:72: job `b`: `group`: no group `no-such-group` on this machine",
            "jobs.yaml:4:51: job `c`: `group` needs `user`: it sets the primary group of the user the job runs as",
            "jobs.yaml:5:63: job `d`: `user` applies to `command` and `shell` jobs; an HTTP job starts no process",
            "jobs.yaml:6:57: job `e`: `user`: no user with uid 4000000000 on this machine",
            "jobs.yaml:7:57: job `f`: `user`: expected a user name or uid, found a list",
        ];
        assert_eq!(got, want);
        // Not root: it cannot switch users, so it refuses any `user:`.
        let text = "jobs:\n  - { name: a, schedule: '@daily', shell: 'true', user: nobody }\n";
        let got = crate::config::parse_as(text, "jobs.yaml", crate::config::Runner { euid: 1000 }).unwrap_err();
        assert_eq!(
            got.to_string(),
            "jobs.yaml:2:57: job `a`: `user`: tenure runs as uid 1000, not root: it cannot run a job as another user"
        );
    }

    #[test]
    fn a_schedule_may_be_a_list_merged_into_one() {
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
    fn jitter_and_retain_are_policies_bounded_by_the_starting_deadline() {
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
