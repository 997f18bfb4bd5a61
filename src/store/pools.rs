//! Connections to PostgreSQL: the firing pool and the read pool a replica keeps apart, the
//! start-up check of the URL's settings, and the migrations (on a connection of their own).

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The firing pool: claims, starts, outcomes, the fence and terms, cursors, heartbeats, reaping,
/// pruning and the controls the leader reads. The web never gets it (it reads on
/// `connect_reads`), so no reader can hold a connection a claim needs. Timeouts a fenced ledger
/// needs: a paused replica holding a lock must not block the next leader for longer than these.
/// Connects lazily, so a replica starts (and serves its health endpoints) while PostgreSQL is
/// still down.
pub async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = database_url.parse().context("parse database url")?;
    let options = options.options([("statement_timeout", "5s"), ("idle_in_transaction_session_timeout", "5s")]);
    Ok(PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(3)).connect_lazy_with(options))
}

/// Connections the read pool holds at most: one per dashboard or API handler running at once,
/// and one for readiness and operator controls.
pub const READ_CONNECTIONS: u32 = crate::http::MAX_CONCURRENT_READS as u32 + 1;

/// The read pool, for the dashboard and the API: a few connections with a shorter statement
/// timeout, so a slow read gives up (503) rather than waiting, and readers wait for each other,
/// never for the firing path's connections.
pub async fn connect_reads(database_url: &str) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = database_url.parse().context("parse database url")?;
    let options = options.options([("statement_timeout", "2s"), ("idle_in_transaction_session_timeout", "2s")]);
    Ok(PgPoolOptions::new()
        .max_connections(READ_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options))
}

/// Why PostgreSQL could not be used at start: settings that waiting will not fix (a certificate
/// refused, a wrong password, no `pg_hba.conf` rule for this connection) are told apart from a
/// server that is not up yet. `server` is the URL with its password masked.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseConnectError {
    #[error("PostgreSQL at {server}: {detail}")]
    Refused { server: String, detail: String },
    #[error("PostgreSQL at {server} is not reachable yet: {detail}")]
    Unreachable { server: String, detail: String },
}

/// The one statement that tells a writable primary from a standby (in recovery) or a server
/// whose sessions are read-only; the clock guard asks it with every clock reading.
pub(super) const PRIMARY_QUERY: &str =
    "SELECT pg_is_in_recovery() AS in_recovery, current_setting('transaction_read_only') = 'on' AS read_only";

/// Why this database cannot hold a ledger that is written, or `None` for a writable primary.
pub(super) fn not_primary(in_recovery: bool, read_only: bool) -> Option<&'static str> {
    if in_recovery {
        Some(
            "a standby (in recovery): tenure writes its ledger only on the primary; give --database-url an \
             address that follows the primary (a DNS name, a virtual IP or a pooler)",
        )
    } else if read_only {
        Some("read-only (transaction_read_only is on): tenure writes its ledger only on a writable primary")
    } else {
        None
    }
}

async fn primary_or_why_not(connection: &mut sqlx::PgConnection) -> Result<Option<&'static str>, sqlx::Error> {
    use sqlx::Row;
    let row = sqlx::query(PRIMARY_QUERY).fetch_one(&mut *connection).await?;
    Ok(not_primary(row.try_get("in_recovery")?, row.try_get("read_only")?))
}

/// Open one connection as the pool would (TLS per `sslmode`, `sslrootcert`, `sslcert`,
/// `sslkey` in the URL, like libpq) and close it, to learn at start whether the settings work
/// and whether the server is a writable primary (a standby or a read-only server is refused).
pub async fn check_connection(database_url: &str) -> Result<(), DatabaseConnectError> {
    use sqlx::Connection;
    let server = crate::secret::mask_url(database_url);
    let refused = |detail: String| DatabaseConnectError::Refused { server: server.clone(), detail };
    let options: PgConnectOptions = database_url.parse().map_err(|error: sqlx::Error| {
        refused(format!("invalid database url: {}", crate::telemetry::one_line(&error)))
    })?;
    let attempt = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect_with(&options)).await;
    let error = match attempt {
        Ok(Ok(mut connection)) => {
            let role = primary_or_why_not(&mut connection).await;
            let _ = connection.close().await;
            return match role {
                Ok(None) => Ok(()),
                Ok(Some(why)) => Err(refused(why.to_owned())),
                Err(error) => {
                    Err(DatabaseConnectError::Unreachable { server, detail: crate::telemetry::one_line(&error) })
                }
            };
        }
        Ok(Err(error)) => error,
        Err(_) => {
            return Err(DatabaseConnectError::Unreachable { server, detail: "no answer within 5s".into() });
        }
    };
    let detail = crate::telemetry::one_line(&error);
    let lasting = match &error {
        sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => true,
        // Class 28: invalid authorization (wrong password, no pg_hba.conf entry); 3D000: no
        // such database.
        sqlx::Error::Database(database) => {
            database.code().is_some_and(|code| code.starts_with("28") || code == "3D000")
        }
        _ => detail.to_ascii_lowercase().contains("certificate"),
    };
    if lasting { Err(refused(detail)) } else { Err(DatabaseConnectError::Unreachable { server, detail }) }
}

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// An older binary against a schema a newer release migrated: it must not guess.
    #[error(
        "the database schema is at version {database}, newer than this binary knows (its newest is version \
         {known}): run a tenure release that knows version {database}"
    )]
    NewerSchema { known: i64, database: i64 },
    #[error("apply migrations: {0}")]
    Failed(#[from] sqlx::migrate::MigrateError),
    #[error("open a connection for migrations: {0}")]
    Connect(#[from] sqlx::Error),
}

impl MigrateError {
    /// Whether trying again later may succeed: the database is unreachable, starting, busy or
    /// held a lock too long. A newer schema, a changed or half-applied migration, a refused login
    /// or a missing database stay as they are until somebody acts.
    pub fn is_transient(&self) -> bool {
        match self {
            MigrateError::NewerSchema { .. } => false,
            MigrateError::Connect(error)
            | MigrateError::Failed(sqlx::migrate::MigrateError::Execute(error))
            | MigrateError::Failed(sqlx::migrate::MigrateError::ExecuteMigration(error, _)) => transient(error),
            MigrateError::Failed(_) => false,
        }
    }
}

/// Connection trouble, a server starting or shutting down, too many connections, a lock or
/// statement timeout, a serialization failure or deadlock.
pub fn transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            ["08", "40", "53", "57P", "57014", "55P03"].iter().any(|prefix| code.starts_with(prefix))
        }),
        _ => false,
    }
}

/// A connection of its own for migrations, out of `pool`'s accounting and without its timeouts:
/// an index build on a large ledger may take minutes. Waiting for a table lock a running replica
/// is using gives up after 5 s and is retried: a DDL statement queued behind a lock would hold up
/// every claim queued behind it (`migrate` lifts this for concurrent index builds). Closing it (or dropping it, on any error
/// or cancellation) ends the session, and with it the migrator's advisory lock.
pub async fn migration_connection(pool: &PgPool) -> Result<sqlx::PgConnection, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::raw_sql(
        "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0; \
         SET lock_timeout = '5s'",
    )
    .execute(&mut conn)
    .await?;
    Ok(conn)
}

/// Apply the migrations in `migrations/postgres/` on a dedicated connection (see
/// `migration_connection`), one replica at a time. A database that has a migration this binary
/// does not know is `NewerSchema`.
///
/// The replicas take turns on an advisory lock of tenure's own, tried every 500 ms rather than
/// waited for: a session blocked in `pg_advisory_lock` holds a snapshot, which a concurrent index
/// build waits out, while the builder holds the lock: a deadlock. Holding it, the migrator drops
/// the invalid indexes an interrupted concurrent build left behind (`-- no-transaction`
/// migrations: `CREATE INDEX CONCURRENTLY`, which holds up no claim), so that the build starts
/// afresh: an interrupted migration resumes where it stopped. Those migrations wait for locks
/// as long as they need (they queue no claim behind them); the others give up after 5 s.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    let migrator = sqlx::migrate!("./migrations/postgres");
    let mut conn = migration_connection(pool).await?;
    let result = migrate_on(&migrator, &mut conn).await;
    let result = match result {
        Ok(()) => Ok(()),
        Err(MigrateError::Failed(sqlx::migrate::MigrateError::VersionMissing(unknown))) => {
            let known = migrator.iter().map(|migration| migration.version).max().unwrap_or(0);
            let newest: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
                .fetch_one(&mut conn)
                .await
                .unwrap_or(None);
            Err(MigrateError::NewerSchema { known, database: newest.unwrap_or(unknown).max(unknown) })
        }
        Err(error) => Err(error),
    };
    // Ends the session: the advisory lock goes with it, whatever happened above.
    if let Err(error) = sqlx::Connection::close(conn).await {
        tracing::debug!(%error, "closing the migration connection failed; the server ends it");
    }
    result
}

/// tenure's migration lock (`pg_try_advisory_lock`), apart from sqlx's own.
const MIGRATION_LOCK: i64 = 0x7465_6e75_7265_6d67; // "tenuremg"

async fn migrate_on(migrator: &sqlx::migrate::Migrator, conn: &mut sqlx::PgConnection) -> Result<(), MigrateError> {
    while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .fetch_one(&mut *conn)
        .await?
    {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(i.relname) FROM pg_index x
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_namespace ns ON ns.oid = i.relnamespace AND ns.nspname = current_schema()
         WHERE NOT x.indisvalid",
    )
    .fetch_all(&mut *conn)
    .await?;
    for index in invalid {
        tracing::info!(index, "dropping the index an interrupted migration left unfinished");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP INDEX CONCURRENTLY IF EXISTS {index}")))
            .execute(&mut *conn)
            .await?;
    }
    let last = crate::testing::migrate_to().unwrap_or(i64::MAX);
    let steps: Vec<(i64, bool)> = migrator
        .iter()
        .filter(|migration| migration.version <= last)
        .map(|migration| (migration.version, migration.no_tx))
        .collect();
    for (version, no_tx) in steps {
        let lock_timeout = if no_tx { "SET lock_timeout = 0" } else { "SET lock_timeout = '5s'" };
        sqlx::raw_sql(lock_timeout).execute(&mut *conn).await?;
        // `run_to` on a connection: its `Acquire` bound makes this future not `Send`.
        migrator.run_direct(Some(version), &mut *conn, false).await?;
    }
    Ok(())
}
