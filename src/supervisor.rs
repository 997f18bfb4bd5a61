//! Ties each run's processes to the life of the replica that started them. The executor does not
//! start a command or shell job itself: it starts `tenure supervise` (this binary, re-executed;
//! hidden from `--help`), which starts the job in a process group of its own and watches the
//! replica through a Unix socket on its stdin. The replica writes a heartbeat byte every
//! `HEARTBEAT`; the supervisor kills the job's whole process group with SIGKILL when
//!
//! - the socket reaches end-of-file: the replica died (SIGKILL, crash, OOM), since the kernel
//!   closes its end of the socket with its last file descriptor, or
//! - nothing arrives for the silence limit: the replica is alive but frozen (SIGSTOP, a stalled
//!   VM) and cannot stop its own runs. The limit is the lease TTL plus one heartbeat: a replica
//!   silent for that long has lost its lease (its local deadline is at most a TTL after its last
//!   keep-alive), so it would stop the run itself the moment it woke.
//!
//! Why not `PR_SET_PDEATHSIG`: it fires when the *thread* that spawned the supervisor exits, not
//! the process, and tokio's threads come and go; and a supervisor killed by it could not kill the
//! job's group. The socket closes exactly when the process is gone, and the supervisor outlives it.
//!
//! So a run's processes are gone within the silence limit of its replica going quiet, and at once
//! when it dies: `Supervision::lost_after` is how long a leader waits before recording a vanished
//! replica's run `lost`, so a `lost` run has no process left.
//!
//! The socket carries, from the supervisor: `started PID` (the job's process group) or
//! `failed ERROR` (it could not be started), then `exit STATUS` (the raw wait status) or `silent`
//! (killed for the replica's silence). Everything else (environment, working directory, output
//! pipes, timeout, SIGTERM then SIGKILL) stays the executor's: the supervisor passes its own
//! environment, directory, stdout and stderr on to the job and signals nothing but the group.
//! It logs nothing: its output is the job's.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::executor::KILL_GRACE;

/// How often the replica tells each supervisor it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// From a supervisor's decision to its job's group being gone: SIGKILL is delivered at once, but
/// the decision waits for a read timeout and the machine may be loaded.
const KILL_TIME: Duration = Duration::from_secs(1);

/// How the executor starts supervisors, and how long they tolerate silence.
#[derive(Debug, Clone)]
pub struct Supervision {
    /// The `tenure` binary: this very one (`/proc/self/exe`, which survives the file being
    /// replaced by an upgrade), or the one under test when the executor runs in a test process.
    program: PathBuf,
    silence_limit: Duration,
}

impl Supervision {
    /// Supervisors re-executing this binary that kill their run after `silence_limit` without a
    /// heartbeat (`tenure run` passes its lease TTL).
    pub fn new(silence_limit: Duration) -> Supervision {
        Supervision::with_program(PathBuf::from("/proc/self/exe"), silence_limit)
    }

    /// Supervisors started from `program`, a `tenure` binary (tests, whose own binary is not one).
    pub fn with_program(program: PathBuf, silence_limit: Duration) -> Supervision {
        Supervision { program, silence_limit: silence_limit.max(HEARTBEAT * 2) }
    }

    pub fn silence_limit(&self) -> Duration {
        self.silence_limit
    }

    /// How long after a replica vanished none of its runs' processes is left: a dead replica's
    /// supervisors kill theirs at once, a frozen one's within the silence limit, and a replica that
    /// lost its lease but runs stops its own within `KILL_GRACE`. A leader records a vanished
    /// replica's runs `lost` only after this.
    pub fn lost_after(&self) -> Duration {
        self.silence_limit.max(KILL_GRACE) + KILL_TIME
    }

    /// `program args…` wrapped in a supervisor; the caller adds environment, directory and pipes,
    /// which the job inherits, and hands the supervisor its end of the socket as stdin.
    pub(crate) fn wrap(
        &self,
        program: &OsStr,
        args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    ) -> std::process::Command {
        let mut command = std::process::Command::new(&self.program);
        command
            .arg0("tenure")
            .arg("supervise")
            .arg("--silence-limit")
            .arg(humantime::format_duration(self.silence_limit).to_string())
            .arg("--")
            .arg(program)
            .args(args);
        command
    }
}

/// What a supervisor tells the executor, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The job runs; its process group has this id.
    Started(i32),
    /// The job could not be started.
    Failed(String),
    /// The job's main process ended with this status; the rest of its group was killed.
    Exited(std::process::ExitStatus),
    /// The replica went quiet for the silence limit; the job's group was killed.
    Silent,
}

impl Report {
    /// Parse one line; `None` for anything else (a supervisor of another version, garbage).
    pub fn parse(line: &str) -> Option<Report> {
        let (kind, rest) = line.trim_end_matches('\n').split_once(' ').unwrap_or((line.trim_end(), ""));
        match kind {
            "started" => rest.parse().ok().map(Report::Started),
            "failed" => Some(Report::Failed(rest.to_owned())),
            "exit" => rest.parse().ok().map(|raw| Report::Exited(std::process::ExitStatus::from_raw(raw))),
            "silent" => Some(Report::Silent),
            _ => None,
        }
    }

    fn line(&self) -> String {
        match self {
            Report::Started(group) => format!("started {group}\n"),
            Report::Failed(error) => format!("failed {}\n", error.replace('\n', " ")),
            Report::Exited(status) => format!("exit {}\n", status.into_raw()),
            Report::Silent => "silent\n".to_owned(),
        }
    }
}

/// `tenure supervise`: start `program args` in its own process group, watch stdin (the replica's
/// socket), and kill the group when the replica dies or goes quiet. Returns the exit code.
pub fn supervise(silence_limit: Duration, program: &OsStr, args: &[OsString]) -> i32 {
    // A duplicate of stdin, so the job's own stdin can be /dev/null.
    let Ok(control) = std::io::stdin().as_fd().try_clone_to_owned().map(UnixStream::from) else {
        return 2;
    };
    let Ok(mut reports) = control.try_clone() else { return 2 };
    let mut job = std::process::Command::new(program);
    job.args(args).stdin(Stdio::null()).process_group(0);
    let mut child = match job.spawn() {
        Ok(child) => child,
        Err(error) => {
            let _ = reports.write_all(Report::Failed(error.to_string()).line().as_bytes());
            return 1;
        }
    };
    let group = Pid::from_raw(child.id() as i32);
    if reports.write_all(Report::Started(group.as_raw()).line().as_bytes()).is_err() {
        // The replica is gone already.
        end(&Mutex::new(reports), group, &Report::Silent);
    }
    let ending = Mutex::new(reports);
    std::thread::scope(|scope| -> i32 {
        scope.spawn(|| {
            let report = match child.wait() {
                Ok(status) => Report::Exited(status),
                Err(error) => Report::Failed(error.to_string()),
            };
            end(&ending, group, &report);
        });
        watch_replica(control, silence_limit);
        end(&ending, group, &Report::Silent)
    })
}

/// Return when the replica is gone (end-of-file, an error) or silent for `silence_limit`.
fn watch_replica(mut control: UnixStream, silence_limit: Duration) {
    if control.set_read_timeout(Some(silence_limit)).is_err() {
        return;
    }
    let mut buffer = [0u8; 64];
    loop {
        match control.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            // WouldBlock or TimedOut: the read timeout, i.e. silence; anything else: gone.
            Err(_) => return,
        }
    }
}

/// Kill what is left of the job's group, report, and exit. The lock is held until the process
/// exits, so the first of the job's end and the replica's is the only one reported.
fn end(reports: &Mutex<UnixStream>, group: Pid, report: &Report) -> ! {
    let mut reports = reports.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // ESRCH (the group is already gone) is the common, harmless case.
    let _ = killpg(group, Signal::SIGKILL);
    // The replica may be gone; nobody to tell then.
    let _ = reports.write_all(report.line().as_bytes());
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_back_as_written() {
        let reports = [
            Report::Started(4242),
            Report::Failed("No such file or directory (os error 2)".into()),
            Report::Exited(std::process::ExitStatus::from_raw(3 << 8)),
            Report::Exited(std::process::ExitStatus::from_raw(9)),
            Report::Silent,
        ];
        for report in reports {
            assert_eq!(Report::parse(&report.line()), Some(report.clone()), "{report:?}");
        }
        assert_eq!(Report::parse("started x\n"), None);
        assert_eq!(Report::parse("hello\n"), None);
    }

    #[test]
    fn runs_are_lost_only_after_their_processes_are_gone() {
        let ttl = Supervision::new(Duration::from_secs(10));
        assert_eq!(ttl.silence_limit(), Duration::from_secs(10));
        assert!(ttl.lost_after() > ttl.silence_limit() + HEARTBEAT);
        // A short TTL: the replica's own kill grace is the longer wait.
        let short = Supervision::new(Duration::from_secs(1));
        assert!(short.lost_after() > KILL_GRACE);
        assert!(Supervision::new(Duration::ZERO).silence_limit() >= HEARTBEAT * 2, "heartbeats fit in the limit");
    }
}
