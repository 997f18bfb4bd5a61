//! Benchmark: how fast the dashboard answers for a job with 100,000 ledger rows, on a throwaway
//! PostgreSQL. Prints median and worst times per page over repeated requests through a real
//! socket. Run: `cargo run --release --features testing --example dashboard_load`.

#[path = "../tests/it/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenure::election::ClusterSnapshot;
use tenure::http::{AppState, Auth};
use tenure::leadership::{Leadership, Term};
use tenure::store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const ROWS: i64 = 100_000;
const REPEAT: usize = 30;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pg = harness::Postgres::start().await;
    let url = pg.create_database("bench").await;
    let pool = tenure::store::connect(&url).await?;
    tenure::store::migrate(&pool).await?;
    let store = Store::new(pool.clone());
    store.begin_term(&Term::for_tests(7, "bench"), "node-a").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    // One row per minute going back 100,000 minutes; every tenth failed, every 50th missed.
    sqlx::query(
        "INSERT INTO runs (job, slot, term, node, config_hash, status, attempt, claimed_at, started_at, finished_at, exit_code, output)
         SELECT 'big', now() - make_interval(mins => n), 7, 'node-a', 'h',
                CASE WHEN n % 50 = 0 THEN 'missed' WHEN n % 10 = 0 THEN 'failed' ELSE 'succeeded' END, 1,
                now() - make_interval(mins => n), now() - make_interval(mins => n),
                now() - make_interval(mins => n) + make_interval(secs => (n % 7) + 0.25::float8), 0, repeat('x', 200)
         FROM generate_series(1, $1::int) AS n",
    )
    .bind(ROWS)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE runs").execute(&pool).await?;
    println!("inserted {ROWS} rows for job `big` in {:.1?}", started.elapsed());

    let jobs =
        tenure::config::parse("jobs:\n  - name: big\n    schedule: \"* * * * *\"\n    shell: \"true\"\n", "bench.yaml")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = AppState {
        node_id: "bench".into(),
        store,
        leadership: watch::channel(Leadership::Follower { leader: None }).1,
        etcd: None,
        jobs: watch::channel(Arc::new(jobs)).1,
        cluster: watch::channel(ClusterSnapshot { leader: Some(("node-a".into(), 7)), roster: Vec::new() }).1,
        auth: Auth::new(None, false),
        pages: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    tokio::spawn(tenure::http::serve(listener, state, stop.clone()));
    let client = reqwest::Client::new();

    // A cursor deep in the ledger: the 1,000th page of 50.
    let deep: serde_json::Value =
        client.get(format!("{base}/api/jobs/big/runs?limit=500")).send().await?.json().await?;
    let mut cursor = deep["next_cursor"].as_str().unwrap_or_default().to_owned();
    for _ in 0..99 {
        let page: serde_json::Value =
            client.get(format!("{base}/api/jobs/big/runs?limit=500&cursor={cursor}")).send().await?.json().await?;
        cursor = page["next_cursor"].as_str().unwrap_or_default().to_owned();
    }

    println!("{:<44} {:>10} {:>10} {:>9}", "page", "median", "worst", "bytes");
    for (name, path) in [
        ("overview", "/".to_owned()),
        ("job page (newest 50)", "/jobs/big".to_owned()),
        ("job page, status=missed", "/jobs/big?status=missed".to_owned()),
        ("job page, 50 rows after row 50,000", format!("/jobs/big?cursor={cursor}")),
        ("api: runs (newest 50)", "/api/jobs/big/runs".to_owned()),
        ("api: jobs", "/api/jobs".to_owned()),
    ] {
        let mut times = Vec::with_capacity(REPEAT);
        let mut bytes = 0;
        for _ in 0..REPEAT {
            let t = Instant::now();
            let response = client.get(format!("{base}{path}")).send().await?;
            anyhow::ensure!(response.status().is_success(), "{path}: {}", response.status());
            bytes = response.bytes().await?.len();
            times.push(t.elapsed());
        }
        times.sort();
        println!("{name:<44} {:>10} {:>10} {bytes:>9}", ms(times[REPEAT / 2]), ms(times[REPEAT - 1]));
    }
    stop.cancel();
    Ok(())
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
