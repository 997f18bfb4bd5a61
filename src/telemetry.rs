//! Logging and metrics set-up for the binary (tests leave it alone), and how an error is told
//! on one log line.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests); the handle still renders ours.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// An error with its sources on one line, each cause said once.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

/// Every metric tenure records, named once. Label values come from bounded sets only: job names
/// (bounded by the job file), run statuses (`RunStatus`), fixed reasons and results; never a run
/// id, a slot or an error text.
pub mod metric {
    /// Gauge: 1 while this replica leads.
    pub const IS_LEADER: &str = "tenure_is_leader";
    /// Gauge: the term this replica leads in.
    pub const TERM: &str = "tenure_term";
    pub const ELECTIONS_WON: &str = "tenure_elections_won_total";
    pub const STEP_DOWNS: &str = "tenure_step_downs_total";
    /// Steps down because wall and monotonic time disagreed.
    pub const CLOCK_STEP_DOWNS: &str = "tenure_clock_step_downs_total";
    /// Histogram: keep-alive round trips to etcd.
    pub const KEEPALIVE_RTT: &str = "tenure_keepalive_rtt_seconds";
    /// Gauge: how long the cluster has been without a leader, as etcd sees it.
    pub const LEADERLESS: &str = "tenure_leaderless_seconds";
    /// Gauge: this replica's clock minus the database's.
    pub const CLOCK_SKEW: &str = "tenure_clock_skew_seconds";
    pub const DATABASE_REACHABLE: &str = "tenure_database_reachable";
    /// Label `result`: `success` or `failure`.
    pub const JOB_FILE_RELOADS: &str = "tenure_job_file_reloads_total";
    pub const RUNS_PRUNED: &str = "tenure_runs_pruned_total";
    pub const RUNS_LOST: &str = "tenure_runs_lost_total";
    /// Labels `job` and `status`.
    pub const RUNS: &str = "tenure_runs_total";
    /// Label `job`.
    pub const MISSED_SLOTS: &str = "tenure_missed_slots_total";
    /// Label `reason`: `fenced` or `already_claimed`.
    pub const CLAIMS_REJECTED: &str = "tenure_claims_rejected_total";
    pub const CLAIM_ERRORS: &str = "tenure_claim_errors_total";
    /// Histogram: from a slot to its run's start.
    pub const FIRE_LATENESS: &str = "tenure_fire_lateness_seconds";
    /// Histogram, label `job`.
    pub const RUN_DURATION: &str = "tenure_run_duration_seconds";
    /// Dashboard and API requests refused by admission (`http::shed`).
    pub const HTTP_SHED: &str = "tenure_http_shed_total";
}
