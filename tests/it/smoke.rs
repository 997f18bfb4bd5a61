//! The harness works: both servers come up, answer, keep their data across restarts, and
//! stop answering while paused.

use std::time::Duration;

use crate::harness::{Etcd, Postgres, wait_for};

#[tokio::test]
async fn etcd_and_postgres_come_up_answer_and_take_the_migrations() {
    let etcd = Etcd::start().await;
    let mut client = etcd_client::Client::connect([etcd.client_url()], None).await.unwrap();
    client.put("smoke", "yes", None).await.unwrap();
    let got = client.get("smoke", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"yes");

    let pg = Postgres::start().await;
    let url = pg.create_database("smoke").await;
    let pool = tenure::store::connect(&url).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
    tenure::store::migrate(&pool).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for table in ["fence", "job_controls", "runs", "terms", "triggers"] {
        assert!(tables.iter().any(|t| t == table), "{table} missing from {tables:?}");
    }
    let fence: i64 = sqlx::query_scalar("SELECT term FROM fence WHERE id = 1").fetch_one(&pool).await.unwrap();
    assert_eq!(fence, 0);
}

#[tokio::test]
async fn servers_keep_their_data_across_restarts_and_pause_for_real() {
    let mut etcd = Etcd::start().await;
    let mut client = etcd_client::Client::connect([etcd.client_url()], None).await.unwrap();
    client.put("kept", "1", None).await.unwrap();
    etcd.stop();
    assert!(!etcd.answers().await);
    etcd.restart().await;
    let mut client = etcd_client::Client::connect([etcd.client_url()], None).await.unwrap();
    assert_eq!(client.get("kept", None).await.unwrap().kvs()[0].value(), b"1");
    etcd.pause();
    // SIGSTOP is delivered asynchronously; within moments a stopped etcd answers nothing.
    wait_for("a paused etcd to stop answering", Duration::from_secs(3), || async { !etcd.answers().await }).await;
    etcd.resume();
    wait_for("etcd to answer after SIGCONT", Duration::from_secs(5), || etcd.answers()).await;
    etcd.kill();
    assert!(!etcd.is_running() && !etcd.answers().await, "killed");
    etcd.restart().await;
    assert!(etcd.is_running());

    let mut pg = Postgres::start().await;
    let url = pg.create_database("kept").await;
    {
        let pool = tenure::store::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE t (x int)").execute(&pool).await.unwrap();
        sqlx::query("INSERT INTO t VALUES (42)").execute(&pool).await.unwrap();
        pool.close().await;
    }
    pg.stop_immediate();
    assert!(!pg.answers().await);
    pg.restart().await;
    let pool = tenure::store::connect(&url).await.unwrap();
    let x: i32 = sqlx::query_scalar("SELECT x FROM t").fetch_one(&pool).await.unwrap();
    assert_eq!(x, 42);
    pg.pause();
    wait_for("a paused postgres to stop answering", Duration::from_secs(3), || async { !pg.answers().await }).await;
    pg.resume();
    wait_for("postgres to answer after SIGCONT", Duration::from_secs(5), || pg.answers()).await;
    pg.kill();
    assert!(!pg.is_running() && !pg.answers().await, "killed");
    pg.restart().await;
    assert!(pg.is_running());
}
