//! What a job can see of tenure, and whom it runs as. A job reads every ancestor's `environ`,
//! `cmdline`, `fd/` and `mem` through /proc and finds none of tenure's secrets, with tenure
//! running as an unprivileged user (a root job could read anything: the kernel lets root); a job
//! with `user:` runs as that user, its groups and its home when tenure is root, and a tenure that
//! is not root refuses it where the job file says so.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{Etcd, Postgres, free_port, wait_for};

/// The unprivileged user tenure runs as in these tests.
const NOBODY: u32 = 65534;

/// A temporary directory the unprivileged user owns, with a copy of the `tenure` binary in it
/// (the build directory may not be reachable by that user) and the probe script.
struct Workspace {
    dir: TempDir,
    binary: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("tenure");
        std::fs::copy(env!("CARGO_BIN_EXE_tenure"), &binary).unwrap();
        std::fs::write(dir.path().join("probe.sh"), PROBE).unwrap();
        Workspace { dir, binary }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Hand everything in it to the unprivileged user.
    fn give_away(&self) {
        let status = Command::new("chown").args(["-R", "65534:65534"]).arg(self.dir.path()).status().unwrap();
        assert!(status.success(), "chown the workspace to nobody");
    }

    /// `tenure ARGS` as the unprivileged user, in the workspace, with only `env`.
    fn tenure_as_nobody(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .uid(NOBODY)
            .gid(NOBODY);
        command
    }
}

/// What a job reads of its ancestors, written to the report file `$2`: for each ancestor up to
/// (not including) pid 1, one line per source, `PID PPID SOURCE read N` (N: how many of the
/// secrets listed in the file `$1` it found) or `PID PPID SOURCE denied`. `fd` reads the regular
/// files the ancestor holds open; `mem` the writable mappings `maps` lists (64 MiB at most each).
/// Last, whether the job could read its own `environ` (`self environ read`).
const PROBE: &str = r#"
secrets=$1
report=$2
found() { grep -a -c -F -f "$secrets" "$@" 2>/dev/null || true; }
{
p=$$
while :; do
  p=$(awk '{print $4}' /proc/$p/stat)
  [ "$p" -gt 1 ] || break
  ppid="$(awk '{print $4}' /proc/$p/stat)"
  for source in environ cmdline; do
    if head -c 1 /proc/$p/$source >/dev/null 2>&1; then
      echo "$p $ppid $source read $(found /proc/$p/$source)"
    else
      echo "$p $ppid $source denied"
    fi
  done
  if ls /proc/$p/fd >/dev/null 2>&1; then
    n=0
    for f in /proc/$p/fd/*; do
      if [ -f "$f" ]; then n=$((n + $(head -c 1048576 "$f" | found))); fi
    done
    echo "$p $ppid fd read $n"
  else
    echo "$p $ppid fd denied"
  fi
  if head -c 1 /proc/$p/maps >/dev/null 2>&1; then
    n=0
    for range in $(awk '$2 ~ /^rw/ {print $1}' /proc/$p/maps); do
      start=$((0x${range%-*}))
      size=$((0x${range#*-} - start))
      [ "$size" -le 67108864 ] || continue
      n=$((n + $(dd if=/proc/$p/mem bs=65536 iflag=skip_bytes,count_bytes skip=$start count=$size 2>/dev/null | found)))
    done
    echo "$p $ppid mem read $n"
  elif dd if=/proc/$p/mem count=0 2>/dev/null; then
    echo "$p $ppid mem read 0 (no maps)"
  else
    echo "$p $ppid mem denied"
  fi
done
if grep -q -a TENURE_RUN_ID /proc/$$/environ; then echo "self - environ read"; fi
} > "$report.tmp"
mv "$report.tmp" "$report"
"#;

/// The job file: one job, every second, that probes its ancestors into `report`.
fn probe_jobs(workspace: &Workspace) -> String {
    format!(
        "jobs:\n  - name: probe\n    schedule: \"* * * * * *\"\n    shell: 'sh {} {} {}'\n",
        workspace.path("probe.sh").display(),
        workspace.path("secrets").display(),
        workspace.path("report").display()
    )
}

/// A secret no file of the test's holds but the secrets list.
fn secret(what: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{what}-{:x}-{nanos:x}", std::process::id())
}

/// A child killed (with its process group's jobs, by its supervisor) when dropped, also when the
/// test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait for the probe's report and check it: no secret anywhere, and tenure's own processes
/// (the replica and its supervisor) unreadable but for a `cmdline` without secrets.
async fn check_report(workspace: &Workspace, tenure: &mut Killed) {
    let report = workspace.path("report");
    let log = workspace.path("tenure.log");
    let ended = std::sync::Mutex::new(&mut tenure.0);
    wait_for("the probe's report", Duration::from_secs(30), || {
        if let Ok(Some(status)) = ended.lock().unwrap().try_wait() {
            panic!("tenure ended ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::future::ready(report.exists())
    })
    .await;
    let report = std::fs::read_to_string(&report).unwrap();
    let lines: Vec<Vec<&str>> = report.lines().map(|line| line.split(' ').collect()).collect();
    assert!(lines.iter().any(|line| line == &["self", "-", "environ", "read"]), "a job reads its own /proc:\n{report}");
    // The replica and the supervisor it started.
    let replica = tenure.0.id().to_string();
    let ours: Vec<&Vec<&str>> =
        lines.iter().filter(|line| line[0] == replica || line.get(1) == Some(&replica.as_str())).collect();
    // The supervisor and the replica, four sources each.
    assert_eq!(ours.len(), 8, "{report}");
    for line in lines.iter().filter(|line| line[0] != "self") {
        if line.len() >= 4 && line[3] == "read" {
            assert_eq!(line.get(4), Some(&"0"), "a secret found: {line:?}\n{report}");
        }
    }
    for line in ours {
        let expected = if line[2] == "cmdline" { "read" } else { "denied" };
        assert_eq!(line[3], expected, "{line:?}\n{report}");
    }
    eprintln!("{report}");
}

/// `tenure dev` as an unprivileged user: the admin token given by variable and by flag, and a
/// dead-man URL with a token in it by variable. Its job reads every ancestor and finds none.
#[tokio::test]
async fn a_job_finds_no_secret_of_an_unprivileged_tenure_dev_in_any_ancestor() {
    let workspace = Workspace::new();
    let (by_variable, by_flag, ping) = (secret("token-variable"), secret("token-flag"), secret("ping"));
    workspace.write("secrets", &format!("{by_variable}\n{by_flag}\n{ping}\n"));
    workspace.write("jobs.yaml", &probe_jobs(&workspace));
    workspace.give_away();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let flag = format!("--admin-token={by_flag}");
    let ping_url = format!("http://127.0.0.1:9/ping/{ping}");
    let child = workspace
        .tenure_as_nobody(
            &["dev", "--jobs", "jobs.yaml", "--ledger", "ledger.db", "--listen", &listen, &flag],
            &[("TENURE_ADMIN_TOKEN", &by_variable), ("TENURE_HEARTBEAT_URL", &ping_url)],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(workspace.path("tenure.log")).unwrap())
        .spawn()
        .expect("start tenure dev as nobody");
    let mut tenure = Killed(child);
    check_report(&workspace, &mut tenure).await;
    // The token given by flag is the one in effect: scrubbing its copy did not lose it.
    let answer = reqwest::Client::new()
        .post(format!("http://{listen}/api/jobs/probe/trigger"))
        .bearer_auth(&by_flag)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
}

/// `tenure run` as an unprivileged user: a database URL with a password by flag and another by
/// variable, the admin token by flag, a dead-man URL by flag. Its job finds none of them.
#[tokio::test]
async fn a_job_finds_no_secret_of_an_unprivileged_tenure_run_in_any_ancestor() {
    let etcd = Etcd::start().await;
    let pg = Postgres::start().await;
    let database = pg.create_database("secrets").await;
    let workspace = Workspace::new();
    let (password, other_password, token, ping) =
        (secret("db-flag"), secret("db-variable"), secret("token-flag"), secret("ping"));
    workspace.write("secrets", &format!("{password}\n{other_password}\n{token}\n{ping}\n"));
    workspace.write("jobs.yaml", &probe_jobs(&workspace));
    workspace.give_away();
    // The harness's PostgreSQL trusts loopback: the password is carried, not checked.
    let with_password = |password: &str| database.replacen("postgres@", &format!("postgres:{password}@"), 1);
    let (flag_url, variable_url) = (with_password(&password), with_password(&other_password));
    let ping_url = format!("http://127.0.0.1:9/ping/{ping}");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "run",
        "--jobs",
        "jobs.yaml",
        "--etcd",
        &etcd.client_url(),
        "--database-url",
        &flag_url,
        "--admin-token",
        &token,
        "--heartbeat-url",
        &ping_url,
        "--listen",
        &listen,
        "--lease-ttl",
        "2s",
    ];
    let child = workspace
        .tenure_as_nobody(&args, &[("TENURE_DATABASE_URL", &variable_url)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(workspace.path("tenure.log")).unwrap())
        .spawn()
        .expect("start tenure run as nobody");
    let mut tenure = Killed(child);
    check_report(&workspace, &mut tenure).await;
}

/// The first succeeded run of `job` on `base`: its output.
async fn first_output(base: &str, job: &str) -> String {
    let succeeded = || async {
        let page: Value = reqwest::get(format!("{base}/api/jobs/{job}/runs")).await.ok()?.json().await.ok()?;
        page["runs"].as_array()?.iter().find(|run| run["status"] == "succeeded").map(|run| run["id"].clone())
    };
    wait_for(&format!("a run of {job} to succeed"), Duration::from_secs(20), || async { succeeded().await.is_some() })
        .await;
    let id = succeeded().await.unwrap();
    let run: Value = reqwest::get(format!("{base}/api/runs/{id}")).await.unwrap().json().await.unwrap();
    run["output"].as_str().unwrap().trim().to_owned()
}

/// `id -G` of a user, as a sorted list: the oracle for its supplementary groups.
fn groups_of(user: &str) -> Vec<u32> {
    let output = Command::new("id").args(["-G", user]).output().unwrap();
    let mut groups: Vec<u32> =
        String::from_utf8(output.stdout).unwrap().split_whitespace().map(|g| g.parse().unwrap()).collect();
    groups.sort_unstable();
    groups
}

/// tenure as root: `user:` (a name) runs the job as that user with its primary group, its
/// supplementary groups and its HOME, USER and LOGNAME, as cron does; `group:` (a number) sets
/// the primary group instead; a job without `user:` runs as tenure's user.
#[tokio::test]
async fn a_job_with_user_runs_as_that_user_with_its_groups_and_home_when_tenure_is_root() {
    assert!(nix::unistd::geteuid().is_root(), "this test runs tenure as root");
    let postgres = nix::unistd::User::from_name("postgres").unwrap().expect("a postgres user");
    let workspace = Workspace::new();
    // Readable by the users the jobs run as.
    std::fs::set_permissions(workspace.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let show = workspace.write(
        "show.sh",
        r#"echo "$(id -u) $(id -g) $(id -G | tr ' ' '\n' | sort -n | tr '\n' ',') $(pwd) $HOME $USER $LOGNAME""#,
    );
    let show = show.display();
    let jobs = format!(
        "jobs:\n\
         \x20 - name: as-nobody\n    schedule: \"* * * * * *\"\n    user: nobody\n    workdir: /tmp\n    shell: 'sh {show}'\n\
         \x20 - name: as-postgres\n    schedule: \"* * * * * *\"\n    user: postgres\n    group: 65534\n    \
         workdir: /\n    shell: 'sh {show}'\n\
         \x20 - name: as-tenure\n    schedule: \"* * * * * *\"\n    shell: 'id -u'\n"
    );
    workspace.write("jobs.yaml", &jobs);
    let port = free_port();
    let child = Command::new(&workspace.binary)
        .args(["dev", "--jobs"])
        .arg(workspace.path("jobs.yaml"))
        .arg("--ledger")
        .arg(workspace.path("ledger.db"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(workspace.path("tenure.log")).unwrap())
        .spawn()
        .unwrap();
    let _tenure = Killed(child);
    let base = format!("http://127.0.0.1:{port}");
    let joined = |groups: Vec<u32>| groups.iter().map(|g| format!("{g},")).collect::<String>();
    assert_eq!(
        first_output(&base, "as-nobody").await,
        format!("65534 65534 {} /tmp /nonexistent nobody nobody", joined(groups_of("nobody")))
    );
    // postgres's own groups but its primary one, and 65534 instead.
    let mut groups: Vec<u32> =
        groups_of("postgres").into_iter().filter(|g| *g != postgres.gid.as_raw()).chain([NOBODY]).collect();
    groups.sort_unstable();
    assert_eq!(
        first_output(&base, "as-postgres").await,
        format!("{} 65534 {} / {} postgres postgres", postgres.uid, joined(groups), postgres.dir.display())
    );
    assert_eq!(first_output(&base, "as-tenure").await, "0");
}

/// tenure not running as root cannot run a job as another user: the job file is refused where it
/// says `user:` (validate, and dev at its start), as is an unknown user or group.
#[test]
fn a_tenure_that_is_not_root_refuses_user_where_the_job_file_says_it() {
    let workspace = Workspace::new();
    workspace.write(
        "jobs.yaml",
        "jobs:\n  - name: as-root\n    schedule: '@daily'\n    user: root\n    shell: 'true'\n\
         \x20 - name: nobody-knows\n    schedule: '@daily'\n    user: no-such-user-here\n    group: no-such-group\n    shell: 'true'\n",
    );
    workspace.give_away();
    let validate = workspace.tenure_as_nobody(&["validate", "jobs.yaml"], &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&validate.stderr);
    assert_eq!(validate.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("jobs.yaml:4:11: job `as-root`: `user`: tenure runs as uid 65534, not root: it cannot run a job as another user"),
        "{stderr}"
    );
    assert!(
        stderr.contains("jobs.yaml:8:11: job `nobody-knows`: `user`: no user `no-such-user-here` on this machine"),
        "{stderr}"
    );
    assert!(
        stderr.contains("jobs.yaml:9:12: job `nobody-knows`: `group`: no group `no-such-group` on this machine"),
        "{stderr}"
    );
    let dev = workspace
        .tenure_as_nobody(&["dev", "--jobs", "jobs.yaml", "--ledger", "ledger.db", "--listen", "127.0.0.1:0"], &[])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&dev.stderr);
    assert!(!dev.status.success(), "{stderr}");
    assert!(stderr.contains("jobs.yaml:4:11: job `as-root`: `user`:"), "{stderr}");
}
