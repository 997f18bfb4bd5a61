//! Who may do what, and who did what, in the ledger: named API tokens (only a salted hash of
//! each secret), the keys the replicas share (`web_key`), and the audit trail. `Access` is a
//! supertrait of `LedgerReads`: the web records and reads these on the read pool. The changes
//! themselves (`set_control`, `request_trigger`, `request_backfill`, tokens) write their audit
//! record in their own transaction, so a change is never without its record.
//!
//! Invariant: tenure has no statement that changes or deletes an audit row but the leader's
//! pruning by age (`Ledger::prune_audit`); the database refuses an `UPDATE` of one (a trigger).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::common::LedgerRow;

/// Whether an audited attempt was carried out or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    Done,
    Refused,
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Done => "done",
            AuditOutcome::Refused => "refused",
        }
    }

    pub fn parse(text: &str) -> Option<AuditOutcome> {
        match text {
            "done" => Some(AuditOutcome::Done),
            "refused" => Some(AuditOutcome::Refused),
            _ => None,
        }
    }
}

/// One attempt, as recorded: who (as the web decided: `http::identity`), with what role and
/// teams, authenticated how, from where, under which request id; what (`action`, on `job` of
/// `job_team`, or `target`: a token's id, a run's), and how it came out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub who: String,
    pub role: Option<String>,
    /// The caller's teams, comma-separated; empty: every team.
    pub teams: String,
    pub via: String,
    pub source: String,
    pub request_id: String,
    pub action: String,
    pub job: Option<String>,
    pub job_team: Option<String>,
    pub target: Option<String>,
    pub outcome: AuditOutcome,
    pub detail: String,
}

impl AuditRecord {
    /// A change done by `who` outside any request (tests, tools): no role, source or request.
    pub fn by(who: &str, action: &str) -> AuditRecord {
        AuditRecord {
            who: who.to_owned(),
            role: None,
            teams: String::new(),
            via: "ledger".to_owned(),
            source: String::new(),
            request_id: String::new(),
            action: action.to_owned(),
            job: None,
            job_team: None,
            target: None,
            outcome: AuditOutcome::Done,
            detail: String::new(),
        }
    }
}

/// A recorded attempt with its id (the paging cursor) and instant (the database's clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// Which entries to read: newest first, older than `before_id` (the cursor), at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub who: Option<String>,
    pub job: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<AuditOutcome>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// A token to record: the secret only as `hash` = SHA-256(`salt` || secret).
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub role: &'a str,
    /// Comma-separated; empty: every team.
    pub teams: &'a str,
    pub salt: &'a [u8],
    pub hash: &'a [u8],
    pub created_by: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token as listed: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: String,
    pub teams: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

/// A token looked up by id to check a presented secret: its salt and hash, and whether it is
/// valid now by the database's clock (not revoked, not expired).
#[derive(Debug, Clone)]
pub struct TokenCheck {
    pub record: TokenRecord,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
    pub valid: bool,
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateTokenError {
    #[error("a token named `{0}` exists already (names stay taken after a revocation)")]
    NameTaken(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Tokens, shared keys and the audit trail (see the module's comment).
#[async_trait]
pub trait Access: Send + Sync {
    /// Record an attempt that changed nothing (a refusal).
    async fn record_audit(&self, record: &AuditRecord) -> Result<(), sqlx::Error>;

    /// Entries matching `filter`, newest first.
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, sqlx::Error>;

    /// Record a token and its audit record in one transaction.
    async fn create_token(&self, token: &NewToken<'_>, audit: &AuditRecord) -> Result<TokenRecord, CreateTokenError>;

    /// Every token, newest first.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, sqlx::Error>;

    /// The token with this id, to check a presented secret against.
    async fn token(&self, id: &str) -> Result<Option<TokenCheck>, sqlx::Error>;

    /// Revoke the token with this id or name (now, by the database's clock) and record `audit`
    /// with it; `None` when there is no such token. Revoking a revoked token changes nothing and
    /// records nothing.
    async fn revoke_token(&self, id_or_name: &str, audit: &AuditRecord) -> Result<Option<TokenRecord>, sqlx::Error>;

    /// The shared key named `name`: the one recorded, or `fresh`, recorded now when none was.
    async fn web_key(&self, name: &str, fresh: &[u8]) -> Result<Vec<u8>, sqlx::Error>;
}

/// The columns `token_record` reads, for `concat!` into static SQL.
macro_rules! token_columns {
    () => {
        "id, name, role, teams, created_at, created_by, expires_at, revoked_at, revoked_by"
    };
}
pub(super) use token_columns;

/// The columns `audit_entry` reads, for `concat!` into static SQL.
macro_rules! audit_columns {
    () => {
        "id, at, who, role, teams, via, source, request_id, action, job, job_team, target, outcome, detail"
    };
}
pub(super) use audit_columns;

pub(super) fn teams_of(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|team| !team.is_empty()).map(str::to_owned).collect()
}

pub(super) fn token_record(row: &impl LedgerRow) -> Result<TokenRecord, sqlx::Error> {
    Ok(TokenRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        role: row.text("role")?,
        teams: teams_of(&row.text("teams")?),
        created_at: row.instant("created_at")?,
        created_by: row.text("created_by")?,
        expires_at: row.optional_instant("expires_at")?,
        revoked_at: row.optional_instant("revoked_at")?,
        revoked_by: row.optional_text("revoked_by")?,
    })
}

pub(super) fn audit_entry(row: &impl LedgerRow) -> Result<AuditEntry, sqlx::Error> {
    let outcome = row.text("outcome")?;
    Ok(AuditEntry {
        id: row.int("id")?,
        at: row.instant("at")?,
        record: AuditRecord {
            who: row.text("who")?,
            role: row.optional_text("role")?,
            teams: row.text("teams")?,
            via: row.text("via")?,
            source: row.text("source")?,
            request_id: row.text("request_id")?,
            action: row.text("action")?,
            job: row.optional_text("job")?,
            job_team: row.optional_text("job_team")?,
            target: row.optional_text("target")?,
            outcome: AuditOutcome::parse(&outcome).ok_or_else(|| sqlx::Error::ColumnDecode {
                index: "outcome".to_owned(),
                source: format!("unknown audit outcome {outcome:?}").into(),
            })?,
            detail: row.text("detail")?,
        },
    })
}
