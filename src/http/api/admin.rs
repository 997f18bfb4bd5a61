//! The admins' API: `/api/tokens` (API tokens created, listed and revoked) and `/api/audit`
//! (the audit trail, filtered and paged), each change audited in the transaction that makes it.
//! The admin pages (`pages/admin.rs`) call the same functions.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/tokens", get(tokens).post(create_token))
        .route("/api/tokens/{id}/revoke", post(revoke_token))
        .route("/api/audit", get(audit))
}

/// `POST /api/tokens`: `{"name": "...", "role": "operator", "teams": ["payments"], "expires_in": "30d"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::http) struct TokenBody {
    pub name: String,
    pub role: String,
    #[serde(default)]
    pub teams: Vec<String>,
    /// A duration such as `30d` or `12h`; absent: never expires.
    pub expires_in: Option<String>,
}

/// A created token: the only time its secret is shown.
#[derive(Debug, Serialize)]
pub(in crate::http) struct CreatedToken {
    #[serde(flatten)]
    pub record: TokenRecord,
    /// The token to send as `Authorization: Bearer`; tenure keeps only a salted hash of it.
    pub token: String,
}

/// The longest token name, in bytes.
const TOKEN_NAME_MAX: usize = 100;

/// Create a named token as `caller` (an admin), audited in the same transaction.
pub(in crate::http) async fn create_named_token(
    state: &AppState,
    caller: &Caller,
    body: TokenBody,
) -> Result<CreatedToken, Problem> {
    state.permit(caller, Action::CreateToken, None).await?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > TOKEN_NAME_MAX || !name.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(Problem::bad_request(format!(
            "`name`: 1 to {TOKEN_NAME_MAX} visible ASCII characters (`!` to `~`, no spaces), e.g. alice@example.com"
        )));
    }
    let role = Role::parse(&body.role).ok_or_else(|| {
        let names: Vec<&str> = Role::NAMES.iter().map(|(name, _)| *name).collect();
        Problem::bad_request(format!("`role`: `{}` is not one of {}", body.role, names.join(", ")))
    })?;
    let mut teams: Vec<String> = body.teams.iter().map(|team| team.trim().to_owned()).collect();
    if let Some(bad) = teams.iter().find(|team| !crate::config::is_tag(team)) {
        return Err(Problem::bad_request(format!(
            "`teams`: `{bad}` is not a team name (letters, digits, `-`, `_` and `.`, at most 64)"
        )));
    }
    teams.sort();
    teams.dedup();
    let expires_at = match body.expires_in.as_deref().map(str::trim).filter(|text| !text.is_empty()) {
        None => None,
        Some(text) => {
            let duration = humantime::parse_duration(text)
                .ok()
                .and_then(|duration| chrono::Duration::from_std(duration).ok())
                .filter(|duration| *duration > chrono::Duration::zero())
                .ok_or_else(|| {
                    Problem::bad_request(format!("`expires_in`: `{text}` is not a duration such as 30d or 12h"))
                })?;
            Some(Utc::now().checked_add_signed(duration).ok_or_else(|| Problem::bad_request("`expires_in`: too far"))?)
        }
    };
    let (id, secret, salt) = identity::new_token().map_err(|error| {
        Problem::internal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "no randomness for a token",
            &error,
        )
    })?;
    let hash = identity::token_hash(&salt, &secret);
    let teams_text = teams.join(",");
    let token = NewToken {
        id: &id,
        name,
        role: role.as_str(),
        teams: &teams_text,
        salt: &salt,
        hash: &hash,
        created_by: &caller.principal.name,
        expires_at,
    };
    let detail = format!(
        "token `{name}`: {}{}{}",
        role.as_str(),
        if teams.is_empty() { String::new() } else { format!(" of {}", teams.join(", ")) },
        expires_at.map_or_else(String::new, |at| format!(", expires {at}"))
    );
    let mut audit = caller.audit(Action::CreateToken, None, AuditOutcome::Done, detail);
    audit.target = Some(id.clone());
    let record = state.store.create_token(&token, &audit).await.map_err(|error| match error {
        CreateTokenError::NameTaken(_) => Problem::new(StatusCode::CONFLICT, "Conflict", error.to_string()),
        CreateTokenError::Database(error) => Problem::database(error),
    })?;
    Ok(CreatedToken { record, token: format!("{}{id}_{secret}", identity::TOKEN_PREFIX) })
}

/// Revoke the token with this id or name as `caller` (an admin), audited.
pub(in crate::http) async fn revoke_named_token(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<TokenRecord, Problem> {
    state.permit(caller, Action::RevokeToken, None).await?;
    let audit = caller.audit(Action::RevokeToken, None, AuditOutcome::Done, format!("revoked `{id}`"));
    state.store.revoke_token(id, &audit).await?.ok_or_else(|| Problem::not_found(format!("no token `{id}`")))
}

async fn tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<TokenRecord>>, Problem> {
    state.permit(&caller, Action::ListTokens, None).await?;
    Ok(Json(state.store.tokens().await?))
}

async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, Problem> {
    let body = body.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let body: TokenBody = serde_json::from_slice(&body).map_err(|error| {
        Problem::bad_request(format!(
            "expected a JSON object such as {{\"name\": \"deploy-bot\", \"role\": \"operator\", \"teams\": [\"payments\"], \
             \"expires_in\": \"30d\"}}: {error}"
        ))
    })?;
    Ok((StatusCode::CREATED, Json(create_named_token(&state, &caller, body).await?)))
}

async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<TokenRecord>, Problem> {
    Ok(Json(revoke_named_token(&state, &caller, &id).await?))
}

/// `GET /api/audit`: filters, and the cursor of the next (older) page.
#[derive(Debug, Default, Deserialize)]
pub(in crate::http) struct AuditQuery {
    pub who: Option<String>,
    pub job: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// RFC 3339: entries at or after.
    pub since: Option<String>,
    /// RFC 3339: entries before.
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// A page of the audit trail, newest first.
#[derive(Debug, Serialize)]
pub(in crate::http) struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of the audit trail for `caller` (an admin).
pub(in crate::http) async fn audit_page(
    state: &AppState,
    caller: &Caller,
    query: &AuditQuery,
) -> Result<AuditPage, Problem> {
    state.permit(caller, Action::ReadAudit, None).await?;
    let given =
        |value: &Option<String>| value.as_deref().map(str::trim).filter(|text| !text.is_empty()).map(str::to_owned);
    let instant = |field: &str, value: &Option<String>| -> Result<Option<DateTime<Utc>>, Problem> {
        given(value)
            .map(|text| {
                DateTime::parse_from_rfc3339(&text).map(|at| at.with_timezone(&Utc)).map_err(|_| {
                    Problem::bad_request(format!(
                        "`{field}`: `{text}` is not an RFC 3339 instant such as 2026-01-01T00:00:00Z"
                    ))
                })
            })
            .transpose()
    };
    let outcome = match given(&query.outcome) {
        None => None,
        Some(text) => Some(
            crate::store::AuditOutcome::parse(&text)
                .ok_or_else(|| Problem::bad_request(format!("`outcome`: `{text}` is not done or refused")))?,
        ),
    };
    let before_id = match given(&query.cursor) {
        None => None,
        Some(text) => Some(text.parse::<i64>().map_err(|_| Problem::bad_request("malformed cursor"))?),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(Problem::bad_request(format!("limit must be between 1 and {PAGE_MAX}")));
    }
    let filter = AuditFilter {
        who: given(&query.who),
        job: given(&query.job),
        action: given(&query.action),
        outcome,
        since: instant("since", &query.since)?,
        until: instant("until", &query.until)?,
        before_id,
        limit: limit + 1,
    };
    let mut entries = state.store.audit(&filter).await?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next_cursor = if more { entries.last().map(|entry| entry.id.to_string()) } else { None };
    Ok(AuditPage { entries, next_cursor })
}

async fn audit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditPage>, Problem> {
    Ok(Json(audit_page(&state, &caller, &query).await?))
}
