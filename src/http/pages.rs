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
use super::overview::{self, Filters, Outcome, OverviewQuery, Show};
use super::rejection::{Form, Path, Query};
use super::timeline::{self, Timeline};
use super::view::{self, ClusterView, JobView, RunBrief, RunView, STRIP, ago, human_ms, in_zone, utc};
use super::{AppState, BrowserSession, Caller, Problem};
use crate::model::{Control, RunStatus, TriggerKind};
use crate::store::AuditOutcome;
use crate::store::TriggerOverrides;

mod admin;
mod history;
mod home;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/jobs/{name}", get(job))
        .route("/jobs/{name}/{action}", post(control))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/cancel", post(cancel))
        .route("/signin", get(signin))
        .route("/static/app.css", get(|| async { asset("text/css; charset=utf-8", include_str!("static/app.css")) }))
        .route(
            "/static/live.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_str!("static/live.js")) }),
        )
        .route("/static/favicon.svg", get(|| async { asset("image/svg+xml", include_str!("static/favicon.svg")) }))
        .route("/favicon.ico", get(|| async { asset("image/svg+xml", include_str!("static/favicon.svg")) }))
        .route("/runs/{id}/output", get(run_output))
        .route("/runs/{id}/rerun", post(rerun))
        .merge(home::routes())
        .merge(history::routes())
        .merge(admin::routes())
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

/// The error page: a title, what went wrong, and the ways back.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    code: u16,
    title: &'static str,
    detail: String,
    /// A way back to the page that led here, when it is a page of this dashboard.
    back: Option<String>,
}

impl PageError {
    /// The answer, with a way back to `referer` when it is a path of this site's.
    pub(super) fn answer(self, referer: Option<&str>) -> Response {
        let problem = self.0;
        let back = referer.and_then(same_site_path);
        let page = ErrorPage {
            layout: Layout {
                title: format!("{} {}", problem.code, problem.title),
                nav: "error",
                node: String::new(),
                badge: false,
                leader: None,
            },
            code: problem.code,
            title: problem.title,
            detail: problem.detail.clone(),
            back,
        };
        let body = page.render().unwrap_or_else(|_| {
            format!(
                "<!doctype html><title>{} {}</title><h1>{} {}</h1><p><a href=/>Overview</a>",
                problem.code, problem.title, problem.code, problem.title
            )
        });
        let mut response = (problem.status, Html(body)).into_response();
        if problem.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Basic realm=\"tenure\"".parse().unwrap());
        }
        problem.add_correlation_header(&mut response);
        response
    }
}

/// The path of a `Referer` (a full URL or a path) when it is a page of this dashboard: a way
/// back that never leads off the site nor to a form's action.
fn same_site_path(referer: &str) -> Option<String> {
    let path = match referer.find("://") {
        Some(scheme_end) => {
            let rest = &referer[scheme_end + 3..];
            &rest[rest.find('/')?..]
        }
        None => referer,
    };
    let page = path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/api")
        && !path.contains(['\\', '"', '<', '>']);
    page.then(|| path.to_owned())
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.answer(None)
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
    /// Whether the header shows the leader badge (error pages do not know it).
    badge: bool,
    /// "node-1 · term 42" while someone leads.
    leader: Option<String>,
}

impl Layout {
    fn new(state: &AppState, title: impl Into<String>, nav: &'static str) -> Layout {
        let leader = state.cluster.borrow().leader.as_ref().map(|(node, term)| format!("{node} · term {term}"));
        Layout { title: title.into(), nav, node: state.node_id.clone(), badge: true, leader }
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
    /// Signed in through the identity provider: a sign-out form.
    session: bool,
    /// Sign-in through the identity provider is on: the sign-in link leads there.
    oidc: bool,
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
    /// The concurrency policies a manual run may ask for.
    concurrencies: Vec<&'static str>,
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
    let next = api::next_view(&state, &caller, &name, timeline::UPCOMING).await?;
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
        Some("rerun") => Some("Re-run requested with the same request: it appears below as a manual run."),
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
        session: caller.principal.via == identity::Via::Session,
        oidc: state.auth.oidc_on(),
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
        concurrencies: crate::config::Concurrency::NAMES.iter().map(|(word, _)| *word).collect(),
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

/// A page form's fields: `csrf`, `key` (a trigger's idempotency key), and a trigger's options:
/// `env.NAME` for each variable the job lets a manual run set (empty: not set), `reason` and
/// `concurrency` (empty: the job's).
struct ControlForm {
    csrf: String,
    key: Option<String>,
    overrides: TriggerOverrides,
}

impl ControlForm {
    fn of(fields: Vec<(String, String)>) -> Result<ControlForm, Problem> {
        let mut form = ControlForm { csrf: String::new(), key: None, overrides: TriggerOverrides::default() };
        for (name, value) in fields {
            match name.as_str() {
                "csrf" => form.csrf = value,
                "key" => form.key = Some(value),
                "reason" => form.overrides.reason = Some(value).filter(|reason| !reason.trim().is_empty()),
                "concurrency" if value.is_empty() => {}
                "concurrency" => {
                    let policy = crate::config::Concurrency::NAMES.iter().find(|(word, _)| *word == value);
                    form.overrides.concurrency =
                        Some(policy.map(|(_, policy)| *policy).ok_or_else(|| {
                            Problem::bad_request(format!("`concurrency`: `{value}` is not a policy"))
                        })?);
                }
                _ => {
                    if let Some(variable) = name.strip_prefix("env.").filter(|_| !value.is_empty()) {
                        form.overrides.env.insert(variable.to_owned(), value);
                    }
                }
            }
        }
        Ok(form)
    }
}

async fn control(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Redirect, PageError> {
    let form = ControlForm::of(fields)?;
    form_checked(&state, &caller, &headers, &form.csrf, action_named(&action)).await?;
    match action.as_str() {
        "trigger" => {
            // The page's form always carries a fresh key; an empty one is taken as none.
            let key = form.key.as_deref().filter(|key| !key.is_empty());
            api::request_trigger(&state, &caller, &name, key, &form.overrides).await?;
        }
        "pause" => api::set_control(&state, &caller, &name, Control::Pause).await?,
        "resume" => api::set_control(&state, &caller, &name, Control::Resume).await?,
        _ => return Err(Problem::not_found(format!("no action `{action}`")).into()),
    }
    Ok(Redirect::to(&format!("/jobs/{name}?done={action}")))
}

/// Re-run a finished run: a manual trigger of its job with the same request (the variables,
/// reason and concurrency of the trigger behind it, read from the ledger as recorded, so an
/// inherited variable's value shown redacted is re-sent as it was), the reason naming the run.
async fn rerun(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Redirect, PageError> {
    let form = ControlForm::of(fields)?;
    form_checked(&state, &caller, &headers, &form.csrf, Action::Trigger).await?;
    let run = state
        .store
        .run(id)
        .await?
        .filter(|run| state.may_read(&caller, &run.job))
        .ok_or_else(|| Problem::not_found(format!("no run {id}")))?;
    let mut overrides = match run.trigger {
        TriggerKind::Manual => {
            state.store.trigger_of_run(id).await?.map(|trigger| trigger.overrides).unwrap_or_default()
        }
        TriggerKind::Schedule | TriggerKind::Backfill | TriggerKind::Upstream => TriggerOverrides::default(),
    };
    overrides.reason = Some(match overrides.reason {
        Some(reason) => format!("re-run of run {id}: {reason}"),
        None => format!("re-run of run {id}"),
    });
    let key = form.key.as_deref().filter(|key| !key.is_empty());
    api::request_trigger(&state, &caller, &run.job, key, &overrides).await?;
    Ok(Redirect::to(&format!("/jobs/{}?done=rerun", run.job)))
}

/// A run's output as a file: the tail the ledger keeps, as text.
async fn run_output(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let run = state
        .store
        .run(id)
        .await?
        .filter(|run| state.may_read(&caller, &run.job))
        .ok_or_else(|| Problem::not_found(format!("no run {id}")))?;
    let file: String =
        run.job.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{file}-run-{id}.log\"")),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        crate::executor::plain_output(&run.output),
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    layout: Layout,
    run: RunView,
    running: bool,
    /// A running run offers its cancel form to those who may cancel it (`identity::authorize`).
    may_cancel: bool,
    /// An ended run offers its re-run form to those who may trigger its job.
    may_rerun: bool,
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
    /// A fresh idempotency key for the re-run form.
    key: String,
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
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Form(form): Form<CancelForm>,
) -> Result<Redirect, PageError> {
    form_checked(&state, &caller, &headers, &form.csrf, Action::Cancel).await?;
    api::request_cancel(&state, &caller, id, "dashboard", form.reason.as_deref()).await?;
    Ok(Redirect::to(&format!("/runs/{id}")))
}

async fn run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    let session = BrowserSession::of(&headers);
    let run = api::run_view(&state, &caller, id).await?;
    let tz: chrono_tz::Tz =
        state.jobs.borrow().get(&run.job).map(|job| job.schedule.timezone()).unwrap_or(chrono_tz::UTC);
    let with_zone = |instant: DateTime<Utc>| {
        if tz == chrono_tz::UTC { utc(instant) } else { format!("{} ({})", utc(instant), in_zone(instant, tz)) }
    };
    let running = run.brief.status == RunStatus::Running;
    let team = state.jobs.borrow().get(&run.job).and_then(|job| job.team.clone());
    let may = |action| {
        caller.principal.is_signed_in()
            && identity::authorize(&caller.principal, action, Some((&run.job, team.as_deref()))).is_ok()
    };
    let (may_cancel, may_rerun) = (may(Action::Cancel), may(Action::Trigger));
    let stopped =
        matches!(run.brief.status, RunStatus::Skipped | RunStatus::Missed | RunStatus::Lost | RunStatus::Killed);
    let page = render(&RunPage {
        key: api::new_key(),
        layout: Layout::new(&state, format!("{} run {}", run.job, run.brief.id), "run"),
        running,
        may_cancel,
        may_rerun,
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
