//! Admission for the dashboard and the API, so that readers cannot take the CPU the firing path
//! needs: at most `MAX_CONCURRENT_READS` handlers run at once, up to `MAX_QUEUED_READS` more wait
//! at most `QUEUE_WAIT` for a turn, and the rest are answered at once with 503 and `Retry-After`.
//! Health, readiness and metrics are not routed through it. It does not know what a handler does;
//! the connections handlers read on are the read pool's (`store::connect_reads`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Problem;

/// Handlers running at once. Each holds at most one read connection at a time, so the read pool
/// has one connection more than this (readiness).
pub const MAX_CONCURRENT_READS: usize = 4;
/// Requests waiting for a turn; more are shed at once.
pub const MAX_QUEUED_READS: usize = 32;
/// How long a request waits for a turn before it is shed.
const QUEUE_WAIT: Duration = Duration::from_secs(1);
/// What a shed request is told, in seconds.
const RETRY_AFTER: &str = "1";

/// The turns, shared by every clone of the router.
#[derive(Clone)]
pub(super) struct Admission {
    turns: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl Admission {
    pub(super) fn new() -> Admission {
        Admission { turns: Arc::new(Semaphore::new(MAX_CONCURRENT_READS)), waiting: Arc::default() }
    }

    /// A turn now, or after a short wait in a bounded queue; `None` when the dashboard is full.
    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(turn) = self.turns.clone().try_acquire_owned() {
            return Some(turn);
        }
        let _waiting = Waiting::join(&self.waiting)?;
        tokio::time::timeout(QUEUE_WAIT, self.turns.clone().acquire_owned()).await.ok()?.ok()
    }
}

/// A place in the queue, given back however the wait ends (a client that hangs up included).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn join(waiting: &'a AtomicUsize) -> Option<Waiting<'a>> {
        let joined = waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| (count < MAX_QUEUED_READS).then_some(count + 1));
        joined.ok().map(|_| Waiting(waiting))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Middleware: run the handler in its turn, or answer 503 with `Retry-After`.
pub(super) async fn admit(State(admission): State<Admission>, request: Request, next: Next) -> Response {
    let Some(turn) = admission.admit().await else {
        metrics::counter!(crate::telemetry::metric::HTTP_SHED).increment(1);
        let mut response = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "the dashboard is answering as many requests as it may; retry in a second",
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
        return response;
    };
    let response = next.run(request).await;
    drop(turn);
    response
}
