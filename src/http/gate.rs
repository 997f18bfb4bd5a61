//! What a dashboard or API request must show before it may wait for a turn (`shed`): who it
//! is (the `Caller`, decided here from its credentials, once, for the handlers), the credentials
//! its route needs, and then, for a change, its whole body within `BODY_TIMEOUT`. A client
//! without a valid token, or one that sends its body slowly, is answered (401, 403, 408, 413)
//! without ever holding a turn. What the principal may do is the handlers' question
//! (`AppState::permit`), which needs the job.

use std::time::Duration;

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::identity::{Action, Principal};
use super::pages::PageError;
use super::{AppState, Caller, Problem, Scheme};
use crate::store::{AuditOutcome, AuditRecord};

/// How long a client may take to send a request's body, from the end of its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body any route reads (a trigger's overrides, a backfill window, a page form).
pub const BODY_LIMIT: usize = 16 * 1024;

/// What a route asks of a request before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Static files, the OpenAPI description, the API's 404, methods no route takes.
    Nothing,
    SignIn,
    /// Pages and GET endpoints: the token under `--protect-reads`.
    Read,
    /// API changes: the token as a bearer token; a body.
    ApiChange,
    /// Page forms: the token, from this site; a body.
    FormChange,
    /// Sign-in's own posts (`/api/auth/session`, `/auth/logout`): no credentials, a body.
    SignInPost,
}

impl Need {
    fn of(method: &Method, route: &str) -> Need {
        match route {
            "/api/openapi.json"
            | "/api/{*rest}"
            | "/static/app.css"
            | "/static/live.js"
            | "/static/favicon.svg"
            | "/favicon.ico"
            | "/auth/login"
            | "/auth/callback"
            | "/api/auth/oidc" => Need::Nothing,
            "/api/auth/session" | "/auth/logout" => Need::SignInPost,
            "/signin" => Need::SignIn,
            _ if method == Method::GET || method == Method::HEAD => Need::Read,
            _ if method == Method::POST && is_api(route) => Need::ApiChange,
            _ if method == Method::POST => Need::FormChange,
            // No route takes another method: the route's fallback answers 405, as to anyone.
            _ => Need::Nothing,
        }
    }
}

/// Whether `path` is the API's (errors as problem+json) rather than the pages' (an HTML page).
pub(super) fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// Middleware (on the routes, outside `shed::admit`): decide who the caller is (`Caller`, for
/// the handlers), refuse what lacks its credentials (a refused change is audited), and read a
/// change's body within `BODY_TIMEOUT`, before the request waits for a turn. Every answer names
/// the request's id (`X-Request-Id`).
pub(super) async fn check(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(String::new, |path| path.as_str().to_owned());
    let api = is_api(request.uri().path());
    let referer = request.headers().get(header::REFERER).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let need = Need::of(request.method(), &route);
    let caller = Caller {
        principal: Principal::anonymous(),
        scheme: Scheme::None,
        source: source(&state, &request),
        request_id: super::correlation_id(),
    };
    let request_id = HeaderValue::from_str(&caller.request_id).ok();
    let refuse = |problem: Problem| {
        if api { problem.into_response() } else { PageError(problem).answer(referer.as_deref()) }
    };
    let here = request.uri().path_and_query().map_or_else(|| "/".to_owned(), |path| path.as_str().to_owned());
    let mut response = match admit(&state, caller, need, &route, request.headers()).await {
        // A page read without a sign-in, where the identity provider signs people in: there.
        Err(problem)
            if !api && need == Need::Read && problem.status == StatusCode::UNAUTHORIZED && state.auth.oidc_on() =>
        {
            let back: String = url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
            axum::response::Redirect::to(&format!("/auth/login?back={back}")).into_response()
        }
        Err(problem) => refuse(problem),
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            if !matches!(need, Need::ApiChange | Need::FormChange | Need::SignInPost) {
                next.run(request).await
            } else {
                match whole_body(request).await {
                    Ok(request) => next.run(request).await,
                    Err(problem) => refuse(problem),
                }
            }
        }
    };
    if let Some(id) = request_id {
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

/// The caller behind a request's credentials, if the route's need is met; a refused change is
/// audited (as `anonymous`, or as the principal a form came from another site with).
async fn admit(
    state: &AppState,
    mut caller: Caller,
    need: Need,
    route: &str,
    headers: &axum::http::HeaderMap,
) -> Result<Caller, Problem> {
    let (scheme, token) = super::presented(headers);
    let resolved = match &token {
        // A browser signed in through the identity provider; an invalid or expired session is
        // nobody (the page offers to sign in again).
        None => Ok(state.auth.session_principal(headers).unwrap_or_else(Principal::anonymous)),
        Some(token) => state.principal_of(token).await,
    };
    caller.scheme = scheme;
    let change = matches!(need, Need::ApiChange | Need::FormChange);
    let refused = |caller: &Caller, problem: Problem| {
        let record = caller.audit(change_of(route), None, AuditOutcome::Refused, problem.detail.clone());
        (record, problem)
    };
    let outcome = match (need, resolved) {
        (Need::Nothing | Need::SignInPost, _) => Ok(()),
        // A token that is not valid (revoked, expired, unknown) is refused even where reads are
        // open: its holder learns at once, and a browser asks for another.
        (Need::Read, Ok(principal)) if !state.auth.reads_protected() || principal.is_signed_in() => {
            caller.principal = principal;
            Ok(())
        }
        (Need::Read, Ok(_)) => {
            Err(Problem::unauthorized("this dashboard needs a token to read (basic auth password or bearer token)"))
        }
        (Need::SignIn, Ok(principal)) if principal.is_signed_in() => {
            caller.principal = principal;
            Ok(())
        }
        (Need::SignIn, Ok(_)) => Err(Problem::unauthorized("sign in with a token as the password (any user name)")),
        (Need::ApiChange, Ok(principal)) if principal.is_signed_in() && scheme == Scheme::Bearer => {
            caller.principal = principal;
            Ok(())
        }
        (Need::ApiChange, Ok(_)) => {
            return Err(audited(
                state,
                refused(&caller, Problem::unauthorized("send a token as `Authorization: Bearer <token>`")),
            )
            .await);
        }
        (Need::FormChange, Ok(principal)) if principal.is_signed_in() => {
            caller.principal = principal;
            match state.auth.same_origin(headers) {
                Ok(()) => Ok(()),
                Err(problem) => return Err(audited(state, refused(&caller, problem)).await),
            }
        }
        (Need::FormChange, Ok(_)) => {
            let problem = Problem::unauthorized("sign in with a token as the password (any user name)");
            return Err(audited(state, refused(&caller, problem)).await);
        }
        (_, Err(problem)) if change && problem.status == StatusCode::UNAUTHORIZED => {
            return Err(audited(state, refused(&caller, problem)).await);
        }
        (_, Err(problem)) => Err(problem),
    };
    outcome.map(|()| caller)
}

/// How many refusals the gate records at once. A refusal here comes before admission (`shed`):
/// without a bound, a flood of requests without a token would be a flood of ledger writes.
const RECORDING_AT_ONCE: usize = 4;

/// Record a refusal in the audit trail (unless `RECORDING_AT_ONCE` are being recorded already:
/// then it is logged and counted instead), then give back the problem to answer with.
async fn audited(state: &AppState, (record, problem): (AuditRecord, Problem)) -> Problem {
    static RECORDING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(RECORDING_AT_ONCE);
    match RECORDING.try_acquire() {
        Ok(_turn) => state.record_refusal(record).await,
        Err(_) => {
            metrics::counter!(crate::telemetry::metric::AUDIT_REFUSALS_UNRECORDED).increment(1);
            tracing::warn!(
                who = record.who,
                action = record.action,
                source = record.source,
                "refused attempts arrive faster than the ledger records them; this one is only logged"
            );
        }
    }
    problem
}

/// The action a change route takes, for the audit of a refusal before its handler ran.
fn change_of(route: &str) -> Action {
    match route.rsplit('/').next().unwrap_or_default() {
        "trigger" => Action::Trigger,
        "cancel" => Action::Cancel,
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "backfill" => Action::Backfill,
        "revoke" => Action::RevokeToken,
        _ if route.contains("tokens") => Action::CreateToken,
        // A page form's action is a path segment: `/jobs/{name}/{action}`.
        _ => Action::Trigger,
    }
}

/// Where a request came from: the peer's address; behind a proxy tenure believes
/// (`--public-url`), the client the proxy names first, then the proxy's address.
fn source(state: &AppState, request: &Request) -> String {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |ConnectInfo(address)| address.to_string());
    if state.auth.served.public_url.is_none() {
        return peer;
    }
    let header = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok());
    let forwarded = header("forwarded")
        .and_then(|value| value.split(',').next())
        .and_then(|first| {
            first.split(';').find_map(|pair| pair.trim().strip_prefix("for=").map(|v| v.trim_matches('"').to_owned()))
        })
        .or_else(|| header("x-forwarded-for").and_then(|value| value.split(',').next()).map(|v| v.trim().to_owned()));
    match forwarded {
        Some(client) if !client.is_empty() && client.len() <= 100 => format!("{client} via {peer}"),
        _ => peer,
    }
}

/// `request` with its body read in full: at most `BODY_LIMIT` bytes, within `BODY_TIMEOUT`.
async fn whole_body(request: Request) -> Result<Request, Problem> {
    let (parts, body) = request.into_parts();
    let too_large = || {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large", format!("the body is over {BODY_LIMIT} bytes"))
    };
    let announced =
        parts.headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|length| length > BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut chunks = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| Problem::bad_request("the body could not be read"))?;
            if bytes.len() + chunk.len() > BODY_LIMIT {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let bytes = tokio::time::timeout(BODY_TIMEOUT, read).await.map_err(|_| {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "Request Timeout",
            format!("the body did not arrive within {} seconds", BODY_TIMEOUT.as_secs()),
        )
    })??;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_but_the_open_ones_needs_something() {
        assert_eq!(Need::of(&Method::GET, "/api/openapi.json"), Need::Nothing);
        assert_eq!(Need::of(&Method::POST, "/api/{*rest}"), Need::Nothing);
        assert_eq!(Need::of(&Method::GET, "/signin"), Need::SignIn);
        assert_eq!(Need::of(&Method::GET, "/api/jobs/{name}"), Need::Read);
        assert_eq!(Need::of(&Method::HEAD, "/"), Need::Read);
        assert_eq!(Need::of(&Method::POST, "/api/jobs/{name}/pause"), Need::ApiChange);
        assert_eq!(Need::of(&Method::POST, "/jobs/{name}/{action}"), Need::FormChange);
        assert_eq!(Need::of(&Method::DELETE, "/api/jobs"), Need::Nothing, "405 for anyone");
    }
}
