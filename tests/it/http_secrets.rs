//! Secrets of HTTP jobs on a real `tenure dev`: a URL's password and query values never reach a
//! page, the API, a run's recorded error, the log or a notification; header values and URLs read
//! from tenure's environment or a file reach the receiver and are shown `[redacted]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::Value;

use crate::harness::{free_port, wait_for};

/// A `tenure dev` on `jobs` with `env` added to its environment, its stderr (the log) in a file;
/// killed when dropped, also when the test fails.
pub(crate) struct Dev {
    child: Child,
    log: PathBuf,
    pub(crate) base: String,
}

impl Dev {
    pub(crate) fn start(dir: &Path, jobs: &Path, env: &[(&str, &str)]) -> Dev {
        let port = free_port();
        let log = dir.join("tenure.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tenure"))
            .args(["dev", "--admin-token", "tok", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--jobs")
            .arg(jobs)
            .arg("--ledger")
            .arg(dir.join("ledger.db"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tenure dev");
        Dev { child, log, base: format!("http://127.0.0.1:{port}") }
    }

    /// Everything logged so far.
    pub(crate) fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) async fn text(&self, path: &str) -> String {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        match client.get(format!("{}{path}", self.base)).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub(crate) async fn json(&self, path: &str) -> Value {
        serde_json::from_str(&self.text(path).await).unwrap_or(Value::Null)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request a receiver got: its path and query, headers and body.
#[derive(Debug, Clone)]
struct Request {
    uri: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// An HTTP server on loopback that answers 200 to everything and keeps every request.
struct Receiver {
    port: u16,
    heard: Arc<Mutex<Vec<Request>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let recorded = heard.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let recorded = recorded.clone();
            async move {
                let headers = headers
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or_default().to_owned()))
                    .collect();
                let body = String::from_utf8_lossy(&body).into_owned();
                recorded.lock().unwrap().push(Request { uri: uri.to_string(), headers, body });
                "ok"
            }
        });
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { port, heard, _server: server }
    }

    fn heard(&self) -> Vec<Request> {
        self.heard.lock().unwrap().clone()
    }
}

/// A loopback port with nothing listening: a request to it is refused.
fn closed_port() -> u16 {
    free_port()
}

/// The runs of `job` the API lists, newest first.
async fn runs(dev: &Dev, job: &str) -> Vec<Value> {
    dev.json(&format!("/api/jobs/{job}/runs")).await["runs"].as_array().cloned().unwrap_or_default()
}

/// Before: the URL `http://admin:PASSWORD@host/hook?token=TOKEN` was shown on `/jobs/NAME` and
/// `/api/jobs/NAME`, and reqwest's connection error quoted it whole, so it was recorded in the
/// run's error, logged, and sent in the notification's body.
#[tokio::test]
async fn an_http_jobs_url_password_and_query_values_are_never_shown_logged_or_notified() {
    const PASSWORD: &str = "pa55-word-distinct";
    const TOKEN: &str = "t0ken-value-distinct";
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.yaml");
    let port = closed_port();
    std::fs::write(
        &jobs,
        format!(
            "jobs:
  - name: leaky
    schedule: \"* * * * * *\"
    http: {{ url: \"http://admin:{PASSWORD}@127.0.0.1:{port}/hook?token={TOKEN}&plain=yes\" }}
    retries: {{ max: 1, backoff: 1s }}
    notify:
      - on: [failed]
        webhook: {{ url: \"http://127.0.0.1:{rport}/json\" }}
      - on: [failed]
        webhook: {{ url: \"http://127.0.0.1:{rport}/slack\", format: slack }}
",
            rport = receiver.port
        ),
    )
    .unwrap();
    let dev = Dev::start(dir.path(), &jobs, &[]);

    wait_for("a failed run of the leaky job, told to both targets", Duration::from_secs(30), || async {
        let failed = runs(&dev, "leaky").await.iter().any(|run| run["status"] == "failed");
        let heard = receiver.heard();
        failed
            && heard.iter().any(|request| request.uri.starts_with("/json"))
            && heard.iter().any(|request| request.uri.starts_with("/slack"))
    })
    .await;

    let job = dev.json("/api/jobs/leaky").await;
    let shown = format!("http://admin:***@127.0.0.1:{port}/hook?token=***&plain=***");
    assert_eq!(job["target"], format!("GET {shown}"), "{job}");
    let page = dev.text("/jobs/leaky").await;
    assert!(page.contains(&shown.replace('&', "&#38;")), "the job page shows the redacted URL:\n{page}");

    let runs = runs(&dev, "leaky").await;
    let failed = runs.iter().find(|run| run["status"] == "failed").unwrap();
    let error = failed["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains(&shown), "the run's error still says which URL failed: {error}");
    let run = dev.json(&format!("/api/runs/{}", failed["id"])).await;
    let run_page = dev.text(&format!("/runs/{}", failed["id"])).await;
    let overview = dev.text("/").await;
    let notifications: Vec<String> = receiver.heard().iter().map(|request| request.body.clone()).collect();
    assert!(notifications.iter().any(|body| body.contains("could not connect")), "{notifications:?}");

    let places = [
        ("/api/jobs/leaky", job.to_string()),
        ("/jobs/leaky", page),
        ("/", overview),
        ("/api/jobs/leaky/runs", Value::Array(runs.clone()).to_string()),
        ("/api/runs/ID", run.to_string()),
        ("/runs/ID", run_page),
        ("the notifications", notifications.join("\n")),
        ("the log", dev.log()),
    ];
    for (place, text) in places {
        for secret in [PASSWORD, TOKEN] {
            assert!(!text.contains(secret), "`{secret}` appears in {place}:\n{text}");
        }
    }
}

/// Before: header values and URLs could only be written in the job file. Now `{ env: NAME }` and
/// `{ file: PATH }` are read when the run is prepared, reach the receiver, and are shown
/// `[redacted]`; a variable not set or a file not readable fails the run naming it, never a value.
#[tokio::test]
async fn http_headers_and_urls_from_the_environment_or_a_file_reach_the_receiver_shown_redacted() {
    const ENV_TOKEN: &str = "Bearer env-secret-distinct";
    const FILE_TOKEN: &str = "file-secret-distinct";
    const URL_KEY: &str = "url-key-distinct";
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("billing");
    std::fs::write(&secret_file, format!("{FILE_TOKEN}\n")).unwrap();
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(
        &jobs,
        format!(
            "jobs:
  - name: billing
    schedule: \"* * * * * *\"
    http:
      url: {{ env: HOOK_URL }}
      method: POST
      headers:
        Authorization: {{ env: BILLING_TOKEN }}
        X-Billing-Key: {{ file: {file} }}
        X-Plain: plain-value
  - name: unset
    schedule: \"* * * * * *\"
    http:
      url: \"http://127.0.0.1:{port}/unset\"
      headers: {{ Authorization: {{ env: NOT_SET_ANYWHERE }} }}
  - name: unreadable
    schedule: \"* * * * * *\"
    http:
      url: {{ file: {missing} }}
",
            file = secret_file.display(),
            port = receiver.port,
            missing = dir.path().join("no-such-file").display(),
        ),
    )
    .unwrap();
    let hook_url = format!("http://127.0.0.1:{}/billing?key={URL_KEY}", receiver.port);
    let dev = Dev::start(dir.path(), &jobs, &[("HOOK_URL", &hook_url), ("BILLING_TOKEN", ENV_TOKEN)]);

    wait_for("the billing job to reach the receiver", Duration::from_secs(30), || async {
        receiver.heard().iter().any(|request| request.uri.starts_with("/billing"))
    })
    .await;
    let request = receiver.heard().into_iter().find(|request| request.uri.starts_with("/billing")).unwrap();
    assert_eq!(request.uri, format!("/billing?key={URL_KEY}"));
    assert_eq!(request.headers.get("authorization").map(String::as_str), Some(ENV_TOKEN));
    assert_eq!(request.headers.get("x-billing-key").map(String::as_str), Some(FILE_TOKEN));
    assert_eq!(request.headers.get("x-plain").map(String::as_str), Some("plain-value"));

    wait_for("the unset and unreadable jobs to fail", Duration::from_secs(30), || async {
        runs(&dev, "unset").await.iter().any(|run| run["status"] == "failed")
            && runs(&dev, "unreadable").await.iter().any(|run| run["status"] == "failed")
    })
    .await;
    let error = |runs: Vec<Value>| runs[0]["error"].as_str().unwrap_or_default().to_owned();
    let unset = error(runs(&dev, "unset").await);
    assert!(unset.contains("Authorization") && unset.contains("NOT_SET_ANYWHERE"), "{unset}");
    let unreadable = error(runs(&dev, "unreadable").await);
    assert!(unreadable.contains("url") && unreadable.contains("no-such-file"), "{unreadable}");
    assert!(receiver.heard().iter().all(|request| !request.uri.starts_with("/unset")), "sent without its header");

    let job = dev.json("/api/jobs/billing").await;
    assert_eq!(job["target"], "POST [redacted]", "{job}");
    assert_eq!(
        job["headers"],
        serde_json::json!({ "Authorization": "[redacted]", "X-Billing-Key": "[redacted]", "X-Plain": "[redacted]" }),
        "{job}"
    );
    let page = dev.text("/jobs/billing").await;
    assert!(page.contains("[redacted]") && page.contains("X-Billing-Key"), "{page}");
    let places = [
        ("/api/jobs/billing", job.to_string()),
        ("/jobs/billing", page),
        ("/api/jobs", dev.text("/api/jobs").await),
        ("/api/jobs/unset/runs", dev.text("/api/jobs/unset/runs").await),
        ("the log", dev.log()),
    ];
    for (place, text) in places {
        for secret in [ENV_TOKEN, FILE_TOKEN, URL_KEY, "plain-value"] {
            assert!(!text.contains(secret), "`{secret}` appears in {place}:\n{text}");
        }
    }
}
