//! The ledger partitioned by slot on PostgreSQL: retention gives the disk back by whole
//! partitions while a job's longer `retain` holds; the (job, slot) claim and the fence hold in
//! every partition (the legacy one an upgrade made of the table as it stood, a day made on
//! demand, a range sealed while retention rewrites it); history pages cross partition bounds.

use chrono::{DateTime, Datelike, Duration, DurationRound, TimeZone, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};
use tenure::leadership::Term;
use tenure::model::{RunStatus, Trigger};
use tenure::store::{Claim, ClaimError, Reads, Retention, RunCursor, SkipIfRunning, Store, UnrunSlots};

use crate::harness::Postgres;

const ROWS: i64 = 1_000_000;
const JOBS: i64 = 50;
/// Each job's slots are this far apart: 20,000 rows a job reach 83 days back.
const STEP_SECONDS: i64 = 360;

fn newest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
}

fn steps_back(age: i64) -> DateTime<Utc> {
    newest() - Duration::seconds(age * STEP_SECONDS)
}

/// Row `i` is job `i % 50`, `i / 50` steps before the newest slot, every one succeeded.
const GENERATE: &str = "INSERT INTO runs (job, slot, trigger, term, node, config_hash, status,
                       claimed_at, started_at, finished_at, planned_at, output)
     SELECT 'job-' || lpad((i % $3)::text, 2, '0'), s, 'schedule', 1, 'n', 'h', 'succeeded',
            s, s, s + interval '1 second', s, 'done: ' || repeat('.', 40)
     FROM generate_series(0, $2 - 1) AS i,
          LATERAL (SELECT $1::timestamptz - make_interval(secs => (i / $3) * $4)) AS t(s)";

/// Bytes of `runs`: every partition with its indexes and TOAST.
async fn ledger_bytes(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('runs')")
        .fetch_one(pool)
        .await
        .expect("the ledger's size")
}

async fn history(url: &str, rows: i64) {
    let options: PgConnectOptions = url.parse().expect("a database URL");
    let mut conn = options.connect().await.expect("connect without a timeout");
    conn.execute("SET session_replication_role = replica").await.expect("no triggers");
    sqlx::query(GENERATE)
        .bind(newest())
        .bind(rows)
        .bind(JOBS)
        .bind(STEP_SECONDS as f64)
        .execute(&mut conn)
        .await
        .expect("generate the history");
    conn.execute("VACUUM ANALYZE runs").await.expect("analyze");
    conn.close().await.expect("close");
}

fn claim<'a>(job: &'a str, slot: DateTime<Utc>, term: &'a Term, node: &'a str) -> Claim<'a> {
    Claim {
        job,
        slot,
        trigger: Trigger::Schedule,
        term,
        node,
        config_hash: "h",
        skip_if_running: SkipIfRunning::No,
        claimed_at: Utc::now(),
        planned_at: slot,
    }
}

async fn rows_of(pool: &sqlx::PgPool, job: &str, slot: DateTime<Utc>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM runs WHERE job = $1 AND slot = $2")
        .bind(job)
        .bind(slot)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn retention_that_removes_two_thirds_of_the_ledger_gives_the_disk_back_and_a_longer_retain_holds() {
    let pg = Postgres::start().await;
    let url = pg.create_database("partitions_give_the_disk_back").await;
    let pool = tenure::store::connect(&url).await.expect("connect");
    tenure::store::migrate(&pool).await.expect("migrate");
    let ledger = tenure::store::Postgres::new(pool.clone());
    ledger.ensure_partitions(steps_back(ROWS / JOBS), newest()).await.expect("the history's days");
    history(&url, ROWS).await;
    let before = ledger_bytes(&pool).await;
    let (store, _reads) = Store::with_reads(ledger);

    // Two thirds go: everything older than 27.7 days (6,667 of 20,000 steps are kept), but
    // job-03 keeps 80 days.
    let retention = Retention {
        default_before: steps_back(6_667) + Duration::seconds(1),
        per_job: vec![("job-03".to_owned(), newest() - Duration::days(80))],
    };
    let whole = store.keep_partitions(&retention, Utc::now()).await.expect("partitions retired");
    let mut by_row = 0;
    loop {
        let batch = store.prune_runs(&retention, 10_000).await.expect("prune");
        if batch == 0 {
            break;
        }
        by_row += batch;
    }
    let kept_by_job_03 = (80 * 240) as u64;
    assert_eq!(whole + by_row, 49 * (20_000 - 6_667) + (20_000 - kept_by_job_03 - 1), "what retention removes");
    assert!(whole > 20 * by_row, "most of it went by whole partitions: {whole} rows, {by_row} row by row");
    let after = ledger_bytes(&pool).await;
    assert!(
        (after as f64) <= 0.45 * before as f64,
        "the ledger still takes {after} bytes of {before} ({:.0} %) after two thirds of its rows went",
        100.0 * after as f64 / before as f64
    );

    let oldest = |job: &str| {
        sqlx::query_scalar::<_, DateTime<Utc>>("SELECT min(slot) FROM runs WHERE job = $1").bind(job.to_owned())
    };
    let oldest_kept = oldest("job-03").fetch_one(&pool).await.unwrap();
    assert!(oldest_kept >= newest() - Duration::days(80), "job-03's own retain holds: {oldest_kept}");
    assert!(oldest_kept < newest() - Duration::days(79), "job-03 keeps its 80 days: {oldest_kept}");
    let oldest_kept = oldest("job-04").fetch_one(&pool).await.unwrap();
    assert_eq!(oldest_kept, steps_back(6_666), "job-04 keeps the ledger's retention");

    // A slot whose row a rewritten partition kept is still taken; the fence still holds there.
    let term = Term::for_tests(5, "c");
    store.begin_term(&term, "n").await.unwrap();
    let kept_slot = newest() - Duration::days(60);
    assert_eq!(rows_of(&pool, "job-03", kept_slot).await, 1);
    let again = store.claim_run(&claim("job-03", kept_slot, &term, "n")).await;
    assert!(matches!(again, Err(ClaimError::AlreadyClaimed { term: 1, .. })), "{again:?}");
    let newer = Term::for_tests(6, "c");
    store.begin_term(&newer, "m").await.unwrap();
    let stale = store.claim_run(&claim("job-04", kept_slot, &term, "n")).await;
    assert!(matches!(stale, Err(ClaimError::Fenced { term: 5, fence: 6 })), "{stale:?}");
    assert_eq!(rows_of(&pool, "job-04", kept_slot).await, 0);

    // Nothing was left sealed or half done.
    let sealed: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT sealed_to FROM fence").fetch_one(&pool).await.unwrap();
    assert_eq!(sealed, None);
    let strays: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relname LIKE 'runs\\_%' AND relkind = 'r' AND NOT relispartition",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(strays, 0, "no table of the ledger is left outside it");
}

/// A ledger upgraded from the layout before partitions with `rows` of history (job `old`,
/// one a day back from today) in it: they are in `runs_legacy` now.
async fn upgraded(pg: &Postgres, name: &str, rows: i64) -> (String, sqlx::PgPool, Store, Reads) {
    let url = pg.create_database(name).await;
    let options: PgConnectOptions = url.parse().expect("a database URL");
    let mut conn = options.connect().await.expect("connect");
    sqlx::migrate!("./migrations/postgres").run_to(16, &mut conn).await.expect("the schema before partitions");
    sqlx::query(
        "INSERT INTO runs (job, slot, term, node, config_hash, status, claimed_at, finished_at)
         SELECT 'old', date_trunc('day', now()) - make_interval(days => i::int), 1, 'n', 'h',
                CASE WHEN i % 3 = 0 THEN 'failed' ELSE 'succeeded' END, now(), now()
         FROM generate_series(1, $1) AS i",
    )
    .bind(rows)
    .execute(&mut conn)
    .await
    .expect("history");
    conn.close().await.unwrap();
    let pool = tenure::store::connect(&url).await.expect("connect");
    tenure::store::migrate(&pool).await.expect("migrate onto partitions");
    let legacy: i64 = sqlx::query_scalar("SELECT count(*) FROM runs_legacy").fetch_one(&pool).await.unwrap();
    assert_eq!(legacy, rows, "the table as it stood is the legacy partition");
    let (store, reads) = Store::with_reads(tenure::store::Postgres::new(pool.clone()));
    (url, pool, store, reads)
}

#[tokio::test]
async fn a_slot_is_claimed_once_and_a_stale_term_refused_in_every_partition_legacy_and_sealed_ones_included() {
    let pg = Postgres::start().await;
    let (_url, pool, store, _reads) = upgraded(&pg, "partitions_claims", 200).await;
    let cutover: DateTime<Utc> = sqlx::query_scalar(
        "SELECT btrim((regexp_match(pg_get_expr(relpartbound, oid), 'TO \\((.+)\\)'))[1], '''')::timestamptz
         FROM pg_class WHERE relname = 'runs_legacy'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let now = Utc::now().duration_trunc(Duration::seconds(1)).unwrap();
    let in_legacy_old = now - Duration::days(50) + Duration::hours(3);
    let in_legacy_now = now;
    let in_a_day = cutover + Duration::hours(1);
    // No partition holds it yet: the claim makes its day.
    let beyond = now + Duration::days(40);
    let slots = [in_legacy_old, in_legacy_now, in_a_day, beyond];

    let old = Term::for_tests(5, "c");
    store.begin_term(&old, "n1").await.unwrap();
    for slot in slots {
        let claimed = store.claim_run(&claim("job", slot, &old, "n1")).await.expect("claimed");
        assert_eq!(store.start_runs(&old, &[(claimed.run_id, slot)]).await.unwrap(), [true]);
        let twice = store.claim_run(&claim("job", slot, &old, "n2")).await;
        assert!(matches!(twice, Err(ClaimError::AlreadyClaimed { term: 5, .. })), "{slot}: {twice:?}");
        assert_eq!(rows_of(&pool, "job", slot).await, 1, "{slot}");
    }
    let partition_of = |slot: DateTime<Utc>| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT tableoid::regclass::text FROM runs WHERE job = 'job' AND slot = $1")
                .bind(slot)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(partition_of(in_legacy_old).await, "runs_legacy");
    assert_eq!(partition_of(in_legacy_now).await, "runs_legacy");
    assert_eq!(partition_of(in_a_day).await, format!("runs_{}", cutover.format("%Y%m%d")));
    let monday = beyond.date_naive() - chrono::Days::new(u64::from(beyond.weekday().num_days_from_monday()));
    assert_eq!(partition_of(beyond).await, format!("runs_{}", monday.format("%Y%m%d")), "its week");

    let new = Term::for_tests(6, "c");
    store.begin_term(&new, "n2").await.unwrap();
    for slot in slots {
        let taken = store.claim_run(&claim("job", slot, &new, "n2")).await;
        assert!(matches!(taken, Err(ClaimError::AlreadyClaimed { term: 5, .. })), "{slot}: {taken:?}");
        let fresh = slot + Duration::seconds(1);
        let stale = store.claim_run(&claim("job", fresh, &old, "n1")).await;
        assert!(matches!(stale, Err(ClaimError::Fenced { term: 5, fence: 6 })), "{slot}: {stale:?}");
        assert_eq!(rows_of(&pool, "job", fresh).await, 0, "{slot}");
    }

    // The legacy partition sealed, as retention seals a range it rewrites: the current term's
    // claim there is a delay (an error, retried), not a run and not a refusal for good; the
    // stale term is fenced; outside the range claims go on.
    sqlx::query("UPDATE fence SET sealed_from = '-infinity', sealed_to = $1")
        .bind(cutover)
        .execute(&pool)
        .await
        .unwrap();
    for slot in [in_legacy_old + Duration::seconds(2), in_legacy_now + Duration::seconds(2)] {
        let delayed = store.claim_run(&claim("job", slot, &new, "n2")).await;
        assert!(matches!(delayed, Err(ClaimError::Database(_))), "{slot}: {delayed:?}");
        let stale = store.claim_run(&claim("job", slot, &old, "n1")).await;
        assert!(matches!(stale, Err(ClaimError::Fenced { term: 5, fence: 6 })), "{slot}: {stale:?}");
        let unrun = UnrunSlots {
            job: "job",
            slots: &[slot],
            status: RunStatus::Missed,
            trigger: Trigger::Schedule,
            term: &new,
            node: "n2",
            config_hash: "h",
            error: "missed",
        };
        let recorded = store.record_slots(&unrun).await;
        assert!(matches!(recorded, Err(ClaimError::Database(_))), "{slot}: {recorded:?}");
        assert_eq!(rows_of(&pool, "job", slot).await, 0, "{slot}");
    }
    store.claim_run(&claim("job", in_a_day + Duration::seconds(2), &new, "n2")).await.expect("outside the seal");
    sqlx::query("UPDATE fence SET sealed_from = NULL, sealed_to = NULL").execute(&pool).await.unwrap();
    let open = in_legacy_old + Duration::seconds(2);
    store.claim_run(&claim("job", open, &new, "n2")).await.expect("claimed once the range is open");
    let twice = store.claim_run(&claim("job", open, &new, "n3")).await;
    assert!(matches!(twice, Err(ClaimError::AlreadyClaimed { term: 6, .. })), "{twice:?}");

    let duplicates: i64 =
        sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM runs GROUP BY job, slot HAVING count(*) > 1) d")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(duplicates, 0);
}

#[tokio::test]
async fn history_pages_cross_partition_bounds_and_return_every_row_once_in_order() {
    let pg = Postgres::start().await;
    let (_url, pool, _store, reads) = upgraded(&pg, "partitions_pages", 40).await;
    // After the legacy partition's rows: every 290 minutes for 24 days, some failed.
    tenure::store::Postgres::new(pool.clone())
        .ensure_partitions(Utc::now(), Utc::now() + Duration::days(25))
        .await
        .expect("the weeks ahead");
    sqlx::query(
        "INSERT INTO runs (job, slot, term, node, config_hash, status, claimed_at, finished_at)
         SELECT 'old', (SELECT max(slot) FROM runs) + make_interval(mins => 290 * i::int), 1, 'n', 'h',
                CASE WHEN i % 4 = 0 THEN 'failed' ELSE 'succeeded' END, now(), now()
         FROM generate_series(1, 118) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let partitions: i64 = sqlx::query_scalar("SELECT count(DISTINCT tableoid) FROM runs WHERE job = 'old'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(partitions >= 4, "the job's rows span {partitions} partitions");

    for status in [None, Some(RunStatus::Failed)] {
        let expected: Vec<(i64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, slot FROM runs WHERE job = 'old' AND ($1::text IS NULL OR status = $1)
             ORDER BY slot DESC, id DESC",
        )
        .bind(status.map(|status| status.as_str()))
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = reads.job_runs("old", status, cursor, 7).await.expect("a page");
            if page.is_empty() {
                break;
            }
            seen.extend(page.iter().map(|run| (run.id, run.slot)));
            let last = page.last().unwrap();
            cursor = Some(RunCursor { slot: last.slot, id: last.id });
        }
        assert_eq!(seen, expected, "{status:?}: every row once, newest first");
    }
}

#[tokio::test]
async fn a_rewrite_interrupted_between_detach_and_attach_is_undone_by_the_next_pass() {
    let pg = Postgres::start().await;
    let url = pg.create_database("partitions_interrupted_rewrite").await;
    let pool = tenure::store::connect(&url).await.expect("connect");
    tenure::store::migrate(&pool).await.expect("migrate");
    let ledger = tenure::store::Postgres::new(pool.clone());
    // 2,000 rows: the last four hours before the newest slot, all in one week.
    ledger.ensure_partitions(steps_back(40), newest()).await.expect("the days");
    history(&url, 2_000).await;
    // The week that holds them (2026-11-30 is a Monday).
    let day = newest() - Duration::days(1);
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE slot >= $1 AND slot < $2")
        .bind(day)
        .bind(day + Duration::days(7))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(held, 2_000);
    let (store, _reads) = Store::with_reads(ledger);
    let name = format!("runs_{}", day.format("%Y%m%d"));
    let end: DateTime<Utc> = sqlx::query_scalar(
        "SELECT btrim((regexp_match(pg_get_expr(relpartbound, oid), 'TO \\((.+)\\)'))[1], '''')::timestamptz
         FROM pg_class WHERE relname = $1",
    )
    .bind(&name)
    .fetch_one(&pool)
    .await
    .unwrap();
    // As a pass leaves it when killed after the copy began and the old partition was detached:
    // its range sealed, the old table outside the ledger, a copy half made.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE fence SET sealed_from = '{day}', sealed_to = '{end}';
         ALTER TABLE runs DETACH PARTITION {name};
         CREATE TABLE {name}_1 (LIKE runs INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
         INSERT INTO {name}_1 SELECT * FROM {name} LIMIT 3;",
        day = day.to_rfc3339(),
        end = end.to_rfc3339(),
    )))
    .execute(&pool)
    .await
    .unwrap();
    let term = Term::for_tests(3, "c");
    store.begin_term(&term, "n").await.unwrap();
    let sealed = store.claim_run(&claim("job-90", day + Duration::hours(1), &term, "n")).await;
    assert!(matches!(sealed, Err(ClaimError::Database(_))), "{sealed:?}");

    // Retention that removes nothing: the pass only finishes what was left.
    let keep_all = Retention::before(newest() - Duration::days(365));
    store.keep_partitions(&keep_all, Utc::now()).await.expect("the next pass");
    let back: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE slot >= $1 AND slot < $2")
        .bind(day)
        .bind(day + Duration::days(7))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(back, held, "the old partition is attached again, whole");
    let copy: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relname = $1")
        .bind(format!("{name}_1"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(copy, 0, "the half-made copy is dropped");
    let seal: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT sealed_to FROM fence").fetch_one(&pool).await.unwrap();
    assert_eq!(seal, None, "the seal is lifted");
    store.claim_run(&claim("job-90", day + Duration::hours(1), &term, "n")).await.expect("claimed once open");
    let twice = store.claim_run(&claim("job-03", steps_back(12), &term, "n")).await;
    assert!(matches!(twice, Err(ClaimError::AlreadyClaimed { term: 1, .. })), "{twice:?}");
}
