//! Logging and metrics set-up for the binary (tests leave it alone), and how an error is told
//! on one log line.

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tracing_subscriber::EnvFilter;

use crate::model::RunStatus;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log to stderr, filtered by `RUST_LOG` (default `info`); in colour only on a terminal and
/// without `NO_COLOR` (<https://no-color.org>), so a log file or a collector gets plain text.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Fire lateness as a histogram (not the exporter's default summary), so alerts can take a
        // quantile over any window and across replicas.
        let recorder = recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests); the handle still renders ours.
        if metrics::set_global_recorder(recorder).is_ok() {
            describe_metrics();
        }
        handle
    })
}

/// How often the recorder folds what histograms observed into their buckets and summaries
/// (upkeep), scraped or not.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The Prometheus recorder tenure exports, with its upkeep: a histogram keeps each observation
/// (the value and when it came: 16 bytes and its share of a block) until it is folded into its
/// buckets or summary, which a scrape of `/metrics` does, and otherwise nothing. Two histograms
/// per run (lateness, duration) made a replica nobody scraped grow by about 0.4 MB a minute at
/// 200 runs a second. So a thread folds them in every `UPKEEP_EVERY`.
pub fn recorder() -> PrometheusRecorder {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(metric::FIRE_LATENESS.to_owned()), LATENESS_BUCKETS)
        .expect("the lateness buckets are not empty")
        .set_buckets_for_metric(Matcher::Full(metric::START_WITNESS.to_owned()), LATENESS_BUCKETS)
        .expect("the lateness buckets are not empty")
        .build_recorder();
    let handle = recorder.handle();
    let upkeep = std::thread::Builder::new().name("tenure-metrics".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        }
    });
    if let Err(error) = upkeep {
        tracing::warn!(%error, "could not start the metrics upkeep; histograms are folded in only when scraped");
    }
    recorder
}

/// What kind of series a metric is, for its `# HELP` and `# TYPE`.
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric tenure exports, with the help text `/metrics` shows for it (`promtool check
/// metrics` wants one for each).
const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    (metric::IS_LEADER, Kind::Gauge, "1 while this replica leads"),
    (metric::TERM, Kind::Gauge, "The term this replica leads in"),
    (metric::ELECTIONS_WON, Kind::Counter, "Elections this replica won"),
    (metric::STEP_DOWNS, Kind::Counter, "Times this replica stopped leading"),
    (metric::CLOCK_STEP_DOWNS, Kind::Counter, "Step-downs because wall and monotonic time disagreed"),
    (metric::KEEPALIVE_RTT, Kind::Histogram, "Round trips of lease keep-alives to the coordinator, in seconds"),
    (metric::LEADERLESS, Kind::Gauge, "How long the cluster has been without a leader, in seconds"),
    (metric::CLOCK_SKEW, Kind::Gauge, "This replica's clock minus the database's, in seconds"),
    (metric::DATABASE_REACHABLE, Kind::Gauge, "1 while the database answers this replica"),
    (metric::JOB_FILE_RELOADS, Kind::Counter, "Job file reloads by result (success or failure)"),
    (metric::POLICY_RELOADS, Kind::Counter, "Sign-in policy reloads by result (success or failure)"),
    (metric::RUNS_PRUNED, Kind::Counter, "Ledger rows removed by retention"),
    (
        metric::AUDIT_REFUSALS_UNRECORDED,
        Kind::Counter,
        "Refused attempts only logged, not audited: more arrived at once than the gate records",
    ),
    (metric::PRUNE_FAILURES, Kind::Counter, "Retention cycles of the leader that failed on a database error"),
    (metric::RUNS_LOST, Kind::Counter, "Runs recorded lost: started, then their replica vanished"),
    (metric::RUNS, Kind::Counter, "Runs ended, by job and status"),
    (metric::MISSED_SLOTS, Kind::Counter, "Slots not run per the job's catch-up policy or starting deadline, by job"),
    (
        metric::FORGOTTEN_STARTS,
        Kind::Counter,
        "Runs recorded lost because a database failover lost their starts (never run again)",
    ),
    (metric::START_WITNESS, Kind::Histogram, "Time to record a batch of starts in the coordinator, in seconds"),
    (metric::LEDGER_SYNCHRONOUS, Kind::Gauge, "1 when the ledger's commits wait for a named synchronous standby"),
    (metric::CLAIMS_REJECTED, Kind::Counter, "Claims the ledger refused, by reason (fenced or already_claimed)"),
    (metric::CLAIM_ERRORS, Kind::Counter, "Claims that failed on a database error and were retried"),
    (metric::FIRE_LATENESS, Kind::Histogram, "From a run's planned start to its first attempt, in seconds"),
    (metric::RUN_DURATION, Kind::Histogram, "How long runs took, in seconds"),
    (metric::JOB_FILE_INFO, Kind::Gauge, "1 for the job file this replica runs, by its hash"),
    (metric::DEADMAN_PINGS, Kind::Counter, "Dead-man pings sent while leading, by result"),
    (metric::DEADMAN_LAST_SUCCESS, Kind::Gauge, "When the last dead-man ping succeeded, in Unix seconds"),
    (metric::HTTP_SHED, Kind::Counter, "Dashboard and API requests turned away by admission"),
    (
        metric::HTTP_CONNECTIONS_SHED,
        Kind::Counter,
        "HTTP connections closed at the connection cap, by reason (idle: closed to make room; busy: a new one refused)",
    ),
    (metric::NOTIFICATIONS, Kind::Counter, "Notification delivery attempts while leading, by result"),
    (metric::NOTIFICATIONS_PENDING, Kind::Gauge, "Notifications in the outbox not delivered yet (the leader's view)"),
];

fn describe_metrics() {
    for (name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

/// Upper bounds of the fire lateness buckets, in seconds: a run on time starts within a few
/// milliseconds of its slot.
const LATENESS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Export the series alerts look at from the moment a job file is loaded, at 0, so the first
/// missed slot, lost run or fenced claim is an increase Prometheus can see (a counter that appears
/// at 1 has no increase). `previous_hash`: the job file this replica ran before, now retired.
pub fn job_file_loaded<'a>(hash: &str, previous_hash: Option<&str>, jobs: impl Iterator<Item = &'a str>) {
    if let Some(previous) = previous_hash {
        metrics::gauge!(metric::JOB_FILE_INFO, "hash" => previous.to_owned()).set(0.0);
    }
    metrics::gauge!(metric::JOB_FILE_INFO, "hash" => hash.to_owned()).set(1.0);
    metrics::counter!(metric::RUNS_LOST).increment(0);
    metrics::counter!(metric::FORGOTTEN_STARTS).increment(0);
    metrics::counter!(metric::PRUNE_FAILURES).increment(0);
    for reason in ["fenced", "already_claimed"] {
        metrics::counter!(metric::CLAIMS_REJECTED, "reason" => reason).increment(0);
    }
    for job in jobs {
        metrics::counter!(metric::MISSED_SLOTS, "job" => job.to_owned()).increment(0);
        for status in ["succeeded", "failed", "timed_out", "killed", "skipped"] {
            metrics::counter!(metric::RUNS, "job" => job.to_owned(), "status" => status).increment(0);
        }
    }
}

/// The series one job's runs record, looked up in the registry once rather than at every run:
/// counting an outcome is then an atomic add. At a slot where a thousand runs end together, a
/// thousand lookups of a labelled counter (the job's name copied, the key built, hashed and
/// compared under the registry's lock) took a few per cent of the burst's CPU. Cheap to clone.
#[derive(Clone)]
pub struct JobRunMetrics {
    job: Arc<str>,
    /// `RUNS` by status (in `RunStatus::ALL`'s order), each registered at its first count, so
    /// no series is exported that `job_file_loaded` does not export or a run never counted.
    runs: Arc<[OnceLock<Counter>; RunStatus::ALL.len()]>,
    pub fire_lateness: Histogram,
    pub run_duration: Histogram,
}

impl JobRunMetrics {
    pub fn new(job: &str) -> JobRunMetrics {
        JobRunMetrics {
            job: job.into(),
            runs: Arc::default(),
            fire_lateness: metrics::histogram!(metric::FIRE_LATENESS),
            run_duration: metrics::histogram!(metric::RUN_DURATION),
        }
    }

    /// One more run of the job ended `status`.
    pub fn count(&self, status: RunStatus) {
        let index = RunStatus::ALL.iter().position(|s| *s == status).unwrap_or_default();
        let counter = self.runs[index].get_or_init(
            || metrics::counter!(metric::RUNS, "job" => self.job.to_string(), "status" => status.as_str()),
        );
        counter.increment(1);
    }
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
    /// Label `result`: `success` or `failure` (the last good policy kept).
    pub const POLICY_RELOADS: &str = "tenure_sign_in_policy_reloads_total";
    pub const RUNS_PRUNED: &str = "tenure_runs_pruned_total";
    /// Refused attempts before admission that were only logged: more arrived at once than the
    /// gate records (`http::gate`).
    pub const AUDIT_REFUSALS_UNRECORDED: &str = "tenure_audit_refusals_unrecorded_total";
    /// Retention cycles cut short by a database error (the rest waits for the next cycle).
    pub const PRUNE_FAILURES: &str = "tenure_ledger_prune_failures_total";
    pub const RUNS_LOST: &str = "tenure_runs_lost_total";
    /// Labels `job` and `status`.
    pub const RUNS: &str = "tenure_runs_total";
    /// Label `job`.
    pub const MISSED_SLOTS: &str = "tenure_missed_slots_total";
    /// Runs a new term recorded `lost` because the ledger forgot their starts (a database
    /// failover lost commits) while the coordinator's start witness still named them.
    pub const FORGOTTEN_STARTS: &str = "tenure_ledger_forgotten_starts_total";
    /// How long the coordinator took to record a batch of starts before it was sent (histogram).
    pub const START_WITNESS: &str = "tenure_start_witness_seconds";
    /// 1 when the ledger's commits wait for a named synchronous standby, 0 otherwise.
    pub const LEDGER_SYNCHRONOUS: &str = "tenure_ledger_synchronous_replication";
    /// Label `reason`: `fenced` or `already_claimed`.
    pub const CLAIMS_REJECTED: &str = "tenure_claims_rejected_total";
    pub const CLAIM_ERRORS: &str = "tenure_claim_errors_total";
    /// Histogram (buckets `LATENESS_BUCKETS`): from a slot to its run's first attempt.
    pub const FIRE_LATENESS: &str = "tenure_fire_lateness_seconds";
    /// Histogram, label `job`.
    pub const RUN_DURATION: &str = "tenure_run_duration_seconds";
    /// Gauge, label `hash`: 1 for the job file this replica runs (0 for one it ran before), so
    /// replicas running different job files can be told apart.
    pub const JOB_FILE_INFO: &str = "tenure_job_file_info";
    /// Dead-man pings sent by this replica while it led; label `result`: `success` or `failure`.
    pub const DEADMAN_PINGS: &str = "tenure_deadman_pings_total";
    /// Gauge: when the last dead-man ping succeeded, in seconds since the Unix epoch.
    pub const DEADMAN_LAST_SUCCESS: &str = "tenure_deadman_last_success_timestamp_seconds";
    /// Dashboard and API requests refused by admission (`http::shed`).
    pub const HTTP_SHED: &str = "tenure_http_shed_total";
    /// HTTP connections closed at the connection cap (`http::listen`); label `reason`: `idle`
    /// (open longest without a request, closed to make room) or `busy` (a new one, every open one
    /// being busy).
    pub const HTTP_CONNECTIONS_SHED: &str = "tenure_http_connections_shed_total";
    /// Notification delivery attempts by this replica while it led; label `result`:
    /// `delivered`, `failed` (retried later) or `abandoned`.
    pub const NOTIFICATIONS: &str = "tenure_notifications_total";
    /// Gauge, exported by the leader: notifications in the outbox not delivered yet.
    pub const NOTIFICATIONS_PENDING: &str = "tenure_notifications_pending";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_run_series_count_into_the_same_lines_as_before() {
        let handle = metrics();
        let series = JobRunMetrics::new("telemetry-test-job");
        series.count(RunStatus::Succeeded);
        series.clone().count(RunStatus::Succeeded);
        series.count(RunStatus::TimedOut);
        series.fire_lateness.record(0.002);
        series.run_duration.record(1.5);
        let text = handle.render();
        for line in [
            "tenure_runs_total{job=\"telemetry-test-job\",status=\"succeeded\"} 2",
            "tenure_runs_total{job=\"telemetry-test-job\",status=\"timed_out\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        for name in ["tenure_fire_lateness_seconds_bucket", "tenure_run_duration_seconds"] {
            assert!(text.contains(name), "no {name} in\n{text}");
        }
    }
}
