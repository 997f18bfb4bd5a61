//! The dashboard: server-rendered pages (askama templates in `templates/`), complete without
//! JavaScript; `static/live.js` refreshes their `#live` section in place. Forms post to routes
//! here, which check basic auth, that the request is same-origin, and the anti-forgery value bound
//! to the browser's session cookie, record the control and redirect back.

use std::fmt::Write as _;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::api::{self, RunQuery};
use super::identity::{self, Action};
use super::rejection::{Form, Path, Query};
use super::view::{self, ClusterView, JobView, RunBrief, RunView, STRIP, ago, human_ms, in_zone, utc};
use super::{AppState, BrowserSession, Caller, Problem};
use crate::model::{Control, RunStatus, TriggerKind};
use crate::store::AuditOutcome;
use crate::store::TriggerOverrides;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/jobs/{name}", get(job))
        .route("/jobs/{name}/{action}", post(control))
        .route("/runs/{id}", get(run))
        .route("/terms", get(terms))
        .route("/signin", get(signin))
        .route("/audit", get(audit))
        .route("/tokens", get(tokens).post(create_token))
        .route("/tokens/{id}/revoke", post(revoke_token))
        .route("/static/app.css", get(|| async { asset("text/css; charset=utf-8", include_str!("static/app.css")) }))
        .route(
            "/static/live.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_str!("static/live.js")) }),
        )
        .method_not_allowed_fallback(super::rejection::wrong_page_method)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

/// A page failed: the problem, as a small HTML page.
pub(super) struct PageError(pub(super) Problem);

impl From<Problem> for PageError {
    fn from(problem: Problem) -> PageError {
        PageError(problem)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> PageError {
        PageError(Problem::database(error))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let problem = self.0;
        let body = format!(
            "<!doctype html><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
             <link rel=stylesheet href=/static/app.css><main><h1>{} {}</h1><p>{}</p><p><a href=/>Overview</a></p></main>",
            problem.code,
            problem.title,
            html_escape(&problem.detail)
        );
        let mut response = (problem.status, Html(body)).into_response();
        if problem.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Basic realm=\"tenure\"".parse().unwrap());
        }
        problem.add_correlation_header(&mut response);
        response
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn render(template: &impl Template) -> Result<Html<String>, PageError> {
    template.render().map(Html).map_err(|error| {
        PageError(Problem::internal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "the page could not be rendered",
            &error,
        ))
    })
}

struct Layout {
    title: String,
    nav: &'static str,
    node: String,
    /// "node-1 · term 42" while someone leads.
    leader: Option<String>,
}

impl Layout {
    fn new(state: &AppState, title: impl Into<String>, nav: &'static str) -> Layout {
        let leader = state.cluster.borrow().leader.as_ref().map(|(node, term)| format!("{node} · term {term}"));
        Layout { title: title.into(), nav, node: state.node_id.clone(), leader }
    }
}

fn or_dash(text: Option<String>) -> String {
    text.unwrap_or_else(|| "–".to_owned())
}

fn result_of(run: &RunBrief) -> String {
    let mut parts = Vec::new();
    if let Some(code) = run.exit_code {
        parts.push(format!("exit {code}"));
    }
    if let Some(status) = run.http_status {
        parts.push(format!("HTTP {status}"));
    }
    if let Some(error) = &run.error {
        parts.push(error.clone());
    }
    parts.join(" · ")
}

struct ReplicaRow {
    node: String,
    version: String,
    config_hash: String,
    address: String,
    started: String,
    last_seen: String,
    live: bool,
    leader: bool,
    /// `--tags`, or `–`.
    tags: String,
    /// Runs assigned or running / `--max-runs`, or `–` before it advertised.
    load: String,
}

struct Cell {
    id: i64,
    status: RunStatus,
    title: String,
}

struct JobRow {
    name: String,
    paused: bool,
    kind: &'static str,
    schedule: String,
    description: String,
    timezone: String,
    next_local: String,
    next_utc: String,
    last_status: Option<RunStatus>,
    last_duration: String,
    strip: Vec<Cell>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    cluster: ClusterView,
    leader_since: Option<String>,
    replicas: Vec<ReplicaRow>,
    jobs: Vec<JobRow>,
    strip: usize,
    /// "1-100 of 1000"
    shown: String,
    previous_page: Option<String>,
    next_page: Option<String>,
}

fn next_times(job: &JobView) -> (String, String) {
    if job.paused {
        return ("paused".to_owned(), String::new());
    }
    match job.next_utc {
        Some(next) => {
            let tz: chrono_tz::Tz = job.timezone.parse().unwrap_or(chrono_tz::UTC);
            if tz == chrono_tz::UTC { (utc(next), String::new()) } else { (in_zone(next, tz), utc(next)) }
        }
        None => ("never".to_owned(), String::new()),
    }
}

async fn overview(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<api::PageQuery>,
) -> Result<Html<String>, PageError> {
    let page = query.page.unwrap_or(1).max(1);
    // Scoped reads: one rendering per scope (role and teams), never another scope's jobs.
    let scope = if state.auth.reads_protected() {
        format!("{:?}:{}", caller.principal.role, caller.principal.teams.join(","))
    } else {
        String::new()
    };
    let key = format!("overview:{page}:{scope}");
    if let Some(cached) = state.pages.get(&key) {
        return Ok(Html(cached.to_string()));
    }
    let _rendering = state.pages.rendering.lock().await;
    if let Some(cached) = state.pages.get(&key) {
        return Ok(Html(cached.to_string()));
    }
    let cluster = api::cluster_view(&state).await?;
    let (jobs, total) = api::jobs_page(&state, &caller, page).await?;
    let pages = total.div_ceil(view::JOBS_PER_PAGE).max(1);
    let skipped = (page - 1).saturating_mul(view::JOBS_PER_PAGE);
    let shown = format!(
        "{}-{} of {total}",
        skipped.saturating_add(1).min(total),
        skipped.saturating_add(jobs.len()).min(total)
    );
    let previous_page = (page > 1).then(|| format!("/?page={}", page - 1));
    let next_page = (page < pages).then(|| format!("/?page={}", page + 1));
    let now = Utc::now();
    let replicas = cluster
        .replicas
        .iter()
        .map(|r| ReplicaRow {
            node: r.node.clone(),
            version: r.version.clone(),
            config_hash: r.config_hash.clone(),
            address: r.address.clone(),
            started: utc(r.started_at),
            last_seen: if r.live { "now".to_owned() } else { ago(r.last_seen, now) },
            live: r.live,
            leader: r.leader,
            tags: r
                .execution
                .as_ref()
                .filter(|e| !e.tags.is_empty())
                .map_or_else(|| "–".to_owned(), |e| e.tags.join(", ")),
            load: r.execution.as_ref().map_or_else(|| "–".to_owned(), |e| format!("{} / {}", e.load, e.max_runs)),
        })
        .collect();
    let rows = jobs
        .iter()
        .map(|job| {
            let (next_local, next_utc) = next_times(job);
            JobRow {
                name: job.name.clone(),
                paused: job.paused,
                kind: job.kind,
                schedule: job.schedule.clone(),
                description: job.description.clone(),
                timezone: job.timezone.clone(),
                next_local,
                next_utc,
                last_status: job.last.as_ref().map(|run| run.status),
                last_duration: job.last.as_ref().and_then(|run| run.duration_ms).map(human_ms).unwrap_or_default(),
                strip: job
                    .recent
                    .iter()
                    .map(|run| Cell {
                        id: run.id,
                        status: run.status,
                        title: format!("{} · {}", utc(run.slot), run.status),
                    })
                    .collect(),
            }
        })
        .collect();
    let leader_since = cluster.leader.as_ref().and_then(|leader| leader.since).map(utc);
    let html = render(&OverviewPage {
        layout: Layout::new(&state, "Overview", "overview"),
        cluster,
        leader_since,
        replicas,
        jobs: rows,
        strip: STRIP,
        shown,
        previous_page,
        next_page,
    })?;
    state.pages.put(key, Arc::from(html.0.as_str()));
    Ok(html)
}

struct RunRow {
    id: i64,
    slot: String,
    status: RunStatus,
    trigger: TriggerKind,
    term: i64,
    node: String,
    attempt: i32,
    lateness: String,
    duration: String,
    result: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    layout: Layout,
    job: JobView,
    notice: Option<&'static str>,
    /// The actions the caller may take (`identity::authorize`): only those are shown.
    may_trigger: bool,
    may_pause: bool,
    may_resume: bool,
    /// "alice (operator of payments)" once signed in.
    signed_in: Option<String>,
    csrf: String,
    key: String,
    next_local: String,
    next_utc: String,
    timeout: String,
    deadline: String,
    chart: String,
    statuses: Vec<&'static str>,
    status_filter: String,
    runs: Vec<RunRow>,
    next_page: Option<String>,
    /// The job's newest backfills and their progress.
    backfills: Vec<api::BackfillView>,
}

#[derive(Deserialize)]
struct JobQuery {
    status: Option<String>,
    cursor: Option<String>,
    done: Option<String>,
}

async fn job(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<JobQuery>,
) -> Result<Response, PageError> {
    let job = api::named_job(&state, &caller, &name).await?;
    let status_filter = query.status.clone().unwrap_or_default();
    let page = api::run_page(
        &state,
        &caller,
        &name,
        &RunQuery { status: query.status.clone(), cursor: query.cursor.clone(), limit: Some(api::PAGE_DEFAULT) },
    )
    .await?;
    // The chart shows the newest finished runs whatever the filter.
    let recent = state.store.job_runs(&name, None, None, 60).await?;
    let chart = duration_chart(&recent.iter().map(RunBrief::of).collect::<Vec<_>>());
    let next_page = page.next_cursor.as_ref().map(|cursor| {
        let status = if status_filter.is_empty() { String::new() } else { format!("status={status_filter}&") };
        format!("/jobs/{name}?{status}cursor={cursor}")
    });
    let (next_local, next_utc) = next_times(&job);
    let session = BrowserSession::of(&headers);
    let notice = match query.done.as_deref() {
        Some("trigger") => Some("Triggered: the leader runs it within a moment; it appears below as a manual run."),
        Some("pause") => Some("Paused: no slot fires until it is resumed."),
        Some("resume") => Some("Resumed: the next slot fires on schedule."),
        _ => None,
    };
    let runs = page
        .runs
        .iter()
        .map(|run| RunRow {
            id: run.id,
            slot: utc(run.slot),
            status: run.status,
            trigger: run.trigger,
            term: run.term,
            node: run.node.clone(),
            attempt: run.attempt,
            lateness: or_dash(run.lateness_ms.map(human_ms)),
            duration: or_dash(run.duration_ms.map(human_ms)),
            result: result_of(run),
        })
        .collect();
    let may = |action| {
        caller.principal.is_signed_in()
            && identity::authorize(&caller.principal, action, Some((&job.name, job.team.as_deref()))).is_ok()
    };
    let page = render(&JobPage {
        layout: Layout::new(&state, job.name.clone(), "job"),
        notice,
        may_trigger: may(Action::Trigger),
        may_pause: may(Action::Pause),
        may_resume: may(Action::Resume),
        signed_in: signed_in(&caller),
        csrf: state.auth.csrf_for(&session).unwrap_or_default(),
        key: api::new_key(),
        next_local,
        next_utc,
        timeout: view::seconds(std::time::Duration::from_secs(job.timeout_seconds)),
        deadline: view::seconds(std::time::Duration::from_secs(job.starting_deadline_seconds)),
        chart,
        statuses: RunStatus::ALL.iter().map(|status| status.as_str()).collect(),
        status_filter,
        runs,
        next_page,
        backfills: state.store.backfills(Some(&name), 5).await?.into_iter().map(api::BackfillView::of).collect(),
        job,
    })?;
    let mut response = page.into_response();
    if let Some(cookie) = session.set_cookie(&state.auth) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// Bars of the newest finished runs' durations, oldest on the left, as inline SVG.
fn duration_chart(runs: &[RunBrief]) -> String {
    let finished: Vec<&RunBrief> = runs.iter().filter(|run| run.duration_ms.is_some()).rev().collect();
    if finished.is_empty() {
        return "<p><small>No finished runs yet.</small></p>".to_owned();
    }
    let (width, height, top) = (600.0, 120.0, 14.0);
    let longest = finished.iter().filter_map(|run| run.duration_ms).max().unwrap_or(1).max(1) as f64;
    let slot = width / finished.len().max(20) as f64;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {width} {}\" role=\"img\" aria-label=\"durations of the last {} runs\" width=\"100%\" preserveAspectRatio=\"none\" class=\"chart\">",
        height + top,
        finished.len()
    );
    let _ = write!(svg, "<text x=\"0\" y=\"10\">longest {}</text>", html_escape(&human_ms(longest as i64)));
    for (index, run) in finished.iter().enumerate() {
        let ms = run.duration_ms.unwrap_or(0) as f64;
        let bar = (ms / longest * height).max(1.0);
        let _ = write!(
            svg,
            "<rect class=\"bar {}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\"><title>{} · {}</title></rect>",
            run.status,
            index as f64 * slot + 1.0,
            top + height - bar,
            (slot - 2.0).max(1.0),
            bar,
            utc(run.slot),
            html_escape(&human_ms(ms as i64)),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[derive(Deserialize)]
struct ControlForm {
    #[serde(default)]
    csrf: String,
    key: Option<String>,
}

async fn control(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<ControlForm>,
) -> Result<Redirect, PageError> {
    form_checked(&state, &caller, &headers, &form.csrf, action_named(&action)).await?;
    match action.as_str() {
        "trigger" => {
            // The page's form always carries a fresh key; an empty one is taken as none.
            let key = form.key.as_deref().filter(|key| !key.is_empty());
            api::request_trigger(&state, &caller, &name, key, &TriggerOverrides::default()).await?;
        }
        "pause" => api::set_control(&state, &caller, &name, Control::Pause).await?,
        "resume" => api::set_control(&state, &caller, &name, Control::Resume).await?,
        _ => return Err(Problem::not_found(format!("no action `{action}`")).into()),
    }
    Ok(Redirect::to(&format!("/jobs/{name}?done={action}")))
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    layout: Layout,
    run: RunView,
    running: bool,
    slot: String,
    claimed: String,
    start_recorded: String,
    began: String,
    finished: String,
    lateness: String,
    duration: String,
    result: String,
    /// When it was to start, when that was not its slot (jitter, backfill).
    planned: Option<String>,
}

async fn run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Result<Html<String>, PageError> {
    let run = api::run_view(&state, &caller, id).await?;
    let tz: chrono_tz::Tz =
        state.jobs.borrow().get(&run.job).map(|job| job.schedule.timezone()).unwrap_or(chrono_tz::UTC);
    let with_zone = |instant: DateTime<Utc>| {
        if tz == chrono_tz::UTC { utc(instant) } else { format!("{} ({})", utc(instant), in_zone(instant, tz)) }
    };
    let running = run.brief.status == RunStatus::Running;
    render(&RunPage {
        layout: Layout::new(&state, format!("{} run {}", run.job, run.brief.id), "run"),
        running,
        slot: with_zone(run.brief.slot),
        claimed: utc(run.claimed_at),
        start_recorded: or_dash(run.start_recorded_at.map(utc)),
        began: match (run.began_at, run.start_recorded_at, running) {
            (Some(began), _, _) => utc(began),
            // Written with the outcome: nothing is recorded at the slot.
            (None, Some(_), true) => "known when it ends".to_owned(),
            (None, _, _) => "–".to_owned(),
        },
        finished: or_dash(run.finished_at.map(utc)),
        lateness: or_dash(run.brief.lateness_ms.map(human_ms)),
        duration: match (run.brief.duration_ms, run.start_recorded_at, running) {
            (Some(ms), _, _) => human_ms(ms),
            (None, Some(recorded), true) => {
                format!("{} so far, from its start recorded", human_ms((Utc::now() - recorded).num_milliseconds()))
            }
            (None, _, _) => "–".to_owned(),
        },
        result: or_dash(Some(result_of(&run.brief)).filter(|text| !text.is_empty())),
        planned: (run.planned_at != run.brief.slot).then(|| with_zone(run.planned_at)),
        run,
    })
}

struct TermRow {
    term: i64,
    current: bool,
    node: String,
    started: String,
    led_for: String,
    handover: String,
}

#[derive(Template)]
#[template(path = "terms.html")]
struct TermsPage {
    layout: Layout,
    timeline: String,
    terms: Vec<TermRow>,
}

async fn terms(State(state): State<AppState>) -> Result<Html<String>, PageError> {
    let terms = api::terms_view(&state).await?;
    let now = Utc::now();
    // Newest first: a term lasted until the next one started (or until now, for the current one).
    let mut rows = Vec::new();
    let mut spans = Vec::new();
    let mut until = now;
    for term in &terms {
        let end = if term.current { now } else { term.last_seen_at.unwrap_or(until).min(until) };
        spans.push((term.term, term.node.clone(), term.started_at, end));
        rows.push(TermRow {
            term: term.term,
            current: term.current,
            node: term.node.clone(),
            started: utc(term.started_at),
            led_for: human_ms((end - term.started_at).num_milliseconds()),
            handover: or_dash(term.handover_ms.map(human_ms)),
        });
        until = term.started_at;
    }
    spans.truncate(30);
    render(&TermsPage { layout: Layout::new(&state, "Terms", "terms"), timeline: timeline(&spans, now), terms: rows })
}

/// Who led when, as bars on a time axis (newest 30 terms).
fn timeline(spans: &[(i64, String, DateTime<Utc>, DateTime<Utc>)], now: DateTime<Utc>) -> String {
    let Some(first) = spans.iter().map(|span| span.2).min() else {
        return "<p><small>No terms yet.</small></p>".to_owned();
    };
    let total = (now - first).num_milliseconds().max(1) as f64;
    let (width, row) = (600.0, 18.0);
    let mut svg = format!(
        "<svg viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" class=\"timeline\" role=\"img\" aria-label=\"leadership timeline\">",
        height = row * spans.len() as f64 + 16.0
    );
    for (index, (term, node, start, end)) in spans.iter().rev().enumerate() {
        let x = (*start - first).num_milliseconds() as f64 / total * (width - 150.0) + 150.0;
        let w = ((*end - *start).num_milliseconds() as f64 / total * (width - 150.0)).max(2.0);
        let y = index as f64 * row;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{:.1}\">{} · {}</text><rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" rx=\"3\"><title>term {} · {} · {} – {}</title></rect>",
            y + 13.0,
            term,
            html_escape(node),
            y + 3.0,
            row - 6.0,
            term,
            html_escape(node),
            utc(*start),
            utc(*end)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"150\" y=\"{:.1}\">{}</text><text x=\"{width}\" y=\"{:.1}\" text-anchor=\"end\">now</text></svg>",
        row * spans.len() as f64 + 13.0,
        utc(first),
        row * spans.len() as f64 + 13.0
    );
    svg
}

/// Signed in by `gate` (basic auth with a token as the password); back to the overview.
async fn signin() -> Redirect {
    Redirect::to("/")
}

/// "alice (operator of payments)" for a signed-in caller.
fn signed_in(caller: &Caller) -> Option<String> {
    let principal = &caller.principal;
    let role = principal.role?.as_str();
    let scope = if principal.teams.is_empty() { String::new() } else { format!(" of {}", principal.teams.join(", ")) };
    principal.is_signed_in().then(|| format!("{} ({role}{scope})", principal.name))
}

/// The action a page form names, for the audit of a forged one.
fn action_named(action: &str) -> Action {
    match action {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "cancel" => Action::Cancel,

        _ => Action::Trigger,
    }
}

/// A form's anti-forgery value (its sender and origin were checked by `gate`); a stale or forged
/// one is refused and audited.
async fn form_checked(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    csrf: &str,
    action: Action,
) -> Result<(), PageError> {
    if let Err(problem) = state.auth.form_value(headers, csrf) {
        state.record_refusal(caller.audit(action, None, AuditOutcome::Refused, problem.detail.clone())).await;
        return Err(problem.into());
    }
    Ok(())
}

struct AuditRow {
    at: String,
    who: String,
    via: String,
    role: String,
    teams: String,
    action: String,
    job: String,
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
            job: entry.record.job.or(entry.record.target).unwrap_or_default(),
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
