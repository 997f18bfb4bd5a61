//! Runs one attempt of one job: a command or shell script in its own process group, under a
//! supervisor that kills the group if this replica dies or freezes (see `supervisor`), or an HTTP
//! request. Knows nothing of leadership or the ledger: the caller claims the slot first, passes a
//! `stop` token (cancelled on leadership loss, `replace` or shutdown) and records the outcome.
//!
//! An attempt begins when its process is spawned (the supervisor reported the spawn) or its
//! request begins to be sent: the outcome carries that instant (`RunOutcome::began_at`), and the
//! caller is told it at once (`OnBegan`), while the attempt goes.
//!
//! A process starts from a cleared environment: the few variables of tenure's own that every
//! program expects ([`INHERITED`], every `LC_*`), those the job's `inherit_env` names, for a job
//! with `user:` that user's `HOME`, `USER` and `LOGNAME` instead of tenure's, the job's `env`,
//! then the run's `TENURE_*` values. tenure's configuration (`TENURE_ADMIN_TOKEN`,
//! `TENURE_DATABASE_URL`, any `TENURE_*`) never reaches a job. A job with `user:` is started as
//! that user by the supervisor.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use crate::config::{HttpTarget, Job, RunAs, Target};
use crate::leadership::LeaseDeadline;
use crate::model::{OUTPUT_LIMIT, RunOutcome, RunStatus};
use crate::supervisor::{Credentials, Ended, Spawn, Supervision};

/// Between SIGTERM and SIGKILL of a job's process group.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// What every command or shell job inherits from tenure's environment (with every `LC_*`): how to
/// find programs, whose home and shell, the locale and time zone; what cron hands its jobs, plus
/// the locale and `TMPDIR`. Anything else must be named in the job's `inherit_env`.
pub const INHERITED: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"];

/// The variables that say whose a job is: a job with `user:` gets that user's, as cron sets
/// them, not tenure's.
const IDENTITY: [&str; 3] = ["HOME", "USER", "LOGNAME"];

/// `HOME`, `USER` and `LOGNAME` of the user a job runs as.
fn identity(user: &RunAs) -> [(OsString, OsString); 3] {
    [
        ("HOME".into(), user.home.clone().into_os_string()),
        ("USER".into(), user.user.clone().into()),
        ("LOGNAME".into(), user.user.clone().into()),
    ]
}

/// `PATH` for a job when tenure itself has none (as cron does).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long a connection to an HTTP job's target stays open unused, kept for its next request:
/// longer than a minute, so a `* * * * *` job's request finds its connection (no handshake at its
/// slot), and no longer, so what the pool holds is bounded by age (reqwest's own default, named
/// here as the bound). How many it holds per target is bounded by the requests once in flight
/// together, that is by the jobs.
pub const HTTP_POOL_IDLE: Duration = Duration::from_secs(90);

/// The HTTP client of a replica's runs (and of its dead-man ping and webhooks): one connection
/// pool, each idle connection closed after `HTTP_POOL_IDLE`.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(crate::testing::http_pool_idle().unwrap_or(HTTP_POOL_IDLE))
        .build()
        .expect("the HTTP client builds (as `reqwest::Client::new` would)")
}

/// The part of `parent` (tenure's environment) a job inherits: [`INHERITED`], `LC_*` and the
/// names in `inherit_env`, never a `TENURE_*` variable; `PATH` always.
fn inherited_environment(
    inherit_env: &[String],
    parent: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let mut inherited: Vec<(OsString, OsString)> = parent
        .into_iter()
        .filter(|(name, _)| {
            let Some(name) = name.to_str() else { return false };
            !name.starts_with("TENURE_")
                && (INHERITED.contains(&name)
                    || name.starts_with("LC_")
                    || inherit_env.iter().any(|wanted| wanted == name))
        })
        .collect();
    if !inherited.iter().any(|(name, _)| name == "PATH") {
        inherited.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    inherited
}

/// Identity of the run, handed to the job as `TENURE_*` variables or `X-Tenure-*` headers so it
/// can fence its own downstream writes with the term.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub run_id: i64,
    pub job: String,
    pub slot: DateTime<Utc>,
    pub term: i64,
    pub node: String,
    pub attempt: i32,
    /// The attempt's execution lease (`TENURE_LEASE_ID`), when it executes on a replica under a
    /// lease of its own (`run_on: any` or `{ tags: [..] }`); `None` on the leader.
    pub lease_id: Option<String>,
    /// The runs that released this one (`after:`), comma-separated in `TENURE_UPSTREAM_RUN_IDS`
    /// (and `X-Tenure-Upstream-Run-Ids`); empty for a run no awaited run released.
    pub upstream_run_ids: Vec<i64>,
}

impl RunContext {
    fn variables(&self) -> Vec<(&'static str, String)> {
        let mut variables = vec![
            ("JOB", self.job.clone()),
            ("SLOT", self.slot.to_rfc3339_opts(SecondsFormat::Secs, true)),
            ("TERM", self.term.to_string()),
            ("RUN_ID", self.run_id.to_string()),
            ("NODE", self.node.clone()),
            ("ATTEMPT", self.attempt.to_string()),
        ];
        if let Some(lease_id) = &self.lease_id {
            variables.push(("LEASE_ID", lease_id.clone()));
        }
        if !self.upstream_run_ids.is_empty() {
            let ids: Vec<String> = self.upstream_run_ids.iter().map(i64::to_string).collect();
            variables.push(("UPSTREAM_RUN_IDS", ids.join(",")));
        }
        variables
    }
}

/// The last `OUTPUT_LIMIT` bytes a run printed, shared with whoever wants to watch it live.
#[derive(Debug, Clone, Default)]
pub struct OutputTail {
    bytes: Arc<Mutex<VecDeque<u8>>>,
}

impl OutputTail {
    /// `chunk` from stderr: `STDERR_MARK` before each line it starts (`at_line_start`: whether
    /// the stream's previous chunk ended a line; updated).
    fn push_stderr(&self, chunk: &[u8], at_line_start: &mut bool) {
        let mut marked = Vec::with_capacity(chunk.len() + 8);
        for &byte in chunk {
            if *at_line_start {
                marked.push(STDERR_MARK as u8);
            }
            push_printed(&mut marked, byte);
            *at_line_start = byte == b'\n';
        }
        self.append(&marked);
    }

    /// `chunk` from stdout or an HTTP answer.
    fn push(&self, chunk: &[u8]) {
        if !chunk.contains(&(STDERR_MARK as u8)) {
            return self.append(chunk);
        }
        let mut printed = Vec::with_capacity(chunk.len() + 8);
        for &byte in chunk {
            push_printed(&mut printed, byte);
        }
        self.append(&printed);
    }

    fn append(&self, chunk: &[u8]) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let keep = chunk.len().min(OUTPUT_LIMIT);
        bytes.extend(&chunk[chunk.len() - keep..]);
        let excess = bytes.len().saturating_sub(OUTPUT_LIMIT);
        bytes.drain(..excess);
    }

    pub fn text(&self) -> String {
        let bytes = self.bytes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (front, back) = bytes.as_slices();
        let mut all = Vec::with_capacity(bytes.len());
        all.extend_from_slice(front);
        all.extend_from_slice(back);
        String::from_utf8_lossy(&all).into_owned()
    }
}

/// What starts each line a job wrote to stderr in its output tail (U+001E, the record
/// separator), so stdout and stderr stay in the order printed and pages can tell them apart.
pub const STDERR_MARK: char = '\u{1e}';

/// What a job's own record separators are kept as: `STDERR_MARK` is only ever tenure's.
const PRINTED_MARK: char = '\u{241e}';

/// `byte` as the job printed it, unless it is a record separator (a byte that appears in UTF-8
/// only as that character): kept as `PRINTED_MARK`.
fn push_printed(into: &mut Vec<u8>, byte: u8) {
    if byte == STDERR_MARK as u8 {
        into.extend_from_slice(PRINTED_MARK.encode_utf8(&mut [0; 3]).as_bytes());
    } else {
        into.push(byte);
    }
}

/// An output tail as plain text: the stderr marks taken out.
pub fn plain_output(output: &str) -> String {
    output.replace(STDERR_MARK, "")
}

/// Told the instant an attempt began (its process spawned, or its request began to be sent),
/// while the attempt goes: the caller's lateness metric.
pub type OnBegan<'a> = &'a (dyn Fn(DateTime<Utc>) + Send + Sync);

/// An `OnBegan` for a caller with nothing to do then.
pub fn ignore_began(_: DateTime<Utc>) {}

/// One attempt built before it starts: for an HTTP job, the request itself (URL parsed, headers
/// written), so that at its slot nothing is left but to send it.
pub struct Prepared {
    request: Option<Result<reqwest::Request, String>>,
}

/// Build the attempt `context` stands for.
pub fn prepare(job: &Job, context: &RunContext, http: &reqwest::Client) -> Prepared {
    let request = match &job.target {
        Target::Http(target) => Some(build_request(target, job.timeout, context, http)),
        Target::Command { .. } | Target::Shell { .. } => None,
    };
    Prepared { request }
}

/// Run one attempt of `job`. Never panics on the job's behalf: every failure is an outcome.
pub async fn execute(
    job: &Job,
    context: &RunContext,
    output: &OutputTail,
    http: &reqwest::Client,
    supervision: &Supervision,
    stop: &CancellationToken,
) -> RunOutcome {
    execute_prepared(prepare(job, context, http), job, context, output, http, supervision, stop, &ignore_began).await
}

/// `execute` with the attempt built beforehand by `prepare` (from the same job and context);
/// `on_began` is told when it began.
#[allow(clippy::too_many_arguments)]
pub async fn execute_prepared(
    prepared: Prepared,
    job: &Job,
    context: &RunContext,
    output: &OutputTail,
    http: &reqwest::Client,
    supervision: &Supervision,
    stop: &CancellationToken,
    on_began: OnBegan<'_>,
) -> RunOutcome {
    let stops = Stops { stop, lease_lost: None, deadline: None, on_began };
    execute_with(prepared, job, context, output, http, supervision, stops).await
}

/// `execute_prepared` for an attempt held under an execution lease: once `lease_lost` is
/// cancelled (the renewal refused, or the local deadline passed) its process group is SIGKILLed
/// at once, with no SIGTERM grace, since another replica may start the run once the lease has
/// lapsed; an HTTP request is dropped. A process is not started at all once `deadline` has
/// passed (the supervisor checks it when it takes the request). `stop` is the usual stop
/// (SIGTERM, then SIGKILL).
#[allow(clippy::too_many_arguments)]
pub async fn execute_leased(
    prepared: Prepared,
    job: &Job,
    context: &RunContext,
    output: &OutputTail,
    http: &reqwest::Client,
    supervision: &Supervision,
    stop: &CancellationToken,
    lease_lost: &CancellationToken,
    deadline: &LeaseDeadline,
    on_began: OnBegan<'_>,
) -> RunOutcome {
    let stops = Stops { stop, lease_lost: Some(lease_lost), deadline: Some(deadline), on_began };
    execute_with(prepared, job, context, output, http, supervision, stops).await
}

/// The two ways tenure ends an attempt: `stop` (SIGTERM, `KILL_GRACE`, SIGKILL) and
/// `lease_lost` (SIGKILL at once).
#[derive(Clone, Copy)]
struct Stops<'a> {
    stop: &'a CancellationToken,
    /// For an attempt under an execution lease (none on the leader).
    lease_lost: Option<&'a CancellationToken>,
    /// The execution lease's local deadline, for an attempt under one.
    deadline: Option<&'a LeaseDeadline>,
    on_began: OnBegan<'a>,
}

impl Stops<'_> {
    /// Resolves once the attempt's execution lease is lost; never for an attempt without one.
    async fn lease_lost(&self) {
        match self.lease_lost {
            Some(lost) => lost.cancelled().await,
            None => std::future::pending().await,
        }
    }
}

async fn execute_with(
    prepared: Prepared,
    job: &Job,
    context: &RunContext,
    output: &OutputTail,
    http: &reqwest::Client,
    supervision: &Supervision,
    stops: Stops<'_>,
) -> RunOutcome {
    match (&job.target, prepared.request) {
        (Target::Command { argv }, _) => {
            let args = argv[1..].iter().map(|arg| arg.as_ref()).collect();
            run_process(argv[0].as_ref(), args, job, context, output, supervision, stops).await
        }
        (Target::Shell { script }, _) => {
            let args = vec!["-c".as_ref(), script.as_ref()];
            run_process("/bin/sh".as_ref(), args, job, context, output, supervision, stops).await
        }
        (Target::Http(target), request) => {
            let request = request.unwrap_or_else(|| build_request(target, job.timeout, context, http));
            let began = OnceLock::new();
            let exchange = run_http(request, target, job.timeout, output, http, stops, &began);
            if stops.lease_lost.is_none() {
                return exchange.await;
            }
            tokio::select! {
                outcome = exchange => outcome,
                () = stops.lease_lost() => RunOutcome {
                    error: Some(LEASE_LOST.to_owned()),
                    began_at: began.get().copied(),
                    ..outcome(RunStatus::Killed, output)
                },
            }
        }
    }
}

/// Why an attempt was killed at once.
const LEASE_LOST: &str = "killed: its execution lease was lost";

fn outcome(status: RunStatus, output: &OutputTail) -> RunOutcome {
    RunOutcome {
        status,
        exit_code: None,
        http_status: None,
        error: None,
        output: output.text(),
        began_at: None,
        finished_at: Utc::now(),
    }
}

/// Start `program args` through the replica's supervisor (environment, directory, output pipes)
/// and see it to its end: exit, timeout (SIGTERM to its group, SIGKILL after `KILL_GRACE`) or stop.
async fn run_process(
    program: &OsStr,
    args: Vec<&OsStr>,
    job: &Job,
    context: &RunContext,
    output: &OutputTail,
    supervision: &Supervision,
    stops: Stops<'_>,
) -> RunOutcome {
    let could_not_start = |error: &dyn std::fmt::Display| RunOutcome {
        error: Some(format!("could not start `{}`: {error}", program.to_string_lossy())),
        ..outcome(RunStatus::Failed, output)
    };
    let pipes = tokio::net::unix::pipe::pipe().and_then(|out| Ok((out, tokio::net::unix::pipe::pipe()?)));
    let ((stdout_tx, stdout_rx), (stderr_tx, stderr_rx)) = match pipes {
        Ok(pipes) => pipes,
        Err(error) => return could_not_start(&error),
    };
    let (stdout, stderr) = match (stdout_tx.into_blocking_fd(), stderr_tx.into_blocking_fd()) {
        (Ok(stdout), Ok(stderr)) => (stdout, stderr),
        (Err(error), _) | (_, Err(error)) => return could_not_start(&error),
    };
    let env = inherited_environment(&job.inherit_env, std::env::vars_os())
        .into_iter()
        .filter(|(name, _)| job.run_as.is_none() || !IDENTITY.iter().any(|own| name == own))
        .chain(job.run_as.iter().flat_map(identity))
        .chain(job.env.iter().map(|(name, value)| (name.into(), value.into())))
        .chain(context.variables().into_iter().map(|(name, value)| (format!("TENURE_{name}").into(), value.into())))
        .collect();
    let not_after = stops.deadline.map(LeaseDeadline::deadline);
    let credentials =
        job.run_as.as_ref().map(|user| Credentials { uid: user.uid, gid: user.gid, groups: user.groups.clone() });
    let spawn = Spawn { program, args, env, workdir: job.workdir.as_deref(), stdout, stderr, not_after, credentials };
    let started = match supervision.start(spawn).await {
        Ok(started) => started,
        Err(error) => return could_not_start(&error),
    };
    // Begun: the supervisor reported the spawn (a stalled supervisor, or a loaded replica,
    // shows here, not in the start the leader recorded ahead).
    let began = Utc::now();
    (stops.on_began)(began);
    let group = started.group;
    let readers = [
        tokio::spawn(copy_into(stdout_rx, output.clone(), false)),
        tokio::spawn(copy_into(stderr_rx, output.clone(), true)),
    ];
    let mut ended = started.ended;
    let (ending, end) = tokio::select! {
        end = &mut ended => (Ending::Exited, end.ok()),
        () = tokio::time::sleep(job.timeout) => (Ending::TimedOut, None),
        () = stops.stop.cancelled() => (Ending::Stopped, None),
        () = stops.lease_lost() => (Ending::LeaseLost, None),
    };
    let end = match end {
        Some(end) => Some(end),
        None if matches!(ending, Ending::LeaseLost) => {
            signal_group(Some(group), Signal::SIGKILL);
            tokio::time::timeout(Duration::from_secs(1), ended).await.ok().and_then(Result::ok)
        }
        None => {
            signal_group(Some(group), Signal::SIGTERM);
            match tokio::time::timeout(KILL_GRACE, &mut ended).await {
                Ok(end) => end.ok(),
                Err(_) => {
                    signal_group(Some(group), Signal::SIGKILL);
                    tokio::time::timeout(Duration::from_secs(1), ended).await.ok().and_then(Result::ok)
                }
            }
        }
    };
    // Children that outlived the job's main process would hold its pipes (and resources) forever.
    // The supervisor killed them already; this is for a supervisor that ended first.
    signal_group(Some(group), Signal::SIGKILL);
    let read_until = tokio::time::Instant::now() + Duration::from_secs(1);
    for mut reader in readers {
        if tokio::time::timeout_at(read_until, &mut reader).await.is_err() {
            // A descendant that left the group (`setsid`, a daemon) still holds the pipe: stop
            // reading rather than keep this task and its buffer for as long as that one lives.
            reader.abort();
        }
    }
    let (status, exit_code, error) = judge(ending, end, job, supervision);
    RunOutcome { exit_code, error, began_at: Some(began), ..outcome(status, output) }
}

/// What a run that ended this way is recorded as: status, exit code, error.
fn judge(
    ending: Ending,
    end: Option<Ended>,
    job: &Job,
    supervision: &Supervision,
) -> (RunStatus, Option<i32>, Option<String>) {
    let ending = match end {
        Some(Ended::Silent) => Ending::Abandoned,
        _ => ending,
    };
    let exit: Result<ExitStatus, String> = match end {
        Some(Ended::Exited(status)) => Ok(status),
        Some(Ended::Silent) => Err("killed by its supervisor".to_owned()),
        Some(Ended::SupervisorGone) | None => Err("its supervisor ended without a report".to_owned()),
    };
    let exit_code = exit.as_ref().ok().and_then(|status| status.code());
    let (status, error) = match (ending, exit) {
        (Ending::TimedOut, _) => {
            let limit = humantime::format_duration(job.timeout);
            (RunStatus::TimedOut, Some(format!("timed out after {limit}")))
        }
        (Ending::Stopped, _) => (RunStatus::Killed, Some("stopped by tenure".to_owned())),
        (Ending::LeaseLost, _) => (RunStatus::Killed, Some(LEASE_LOST.to_owned())),
        (Ending::Abandoned, _) => {
            let limit = humantime::format_duration(supervision.silence_limit());
            (RunStatus::Killed, Some(format!("killed by its supervisor: tenure did not answer for {limit}")))
        }
        (Ending::Exited, Ok(status)) if status.success() => (RunStatus::Succeeded, None),
        (Ending::Exited, Ok(status)) => (RunStatus::Failed, Some(describe_exit(status))),
        (Ending::Exited, Err(error)) => (RunStatus::Failed, Some(error)),
    };
    (status, exit_code, error)
}

#[derive(Debug, Clone, Copy)]
enum Ending {
    Exited,
    TimedOut,
    Stopped,
    /// Its execution lease was lost: SIGKILLed at once.
    LeaseLost,
    /// Its supervisor killed it: this replica had gone quiet (frozen) for the silence limit.
    Abandoned,
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended without a status".to_owned(),
    }
}

fn signal_group(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        // ESRCH (the group is already gone) is the common, harmless case.
        let _ = killpg(group, signal);
    }
}

/// Copy a pipe into the tail; stderr's lines marked (`STDERR_MARK`).
async fn copy_into(mut pipe: impl AsyncRead + Unpin, output: OutputTail, stderr: bool) {
    let mut buffer = vec![0u8; 8192];
    let mut at_line_start = true;
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) if stderr => output.push_stderr(&buffer[..n], &mut at_line_start),
            Ok(n) => output.push(&buffer[..n]),
        }
    }
}

/// The request of an HTTP attempt: the target's method, URL, body and headers, the run's values
/// as `X-Tenure-*` headers, and the job's timeout.
fn build_request(
    target: &HttpTarget,
    timeout: Duration,
    context: &RunContext,
    http: &reqwest::Client,
) -> Result<reqwest::Request, String> {
    let method = reqwest::Method::from_bytes(target.method.as_bytes()).map_err(|e| format!("invalid method: {e}"))?;
    let url = target.url.url_value()?;
    let mut request = http.request(method, url).timeout(timeout).body(target.body.clone());
    for (name, value) in &target.headers {
        request = request.header(name, value.header_value(name)?);
    }
    for (name, value) in context.variables() {
        request = request.header(format!("X-Tenure-{}", name.replace('_', "-")), value);
    }
    request.build().map_err(|error| request_failure(&error, target))
}

/// Why an HTTP attempt failed, with its URL as pages show it: reqwest's own message quotes the
/// URL whole, query values (and for a URL read from elsewhere, all of it) included.
fn request_failure(error: &reqwest::Error, target: &HttpTarget) -> String {
    format!("{} (url {})", crate::deadman::request_failure(error), target.url.shown_url())
}

/// Send the request and read the answer; `began` is set (and `on_began` told) as it begins to
/// be sent.
async fn run_http(
    request: Result<reqwest::Request, String>,
    target: &HttpTarget,
    timeout: Duration,
    output: &OutputTail,
    http: &reqwest::Client,
    stops: Stops<'_>,
    began: &OnceLock<DateTime<Utc>>,
) -> RunOutcome {
    let request = match request {
        Ok(request) => request,
        Err(error) => return RunOutcome { error: Some(error), ..outcome(RunStatus::Failed, output) },
    };
    let at = Utc::now();
    let _ = began.set(at);
    (stops.on_began)(at);
    // Every outcome from here on is of a request that began.
    let ended = |status| RunOutcome { began_at: Some(at), ..outcome(status, output) };
    let stop = stops.stop;
    let exchange = async {
        let mut response = http.execute(request).await?;
        let status = response.status().as_u16();
        while let Some(chunk) = response.chunk().await? {
            output.push(&chunk);
        }
        Ok::<u16, reqwest::Error>(status)
    };
    let result = tokio::select! {
        result = exchange => result,
        () = stop.cancelled() => {
            return RunOutcome { error: Some("stopped by tenure".to_owned()), ..ended(RunStatus::Killed) };
        }
    };
    match result {
        Ok(status) => {
            let expected = if target.expect_status.is_empty() {
                (200..300).contains(&status)
            } else {
                target.expect_status.contains(&status)
            };
            RunOutcome {
                http_status: Some(status),
                error: (!expected).then(|| format!("unexpected HTTP status {status}")),
                ..ended(if expected { RunStatus::Succeeded } else { RunStatus::Failed })
            }
        }
        Err(error) if error.is_timeout() => RunOutcome {
            error: Some(format!("timed out after {}", humantime::format_duration(timeout))),
            ..ended(RunStatus::TimedOut)
        },
        Err(error) => RunOutcome { error: Some(request_failure(&error, target)), ..ended(RunStatus::Failed) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(environment: &[(OsString, OsString)]) -> Vec<&str> {
        let mut names: Vec<&str> = environment.iter().map(|(name, _)| name.to_str().unwrap()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn a_record_separator_a_job_prints_never_passes_for_the_stderr_mark() {
        let tail = OutputTail::default();
        let mut at_line_start = true;
        tail.push(b"\x1eout one\n");
        tail.push_stderr(b"err \x1e two\n", &mut at_line_start);
        let lines: Vec<(bool, String)> = tail
            .text()
            .lines()
            .map(|line| (line.starts_with(STDERR_MARK), line.trim_start_matches(STDERR_MARK).to_owned()))
            .collect();
        assert_eq!(lines, [(false, "\u{241e}out one".to_owned()), (true, "err \u{241e} two".to_owned())]);
        assert_eq!(plain_output(&tail.text()), "\u{241e}out one\nerr \u{241e} two\n");
    }

    #[test]
    fn a_job_inherits_the_documented_variables_and_what_it_names_never_tenures_settings() {
        let parent = [
            ("PATH", "/opt/bin:/usr/bin"),
            ("HOME", "/home/ops"),
            ("LANG", "de_DE.UTF-8"),
            ("LC_TIME", "C"),
            ("TZ", "Europe/Berlin"),
            ("TENURE_ADMIN_TOKEN", "secret"),
            ("TENURE_DATABASE_URL", "postgres://secret"),
            ("TENURE_FOO", "x"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_SECRET_ACCESS_KEY", "not asked for"),
            ("DISPLAY", ":0"),
        ]
        .map(|(name, value)| (OsString::from(name), OsString::from(value)));
        let plain = inherited_environment(&[], parent.clone());
        assert_eq!(names(&plain), ["HOME", "LANG", "LC_TIME", "PATH", "TZ"]);
        assert!(plain.contains(&("PATH".into(), "/opt/bin:/usr/bin".into())));

        // Even a `TENURE_*` name slipped into the list (the job file refuses one) is not passed on.
        let asked = inherited_environment(&["AWS_REGION".into(), "TENURE_FOO".into(), "UNSET".into()], parent);
        assert_eq!(names(&asked), ["AWS_REGION", "HOME", "LANG", "LC_TIME", "PATH", "TZ"]);
    }

    #[test]
    fn a_job_gets_a_path_even_when_tenure_has_none() {
        let environment = inherited_environment(&[], [(OsString::from("HOME"), OsString::from("/root"))]);
        assert!(environment.contains(&("PATH".into(), DEFAULT_PATH.into())), "{environment:?}");
    }
}
