//! The files a replica reads while it runs: the job file and the sign-in policy, each read off
//! the async runtime and read again when it changes or on SIGHUP; an invalid one keeps the last
//! good one in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{self, JobSet};
use crate::http;
use crate::model::Member;
use crate::telemetry::{self, metric};

/// How often the job file's size and modification time are compared (a change triggers a reload;
/// SIGHUP forces one). Polling rather than inotify: a Kubernetes ConfigMap update swaps a symlink,
/// which inotify watches on the file do not see.
const JOB_FILE_POLL: Duration = Duration::from_secs(1);
/// How much lower than the rest of the replica the thread that reads the job file runs (`nice`,
/// added to the replica's own, at most 19): a large file takes a core for seconds, and when the
/// CPU is short the firing path's threads get it first.
const JOB_FILE_NICENESS: i32 = 10;

/// What prompts a look at a watched file: the poll's tick, or SIGHUP, which forces a read.
struct Prompts {
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Prompts {
    fn new(what: &str) -> Prompts {
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reloading {what} on changes only");
                None
            }
        };
        Prompts { hangup }
    }

    /// The next prompt: `Some(true)` for SIGHUP, `Some(false)` for the poll's tick, `None` once
    /// `shutdown` is cancelled.
    async fn next(&mut self, shutdown: &CancellationToken) -> Option<bool> {
        let hangup = async {
            match self.hangup.as_mut() {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => None,
            () = tokio::time::sleep(JOB_FILE_POLL) => Some(false),
            Some(()) = hangup => Some(true),
        }
    }
}

/// Reload the job file when it changes or on SIGHUP. An invalid file keeps the last good one;
/// its first errors are logged, the rest counted. The file is read off the async runtime
/// (`load_jobs_apart`), so however large or hostile it is, no slot waits for it.
pub(super) async fn watch_job_file(
    path: PathBuf,
    retain: Duration,
    jobs: watch::Sender<Arc<JobSet>>,
    member: watch::Sender<Member>,
    shutdown: CancellationToken,
) {
    let mut prompts = Prompts::new("the job file");
    let mut seen = file_stamp(&path);
    loop {
        let Some(forced) = prompts.next(&shutdown).await else { return };
        let stamp = file_stamp(&path);
        if !forced && stamp == seen {
            continue;
        }
        seen = stamp;
        let loaded = tokio::select! {
            () = shutdown.cancelled() => return,
            loaded = load_jobs_apart(&path, retain) => loaded,
        };
        match loaded {
            Ok(loaded) if loaded.hash() == jobs.borrow().hash() => {}
            Ok(loaded) => {
                metrics::counter!(metric::JOB_FILE_RELOADS, "result" => "success").increment(1);
                tracing::info!(hash = loaded.hash(), jobs = loaded.jobs().len(), "job file changed; reloading");
                log_warnings(&loaded);
                let previous = jobs.borrow().hash().to_owned();
                telemetry::job_file_loaded(
                    loaded.hash(),
                    Some(&previous),
                    loaded.jobs().iter().map(|job| job.name.as_ref()),
                );
                member.send_modify(|member| member.config_hash = loaded.hash().to_owned());
                jobs.send_replace(Arc::new(loaded));
            }
            Err(errors) => {
                metrics::counter!(metric::JOB_FILE_RELOADS, "result" => "failure").increment(1);
                tracing::error!(
                    file = %path.display(), kept = jobs.borrow().hash(), errors = errors.0.len(),
                    "job file is invalid; keeping the last good one:\n{}", errors.summary(config::LOGGED_ERRORS)
                );
            }
        }
    }
}

/// Read the sign-in policy again when it changes or on SIGHUP, as the job file: a valid one
/// grants from the next sign-in on this replica on; an invalid one is logged, each error with
/// its file, line and column, and the last good one stays in force. The file is small (at most
/// 1 MiB) and read off the async runtime all the same.
pub(super) async fn watch_policy(oidc: Arc<http::Oidc>, path: PathBuf, shutdown: CancellationToken) {
    let mut prompts = Prompts::new("the sign-in policy");
    let read = async |path: &Path| {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || http::read_policy(&path))
            .await
            .unwrap_or_else(|error| Err(error.to_string()))
    };
    // What the policy in force was read from (at start, just before): only a change is read again.
    let mut seen = read(&path).await;
    let file = path.display().to_string();
    loop {
        let Some(forced) = prompts.next(&shutdown).await else { return };
        let text = read(&path).await;
        if !forced && text == seen {
            continue;
        }
        seen = text.clone();
        let parsed = match text {
            Ok(text) => {
                let name = file.clone();
                tokio::task::spawn_blocking(move || http::GroupPolicy::parse(&text, &name))
                    .await
                    .unwrap_or_else(|error| Err(http::PolicyErrors(vec![format!("{file}:1:1: {error}")])))
            }
            Err(error) => Err(http::PolicyErrors(vec![format!("{file}:1:1: {error}")])),
        };
        match parsed {
            Ok(policy) => {
                metrics::counter!(metric::POLICY_RELOADS, "result" => "success").increment(1);
                tracing::info!(
                    file,
                    groups = policy.groups(),
                    "sign-in policy reloaded; the next sign-in is granted by it"
                );
                oidc.set_policy(policy);
            }
            Err(errors) => {
                metrics::counter!(metric::POLICY_RELOADS, "result" => "failure").increment(1);
                tracing::error!(
                    file,
                    errors = errors.0.len(),
                    "the sign-in policy is invalid; keeping the last good one:\n{errors}"
                );
            }
        }
    }
}

/// A job file's warnings (a step that does not divide its field), one log event: the file
/// loads and fires as written; the first `config::LOGGED_ERRORS` are listed, each located.
pub(super) fn log_warnings(jobs: &JobSet) {
    let warnings = jobs.warnings();
    if warnings.is_empty() {
        return;
    }
    let mut listed: Vec<String> =
        warnings.iter().take(config::LOGGED_ERRORS).map(config::ConfigError::as_warning).collect();
    if warnings.len() > config::LOGGED_ERRORS {
        listed.push(format!(
            "... and {} more (`tenure validate` lists them all)",
            warnings.len() - config::LOGGED_ERRORS
        ));
    }
    tracing::warn!(
        hash = jobs.hash(),
        warnings = warnings.len(),
        "the job file loads, but may not fire as meant:\n{}",
        listed.join("\n")
    );
}

/// [`load_jobs`] on a thread of its own, at a lower CPU priority (`JOB_FILE_NICENESS`): never on
/// the async runtime's threads, which fire the slots. The file's size is bounded
/// (`config::MAX_FILE_BYTES`), so the thread's time and memory are too.
pub(super) async fn load_jobs_apart(path: &Path, retain: Duration) -> Result<JobSet, config::ConfigErrors> {
    let whole_file = |message: String| {
        let file = path.display().to_string();
        config::ConfigErrors(vec![config::ConfigError { file, line: 1, column: 1, job: None, message }])
    };
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let owned = path.to_owned();
    let spawned = std::thread::Builder::new().name("tenure-job-file".into()).spawn(move || {
        // On Linux the niceness is per thread: only this one is lowered, relative to the replica's.
        // SAFETY: getpriority and setpriority read no memory of ours; they read and change the
        // calling thread's niceness. A failure leaves the thread at the replica's niceness.
        let base = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, (base + JOB_FILE_NICENESS).min(19)) };
        let _ = sender.send(load_jobs(&owned, retain));
    });
    if let Err(error) = spawned {
        return Err(whole_file(format!("cannot start a thread to read the job file: {error}")));
    }
    receiver.await.unwrap_or_else(|_| Err(whole_file("reading the job file failed unexpectedly".into())))
}

/// Read the job file and check it against the ledger's retention.
fn load_jobs(path: &Path, retain: Duration) -> Result<JobSet, config::ConfigErrors> {
    let jobs = config::load(path)?;
    jobs.check_retention(&path.display().to_string(), retain)?;
    Ok(jobs)
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}
