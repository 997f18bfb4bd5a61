//! The HTTP server's accept loop: HTTP/1.1 connections, each with a deadline for every request
//! head (`HEADER_TIMEOUT`; the wait for the next request of a kept-alive connection included),
//! and at most as many open at once as the open-files limit leaves after the firing path's
//! reserve (`fds::Budget`). At the cap, the connections that have been open longest with no
//! request in flight (slow heads, idle keep-alives) are closed to make room for the new one; when
//! every one is busy, the new one is closed at once. An accept error (`EMFILE` and the like)
//! pauses accepting for a moment, and never ends the server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::JobSet;
use crate::fds::Budget;
use crate::telemetry::metric;

/// How long a client may take to send a request's head (line and headers), from when the server
/// starts waiting for it: after accepting, or after answering the previous request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long accepting pauses after an accept error that is not the client's (no file left).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At the cap, room is made for a new connection and `cap / ROOM_BATCH` more.
const ROOM_BATCH: usize = 16;
/// How long a new connection waits for the ones closed to make room to be gone.
const ROOM_WAIT: Duration = Duration::from_secs(1);
/// How long, on shutdown, requests in flight have to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The accept queue asked of the kernel (which caps it at `net.core.somaxconn`): deep enough that
/// under a flood of connections a new one waits its turn rather than having its SYN dropped (a
/// second's retransmission each time).
const ACCEPT_QUEUE: u32 = 4096;

/// Listen on `address` (`host:port`; the first of its addresses that binds), with the accept
/// queue `ACCEPT_QUEUE`.
pub async fn bind(address: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for address in tokio::net::lookup_host(address).await? {
        let socket =
            if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(address).and_then(|()| socket.listen(ACCEPT_QUEUE)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")))
}

/// Serve `app` on `listener` until `shutdown`, under the cap `budget` leaves with the leader's
/// jobs in `jobs`, over TLS when `tls` is given; then let requests in flight finish (at most
/// `SHUTDOWN_GRACE`).
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    budget: Budget,
    mut jobs: watch::Receiver<Arc<JobSet>>,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let connections = Connections::default();
    let tasks = TaskTracker::new();
    let mut cap = Cap::new(budget, &mut jobs);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                pause_after(&error, &connections).await;
                continue;
            }
        };
        let Some(open) = connections.admit(cap.current(&mut jobs)).await else {
            metrics::counter!(metric::HTTP_CONNECTIONS_SHED, "reason" => "busy").increment(1);
            continue;
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        match &tls {
            None => tasks.spawn(serve_connection(TokioIo::new(stream), peer, app, open, shutdown)),
            // The handshake (bounded by its own deadline) on the connection's task, within the cap.
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tasks.spawn(async move {
                    if let Some(stream) = super::tls::handshake(&acceptor, stream).await {
                        serve_connection(TokioIo::new(stream), peer, app, open, shutdown).await;
                    }
                })
            }
        };
    }
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
        tracing::warn!("http requests still in flight after {SHUTDOWN_GRACE:?}; closing them");
    }
    Ok(())
}

/// One connection, until it ends, is closed to make room, or the server shuts down (requests in
/// flight are answered first).
async fn serve_connection<I>(io: I, peer: std::net::SocketAddr, app: Router, open: Open, shutdown: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let in_flight = open.in_flight.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let busy = Busy::enter(&in_flight);
        // Who asked, for the audit trail (`http::gate`).
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(busy);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(error) = served {
                tracing::debug!(%error, "http connection ended");
            }
        }
        // Dropping the connection closes its socket.
        () = open.close.cancelled() => metrics::counter!(metric::HTTP_CONNECTIONS_SHED, "reason" => "idle").increment(1),
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// The cap, recomputed when the job file changes (the leader's own jobs need their share).
struct Cap {
    budget: Budget,
    connections: usize,
}

impl Cap {
    fn new(budget: Budget, jobs: &mut watch::Receiver<Arc<JobSet>>) -> Cap {
        let mut cap = Cap { budget, connections: 0 };
        cap.update(&jobs.borrow_and_update());
        cap
    }

    fn current(&mut self, jobs: &mut watch::Receiver<Arc<JobSet>>) -> usize {
        if jobs.has_changed().unwrap_or(false) {
            self.update(&jobs.borrow_and_update());
        }
        self.connections
    }

    fn update(&mut self, jobs: &JobSet) {
        let leader_jobs = jobs.jobs().iter().filter(|job| !job.run_on.is_remote()).count();
        self.connections = self.budget.connections(leader_jobs);
        let reserve = self.budget.reserve(leader_jobs);
        if self.budget.suffices(leader_jobs) {
            tracing::debug!(connections = self.connections, reserve, limit = self.budget.limit, "http connection cap");
        } else {
            tracing::warn!(
                connections = self.connections,
                reserve,
                limit = self.budget.limit,
                "the open-files limit does not leave the firing path its reserve beside the dashboard's \
                 connections; raise `ulimit -n` or lower --max-runs"
            );
        }
    }
}

/// An accept error: the client's (it went away) is skipped; any other (no file left, no memory)
/// closes the longest-idle connection, pauses accepting for a moment, and is logged once a burst.
async fn pause_after(error: &std::io::Error, connections: &Connections) {
    use std::io::ErrorKind;
    if matches!(error.kind(), ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted) {
        return;
    }
    static LAST_LOGGED: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let quiet = {
        let mut last = LAST_LOGGED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let quiet = last.is_none_or(|at| at.elapsed() > Duration::from_secs(10));
        if quiet {
            *last = Some(std::time::Instant::now());
        }
        quiet
    };
    if quiet {
        tracing::warn!(%error, "http accept failed; pausing accepts");
    }
    connections.close_longest_idle(1);
    tokio::time::sleep(ACCEPT_PAUSE).await;
}

/// The open connections, in the order they were accepted.
#[derive(Default)]
struct Connections {
    registry: Arc<Mutex<Registry>>,
    /// Told whenever a connection is gone.
    gone: Arc<Notify>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    open: BTreeMap<u64, Handle>,
}

/// What the accept loop keeps of a connection.
struct Handle {
    in_flight: Arc<AtomicUsize>,
    close: CancellationToken,
}

/// A connection's place under the cap, given back when its task ends.
struct Open {
    id: u64,
    in_flight: Arc<AtomicUsize>,
    close: CancellationToken,
    registry: Arc<Mutex<Registry>>,
    gone: Arc<Notify>,
}

impl Drop for Open {
    fn drop(&mut self) {
        lock(&self.registry).open.remove(&self.id);
        self.gone.notify_waiters();
    }
}

fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Connections {
    /// A place for a new connection under `cap`: at once, or once the longest-idle connections
    /// closed to make room are gone; `None` when every open connection is busy.
    async fn admit(&self, cap: usize) -> Option<Open> {
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        loop {
            let gone = self.gone.notified();
            {
                let mut registry = lock(&self.registry);
                if registry.open.len() < cap {
                    return Some(self.register(&mut registry));
                }
                let closing = registry.open.values().filter(|handle| handle.close.is_cancelled()).count();
                // Room for this one and a batch more, so that accepting under a flood does not
                // wait for a close per connection.
                let excess = (registry.open.len() + 1 + cap / ROOM_BATCH).saturating_sub(cap).saturating_sub(closing);
                drop(registry);
                if self.close_longest_idle(excess) == 0 && closing == 0 {
                    return None;
                }
            }
            tokio::time::timeout_at(deadline, gone).await.ok()?;
        }
    }

    fn register(&self, registry: &mut Registry) -> Open {
        let id = registry.next_id;
        registry.next_id += 1;
        let handle = Handle { in_flight: Arc::default(), close: CancellationToken::new() };
        let open = Open {
            id,
            in_flight: handle.in_flight.clone(),
            close: handle.close.clone(),
            registry: self.registry.clone(),
            gone: self.gone.clone(),
        };
        registry.open.insert(id, handle);
        open
    }

    /// Close up to `count` of the connections open longest with no request in flight; how many.
    fn close_longest_idle(&self, count: usize) -> usize {
        let registry = lock(&self.registry);
        let idle = registry
            .open
            .values()
            .filter(|handle| !handle.close.is_cancelled() && handle.in_flight.load(Ordering::Acquire) == 0)
            .take(count);
        let mut closed = 0;
        for handle in idle {
            handle.close.cancel();
            closed += 1;
        }
        closed
    }
}

/// A request in flight on a connection, from its head to its response.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(in_flight: &Arc<AtomicUsize>) -> Busy {
        in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(in_flight.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
