//! Runs one attempt of one job: a command or shell script in its own process group, under a
//! supervisor that kills the group if this replica dies or freezes (see `supervisor`), or an HTTP
//! request. Knows nothing of leadership or the ledger: the caller claims the slot first, passes a
//! `stop` token (cancelled on leadership loss, `replace` or shutdown) and records the outcome.
//!
//! A process starts from a cleared environment: the few variables of tenure's own that every
//! program expects ([`INHERITED`], every `LC_*`), those the job's `inherit_env` names, the job's
//! `env`, then the run's `TENURE_*` values. tenure's configuration (`TENURE_ADMIN_TOKEN`,
//! `TENURE_DATABASE_URL`, any `TENURE_*`) never reaches a job.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::config::{HttpTarget, Job, Target};
use crate::model::{OUTPUT_LIMIT, RunOutcome, RunStatus};
use crate::supervisor::{self, Report, Supervision};

/// Between SIGTERM and SIGKILL of a job's process group.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long a supervisor may take to start its job and say so.
const SUPERVISOR_START: Duration = Duration::from_secs(10);

/// What every command or shell job inherits from tenure's environment (with every `LC_*`): how to
/// find programs, whose home and shell, the locale and time zone; what cron hands its jobs, plus
/// the locale and `TMPDIR`. Anything else must be named in the job's `inherit_env`.
pub const INHERITED: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"];

/// `PATH` for a job when tenure itself has none (as cron does).
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

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
}

impl RunContext {
    fn variables(&self) -> [(&'static str, String); 6] {
        [
            ("JOB", self.job.clone()),
            ("SLOT", self.slot.to_rfc3339_opts(SecondsFormat::Secs, true)),
            ("TERM", self.term.to_string()),
            ("RUN_ID", self.run_id.to_string()),
            ("NODE", self.node.clone()),
            ("ATTEMPT", self.attempt.to_string()),
        ]
    }
}

/// The last `OUTPUT_LIMIT` bytes a run printed, shared with whoever wants to watch it live.
#[derive(Debug, Clone, Default)]
pub struct OutputTail {
    bytes: Arc<Mutex<VecDeque<u8>>>,
}

impl OutputTail {
    fn push(&self, chunk: &[u8]) {
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

/// Run one attempt of `job`. Never panics on the job's behalf: every failure is an outcome.
pub async fn execute(
    job: &Job,
    context: &RunContext,
    output: &OutputTail,
    http: &reqwest::Client,
    supervision: &Supervision,
    stop: &CancellationToken,
) -> RunOutcome {
    match &job.target {
        Target::Command { argv } => {
            let command = supervision.wrap(argv[0].as_ref(), &argv[1..]);
            run_process(command.into(), argv[0].as_ref(), job, context, output, supervision, stop).await
        }
        Target::Shell { script } => {
            let command = supervision.wrap("/bin/sh".as_ref(), ["-c", script.as_str()]);
            run_process(command.into(), "/bin/sh".as_ref(), job, context, output, supervision, stop).await
        }
        Target::Http(target) => run_http(target, job.timeout, context, output, http, stop).await,
    }
}

fn outcome(status: RunStatus, output: &OutputTail) -> RunOutcome {
    RunOutcome {
        status,
        exit_code: None,
        http_status: None,
        error: None,
        output: output.text(),
        finished_at: Utc::now(),
    }
}

/// `command` is the job's `program` wrapped in its supervisor (`Supervision::wrap`): what is set
/// here (environment, directory, output pipes) the supervisor passes on to the job.
async fn run_process(
    mut command: Command,
    program: &std::ffi::OsStr,
    job: &Job,
    context: &RunContext,
    output: &OutputTail,
    supervision: &Supervision,
    stop: &CancellationToken,
) -> RunOutcome {
    let could_not_start = |error: &dyn std::fmt::Display| RunOutcome {
        error: Some(format!("could not start `{}`: {error}", program.to_string_lossy())),
        ..outcome(RunStatus::Failed, output)
    };
    // The supervisor's stdin is its line to this replica; the job's stdin is /dev/null.
    let (replica_end, supervisor_end) = match socket_pair() {
        Ok(pair) => pair,
        Err(error) => return could_not_start(&error),
    };
    command
        .env_clear()
        .envs(inherited_environment(&job.inherit_env, std::env::vars_os()))
        .envs(&job.env)
        .envs(context.variables().map(|(name, value)| (format!("TENURE_{name}"), value)))
        .stdin(Stdio::from(OwnedFd::from(supervisor_end)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Out of the replica's process group, so a ctrl-c meant for the replica does not reach it.
        // No kill_on_drop: a supervisor killed outright could not kill the job's group; one whose
        // replica end closes (when this future is dropped) does.
        .process_group(0);
    if let Some(workdir) = &job.workdir {
        command.current_dir(workdir);
    }
    let spawned = command.spawn();
    // The command holds the supervisor's end of the socket: close it here, so the supervisor sees
    // end-of-file when this replica's end goes.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => return could_not_start(&error),
    };
    let readers = [
        child.stdout.take().map(|pipe| tokio::spawn(copy_into(pipe, output.clone()))),
        child.stderr.take().map(|pipe| tokio::spawn(copy_into(pipe, output.clone()))),
    ];
    let (mut reports, heartbeats) = replica_end.into_split();
    let group = match next_report(&mut reports, SUPERVISOR_START).await {
        Some(Report::Started(group)) => Pid::from_raw(group),
        started => {
            // Closing this end makes a supervisor that is still there kill whatever it started.
            drop((reports, heartbeats));
            let status = child.wait().await;
            let error = match started {
                Some(Report::Failed(error)) => error,
                _ => format!("its supervisor ended without starting it ({})", describe_wait(&status)),
            };
            return could_not_start(&error);
        }
    };
    // Until the run is over; dropped (and the socket closed) with this future in any case.
    let _heartbeats = AbortOnDropHandle::new(tokio::spawn(send_heartbeats(heartbeats)));

    let (mut ending, exited) = tokio::select! {
        status = child.wait() => (Ending::Exited, Some(status)),
        () = tokio::time::sleep(job.timeout) => (Ending::TimedOut, None),
        () = stop.cancelled() => (Ending::Stopped, None),
    };
    let supervisor_exit = match exited {
        Some(status) => status,
        None => {
            // The supervisor exits as soon as the job's main process does.
            signal_group(Some(group), Signal::SIGTERM);
            match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    signal_group(Some(group), Signal::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    // Children that outlived the job's main process would hold its pipes (and resources) forever.
    // The supervisor killed them already; this is for a supervisor that died first.
    signal_group(Some(group), Signal::SIGKILL);
    for reader in readers.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
    }

    // The supervisor wrote its report before it exited.
    let exit: Result<ExitStatus, String> = match next_report(&mut reports, Duration::from_secs(1)).await {
        Some(Report::Exited(status)) => Ok(status),
        Some(Report::Silent) => {
            ending = Ending::Abandoned;
            Err("killed by its supervisor".to_owned())
        }
        Some(Report::Failed(error)) => Err(error),
        Some(Report::Started(_)) | None => {
            Err(format!("its supervisor ended without a report ({})", describe_wait(&supervisor_exit)))
        }
    };
    let exit_code = exit.as_ref().ok().and_then(|status| status.code());
    let (status, error) = match (ending, &exit) {
        (Ending::TimedOut, _) => {
            let limit = humantime::format_duration(job.timeout);
            (RunStatus::TimedOut, Some(format!("timed out after {limit}")))
        }
        (Ending::Stopped, _) => (RunStatus::Killed, Some("stopped by tenure".to_owned())),
        (Ending::Abandoned, _) => {
            let limit = humantime::format_duration(supervision.silence_limit());
            (RunStatus::Killed, Some(format!("killed by its supervisor: tenure did not answer for {limit}")))
        }
        (Ending::Exited, Ok(status)) if status.success() => (RunStatus::Succeeded, None),
        (Ending::Exited, Ok(status)) => (RunStatus::Failed, Some(describe_exit(*status))),
        (Ending::Exited, Err(error)) => (RunStatus::Failed, Some(format!("wait failed: {error}"))),
    };
    RunOutcome { exit_code, error, ..outcome(status, output) }
}

#[derive(Debug, Clone, Copy)]
enum Ending {
    Exited,
    TimedOut,
    Stopped,
    /// Its supervisor killed it: this replica had gone quiet (frozen) for the silence limit.
    Abandoned,
}

/// A connected pair of Unix sockets: this replica's end (async) and the supervisor's.
fn socket_pair() -> std::io::Result<(tokio::net::UnixStream, std::os::unix::net::UnixStream)> {
    let (replica_end, supervisor_end) = std::os::unix::net::UnixStream::pair()?;
    replica_end.set_nonblocking(true)?;
    Ok((tokio::net::UnixStream::from_std(replica_end)?, supervisor_end))
}

/// The supervisor's next report, or `None` if it sends none within `wait`.
async fn next_report(reports: &mut OwnedReadHalf, wait: Duration) -> Option<Report> {
    // Byte by byte up to the newline: reports are rare and short, and nothing may be read past
    // the one asked for.
    let read_line = async {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while reports.read_exact(&mut byte).await.is_ok() {
            if byte[0] == b'\n' {
                return Report::parse(&String::from_utf8_lossy(&line));
            }
            line.push(byte[0]);
        }
        None
    };
    tokio::time::timeout(wait, read_line).await.ok().flatten()
}

/// Tell the supervisor every `HEARTBEAT` that this replica is alive, until the run is over.
async fn send_heartbeats(mut socket: OwnedWriteHalf) {
    let mut ticks = tokio::time::interval(supervisor::HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if socket.write_all(b".").await.is_err() {
            return;
        }
    }
}

fn describe_wait(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => describe_exit(*status),
        Err(error) => format!("wait failed: {error}"),
    }
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

async fn copy_into(mut pipe: impl AsyncRead + Unpin, output: OutputTail) {
    let mut buffer = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => output.push(&buffer[..n]),
        }
    }
}

async fn run_http(
    target: &HttpTarget,
    timeout: Duration,
    context: &RunContext,
    output: &OutputTail,
    http: &reqwest::Client,
    stop: &CancellationToken,
) -> RunOutcome {
    let method = match reqwest::Method::from_bytes(target.method.as_bytes()) {
        Ok(method) => method,
        Err(error) => {
            return RunOutcome {
                error: Some(format!("invalid method: {error}")),
                ..outcome(RunStatus::Failed, output)
            };
        }
    };
    let mut request = http.request(method, &target.url).timeout(timeout).body(target.body.clone());
    for (name, value) in &target.headers {
        request = request.header(name, value);
    }
    for (name, value) in context.variables() {
        request = request.header(format!("X-Tenure-{}", name.replace('_', "-")), value);
    }
    let exchange = async {
        let mut response = request.send().await?;
        let status = response.status().as_u16();
        while let Some(chunk) = response.chunk().await? {
            output.push(&chunk);
        }
        Ok::<u16, reqwest::Error>(status)
    };
    let result = tokio::select! {
        result = exchange => result,
        () = stop.cancelled() => {
            return RunOutcome { error: Some("stopped by tenure".to_owned()), ..outcome(RunStatus::Killed, output) };
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
                ..outcome(if expected { RunStatus::Succeeded } else { RunStatus::Failed }, output)
            }
        }
        Err(error) if error.is_timeout() => RunOutcome {
            error: Some(format!("timed out after {}", humantime::format_duration(timeout))),
            ..outcome(RunStatus::TimedOut, output)
        },
        Err(error) => {
            RunOutcome { error: Some(format!("request failed: {error}")), ..outcome(RunStatus::Failed, output) }
        }
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
