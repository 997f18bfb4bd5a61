//! A ledger that has aged: a million rows of generated history (50 jobs, one row every six
//! minutes each, about 83 days), on PostgreSQL and SQLite. What is measured is the work a
//! statement does, not its time: on PostgreSQL the rows of `runs` it read, from the table's
//! statistics (flushed on the statement's own connection), so a plan that walks a job's whole
//! history or the whole table fails here however fast the machine is.

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeZone, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};
use tenure::model::RunStatus;
use tenure::store::{Retention, RunCursor, Store};

use crate::harness::Postgres;

const ROWS: i64 = 1_000_000;
const JOBS: i64 = 50;
/// Each job's slots are this far apart: 20,000 rows a job reach 83 days back.
const STEP_SECONDS: i64 = 360;

/// The newest slot of the generated history.
fn newest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
}

/// The slot `age` steps before the newest.
fn steps_back(age: i64) -> DateTime<Utc> {
    newest() - chrono::Duration::seconds(age * STEP_SECONDS)
}

/// A million finished rows in one statement: row `i` is job `i % 50`, `i / 50` steps before the
/// newest slot. `job-07` fails once in 300 runs (about 67 rows), every other row succeeded.
const GENERATE_POSTGRES: &str = "INSERT INTO runs (job, slot, trigger, term, node, config_hash, status,
                       claimed_at, started_at, finished_at, planned_at)
     SELECT 'job-' || lpad((i % $3)::text, 2, '0'), s, 'schedule', 1, 'n', 'h',
            CASE WHEN i % $3 = 7 AND (i / $3) % 300 = 7 THEN 'failed' ELSE 'succeeded' END,
            s, s, s + interval '1 second', s
     FROM generate_series(0, $2 - 1) AS i,
          LATERAL (SELECT $1::timestamptz - make_interval(secs => (i / $3) * $4)) AS t(s)";

/// A PostgreSQL ledger with the generated history, on a pool of one connection whose
/// statements always take a generic plan (`force_generic_plan`: the plan a prepared statement
/// may settle on after five executions, whatever its parameters).
async fn aged_postgres(pg: &Postgres, name: &str) -> sqlx::PgPool {
    let url = pg.create_database(name).await;
    let pool = tenure::store::connect(&url).await.expect("connect");
    tenure::store::migrate(&pool).await.expect("migrate");
    tenure::store::Postgres::new(pool.clone())
        .ensure_partitions(steps_back(ROWS / JOBS), newest())
        .await
        .expect("the history's days");
    pool.close().await;
    let options: PgConnectOptions = url.parse().expect("a database URL");
    let mut conn = options.connect().await.expect("connect without a timeout");
    // History, not outcomes being recorded: the outbox's triggers have nothing to say.
    conn.execute("SET session_replication_role = replica").await.expect("no triggers");
    sqlx::query(GENERATE_POSTGRES)
        .bind(newest())
        .bind(ROWS)
        .bind(JOBS)
        .bind(STEP_SECONDS as f64)
        .execute(&mut conn)
        .await
        .expect("generate the history");
    conn.execute("VACUUM ANALYZE runs").await.expect("analyze");
    conn.close().await.expect("close");
    PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET plan_cache_mode = force_generic_plan").await?;
                Ok(())
            })
        })
        .connect_with(options.disable_statement_logging())
        .await
        .expect("connect with generic plans")
}

/// Rows of `runs` (all its partitions) read so far (sequentially or through an index), as the
/// statistics hold them once this connection's pending counts are flushed.
async fn rows_read(pool: &sqlx::PgPool) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()").execute(pool).await.expect("flush");
    sqlx::query_scalar(
        "SELECT COALESCE(sum(COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0)), 0)::bigint
         FROM pg_stat_user_tables WHERE relid IN (SELECT relid FROM pg_partition_tree('runs'))",
    )
    .fetch_one(pool)
    .await
    .expect("read the statistics")
}

/// Rows of `runs` that `work` reads.
async fn rows_read_by<F: std::future::Future<Output = T>, T>(pool: &sqlx::PgPool, work: F) -> (i64, T) {
    let before = rows_read(pool).await;
    let out = work.await;
    (rows_read(pool).await - before, out)
}

#[tokio::test]
async fn pruning_an_aged_ledger_reads_what_it_deletes_not_the_table() {
    let pg = Postgres::start().await;
    let pool = aged_postgres(&pg, "pruning_reads_what_it_deletes").await;
    let store = Store::new(pool.clone());

    // Retention 90 days: nothing is that old.
    let nothing = Retention::before(newest() - chrono::Duration::days(90));
    let (read, pruned) = rows_read_by(&pool, store.prune_runs(&nothing, 1000)).await;
    assert_eq!(pruned.expect("prune"), 0);
    assert!(read <= 5 * JOBS, "a prune with nothing to delete read {read} rows of {ROWS}");

    // One job keeps 80 days, every other job 30: a batch reads about what it deletes.
    let retention = Retention {
        default_before: newest() - chrono::Duration::days(30),
        per_job: vec![("job-03".to_owned(), newest() - chrono::Duration::days(80))],
    };
    let (read, pruned) = rows_read_by(&pool, store.prune_runs(&retention, 1000)).await;
    assert_eq!(pruned.expect("prune"), 1000);
    assert!(read <= 2 * 1000 + 5 * JOBS, "a batch of 1,000 read {read} rows of {ROWS}");
    while store.prune_runs(&retention, 10_000).await.expect("prune") > 0 {}

    let kept = |job: &str| {
        sqlx::query_scalar::<_, DateTime<Utc>>("SELECT min(slot) FROM runs WHERE job = $1").bind(job.to_owned())
    };
    let oldest_kept = kept("job-03").fetch_one(&pool).await.unwrap();
    assert!(oldest_kept >= newest() - chrono::Duration::days(80), "job-03's own retain holds");
    assert!(oldest_kept < newest() - chrono::Duration::days(79), "job-03 keeps its 80 days: {oldest_kept}");
    let oldest_kept = kept("job-04").fetch_one(&pool).await.unwrap();
    assert!(oldest_kept >= newest() - chrono::Duration::days(30), "job-04 keeps 30 days: {oldest_kept}");
    assert!(oldest_kept < newest() - chrono::Duration::days(29), "job-04 keeps 30 days: {oldest_kept}");
}

#[tokio::test]
async fn history_pages_of_an_aged_ledger_read_only_the_rows_they_show() {
    let pg = Postgres::start().await;
    let pool = aged_postgres(&pg, "history_pages_read_their_rows").await;
    let (_, reads) = Store::with_reads(tenure::store::Postgres::new(pool.clone()));
    let eighty_days_back = RunCursor { slot: steps_back(80 * 240), id: i64::MAX };

    for (status, cursor, limit) in [
        (None, None, 50),
        (None, Some(eighty_days_back), 500),
        (Some(RunStatus::Failed), None, 50),
        (Some(RunStatus::Failed), None, 500),
        (Some(RunStatus::Failed), Some(eighty_days_back), 50),
        (Some(RunStatus::Succeeded), Some(eighty_days_back), 500),
        (Some(RunStatus::TimedOut), None, 500),
    ] {
        // Six times: a prepared statement may take a generic plan from its sixth execution on.
        for _ in 0..6 {
            let (read, page) = rows_read_by(&pool, reads.job_runs("job-07", status, cursor, limit)).await;
            let page = page.expect("a page");
            assert!(
                read <= page.len() as i64 + 2,
                "{status:?} after {cursor:?}, {limit} rows: read {read} rows for a page of {}",
                page.len()
            );
            assert!(page.windows(2).all(|pair| pair[0].slot > pair[1].slot), "newest first");
            assert!(page.iter().all(|run| status.is_none_or(|status| run.status == status)));
            assert!(page.iter().all(|run| cursor.is_none_or(|cursor| run.slot < cursor.slot)));
        }
    }
    let failed = reads.job_runs("job-07", Some(RunStatus::Failed), None, 500).await.unwrap();
    assert_eq!(failed.len(), 67, "job-07's failures");
}

#[tokio::test]
async fn no_index_of_the_ledger_repeats_the_keys_of_another() {
    let pg = Postgres::start().await;
    let url = pg.create_database("no_index_repeats_keys").await;
    let pool = tenure::store::connect(&url).await.expect("connect");
    tenure::store::migrate(&pool).await.expect("migrate");
    // Each full (not partial) index's keys, in order, a column's name or an expression's text;
    // direction does not count (a B-tree reads backwards as well as forwards).
    let indexes: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT t.relname::text, i.relname::text,
                array_agg(pg_get_indexdef(x.indexrelid, k.n::int, true) ORDER BY k.n)
         FROM pg_index x
         JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
         JOIN pg_namespace ns ON ns.oid = t.relnamespace AND ns.nspname = 'public'
         CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
         WHERE x.indpred IS NULL AND k.n <= x.indnkeyatts
         GROUP BY t.relname, i.relname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (table, index, keys) in &indexes {
        for (other_table, other, other_keys) in &indexes {
            if table == other_table && index != other {
                assert!(
                    !other_keys.starts_with(keys),
                    "{table}: {index} {keys:?} repeats the leading keys of {other} {other_keys:?}"
                );
            }
        }
    }
}

/// The embedded ledger in a file, with the generated history written by a connection of its own.
async fn aged_sqlite(dir: &tempfile::TempDir) -> (Store, sqlx::SqliteConnection) {
    let path = dir.path().join("ledger.db");
    let ledger = tenure::store::Sqlite::open(&path).await.expect("open");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect");
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?2 - 1)
         INSERT INTO runs (job, slot, trigger, term, node, config_hash, status, claimed_at, started_at, finished_at,
                           planned_at)
         SELECT printf('job-%02d', i % ?3), ?1 - (i / ?3) * ?4, 'schedule', 1, 'n', 'h',
                CASE WHEN i % ?3 = 7 AND (i / ?3) % 300 = 7 THEN 'failed' ELSE 'succeeded' END,
                ?1 - (i / ?3) * ?4, ?1 - (i / ?3) * ?4, ?1 - (i / ?3) * ?4 + 1000000, ?1 - (i / ?3) * ?4
         FROM n",
    )
    .bind(newest().timestamp_micros())
    .bind(ROWS)
    .bind(JOBS)
    .bind(STEP_SECONDS * 1_000_000)
    .execute(&mut conn)
    .await
    .expect("generate the history");
    (Store::with_reads(ledger).0, conn)
}

/// Pages the ledger file holds (its size is this times the page size).
async fn pages(conn: &mut sqlx::SqliteConnection) -> i64 {
    sqlx::query_scalar("PRAGMA page_count").fetch_one(conn).await.unwrap()
}

#[tokio::test]
async fn the_embedded_ledger_prunes_by_index_and_gives_the_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut conn) = aged_sqlite(&dir).await;
    let before = pages(&mut conn).await;

    let nothing = Retention::before(newest() - chrono::Duration::days(90));
    assert_eq!(store.prune_runs(&nothing, 1000).await.unwrap(), 0);
    // Two thirds of the history goes: everything older than 27.7 days (6,667 of 20,000 steps
    // are kept), one job keeping 80 days.
    let retention = Retention {
        default_before: steps_back(6_667) + chrono::Duration::seconds(1),
        per_job: vec![("job-03".to_owned(), newest() - chrono::Duration::days(80))],
    };
    let mut pruned = 0;
    loop {
        let batch = store.prune_runs(&retention, 10_000).await.unwrap();
        assert!(batch <= 10_000);
        if batch == 0 {
            break;
        }
        pruned += batch;
    }
    let kept_by_job_03 = (80 * 240) as u64;
    assert_eq!(pruned, 49 * (20_000 - 6_667) + (20_000 - kept_by_job_03 - 1));
    let after = pages(&mut conn).await;
    assert!(
        (after as f64) <= 0.45 * before as f64,
        "the ledger file still holds {after} pages of {before} after two thirds of its rows went"
    );
    conn.close().await.unwrap();
}

/// One job firing every second, nothing else.
const EVERY_SECOND: &str = r#"
jobs:
  - name: tick
    schedule: "* * * * * *"
    shell: "true"
"#;

/// The ledger as the release before these migrations left it: their indexes absent, the old
/// ones present, the migrations unrecorded; nor the later ones (`0017_access`'s tables).
const SCHEMA_BEFORE_AGES: &str =
    "DROP INDEX runs_job_status_slot; DROP INDEX triggers_run; DROP INDEX notifications_created;
     CREATE INDEX runs_job_status ON runs (job, status);
     CREATE INDEX runs_job_slot_desc ON runs (job, slot DESC, id DESC);
     DROP TABLE api_tokens, web_keys, audit; DROP FUNCTION audit_append_only();
     DROP INDEX runs_job_ended;
     DELETE FROM _sqlx_migrations WHERE version > 10;";

/// The migration onto an aged ledger of a million rows runs while its leader fires every second:
/// concurrent index builds, the duplicates dropped, then the table made the legacy partition of
/// the ledger partitioned by slot (its range proven by a constraint validated without holding up
/// writes, attached under a lock of milliseconds asked for 100 ms at a time). No second is
/// missed or begins 1 s late. Interrupted twice, in the middle of an index build and of the
/// validation (its session ended, as by a crash), it is run again and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_an_aged_ledger_onto_partitions_keeps_firing_and_resumes_when_interrupted() {
    // The replica fires on the schema the upgrade starts from (before partitions), and keeps the
    // generated history (83 days of it): its pruning, once a minute, would otherwise delete some
    // of the rows this test counts in the legacy partition, as many as the upgrade's time let it.
    let options = crate::cluster::Options {
        env: vec![
            ("TENURE_TEST_MIGRATE_TO".to_owned(), "20".to_owned()),
            ("TENURE_RETAIN".to_owned(), "3650d".to_owned()),
        ],
        ..crate::cluster::Options::default()
    };
    let cluster = crate::cluster::Cluster::start_with(1, EVERY_SECOND, options).await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let options: PgConnectOptions = cluster.database_url.parse().expect("a database URL");
    let mut conn = options.connect().await.expect("connect");
    sqlx::raw_sql(SCHEMA_BEFORE_AGES).execute(&mut conn).await.expect("the schema before");
    conn.execute("SET session_replication_role = replica").await.expect("no triggers");
    sqlx::query(GENERATE_POSTGRES)
        .bind(newest())
        .bind(ROWS)
        .bind(JOBS)
        .bind(STEP_SECONDS as f64)
        .execute(&mut conn)
        .await
        .expect("generate the history");
    conn.execute("SET session_replication_role = origin; ANALYZE runs").await.expect("analyze");

    let pool = tenure::store::connect(&cluster.database_url).await.expect("connect");
    let from = Utc::now();
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { tenure::store::migrate(&pool).await }
    });
    // The first attempt ends in the middle of building the index, its session terminated.
    let mut ended = false;
    for _ in 0..2_000 {
        let building: Option<i32> = sqlx::query_scalar(
            "SELECT p.pid FROM pg_stat_progress_create_index p JOIN pg_class i ON i.oid = p.index_relid
             WHERE i.relname = 'runs_job_status_slot'",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if let Some(pid) = building {
            ended = sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&mut conn).await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ended, "the index build was seen and its session ended");
    let error = first.await.unwrap().expect_err("the interrupted migration fails");
    assert!(error.is_transient(), "an interrupted migration is retried at start-up: {error}");
    let invalid: Vec<String> =
        sqlx::query_scalar("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(invalid, ["runs_job_status_slot"], "the interrupted build left its index unfinished");

    // The second attempt ends while it validates the legacy partition's range.
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { tenure::store::migrate(&pool).await }
    });
    let mut ended = false;
    for _ in 0..6_000 {
        let validating: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE query LIKE '%VALIDATE CONSTRAINT runs_legacy_bound%' AND pid <> pg_backend_pid()",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if let Some(pid) = validating {
            ended = sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&mut conn).await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ended, "the validation was seen and its session ended");
    let error = second.await.unwrap().expect_err("the interrupted migration fails");
    assert!(error.is_transient(), "an interrupted migration is retried at start-up: {error}");
    let layout: String = sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE relname = 'runs'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(layout, "r", "not partitioned yet");

    tenure::store::migrate(&pool).await.expect("the migration resumes and completes");
    let to = Utc::now();
    let layout: String = sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE relname = 'runs'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(layout, "p", "partitioned by slot");
    let legacy: i64 =
        sqlx::query_scalar("SELECT count(*) FROM runs_legacy WHERE job <> 'tick'").fetch_one(&mut conn).await.unwrap();
    assert_eq!(legacy, ROWS, "the history is the legacy partition, not copied");
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE tablename = 'runs' ORDER BY indexname")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        indexes,
        [
            "runs_cancels_pending",
            "runs_executing",
            "runs_id_slot",
            "runs_job_ended",
            "runs_job_slot_key",
            "runs_job_status_slot",
            "runs_running",
            "runs_unstarted"
        ]
    );
    let invalid: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetch_one(&mut conn).await.unwrap();
    assert_eq!(invalid, 0);

    // Every second of the migration fired, on time.
    let first_slot = from.duration_trunc(chrono::TimeDelta::seconds(1)).unwrap() + chrono::TimeDelta::seconds(1);
    let last_slot = to.duration_trunc(chrono::TimeDelta::seconds(1)).unwrap();
    crate::harness::wait_for("the migration's last slot ran", Duration::from_secs(15), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM runs WHERE job = 'tick' AND slot = $1 AND status <> 'running'",
        )
        .bind(last_slot)
        .fetch_one(&pool)
        .await
        .unwrap()
            == 1
    })
    .await;
    // Each slot: its status, how late it began (ms) and its error.
    type Fired = (DateTime<Utc>, String, Option<i64>, Option<String>);
    let fired: Vec<Fired> = sqlx::query_as(
        "SELECT slot, status, (extract(epoch FROM began_at - COALESCE(planned_at, slot)) * 1000)::bigint, error
         FROM runs WHERE job = 'tick' AND slot BETWEEN $1 AND $2 ORDER BY slot",
    )
    .bind(first_slot)
    .bind(last_slot)
    .fetch_all(&pool)
    .await
    .unwrap();
    let seconds = (last_slot - first_slot).num_seconds() + 1;
    assert!(seconds >= 2, "the migration took {seconds} s");
    assert_eq!(fired.len() as i64, seconds, "every second from {first_slot} to {last_slot} fired: {fired:?}");
    for (slot, status, late_ms, error) in &fired {
        assert_eq!(status, "succeeded", "{slot}: {error:?}\n{}", cluster.logs());
        let late_ms = late_ms.unwrap_or_else(|| panic!("{slot} has no begin"));
        assert!(late_ms < 1_000, "{slot} began {late_ms} ms late, during the migration");
    }
}
