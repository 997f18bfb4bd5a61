//! Ties each run's processes to the life of the replica that started them. The executor does not
//! start a command or shell job itself: it asks the replica's supervisor, `tenure supervise` (this
//! binary, re-executed once per replica and again if it ever ends; hidden from `--help`), which
//! starts the job in a process group of its own and watches the replica through a Unix socket on
//! its stdin. The replica writes a heartbeat every `HEARTBEAT`; the supervisor kills every group
//! it started with SIGKILL when
//!
//! - the socket reaches end-of-file: the replica died (SIGKILL, crash, OOM), since the kernel
//!   closes its end of the socket with its last file descriptor, or
//! - nothing arrives for the silence limit: the replica is alive but frozen (SIGSTOP, a stalled
//!   VM) and cannot stop its own runs. The limit is the lease TTL plus one heartbeat: a replica
//!   silent for that long has lost its lease (its local deadline is at most a TTL after its last
//!   keep-alive), so it would stop the run itself the moment it woke.
//!
//! Why not `PR_SET_PDEATHSIG`: it fires when the *thread* that spawned the process exits, not the
//! process, and tokio's threads come and go; it reaches only the job's first process, not what
//! that one starts. The socket closes exactly when the process is gone, and the supervisor
//! outlives it. Why one supervisor per replica and not one per run: starting a run is then one
//! message and one `posix_spawn`, not an extra execution of this (large) binary per run.
//!
//! So a run's processes are gone within the silence limit of its replica going quiet, and at once
//! when it dies: `Supervision::lost_after` is how long a leader waits before recording a vanished
//! replica's run `lost`, so a `lost` run has no process left. A supervisor that ends on its own
//! (killed by someone) is noticed by the replica, which kills the groups of the runs it had
//! started (the executor knows each group) and starts another supervisor for the next run.
//!
//! Jobs cannot read their supervisor: it is not dumpable (`hardening::forbid_inspection`), so its
//! `environ`, `fd/`, `maps` and `mem` are closed to processes of its user (its memory holds every
//! job's environment). A job with `user:` (tenure running as root) is started as that user: the
//! request carries the uid, the primary group and every group, and the child sets them (and then
//! enters its `workdir`, with the user's rights) between fork and exec. posix_spawn cannot change
//! credentials, so such a job is started by fork and exec, not posix_spawn; every other job as
//! before. The fork copies the supervisor, a small process (no runtime, no job file), not the
//! replica.
//!
//! The socket carries, from the replica: a heartbeat (`H`) or a start request (`S`, the run's
//! number, program, arguments, environment, directory, deadline and credentials, with the job's
//! stdout and stderr pipes as `SCM_RIGHTS`). From the supervisor, one line each: `started RUN
//! GROUP`, `failed RUN ERROR`, `exit RUN STATUS` (the raw wait status; the rest of the group is
//! killed first), `silent` (it killed everything for the replica's silence). It logs nothing.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::executor::KILL_GRACE;
use crate::leadership::BootInstant;

/// Why a start request came too late: its attempt's execution lease ended first.
pub const LEASE_ENDED_BEFORE_START: &str = "its execution lease ended before it could start";

/// How often the replica tells its supervisor it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// From a supervisor's decision to its jobs' groups being gone: SIGKILL is delivered at once, but
/// the decision waits for a read timeout and the machine may be loaded.
pub const KILL_TIME: Duration = Duration::from_secs(1);

/// How long a new supervisor may take to answer its first start request.
const SUPERVISOR_START: Duration = Duration::from_secs(10);

/// How runs' processes are started, and how long their supervisor tolerates silence. Clones share
/// one supervisor.
#[derive(Debug, Clone)]
pub struct Supervision {
    /// The `tenure` binary: this very one (`/proc/self/exe`, which survives the file being
    /// replaced by an upgrade), or the one under test when the executor runs in a test process.
    program: PathBuf,
    silence_limit: Duration,
    /// The supervisor, once started; replaced when it ends.
    current: Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>,
}

/// What a job is started as: its program, arguments, environment, directory and output pipes.
pub struct Spawn<'a> {
    pub program: &'a OsStr,
    pub args: Vec<&'a OsStr>,
    pub env: Vec<(OsString, OsString)>,
    pub workdir: Option<&'a std::path::Path>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// For an attempt under an execution lease: its local deadline. The supervisor does not
    /// start the job once that has passed (a supervisor being restarted may take seconds to
    /// take the request, and by then another replica may hold the run).
    pub not_after: Option<BootInstant>,
    /// Whom the job runs as (its `user:`); `None`: the supervisor's own user.
    pub credentials: Option<Credentials>,
}

/// A user to start a job as: its id, primary group and every group (the primary one first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// A job its supervisor started.
pub struct Started {
    /// The job's process group (its first process's id).
    pub group: Pid,
    /// How it ended, once it has.
    pub ended: oneshot::Receiver<Ended>,
}

/// How a supervised job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Its first process exited with this status; the rest of its group was killed.
    Exited(ExitStatus),
    /// The supervisor killed it: the replica was silent for the silence limit.
    Silent,
    /// The supervisor ended without saying (someone killed it); the job's group may live on.
    SupervisorGone,
}

impl Supervision {
    /// A supervisor re-executing this binary that kills its runs after `silence_limit` without a
    /// heartbeat (`tenure run` passes its lease TTL).
    pub fn new(silence_limit: Duration) -> Supervision {
        Supervision::with_program(PathBuf::from("/proc/self/exe"), silence_limit)
    }

    /// A supervisor started from `program`, a `tenure` binary (tests, whose own binary is not one).
    pub fn with_program(program: PathBuf, silence_limit: Duration) -> Supervision {
        Supervision { program, silence_limit: silence_limit.max(HEARTBEAT * 2), current: Arc::default() }
    }

    pub fn silence_limit(&self) -> Duration {
        self.silence_limit
    }

    /// How long after a replica vanished none of its runs' processes is left: a dead replica's
    /// supervisor kills them at once, a frozen one's within the silence limit, and a replica that
    /// lost its lease but runs stops its own within `KILL_GRACE`. A leader records a vanished
    /// replica's runs `lost` only after this.
    pub fn lost_after(&self) -> Duration {
        self.silence_limit.max(KILL_GRACE) + KILL_TIME
    }

    /// Have the supervisor start `spawn` (starting the supervisor first if there is none).
    pub async fn start(&self, spawn: Spawn<'_>) -> Result<Started, String> {
        let connection = self.connection().await?;
        let id = connection.next_id.fetch_add(1, Ordering::Relaxed);
        let (started_tx, started_rx) = oneshot::channel();
        let (ended_tx, ended) = oneshot::channel();
        connection.lock_waiting().insert(id, Waiting { started: Some(started_tx), ended: ended_tx });
        if connection.ended.is_cancelled() {
            // Ended between our look and our entry: nobody would answer it.
            connection.lock_waiting().remove(&id);
            return Err("its supervisor has ended".to_owned());
        }
        let request = Request { bytes: encode_spawn(id, &spawn), fds: [spawn.stdout, spawn.stderr] };
        if connection.requests.send(request).is_err() {
            connection.lock_waiting().remove(&id);
            return Err("its supervisor has ended".to_owned());
        }
        match tokio::time::timeout(SUPERVISOR_START, started_rx).await {
            Ok(Ok(Ok(group))) => Ok(Started { group, ended }),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err("its supervisor ended before starting it".to_owned()),
            Err(_) => {
                // A supervisor this slow is no use: kill it (its runs with it); the next run
                // starts another.
                connection.lock_waiting().remove(&id);
                let _ = connection.kill.send(());
                Err(format!("its supervisor did not answer within {SUPERVISOR_START:?}"))
            }
        }
    }

    async fn connection(&self) -> Result<Arc<Connection>, String> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref().filter(|c| !c.ended.is_cancelled()) {
            return Ok(connection.clone());
        }
        let connection = Arc::new(
            Connection::start(&self.program, self.silence_limit)
                .map_err(|e| format!("could not start its supervisor `{}`: {e}", self.program.display()))?,
        );
        *current = Some(connection.clone());
        Ok(connection)
    }
}

/// This replica's side of its supervisor: a writer task (requests and heartbeats), a reader task
/// (reports), and the supervisor process.
#[derive(Debug)]
struct Connection {
    /// Cancelled once the supervisor has ended and every run waiting on it was told.
    ended: tokio_util::sync::CancellationToken,
    requests: mpsc::UnboundedSender<Request>,
    waiting: Arc<Mutex<HashMap<u64, Waiting>>>,
    next_id: AtomicU64,
    kill: mpsc::UnboundedSender<()>,
}

#[derive(Debug)]
struct Waiting {
    started: Option<oneshot::Sender<Result<Pid, String>>>,
    ended: oneshot::Sender<Ended>,
}

#[derive(Debug)]
struct Request {
    bytes: Vec<u8>,
    fds: [OwnedFd; 2],
}

impl Connection {
    fn start(program: &std::path::Path, silence_limit: Duration) -> std::io::Result<Connection> {
        let (replica_end, supervisor_end) = UnixStream::pair()?;
        replica_end.set_nonblocking(true)?;
        let mut command = tokio::process::Command::new(program);
        command
            .arg0("tenure")
            .arg("supervise")
            .arg("--silence-limit")
            .arg(humantime::format_duration(silence_limit).to_string())
            .env_clear()
            // Its allocator marks no memory for transparent huge pages (mimalloc's own option,
            // read at its start): the replica's `PR_SET_THP_DISABLE` is cleared again in the
            // supervisor for its jobs' sake, and its arena, marked, grew by 2 MiB steps.
            .env("MIMALLOC_ALLOW_THP", "0")
            .stdin(Stdio::from(OwnedFd::from(supervisor_end)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Out of the replica's process group, so a ctrl-c meant for the replica does not
            // reach it. No kill_on_drop: a supervisor killed outright could not kill its groups.
            .process_group(0);
        // The supervisor, and so every job, runs with the soft open-files limit the replica was
        // started with, not the one the replica raised for itself.
        // SAFETY: between fork and exec the closure only calls getrlimit and setrlimit.
        unsafe { command.pre_exec(crate::fds::restore_soft_limit_for_children) };
        let mut child = command.spawn()?;
        let socket = tokio::net::UnixStream::from_std(replica_end)?;
        let (reader, writer) = socket.into_split();
        let waiting: Arc<Mutex<HashMap<u64, Waiting>>> = Arc::default();
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (kill, mut kill_rx) = mpsc::unbounded_channel::<()>();
        tokio::spawn(write_requests(writer, requests_rx));
        let reports = tokio::spawn(read_reports(reader, waiting.clone()));
        let on_end = waiting.clone();
        let ended = tokio_util::sync::CancellationToken::new();
        let ended_on_end = ended.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = child.wait() => {}
                _ = kill_rx.recv() => { let _ = child.kill().await; }
            }
            let _ = reports.await;
            // Whatever it had not reported is gone with it.
            for (_, waiting) in on_end.lock().unwrap_or_else(|p| p.into_inner()).drain() {
                let _ = waiting.ended.send(Ended::SupervisorGone);
            }
            ended_on_end.cancel();
        });
        Ok(Connection { ended, requests, waiting, next_id: AtomicU64::new(1), kill })
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Send each request with its pipes, and a heartbeat every `HEARTBEAT`, until the socket fails or
/// every sender is gone.
async fn write_requests(mut socket: tokio::net::unix::OwnedWriteHalf, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sent = tokio::select! {
            biased;
            request = requests.recv() => match request {
                Some(request) => send_request(&mut socket, request).await,
                None => return,
            },
            _ = ticks.tick() => socket.write_all(b"H").await,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// The request's first byte goes with its pipes (`SCM_RIGHTS`), the rest after it; our copies of
/// the pipes close once sent.
async fn send_request(socket: &mut tokio::net::unix::OwnedWriteHalf, request: Request) -> std::io::Result<()> {
    let fds = [request.fds[0].as_raw_fd(), request.fds[1].as_raw_fd()];
    let raw = socket.as_ref().as_raw_fd();
    socket
        .as_ref()
        .async_io(tokio::io::Interest::WRITABLE, || {
            let rights = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(raw, &[IoSlice::new(&request.bytes[..1])], &rights, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(std::io::Error::from)
        })
        .await?;
    socket.write_all(&request.bytes[1..]).await
}

/// Hand each report to the run waiting for it, until the supervisor's end closes.
async fn read_reports(socket: tokio::net::unix::OwnedReadHalf, waiting: Arc<Mutex<HashMap<u64, Waiting>>>) {
    let mut lines = BufReader::new(socket).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
        match Report::parse(&line) {
            Some(Report::Started(id, group)) => {
                if let Some(started) = waiting.get_mut(&id).and_then(|w| w.started.take()) {
                    let _ = started.send(Ok(Pid::from_raw(group)));
                }
            }
            Some(Report::Failed(id, error)) => {
                if let Some(started) = waiting.remove(&id).and_then(|w| w.started) {
                    let _ = started.send(Err(error));
                }
            }
            Some(Report::Exited(id, status)) => {
                if let Some(run) = waiting.remove(&id) {
                    let _ = run.ended.send(Ended::Exited(status));
                }
            }
            Some(Report::Silent) => {
                for (_, run) in waiting.drain() {
                    let _ = run.ended.send(Ended::Silent);
                }
            }
            None => {}
        }
    }
}

/// What a supervisor tells the replica, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Run `.0` runs; its process group has this id.
    Started(u64, i32),
    /// Run `.0` could not be started.
    Failed(u64, String),
    /// Run `.0`'s first process ended with this status; the rest of its group was killed.
    Exited(u64, ExitStatus),
    /// The replica went quiet for the silence limit; every group was killed.
    Silent,
}

impl Report {
    /// Parse one line; `None` for anything else (a supervisor of another version, garbage).
    pub fn parse(line: &str) -> Option<Report> {
        let mut words = line.trim_end_matches('\n').splitn(3, ' ');
        let kind = words.next()?;
        if kind == "silent" {
            return Some(Report::Silent);
        }
        let id: u64 = words.next()?.parse().ok()?;
        let rest = words.next()?;
        match kind {
            "started" => rest.parse().ok().map(|group| Report::Started(id, group)),
            "failed" => Some(Report::Failed(id, rest.to_owned())),
            "exit" => rest.parse().ok().map(|raw| Report::Exited(id, ExitStatus::from_raw(raw))),
            _ => None,
        }
    }

    fn line(&self) -> String {
        match self {
            Report::Started(id, group) => format!("started {id} {group}\n"),
            Report::Failed(id, error) => format!("failed {id} {}\n", error.replace('\n', " ")),
            Report::Exited(id, status) => format!("exit {id} {}\n", status.into_raw()),
            Report::Silent => "silent\n".to_owned(),
        }
    }
}

/// A start request: `S`, the run's number, then program, arguments, environment (`NAME=value`)
/// and directory (empty: inherited), each as a length and bytes.
fn encode_spawn(id: u64, spawn: &Spawn<'_>) -> Vec<u8> {
    let mut bytes = vec![b'S'];
    bytes.extend_from_slice(&id.to_le_bytes());
    let mut field = |value: &[u8]| {
        bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
        bytes.extend_from_slice(value);
    };
    field(spawn.program.as_bytes());
    field(&(spawn.args.len() as u32).to_le_bytes());
    for arg in &spawn.args {
        field(arg.as_bytes());
    }
    field(&(spawn.env.len() as u32).to_le_bytes());
    for (name, value) in &spawn.env {
        field(&[name.as_bytes(), b"=", value.as_bytes()].concat());
    }
    field(spawn.workdir.map_or(&[][..], |dir| dir.as_os_str().as_bytes()));
    field(&spawn.not_after.map_or(0, |deadline| deadline.nanos()).to_le_bytes());
    // Credentials: empty for none, else uid, gid and the groups, four bytes each.
    let credentials: Vec<u8> = spawn
        .credentials
        .as_ref()
        .map_or_else(Vec::new, |c| [c.uid, c.gid].iter().chain(&c.groups).flat_map(|id| id.to_le_bytes()).collect());
    field(&credentials);
    bytes
}

/// A decoded start request.
struct Job {
    id: u64,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    workdir: Option<OsString>,
    /// Nanoseconds of `CLOCK_BOOTTIME` after which it must not start; 0 for none.
    not_after: u64,
    credentials: Option<Credentials>,
}

/// Read the rest of a start request (after its `S`).
fn read_spawn(stream: &mut impl Read) -> std::io::Result<Job> {
    let mut id = [0u8; 8];
    stream.read_exact(&mut id)?;
    let mut field = || -> std::io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let mut value = vec![0u8; u32::from_le_bytes(len) as usize];
        stream.read_exact(&mut value)?;
        Ok(value)
    };
    let count = |bytes: Vec<u8>| bytes.try_into().map(u32::from_le_bytes).unwrap_or(0);
    let program = OsString::from_vec(field()?);
    let args = (0..count(field()?)).map(|_| field().map(OsString::from_vec)).collect::<Result<_, _>>()?;
    let env = (0..count(field()?))
        .map(|_| {
            let entry = field()?;
            let at = entry.iter().position(|b| *b == b'=').unwrap_or(entry.len());
            let value = entry.get(at + 1..).unwrap_or_default().to_vec();
            Ok((OsString::from_vec(entry[..at].to_vec()), OsString::from_vec(value)))
        })
        .collect::<std::io::Result<_>>()?;
    let workdir = Some(field()?).filter(|dir| !dir.is_empty()).map(OsString::from_vec);
    let not_after = field()?.try_into().map(u64::from_le_bytes).unwrap_or(0);
    let ids: Vec<u32> =
        field()?.chunks_exact(4).map(|id| u32::from_le_bytes(id.try_into().unwrap_or_default())).collect();
    let credentials = match ids.as_slice() {
        [] => None,
        [uid, gid, groups @ ..] => Some(Credentials { uid: *uid, gid: *gid, groups: groups.to_vec() }),
        [_] => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "credentials without a group")),
    };
    Ok(Job { id: u64::from_le_bytes(id), program, args, env, workdir, not_after, credentials })
}

/// The groups a supervisor started and has not seen end, and its line to the replica.
struct Supervisor {
    groups: Mutex<HashMap<u64, Pid>>,
    reports: Mutex<UnixStream>,
}

impl Supervisor {
    fn report(&self, report: &Report) {
        // The replica may be gone; nobody to tell then.
        let _ = self.reports.lock().unwrap_or_else(|p| p.into_inner()).write_all(report.line().as_bytes());
    }

    /// Start `job` with the pipes it came with; a thread waits for its end.
    fn start(self: &Arc<Supervisor>, job: Job, fds: Vec<OwnedFd>) {
        let [stdout, stderr]: [OwnedFd; 2] = match fds.try_into() {
            Ok(fds) => fds,
            Err(_) => return self.report(&Report::Failed(job.id, "no output pipes came with it".to_owned())),
        };
        if job.not_after != 0 && BootInstant::now().nanos() >= job.not_after {
            return self.report(&Report::Failed(job.id, LEASE_ENDED_BEFORE_START.to_owned()));
        }
        let mut command = std::process::Command::new(&job.program);
        command
            .args(&job.args)
            .env_clear()
            .envs(job.env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        match (job.credentials, &job.workdir) {
            (Some(credentials), workdir) => {
                let Ok(workdir) = workdir.as_ref().map(|dir| std::ffi::CString::new(dir.as_bytes())).transpose() else {
                    return self.report(&Report::Failed(job.id, "its workdir holds a NUL byte".to_owned()));
                };
                become_user(&mut command, credentials, workdir);
            }
            (None, Some(dir)) => _ = command.current_dir(dir),
            (None, None) => {}
        }
        // Registered before its waiter can see it end.
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                drop(groups);
                return self.report(&Report::Failed(job.id, error.to_string()));
            }
        };
        let group = Pid::from_raw(child.id() as i32);
        groups.insert(job.id, group);
        drop(groups);
        self.report(&Report::Started(job.id, group.as_raw()));
        let supervisor = self.clone();
        let id = job.id;
        let waiter = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
            let status = wait(group);
            let mut groups = supervisor.groups.lock().unwrap_or_else(|p| p.into_inner());
            groups.remove(&id);
            // ESRCH (the group is already gone) is the common, harmless case.
            let _ = killpg(group, Signal::SIGKILL);
            drop(groups);
            supervisor.report(&Report::Exited(id, status));
        });
        if waiter.is_err() {
            let _ = killpg(group, Signal::SIGKILL);
            self.report(&Report::Failed(id, "could not watch it".to_owned()));
        }
    }

    /// Kill every group, say why, and exit. The lock is held until the process exits, so no group
    /// is started or reported meanwhile.
    fn end(&self, report: Option<&Report>) -> ! {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        for group in groups.values() {
            let _ = killpg(*group, Signal::SIGKILL);
        }
        if let Some(report) = report {
            self.report(report);
        }
        std::process::exit(0)
    }
}

/// Have `command`'s child take `credentials` (every group, the primary group, then the user,
/// which drops root for good) and then enter `workdir` with the user's rights, between its fork
/// and its exec. posix_spawn cannot change a process's credentials, so a job with `user:` is
/// started by fork and exec instead (std's `Command` does so as soon as a step runs before exec).
/// The step makes only async-signal-safe system calls on values prepared before the fork.
fn become_user(command: &mut std::process::Command, credentials: Credentials, workdir: Option<std::ffi::CString>) {
    let Credentials { uid, gid, groups } = credentials;
    let check = |result: std::ffi::c_int| if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    // SAFETY: the closure runs in the forked child before exec: it only calls setgroups, setgid,
    // setuid and chdir (async-signal-safe) on memory allocated before the fork, and allocates
    // nothing.
    unsafe {
        command.pre_exec(move || {
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            if let Some(dir) = &workdir {
                check(libc::chdir(dir.as_ptr()))?;
            }
            Ok(())
        });
    }
}

/// How `pid` (our child) ended, as a raw wait status.
fn wait(pid: Pid) -> ExitStatus {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return ExitStatus::from_raw((code & 0xff) << 8),
            Ok(WaitStatus::Signaled(_, signal, core)) => {
                return ExitStatus::from_raw(signal as i32 | if core { 0x80 } else { 0 });
            }
            Err(nix::errno::Errno::EINTR) | Ok(_) => continue,
            // Not ours after all (cannot happen): report a failure, not a success.
            Err(_) => return ExitStatus::from_raw(0xff << 8),
        }
    }
}

/// `tenure supervise`: start the jobs the replica on stdin (a Unix socket) asks for, and kill all
/// of them when the replica dies or goes quiet. Returns the exit code when stdin is not a socket.
pub fn supervise(silence_limit: Duration) -> i32 {
    // Its memory holds every job's environment: no job may read it (`main` did so already, for
    // every command; this is the supervisor's own promise).
    if crate::hardening::forbid_inspection().is_err() {
        return 2;
    }
    // SAFETY: fd 0 is ours; the duplicate below keeps the job's own stdin free to be /dev/null.
    let stdin = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
    let Ok(control) = stdin.try_clone_to_owned() else { return 2 };
    if nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(control.as_raw_fd()).is_err() {
        eprintln!("tenure supervise is started by tenure run, with a socket on its stdin");
        return 2;
    }
    let control = UnixStream::from(control);
    let Ok(reports) = control.try_clone() else { return 2 };
    let supervisor = Arc::new(Supervisor { groups: Mutex::default(), reports: Mutex::new(reports) });
    if control.set_read_timeout(Some(silence_limit)).is_err() {
        return 2;
    }
    let mut control = control;
    loop {
        match receive(&mut control) {
            Received::Heartbeat => {}
            Received::Spawn(job, fds) => supervisor.start(job, fds),
            Received::Gone => supervisor.end(None),
            Received::Silent => supervisor.end(Some(&Report::Silent)),
        }
    }
}

enum Received {
    Heartbeat,
    Spawn(Job, Vec<OwnedFd>),
    /// End-of-file, an error or garbage: the replica is gone (or not one).
    Gone,
    /// Nothing for the silence limit.
    Silent,
}

/// The next message: its first byte with any file descriptors sent along, then the rest.
fn receive(control: &mut UnixStream) -> Received {
    let raw: RawFd = control.as_raw_fd();
    let mut kind = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let (read, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut kind)];
        match recvmsg::<()>(raw, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(message) => {
                let mut fds = Vec::new();
                for control in message.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(received) = control {
                        // SAFETY: the kernel just gave us these descriptors; nothing else owns them.
                        fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
                break (message.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Received::Silent,
            Err(_) => return Received::Gone,
        }
    };
    match (read, kind[0]) {
        (0, _) => Received::Gone,
        (_, b'H') => Received::Heartbeat,
        (_, b'S') => match read_spawn(control) {
            Ok(job) => Received::Spawn(job, fds),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Received::Silent,
            Err(_) => Received::Gone,
        },
        _ => Received::Gone,
    }
}

#[cfg(test)]
mod tests;
