//! The executor on real processes and a real HTTP server: what a job sees, how it is stopped,
//! and what is recorded.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
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
    assert_eq!(outcome.output, "oops\n");
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

/// Issue 13.3: a job inherits only a short list of tenure's environment (PATH, HOME, locale...).
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

/// `tenure supervise` started as the executor starts it, the test holding the replica's end of
/// its socket. The job writes its own pid and that of a grandchild it leaves behind (its parent
/// exits at once, so it is reparented away from the job: a double fork inside the group).
// The caller waits for the supervisor; if the test fails first, dropping the socket ends it.
#[allow(clippy::zombie_processes)]
fn supervised(silence_limit: &str, dir: &std::path::Path) -> (std::process::Child, UnixStream, [u32; 2]) {
    let (replica_end, supervisor_end) = UnixStream::pair().unwrap();
    let script = format!(
        "sh -c 'sleep 300 & echo $! > {dir}/grandchild.pid'; echo $$ > {dir}/main.pid; sleep 300",
        dir = dir.display()
    );
    let mut supervisor = std::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["supervise", "--silence-limit", silence_limit, "--", "/bin/sh", "-c", &script])
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(supervisor_end)))
        .spawn()
        .unwrap();
    let read_pid = |name: &str| std::fs::read_to_string(dir.join(name)).ok()?.trim().parse::<u32>().ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let (Some(main), Some(grandchild)) = (read_pid("main.pid"), read_pid("grandchild.pid")) {
            return (supervisor, replica_end, [main, grandchild]);
        }
        if Instant::now() > deadline {
            let _ = supervisor.kill();
            let _ = supervisor.wait();
            panic!("the supervised job did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long until every process in `pids` is gone (at most `limit`, else panic).
async fn gone_within(pids: [u32; 2], limit: Duration, what: &str) -> Duration {
    let from = Instant::now();
    wait_for(what, limit, || async { pids.iter().all(|pid| process_gone(*pid)) }).await;
    from.elapsed()
}

/// Issue 13: a replica that dies (SIGKILL, crash) closes its end of the socket; the supervisor
/// kills the job's whole group at once, the grandchild that left its parent included.
#[tokio::test]
async fn issue_13_a_supervised_job_dies_with_its_replica_grandchildren_included() {
    let dir = tempfile::tempdir().unwrap();
    let (mut supervisor, replica_end, pids) = supervised("10s", dir.path());
    assert!(pids.iter().all(|pid| !process_gone(*pid)), "the job ended before its replica");
    drop(replica_end);
    let took = gone_within(pids, Duration::from_secs(2), "the job's group to die with its replica").await;
    eprintln!("replica gone -> job's group gone after {took:?}");
    assert!(supervisor.wait().unwrap().success());
}

/// Issue 13: a replica that is alive but frozen (SIGSTOP) sends no heartbeats; the supervisor
/// kills the job's group once the silence limit has passed without one, and says why.
#[tokio::test]
async fn issue_13_a_supervised_job_is_killed_when_its_replica_falls_silent() {
    let dir = tempfile::tempdir().unwrap();
    let (mut supervisor, mut replica_end, pids) = supervised("500ms", dir.path());
    // Heartbeats keep it going well past the limit.
    for _ in 0..10 {
        replica_end.write_all(b".").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pids.iter().all(|pid| !process_gone(*pid)), "killed while the replica answered");
    let took = gone_within(pids, Duration::from_secs(3), "the job's group to be killed for silence").await;
    eprintln!("replica silent -> job's group gone after {took:?} (silence limit 500 ms)");
    assert!(took >= Duration::from_millis(300), "killed before the silence limit: {took:?}");
    assert!(supervisor.wait().unwrap().success());
    let mut reports = String::new();
    replica_end.read_to_string(&mut reports).unwrap();
    assert_eq!(reports.lines().last(), Some("silent"), "{reports}");
}
