//! The PostgreSQL side of `Access`: API tokens, shared keys and the audit trail, on the read
//! pool; instants of tokens and entries by the database's clock.

use async_trait::async_trait;
use sqlx::postgres::PgConnection;

use super::Postgres;
use crate::store::access::{
    Access, AuditEntry, AuditFilter, AuditRecord, CreateTokenError, NewToken, TokenCheck, TokenRecord, audit_columns,
    audit_entry, token_columns, token_record,
};

/// Append `record` (at the database's clock) on `connection`, in the caller's transaction.
pub(super) async fn insert_audit(connection: &mut PgConnection, record: &AuditRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit (who, role, teams, via, source, request_id, action, job, job_team, target, outcome, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&record.who)
    .bind(&record.role)
    .bind(&record.teams)
    .bind(&record.via)
    .bind(&record.source)
    .bind(&record.request_id)
    .bind(&record.action)
    .bind(&record.job)
    .bind(&record.job_team)
    .bind(&record.target)
    .bind(record.outcome.as_str())
    .bind(&record.detail)
    .execute(connection)
    .await
    .map(|_| ())
}

#[async_trait]
impl Access for Postgres {
    async fn record_audit(&self, record: &AuditRecord) -> Result<(), sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        insert_audit(&mut connection, record).await
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, sqlx::Error> {
        sqlx::query(concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit
             WHERE ($1::text IS NULL OR who = $1) AND ($2::text IS NULL OR job = $2)
               AND ($3::text IS NULL OR action = $3) AND ($4::text IS NULL OR outcome = $4)
               AND ($5::timestamptz IS NULL OR at >= $5) AND ($6::timestamptz IS NULL OR at < $6)
               AND ($7::bigint IS NULL OR id < $7)
             ORDER BY id DESC LIMIT $8"
        ))
        .bind(&filter.who)
        .bind(&filter.job)
        .bind(&filter.action)
        .bind(filter.outcome.map(|outcome| outcome.as_str()))
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.before_id)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(audit_entry)
        .collect()
    }

    async fn create_token(&self, token: &NewToken<'_>, audit: &AuditRecord) -> Result<TokenRecord, CreateTokenError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(concat!(
            "INSERT INTO api_tokens (id, name, role, teams, salt, hash, created_by, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING RETURNING ",
            token_columns!()
        ))
        .bind(token.id)
        .bind(token.name)
        .bind(token.role)
        .bind(token.teams)
        .bind(token.salt)
        .bind(token.hash)
        .bind(token.created_by)
        .bind(token.expires_at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Err(CreateTokenError::NameTaken(token.name.to_owned())) };
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(token_record(&row)?)
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, sqlx::Error> {
        sqlx::query(concat!("SELECT ", token_columns!(), " FROM api_tokens ORDER BY created_at DESC, id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(token_record)
            .collect()
    }

    async fn token(&self, id: &str) -> Result<Option<TokenCheck>, sqlx::Error> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            ", salt, hash,
                    (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())) AS valid
             FROM api_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        use sqlx::Row;
        Ok(Some(TokenCheck {
            record: token_record(&row)?,
            salt: row.try_get("salt")?,
            hash: row.try_get("hash")?,
            valid: row.try_get("valid")?,
        }))
    }

    async fn revoke_token(&self, id_or_name: &str, audit: &AuditRecord) -> Result<Option<TokenRecord>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let revoked = sqlx::query(concat!(
            "UPDATE api_tokens SET revoked_at = now(), revoked_by = $2
             WHERE (id = $1 OR name = $1) AND revoked_at IS NULL RETURNING ",
            token_columns!()
        ))
        .bind(id_or_name)
        .bind(&audit.who)
        .fetch_optional(&mut *tx)
        .await?;
        let record = match revoked {
            Some(row) => {
                let record = token_record(&row)?;
                let audit = AuditRecord { target: Some(record.id.clone()), ..audit.clone() };
                insert_audit(&mut tx, &audit).await?;
                record
            }
            None => {
                let row =
                    sqlx::query(concat!("SELECT ", token_columns!(), " FROM api_tokens WHERE id = $1 OR name = $1"))
                        .bind(id_or_name)
                        .fetch_optional(&mut *tx)
                        .await?;
                match row {
                    Some(row) => token_record(&row)?,
                    None => return Ok(None),
                }
            }
        };
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn web_key(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, sqlx::Error> {
        sqlx::query("INSERT INTO web_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(fresh)
            .execute(&self.pool)
            .await?;
        sqlx::query_scalar("SELECT key FROM web_keys WHERE name = $1").bind(name).fetch_one(&self.pool).await
    }
}
