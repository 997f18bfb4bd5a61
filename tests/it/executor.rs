//! The executor on real processes and a real HTTP server: what a job sees, how it is stopped,
//! and what is recorded.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use tenure::config::Job;
use tenure::executor::{OutputTail, RunContext, execute};
use tenure::store::RunStatus;
use tenure::supervisor::Supervision;
use tokio_util::sync::CancellationToken;

use crate::harness::wait_for;

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
    let outcome = execute(
        &job_ok,
        &context(),
        &OutputTail::default(),
        &reqwest::Client::new(),
        &supervision(),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.output, "$HOME a b\n");

    let missing = job("    command: [\"/nonexistent/program\"]\n");
    let outcome = execute(
        &missing,
        &context(),
        &OutputTail::default(),
        &reqwest::Client::new(),
        &supervision(),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(error.contains("could not start `/nonexistent/program`"), "{error}");
}

#[tokio::test]
async fn a_failing_command_records_its_exit_code() {
    let job = job("    shell: 'echo oops >&2; exit 3'\n");
    let outcome = execute(
        &job,
        &context(),
        &OutputTail::default(),
        &reqwest::Client::new(),
        &supervision(),
        &CancellationToken::new(),
    )
    .await;
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
    let outcome = execute(
        &job,
        &context(),
        &OutputTail::default(),
        &reqwest::Client::new(),
        &supervision(),
        &CancellationToken::new(),
    )
    .await;
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
    let outcome = execute(
        &orphan,
        &context(),
        &OutputTail::default(),
        &reqwest::Client::new(),
        &supervision(),
        &CancellationToken::new(),
    )
    .await;
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
    assert!(outcome.output.chars().count() <= tenure::store::OUTPUT_LIMIT, "{}", outcome.output.len());
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
    let outcome = execute(
        &ok,
        &context(),
        &OutputTail::default(),
        &reqwest::Client::new(),
        &supervision(),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.http_status, Some(202));
    assert_eq!(outcome.output, "term=7 custom=yes body=hi");

    let failing = job(&format!("    http: {{ url: \"http://{address}/fail\", method: POST }}\n"));
    let outcome = execute(
        &failing,
        &context(),
        &OutputTail::default(),
        &reqwest::Client::new(),
        &supervision(),
        &CancellationToken::new(),
    )
    .await;
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
    let outcome =
        execute(&dump, &context(), &OutputTail::default(), &reqwest::Client::new(), &CancellationToken::new()).await;
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
    let outcome =
        execute(&asking, &context(), &OutputTail::default(), &reqwest::Client::new(), &CancellationToken::new()).await;
    assert_eq!(outcome.output, format!("{}\n", env!("CARGO_MANIFEST_DIR")));
}
