//! The HTTP surface every replica serves on `--listen`: health, readiness and metrics (always
//! open), the JSON API and the dashboard pages (open or behind the admin token). Handlers read the
//! job file, the ledger and the cluster snapshot; the only writes are operator controls (pause,
//! resume, trigger), recorded in the ledger for the leader to act on, so any replica takes them.
//! Every answer carries the browser protections (`protect`); with `--tls-cert` the listener
//! speaks HTTPS (`tls`).

mod api;
mod fleet;
mod gate;
pub mod identity;
mod listen;
mod oidc;
mod overview;
mod pages;
mod protect;
mod rejection;
pub mod session;
mod shed;
pub mod timeline;
pub mod tls;
pub mod view;

pub use gate::{BODY_LIMIT, BODY_TIMEOUT};
pub use listen::{HEADER_TIMEOUT, bind};
pub use oidc::{
    CliSession, CliSettings, GroupPolicy, Oidc, OidcClient, OidcSettings, PolicyErrors, discover as discover_provider,
    provider_http_client as oidc_http_client, read_policy,
};
pub use protect::{CONTENT_SECURITY_POLICY, PublicUrl, Served};
pub use shed::{MAX_CONCURRENT_READS, MAX_QUEUED_READS};

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::JobSet;
use crate::election::CoordinatorProbe;
use crate::leadership::Leadership;
use crate::model::ClusterSnapshot;
use crate::store::{AuditOutcome, AuditRecord, Reads};
use identity::{Action, Denied, Principal, Role, Via};

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub node_id: String,
    /// The ledger's read side, on the read pool.
    pub store: Reads,
    pub leadership: watch::Receiver<Leadership>,
    /// For readiness; `None` where leadership is in-process (`tenure dev`).
    pub coordinator: Option<CoordinatorProbe>,
    pub jobs: watch::Receiver<Arc<JobSet>>,
    pub cluster: watch::Receiver<ClusterSnapshot>,
    pub auth: Auth,
    /// Rendered overview pages, kept for a second: concurrent viewers share one rendering.
    pub pages: PageCache,
}

/// A rendered page and when it was rendered.
type CachedPage = (std::time::Instant, Arc<str>);

/// A one-second cache of rendered pages by key, at most `MAX_PAGES` of them. The pages refresh
/// themselves every two seconds, so a second of staleness is invisible, and twenty viewers cost
/// one rendering, not twenty.
#[derive(Clone, Default)]
pub struct PageCache {
    /// Each page by key, with when it was rendered.
    entries: Arc<std::sync::Mutex<std::collections::HashMap<String, CachedPage>>>,
    /// One rendering at a time: viewers arriving meanwhile wait for it instead of repeating it.
    rendering: Arc<tokio::sync::Mutex<()>>,
    /// Every job's state for the overview's counts, filters and sorts, read for all at once.
    fleet: fleet::FleetStates,
}

impl PageCache {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(1);
    /// The most pages kept: a page number is the viewer's to choose, so a client walking through
    /// page numbers faster than they go stale must not grow the cache.
    const MAX_PAGES: usize = 32;

    fn get(&self, key: &str) -> Option<Arc<str>> {
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.get(key).filter(|(at, _)| at.elapsed() < Self::FRESH).map(|(_, page)| page.clone())
    }

    /// Keep `page`, with the pages still fresh, at most `MAX_PAGES` (the oldest go first).
    fn put(&self, key: String, page: Arc<str>) {
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|_, (at, _)| at.elapsed() < Self::FRESH);
        while entries.len() >= Self::MAX_PAGES && !entries.contains_key(&key) {
            let Some(oldest) = entries.iter().min_by_key(|(_, (at, _))| *at).map(|(key, _)| key.clone()) else { break };
            entries.remove(&oldest);
        }
        entries.insert(key, (std::time::Instant::now(), page));
    }
}

/// Every route. The API and the pages take turns (`shed`), once they have shown what their route
/// needs (`gate`); the probes and metrics never wait. A panicking handler is answered 500. Every
/// answer, a 404 of no route and a panic's 500 included, carries the browser protections
/// (`protect`).
pub fn router(state: AppState) -> Router {
    let https = state.auth.served.https();
    let dashboard = api::routes()
        .merge(pages::routes())
        .merge(oidc::routes())
        .route_layer(axum::middleware::from_fn_with_state(shed::Admission::new(), shed::admit))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), gate::check));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(|| async { crate::telemetry::metrics().render() }))
        .merge(dashboard)
        .fallback(rejection::no_route)
        .with_state(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(rejection::panicked))
        .layer(axum::middleware::map_response_with_state(https, protect::add_headers))
}

/// How much lower than the rest of the replica the HTTP server's thread runs (`nice`, added to
/// the replica's own, at most 19): when the CPU is short, the firing path's threads get it first.
const HTTP_NICENESS: i32 = 10;

/// Serve until `shutdown` on a runtime of its own: one thread, at a lower CPU priority, so that
/// however many readers come, the dashboard and the API use at most one core and only what the
/// firing path leaves of it; and at most as many connections as `budget` leaves beside the
/// firing path's open files (`listen`). HTTPS when `tls` is given. Join the returned thread (off
/// the async runtime) for the outcome.
pub fn serve_apart(
    listener: TcpListener,
    state: AppState,
    tls: Option<tls::ListenerTls>,
    budget: crate::fds::Budget,
    shutdown: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let listener = listener.into_std()?;
    let thread = std::thread::Builder::new().name("tenure-http".into()).spawn(move || {
        // On Linux the niceness is per thread: only this one is lowered, relative to the replica's
        // own (a replica started niced keeps its HTTP thread below its firing path, never above).
        // SAFETY: getpriority and setpriority read no memory of ours; they read and change the
        // calling thread's niceness. A failure leaves the thread at the replica's niceness.
        let base = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, (base + HTTP_NICENESS).min(19)) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the HTTP thread's priority");
        }
        let runtime =
            crate::memory::collect_when_idle(tokio::runtime::Builder::new_current_thread().enable_all()).build()?;
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener)?;
            serve(listener, state, tls, budget, shutdown).await
        })
    })?;
    Ok(thread)
}

/// Serve until `shutdown`, with at most as many connections as `budget` leaves; HTTPS when
/// `tls` is given (each admitted connection's handshake first, on its own task; the certificate
/// read again when its files change).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<tls::ListenerTls>,
    budget: crate::fds::Budget,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let jobs = state.jobs.clone();
    let acceptor = match tls {
        Some(tls) => {
            let acceptor = tls.acceptor()?;
            tokio::spawn(tls.keep_fresh(shutdown.clone()));
            Some(acceptor)
        }
        None => None,
    };
    listen::serve(listener, router(state), budget, jobs, acceptor, shutdown).await
}

#[derive(Serialize)]
struct Readiness {
    node: String,
    role: &'static str,
    term: Option<i64>,
    database: bool,
    /// etcd or ZooKeeper answers (always true for `tenure dev`, which has none).
    coordinator: bool,
}

/// How long readiness waits for each dependency: a probe must answer promptly even when one is
/// unreachable (it then says so).
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(400);

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let database =
        async { tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await.is_ok_and(|ping| ping.is_ok()) };
    let coordinator = async {
        match &state.coordinator {
            Some(probe) => probe.answers(READY_TIMEOUT).await,
            None => true,
        }
    };
    let (database, coordinator) = tokio::join!(database, coordinator);
    let leadership = state.leadership.borrow().clone();
    let body = Readiness {
        node: state.node_id.clone(),
        role: if leadership.is_leader() { "leader" } else { "follower" },
        term: leadership.term().map(|term| term.revision()),
        database,
        coordinator,
    };
    let code = if database && coordinator { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(body))
}

/// Who may use the web, and the keys of its forms: the break-glass admin token (kept only as a
/// digest; `None`: off), whether reads need a signed-in principal, where browsers reach tenure,
/// and the forms' anti-forgery key (shared by every replica through the ledger: `keyed`).
/// Named API tokens are read from the ledger on every request (`AppState::principal`).
///
/// Forms are protected twice over (OWASP's CSRF cheat sheet): a synchronizer value bound to the
/// browser (HMAC of its `tenure_session` cookie, `HttpOnly; SameSite=Strict`, under a key only
/// the cluster's replicas know), and the browser's own word on where a request comes from
/// (`Sec-Fetch-Site`, and the `Origin` or `Referer` against where tenure is served: `Served`). A
/// page viewed by someone else carries a value for their session only; a cross-site request is
/// refused whatever it carries.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    token: Option<[u8; 32]>,
    csrf_key: Option<[u8; 32]>,
    reads: ReadAccess,
    served: Served,
    /// How long the audit trail keeps an entry (`--audit-retain`).
    audit_retain: std::time::Duration,
    /// Sign-in through the identity provider (`--oidc-issuer`), if on.
    oidc: Option<Arc<oidc::Oidc>>,
    /// What signs sessions, derived from the replicas' shared web key (`keyed`).
    session_key: Option<session::SessionKey>,
}

/// The audit trail's retention unless `--audit-retain` says otherwise.
pub const AUDIT_RETAIN_DEFAULT: std::time::Duration = std::time::Duration::from_secs(400 * 86_400);

/// Who may read the pages and GET endpoints (health and metrics are always open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadAccess {
    #[default]
    Open,
    /// A signed-in principal is needed to read too (`--protect-reads`), and one scoped to teams
    /// sees only its teams' jobs.
    TokenRequired,
}

/// The cookie that binds a browser to its forms' anti-forgery values.
const SESSION_COOKIE: &str = "tenure_session";

/// A browser's session id, from its cookie or new (then the page sets the cookie).
#[derive(Debug, Clone)]
pub(crate) struct BrowserSession {
    id: String,
    is_new: bool,
}

impl BrowserSession {
    fn of(headers: &HeaderMap) -> BrowserSession {
        let existing = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, value)| *name == SESSION_COOKIE && is_session_id(value))
            .map(|(_, value)| value.to_owned());
        match existing {
            Some(id) => BrowserSession { id, is_new: false },
            None => BrowserSession { id: new_session_id(), is_new: true },
        }
    }

    /// The `Set-Cookie` value for a new session (`Secure` when browsers come over HTTPS);
    /// `None` when the browser already has one.
    pub(crate) fn set_cookie(&self, auth: &Auth) -> Option<HeaderValue> {
        if !self.is_new {
            return None;
        }
        let secure = if auth.served.https() { "; Secure" } else { "" };
        HeaderValue::from_str(&format!("{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{secure}", self.id)).ok()
    }
}

fn is_session_id(value: &str) -> bool {
    value.len() == 32 && value.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// 128 random bits from the kernel: a session id must not be guessable, or an attacker could
/// ask for the page's value under the victim's id.
fn new_session_id() -> String {
    random_hex::<16>().unwrap_or_else(|| "0".repeat(32))
}

/// `N` random bytes from the kernel, in hex; `None` without kernel randomness.
fn random_hex<const N: usize>() -> Option<String> {
    random_bytes::<N>().map(hex::encode)
}

pub(crate) fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    use std::io::Read;
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes)).ok()?;
    Some(bytes)
}

/// HMAC-SHA-256 (RFC 2104) over a 32-byte key.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut inner_pad = [0x36u8; 64];
    let mut outer_pad = [0x5cu8; 64];
    for (index, byte) in key.iter().enumerate() {
        inner_pad[index] ^= byte;
        outer_pad[index] ^= byte;
    }
    let inner = Sha256::new().chain_update(inner_pad).chain_update(message).finalize();
    Sha256::new().chain_update(outer_pad).chain_update(inner).finalize().into()
}

/// How a request presented its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    None,
    /// `Authorization: Bearer`: a browser never adds one by itself.
    Bearer,
    /// Basic auth (any user name, the token as the password): what a browser remembers.
    Basic,
}

/// The token a request presents, and how.
fn presented(headers: &HeaderMap) -> (Scheme, Option<String>) {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return (Scheme::None, None);
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return (Scheme::Bearer, Some(token.trim().to_owned()));
    }
    if let Some(encoded) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).unwrap_or_default();
        let text = String::from_utf8_lossy(&decoded);
        // Any user name; the password is the token.
        let password = text.split_once(':').map_or("", |(_, password)| password);
        return (Scheme::Basic, Some(password.to_owned()));
    }
    (Scheme::Bearer, Some(String::new()))
}

impl Auth {
    pub fn new(token: Option<&str>, reads: ReadAccess) -> Auth {
        let token = token.filter(|token| !token.is_empty());
        Auth {
            token: token.map(|token| Sha256::digest(token.as_bytes()).into()),
            csrf_key: token.map(|token| Sha256::digest(format!("tenure-csrf-key:{token}").as_bytes()).into()),
            reads,
            served: Served::default(),
            audit_retain: AUDIT_RETAIN_DEFAULT,
            oidc: None,
            session_key: None,
        }
    }

    /// Sign-in through the identity provider.
    pub fn with_oidc(mut self, oidc: oidc::Oidc) -> Auth {
        self.oidc = Some(Arc::new(oidc));
        self
    }

    /// Sign-in through the identity provider, if on.
    pub fn oidc(&self) -> Option<&Arc<oidc::Oidc>> {
        self.oidc.as_ref()
    }

    /// Whether sign-in through the identity provider is on.
    pub fn oidc_on(&self) -> bool {
        self.oidc.is_some()
    }

    /// Keep audit entries this long (`--audit-retain`).
    pub fn with_audit_retain(mut self, retain: std::time::Duration) -> Auth {
        self.audit_retain = retain;
        self
    }

    pub fn audit_retain(&self) -> std::time::Duration {
        self.audit_retain
    }

    /// Where browsers reach this listener (its scheme, `--public-url`): what the origin check
    /// compares with and whether the session cookie is `Secure`.
    pub fn served(mut self, served: Served) -> Auth {
        self.served = served;
        self
    }

    /// The forms' anti-forgery key, the same on every replica (`LedgerReads::web_key`).
    pub fn keyed(mut self, key: &[u8]) -> Auth {
        self.csrf_key = Some(Sha256::digest(key).into());
        self.session_key = Some(session::SessionKey::derive(key));
        self
    }

    /// The principal of a browser's session cookie, if it carries one this cluster signed and
    /// it has not expired; anyone else is nobody.
    fn session_principal(&self, headers: &HeaderMap) -> Option<Principal> {
        let key = self.session_key.as_ref()?;
        let text = session::cookie(headers, session::IDENTITY_COOKIE)?;
        key.open_session(text, chrono::Utc::now().timestamp()).ok().map(|session| session.principal())
    }

    /// Whether the break-glass admin token is on.
    pub fn admin_token_on(&self) -> bool {
        self.token.is_some()
    }

    fn is_admin_token(&self, candidate: &str) -> bool {
        // Comparing digests: the time taken says nothing about the token.
        let digest: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        self.token.is_some_and(|token| token == digest)
    }

    /// Whether reads are scoped (`--protect-reads`).
    fn reads_protected(&self) -> bool {
        self.reads == ReadAccess::TokenRequired
    }

    /// Page forms, before their body is read: a same-origin request.
    fn same_origin(&self, headers: &HeaderMap) -> Result<(), Problem> {
        if let Err(reason) = self.served.same_origin(headers) {
            tracing::warn!(reason, "refused a cross-origin form post");
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "cross-origin requests cannot change anything",
            ));
        }
        Ok(())
    }

    /// Page forms: the anti-forgery value of this browser's session.
    fn form_value(&self, headers: &HeaderMap, csrf: &str) -> Result<(), Problem> {
        let session = BrowserSession::of(headers);
        let expected = (!session.is_new).then(|| self.csrf_for(&session)).flatten();
        // Compare digests: the time taken says nothing about the expected value.
        let matches = expected.is_some_and(|expected| Sha256::digest(expected) == Sha256::digest(csrf));
        if !matches {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "the form is stale or forged; reload the page",
            ));
        }
        Ok(())
    }

    /// The anti-forgery value a page shows the browser of `session`.
    pub(crate) fn csrf_for(&self, session: &BrowserSession) -> Option<String> {
        self.csrf_key.as_ref().map(|key| hex::encode(hmac_sha256(key, session.id.as_bytes())))
    }
}

/// Who sent a request, as `gate` decided it before the handler ran: the principal, how its
/// credentials came (a form's must pass the anti-forgery check), the source address and the
/// request's id (in the `X-Request-Id` answer header and every audit entry it causes).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub principal: Principal,
    scheme: Scheme,
    pub source: String,
    pub request_id: String,
}

impl Caller {
    /// The audit record of `action` by this caller on `job` (of `team`).
    pub(crate) fn audit(
        &self,
        action: Action,
        job: Option<(&str, Option<&str>)>,
        outcome: AuditOutcome,
        detail: impl Into<String>,
    ) -> AuditRecord {
        AuditRecord {
            who: self.principal.name.clone(),
            role: self.principal.role.map(|role| role.as_str().to_owned()),
            teams: self.principal.teams.join(","),
            via: self.principal.via.as_str().to_owned(),
            source: self.source.clone(),
            request_id: self.request_id.clone(),
            action: action.as_str().to_owned(),
            job: job.map(|(name, _)| name.to_owned()),
            job_team: job.and_then(|(_, team)| team.map(str::to_owned)),
            target: None,
            outcome,
            detail: detail.into(),
        }
    }
}

impl AppState {
    /// The principal behind `token`: the break-glass admin token, a valid named token (read from
    /// the ledger now: a revocation or expiry holds at once, on every replica), or an error.
    async fn principal_of(&self, token: &str) -> Result<Principal, Problem> {
        if self.auth.is_admin_token(token) {
            return Ok(Principal::admin_token());
        }
        if let Some(sealed) = token.strip_prefix(session::SESSION_PREFIX) {
            // A session of `tenure login`: signed by this cluster's key, so any replica takes it.
            let key = self.auth.session_key.as_ref();
            return match key.map(|key| key.open_session(sealed, chrono::Utc::now().timestamp())) {
                Some(Ok(session)) => Ok(session.principal()),
                Some(Err(refused)) => Err(Problem::unauthorized(&format!(
                    "the session is not valid ({refused}): sign in again (`tenure login`)"
                ))),
                None => Err(Problem::unauthorized("sessions are not taken yet: try again")),
            };
        }
        let invalid = || {
            Problem::unauthorized(
                "the token is not valid (unknown, revoked or expired): send a valid one as `Authorization: Bearer \
                 <token>` or as the password of basic auth",
            )
        };
        let Some((id, secret)) = identity::split_token(token) else { return Err(invalid()) };
        let Some(check) = self.store.token(id).await? else { return Err(invalid()) };
        let digest = identity::token_hash(&check.salt, secret);
        // Compare digests of the digests: the time taken says nothing about the stored hash.
        let matches = Sha256::digest(digest) == Sha256::digest(&check.hash);
        if !matches || !check.valid {
            return Err(invalid());
        }
        let role = Role::parse(&check.record.role).ok_or_else(invalid)?;
        Ok(Principal { name: check.record.name, role: Some(role), teams: check.record.teams, via: Via::ApiToken })
    }

    /// Whether `caller` may take `action` on `job` (by name, its team read from the job file);
    /// a refusal is recorded in the audit trail and answered 403 (401 for nobody).
    pub(crate) async fn permit(&self, caller: &Caller, action: Action, job: Option<&str>) -> Result<(), Problem> {
        let team = job.and_then(|name| self.jobs.borrow().get(name).and_then(|job| job.team.clone()));
        let job = job.map(|name| (name, team.as_deref()));
        match identity::authorize(&caller.principal, action, job) {
            Ok(()) => Ok(()),
            Err(denied) => {
                if action != Action::Read {
                    self.record_refusal(caller.audit(action, job, AuditOutcome::Refused, denied.to_string())).await;
                }
                Err(match denied {
                    Denied::NotSignedIn(_) => Problem::unauthorized(&denied.to_string()),
                    _ => Problem::new(StatusCode::FORBIDDEN, "Forbidden", denied.to_string()),
                })
            }
        }
    }

    /// Whether `caller` may read job `name` (of the job file; a job only the ledger knows is no
    /// team's): always where reads are open.
    pub(crate) fn may_read(&self, caller: &Caller, name: &str) -> bool {
        let team = self.jobs.borrow().get(name).and_then(|job| job.team.clone());
        self.may_read_of(caller, name, team.as_deref())
    }

    /// Whether `caller` may read job `name` of `team`.
    pub(crate) fn may_read_of(&self, caller: &Caller, name: &str, team: Option<&str>) -> bool {
        !self.auth.reads_protected() || identity::authorize(&caller.principal, Action::Read, Some((name, team))).is_ok()
    }

    /// Record a refused attempt; a ledger that does not answer is logged (the refusal stands).
    async fn record_refusal(&self, record: AuditRecord) {
        if let Err(error) = self.store.record_audit(&record).await {
            tracing::warn!(%error, who = record.who, action = record.action, "could not record a refused attempt");
        }
    }
}

/// An error as RFC 9457 `application/problem+json`. A client's own mistake is explained in
/// `detail`; a failure inside tenure (database, rendering) shows only a correlation id, also in
/// the `X-Correlation-Id` header, and the cause goes to the log under the same id.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(skip)]
    status: StatusCode,
    title: &'static str,
    detail: String,
    #[serde(rename = "status")]
    code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
}

impl Problem {
    fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, title, detail: detail.into(), code: status.as_u16(), correlation_id: None }
    }

    /// A failure inside tenure: logged with a fresh correlation id; the client sees `detail`
    /// (which must hold no internal text) and the id.
    pub(crate) fn internal(
        status: StatusCode,
        title: &'static str,
        detail: &str,
        cause: &dyn std::fmt::Display,
    ) -> Problem {
        let id = correlation_id();
        tracing::warn!(correlation_id = %id, error = %cause, "{title}");
        Problem {
            status,
            title,
            detail: format!("{detail} (correlation id {id}; the cause is in the server's log)"),
            code: status.as_u16(),
            correlation_id: Some(id),
        }
    }

    pub(crate) fn unauthorized(detail: &str) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "Unauthorized", detail)
    }

    fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "Not Found", detail)
    }

    fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "Bad Request", detail)
    }

    pub(crate) fn database(error: sqlx::Error) -> Problem {
        Problem::internal(StatusCode::SERVICE_UNAVAILABLE, "Database Unavailable", "the ledger did not answer", &error)
    }
}

impl From<sqlx::Error> for Problem {
    fn from(error: sqlx::Error) -> Problem {
        Problem::database(error)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(&self)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"tenure\""));
        }
        self.add_correlation_header(&mut response);
        response
    }
}

impl Problem {
    fn add_correlation_header(&self, response: &mut Response) {
        if let Some(value) = self.correlation_id.as_deref().and_then(|id| HeaderValue::from_str(id).ok()) {
            response.headers_mut().insert("x-correlation-id", value);
        }
    }
}

/// 16 random hex digits: enough to find one failure in the log, nothing about the request.
fn correlation_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per process and varies per instance; mixing in
    // a counter and the time keeps ids distinct within a process.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_cache_keeps_a_bounded_number_of_pages_however_many_are_asked_for() {
        let cache = PageCache::default();
        for page in 1..=1_000 {
            cache.put(format!("overview:{page}"), Arc::from(format!("page {page}")));
        }
        let kept = cache.entries.lock().unwrap().len();
        assert!(kept <= PageCache::MAX_PAGES, "{kept} pages kept");
        // The newest is still served.
        assert_eq!(cache.get("overview:1000").as_deref(), Some("page 1000"));
    }
}
