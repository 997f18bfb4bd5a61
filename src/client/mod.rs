//! The API client behind `tenure status`, `jobs`, `runs`, `show`, `trigger`, `pause`, `resume`
//! and `terms`: typed calls to a replica's `/api` (any replica answers; controls are recorded in
//! the ledger, so a follower takes them as the leader would), each returning the API's JSON
//! document beside its typed reading, so `--output json` prints what the server sent.
//! `commands` holds the clap definitions and runs them, `render` the tables. It owns no server
//! logic and no SQL: everything it knows comes over HTTP.
//!
//! The admin token is a `Secret`: sent as `Authorization: Bearer`, never printed, never in an
//! error. An error answer becomes one line, `<title>: <detail> (HTTP <status>)`, from the
//! server's problem+json.

pub mod commands;
pub mod login;
pub mod render;
pub mod types;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::RunStatus;
use crate::secret::{Secret, mask_url};
use types::{Backfill, BackfillPlan, Cluster, Job, Paused, Run, RunPage, Term, Trigger};

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `Retry-After` a shed request waits for before its one retry; a longer one is
/// reported instead (the server is overloaded, a person should know).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(10);
/// The most runs `/api/jobs/{name}/runs` answers in one page.
const RUNS_PAGE_MAX: usize = 500;

/// Why a command could not get its answer. Every variant reads as one line; none holds the
/// token.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The command line or a file it names is unusable (bad URL, unreadable CA file, no token).
    #[error("{0}")]
    Setup(String),
    #[error("cannot reach tenure at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The server's own error answer.
    #[error("{title}: {detail} (HTTP {status})")]
    Problem { status: u16, title: String, detail: String },
    /// An answer that is not the API's (a proxy's error page, another service on the port).
    #[error("unexpected answer from {url}: {reason}")]
    Unexpected { url: String, reason: String },
}

/// An answer: the typed reading and the document it was read from.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    pub value: T,
    pub document: Value,
}

/// A connection to one replica's API.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<Secret>,
}

impl Client {
    /// `server` is `http://host:port` or `https://host:port` (a path prefix is kept, for a
    /// replica behind a proxy); `ca_file` is a PEM bundle trusted besides the built-in roots.
    pub fn new(server: &str, token: Option<Secret>, ca_file: Option<&Path>) -> Result<Client, ClientError> {
        let shown = shown_server(server);
        let mut base =
            Url::parse(server).map_err(|error| ClientError::Setup(format!("--server {shown}: not a URL ({error})")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(ClientError::Setup(format!(
                "--server {shown}: expected http://HOST:PORT or https://HOST:PORT"
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut builder =
            reqwest::Client::builder().timeout(REQUEST_TIMEOUT).connect_timeout(CONNECT_TIMEOUT).use_rustls_tls();
        if let Some(path) = ca_file {
            for certificate in read_certificates(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http =
            builder.build().map_err(|error| ClientError::Setup(format!("HTTP client: {}", innermost(&error))))?;
        Ok(Client { http, base, token })
    }

    /// The server as the user gave it, without any password in it.
    pub fn server(&self) -> String {
        mask_url(self.base.as_str().trim_end_matches('/'))
    }

    pub async fn cluster(&self) -> Result<Answer<Cluster>, ClientError> {
        self.read(self.url(&["api", "cluster"])).await
    }

    pub async fn terms(&self) -> Result<Answer<Vec<Term>>, ClientError> {
        self.read(self.url(&["api", "terms"])).await
    }

    /// Every job, page after page; the document is one array of them all.
    pub async fn jobs(&self) -> Result<Answer<Vec<Job>>, ClientError> {
        let mut jobs = Vec::new();
        let mut documents = Vec::new();
        for page in 1.. {
            let mut url = self.url(&["api", "jobs"]);
            url.query_pairs_mut().append_pair("page", &page.to_string());
            let answer: Answer<Vec<Job>> = self.read(url).await?;
            if answer.value.is_empty() {
                break;
            }
            jobs.extend(answer.value);
            if let Value::Array(items) = answer.document {
                documents.extend(items);
            }
        }
        Ok(Answer { value: jobs, document: Value::Array(documents) })
    }

    /// Up to `limit` runs of `job`, newest first, following the API's pages; the document is
    /// one page of them all.
    pub async fn job_runs(
        &self,
        job: &str,
        status: Option<RunStatus>,
        limit: usize,
    ) -> Result<Answer<RunPage>, ClientError> {
        let mut runs = Vec::new();
        let mut documents = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = self.url(&["api", "jobs", job, "runs"]);
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("limit", &(limit - runs.len()).min(RUNS_PAGE_MAX).to_string());
                if let Some(status) = status {
                    query.append_pair("status", status.as_str());
                }
                if let Some(cursor) = &cursor {
                    query.append_pair("cursor", cursor);
                }
            }
            let answer: Answer<RunPage> = self.read(url).await?;
            runs.extend(answer.value.runs);
            if let Some(items) = answer.document.get("runs").and_then(Value::as_array) {
                documents.extend(items.iter().cloned());
            }
            cursor = answer.value.next_cursor;
            if cursor.is_none() || runs.len() >= limit {
                break;
            }
        }
        let document = serde_json::json!({ "runs": documents, "next_cursor": cursor });
        Ok(Answer { value: RunPage { runs, next_cursor: cursor }, document })
    }

    pub async fn run(&self, id: i64) -> Result<Answer<Run>, ClientError> {
        self.read(self.url(&["api", "runs", &id.to_string()])).await
    }

    /// Ask for a run of `job` now under `idempotency_key`, with `overrides` (the API's trigger
    /// body: `env`, `reason`, `concurrency`): sending the same key again is the same trigger,
    /// and answers with its state (the run id once the leader claimed it).
    pub async fn trigger(
        &self,
        job: &str,
        idempotency_key: &str,
        overrides: &Value,
    ) -> Result<Answer<Trigger>, ClientError> {
        let url = self.url(&["api", "jobs", job, "trigger"]);
        self.change(url, "trigger", Some(idempotency_key), Some(overrides)).await
    }

    /// Ask for run `id` to be cancelled, `reason` recorded with who asked: the run as it is now
    /// (still running until the leader has stopped it).
    pub async fn cancel(&self, id: i64, reason: Option<&str>) -> Result<Answer<Run>, ClientError> {
        let body = serde_json::json!({ "reason": reason });
        self.change(self.url(&["api", "runs", &id.to_string(), "cancel"]), "cancel", None, Some(&body)).await
    }

    pub async fn pause(&self, job: &str) -> Result<Answer<Paused>, ClientError> {
        self.change(self.url(&["api", "jobs", job, "pause"]), "pause", None, None).await
    }

    pub async fn resume(&self, job: &str) -> Result<Answer<Paused>, ClientError> {
        self.change(self.url(&["api", "jobs", job, "resume"]), "resume", None, None).await
    }

    /// What a backfill of `job` over `[from, to]` would run: the slots the ledger does not hold.
    pub async fn backfill_plan(
        &self,
        job: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Answer<BackfillPlan>, ClientError> {
        let body = serde_json::json!({ "from": from, "to": to, "dry_run": true });
        self.change(self.url(&["api", "jobs", job, "backfill"]), "backfill", None, Some(&body)).await
    }

    /// Record a backfill of `job` over `[from, to]` (`cascade`: its runs release the jobs
    /// waiting for it, link after link). Repeating it queues nothing new.
    pub async fn backfill(
        &self,
        job: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cascade: bool,
    ) -> Result<Answer<Backfill>, ClientError> {
        let body = serde_json::json!({ "from": from, "to": to, "cascade": cascade });
        self.change(self.url(&["api", "jobs", job, "backfill"]), "backfill", None, Some(&body)).await
    }

    /// A backfill's progress.
    pub async fn backfill_progress(&self, id: i64) -> Result<Answer<Backfill>, ClientError> {
        self.read(self.url(&["api", "backfills", &id.to_string()])).await
    }

    /// The caller as the server sees it: name, role, teams, how authenticated.
    pub async fn whoami(&self) -> Result<Answer<Value>, ClientError> {
        self.read(self.url(&["api", "whoami"])).await
    }

    /// Where the CLI signs in through the identity provider (`tenure login --sso`).
    pub async fn oidc_settings(&self) -> Result<Answer<crate::http::CliSettings>, ClientError> {
        self.read(self.url(&["api", "auth", "oidc"])).await
    }

    /// A session token for an ID token the provider issued to the CLI's client.
    pub async fn session(&self, id_token: &str) -> Result<Answer<Value>, ClientError> {
        let body = serde_json::json!({ "id_token": id_token });
        self.send(Method::POST, self.url(&["api", "auth", "session"]), None, Some(&body)).await
    }

    /// Every named token (never a secret).
    pub async fn tokens(&self) -> Result<Answer<Vec<Value>>, ClientError> {
        self.read(self.url(&["api", "tokens"])).await
    }

    /// Create a named token (`{"name", "role", "teams", "expires_in"}`): the answer holds its
    /// text, shown this once.
    pub async fn create_token(&self, body: &Value) -> Result<Answer<Value>, ClientError> {
        self.change(self.url(&["api", "tokens"]), "tokens create", None, Some(body)).await
    }

    /// Revoke the token with this id or name.
    pub async fn revoke_token(&self, id_or_name: &str) -> Result<Answer<Value>, ClientError> {
        self.change(self.url(&["api", "tokens", id_or_name, "revoke"]), "tokens revoke", None, None).await
    }

    /// One page of the audit trail, filtered by `query` (name and value pairs of `GET /api/audit`).
    pub async fn audit(&self, query: &[(&str, String)]) -> Result<Answer<Value>, ClientError> {
        let mut url = self.url(&["api", "audit"]);
        url.query_pairs_mut().extend_pairs(query.iter().map(|(name, value)| (*name, value.as_str())));
        self.read(url).await
    }

    /// The base URL with `segments` appended, each percent-encoded (a job name is a segment).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("an http(s) URL has a path").pop_if_empty().extend(segments);
        url
    }

    async fn read<T: DeserializeOwned>(&self, url: Url) -> Result<Answer<T>, ClientError> {
        self.send(Method::GET, url, None, None).await
    }

    /// A control (trigger, pause, resume): it needs the admin token, so without one nothing is
    /// sent and the user is told where the token comes from.
    async fn change<T: DeserializeOwned>(
        &self,
        url: Url,
        what: &str,
        idempotency_key: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer<T>, ClientError> {
        if self.token.is_none() {
            return Err(ClientError::Setup(format!(
                "{what} needs a token: run `tenure login`, give --token-file PATH or set TENURE_TOKEN"
            )));
        }
        self.send(Method::POST, url, idempotency_key, body).await
    }

    /// One request, retried once after the server's `Retry-After` when it shed it (every call
    /// here is safe to repeat: reads, pause and resume are idempotent, a trigger carries its key,
    /// a backfill queues only what no backfill queued).
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        idempotency_key: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer<T>, ClientError> {
        let mut retried = false;
        loop {
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(token) = &self.token {
                request = request.bearer_auth(token.expose());
            }
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.map_err(|error| self.unreachable(&error))?;
            match retry_after(&response) {
                Some(wait) if !retried => {
                    retried = true;
                    tokio::time::sleep(wait).await;
                }
                _ => return self.answer(response).await,
            }
        }
    }

    async fn answer<T: DeserializeOwned>(&self, response: reqwest::Response) -> Result<Answer<T>, ClientError> {
        let status = response.status();
        let url = mask_url(response.url().as_str());
        let body = response.bytes().await.map_err(|error| self.unreachable(&error))?;
        if !status.is_success() {
            return Err(error_answer(status, &url, &body));
        }
        let unexpected = |reason: String| ClientError::Unexpected { url: url.clone(), reason };
        let document: Value =
            serde_json::from_slice(&body).map_err(|error| unexpected(format!("not JSON ({error})")))?;
        let value = serde_json::from_value(document.clone())
            .map_err(|error| unexpected(format!("not the API's answer ({error})")))?;
        Ok(Answer { value, document })
    }

    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        let reason = if error.is_timeout() {
            format!("no answer within {}", humantime::format_duration(REQUEST_TIMEOUT))
        } else {
            innermost(error)
        };
        ClientError::Unreachable { server: self.server(), reason }
    }
}

/// The server as the user typed it, fit for an error line: a password masked; a text without
/// a scheme (`host:8080`) shown as typed, unless it holds user information.
fn shown_server(server: &str) -> String {
    match (server.contains("://"), server.contains('@')) {
        (true, _) => mask_url(server),
        (false, false) => server.to_owned(),
        (false, true) => "[a server address with user information]".to_owned(),
    }
}

/// How long a shed request (503 with `Retry-After` in seconds) should wait before its retry;
/// `None` for any other answer, or a wait too long to sit through.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    if response.status() != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let seconds: u64 = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds)).filter(|wait| *wait <= RETRY_AFTER_MAX)
}

/// An error answer as one line: the server's problem+json, or what came instead of it.
fn error_answer(status: StatusCode, url: &str, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<types::Problem>(body) {
        Ok(problem) => ClientError::Problem { status: status.as_u16(), title: problem.title, detail: problem.detail },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let first_line = text.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("");
            let excerpt: String = first_line.chars().take(120).collect();
            let reason = match excerpt.is_empty() {
                true => format!("HTTP {}", status.as_u16()),
                false => format!("HTTP {}: {excerpt}", status.as_u16()),
            };
            ClientError::Unexpected { url: url.to_owned(), reason }
        }
    }
}

/// The deepest cause of an error: reqwest's own message names only the URL ("error sending
/// request"); what a person needs is at the bottom ("Connection refused", "invalid peer
/// certificate: UnknownIssuer").
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    deepest.to_string()
}

/// The certificates of a PEM bundle (a private CA, maybe with intermediates).
fn read_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|error| ClientError::Setup(format!("read --ca-file {shown}: {error}")))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|error| ClientError::Setup(format!("--ca-file {shown}: {}", innermost(&error))))?;
    if certificates.is_empty() {
        return Err(ClientError::Setup(format!("--ca-file {shown}: no PEM certificate in it")));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_answer_is_the_problem_or_the_first_line_of_what_came() {
        let problem = br#"{"title":"Not Found","detail":"no run 7","status":404}"#;
        let error = error_answer(StatusCode::NOT_FOUND, "http://h/api/runs/7", problem);
        assert_eq!(error.to_string(), "Not Found: no run 7 (HTTP 404)");
        let page = b"\n<html><head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>";
        let error = error_answer(StatusCode::BAD_GATEWAY, "http://h/api/jobs", page);
        assert_eq!(
            error.to_string(),
            "unexpected answer from http://h/api/jobs: HTTP 502: <html><head><title>502 Bad Gateway</title></head>"
        );
        let error = error_answer(StatusCode::INTERNAL_SERVER_ERROR, "http://h/api/jobs", b"");
        assert_eq!(error.to_string(), "unexpected answer from http://h/api/jobs: HTTP 500");
    }

    #[test]
    fn paths_are_kept_and_names_encoded_and_a_password_in_the_server_never_shown() {
        let client = Client::new("https://user:pw@example.com:8443/tenure", None, None).unwrap();
        assert_eq!(
            client.url(&["api", "jobs", "a b/c", "runs"]).as_str(),
            "https://user:pw@example.com:8443/tenure/api/jobs/a%20b%2Fc/runs"
        );
        assert_eq!(client.server(), "https://user:***@example.com:8443/tenure");
        let refused = Client::new("example.com:8080", None, None).err().unwrap().to_string();
        assert_eq!(refused, "--server example.com:8080: expected http://HOST:PORT or https://HOST:PORT");
        for server in ["http://u:secret@", "u:secret@example.com"] {
            let refused = Client::new(server, None, None).err().unwrap().to_string();
            assert!(refused.starts_with("--server ") && !refused.contains("secret"), "{refused}");
        }
    }
}
