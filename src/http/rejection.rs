//! Answers for requests no handler answered itself: a query, path or form the handler's extractor
//! refused (`Query`, `Path`, `Form` here wrap axum's), a route or method that does not exist, and
//! a handler that panicked. Under `/api` they are problem+json, elsewhere the pages' HTML error
//! page; a panic is an opaque 500 with a correlation id, its message in the log once.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::Problem;
use super::gate::is_api;
use super::pages::PageError;

/// A request refused before its handler ran, answered in its surface's format.
#[derive(Debug)]
pub(super) struct Rejected {
    problem: Problem,
    api: bool,
}

impl Rejected {
    fn new(path: &str, status: StatusCode, detail: String) -> Rejected {
        // Only client errors: a rejection is about the request.
        let status = if status.is_client_error() { status } else { StatusCode::BAD_REQUEST };
        let title = status.canonical_reason().unwrap_or("Bad Request");
        Rejected { problem: Problem::new(status, title, detail), api: is_api(path) }
    }
}

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        if self.api { self.problem.into_response() } else { PageError(self.problem).into_response() }
    }
}

/// `axum::extract::Query`, refused as `Rejected`.
pub(super) struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Rejected;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejected> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(Rejected::new(parts.uri.path(), rejection.status(), rejection.body_text())),
        }
    }
}

/// `axum::extract::Path`, refused as `Rejected`.
pub(super) struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Rejected;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejected> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(Rejected::new(parts.uri.path(), rejection.status(), rejection.body_text())),
        }
    }
}

/// `axum::Form`, refused as `Rejected`.
pub(super) struct Form<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Form<T> {
    type Rejection = Rejected;

    async fn from_request(request: Request, state: &S) -> Result<Self, Rejected> {
        let path = request.uri().path().to_owned();
        match axum::Form::<T>::from_request(request, state).await {
            Ok(axum::Form(value)) => Ok(Form(value)),
            Err(rejection) => Err(Rejected::new(&path, rejection.status(), rejection.body_text())),
        }
    }
}

/// The router's fallback: no route has this path.
pub(super) async fn no_route(uri: Uri) -> Rejected {
    let detail = if is_api(uri.path()) { "no such API endpoint; see /api/openapi.json" } else { "no such page" };
    Rejected::new(uri.path(), StatusCode::NOT_FOUND, detail.to_owned())
}

/// The pages' answer to a method their route does not take.
pub(super) async fn wrong_page_method() -> Rejected {
    Rejected::new("/", StatusCode::METHOD_NOT_ALLOWED, "this page does not take that method".to_owned())
}

/// `CatchPanicLayer`'s answer to a handler that panicked: an opaque 500 with a correlation id; the
/// panic's message goes to the log under it.
pub(super) fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    Problem::internal(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error",
        "the request failed inside tenure",
        &format_args!("a handler panicked: {message}"),
    )
    .into_response()
}
