//! The executor on real processes and a real HTTP server: what a job sees, how it is stopped,
//! and what is recorded.

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use tenure::config::Job;
use tenure::executor::{OutputTail, RunContext, execute};
use tenure::model::{RunOutcome, RunStatus};
use tenure::supervisor::Supervision;
use tokio_util::sync::CancellationToken;

use crate::harness::{process_gone, wait_for};

fn job(yaml_job: &str) -> Job {
    let text = format!("jobs:\n  - name: job\n    schedule: \"* * * * *\"\n{yaml_job}");
    let jobs = tenure::config::parse(&text, "test.yaml").unwrap_or_else(|errors| panic!("{errors}"));
    jobs.jobs()[0].clone()
}

/// Supervisors from the `tenure` binary under test (this test binary is not one), patient enough
/// that only a test that stops the heartbeats meets their silence limit.
fn supervision() -> Supervision {
    Supervision::with_program(env!("CARGO_BIN_EXE_tenure").into(), Duration::from_secs(10))
}

/// One attempt of `job` with the test context, its own output tail, client and supervision.
async fn run(job: &Job) -> RunOutcome {
    execute(job, &context(), &OutputTail::default(), &reqwest::Client::new(), &supervision(), &CancellationToken::new())
        .await
}

fn context() -> RunContext {
    RunContext {
        run_id: 42,
        job: "job".into(),
        slot: Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap(),
        term: 7,
        node: "node-a".into(),
        attempt: 2,
        lease_id: None,
        upstream_run_ids: Vec::new(),
    }
}

#[tokio::test]
async fn a_command_sees_its_identity_env_and_workdir() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(&format!(
        "    shell: 'echo $TENURE_JOB $TENURE_SLOT $TENURE_TERM $TENURE_RUN_ID $TENURE_NODE $TENURE_ATTEMPT $GREETING; pwd'\n    env: {{ GREETING: hello }}\n    workdir: {}\n",
        dir.path().display()
    ));
    let output = OutputTail::default();
    let outcome =
        execute(&job, &context(), &output, &reqwest::Client::new(), &supervision(), &CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.exit_code, Some(0));
    let real_dir = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(outcome.output, format!("job 2026-03-29T01:00:00Z 7 42 node-a 2 hello\n{}\n", real_dir.display()));
}

#[tokio::test]
async fn argv_commands_take_no_shell_and_a_missing_program_is_a_clear_failure() {
    let job_ok = job("    command: [\"/bin/echo\", \"$HOME\", \"a b\"]\n");
    let outcome = run(&job_ok).await;
    assert_eq!(outcome.output, "$HOME a b\n");

    let missing = job("    command: [\"/nonexistent/program\"]\n");
    let outcome = run(&missing).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(error.contains("could not start `/nonexistent/program`"), "{error}");
}

#[tokio::test]
async fn a_failing_command_records_its_exit_code() {
    let job = job("    shell: 'echo oops >&2; exit 3'\n");
    let outcome = run(&job).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.error.as_deref(), Some("exited with status 3"));
    assert_eq!(outcome.output, "\u{1e}oops\n", "a line on stderr is marked");
}

/// stdout and stderr share one tail, in the order printed; each line the job wrote to stderr
/// starts with the record separator (U+001E), so pages can tell them apart.
#[tokio::test]
async fn stderr_lines_are_marked_apart_from_stdout_in_the_output_tail() {
    let job = job(
        "    shell: 'echo out; sleep 0.2; printf \"err 1\\nerr \" >&2; sleep 0.2; echo 2 >&2; sleep 0.2; echo done'\n",
    );
    let outcome = run(&job).await;
    assert_eq!(outcome.output, "out\n\u{1e}err 1\n\u{1e}err 2\ndone\n");
    assert_eq!(tenure::executor::plain_output(&outcome.output), "out\nerr 1\nerr 2\ndone\n");
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    // The child ignores SIGTERM, so only the SIGKILL after the grace ends it.
    let job = job(&format!(
        "    timeout: 1s\n    shell: \"sh -c 'trap \\\"\\\" TERM; sleep 300' & echo $! > {}; wait\"\n",
        pid_file.display()
    ));
    let outcome = run(&job).await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("timed out after 1s"));
    let child: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    wait_for("the job's child to be killed", Duration::from_secs(5), || async {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_err()
    })
    .await;
}

#[tokio::test]
async fn a_stopped_run_is_killed_and_children_left_behind_are_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("orphan.pid");
    // The main process exits at once, leaving a child that would run forever.
    let orphan = job(&format!("    shell: \"sleep 300 & echo $! > {}\"\n", pid_file.display()));
    let outcome = run(&orphan).await;
    assert_eq!(outcome.status, RunStatus::Succeeded);
    let child: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    wait_for("the orphaned child to be killed", Duration::from_secs(5), || async {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_err()
    })
    .await;

    let long = job("    shell: 'sleep 300'\n");
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stopper.cancel();
    });
    let outcome =
        execute(&long, &context(), &OutputTail::default(), &reqwest::Client::new(), &supervision(), &stop).await;
    assert_eq!(outcome.status, RunStatus::Killed);
}

/// A descendant that left the job's process group (`setsid`, a daemon) is beyond the group's
/// kill and may hold the output pipes for as long as it lives. The replica stops reading them a
/// second after the run ends rather than keep a reader and its buffer per such run forever: the
/// escaped writer then sees its writes fail.
#[tokio::test]
async fn output_pipes_held_by_a_process_that_left_the_group_are_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let (left, let_go) = (dir.path().join("left"), dir.path().join("let-go"));
    // The main process ends only once the other has left its group (else the group's kill takes
    // it too, however loaded the machine).
    let escaped = format!(
        "setsid sh -c 'touch {left}; trap \"\" PIPE; sleep 2; i=0; while [ $i -lt 150 ]; do echo x || {{ touch {let_go}; exit 0; }}; i=$((i+1)); sleep 0.1; done' & while [ ! -e {left} ]; do sleep 0.05; done; echo started",
        left = left.display(),
        let_go = let_go.display()
    );
    let job = job(&format!("    shell: {}\n", serde_json::to_string(&escaped).unwrap()));
    let outcome = run(&job).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert!(outcome.output.starts_with("started\n"), "{outcome:?}");
    wait_for("the escaped writer to find nobody reading", Duration::from_secs(12), || async { let_go.exists() }).await;
}

#[tokio::test]
async fn endless_binary_output_keeps_only_a_bounded_tail() {
    let job = job("    shell: 'head -c 1000000 /dev/urandom; echo; echo THE-END'\n");
    let output = OutputTail::default();
    let outcome =
        execute(&job, &context(), &output, &reqwest::Client::new(), &supervision(), &CancellationToken::new()).await;
    assert_eq!(outcome.status, RunStatus::Succeeded);
    assert!(outcome.output.ends_with("THE-END\n"));
    // Lossy UTF-8 may grow invalid bytes into replacement characters, but the byte tail is bounded.
    assert!(outcome.output.chars().count() <= tenure::model::OUTPUT_LIMIT, "{}", outcome.output.len());
}

#[tokio::test]
async fn an_http_job_sends_its_identity_and_checks_the_status() {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route(
            "/tick",
            post(|headers: axum::http::HeaderMap, body: String| async move {
                let term = headers.get("x-tenure-term").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let custom = headers.get("x-custom").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                (axum::http::StatusCode::ACCEPTED, format!("term={term} custom={custom} body={body}"))
            }),
        )
        .route("/fail", post(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let ok = job(&format!(
        "    http: {{ url: \"http://{address}/tick\", method: POST, headers: {{ X-Custom: \"yes\" }}, body: \"hi\", expect_status: [202] }}\n"
    ));
    let outcome = run(&ok).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.http_status, Some(202));
    assert_eq!(outcome.output, "term=7 custom=yes body=hi");

    let failing = job(&format!("    http: {{ url: \"http://{address}/fail\", method: POST }}\n"));
    let outcome = run(&failing).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(outcome.http_status, Some(500));
    assert_eq!(outcome.error.as_deref(), Some("unexpected HTTP status 500"));
}

/// A run released by its awaited runs (`after:`) is told which: `TENURE_UPSTREAM_RUN_IDS` for a
/// process, `X-Tenure-Upstream-Run-Ids` for a request; a run nothing released gets neither.
#[tokio::test]
async fn a_released_run_is_told_the_runs_that_released_it() {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/released",
        get(|headers: axum::http::HeaderMap| async move {
            let ids = headers.get("x-tenure-upstream-run-ids").map(|v| v.to_str().unwrap_or("?").to_owned());
            format!("{ids:?}")
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let released = RunContext { upstream_run_ids: vec![17, 23], ..context() };
    let (output, stop) = (OutputTail::default(), CancellationToken::new());
    let client = reqwest::Client::new();
    let shell = job("    shell: 'echo \"${TENURE_UPSTREAM_RUN_IDS-unset}\"'\n");
    let outcome = execute(&shell, &released, &output, &client, &supervision(), &stop).await;
    assert_eq!(outcome.output, "17,23\n");
    assert_eq!(run(&shell).await.output, "unset\n");
    let http = job(&format!("    http: {{ url: \"http://{address}/released\" }}\n"));
    let outcome = execute(&http, &released, &OutputTail::default(), &client, &supervision(), &stop).await;
    assert_eq!(outcome.output, "Some(\"17,23\")");
    assert_eq!(run(&http).await.output, "None");
}

/// A job inherits only a short list of tenure's environment (PATH, HOME, locale...).
/// Cargo sets `CARGO_MANIFEST_DIR` for this test process: it stands for anything else tenure has.
#[tokio::test]
async fn a_command_inherits_only_the_documented_variables() {
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some(), "run under cargo, which sets CARGO_MANIFEST_DIR");
    let dump = job("    shell: 'env'\n    env: { GREETING: hello }\n");
    let outcome = run(&dump).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let names: Vec<&str> =
        outcome.output.lines().filter_map(|line| line.split_once('=')).map(|(name, _)| name).collect();
    assert!(!names.contains(&"CARGO_MANIFEST_DIR"), "tenure's own environment reached the job:\n{}", outcome.output);
    assert!(
        names.contains(&"PATH") && names.contains(&"GREETING") && names.contains(&"TENURE_RUN_ID"),
        "{}",
        outcome.output
    );

    // Named in `inherit_env`, it is passed on with its value.
    let asking = job("    shell: 'echo \"$CARGO_MANIFEST_DIR\"'\n    inherit_env: [CARGO_MANIFEST_DIR]\n");
    let outcome = run(&asking).await;
    assert_eq!(outcome.output, format!("{}\n", env!("CARGO_MANIFEST_DIR")));
}

/// A job that writes its own pid, that of a grandchild it leaves behind (its parent exits at
/// once, so it is reparented away from the job: a double fork inside the group) and its parent's
/// (the supervisor), then sleeps.
fn sleeper(dir: &std::path::Path) -> String {
    format!(
        "sh -c 'sleep 300 & echo $! > {dir}/grandchild.pid'; echo $PPID > {dir}/supervisor.pid; echo $$ > {dir}/main.pid; sleep 300",
        dir = dir.display()
    )
}

/// The pids `sleeper` wrote: [main, grandchild], and its supervisor's.
async fn sleeper_pids(dir: &std::path::Path) -> ([u32; 2], u32) {
    let read_pid = |name: &str| std::fs::read_to_string(dir.join(name)).ok()?.trim().parse::<u32>().ok();
    wait_for("the job to start", Duration::from_secs(10), || async {
        ["main.pid", "grandchild.pid", "supervisor.pid"].iter().all(|name| read_pid(name).is_some())
    })
    .await;
    ([read_pid("main.pid").unwrap(), read_pid("grandchild.pid").unwrap()], read_pid("supervisor.pid").unwrap())
}

/// A `tenure dev` replica, killed when dropped, so a failing test leaves no process behind.
struct Replica(std::process::Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Replica {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0.id() as i32)
    }
}

/// `tenure dev` running `sleeper` every second (`forbid`), and the pids of its first run.
async fn replica_running_a_sleeper(dir: &std::path::Path) -> (Replica, [u32; 2]) {
    let jobs = dir.join("jobs.yaml");
    let script = sleeper(dir).replace('\'', "''");
    std::fs::write(
        &jobs,
        format!(
            "jobs:\n  - name: sleeper\n    schedule: \"* * * * * *\"\n    concurrency: forbid\n    shell: '{script}'\n"
        ),
    )
    .unwrap();
    let replica = std::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["dev", "--admin-token", "tok", "--listen"])
        .arg(format!("127.0.0.1:{}", crate::harness::free_port()))
        .arg("--jobs")
        .arg(&jobs)
        .arg("--ledger")
        .arg(dir.join("ledger.db"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let replica = Replica(replica);
    let (pids, _) = sleeper_pids(dir).await;
    (replica, pids)
}

/// How long until every process in `pids` is gone (at most `limit`, else panic).
async fn gone_within(pids: [u32; 2], limit: Duration, what: &str) -> Duration {
    let from = Instant::now();
    wait_for(what, limit, || async { pids.iter().all(|pid| process_gone(*pid)) }).await;
    from.elapsed()
}

/// A replica that dies (SIGKILL, crash) closes its end of the supervisor's socket; the
/// supervisor kills the job's whole group at once, the grandchild that left its parent included.
#[tokio::test]
async fn a_supervised_job_dies_with_its_replica_grandchildren_included() {
    let dir = tempfile::tempdir().unwrap();
    let (replica, pids) = replica_running_a_sleeper(dir.path()).await;
    assert!(pids.iter().all(|pid| !process_gone(*pid)), "the job ended before its replica");
    nix::sys::signal::kill(replica.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let took = gone_within(pids, Duration::from_secs(2), "the job's group to die with its replica").await;
    eprintln!("replica gone -> job's group gone after {took:?}");
}

/// A replica that is alive but frozen (SIGSTOP) sends no heartbeats; the supervisor
/// kills the job's group once the silence limit (5 s for `tenure dev`) has passed without one.
#[tokio::test]
async fn a_supervised_job_is_killed_when_its_replica_falls_silent() {
    let dir = tempfile::tempdir().unwrap();
    let (replica, pids) = replica_running_a_sleeper(dir.path()).await;
    nix::sys::signal::kill(replica.pid(), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let took = gone_within(pids, Duration::from_secs(10), "the job's group to be killed for silence").await;
    eprintln!("replica silent -> job's group gone after {took:?} (silence limit 5 s)");
    assert!(took >= Duration::from_secs(4), "killed before the silence limit: {took:?}");
}

/// A supervisor killed by someone else: the replica kills its runs' groups itself, records the
/// run failed, and starts another supervisor for the next run.
#[tokio::test]
async fn a_supervisor_killed_from_outside_takes_its_runs_down_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(&format!("    shell: \"{}\"\n", sleeper(dir.path()).replace('"', "\\\"")));
    let supervision = supervision();
    let running = {
        let supervision = supervision.clone();
        let job = job.clone();
        tokio::spawn(async move {
            let output = OutputTail::default();
            execute(&job, &context(), &output, &reqwest::Client::new(), &supervision, &CancellationToken::new()).await
        })
    };
    let (pids, supervisor) = sleeper_pids(dir.path()).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), running).await.unwrap().unwrap();
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("its supervisor ended without a report"));
    gone_within(pids, Duration::from_secs(2), "the run's group to be killed by its replica").await;
    let next = job_echo(&supervision).await;
    assert_eq!((next.status, next.output.as_str()), (RunStatus::Succeeded, "next\n"), "{next:?}");
}

async fn job_echo(supervision: &Supervision) -> RunOutcome {
    let output = OutputTail::default();
    let echo = job("    command: [echo, next]\n");
    execute(&echo, &context(), &output, &reqwest::Client::new(), supervision, &CancellationToken::new()).await
}

/// A supervisor takes a start request only while the attempt's execution lease holds.
/// One whose local deadline passed before the supervisor took it (a supervisor being restarted
/// may take seconds, and by then the leader may have given the attempt to another replica)
/// starts nothing; within the deadline the same request runs.
#[tokio::test]
async fn a_start_request_past_its_lease_deadline_starts_nothing() {
    use tenure::leadership::{BootInstant, LeaseDeadline};
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let job = job(&format!("    shell: \"touch {}\"\n", marker.display()));
    let (http, supervision, stop, lost) =
        (reqwest::Client::new(), supervision(), CancellationToken::new(), CancellationToken::new());
    let attempt = |deadline: LeaseDeadline| {
        let (job, http, supervision, stop, lost) = (&job, &http, &supervision, &stop, &lost);
        async move {
            let prepared = tenure::executor::prepare(job, &context(), http);
            let output = OutputTail::default();
            tenure::executor::execute_leased(
                prepared,
                job,
                &context(),
                &output,
                http,
                supervision,
                stop,
                lost,
                &deadline,
                &tenure::executor::ignore_began,
            )
            .await
        }
    };
    let late = attempt(LeaseDeadline::new(BootInstant::now())).await;
    assert_eq!(late.status, RunStatus::Failed, "{late:?}");
    assert!(
        late.error.as_deref().unwrap_or_default().contains(tenure::supervisor::LEASE_ENDED_BEFORE_START),
        "{late:?}"
    );
    assert!(!marker.exists(), "a start past its deadline ran");
    let on_time = attempt(LeaseDeadline::new(BootInstant::now() + Duration::from_secs(30))).await;
    assert_eq!(on_time.status, RunStatus::Succeeded, "{on_time:?}");
    assert!(marker.exists(), "a start within its deadline did not run");
}
