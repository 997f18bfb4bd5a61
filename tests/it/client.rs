//! The client commands as a person or a deploy script runs them: the real `tenure` binary's
//! `status`, `jobs`, `runs`, `show`, `trigger`, `pause`, `resume` and `terms` against a real
//! `tenure dev`, over TLS through a terminating proxy with a private CA, and against a real
//! cluster (etcd, PostgreSQL, `tenure run` replicas). Outputs and exit codes are asserted
//! exactly where they are specified.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::cluster::{ADMIN_TOKEN, Cluster, Options};
use crate::harness::{Pki, free_port, wait_for};

const TOKEN: &str = "client-test-token";
const WITH_TOKEN: &[(&str, &str)] = &[("TENURE_ADMIN_TOKEN", TOKEN)];

/// Two jobs that fire only when triggered (their schedule is once a year): one succeeds, one
/// fails with exit code 3.
const JOBS: &str = r#"
jobs:
  - name: greet
    schedule: "0 0 1 1 *"
    shell: 'echo "hello from $TENURE_JOB"'
  - name: broken
    schedule: "0 0 1 1 *"
    shell: 'echo "about to fail"; exit 3'
"#;

/// A `tenure dev` on a job file of its own, killed when dropped (also when the test fails).
struct Dev {
    child: std::process::Child,
    dir: TempDir,
    server: String,
}

impl Dev {
    async fn start(jobs_yaml: &str) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let jobs = dir.path().join("jobs.yaml");
        std::fs::write(&jobs, jobs_yaml).unwrap();
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
            .args(["dev", "--admin-token", TOKEN, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--jobs")
            .arg(&jobs)
            .arg("--ledger")
            .arg(dir.path().join("ledger.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dev.stderr")).unwrap())
            .spawn()
            .expect("start tenure dev");
        let dev = Dev { child, dir, server: format!("http://127.0.0.1:{port}") };
        let cluster = format!("{}/api/cluster", dev.server);
        wait_for("tenure dev to lead", Duration::from_secs(15), || async {
            let answer: Option<Value> = async { reqwest::get(&cluster).await.ok()?.json().await.ok() }.await;
            answer.is_some_and(|cluster| cluster["leader"]["term"].is_i64())
        })
        .await;
        dev
    }

    fn token_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("admin-token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        path
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one run of the client did.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| panic!("not JSON ({error}): {self:?}"))
    }
}

/// Run `tenure ARGS` with only the given `TENURE_*` variables (none inherited from the test's
/// environment), asynchronously: a TLS proxy may be serving on this test's runtime meanwhile.
async fn tenure(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenure"));
    command.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("TENURE_")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = command.output().await.expect("run tenure");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The run id in a `run N of JOB: STATUS` first line.
fn run_id(stdout: &str) -> i64 {
    let first = stdout.lines().next().unwrap_or_default();
    first
        .strip_prefix("run ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("expected `run N of ...` first: {stdout}"))
}

/// A deploy script's use: `trigger --wait` exits 0 on a succeeding job and prints the run with
/// its output, 1 on a failing one; `show` and `runs` find the same runs, as tables and as JSON.
#[tokio::test]
async fn trigger_wait_exits_with_the_runs_outcome_and_show_and_runs_find_it() {
    let dev = Dev::start(JOBS).await;
    let server = ["--server", dev.server.as_str()];
    let token = [("TENURE_ADMIN_TOKEN", TOKEN)];

    let ok = tenure(&[&["trigger", "greet", "--wait"][..], &server].concat(), &token).await;
    assert_eq!(ok.code, 0, "{ok:?}");
    let greet_run = run_id(&ok.stdout);
    assert!(ok.stdout.starts_with(&format!("run {greet_run} of greet: succeeded\n")), "{ok:?}");
    assert!(ok.stdout.contains("\n  trigger         manual\n"), "{ok:?}");
    assert!(ok.stdout.contains("\n  exit code       0\n"), "{ok:?}");
    assert!(ok.stdout.ends_with("output (tail):\nhello from greet\n"), "{ok:?}");
    assert_eq!(ok.stderr, "");

    let failed = tenure(&[&["trigger", "broken", "--wait"][..], &server].concat(), &token).await;
    assert_eq!(failed.code, 1, "{failed:?}");
    let broken_run = run_id(&failed.stdout);
    assert!(failed.stdout.starts_with(&format!("run {broken_run} of broken: failed\n")), "{failed:?}");
    assert!(failed.stdout.contains("\n  exit code       3\n"), "{failed:?}");
    assert!(failed.stdout.ends_with("output (tail):\nabout to fail\n"), "{failed:?}");

    // The same run, shown by id, as text and as the API's JSON.
    let shown = tenure(&[&["show", &greet_run.to_string()][..], &server].concat(), &[]).await;
    assert_eq!((shown.code, shown.stdout.as_str()), (0, ok.stdout.as_str()), "{shown:?}");
    let json = tenure(&[&["show", &broken_run.to_string(), "--output", "json"][..], &server].concat(), &[]).await;
    assert_eq!(json.code, 0, "{json:?}");
    let run = json.json();
    assert_eq!(run["id"], broken_run);
    assert_eq!(run["job"], "broken");
    assert_eq!(run["status"], "failed");
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["exit_code"], 3);
    assert_eq!(run["output"], "about to fail\n");

    // `trigger --wait --output json` prints the finished run's document.
    let json = tenure(&[&["trigger", "greet", "--wait", "-o", "json"][..], &server].concat(), &token).await;
    assert_eq!(json.code, 0, "{json:?}");
    let second_greet = json.json();
    assert_eq!((second_greet["job"].as_str(), second_greet["status"].as_str()), (Some("greet"), Some("succeeded")));
    let second_greet = second_greet["id"].as_i64().unwrap();

    // Runs, newest first; a limit and a status filter.
    let runs = tenure(&[&["runs", "greet"][..], &server].concat(), &[]).await;
    assert_eq!(runs.code, 0, "{runs:?}");
    let lines: Vec<&str> = runs.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "SLOT", "STATUS", "TRIGGER", "TERM", "NODE", "ATTEMPT", "TOOK", "LATE", "CODE", "ERROR"]
    );
    let ids: Vec<i64> =
        lines[1..].iter().map(|line| line.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert_eq!(ids, [second_greet, greet_run], "{runs:?}");
    let fields: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!((fields[2], fields[3], fields[9], fields[10]), ("succeeded", "manual", "0", "-"), "{runs:?}");
    let limited = tenure(&[&["runs", "greet", "--limit", "1"][..], &server].concat(), &[]).await;
    assert_eq!(limited.stdout.lines().count(), 2, "{limited:?}");
    assert!(limited.stdout.lines().nth(1).unwrap().starts_with(&format!("{second_greet} ")), "{limited:?}");
    let failed_only =
        tenure(&[&["runs", "broken", "--status", "failed", "-o", "json"][..], &server].concat(), &[]).await;
    assert_eq!(failed_only.code, 0, "{failed_only:?}");
    let page = failed_only.json();
    let statuses: Vec<(i64, &str)> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| (run["id"].as_i64().unwrap(), run["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [(broken_run, "failed")]);
    let none = tenure(&[&["runs", "greet", "--status", "failed"][..], &server].concat(), &[]).await;
    assert_eq!((none.code, none.stdout.lines().count()), (0, 1), "only the header: {none:?}");
}

/// A client command's arguments, its environment, and the one line it must print on stderr.
struct Case(&'static [&'static str], &'static [(&'static str, &'static str)], &'static str);

/// Unknown jobs and runs, a wrong or missing token, no server: one line on stderr, exit code 2,
/// nothing on stdout, and the token in no output.
#[tokio::test]
async fn errors_are_one_line_with_exit_code_2_and_never_show_the_token() {
    let dev = Dev::start(JOBS).await;
    let server = ["--server", dev.server.as_str()];
    let token = [("TENURE_ADMIN_TOKEN", TOKEN)];
    let not_found = "error: Not Found: no job `nope` in the job file (HTTP 404)\n";
    let unauthorized = "error: Unauthorized: the token is not valid (unknown, revoked or expired): send a valid one as `Authorization: Bearer <token>` or as the password of basic auth (HTTP 401)\n";
    let cases: [Case; 7] = [
        Case(&["trigger", "nope"], WITH_TOKEN, not_found),
        Case(&["trigger", "nope", "--wait"], WITH_TOKEN, not_found),
        Case(&["pause", "nope"], WITH_TOKEN, not_found),
        Case(&["runs", "nope"], &[], "error: Not Found: no job `nope` in the job file or the ledger (HTTP 404)\n"),
        Case(&["show", "999999"], &[], "error: Not Found: no run 999999 (HTTP 404)\n"),
        Case(&["pause", "greet"], &[("TENURE_ADMIN_TOKEN", "wrong-secret-value")], unauthorized),
        Case(
            &["trigger", "greet"],
            &[],
            "error: trigger needs a token: run `tenure login`, give --token-file PATH or set TENURE_TOKEN\n",
        ),
    ];
    for Case(args, env, expected) in cases {
        let outcome = tenure(&[args, &server].concat(), env).await;
        assert_eq!((outcome.code, outcome.stdout.as_str(), outcome.stderr.as_str()), (2, "", expected), "{args:?}");
    }
    // A wrong token from a file: the same line, and neither token anywhere.
    let wrong = dev.dir.path().join("wrong-token");
    std::fs::write(&wrong, "wrong-secret-value\n").unwrap();
    let outcome =
        tenure(&[&["resume", "greet", "--token-file", wrong.to_str().unwrap()][..], &server].concat(), &token).await;
    assert_eq!(outcome.code, 2, "{outcome:?}");
    assert_eq!(outcome.stderr, unauthorized);
    for secret in ["wrong-secret-value", TOKEN] {
        assert!(!outcome.stdout.contains(secret) && !outcome.stderr.contains(secret), "{outcome:?}");
    }

    // Nobody listening, and a server that is no URL: before any answer.
    let port = free_port();
    let refused = tenure(&["status", "--server", &format!("http://127.0.0.1:{port}")], &[]).await;
    assert_eq!(
        (refused.code, refused.stdout.as_str(), refused.stderr.as_str()),
        (
            2,
            "",
            format!("error: cannot reach tenure at http://127.0.0.1:{port}: Connection refused (os error 111)\n")
                .as_str()
        )
    );
    let bad = tenure(&["jobs", "--server", "ftp://127.0.0.1:21"], &[]).await;
    assert_eq!(
        (bad.code, bad.stderr.as_str()),
        (2, "error: --server ftp://127.0.0.1:21: expected http://HOST:PORT or https://HOST:PORT\n")
    );
    // A usage error is clap's, with the same exit code.
    let usage = tenure(&["runs", "greet", "--status", "fine"], &[]).await;
    assert_eq!(usage.code, 2, "{usage:?}");
    assert!(
        usage
            .stderr
            .starts_with("error: invalid value 'fine' for '--status <STATUS>': expected one of running, succeeded,"),
        "{usage:?}"
    );
}

/// `pause` then `jobs` shows the job paused by an operator (table and JSON); `resume` clears it.
#[tokio::test]
async fn pause_then_jobs_shows_it_paused_and_resume_clears_it() {
    let dev = Dev::start(JOBS).await;
    let token_file = dev.token_file();
    let server = ["--server", dev.server.as_str(), "--token-file", token_file.to_str().unwrap()];
    let state_of = |stdout: &str, job: &str| -> String {
        let line =
            stdout.lines().find(|line| line.starts_with(&format!("{job} "))).unwrap_or_else(|| panic!("{stdout}"));
        let state = if line.contains(" paused (operator) ") {
            "paused (operator)"
        } else if line.contains(" active ") {
            "active"
        } else {
            "?"
        };
        state.to_owned()
    };

    let before = tenure(&[&["jobs"][..], &server].concat(), &[]).await;
    assert_eq!(before.code, 0, "{before:?}");
    assert_eq!(
        before.stdout.lines().next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["JOB", "SCHEDULE", "TIMEZONE", "KIND", "STATE", "NEXT", "LAST", "DESCRIPTION"]
    );
    // The schedule in the words of the dashboard and the API, last.
    let greet = before.stdout.lines().find(|line| line.starts_with("greet ")).unwrap();
    assert!(greet.ends_with("  At 00:00, on day 1, in January"), "{greet}");
    assert_eq!(state_of(&before.stdout, "greet"), "active");

    let paused = tenure(&[&["pause", "greet"][..], &server].concat(), &[]).await;
    assert_eq!((paused.code, paused.stdout.as_str(), paused.stderr.as_str()), (0, "paused greet\n", ""));
    let jobs = tenure(&[&["jobs"][..], &server].concat(), &[]).await;
    assert_eq!(state_of(&jobs.stdout, "greet"), "paused (operator)", "{jobs:?}");
    assert_eq!(state_of(&jobs.stdout, "broken"), "active", "{jobs:?}");
    let json = tenure(&[&["jobs", "--output", "json"][..], &server].concat(), &[]).await;
    let listed = json.json();
    let greet = listed.as_array().unwrap().iter().find(|job| job["name"] == "greet").unwrap();
    assert_eq!((greet["paused"].as_bool(), greet["paused_by"].as_str()), (Some(true), Some("operator")));
    assert!(greet["next_utc"].is_null(), "a paused job has no next fire time: {greet}");

    let resumed = tenure(&[&["resume", "greet", "-o", "json"][..], &server].concat(), &[]).await;
    assert_eq!(resumed.code, 0, "{resumed:?}");
    assert_eq!(resumed.json(), serde_json::json!({ "job": "greet", "paused": false }));
    let after = tenure(&[&["jobs"][..], &server].concat(), &[]).await;
    assert_eq!(state_of(&after.stdout, "greet"), "active", "{after:?}");
}

/// A TLS-terminating proxy on loopback in front of `backend`, with the PKI's server certificate
/// (names `localhost` and 127.0.0.1). Serves until the test's runtime ends.
async fn tls_proxy(pki: &Pki, backend: u16) -> u16 {
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&pki.server.cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.server.key).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to forward.
                let Ok(mut tls) = acceptor.accept(socket).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

fn port_of(server: &str) -> u16 {
    server.rsplit(':').next().unwrap().parse().unwrap()
}

/// `--server https://...` with `--ca-file` trusting a private CA; without it, or with a CA that
/// signed nothing here, one line naming the certificate problem.
#[tokio::test]
async fn https_with_a_private_ca() {
    let dev = Dev::start(JOBS).await;
    let pki = Pki::generate();
    let port = tls_proxy(&pki, port_of(&dev.server)).await;
    let server = format!("https://localhost:{port}");
    let ca = pki.ca.to_str().unwrap();

    let status = tenure(&["status", "--server", &server, "--ca-file", ca], &[]).await;
    assert_eq!(status.code, 0, "{status:?}");
    assert!(status.stdout.starts_with("leader: "), "{status:?}");
    let paused =
        tenure(&["pause", "greet", "--server", &server], &[("TENURE_CA_FILE", ca), ("TENURE_ADMIN_TOKEN", TOKEN)])
            .await;
    assert_eq!((paused.code, paused.stdout.as_str()), (0, "paused greet\n"), "{paused:?}");

    let untrusted = tenure(&["status", "--server", &server], &[]).await;
    let other = tenure(&["status", "--server", &server, "--ca-file", pki.other_ca.to_str().unwrap()], &[]).await;
    for outcome in [untrusted, other] {
        assert_eq!(
            (outcome.code, outcome.stdout.as_str(), outcome.stderr.as_str()),
            (
                2,
                "",
                format!("error: cannot reach tenure at {server}: invalid peer certificate: UnknownIssuer\n").as_str()
            )
        );
    }
    let missing = tenure(&["status", "--server", &server, "--ca-file", "/nonexistent/ca.pem"], &[]).await;
    assert_eq!(
        (missing.code, missing.stderr.as_str()),
        (2, "error: read --ca-file /nonexistent/ca.pem: No such file or directory (os error 2)\n")
    );
}

/// "Tested against a real cluster": `status` and `terms` from a follower name the leader and its
/// term (the fence's), and `trigger --wait` through the follower runs the job once, in that term.
#[tokio::test]
async fn against_a_real_cluster_status_terms_and_trigger_wait() {
    let jobs = "jobs:\n  - name: once\n    schedule: \"0 0 1 1 *\"\n    shell: WITNESS\n";
    let cluster = Cluster::start(2, jobs).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let follower = 1 - leader;
    let leader_node = cluster.replicas[leader].node.clone();
    let server = cluster.url(follower);

    // The registry shows a replica once it has registered: wait for both.
    wait_for("both replicas in the registry", Duration::from_secs(10), || async {
        let status = tenure(&["status", "--server", &server, "-o", "json"], &[]).await;
        status.code == 0 && status.json()["replicas"].as_array().is_some_and(|replicas| replicas.len() == 2)
    })
    .await;
    let status = tenure(&["status", "--server", &server], &[]).await;
    assert_eq!(status.code, 0, "{status:?}");
    let lines: Vec<&str> = status.stdout.lines().collect();
    assert!(lines[0].starts_with(&format!("leader: {leader_node} (term {term}, since ")), "{status:?}");
    assert_eq!(lines[1], format!("answered by: {}", cluster.replicas[follower].node));
    let roles: Vec<(String, String)> = lines[4..6]
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[0].to_owned(), fields[1].to_owned())
        })
        .collect();
    assert!(roles.contains(&(leader_node.clone(), "leader".to_owned())), "{status:?}");
    assert!(roles.contains(&(cluster.replicas[follower].node.clone(), "follower".to_owned())), "{status:?}");

    let terms = tenure(&["terms", "--server", &server, "--output", "json"], &[]).await;
    assert_eq!(terms.code, 0, "{terms:?}");
    let newest = &terms.json()[0];
    assert_eq!(
        (newest["term"].as_i64(), newest["node"].as_str(), newest["current"].as_bool()),
        (Some(term), Some(leader_node.as_str()), Some(true))
    );
    let table = tenure(&["terms", "--server", &server], &[]).await;
    let first_row: Vec<&str> = table.stdout.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        (first_row[0], first_row[1], *first_row.last().unwrap()),
        (term.to_string().as_str(), leader_node.as_str(), "yes"),
        "{table:?}"
    );

    let triggered = tenure(
        &["trigger", "once", "--wait", "--timeout", "30s", "--server", &server],
        &[("TENURE_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    assert_eq!(triggered.code, 0, "{triggered:?}\n{}", cluster.logs());
    let run = run_id(&triggered.stdout);
    assert!(triggered.stdout.starts_with(&format!("run {run} of once: succeeded\n")), "{triggered:?}");
    assert!(
        triggered.stdout.contains(&format!("\n  term            {term}\n  node            {leader_node}\n")),
        "{triggered:?}"
    );
    let witness = cluster.witness();
    assert_eq!(witness.len(), 1, "the job ran exactly once: {witness:?}");
    assert_eq!((witness[0].job.as_str(), witness[0].term), ("once", term));
}

/// Behind `--protect-reads` the reads need the token too: the client sends it with every
/// request, and without one the refusal is the one-line 401.
#[tokio::test]
async fn reads_behind_protect_reads_take_the_token() {
    let options = Options { env: vec![("TENURE_PROTECT_READS".to_owned(), "true".to_owned())], ..Options::default() };
    let cluster =
        Cluster::start_with(1, "jobs:\n  - name: once\n    schedule: \"0 0 1 1 *\"\n    shell: 'true'\n", options)
            .await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let server = cluster.url(0);
    let refused = tenure(&["jobs", "--server", &server], &[]).await;
    assert_eq!(
        (refused.code, refused.stdout.as_str(), refused.stderr.as_str()),
        (
            2,
            "",
            "error: Unauthorized: this dashboard needs a token to read (basic auth password or bearer token) (HTTP 401)\n"
        )
    );
    let listed = tenure(&["jobs", "--server", &server, "-o", "json"], &[("TENURE_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    assert_eq!(listed.code, 0, "{listed:?}");
    assert_eq!(listed.json()[0]["name"], "once");
}

/// A loopback HTTP server that answers each request with the next of `answers` (status line,
/// extra headers, JSON body) and records when each request came. It stands in for a shedding
/// replica: making a real one shed on demand takes 36 requests held at once (see `load`, which
/// tests the server's side); here only the client's reaction to the answer is under test.
async fn scripted_server(
    answers: Vec<(&'static str, &'static str, &'static str)>,
) -> (u16, Arc<std::sync::Mutex<Vec<std::time::Instant>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for (status, headers, body) in answers {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            // Read the request head (the client's requests here have no body).
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => request.extend_from_slice(&buffer[..read]),
                }
            }
            log.lock().unwrap().push(std::time::Instant::now());
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    (port, seen)
}

const SHED: (&str, &str, &str) = (
    "503 Service Unavailable",
    "retry-after: 1\r\n",
    r#"{"title":"Service Unavailable","detail":"the dashboard is answering as many requests as it may; retry in a second","status":503}"#,
);

/// A shed request (503 with `Retry-After`) is sent once more after the wait; a second refusal
/// is reported as one line.
#[tokio::test]
async fn a_shed_request_is_retried_once_after_retry_after() {
    let terms = (
        "200 OK",
        "",
        r#"[{"term":7,"node":"n1","started_at":"2026-11-27T09:00:00Z","last_seen_at":null,"handover_ms":null,"current":true}]"#,
    );
    let (port, seen) = scripted_server(vec![SHED, terms]).await;
    let outcome = tenure(&["terms", "--server", &format!("http://127.0.0.1:{port}")], &[]).await;
    assert_eq!(outcome.code, 0, "{outcome:?}");
    assert_eq!(
        outcome.stdout,
        "TERM  NODE  STARTED               LAST SEEN  HANDOVER  CURRENT\n7     n1    2026-11-27T09:00:00Z  -          -         yes\n"
    );
    let times = seen.lock().unwrap().clone();
    assert_eq!(times.len(), 2);
    assert!(times[1] - times[0] >= Duration::from_millis(950), "waited {:?}", times[1] - times[0]);

    let (port, seen) = scripted_server(vec![SHED, SHED, SHED]).await;
    let outcome = tenure(&["terms", "--server", &format!("http://127.0.0.1:{port}")], &[]).await;
    assert_eq!(
        (outcome.code, outcome.stdout.as_str(), outcome.stderr.as_str()),
        (
            2,
            "",
            "error: Service Unavailable: the dashboard is answering as many requests as it may; retry in a second (HTTP 503)\n"
        )
    );
    assert_eq!(seen.lock().unwrap().len(), 2, "one retry, not more");
}

/// `backfill --dry-run` lists the slots, `backfill` follows the
/// progress to its end (exit 0) and a second one has nothing new; `trigger --env --reason
/// --concurrency` records its overrides, which `show` prints.
#[tokio::test]
async fn backfill_follows_its_progress_and_trigger_carries_overrides() {
    let jobs = r#"
jobs:
  - name: tick
    schedule: "*/10 * * * * *"
    shell: 'echo "tick $TENURE_SLOT $WHO"'
    concurrency: allow
    overrides: [WHO]
"#;
    let dev = Dev::start(jobs).await;
    let server = ["--server", dev.server.as_str()];
    let token = [("TENURE_ADMIN_TOKEN", TOKEN)];
    let to = (chrono::Utc::now() - chrono::Duration::minutes(5)).format("%Y-%m-%dT%H:%M:00Z").to_string();
    let from = (chrono::Utc::now() - chrono::Duration::minutes(10)).format("%Y-%m-%dT%H:%M:00Z").to_string();
    let window = ["tick", "--from", from.as_str(), "--to", to.as_str()];

    let dry = tenure(&[&["backfill"][..], &window, &["--dry-run"], &server].concat(), &token).await;
    assert_eq!(dry.code, 0, "{dry:?}");
    // Five minutes of a slot every 10 s, both ends included.
    assert!(dry.stdout.starts_with("31 slot(s) of tick to run:\n"), "{dry:?}");
    assert_eq!(dry.stdout.lines().count(), 32, "{dry:?}");

    let done = tenure(&[&["backfill"][..], &window, &server].concat(), &token).await;
    assert_eq!(done.code, 0, "{done:?}");
    assert!(done.stdout.starts_with("backfill 1 of tick ("), "{done:?}");
    assert!(done.stdout.ends_with("): 31/31 done, 0 running, 0 pending: finished\n"), "{done:?}");
    let again = tenure(&[&["backfill"][..], &window, &["-o", "json"], &server].concat(), &token).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!((again.json()["slots"].as_i64(), again.json()["finished"].as_bool()), (Some(0), Some(true)));
    let runs = tenure(&[&["runs", "tick", "--limit", "100", "-o", "json"][..], &server].concat(), &[]).await;
    let backfilled = runs.json()["runs"].as_array().unwrap().iter().filter(|run| run["trigger"] == "backfill").count();
    assert_eq!(backfilled, 31);

    let future = ["tick", "--from", from.as_str(), "--to", "2999-01-01T00:00:00Z"];
    let refused = tenure(&[&["backfill"][..], &future, &server].concat(), &token).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("is in the future"), "{refused:?}");

    let overrides = ["--env", "WHO=operator", "--reason", "check the fix", "--concurrency", "allow"];
    let run = tenure(&[&["trigger", "tick", "--wait"][..], &overrides, &server].concat(), &token).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("\n  by              admin-token\n  reason          check the fix\n"), "{run:?}");
    assert!(run.stdout.contains("\n  concurrency     allow (asked for)\n  env             WHO=operator\n"), "{run:?}");
    assert!(run.stdout.ends_with(" operator\n"), "the override reached the job: {run:?}");
    let bad = tenure(&[&["trigger", "tick"][..], &["--env", "TENURE_TERM=1"], &server].concat(), &token).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("`TENURE_TERM` is reserved"), "{bad:?}");
    // A variable the job does not list: the server's reason, with the names it does list.
    let loader =
        tenure(&[&["trigger", "tick"][..], &["--env", "LD_PRELOAD=/tmp/evil.so"], &server].concat(), &token).await;
    assert_eq!(loader.code, 2, "{loader:?}");
    assert!(loader.stderr.contains("job `tick` lets a manual run set only WHO (its `overrides`)"), "{loader:?}");
}

#[tokio::test]
async fn tokens_login_whoami_and_audit_from_the_command_line() {
    use std::os::unix::fs::PermissionsExt;
    let dev = Dev::start(&JOBS.replace(
        "    schedule: \"0 0 1 1 *\"\n    shell: 'echo \"about",
        "    team: payments\n    schedule: \"0 0 1 1 *\"\n    shell: 'echo \"about",
    ))
    .await;
    let server = dev.server.as_str();
    let config = dev.dir.path().join("config");
    let config = config.to_str().unwrap();
    let admin = [("TENURE_ADMIN_TOKEN", TOKEN)];
    let logged_in = [("XDG_CONFIG_HOME", config)];

    let created = tenure(
        &["tokens", "create", "alice", "--role", "operator", "--team", "payments", "--server", server, "-o", "json"],
        &admin,
    )
    .await;
    assert_eq!(created.code, 0, "{created:?}");
    let token = created.json()["token"].as_str().unwrap().to_owned();
    let token_file = dev.dir.path().join("alice-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    let login = tenure(&["login", "--server", server, "--token-file", token_file.to_str().unwrap()], &logged_in).await;
    assert_eq!(login.code, 0, "{login:?}");
    assert!(login.stdout.contains("as alice (operator of payments, api-token)"), "{login:?}");
    let stored = std::path::Path::new(config).join("tenure/credentials.json");
    assert_eq!(std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777, 0o600);

    let whoami = tenure(&["whoami", "--server", server], &logged_in).await;
    assert_eq!(whoami.stdout, "alice (operator of payments, api-token)\n", "{whoami:?}");
    // `greet` is no team's: alice may not pause it; `broken` is her team's.
    let refused = tenure(&["pause", "greet", "--server", server], &logged_in).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("Forbidden") && refused.stderr.contains("no team's"), "{refused:?}");
    let paused = tenure(&["pause", "broken", "--server", server], &logged_in).await;
    assert_eq!(paused.code, 0, "{paused:?}");
    let triggered = tenure(&["trigger", "broken", "--wait", "--server", server], &logged_in).await;
    assert!(triggered.stdout.contains("alice"), "the run names who asked: {triggered:?}");

    let list = tenure(&["tokens", "list", "--server", server], &admin).await;
    assert!(list.stdout.contains("alice") && list.stdout.contains("payments") && !list.stdout.contains(&token));
    let audit = tenure(&["audit", "--who", "alice", "--server", server], &admin).await;
    assert_eq!(audit.code, 0, "{audit:?}");
    let lines: Vec<&str> = audit.stdout.lines().collect();
    assert!(lines.iter().any(|line| line.contains("pause") && line.contains("refused") && line.contains("greet")));
    assert!(lines.iter().any(|line| line.contains("pause") && line.contains("done") && line.contains("broken")));
    assert!(lines.iter().any(|line| line.contains("trigger") && line.contains("done")), "{}", audit.stdout);
    let not_admin = tenure(&["audit", "--server", server], &logged_in).await;
    assert_eq!(not_admin.code, 2, "{not_admin:?}");

    let revoked = tenure(&["tokens", "revoke", "alice", "--server", server], &admin).await;
    assert_eq!(revoked.code, 0, "{revoked:?}");
    let after = tenure(&["whoami", "--server", server], &logged_in).await;
    assert_eq!(after.code, 2, "{after:?}");
    assert!(after.stderr.contains("HTTP 401") && !after.stderr.contains(&token), "{after:?}");
}
