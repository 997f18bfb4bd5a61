//! The Prometheus alert rules in `deploy/prometheus/`: promtool checks them and runs their unit
//! tests, and every series they read is one a real replica exports, labels included, so a
//! renamed metric or label breaks a test here rather than an alert in production.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::cluster::{Cluster, Options, TICK};
use crate::deadman::Receiver;
use crate::harness::wait_for;

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

/// Run promtool in the rules' directory; its output on failure.
fn promtool(args: &[&str]) {
    let output = Command::new("promtool").args(args).current_dir(rules_dir()).output().unwrap_or_else(|error| {
        panic!("cannot run promtool ({error}); scripts/test installs it (Debian package `prometheus`)")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {} failed:\n{text}", args.join(" "));
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    promtool(&["check", "rules", "tenure-rules.yaml"]);
    promtool(&["test", "rules", "tenure-rules.test.yaml"]);
}

/// A series selector read from a rule or a test: the metric and its `label="value"` matchers
/// (regex matchers by their label only, value empty).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Selector {
    metric: String,
    labels: Vec<(String, String)>,
}

/// Every `tenure_*` selector in `text`.
/// `promtool check metrics` on a scrape: every metric has its `# HELP` and `# TYPE`, names and
/// units follow Prometheus' conventions. Silence is success.
fn check_metrics_with_promtool(metrics: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/test installs it)");
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{metrics}");
}

fn selectors(text: &str) -> BTreeSet<Selector> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("tenure_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let metric = tail[..end].to_owned();
        let mut labels = Vec::new();
        if tail[end..].starts_with('{') {
            let close = tail[end..].find('}').expect("a closed selector") + end;
            for matcher in tail[end + 1..close].split(',').filter(|m| !m.trim().is_empty()) {
                let (name, value) = if let Some((name, _)) = matcher.split_once("=~") {
                    (name, String::new())
                } else {
                    let (name, value) = matcher.split_once('=').expect("a label matcher");
                    (name, value.trim().trim_matches('"').to_owned())
                };
                labels.push((name.trim().to_owned(), value));
            }
        }
        // Scrape labels and the alert's own are Prometheus's, not tenure's.
        labels.retain(|(name, _)| name != "instance" && name != "le");
        found.insert(Selector { metric, labels });
        rest = &tail[end..];
    }
    found
}

/// The exposition lines of `metric`: `name{labels} value` or `name value`.
fn exported<'a>(metrics: &'a str, metric: &str) -> Vec<&'a str> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.strip_prefix(metric).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_alert_rules_read_is_exported_by_a_replica() {
    let receiver = Receiver::start().await;
    let options = Options {
        env: vec![
            ("TENURE_HEARTBEAT_URL".into(), receiver.url.clone()),
            ("TENURE_HEARTBEAT_INTERVAL".into(), "500ms".into()),
        ],
        ..Options::default()
    };
    let cluster = Cluster::start_with(1, TICK, options).await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.let_it_tick(2).await;
    let url = format!("{}/metrics", cluster.url(0));
    let scrape = || async { reqwest::get(&url).await.unwrap().text().await.unwrap() };
    wait_for("a successful ping and a run's lateness in /metrics", Duration::from_secs(10), || async {
        let metrics = scrape().await;
        metrics.contains("tenure_deadman_last_success_timestamp_seconds")
            && metrics.contains("tenure_fire_lateness_seconds_bucket")
    })
    .await;
    let metrics = scrape().await;
    check_metrics_with_promtool(&metrics);

    let rules = std::fs::read_to_string(rules_dir().join("tenure-rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(rules_dir().join("tenure-rules.test.yaml")).unwrap();
    let expressions: String = rules
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter(|line| !line.trim_start().starts_with("summary:") && !line.trim_start().starts_with("description:"))
        .collect::<Vec<_>>()
        .join("\n");
    let read = selectors(&expressions);
    let metric_names: BTreeSet<&str> = read.iter().map(|selector| selector.metric.as_str()).collect();
    assert_eq!(
        metric_names.into_iter().collect::<Vec<_>>(),
        [
            "tenure_claims_rejected_total",
            "tenure_deadman_pings_total",
            "tenure_fire_lateness_seconds_bucket",
            "tenure_is_leader",
            "tenure_job_file_info",
            "tenure_ledger_forgotten_starts_total",
            "tenure_ledger_prune_failures_total",
            "tenure_missed_slots_total",
            "tenure_notifications_total",
            "tenure_runs_lost_total",
            "tenure_runs_total",
        ],
        "the rules read other series than this test expects: {read:#?}"
    );
    // The rules' series and the ones their unit tests feed in, labels included.
    for selector in read.iter().chain(&selectors(&tests)) {
        let lines = exported(&metrics, &selector.metric);
        assert!(!lines.is_empty(), "{} is not exported:\n{metrics}", selector.metric);
        for (label, value) in &selector.labels {
            // A job's name and a job file's hash are data: their label is checked, not the value.
            let data = label == "job" || label == "hash";
            let wanted = if value.is_empty() || data { format!("{label}=\"") } else { format!("{label}=\"{value}\"") };
            assert!(
                lines.iter().any(|line| line.contains(&wanted)),
                "no {} series with {wanted}:\n{}",
                selector.metric,
                lines.join("\n")
            );
        }
    }
}

/// A prune the database refuses is counted, not only logged: retention that keeps failing lets
/// the ledger grow without bound, and `TenureLedgerPruningFails` reads this count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_the_database_refuses_is_counted_in_a_metric() {
    let options = Options { env: vec![("TENURE_TEST_PRUNE_EVERY_MS".into(), "200".into())], ..Options::default() };
    let cluster = Cluster::start_with(1, TICK, options).await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let url = format!("{}/metrics", cluster.url(0));
    let failures = || async {
        let metrics = reqwest::get(&url).await.unwrap().text().await.unwrap();
        exported(&metrics, "tenure_ledger_prune_failures_total")
            .first()
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
    };
    wait_for("the prune failures counter exported at 0", Duration::from_secs(10), || async {
        failures().await == Some(0.0)
    })
    .await;
    // Every delete from `runs` refused, whatever it would delete.
    let pool = tenure::store::connect(&cluster.database_url).await.unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_deletes() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'deletes refused by the test'; END $$;
         CREATE TRIGGER refuse_deletes BEFORE DELETE ON runs FOR EACH STATEMENT EXECUTE FUNCTION refuse_deletes();",
    )
    .execute(&pool)
    .await
    .unwrap();
    wait_for("two failed prunes counted", Duration::from_secs(10), || async {
        failures().await.is_some_and(|count| count >= 2.0)
    })
    .await;
}
