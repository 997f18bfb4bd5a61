//! Readers never starve claims: the dashboard and API read on connections of
//! their own, so a replica whose every read is stuck still claims and starts on time; and a full
//! dashboard sheds requests with 503 and `Retry-After` while health, readiness and metrics answer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DurationRound, TimeDelta, Utc};
use sqlx::Connection;
use tenure::http::{AppState, Auth, ReadAccess, router};
use tenure::leadership::Leadership;
use tenure::model::{ClusterSnapshot, RunStatus};
use tenure::store::Reads;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::cluster::Cluster;
use crate::harness::{Postgres, wait_for};

/// A session that holds `terms` locked: every read of it (the cluster view, the terms page)
/// waits until the lock goes or its statement times out. Claims do not touch `terms`.
async fn lock_terms(database_url: &str) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(database_url).await.expect("connect");
    sqlx::raw_sql("BEGIN; LOCK TABLE terms IN ACCESS EXCLUSIVE MODE").execute(&mut conn).await.expect("lock terms");
    conn
}

/// Read `/api/cluster` over and over until `until`, as a dashboard tab left open does, backing
/// off a little when told to.
async fn read_cluster_until(url: String, until: tokio::time::Instant) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    while tokio::time::Instant::now() < until {
        let shed = match client.get(&url).send().await {
            Ok(response) => response.headers().contains_key(header::RETRY_AFTER),
            Err(_) => false,
        };
        if shed {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn claims_start_on_time_while_every_read_is_stuck() {
    const JOBS: &str = "jobs:\n  - name: tick\n    schedule: \"* * * * * *\"\n    shell: \"true\"\n";
    let cluster = Cluster::start(1, JOBS).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(15)).await;
    wait_for("the leader's first runs", Duration::from_secs(10), || async {
        cluster.ledger().await.iter().filter(|run| run.started_at.is_some()).count() >= 2
    })
    .await;

    // Forty readers of a table that is locked: each read waits for its statement timeout.
    let mut locker = lock_terms(&cluster.database_url).await;
    let locked_at = Utc::now();
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    let url = format!("{}/api/cluster", cluster.url(leader));
    let readers: Vec<_> = (0..40).map(|_| tokio::spawn(read_cluster_until(url.clone(), until))).collect();
    for reader in readers {
        reader.await.unwrap();
    }
    let released_at = Utc::now();
    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await.unwrap();

    // Every slot of the window was claimed and started on time, by the same leader.
    let first = (locked_at + TimeDelta::seconds(1)).duration_trunc(TimeDelta::seconds(1)).unwrap();
    let last = released_at.duration_trunc(TimeDelta::seconds(1)).unwrap();
    wait_for("the window's last slot to start", Duration::from_secs(10), || async {
        cluster.ledger().await.iter().any(|run| run.slot >= last && run.started_at.is_some())
    })
    .await;
    let ledger = cluster.ledger().await;
    let mut slot = first;
    let mut late = Vec::new();
    while slot <= last {
        match ledger.iter().find(|run| run.slot == slot) {
            Some(run) => match run.started_at {
                // A claim starved by the readers would wait for their locks (seconds); a loaded
                // machine's scheduling delay stays well under one.
                Some(started) if started - slot < TimeDelta::milliseconds(1_000) && run.term == term => {}
                _ => late.push(format!("{slot}: {} term {} started {:?}", run.status, run.term, run.started_at)),
            },
            None => late.push(format!("{slot}: no row")),
        }
        slot += TimeDelta::seconds(1);
    }
    assert!(
        late.is_empty(),
        "slots between {locked_at} and {released_at} not started within 500 ms by term {term}:\n{}\n{}",
        late.join("\n"),
        cluster.logs()
    );
}

/// A router on a real ledger whose `terms` reads are stuck behind a lock.
async fn stuck_router(pg: &Postgres) -> (axum::Router, sqlx::PgConnection) {
    let url = pg.create_database("shedding").await;
    let pool = tenure::store::connect(&url).await.unwrap();
    tenure::store::migrate(&pool).await.unwrap();
    let reads = tenure::store::connect_reads(&url).await.unwrap();
    let jobs =
        tenure::config::parse("jobs:\n  - name: tick\n    schedule: \"* * * * *\"\n    shell: \"true\"\n", "jobs.yaml")
            .unwrap();
    let state = AppState {
        node_id: "node-a".to_owned(),
        store: Reads::new(reads),
        leadership: watch::channel(Leadership::Follower { leader: None }).1,
        coordinator: None,
        jobs: watch::channel(Arc::new(jobs)).1,
        cluster: watch::channel(ClusterSnapshot::default()).1,
        auth: Auth::new(None, ReadAccess::Open),
        pages: Default::default(),
    };
    (router(state), lock_terms(&url).await)
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, String, Duration) {
    let started = std::time::Instant::now();
    let request = Request::get(uri).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned(), started.elapsed())
}

#[tokio::test]
async fn a_full_dashboard_answers_503_with_retry_after_and_probes_stay_open() {
    let pg = Postgres::start().await;
    let (app, mut locker) = stuck_router(&pg).await;
    let capacity = tenure::http::MAX_CONCURRENT_READS + tenure::http::MAX_QUEUED_READS;
    let extra = 20;
    let requests: Vec<_> = (0..capacity + extra)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { get(&app, "/api/terms").await })
        })
        .collect();
    // While the dashboard is full, the probes answer at once.
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, body, took) = get(&app, probe).await;
        assert_eq!(status, StatusCode::OK, "{probe}: {body}");
        assert!(took < Duration::from_secs(1), "{probe} took {took:?}");
    }
    let mut shed = 0;
    for request in requests {
        let (status, headers, body, took) = request.await.unwrap();
        if headers.contains_key(header::RETRY_AFTER) {
            shed += 1;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(headers[header::RETRY_AFTER], "1");
            assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
            let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(problem["status"], 503, "{body}");
            // Shed at once or after the short queue (1 s), never after a stuck read (its 2 s
            // statement timeout).
            assert!(took < Duration::from_millis(1_900), "shed after {took:?}");
        }
    }
    assert!(shed >= extra, "only {shed} of {} requests shed with capacity {capacity}", capacity + extra);

    // Once the reads move again, so does the dashboard.
    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await.unwrap();
    let (status, _, body, _) = get(&app, "/api/terms").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Transactions the server has committed in `database` so far (every statement outside a
/// transaction is one).
async fn commits(database_url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(database_url).await.expect("connect");
    sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(&mut conn)
        .await
        .expect("read pg_stat_database")
}

#[tokio::test]
async fn live_output_of_many_runs_is_one_write_a_second() {
    const RUNS: usize = 40;
    let jobs: String = (0..RUNS)
        .map(|index| {
            format!(
                "  - name: talk-{index}\n    schedule: \"* * * * * *\"\n    concurrency: forbid\n    \
                 shell: \"for i in $(seq 1 60); do echo line $i; sleep 0.25; done\"\n"
            )
        })
        .collect();
    let cluster = Cluster::start(1, &format!("jobs:\n{jobs}")).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    wait_for("every job's run to be going with output", Duration::from_secs(15), || async {
        let ledger = cluster.ledger().await;
        let talking = ledger.iter().filter(|run| run.status == RunStatus::Running && run.started_at.is_some());
        talking.filter(|run| !run.output.is_empty()).count() == RUNS
    })
    .await;
    // The runs print four lines a second for the whole window. Written run by run, that alone is
    // RUNS commits a second; besides it come the heartbeat, the clock probes and the claims of
    // the slots skipped meanwhile (about 13 a second here).
    let window = Duration::from_secs(4);
    let before = commits(&cluster.database_url).await;
    tokio::time::sleep(window).await;
    let after = commits(&cluster.database_url).await;
    let per_second = (after - before) as f64 / window.as_secs_f64();
    assert!(
        per_second < RUNS as f64,
        "{per_second:.1} commits a second with {RUNS} runs printing: live output is not batched"
    );
    let ledger = cluster.ledger().await;
    let still_talking =
        ledger.iter().filter(|run| run.status == RunStatus::Running && run.started_at.is_some()).count();
    assert_eq!(still_talking, RUNS, "the window did not cover the runs");
}

#[tokio::test]
async fn the_dashboard_is_served_from_one_thread_of_lower_priority() {
    const JOBS: &str = "jobs:\n  - name: tick\n    schedule: \"* * * * * *\"\n    shell: \"true\"\n";
    let cluster = Cluster::start(1, JOBS).await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    let pid = cluster.replicas[0].pid().expect("running");
    // Every thread of the replica: its name and its niceness (field 19 of its stat line).
    let threads: Vec<(String, i64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?.trim().to_owned();
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some((name, fields.get(16)?.parse().ok()?))
        })
        .collect();
    // The suite may itself run niced: the replica's own niceness is the base.
    let base = threads.iter().find(|(name, _)| name == "tenure").expect("the main thread").1;
    let http: Vec<_> = threads.iter().filter(|(name, _)| name == "tenure-http").collect();
    assert_eq!(http.len(), 1, "one HTTP thread: {threads:?}");
    assert_eq!(http[0].1, (base + 10).min(19), "the HTTP thread runs 10 below the rest: {threads:?}");
    let firing = threads.iter().filter(|(name, _)| name == "tokio-rt-worker").collect::<Vec<_>>();
    assert!(!firing.is_empty() && firing.iter().all(|(_, nice)| *nice == base), "{threads:?}");
    // And it serves.
    let answer = reqwest::get(format!("{}/api/jobs", cluster.url(0))).await.unwrap();
    assert_eq!(answer.status(), 200);
}
