//! The JSON API under `/api`. Reads return the same views the pages render; trigger, pause,
//! resume, backfill and cancel need a bearer token whose principal `identity::authorize` allows
//! them, and are recorded in the ledger with their audit entry, where the leader picks them up
//! (a follower takes them just the same, nothing is forwarded).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::gate::BODY_LIMIT;
use super::identity::{self, Action, Principal, Role};
use super::rejection::{Path, Query, Rejected};
use super::timeline;
use super::view::{self, ClusterView, JobView, RunBrief, RunView, TermView};
use super::{AppState, Caller, Problem};
use crate::config::{Concurrency, Job, TargetKind};
use crate::model::{Control, RunStatus, TriggerKind};
use crate::store::{
    AuditEntry, AuditFilter, AuditOutcome, BackfillRecord, CancelAnswer, CreateTokenError, NewToken, RunCursor,
    TokenRecord, TriggerOverrides, TriggerRecord, TriggerRequest,
};

mod admin;
mod backfill;

pub(super) use admin::{AuditQuery, TokenBody, audit_page, create_named_token, revoke_named_token};
pub(super) use backfill::BackfillView;

pub fn routes() -> Router<AppState> {
    let api = Router::new()
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{name}", get(job))
        .route("/api/jobs/{name}/runs", get(job_runs))
        .route("/api/jobs/{name}/next", get(job_next))
        .route("/api/timeline", get(timeline))
        .route("/api/jobs/{name}/trigger", post(trigger))
        .route("/api/jobs/{name}/pause", post(pause))
        .route("/api/jobs/{name}/resume", post(resume))
        .route("/api/runs/{id}", get(run))
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/cluster", get(cluster))
        .route("/api/whoami", get(whoami))
        .route("/api/terms", get(terms))
        .route("/api/openapi.json", get(openapi))
        .merge(admin::routes())
        .merge(backfill::routes())
        .route(
            "/api/{*rest}",
            axum::routing::any(|| async { Problem::not_found("no such API endpoint; see /api/openapi.json") }),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    // Wrong methods answer in the API's own error format too.
    api.method_not_allowed_fallback(|| async {
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", "see /api/openapi.json for the methods")
    })
}

/// One page of the jobs `caller` may read (`page` from 1), and how many there are in all.
pub(super) async fn jobs_page(
    state: &AppState,
    caller: &Caller,
    page: usize,
) -> Result<(Vec<JobView>, usize), Problem> {
    let jobs = state.jobs.borrow().clone();
    let visible: Vec<&Job> =
        jobs.jobs().iter().filter(|job| state.may_read_of(caller, job.name.as_str(), job.team.as_deref())).collect();
    let total = visible.len();
    // Saturating: a page past the last (however far) is empty, never an overflow.
    let offset = page.saturating_sub(1).saturating_mul(view::JOBS_PER_PAGE);
    let page = visible.into_iter().skip(offset).take(view::JOBS_PER_PAGE).collect();
    Ok((view::read_job_list(&state.store, page).await?, total))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct PageQuery {
    pub page: Option<usize>,
}

/// The job named `name` in the current job file, or 404 (also for a job `caller` may not read).
pub(super) async fn named_job(state: &AppState, caller: &Caller, name: &str) -> Result<JobView, Problem> {
    let jobs = state.jobs.borrow().clone();
    let job = jobs
        .get(name)
        .filter(|job| state.may_read_of(caller, name, job.team.as_deref()))
        .ok_or_else(|| Problem::not_found(format!("no job `{name}` in the job file")))?;
    let mut view = view::read_job(&state.store, job).await?;
    view.dependents = jobs
        .dependents(name)
        .iter()
        .filter(|job| state.may_read_of(caller, job.name.as_str(), job.team.as_deref()))
        .map(|job| job.name.to_string())
        .collect();
    Ok(view)
}

pub(super) async fn cluster_view(state: &AppState) -> Result<ClusterView, Problem> {
    // The leader's term is among the newest (when it began is all the view takes from it).
    let terms = state.store.recent_terms(view::TERMS_SHOWN as i64).await?;
    let loads = state.store.replica_loads().await?;
    let snapshot = state.cluster.borrow().clone();
    let hash = state.jobs.borrow().hash().to_owned();
    Ok(view::cluster(&snapshot, &terms, &loads, &hash, &state.node_id))
}

pub(super) async fn terms_view(state: &AppState) -> Result<Vec<TermView>, Problem> {
    // One more than shown: the oldest shown term's hand-over is measured from the one before it.
    let records = state.store.recent_terms(view::TERMS_SHOWN as i64 + 1).await?;
    let current = state.cluster.borrow().leader.as_ref().map(|(_, term)| *term);
    let mut views = view::terms(&records, current);
    views.truncate(view::TERMS_SHOWN);
    Ok(views)
}

/// A page of one job's ledger.
#[derive(Debug, Serialize)]
pub(super) struct RunPage {
    pub runs: Vec<RunBrief>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RunQuery {
    pub status: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

pub(super) const PAGE_DEFAULT: i64 = 50;
const PAGE_MAX: i64 = 500;

pub(super) async fn run_page(
    state: &AppState,
    caller: &Caller,
    name: &str,
    query: &RunQuery,
) -> Result<RunPage, Problem> {
    if !state.may_read(caller, name) {
        return Err(Problem::not_found(format!("no job `{name}` in the job file or the ledger")));
    }
    if state.jobs.borrow().get(name).is_none() && state.store.job_runs(name, None, None, 1).await?.is_empty() {
        return Err(Problem::not_found(format!("no job `{name}` in the job file or the ledger")));
    }
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(RunStatus::parse(text).ok_or_else(|| {
            let all: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
            Problem::bad_request(format!("unknown status `{text}`; expected one of {}", all.join(", ")))
        })?),
    };
    let cursor = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(text) => Some(RunCursor::decode(text).ok_or_else(|| Problem::bad_request("malformed cursor"))?),
    };
    let limit = query.limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(Problem::bad_request(format!("limit must be between 1 and {PAGE_MAX}")));
    }
    // One more row than asked tells whether there is a next page.
    let mut runs = state.store.job_runs(name, status, cursor, limit + 1).await?;
    let more = runs.len() > limit as usize;
    runs.truncate(limit as usize);
    let next_cursor = if more { runs.last().map(|run| RunCursor::after(run).encode()) } else { None };
    Ok(RunPage { runs: runs.iter().map(RunBrief::of).collect(), next_cursor })
}

pub(super) async fn run_view(state: &AppState, caller: &Caller, id: i64) -> Result<RunView, Problem> {
    let run = state
        .store
        .run(id)
        .await?
        .filter(|run| state.may_read(caller, &run.job))
        .ok_or_else(|| Problem::not_found(format!("no run {id}")))?;
    let notifications = state.store.run_notifications(id).await?;
    let request = match run.trigger {
        TriggerKind::Manual => state.store.trigger_of_run(id).await?,
        TriggerKind::Schedule | TriggerKind::Backfill | TriggerKind::Upstream => None,
    };
    let jobs = state.jobs.borrow().clone();
    let job = jobs.get(&run.job);
    // Linked by (job, slot) as the job file in force says: a released run's identity is the
    // slot of the runs that released it.
    let awaited: Vec<String> = match (run.trigger, job) {
        (TriggerKind::Upstream, Some(job)) => job.after.iter().map(|up| up.job.to_string()).collect(),
        _ => Vec::new(),
    };
    let waiting: Vec<String> = jobs.dependents(&run.job).iter().map(|job| job.name.to_string()).collect();
    let linked = |rows: Vec<crate::store::RunRecord>, upstream_only: bool| -> Vec<view::LinkedRun> {
        rows.into_iter()
            .filter(|row| !upstream_only || row.trigger == TriggerKind::Upstream)
            .map(|row| view::LinkedRun { id: row.id, job: row.job, status: row.status })
            .collect()
    };
    let released_by = linked(state.store.slot_runs(&awaited, run.slot).await?, false);
    let released = linked(state.store.slot_runs(&waiting, run.slot).await?, true);
    let mut view = RunView::of(run, notifications, request, job);
    view.released_by = released_by;
    view.released = released;
    Ok(view)
}

/// Record a manual trigger. The same key twice for one job is one trigger (a double click fires
/// once); the same key for another job is that job's own trigger. Without a key, a fresh one.
/// The run's `requested_by` is the caller's name, as the web decided it (`identity`).
pub(super) async fn request_trigger(
    state: &AppState,
    caller: &Caller,
    name: &str,
    key: Option<&str>,
    overrides: &TriggerOverrides,
) -> Result<TriggerRecord, Problem> {
    state.permit(caller, Action::Trigger, Some(name)).await?;
    let Some(job) = state.jobs.borrow().get(name).cloned() else {
        return Err(Problem::not_found(format!("no job `{name}` in the job file")));
    };
    checked_overrides(overrides, &job)?;
    let key = match key {
        Some(key) => checked_key(key)?.to_owned(),
        None => new_key(),
    };
    let by = &caller.principal.name;
    let request = TriggerRequest { job: name, idempotency_key: &key, by, requested_at: Utc::now(), overrides };
    let detail = overrides.reason.as_deref().map_or_else(String::new, |reason| format!("reason: {reason}"));
    let audit = caller.audit(Action::Trigger, Some((name, job.team.as_deref())), AuditOutcome::Done, detail);
    let mut trigger = state.store.request_trigger(&request, &audit).await?;
    trigger.overrides.env = view::shown_env(std::mem::take(&mut trigger.overrides.env), Some(&job));
    Ok(trigger)
}

/// Ask for run `id` to be cancelled as `caller` (who may: `permit`, on the run's job): recorded
/// on its row with who asked (the caller's name, and `from`: `api` or `dashboard`) and why, for
/// the leader to act on under the fence, and audited in the same transaction. 404 for an
/// unknown run (or one `caller` may not read), 409 for one that has ended.
pub(super) async fn request_cancel(
    state: &AppState,
    caller: &Caller,
    id: i64,
    from: &str,
    reason: Option<&str>,
) -> Result<(), Problem> {
    let job = state
        .store
        .run(id)
        .await?
        .filter(|run| state.may_read(caller, &run.job))
        .map(|run| run.job)
        .ok_or_else(|| Problem::not_found(format!("no run {id}")))?;
    state.permit(caller, Action::Cancel, Some(&job)).await?;
    let reason = reason.map(str::trim).filter(|reason| !reason.is_empty());
    if reason.is_some_and(|reason| reason.len() > REASON_MAX) {
        return Err(Problem::bad_request(format!("`reason` is over {REASON_MAX} bytes")));
    }
    let by = &caller.principal.name;
    let why = match reason {
        Some(reason) => format!("cancelled by {by} ({from}): {reason}"),
        None => format!("cancelled by {by} ({from})"),
    };
    let team = state.jobs.borrow().get(&job).and_then(|job| job.team.clone());
    let mut audit = caller.audit(Action::Cancel, Some((&job, team.as_deref())), AuditOutcome::Done, why.clone());
    audit.target = Some(format!("run {id}"));
    match state.store.cancel_run(id, &why, &audit).await? {
        CancelAnswer::Asked { .. } => Ok(()),
        CancelAnswer::NoSuchRun => Err(Problem::not_found(format!("no run {id}"))),
        CancelAnswer::Ended(status) => Err(Problem::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("run {id} has ended ({}); only a running run can be cancelled", status.as_str()),
        )),
    }
}

/// The longest reason, in bytes.
const REASON_MAX: usize = 1_000;

/// Overrides a run can take: variables (not tenure's own `TENURE_*`, which a run gets from
/// tenure alone), for a job that has an environment, and only those its job file lists under
/// `overrides` (which never lists a loader or shell start-up variable).
fn checked_overrides(overrides: &TriggerOverrides, job: &Job) -> Result<(), Problem> {
    if !overrides.env.is_empty() && job.target.kind() == TargetKind::Http {
        return Err(Problem::bad_request("`env`: an HTTP job has no environment to override"));
    }
    for name in overrides.env.keys() {
        if !crate::config::is_variable_name(name) {
            return Err(Problem::bad_request(format!(
                "`env`: `{name}` is not a variable name (letters, digits and `_`, not starting with a digit)"
            )));
        }
        if name.starts_with("TENURE_") {
            return Err(Problem::bad_request(format!(
                "`env`: `{name}` is reserved: tenure sets the TENURE_* variables of a run itself"
            )));
        }
        if !job.overrides.contains(name) {
            let allowed = match job.overrides.as_slice() {
                [] => "no variable (it lists none under `overrides`)".to_owned(),
                names => format!("only {} (its `overrides`)", names.join(", ")),
            };
            return Err(Problem::bad_request(format!(
                "`env`: `{name}` may not be set: job `{}` lets a manual run set {allowed}",
                job.name
            )));
        }
    }
    if overrides.env.values().any(|value| value.contains('\0')) {
        return Err(Problem::bad_request("`env`: a value may not contain a NUL character"));
    }
    if overrides.reason.as_ref().is_some_and(|reason| reason.len() > REASON_MAX) {
        return Err(Problem::bad_request(format!("`reason`: at most {REASON_MAX} bytes")));
    }
    Ok(())
}

/// The longest idempotency key, in characters.
const KEY_MAX: usize = 255;

/// An idempotency key is 1 to `KEY_MAX` visible ASCII characters: what any client sends in a
/// header unchanged, stored and shown exactly as sent. Anything else is refused rather than
/// altered, or a retry with the same key would not find its trigger.
fn checked_key(key: &str) -> Result<&str, Problem> {
    let fault = if key.is_empty() {
        "it is empty".to_owned()
    } else if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
        "it has a space, a control character or a non-ASCII character".to_owned()
    } else if key.len() > KEY_MAX {
        format!("it has {} characters", key.len())
    } else {
        return Ok(key);
    };
    Err(Problem::bad_request(key_rule(&fault)))
}

fn key_rule(fault: &str) -> String {
    format!("an idempotency key is 1 to {KEY_MAX} visible ASCII characters (`!` to `~`, no spaces); {fault}")
}

/// Pause or resume job `name` as `caller` (who may: `permit`), audited.
pub(super) async fn set_control(
    state: &AppState,
    caller: &Caller,
    name: &str,
    control: Control,
) -> Result<(), Problem> {
    let action = match control {
        Control::Pause => Action::Pause,
        Control::Resume => Action::Resume,
    };
    state.permit(caller, action, Some(name)).await?;
    let Some((paused_in_file, team)) = state.jobs.borrow().get(name).map(|job| (job.paused, job.team.clone())) else {
        return Err(Problem::not_found(format!("no job `{name}` in the job file")));
    };
    let job = Some((name, team.as_deref()));
    if control == Control::Resume && !paused_in_file && !state.store.job_controls().await?.contains_key(name) {
        // Nothing pauses the job: the resume changes nothing, and recording it would stamp a
        // resume instant that excuses the job's slots before it. The attempt is audited alone.
        let audit = caller.audit(action, job, AuditOutcome::Done, "not paused: nothing changed");
        state.store.record_audit(&audit).await?;
        return Ok(());
    }
    let audit = caller.audit(action, job, AuditOutcome::Done, "");
    Ok(state.store.set_control(name, control, &audit).await?)
}

/// A fresh idempotency key: unique per process and instant.
pub(super) fn new_key() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!("{nanos:x}-{:x}-{:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// `GET /api/jobs?page=N`: 100 jobs a page; `X-Total-Count` says how many there are.
async fn jobs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<PageQuery>,
) -> Result<impl IntoResponse, Problem> {
    let (jobs, total) = jobs_page(&state, &caller, query.page.unwrap_or(1)).await?;
    Ok(([("x-total-count", total.to_string())], Json(jobs)))
}

async fn job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<JobView>, Problem> {
    Ok(Json(named_job(&state, &caller, &name).await?))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct NextQuery {
    pub count: Option<usize>,
}

/// `GET /api/jobs/{name}/next`: a job's next fire times, in its zone and in UTC.
#[derive(Debug, Clone, Serialize)]
pub(super) struct NextView {
    pub job: String,
    pub timezone: String,
    pub description: String,
    /// Paused now (by the file or an operator): none of `fires` fires until it is resumed.
    pub paused: bool,
    pub fires: Vec<timeline::Fire>,
}

/// The jobs paused now: by an operator, or by the file unless an operator resumed them.
pub(super) async fn paused_jobs(state: &AppState, jobs: &crate::config::JobSet) -> Result<HashSet<String>, Problem> {
    let controls = state.store.job_controls().await?;
    Ok(jobs
        .jobs()
        .iter()
        .filter(|job| controls.get(job.name.as_str()).map_or(job.paused, |control| control.paused))
        .map(|job| job.name.as_str().to_owned())
        .collect())
}

/// Job `name`'s next `count` fire times, or 404 (also for a job `caller` may not read).
pub(super) async fn next_view(
    state: &AppState,
    caller: &Caller,
    name: &str,
    count: usize,
) -> Result<NextView, Problem> {
    if count == 0 || count > timeline::MAX_UPCOMING {
        return Err(Problem::bad_request(format!("count is 1 to {}", timeline::MAX_UPCOMING)));
    }
    let jobs = state.jobs.borrow().clone();
    let job = jobs
        .get(name)
        .filter(|job| state.may_read_of(caller, name, job.team.as_deref()))
        .ok_or_else(|| Problem::not_found(format!("no job `{name}` in the job file")))?;
    let paused = paused_jobs(state, &jobs).await?.contains(name);
    Ok(NextView {
        job: name.to_owned(),
        timezone: job.schedule.timezone().name().to_owned(),
        description: job.schedule.describe(),
        paused,
        fires: timeline::upcoming(&job.schedule, Utc::now(), count),
    })
}

async fn job_next(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<NextQuery>,
) -> Result<Json<NextView>, Problem> {
    Ok(Json(next_view(&state, &caller, &name, query.count.unwrap_or(timeline::UPCOMING)).await?))
}

/// The timeline of the current job file from now, of the jobs `caller` may read, computed off
/// the async runtime (bounded: `timeline::HOUR_CAP`).
pub(super) async fn timeline_view(state: &AppState, caller: &Caller) -> Result<timeline::Timeline, Problem> {
    let jobs = state.jobs.borrow().clone();
    let jobs = if state.auth.reads_protected() {
        Arc::new(jobs.only(|job| state.may_read_of(caller, job.name.as_str(), job.team.as_deref())))
    } else {
        jobs
    };
    let paused = paused_jobs(state, &jobs).await?;
    tokio::task::spawn_blocking(move || timeline::timeline(&jobs, &paused, Utc::now())).await.map_err(|error| {
        Problem::internal(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", "the timeline failed", &error)
    })
}

async fn timeline(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<timeline::Timeline>, Problem> {
    Ok(Json(timeline_view(&state, &caller).await?))
}

async fn job_runs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<RunQuery>,
) -> Result<Json<RunPage>, Problem> {
    Ok(Json(run_page(&state, &caller, &name, &query).await?))
}

async fn run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<i64>, Rejected>,
) -> Result<Json<RunView>, Problem> {
    let Path(id) = id.map_err(|_| Problem::bad_request("a run id is a number"))?;
    Ok(Json(run_view(&state, &caller, id).await?))
}

async fn cluster(State(state): State<AppState>) -> Result<Json<ClusterView>, Problem> {
    Ok(Json(cluster_view(&state).await?))
}

async fn terms(State(state): State<AppState>) -> Result<Json<Vec<TermView>>, Problem> {
    Ok(Json(terms_view(&state).await?))
}

/// A trigger's optional body: `{"idempotency_key": "..."}` (or the `Idempotency-Key` header),
/// and what this run alone gets: `env` overrides, a `reason`, and a `concurrency` policy other
/// than the job's (explicitly; recorded with the run).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    idempotency_key: Option<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    reason: Option<String>,
    concurrency: Option<String>,
    /// Whether the run releases the runs waiting for its job (`after:`), as a scheduled run does.
    #[serde(default)]
    cascade: bool,
}

impl TriggerBody {
    fn overrides(self) -> Result<TriggerOverrides, Problem> {
        let concurrency = match self.concurrency.as_deref() {
            None => None,
            Some(word) => {
                Some(Concurrency::NAMES.iter().find(|(name, _)| *name == word).map(|(_, value)| *value).ok_or_else(
                    || {
                        let words: Vec<&str> = Concurrency::NAMES.iter().map(|(name, _)| *name).collect();
                        Problem::bad_request(format!("`concurrency`: `{word}` is not one of {}", words.join(", ")))
                    },
                )?)
            }
        };
        let reason = self.reason.filter(|reason| !reason.trim().is_empty());
        Ok(TriggerOverrides { env: self.env, reason, concurrency, cascade: self.cascade })
    }
}

async fn trigger(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, Problem> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Payload Too Large",
            format!("the body is over {BODY_LIMIT} bytes"),
        ),
        _ => Problem::bad_request(rejection.body_text()),
    })?;
    let mut parsed: TriggerBody = if body.iter().all(u8::is_ascii_whitespace) {
        TriggerBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            Problem::bad_request(format!(
                "expected a JSON object such as {{\"idempotency_key\": \"...\", \"env\": {{\"NAME\": \"value\"}}, \
                 \"reason\": \"...\", \"concurrency\": \"allow\"}}: {error}"
            ))
        })?
    };
    let header = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| Problem::bad_request(key_rule("it has a non-ASCII byte")))?),
    };
    let key = header.map(str::to_owned).or(parsed.idempotency_key.take());
    let overrides = parsed.overrides()?;
    let trigger = request_trigger(&state, &caller, &name, key.as_deref(), &overrides).await?;
    Ok((StatusCode::ACCEPTED, Json(trigger)))
}

/// A cancel's optional body: `{"reason": "..."}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
}

/// `POST /api/runs/{id}/cancel`: 202 with the run as it is now; the leader stops it (here or on
/// the replica executing it) and records it `killed` with who asked and why.
async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, Problem> {
    let body = body.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let parsed: CancelBody = if body.iter().all(u8::is_ascii_whitespace) {
        CancelBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            Problem::bad_request(format!("expected a JSON object such as {{\"reason\": \"...\"}}: {error}"))
        })?
    };
    request_cancel(&state, &caller, id, "api", parsed.reason.as_deref()).await?;
    Ok((StatusCode::ACCEPTED, Json(run_view(&state, &caller, id).await?)))
}

#[derive(Serialize)]
struct Paused {
    job: String,
    paused: bool,
}

async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Paused>, Problem> {
    set_control(&state, &caller, &name, Control::Pause).await?;
    Ok(Json(Paused { job: name, paused: true }))
}

async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Paused>, Problem> {
    set_control(&state, &caller, &name, Control::Resume).await?;
    Ok(Json(Paused { job: name, paused: false }))
}

/// `GET /api/whoami`: the caller as the web sees it (name, role, teams, how authenticated).
async fn whoami(Extension(caller): Extension<Caller>) -> Json<Principal> {
    Json(caller.principal)
}

async fn openapi() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// The OpenAPI 3.1 description of the routes above (a test checks every route is in it).
pub const OPENAPI: &str = include_str!("openapi.json");
