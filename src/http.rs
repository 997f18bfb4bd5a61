//! The HTTP surface every replica serves: health, readiness and metrics. Handlers read shared
//! state; they never start runs.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::leadership::Leadership;
use crate::store::Store;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub node_id: String,
    pub store: Store,
    pub leadership: watch::Receiver<Leadership>,
    pub etcd: Option<etcd_client::Client>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(|| async { crate::telemetry::metrics().render() }))
        .with_state(state)
}

/// Serve until `shutdown`.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(async move { shutdown.cancelled().await }).await?;
    Ok(())
}

#[derive(Serialize)]
struct Readiness {
    node: String,
    role: &'static str,
    term: Option<i64>,
    database: bool,
    etcd: bool,
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let database = state.store.ping().await.is_ok();
    let etcd = match state.etcd.clone() {
        Some(mut client) => tokio::time::timeout(std::time::Duration::from_secs(2), client.status())
            .await
            .is_ok_and(|status| status.is_ok()),
        None => true,
    };
    let leadership = state.leadership.borrow().clone();
    let body = Readiness {
        node: state.node_id.clone(),
        role: if leadership.is_leader() { "leader" } else { "follower" },
        term: leadership.term().map(|term| term.revision()),
        database,
        etcd,
    };
    let code = if database && etcd { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body))
}
