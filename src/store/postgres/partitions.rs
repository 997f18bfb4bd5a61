//! The ledger's partitions on PostgreSQL: `runs` is partitioned by slot, one partition a UTC week
//! (`runs_YYYYMMDD`, named by its first day, Monday but for the first after `runs_legacy`), after
//! `runs_legacy`, the table as it stood before the upgrade, which holds
//! every slot before its cut-over. This module creates the weeks ahead and on demand, and gives
//! disk back when retention has passed them: a partition whose every row retention removes is
//! detached and dropped; one that keeps a few rows (a job whose `retain` is longer than the
//! ledger's, a job's newest row, a run still going) while at least half of it goes is rewritten:
//! the rows kept are copied into a new table that replaces it. Nothing here takes a lock that
//! holds up a claim: partitions come and go by `ATTACH` and `DETACH ... CONCURRENTLY` (SHARE
//! UPDATE EXCLUSIVE on `runs`), and the range being rewritten is closed to claims by the seal in
//! the fence row (`fence.sealed_from`, `sealed_to`), which every recording statement reads
//! `FOR SHARE` and which is set, like a new term, by an update of that row.
//!
//! Interrupted anywhere (the process killed, the connection lost), the next pass finishes what
//! it can: a detach left pending is finalized, and the sealed range is left covered by exactly
//! one attached partition (the new one if it was attached, else the old one attached again), the
//! other dropped, before the seal is lifted.

use chrono::{DateTime, Datelike, Duration, DurationRound, Utc};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};

use super::super::Retention;

/// How many days ahead of today the leader keeps partitions ready.
pub(super) const DAYS_AHEAD: i64 = 8;

/// Session lock that keeps two replicas from creating the same week at once.
const CREATE_LOCK: i64 = 0x7465_6e75_7265_7064; // "tenurepd"
/// Session lock of the retention pass (one leader at a time, and never two passes).
const RETIRE_LOCK: i64 = 0x7465_6e75_7265_7072; // "tenurepr"

/// One attached partition and the slots it holds: [lower, upper); `None` is unbounded.
#[derive(Debug, Clone)]
struct Partition {
    name: String,
    lower: Option<DateTime<Utc>>,
    upper: Option<DateTime<Utc>>,
    estimate: f64,
}

impl Partition {
    /// The name its first generation has: `runs_legacy`, or `runs_YYYYMMDD` for a week (its first day).
    fn base(&self) -> String {
        base_name(self.lower)
    }

    /// The name of the table that replaces it: the base with the next generation number.
    fn next_name(&self) -> String {
        let base = self.base();
        let generation = self.name.strip_prefix(&format!("{base}_")).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
        format!("{base}_{}", generation + 1)
    }

    /// The partition bound as `ATTACH PARTITION` takes it.
    fn bound(&self) -> String {
        format!("FOR VALUES FROM ({}) TO ({})", literal(self.lower, "MINVALUE"), literal(self.upper, "MAXVALUE"))
    }

    /// The CHECK constraint that proves the bound, so that attaching reads no row.
    fn check(&self) -> String {
        match (self.lower, self.upper) {
            (Some(lower), Some(upper)) => {
                format!("CHECK (slot >= {} AND slot < {})", literal(Some(lower), ""), literal(Some(upper), ""))
            }
            (None, Some(upper)) => format!("CHECK (slot < {})", literal(Some(upper), "")),
            (Some(lower), None) => format!("CHECK (slot >= {})", literal(Some(lower), "")),
            (None, None) => "CHECK (true)".to_owned(),
        }
    }
}

fn base_name(lower: Option<DateTime<Utc>>) -> String {
    match lower {
        None => "runs_legacy".to_owned(),
        Some(lower) => format!("runs_{}", lower.format("%Y%m%d")),
    }
}

fn literal(instant: Option<DateTime<Utc>>, unbounded: &str) -> String {
    match instant {
        Some(instant) => format!("'{}'::timestamptz", instant.format("%Y-%m-%d %H:%M:%S%.6f+00")),
        None => unbounded.to_owned(),
    }
}

/// Whether `error` is a row no partition of `runs` takes ("no partition of relation ... found
/// for row"): its week is created and the statement sent again.
pub(super) fn missing_partition(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => {
            error.code().as_deref() == Some("23514") && error.message().starts_with("no partition of relation")
        }
        _ => false,
    }
}

/// The UTC day that holds `slot`.
pub(super) fn day_of(slot: DateTime<Utc>) -> DateTime<Utc> {
    slot.duration_trunc(Duration::days(1)).unwrap_or(slot)
}

/// How many days a partition holds: a week, Monday to Monday (UTC). Every statement locks each
/// partition it cannot prune with all its indexes, so their number is kept small: 13 for a
/// retention of 90 days.
const WIDTH_DAYS: i64 = 7;

/// The week (Monday 00:00 UTC) that holds `slot`.
fn week_of(slot: DateTime<Utc>) -> DateTime<Utc> {
    let day = day_of(slot);
    day - Duration::days(i64::from(day.weekday().num_days_from_monday()))
}

/// Whether `runs` is partitioned yet (during the upgrade it is the plain table for a while).
async fn partitioned(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT relkind = 'p' FROM pg_class WHERE oid = 'runs'::regclass").fetch_one(conn).await
}

/// The partitions attached to `runs` (not one being detached), oldest range first.
async fn partitions(conn: &mut sqlx::PgConnection) -> Result<Vec<Partition>, sqlx::Error> {
    let rows = sqlx::query(
        // An infinite bound (the legacy partition of a ledger that was empty ends at -infinity)
        // is clamped into the years chrono reads.
        "SELECT c.relname::text AS name,
                CASE WHEN b[1] = 'MINVALUE' THEN NULL
                     ELSE greatest(least(btrim(b[1], '''')::timestamptz, '9999-01-01'), '0001-01-01') END AS lower,
                CASE WHEN b[2] = 'MAXVALUE' THEN NULL
                     ELSE greatest(least(btrim(b[2], '''')::timestamptz, '9999-01-01'), '0001-01-01') END AS upper,
                c.reltuples::float8 AS estimate
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,
              LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\((.+)\\) TO \\((.+)\\)') AS b
         WHERE i.inhparent = 'runs'::regclass AND NOT i.inhdetachpending
         ORDER BY lower NULLS FIRST",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Partition {
                name: row.try_get("name")?,
                lower: row.try_get("lower")?,
                upper: row.try_get("upper")?,
                estimate: row.try_get("estimate")?,
            })
        })
        .collect()
}

/// The range retention has sealed, if any: (from, to), from `None` for unbounded.
async fn seal(conn: &mut sqlx::PgConnection) -> Result<Option<(Option<DateTime<Utc>>, DateTime<Utc>)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT CASE WHEN sealed_from = '-infinity' THEN NULL
                     ELSE greatest(least(sealed_from, '9999-01-01'), '0001-01-01') END AS sealed_from,
                greatest(least(sealed_to, '9999-01-01'), '0001-01-01') AS sealed_to
         FROM fence WHERE id = 1",
    )
    .fetch_one(conn)
    .await?;
    let to: Option<DateTime<Utc>> = row.try_get("sealed_to")?;
    Ok(to.map(|to| (row.try_get("sealed_from").ok().flatten(), to)))
}

/// Seal `partition`'s range (claims there refused from the commit on), or lift the seal.
async fn set_seal(conn: &mut sqlx::PgConnection, partition: Option<&Partition>) -> Result<(), sqlx::Error> {
    let (from, to, sealed) = match partition {
        Some(partition) => (partition.lower, partition.upper, true),
        None => (None, None, false),
    };
    sqlx::query(
        "UPDATE fence SET sealed_from = CASE WHEN $3 THEN COALESCE($1, '-infinity') END,
                          sealed_to = CASE WHEN $3 THEN COALESCE($2, 'infinity') END
         WHERE id = 1",
    )
    .bind(from)
    .bind(to)
    .bind(sealed)
    .execute(conn)
    .await?;
    Ok(())
}

/// `status` takes one of eight values, whatever a partition's statistics saw: a day on which
/// every run succeeded must not make a generic plan take a filter on it for free (and page a
/// job's failures off the (job, slot) index, reading every row of the day).
fn status_statistics(table: &str) -> String {
    format!("ALTER TABLE {table} ALTER COLUMN status SET (n_distinct = 8)")
}

async fn execute(conn: &mut sqlx::PgConnection, statement: String) -> Result<u64, sqlx::Error> {
    Ok(sqlx::raw_sql(AssertSqlSafe(statement)).execute(conn).await?.rows_affected())
}

/// Create and attach a partition for each of `days` that no partition covers (its week, or the
/// part of it no partition holds), outside a sealed range. Each is created empty and attached
/// (SHARE UPDATE EXCLUSIVE on `runs`: claims go on), the lock asked for `lock_timeout` at most.
/// Returns how many were created.
pub(super) async fn ensure_days(
    conn: &mut sqlx::PgConnection,
    days: &[DateTime<Utc>],
    lock_timeout: &str,
) -> Result<usize, sqlx::Error> {
    if days.is_empty() || !partitioned(conn).await? {
        return Ok(0);
    }
    // One transaction, its lock and timeout its own: a caller cancelled half-way leaves nothing
    // held on a connection that goes back to the pool.
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    execute(&mut tx, format!("SET LOCAL lock_timeout = '{lock_timeout}'")).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CREATE_LOCK).execute(&mut *tx).await?;
    let mut existing = partitions(&mut tx).await?;
    let sealed = seal(&mut tx).await?;
    let mut created = 0;
    let mut wanted: Vec<DateTime<Utc>> = days.to_vec();
    wanted.sort();
    for slot in wanted {
        if existing.iter().any(|p| p.lower.is_none_or(|l| l <= slot) && p.upper.is_none_or(|u| u > slot)) {
            continue;
        }
        // Its week, clipped to the partitions on either side (the first after the legacy
        // partition starts at its cut-over).
        let mut day = week_of(slot);
        let mut end = day + Duration::days(WIDTH_DAYS);
        for p in &existing {
            if let Some(upper) = p.upper.filter(|upper| *upper <= slot) {
                day = day.max(upper);
            }
            if let Some(lower) = p.lower.filter(|lower| *lower > slot) {
                end = end.min(lower);
            }
        }
        let in_seal = sealed.is_some_and(|(from, to)| from.is_none_or(|f| f < end) && to > day);
        if in_seal {
            continue;
        }
        let name = base_name(Some(day));
        execute(
            &mut tx,
            format!("CREATE TABLE {name} (LIKE runs INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)"),
        )
        .await?;
        execute(&mut tx, status_statistics(&name)).await?;
        let partition = Partition { name: name.clone(), lower: Some(day), upper: Some(end), estimate: 0.0 };
        execute(&mut tx, format!("ALTER TABLE runs ATTACH PARTITION {name} {}", partition.bound())).await?;
        tracing::info!(partition = %name, "ledger partition created");
        existing.push(partition);
        created += 1;
    }
    tx.commit().await?;
    Ok(created)
}

/// A connection of its own for the ledger's upkeep, without the pool's statement timeout (a
/// rewrite copies what a partition keeps); closed by its caller.
async fn upkeep_connection(pool: &PgPool) -> Result<sqlx::PgConnection, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::raw_sql("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0").execute(&mut conn).await?;
    Ok(conn)
}

/// Create the partitions that hold yesterday to `DAYS_AHEAD` days ahead, where missing.
pub(super) async fn keep_ahead(pool: &PgPool, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
    let days: Vec<DateTime<Utc>> = (-1..=DAYS_AHEAD).map(|d| day_of(now) + Duration::days(d)).collect();
    let mut conn = upkeep_connection(pool).await?;
    let result = ensure_days(&mut conn, &days, "1s").await;
    let _ = sqlx::Connection::close(conn).await;
    result
}

/// Give back the partitions retention has passed: dropped whole when nothing in them is kept,
/// rewritten with what is kept when at least half of them goes. Only a partition whose every
/// slot is more than `SETTLED` before `now` is touched: claims of the present never wait for
/// one (the legacy partition's turn comes once its cut-over has passed). Returns the rows
/// removed.
pub(super) async fn retire(pool: &PgPool, retention: &Retention, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let mut conn = upkeep_connection(pool).await?;
    let result = retire_on(&mut conn, retention, now).await;
    let _ = sqlx::Connection::close(conn).await;
    result
}

/// How long after a partition's last slot it may be rewritten: no scheduled claim goes that far
/// back but a catch-up, a backfill or a take-over, which the seal delays.
const SETTLED: Duration = Duration::hours(1);

async fn retire_on(
    conn: &mut sqlx::PgConnection,
    retention: &Retention,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    if !partitioned(conn).await? {
        return Ok(0);
    }
    if !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(RETIRE_LOCK).fetch_one(&mut *conn).await?
    {
        return Ok(0);
    }
    recover(conn).await?;
    let newest_limit =
        retention.per_job.iter().map(|(_, before)| *before).fold(retention.default_before, |a, b| a.max(b));
    let mut removed = 0;
    for partition in partitions(conn).await? {
        if partition.lower.is_some_and(|lower| lower >= newest_limit) {
            break;
        }
        if partition.upper.is_none_or(|upper| upper > now - SETTLED) {
            continue;
        }
        let doomed = count_doomed(conn, &partition.name, retention).await?;
        if doomed == 0 {
            // An empty partition past every limit (a week nothing fired, the legacy partition of
            // a ledger that was empty) goes too, unless it is one `keep_ahead` keeps; a claim that
            // needs its week again makes it.
            let past = partition
                .upper
                .is_some_and(|upper| upper <= retention.default_before && upper < day_of(now) - Duration::days(1));
            if !past {
                continue;
            }
            let empty: bool =
                sqlx::query_scalar(AssertSqlSafe(format!("SELECT NOT EXISTS (SELECT 1 FROM {})", partition.name)))
                    .fetch_one(&mut *conn)
                    .await?;
            if empty {
                rewrite(conn, &partition, retention).await?;
            }
            continue;
        }
        if (doomed as f64) * 2.0 < partition.estimate {
            continue;
        }
        let total: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {}", partition.name)))
            .fetch_one(&mut *conn)
            .await?;
        if doomed * 2 < total {
            continue;
        }
        removed += rewrite(conn, &partition, retention).await?;
    }
    Ok(removed)
}

/// The statement's common part: the jobs `table` holds (one index probe each) with their limit
/// and newest slot in the whole ledger. A row is removed when its slot is before both, its
/// claim before the limit and it is not running: exactly `prune_runs`'s rule.
fn limits(table: &str) -> String {
    format!(
        "WITH RECURSIVE jobs(job) AS (
             SELECT min(job) FROM {table}
             UNION ALL
             SELECT (SELECT min(r.job) FROM {table} r WHERE r.job > jobs.job) FROM jobs WHERE jobs.job IS NOT NULL
         ), limits AS (
             SELECT jobs.job, COALESCE(p.before, $1) AS before,
                    (SELECT max(n.slot) FROM runs n WHERE n.job = jobs.job) AS newest
             FROM jobs LEFT JOIN unnest($2::text[], $3::timestamptz[]) AS p(job, before) ON p.job = jobs.job
             WHERE jobs.job IS NOT NULL
         )"
    )
}

const DOOMED: &str = "r.slot < LEAST(l.before, l.newest) AND r.claimed_at < l.before AND r.status <> 'running'";

fn bind_retention<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    retention: &'q Retention,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(retention.default_before)
        .bind(retention.per_job.iter().map(|(job, _)| job.as_str()).collect::<Vec<_>>())
        .bind(retention.per_job.iter().map(|(_, before)| *before).collect::<Vec<_>>())
}

/// Rows of `table` retention removes, counted job by job off the (job, slot) index.
async fn count_doomed(conn: &mut sqlx::PgConnection, table: &str, retention: &Retention) -> Result<i64, sqlx::Error> {
    let statement = format!(
        "{} SELECT COALESCE(sum(d.n), 0)::bigint FROM limits l
            CROSS JOIN LATERAL (SELECT count(*) AS n FROM {table} r WHERE r.job = l.job AND {DOOMED}) d",
        limits(table)
    );
    let query = bind_retention(sqlx::query(AssertSqlSafe(statement)), retention);
    query.fetch_one(conn).await?.try_get(0)
}

/// Replace `partition` with what it keeps, or drop it when it keeps nothing. Returns the rows
/// removed (0 when it was left as it is: a run in it is still going).
async fn rewrite(
    conn: &mut sqlx::PgConnection,
    partition: &Partition,
    retention: &Retention,
) -> Result<u64, sqlx::Error> {
    let name = &partition.name;
    // Closed to claims from here: in-flight ones commit first (they hold the fence row), later
    // ones are refused in this range and retried once it is open again.
    set_seal(conn, Some(partition)).await?;
    let going: bool =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT EXISTS (SELECT 1 FROM {name} WHERE status = 'running')")))
            .fetch_one(&mut *conn)
            .await?;
    if going {
        set_seal(conn, None).await?;
        return Ok(0);
    }
    let total: i64 =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {name}"))).fetch_one(&mut *conn).await?;
    let next = partition.next_name();
    execute(conn, format!("DROP TABLE IF EXISTS {next}")).await?;
    execute(
        conn,
        format!("CREATE TABLE {next} (LIKE runs INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)"),
    )
    .await?;
    execute(conn, status_statistics(&next)).await?;
    let copy = format!(
        "{} INSERT INTO {next} SELECT r.* FROM {name} r JOIN limits l ON l.job = r.job WHERE NOT ({DOOMED})",
        limits(name)
    );
    let kept =
        bind_retention(sqlx::query(AssertSqlSafe(copy.clone())), retention).execute(&mut *conn).await?.rows_affected();
    if kept == 0 {
        execute(conn, format!("DROP TABLE {next}")).await?;
        detach(conn, name).await?;
        execute(conn, format!("DROP TABLE {name}")).await?;
        set_seal(conn, None).await?;
        tracing::info!(partition = %name, rows = total, "ledger partition dropped: retention passed every row");
        return Ok(total as u64);
    }
    execute(conn, format!("ALTER TABLE {next} ADD CONSTRAINT {next}_bound {}", partition.check())).await?;
    build_indexes(conn, &next).await?;
    execute(conn, format!("ANALYZE {next}")).await?;
    detach(conn, name).await?;
    // The old table is frozen now: anything a writer that ignores the seal (a replica of the
    // previous release) put there since the copy is copied too.
    let delta = format!(
        "{} INSERT INTO {next} SELECT r.* FROM {name} r JOIN limits l ON l.job = r.job
            WHERE NOT ({DOOMED}) AND NOT EXISTS (SELECT 1 FROM {next} k WHERE k.id = r.id)
            ON CONFLICT DO NOTHING",
        limits(name)
    );
    bind_retention(sqlx::query(AssertSqlSafe(delta)), retention).execute(&mut *conn).await?;
    execute(conn, format!("ALTER TABLE runs ATTACH PARTITION {next} {}", partition.bound())).await?;
    execute(conn, format!("DROP TABLE {name}")).await?;
    set_seal(conn, None).await?;
    let removed = (total as u64).saturating_sub(kept);
    tracing::info!(partition = %name, into = %next, kept, removed, "ledger partition rewritten with what retention keeps");
    Ok(removed)
}

/// Detach `name` without a lock that holds up claims (`CONCURRENTLY`: it waits for the
/// transactions that may still see it instead), finishing a detach an earlier pass left pending.
async fn detach(conn: &mut sqlx::PgConnection, name: &str) -> Result<(), sqlx::Error> {
    execute(conn, format!("ALTER TABLE runs DETACH PARTITION {name} CONCURRENTLY")).await?;
    Ok(())
}

/// On `table`, the indexes of `runs` (each partitioned index has its twin on every partition),
/// built before it is attached so that attaching builds none.
async fn build_indexes(conn: &mut sqlx::PgConnection, table: &str) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT i.relname::text AS name, x.indisunique AS is_unique,
                split_part(pg_get_indexdef(x.indexrelid), ' USING ', 2) AS method,
                pg_get_constraintdef(c.oid) AS constraint_def
         FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
         LEFT JOIN pg_constraint c ON c.conindid = x.indexrelid AND c.conrelid = x.indrelid
         WHERE x.indrelid = 'runs'::regclass ORDER BY i.relname",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (n, row) in rows.iter().enumerate() {
        let constraint: Option<String> = row.try_get("constraint_def")?;
        let statement = match constraint {
            Some(definition) => format!("ALTER TABLE {table} ADD CONSTRAINT {table}_k{n} {definition}"),
            None => {
                let unique = if row.try_get::<bool, _>("is_unique")? { "UNIQUE " } else { "" };
                let method: String = row.try_get("method")?;
                format!("CREATE {unique}INDEX {table}_i{n} ON {table} USING {method}")
            }
        };
        execute(conn, statement).await?;
    }
    Ok(())
}

/// Finish what an interrupted pass left: detaches pending are finalized; a sealed range is left
/// covered by one attached partition (the old one attached again when the new one was not), the
/// other tables of that range dropped, and the seal lifted.
async fn recover(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let pending: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'runs'::regclass AND i.inhdetachpending",
    )
    .fetch_all(&mut *conn)
    .await?;
    for name in pending {
        tracing::info!(partition = %name, "finishing the detach an interrupted retention pass began");
        execute(conn, format!("ALTER TABLE runs DETACH PARTITION {name} FINALIZE")).await?;
    }
    let Some((from, to)) = seal(conn).await? else {
        return Ok(());
    };
    let base = base_name(from);
    let attached = partitions(conn).await?;
    let covering = attached.iter().find(|p| p.lower == from && p.upper == Some(to));
    // Tables of this range that are not partitions: the old one detached, or a copy unfinished.
    let mut orphans: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         WHERE c.relkind = 'r' AND NOT c.relispartition AND c.relnamespace = current_schema()::regnamespace
           AND (c.relname = $1 OR c.relname ~ ('^' || $1 || '_[0-9]+$'))",
    )
    .bind(&base)
    .fetch_all(&mut *conn)
    .await?;
    let generation =
        |name: &str| name.strip_prefix(&format!("{base}_")).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
    orphans.sort_by_key(|name| generation(name));
    if covering.is_none() && !orphans.is_empty() {
        // The old table is the oldest generation: attach it again as it was.
        let old = orphans.remove(0);
        let partition = Partition { name: old.clone(), lower: from, upper: Some(to), estimate: 0.0 };
        for other in &orphans {
            execute(conn, format!("DROP TABLE IF EXISTS {other}")).await?;
        }
        orphans.clear();
        execute(conn, format!("ALTER TABLE {old} DROP CONSTRAINT IF EXISTS {old}_bound")).await?;
        execute(conn, format!("ALTER TABLE {old} ADD CONSTRAINT {old}_bound {}", partition.check())).await?;
        execute(conn, format!("ALTER TABLE runs ATTACH PARTITION {old} {}", partition.bound())).await?;
        tracing::info!(partition = %old, "attached again the partition an interrupted rewrite had detached");
    }
    for orphan in orphans {
        tracing::info!(table = %orphan, "dropping what an interrupted rewrite left");
        execute(conn, format!("DROP TABLE IF EXISTS {orphan}")).await?;
    }
    set_seal(conn, None).await?;
    Ok(())
}
