//! The dashboard and API of a real three-replica cluster: a follower answers with the leader's
//! view and takes controls the leader executes; then the same pages in headless Chromium.

use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use crate::cluster::{ADMIN_TOKEN, Cluster};
use crate::harness::{free_port, wait_for};

const JOBS: &str = r#"
jobs:
  - name: tick
    schedule: "* * * * * *"
    shell: WITNESS
  - name: greet
    schedule: "0 0 1 1 *"
    shell: 'WITNESS; echo "hello from $TENURE_NODE"'
"#;

async fn get_json(url: &str) -> Option<Value> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
    client.get(url).send().await.ok()?.json().await.ok()
}

async fn post_api(url: &str) -> reqwest::Response {
    reqwest::Client::new().post(url).bearer_auth(ADMIN_TOKEN).send().await.expect("post")
}

#[tokio::test]
async fn a_follower_shows_the_cluster_and_takes_controls_the_leader_executes() {
    let mut cluster = Cluster::start(3, JOBS).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    let base = cluster.url(follower);
    let leader_node = cluster.replicas[leader].node.clone();

    wait_for("the follower to see the leader and three replicas", Duration::from_secs(10), || async {
        let Some(view) = get_json(&format!("{base}/api/cluster")).await else { return false };
        view["leader"]["node"] == leader_node.as_str()
            && view["leader"]["term"] == term
            && view["replicas"].as_array().is_some_and(|r| r.len() == 3 && r.iter().all(|r| r["live"] == true))
    })
    .await;

    // A trigger taken by a follower is executed by the leader, in the leader's term, once.
    let answer = post_api(&format!("{base}/api/jobs/greet/trigger")).await;
    assert_eq!(answer.status(), 202);
    wait_for("the manual run", Duration::from_secs(10), || async {
        cluster.witness().iter().any(|w| w.job == "greet")
    })
    .await;
    let greet: Vec<_> = cluster.witness().into_iter().filter(|w| w.job == "greet").collect();
    assert_eq!(greet.len(), 1);
    assert_eq!((greet[0].node.as_str(), greet[0].term), (leader_node.as_str(), term));
    let runs = get_json(&format!("{base}/api/jobs/greet/runs")).await.unwrap();
    assert_eq!(runs["runs"][0]["trigger"], "manual");
    let run = get_json(&format!("{base}/api/runs/{}", runs["runs"][0]["id"])).await.unwrap();
    wait_for("the manual run's outcome", Duration::from_secs(5), || async {
        let run = get_json(&format!("{base}/api/runs/{}", runs["runs"][0]["id"])).await.unwrap();
        run["status"] == "succeeded"
    })
    .await;
    assert!(run["slot"].is_string());

    // Pause through a follower: the leader stops firing; resume: it fires again.
    assert_eq!(post_api(&format!("{base}/api/jobs/tick/pause")).await.status(), 200);
    let paused_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late: Vec<_> = cluster
        .witness()
        .into_iter()
        .filter(|w| w.job == "tick" && w.slot > paused_at + chrono::Duration::seconds(1))
        .collect();
    assert!(late.is_empty(), "fired while paused: {late:?}");
    assert_eq!(post_api(&format!("{base}/api/jobs/tick/resume")).await.status(), 200);
    let resumed_at = Utc::now();
    wait_for("tick to fire after resume", Duration::from_secs(5), || async {
        cluster.witness().iter().any(|w| w.job == "tick" && w.slot > resumed_at)
    })
    .await;

    // The leader's metrics say what it does, with bounded labels.
    let metrics = reqwest::get(format!("{}/metrics", cluster.url(leader))).await.unwrap().text().await.unwrap();
    for series in [
        "tenure_is_leader 1",
        &format!("tenure_term {term}"),
        "tenure_runs_total{job=\"tick\",status=\"succeeded\"}",
        "tenure_fire_lateness_seconds_count",
        "tenure_run_duration_seconds_count",
        "tenure_keepalive_rtt_seconds_count",
        "tenure_elections_won_total",
    ] {
        assert!(metrics.contains(series), "leader metrics lack {series}:\n{metrics}");
    }
    let follower_metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(follower_metrics.contains("tenure_is_leader 0"), "{follower_metrics}");

    // Kill the leader: the survivors show it gone, a new leader, and the hand-over.
    cluster.kill(leader);
    wait_for("a new leader and the old one shown gone", Duration::from_secs(15), || async {
        let Some(view) = get_json(&format!("{base}/api/cluster")).await else { return false };
        let gone = view["replicas"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["node"] == leader_node.as_str() && r["live"] == false));
        gone && view["leader"]["term"].as_i64().is_some_and(|t| t > term)
    })
    .await;
    let terms = get_json(&format!("{base}/api/terms")).await.unwrap();
    let handover = terms[0]["handover_ms"].as_i64().expect("a hand-over time for the new term");
    // The terms page says what a term is with etcd.
    let page = reqwest::get(format!("{base}/terms")).await.unwrap().text().await.unwrap();
    let what = page.split("id=\"what-a-term-is\">").nth(1).unwrap().split("</p>").next().unwrap();
    assert!(what.contains("the etcd revision at which its leader"), "{what}");
    eprintln!("hand-over after SIGKILL as the terms page shows it: {handover} ms");
    assert!(handover > 0);
}

/// The pages as a person sees them, in headless Chromium driven over WebDriver. Screenshots
/// land in target/screenshots/.
#[tokio::test]
async fn the_dashboard_in_a_real_browser() {
    use fantoccini::Locator;

    let cluster = Cluster::start(3, JOBS).await;
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;
    let base = cluster.url(follower);
    let leader_node = cluster.replicas[leader].node.clone();
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let chromium = Chromium::start(&[]).await;
    let browser = &chromium.browser;
    let page_text = async || browser.find(Locator::Css("body")).await.unwrap().text().await.unwrap();

    // Overview: the leader at a glance, both jobs, outcomes piling up (live refresh).
    browser.goto(&format!("{base}/")).await.unwrap();
    let leader_shown = browser.find(Locator::Id("leader-node")).await.unwrap().text().await.unwrap();
    assert_eq!(leader_shown, leader_node);
    wait_for("outcomes in the strip", Duration::from_secs(10), || async {
        browser.find_all(Locator::Css(".strip .cell.succeeded")).await.is_ok_and(|cells| cells.len() >= 3)
    })
    .await;
    let text = page_text().await;
    for expected in ["tick", "greet", "Every second", "follower", "leader"] {
        assert!(text.contains(expected), "overview lacks {expected:?}:\n{text}");
    }
    std::fs::write(shots.join("overview.png"), browser.screenshot().await.unwrap()).unwrap();

    // Sign in with the token (basic auth), then trigger `greet` from its page.
    let signin = base.replace("http://", &format!("http://admin:{ADMIN_TOKEN}@"));
    browser.goto(&format!("{signin}/signin")).await.unwrap();
    browser.goto(&format!("{base}/jobs/greet")).await.unwrap();
    browser.find(Locator::Id("trigger")).await.unwrap().click().await.unwrap();
    // The live refresh brings the run in, then its outcome.
    wait_for("the triggered run, succeeded, on the job page", Duration::from_secs(15), || async {
        browser.find_all(Locator::Css("table.runs tbody .status.succeeded")).await.is_ok_and(|found| found.len() == 1)
    })
    .await;
    let row = browser.find(Locator::Css("table.runs tbody tr")).await.unwrap().text().await.unwrap();
    assert!(row.contains("manual") && row.contains("succeeded"), "{row}");
    assert!(page_text().await.contains("Triggered"));
    std::fs::write(shots.join("job.png"), browser.screenshot().await.unwrap()).unwrap();

    // The run: timings, term, node and the output it printed.
    browser.find(Locator::Css("table.runs tbody tr td a")).await.unwrap().click().await.unwrap();
    wait_for("the run page", Duration::from_secs(10), || async {
        browser.find(Locator::Id("run-status")).await.is_ok()
    })
    .await;
    let status = browser.find(Locator::Id("run-status")).await.unwrap().text().await.unwrap();
    assert_eq!(status, "succeeded");
    let output = browser.find(Locator::Id("output")).await.unwrap().text().await.unwrap();
    assert!(output.contains(&format!("hello from {leader_node}")), "{output}");
    std::fs::write(shots.join("run.png"), browser.screenshot().await.unwrap()).unwrap();

    // The tick job's ledger, filtered to what failed (nothing) and back.
    browser.goto(&format!("{base}/jobs/tick")).await.unwrap();
    assert!(page_text().await.contains("succeeded"));
    std::fs::write(shots.join("job-tick.png"), browser.screenshot().await.unwrap()).unwrap();

    browser.goto(&format!("{base}/terms")).await.unwrap();
    let text = page_text().await;
    assert!(text.contains(&leader_node) && text.contains("current"), "{text}");
    std::fs::write(shots.join("terms.png"), browser.screenshot().await.unwrap()).unwrap();

    // A phone.
    browser.set_window_size(390, 844).await.unwrap();
    browser.goto(&format!("{base}/")).await.unwrap();
    std::fs::write(shots.join("overview-phone.png"), browser.screenshot().await.unwrap()).unwrap();
    chromium.close().await;
}

/// Headless Chromium driven over WebDriver (chromedriver on a free loopback port), its console
/// kept for `console`. chromedriver runs in a process group of its own, with the browser it
/// starts: dropping this kills the group, also when a test fails.
pub struct Chromium {
    pub browser: fantoccini::Client,
    _driver: DriverGroup,
}

/// chromedriver's process group, killed when dropped.
struct DriverGroup(std::process::Child);

impl Drop for DriverGroup {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

impl Chromium {
    /// Start chromedriver and a session, with `args` added to Chromium's command line.
    pub async fn start(args: &[String]) -> Chromium {
        use fantoccini::ClientBuilder;
        use std::os::unix::process::CommandExt;
        let driver_port = free_port();
        let driver = DriverGroup(
            std::process::Command::new("chromedriver")
                .arg(format!("--port={driver_port}"))
                .process_group(0)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start chromedriver (Debian chromium-driver; scripts/test installs it)"),
        );
        let mut chrome_args: Vec<String> =
            ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]
                .map(String::from)
                .to_vec();
        chrome_args.extend(args.iter().cloned());
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), serde_json::json!({ "args": chrome_args }));
        capabilities.insert("goog:loggingPrefs".into(), serde_json::json!({ "browser": "ALL" }));
        let driver_url = format!("http://127.0.0.1:{driver_port}");
        // chromedriver takes a moment to listen.
        for _ in 0..100 {
            // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(capabilities.clone()).connect(&driver_url).await {
                Ok(browser) => return Chromium { browser, _driver: driver },
                Err(_) => tokio::time::sleep(Duration::from_millis(150)).await,
            }
        }
        panic!("could not connect to chromedriver");
    }

    /// The browser's console messages since the last call, as `LEVEL message` lines.
    pub async fn console(&self) -> Vec<String> {
        let entries = self.browser.issue_cmd(BrowserLog).await.expect("read the browser's console");
        entries
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|entry| {
                        format!(
                            "{} {}",
                            entry["level"].as_str().unwrap_or("?"),
                            entry["message"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn close(self) {
        let _ = self.browser.clone().close().await;
    }
}

/// chromedriver's (legacy) log endpoint: the console messages gathered since the last read.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}
