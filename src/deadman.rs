//! The dead-man ping (`--heartbeat-url`): a request to an outside monitor (Healthchecks.io,
//! Cronitor, any URL that alerts when it stops hearing from us) every interval while this
//! replica leads, so a cluster that is down entirely, or whose leader's firing loop is wedged,
//! raises an alert somewhere else. No leader, no ping.
//!
//! This module owns the request (GET by default, or POST), its headers, its failure log
//! (rate-limited) and its metrics. It does not decide when to ping: the scheduler asks from
//! inside its firing loop, only for a term it holds and only while the term's lease is valid,
//! and the request in flight is aborted when the term ends. Failures are never fatal.
//!
//! The URL often carries a secret token in its path (Healthchecks.io's do): it is held as a
//! `Secret`, and logs and errors name its host only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::secret::Secret;
use crate::telemetry::metric;

/// At most one warning per this long while pings keep failing; the rest are counted in it.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);
/// A ping never waits longer than this, however long the interval.
const MAX_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP method of a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PingMethod {
    Get,
    Post,
}

/// Why a `--heartbeat-url` is refused. The URL itself is never repeated: it may hold a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeadManUrlError {
    #[error("--heartbeat-url is not a URL")]
    Unparsable,
    #[error("--heartbeat-url must be an http:// or https:// URL, not {scheme}://")]
    Scheme { scheme: String },
    #[error("--heartbeat-url has no host")]
    NoHost,
    #[error("--heartbeat-interval must be at least 100ms")]
    IntervalTooShort,
}

/// What `--heartbeat-url`, `--heartbeat-interval` and `--heartbeat-method` configure, checked.
#[derive(Debug, Clone)]
pub struct DeadManSettings {
    url: Secret,
    host: String,
    pub interval: Duration,
    pub method: PingMethod,
}

impl DeadManSettings {
    pub fn new(url: Secret, interval: Duration, method: PingMethod) -> Result<DeadManSettings, DeadManUrlError> {
        let parsed = reqwest::Url::parse(url.expose()).map_err(|_| DeadManUrlError::Unparsable)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(DeadManUrlError::Scheme { scheme: parsed.scheme().to_owned() });
        }
        let host = parsed.host_str().filter(|host| !host.is_empty()).ok_or(DeadManUrlError::NoHost)?.to_owned();
        if interval < Duration::from_millis(100) {
            return Err(DeadManUrlError::IntervalTooShort);
        }
        Ok(DeadManSettings { url, host, interval, method })
    }

    /// The monitor's host: all a log line may say of the URL.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// The pinger of one replica: cheap to clone (the scheduler hands a clone to each request).
#[derive(Debug, Clone)]
pub struct DeadManPing {
    settings: Arc<DeadManSettings>,
    node: String,
    http: reqwest::Client,
    failures: Arc<Mutex<FailureLog>>,
}

/// Failures since the last warning, so a monitor that is down does not flood the log.
#[derive(Debug, Default)]
struct FailureLog {
    last_warning: Option<Instant>,
    unlogged: u64,
    failing: bool,
}

impl DeadManPing {
    /// `http`: the replica's HTTP client (its TLS roots), shared with the executor.
    pub fn new(settings: DeadManSettings, node: &str, http: reqwest::Client) -> DeadManPing {
        // Both results are exported from the start, so an alert on their increase sees the first failure.
        for result in ["success", "failure"] {
            metrics::counter!(metric::DEADMAN_PINGS, "result" => result).increment(0);
        }
        DeadManPing { settings: Arc::new(settings), node: node.to_owned(), http, failures: Default::default() }
    }

    pub fn interval(&self) -> Duration {
        self.settings.interval
    }

    /// Send one ping for `term` and record how it went. Never fails: a failure is counted and
    /// logged (at most once a minute).
    pub async fn ping(&self, term: i64) {
        let settings = &self.settings;
        let request = match settings.method {
            PingMethod::Get => self.http.get(settings.url.expose()),
            PingMethod::Post => self.http.post(settings.url.expose()),
        };
        let sent = request
            .header(reqwest::header::USER_AGENT, concat!("tenure/", env!("CARGO_PKG_VERSION")))
            .header("X-Tenure-Node", &self.node)
            .header("X-Tenure-Term", term.to_string())
            .timeout(settings.interval.min(MAX_PING_TIMEOUT))
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("HTTP {}", response.status().as_u16())),
            // Without the URL: reqwest's error text would repeat it, token and all.
            Err(error) => Some(request_failure(&error)),
        };
        match failure {
            None => self.succeeded(),
            Some(why) => self.failed(&why),
        }
    }

    fn succeeded(&self) {
        metrics::counter!(metric::DEADMAN_PINGS, "result" => "success").increment(1);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        metrics::gauge!(metric::DEADMAN_LAST_SUCCESS).set(now.as_secs_f64());
        let mut log = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if log.failing {
            tracing::info!(host = %self.settings.host, "dead-man ping succeeds again");
        }
        *log = FailureLog::default();
    }

    fn failed(&self, why: &str) {
        metrics::counter!(metric::DEADMAN_PINGS, "result" => "failure").increment(1);
        let mut log = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        log.failing = true;
        let due = log.last_warning.is_none_or(|at| at.elapsed() >= FAILURE_LOG_EVERY);
        if due {
            tracing::warn!(
                host = %self.settings.host, error = why, unlogged_failures = log.unlogged,
                "dead-man ping failed; the monitor will raise an alert if this goes on"
            );
            log.last_warning = Some(Instant::now());
            log.unlogged = 0;
        } else {
            log.unlogged += 1;
        }
    }
}

/// What went wrong with a request, in words that never hold its URL.
pub(crate) fn request_failure(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_redirect() {
        "too many redirects"
    } else {
        "request failed"
    };
    let cause = std::error::Error::source(error).map(crate::telemetry::one_line);
    match cause {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<DeadManSettings, DeadManUrlError> {
        DeadManSettings::new(Secret::new(url), Duration::from_secs(60), PingMethod::Get)
    }

    #[test]
    fn a_heartbeat_url_is_checked_without_repeating_it() {
        let ok = settings("https://hc-ping.com/0b6c0d4e-secret-uuid").unwrap();
        assert_eq!(ok.host(), "hc-ping.com");
        assert!(!format!("{ok:?}").contains("secret"), "{ok:?}");
        assert_eq!(settings("hc-ping.com/secret").unwrap_err(), DeadManUrlError::Unparsable);
        assert_eq!(settings("ftp://example.com/secret").unwrap_err(), DeadManUrlError::Scheme { scheme: "ftp".into() });
        for error in [settings("hc-ping.com/secret").unwrap_err(), settings("ftp://example.com/secret").unwrap_err()] {
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        let short = DeadManSettings::new(Secret::new("http://127.0.0.1/x"), Duration::from_millis(10), PingMethod::Get);
        assert_eq!(short.unwrap_err(), DeadManUrlError::IntervalTooShort);
    }
}
