//! What a dashboard or API request must show before it may wait for a turn (`shed`): the
//! credentials its route needs, and then, for a change, its whole body within `BODY_TIMEOUT`. A
//! client without the token, or one that sends its body slowly, is answered (401, 403, 408, 413)
//! without ever holding a turn. The handlers check the same credentials again; this is where a
//! request is refused before it costs a turn.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::pages::PageError;
use super::{Auth, Problem};

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
}

impl Need {
    fn of(method: &Method, route: &str) -> Need {
        match route {
            "/api/openapi.json"
            | "/api/{*rest}"
            | "/static/app.css"
            | "/static/live.js"
            | "/static/favicon.svg"
            | "/favicon.ico" => Need::Nothing,
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

/// Middleware (on the routes, outside `shed::admit`): refuse what lacks its credentials, and read
/// a change's body within `BODY_TIMEOUT`, before the request waits for a turn.
pub(super) async fn check(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(String::new, |path| path.as_str().to_owned());
    let api = is_api(request.uri().path());
    let referer = request.headers().get(header::REFERER).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let refuse = |problem: Problem| {
        if api { problem.into_response() } else { PageError(problem).answer(referer.as_deref()) }
    };
    let need = Need::of(request.method(), &route);
    let allowed = match need {
        Need::Nothing => Ok(()),
        Need::SignIn => auth.signed_in(request.headers()),
        Need::Read => auth.read(request.headers()),
        Need::ApiChange => auth.mutate_api(request.headers()),
        Need::FormChange => auth.form_sender(request.headers()),
    };
    if let Err(problem) = allowed {
        return refuse(problem);
    }
    if !matches!(need, Need::ApiChange | Need::FormChange) {
        return next.run(request).await;
    }
    match whole_body(request).await {
        Ok(request) => next.run(request).await,
        Err(problem) => refuse(problem),
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
