//! The dashboard: server-rendered pages (askama templates in `templates/`), complete without
//! JavaScript; `static/live.js` refreshes their `#live` section in place. Forms post to routes
//! here, which check basic auth, that the request is same-origin, and the anti-forgery value bound
//! to the browser's session cookie, record the control and redirect back.

use std::fmt::Write as _;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::api::{self, RunQuery};
use super::rejection::{Form, Path, Query};
use super::timeline::{self, Timeline};
use super::view::{self, ClusterView, JobView, RunBrief, RunView, STRIP, ago, human_ms, in_zone, utc};
use super::{AppState, BrowserSession, Problem};
use crate::model::{Control, RunStatus, TriggerKind};
use crate::store::TriggerOverrides;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/jobs/{name}", get(job))
        .route("/jobs/{name}/{action}", post(control))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/terms", get(terms))
        .route("/timeline", get(timeline_page))
        .route("/signin", get(signin))
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
    headers: HeaderMap,
    Query(query): Query<api::PageQuery>,
) -> Result<Html<String>, PageError> {
    state.auth.read(&headers)?;
    let page = query.page.unwrap_or(1).max(1);
    let key = format!("overview:{page}");
    if let Some(cached) = state.pages.get(&key) {
        return Ok(Html(cached.to_string()));
    }
    let _rendering = state.pages.rendering.lock().await;
    if let Some(cached) = state.pages.get(&key) {
        return Ok(Html(cached.to_string()));
    }
    let cluster = api::cluster_view(&state).await?;
    let (jobs, total) = api::jobs_page(&state, page).await?;
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
    can_mutate: bool,
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
    /// Its next fire times; each in its zone (when it is not UTC and not `?tz=utc`) and UTC.
    upcoming: Vec<FireRow>,
    show_local: bool,
    /// `?tz=utc`: UTC alone.
    utc_only: bool,
    zone_is_utc: bool,
}

struct FireRow {
    local: String,
    utc: String,
}

#[derive(Deserialize)]
struct JobQuery {
    status: Option<String>,
    cursor: Option<String>,
    done: Option<String>,
    /// `utc`: the next fire times in UTC alone.
    tz: Option<String>,
}

async fn job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<JobQuery>,
) -> Result<Response, PageError> {
    state.auth.read(&headers)?;
    let job = api::named_job(&state, &name).await?;
    let status_filter = query.status.clone().unwrap_or_default();
    let page = api::run_page(
        &state,
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
    let next = api::next_view(&state, &name, timeline::UPCOMING).await?;
    let zone: chrono_tz::Tz = next.timezone.parse().unwrap_or(chrono_tz::UTC);
    let upcoming =
        next.fires.iter().map(|fire| FireRow { local: in_zone(fire.utc, zone), utc: utc(fire.utc) }).collect();
    let utc_only = query.tz.as_deref() == Some("utc");
    let zone_is_utc = zone == chrono_tz::UTC;
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
    let page = render(&JobPage {
        layout: Layout::new(&state, job.name.clone(), "job"),
        notice,
        can_mutate: state.auth.can_mutate(),
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
        upcoming,
        show_local: !utc_only && !zone_is_utc,
        utc_only,
        zone_is_utc,
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
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<ControlForm>,
) -> Result<Redirect, PageError> {
    state.auth.mutate_form(&headers, &form.csrf)?;
    match action.as_str() {
        "trigger" => {
            // The page's form always carries a fresh key; an empty one is taken as none.
            let key = form.key.as_deref().filter(|key| !key.is_empty());
            api::request_trigger(&state, &name, key, "dashboard", &TriggerOverrides::default()).await?;
        }
        "pause" => api::set_control(&state, &name, Control::Pause, "dashboard").await?,
        "resume" => api::set_control(&state, &name, Control::Resume, "dashboard").await?,
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
    /// A running run offers its cancel form to those who may change things.
    can_mutate: bool,
    csrf: String,
    /// Why a run did not run or was stopped (skipped, missed, lost, killed), in words.
    why: Option<String>,
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

#[derive(Deserialize)]
struct CancelForm {
    #[serde(default)]
    csrf: String,
    reason: Option<String>,
}

/// The run page's cancel form: recorded as the API's cancel is, then back to the run.
async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<CancelForm>,
) -> Result<Redirect, PageError> {
    state.auth.mutate_form(&headers, &form.csrf)?;
    api::request_cancel(&state, id, "dashboard", form.reason.as_deref()).await?;
    Ok(Redirect::to(&format!("/runs/{id}")))
}

async fn run(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<i64>) -> Result<Response, PageError> {
    state.auth.read(&headers)?;
    let session = BrowserSession::of(&headers);
    let run = api::run_view(&state, id).await?;
    let tz: chrono_tz::Tz =
        state.jobs.borrow().get(&run.job).map(|job| job.schedule.timezone()).unwrap_or(chrono_tz::UTC);
    let with_zone = |instant: DateTime<Utc>| {
        if tz == chrono_tz::UTC { utc(instant) } else { format!("{} ({})", utc(instant), in_zone(instant, tz)) }
    };
    let running = run.brief.status == RunStatus::Running;
    let stopped =
        matches!(run.brief.status, RunStatus::Skipped | RunStatus::Missed | RunStatus::Lost | RunStatus::Killed);
    let page = render(&RunPage {
        layout: Layout::new(&state, format!("{} run {}", run.job, run.brief.id), "run"),
        running,
        can_mutate: state.auth.can_mutate(),
        csrf: state.auth.csrf_for(&session).unwrap_or_default(),
        why: stopped.then(|| run.brief.error.clone().unwrap_or_else(|| "not recorded".to_owned())),
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
    })?;
    let mut response = page.into_response();
    if let Some(cookie) = session.set_cookie(&state.auth) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
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
    /// What a term number is with the coordinator in use (etcd, ZooKeeper, or `tenure dev`'s
    /// in-process leadership).
    what_a_term_is: &'static str,
    timeline: String,
    terms: Vec<TermRow>,
}

async fn terms(State(state): State<AppState>, headers: HeaderMap) -> Result<Html<String>, PageError> {
    state.auth.read(&headers)?;
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
    let what_a_term_is = match &state.coordinator {
        Some(coordinator) => coordinator.what_a_term_is(),
        None => {
            "the next number above the ledger's fence, taken by tenure dev's in-process leadership each time it leads (it has no etcd or ZooKeeper)"
        }
    };
    render(&TermsPage {
        layout: Layout::new(&state, "Terms", "terms"),
        what_a_term_is,
        timeline: timeline(&spans, now),
        terms: rows,
    })
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

struct HourRow {
    label: String,
    slots: u64,
    jobs: usize,
    /// Jobs firing more than the cap in the hour (not in `slots`), or empty.
    over_cap: String,
}

struct MinuteRow {
    label: String,
    slots: u64,
    jobs: String,
}

#[derive(Template)]
#[template(path = "timeline.html")]
struct TimelinePage {
    layout: Layout,
    from: String,
    to: String,
    jobs: usize,
    paused: usize,
    slots: u64,
    hour_cap: u64,
    /// The jobs counted to the cap, named (the first 10, then how many more); empty when none.
    capped_jobs: String,
    /// "fires" for one such job, "fire" for several.
    capped_verb: &'static str,
    chart: String,
    hours: Vec<HourRow>,
    minutes: Vec<MinuteRow>,
}

/// `/timeline`: the next 24 clock hours of every job's slots, per hour, and the busiest minutes.
async fn timeline_page(State(state): State<AppState>, headers: HeaderMap) -> Result<Html<String>, PageError> {
    state.auth.read(&headers)?;
    let key = "timeline".to_owned();
    if let Some(cached) = state.pages.get(&key) {
        return Ok(Html(cached.to_string()));
    }
    let _rendering = state.pages.rendering.lock().await;
    if let Some(cached) = state.pages.get(&key) {
        return Ok(Html(cached.to_string()));
    }
    let view = api::timeline_view(&state).await?;
    let mut capped_jobs: Vec<String> = view.capped_jobs.iter().take(10).cloned().collect();
    if view.capped_jobs.len() > 10 {
        capped_jobs.push(format!("{} more", view.capped_jobs.len() - 10));
    }
    let html = render(&TimelinePage {
        layout: Layout::new(&state, "Next 24 hours", "timeline"),
        from: utc(view.from),
        to: utc(view.to),
        jobs: view.jobs,
        paused: view.paused,
        slots: view.slots,
        hour_cap: view.hour_cap,
        capped_verb: if view.capped_jobs.len() == 1 { "fires" } else { "fire" },
        capped_jobs: capped_jobs.join(", "),
        chart: slots_chart(&view),
        hours: view
            .hours
            .iter()
            .map(|hour| HourRow {
                label: hour.start.format("%a %H:00").to_string(),
                slots: hour.slots,
                jobs: hour.jobs,
                over_cap: if hour.over_cap == 0 { String::new() } else { hour.over_cap.to_string() },
            })
            .collect(),
        minutes: view
            .busiest_minutes
            .iter()
            .map(|minute| MinuteRow {
                label: minute.start.format("%a %H:%M").to_string(),
                slots: minute.slots,
                jobs: match minute.more {
                    0 => minute.jobs.join(", "),
                    more => format!("{}, and {more} more", minute.jobs.join(", ")),
                },
            })
            .collect(),
    })?;
    state.pages.put(key, Arc::from(html.0.as_str()));
    Ok(html)
}

/// Slots per hour as bars, inline SVG scaled to its box (the hours' table below says the same).
fn slots_chart(view: &Timeline) -> String {
    let (width, height, top, bottom) = (720.0, 120.0, 14.0, 16.0);
    let most = view.hours.iter().map(|hour| hour.slots).max().unwrap_or(0).max(1) as f64;
    let slot = width / view.hours.len().max(1) as f64;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {width} {}\" role=\"img\" aria-label=\"slots per hour over the next 24 hours\" width=\"100%\" class=\"slots-chart\">",
        height + top + bottom
    );
    let _ = write!(svg, "<text x=\"0\" y=\"10\">most {}</text>", most as u64);
    for (index, hour) in view.hours.iter().enumerate() {
        let bar = if hour.slots == 0 { 0.0 } else { (hour.slots as f64 / most * height).max(1.0) };
        let x = index as f64 * slot;
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar:.1}\"><title>{} · {} slots · {} jobs{}</title></rect>",
            x + 1.0,
            top + height - bar,
            (slot - 2.0).max(1.0),
            hour.start.format("%H:00 UTC"),
            hour.slots,
            hour.jobs,
            match hour.over_cap {
                0 => String::new(),
                n => format!(" ({n} of them more than {} times, not in the slots)", view.hour_cap),
            },
        );
        if index % 3 == 0 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x + 1.0,
                top + height + 13.0,
                hour.start.format("%H:00")
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

async fn signin(State(state): State<AppState>, headers: HeaderMap) -> Result<Redirect, PageError> {
    state.auth.signed_in(&headers)?;
    Ok(Redirect::to("/"))
}
