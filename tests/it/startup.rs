//! Starting up against a real PostgreSQL: migrations on a dedicated connection (no statement
//! timeout, the advisory lock released on every path), replicas migrating together, and an older
//! binary meeting a newer schema.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tenure::store::MigrateError;

use crate::harness::{Postgres, free_port, wait_until};

/// Advisory locks held by any session of the server: sqlx's migrator takes one per database.
async fn advisory_locks(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        .fetch_one(&mut conn)
        .await
        .expect("read pg_locks")
}

/// The newest migration this binary knows, as `_sqlx_migrations` records it after a migration.
async fn newest_applied(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations").fetch_one(&mut conn).await.expect("versions")
}

/// Record a migration this binary does not know, as a newer release would have.
async fn apply_future_migration(url: &str, version: i64) {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'from a newer release', true, '\\x00'::bytea, 1)",
    )
    .bind(version)
    .execute(&mut conn)
    .await
    .expect("record a newer migration");
}

#[tokio::test]
async fn two_replicas_migrate_together_on_an_empty_and_on_a_migrated_database() {
    let pg = Postgres::start().await;
    let url = pg.create_database("together").await;
    for round in ["empty", "migrated"] {
        // Two pools as two replicas have them, migrating at the same moment.
        let first = tenure::store::connect(&url).await.unwrap();
        let second = tenure::store::connect(&url).await.unwrap();
        let (a, b) = tokio::join!(tenure::store::migrate(&first), tenure::store::migrate(&second));
        assert!(a.is_ok() && b.is_ok(), "{round} database: {a:?} / {b:?}");
        let released = wait_until(Duration::from_secs(5), || async { advisory_locks(&url).await == 0 }).await;
        assert!(released, "{round} database: the migration lock is still held");
        // The schema is usable through the pools afterwards.
        let store = tenure::store::Store::new(first);
        assert_eq!(store.fence().await.unwrap().term, 0, "{round} database");
    }
}

#[tokio::test]
async fn migrations_run_without_the_pools_statement_timeout() {
    let pg = Postgres::start().await;
    let url = pg.create_database("timeouts").await;
    let pool = tenure::store::connect(&url).await.unwrap();
    // What a migration's statements run under: a long index build must be able to finish.
    let (statement_timeout, idle_timeout): (String, String) = {
        let mut conn = tenure::store::migration_connection(&pool).await.unwrap();
        let settings = sqlx::query_as(
            "SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        settings
    };
    assert_eq!((statement_timeout.as_str(), idle_timeout.as_str()), ("0", "0"));
    // The pool itself keeps its timeouts.
    let pooled: String =
        sqlx::query_scalar("SELECT current_setting('statement_timeout')").fetch_one(&pool).await.unwrap();
    assert_eq!(pooled, "5s");
}

#[tokio::test]
async fn a_newer_schema_is_refused_by_name_and_the_migration_lock_is_released() {
    let pg = Postgres::start().await;
    let url = pg.create_database("newer").await;
    let pool = tenure::store::connect(&url).await.unwrap();
    tenure::store::migrate(&pool).await.unwrap();
    let known = newest_applied(&url).await;
    apply_future_migration(&url, 20991231).await;

    let error = tenure::store::migrate(&pool).await.expect_err("a newer schema");
    // The lock goes with the dedicated connection (its server process ends just after the
    // connection closes, so this waits a moment): another replica is not blocked. On a pooled
    // connection it would stay held for good.
    let released = wait_until(Duration::from_secs(5), || async { advisory_locks(&url).await == 0 }).await;
    assert!(released, "the migration lock is still held after {error:?}");
    assert!(matches!(error, MigrateError::NewerSchema { known: k, database: 20991231 } if k == known), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&format!("version {known}")) && message.contains("20991231"), "{message}");
    // A pooled connection does not hold it either: the pool still works.
    tenure::store::Store::new(pool).fence().await.unwrap();
}

#[tokio::test]
async fn an_older_binary_on_a_newer_schema_exits_non_zero_saying_which_versions() {
    let pg = Postgres::start().await;
    let url = pg.create_database("older_binary").await;
    let pool = tenure::store::connect(&url).await.unwrap();
    tenure::store::migrate(&pool).await.unwrap();
    let known = newest_applied(&url).await;
    apply_future_migration(&url, 20991231).await;

    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(&jobs, "jobs:\n  - name: tick\n    schedule: \"@every 1s\"\n    shell: \"true\"\n").unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["run", "--jobs"])
        .arg(&jobs)
        // Nothing listens there: the schema is checked before etcd is needed.
        .args(["--etcd", &format!("http://127.0.0.1:{}", free_port())])
        .args(["--database-url", &url])
        .args(["--node-id", "old"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tenure");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "tenure run still going after 20 s against a newer schema:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "{status:?}\n{stderr}");
    let line = stderr.lines().find(|line| line.starts_with("error:")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains(&format!("version {known}")) && line.contains("20991231"), "{line}");
}
