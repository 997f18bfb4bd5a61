//! The run ledger in PostgreSQL. Owns every SQL statement in tenure; nothing else talks to the
//! database.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// Connect with the timeouts a fenced ledger needs: a paused replica holding a row lock must not
/// block the next leader for longer than these.
pub async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = database_url.parse().context("parse database url")?;
    let options = options
        .options([("statement_timeout", "5s"), ("idle_in_transaction_session_timeout", "5s")]);
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("connect to postgres")
}

/// Apply the migrations in `migrations/`.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations").run(pool).await.context("apply migrations")
}
