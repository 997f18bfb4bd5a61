//! The admins' pages: `/audit` (every change made through the web and every refused attempt)
//! and `/tokens` (API tokens created, listed and revoked).

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/audit", get(audit))
        .route("/tokens", get(tokens).post(create_token))
        .route("/tokens/{id}/revoke", post(revoke_token))
}

struct AuditRow {
    at: String,
    who: String,
    via: String,
    role: String,
    teams: String,
    action: String,
    /// What the change was done to: its job, else its target (a backfill, a token).
    target: String,
    job_team: String,
    outcome: &'static str,
    source: String,
    request_id: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    who: String,
    job: String,
    action: String,
    outcome: String,
    filtered: bool,
    entries: Vec<AuditRow>,
    next_page: Option<String>,
}

/// `/audit`: the audit trail (admins), filtered as `GET /api/audit` is.
async fn audit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<api::AuditQuery>,
) -> Result<Html<String>, PageError> {
    let page = api::audit_page(&state, &caller, &query).await?;
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let next_page = page.next_cursor.as_ref().map(|cursor| {
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in
            [("who", &query.who), ("job", &query.job), ("action", &query.action), ("outcome", &query.outcome)]
        {
            if let Some(value) = value.as_deref().filter(|value| !value.is_empty()) {
                url.append_pair(name, value);
            }
        }
        url.append_pair("cursor", cursor);
        format!("/audit?{}", url.finish())
    });
    let entries = page
        .entries
        .into_iter()
        .map(|entry| AuditRow {
            at: utc(entry.at),
            who: entry.record.who,
            via: entry.record.via,
            role: entry.record.role.unwrap_or_else(|| "–".to_owned()),
            teams: entry.record.teams,
            action: entry.record.action,
            target: entry.record.job.or(entry.record.target).unwrap_or_default(),
            job_team: entry.record.job_team.unwrap_or_default(),
            outcome: entry.record.outcome.as_str(),
            source: entry.record.source,
            request_id: entry.record.request_id,
            detail: entry.record.detail,
        })
        .collect();
    let filtered = [&query.who, &query.job, &query.action, &query.outcome]
        .iter()
        .any(|value| value.as_deref().is_some_and(|value| !value.is_empty()));
    render(&AuditPage {
        layout: Layout::new(&state, "Audit", "audit"),
        who: text(&query.who),
        job: text(&query.job),
        action: text(&query.action),
        outcome: text(&query.outcome),
        filtered,
        entries,
        next_page,
    })
}

struct TokenRow {
    id: String,
    name: String,
    role: String,
    teams: String,
    created: String,
    created_by: String,
    expires: String,
    state: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    layout: Layout,
    /// A token just created: its name and text, shown this once.
    created: Option<(String, String)>,
    notice: Option<&'static str>,
    csrf: String,
    tokens: Vec<TokenRow>,
}

/// The tokens page for `caller` (an admin), with `created` shown once.
async fn tokens_page(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    created: Option<(String, String)>,
    notice: Option<&'static str>,
) -> Result<Response, PageError> {
    state.permit(caller, Action::ListTokens, None).await?;
    let now = Utc::now();
    let tokens = state
        .store
        .tokens()
        .await?
        .into_iter()
        .map(|token| {
            let expired = token.expires_at.is_some_and(|at| at <= now);
            let state = match (&token.revoked_at, &token.revoked_by) {
                (Some(at), by) => format!("revoked {} by {}", utc(*at), by.as_deref().unwrap_or("–")),
                (None, _) if expired => "expired".to_owned(),
                (None, _) => "active".to_owned(),
            };
            TokenRow {
                active: token.revoked_at.is_none() && !expired,
                id: token.id,
                name: token.name,
                role: token.role,
                teams: if token.teams.is_empty() { "every team".to_owned() } else { token.teams.join(", ") },
                created: utc(token.created_at),
                created_by: token.created_by,
                expires: token.expires_at.map_or_else(|| "never".to_owned(), utc),
                state,
            }
        })
        .collect();
    let session = BrowserSession::of(headers);
    let page = render(&TokensPage {
        layout: Layout::new(state, "API tokens", "tokens"),
        created,
        notice,
        csrf: state.auth.csrf_for(&session).unwrap_or_default(),
        tokens,
    })?;
    let mut response = page.into_response();
    // Never kept by a cache: the page may show a token's secret.
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    if let Some(cookie) = session.set_cookie(&state.auth) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

#[derive(Deserialize)]
struct TokensQuery {
    done: Option<String>,
}

async fn tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(query): Query<TokensQuery>,
) -> Result<Response, PageError> {
    let notice = match query.done.as_deref() {
        Some("revoke") => Some("Revoked: the token is refused by every replica from its next request."),
        _ => None,
    };
    tokens_page(&state, &caller, &headers, None, notice).await
}

#[derive(Deserialize)]
struct CreateTokenForm {
    #[serde(default)]
    csrf: String,
    name: String,
    role: String,
    #[serde(default)]
    teams: String,
    #[serde(default)]
    expires_in: String,
}

/// The create form: the new token is shown on the answer itself (never in a URL), this once.
async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Form(form): Form<CreateTokenForm>,
) -> Result<Response, PageError> {
    form_checked(&state, &caller, &headers, &form.csrf, Action::CreateToken).await?;
    let body = api::TokenBody {
        name: form.name,
        role: form.role,
        teams: form.teams.split(',').map(str::trim).filter(|team| !team.is_empty()).map(str::to_owned).collect(),
        expires_in: Some(form.expires_in),
    };
    let created = api::create_named_token(&state, &caller, body).await?;
    tokens_page(&state, &caller, &headers, Some((created.record.name, created.token)), None).await
}

#[derive(Deserialize)]
struct RevokeForm {
    #[serde(default)]
    csrf: String,
}

async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<RevokeForm>,
) -> Result<Redirect, PageError> {
    form_checked(&state, &caller, &headers, &form.csrf, Action::RevokeToken).await?;
    api::revoke_named_token(&state, &caller, &id).await?;
    Ok(Redirect::to("/tokens?done=revoke"))
}
