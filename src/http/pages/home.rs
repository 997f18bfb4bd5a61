//! The home page, `/`: the cluster (leader, term, replicas), a summary tile per state, and the
//! jobs, filtered, sorted and paged, each with its next fire and a strip of its latest outcomes.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/", get(overview))
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

/// A strip cell's glyph: every status told apart by shape as well as colour (succeeded is the
/// plain full bar, skipped a low bar, missed a hollow one; the others carry a mark).
fn glyph(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Succeeded | RunStatus::Skipped | RunStatus::Missed => "",
        RunStatus::Failed => "✕",
        RunStatus::TimedOut => "T",
        RunStatus::Lost => "?",
        RunStatus::Killed => "K",
        RunStatus::Running => "▸",
    }
}

struct Cell {
    id: i64,
    status: RunStatus,
    glyph: &'static str,
    title: String,
}

struct JobRow {
    name: String,
    paused: bool,
    running: bool,
    late: bool,
    kind: &'static str,
    tags: Vec<String>,
    schedule: String,
    description: String,
    /// Long enough to be clamped: focusable, so the whole text shows on focus.
    long_description: bool,
    timezone: String,
    /// The next fire time in UTC, or why there is none.
    next_utc: String,
    /// The same instant in the job's zone, when that is not UTC.
    next_local: String,
    last_status: Option<RunStatus>,
    last_glyph: &'static str,
    last_duration: String,
    /// Empty cells before the strip's outcomes, so strips of every length end aligned.
    pad: usize,
    strip: Vec<Cell>,
    strip_label: String,
}

/// A summary tile: a count and the link that shows those jobs.
struct Tile {
    id: &'static str,
    label: &'static str,
    count: usize,
    href: String,
    /// Its colour when the count is not zero.
    tone: &'static str,
    current: bool,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    cluster: ClusterView,
    leader_since: Option<String>,
    replicas: Vec<ReplicaRow>,
    tiles: Vec<Tile>,
    filters: Filters,
    outcomes: Vec<&'static str>,
    outcome: String,
    kinds: Vec<&'static str>,
    kind: String,
    tags: Vec<String>,
    tag: String,
    paused: &'static str,
    show: &'static str,
    sorts: Vec<(&'static str, &'static str)>,
    sort: &'static str,
    narrowed: bool,
    clear: String,
    jobs: Vec<JobRow>,
    strip: usize,
    legend: Vec<(RunStatus, &'static str)>,
    /// "1-100 of 1000"
    shown: String,
    previous_page: Option<String>,
    next_page: Option<String>,
}

/// The overview's next fire: UTC first (every time on the page is), the job's zone after.
fn next_in_utc(job: &JobView) -> (String, String) {
    if job.paused {
        return ("paused".to_owned(), String::new());
    }
    match job.next_utc {
        Some(next) => {
            let tz: chrono_tz::Tz = job.timezone.parse().unwrap_or(chrono_tz::UTC);
            (utc(next), if tz == chrono_tz::UTC { String::new() } else { in_zone(next, tz) })
        }
        None => ("never".to_owned(), String::new()),
    }
}

/// Descriptions longer than this are clamped to two lines.
const LONG_DESCRIPTION: usize = 60;

async fn overview(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<OverviewQuery>,
) -> Result<Html<String>, PageError> {
    let filters = Filters::of(query)?;
    // Scoped reads: one rendering per scope (role and teams), never another scope's jobs.
    let scope = if state.auth.reads_protected() {
        format!("{:?}:{}", caller.principal.role, caller.principal.teams.join(","))
    } else {
        String::new()
    };
    let key = format!("overview:{}:{scope}", filters.href());
    if let Some(cached) = state.pages.get(&key) {
        return Ok(Html(cached.to_string()));
    }
    let _rendering = state.pages.rendering.lock().await;
    if let Some(cached) = state.pages.get(&key) {
        return Ok(Html(cached.to_string()));
    }
    let html = render_overview(&state, &caller, &filters).await?;
    state.pages.put(key, Arc::from(html.as_str()));
    Ok(Html(html))
}

/// The overview for `filters`: every job counted and filtered from one read of the ledger
/// (`job_states`), and only the page shown read in full (its strips); only the jobs `caller`
/// may read.
async fn render_overview(state: &AppState, caller: &Caller, filters: &Filters) -> Result<String, PageError> {
    let cluster = api::cluster_view(state).await?;
    let jobs = state.jobs.borrow().clone();
    let jobs = if state.auth.reads_protected() {
        Arc::new(jobs.only(|job| state.may_read_of(caller, job.name.as_str(), job.team.as_deref())))
    } else {
        jobs
    };
    let now = Utc::now();
    let fleet = state.pages.fleet.of(&state.store, &jobs).await?;
    let states = &fleet.states;
    let controls = state.store.job_controls().await?;
    let (summary, selected) = overview::select(&jobs, states, &controls, filters, now);
    let total = selected.len();
    let pages = total.div_ceil(view::JOBS_PER_PAGE).max(1);
    let page = filters.page.min(pages);
    let skipped = (page - 1).saturating_mul(view::JOBS_PER_PAGE);
    let shown_jobs: Vec<&crate::config::Job> = selected.into_iter().skip(skipped).take(view::JOBS_PER_PAGE).collect();
    let shown = if total == 0 {
        format!("none of {}", summary.total)
    } else {
        format!(
            "{}-{} of {total}{}",
            skipped + 1,
            skipped + shown_jobs.len(),
            if total == summary.total { String::new() } else { format!(" matching, {} in all", summary.total) }
        )
    };
    let previous_page = (page > 1).then(|| filters.on_page(page - 1).href());
    let next_page = (page < pages).then(|| filters.on_page(page + 1).href());
    let page_names: Vec<String> = shown_jobs.iter().map(|job| job.name.as_str().to_owned()).collect();
    let recent = state.store.recent_runs(&page_names, STRIP as i64).await?;
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
    let rows = shown_jobs
        .iter()
        .map(|job| {
            let view = JobView::of(job, &controls, recent.get(job.name.as_str()).map_or(&[], |runs| &runs[..]), now);
            let job_state = states.get(job.name.as_str()).copied().unwrap_or_default();
            let (next_utc, next_local) = next_in_utc(&view);
            let strip: Vec<Cell> = view
                .recent
                .iter()
                .map(|run| Cell {
                    id: run.id,
                    status: run.status,
                    glyph: glyph(run.status),
                    title: format!("run {} · {} · {}", run.id, utc(run.slot), run.status),
                })
                .collect();
            let mut counts: Vec<(RunStatus, usize)> = Vec::new();
            for cell in &strip {
                match counts.iter_mut().find(|(status, _)| *status == cell.status) {
                    Some((_, count)) => *count += 1,
                    None => counts.push((cell.status, 1)),
                }
            }
            let strip_label = if strip.is_empty() {
                format!("{}: no outcomes yet", view.name)
            } else {
                let counted: Vec<String> = counts.iter().map(|(status, count)| format!("{count} {status}")).collect();
                format!(
                    "{}: last {} outcomes, newest right: {}; arrow keys move between runs",
                    view.name,
                    strip.len(),
                    counted.join(", ")
                )
            };
            JobRow {
                paused: view.paused,
                running: job_state.running,
                late: job_state.late_or_missed,
                kind: view.kind,
                tags: overview::tags(job).to_vec(),
                long_description: view.description.chars().count() > LONG_DESCRIPTION,
                schedule: view.schedule.clone(),
                description: view.description.clone(),
                timezone: view.timezone.clone(),
                next_utc,
                next_local,
                last_status: job_state.last,
                last_glyph: job_state.last.map_or("", glyph),
                last_duration: view
                    .recent
                    .iter()
                    .rev()
                    .find(|run| run.status != RunStatus::Running)
                    .and_then(|run| run.duration_ms)
                    .map(human_ms)
                    .unwrap_or_default(),
                pad: STRIP.saturating_sub(strip.len()),
                strip,
                strip_label,
                name: view.name,
            }
        })
        .collect();
    let leader_since = cluster.leader.as_ref().and_then(|leader| leader.since).map(utc);
    let tile = |id, label, count, tone, link: Filters| Tile {
        id,
        label,
        count,
        current: filters.narrows() && link == filters.on_page(1),
        href: link.href(),
        tone: if count > 0 { tone } else { "" },
    };
    let tiles = vec![
        tile("all", "jobs", summary.total, "", filters.summary_link(None, None)),
        tile("failing", "failing now", summary.failing, "bad", filters.summary_link(Some(Show::Failing), None)),
        tile("running", "running", summary.running, "info", filters.summary_link(Some(Show::Running), None)),
        tile("late", "late or missed in 24 h", summary.late, "warn", filters.summary_link(Some(Show::Late), None)),
        tile("paused", "paused", summary.paused, "warn", filters.summary_link(None, Some(true))),
    ];
    let (kinds, tags) = overview::choices(&jobs);
    let mut outcomes: Vec<&'static str> = RunStatus::ALL
        .iter()
        .filter(|status| !matches!(status, RunStatus::Running | RunStatus::Skipped))
        .map(|status| status.as_str())
        .collect();
    outcomes.push("never");
    let html = render(&OverviewPage {
        layout: Layout::new(state, "Overview", "overview"),
        cluster,
        leader_since,
        replicas,
        tiles,
        outcome: match filters.outcome {
            Some(Outcome::Status(status)) => status.as_str().to_owned(),
            Some(Outcome::Never) => "never".to_owned(),
            None => String::new(),
        },
        outcomes,
        kind: filters.kind.clone().unwrap_or_default(),
        kinds,
        tag: filters.tag.clone().unwrap_or_default(),
        tags,
        paused: match filters.paused {
            Some(true) => "yes",
            Some(false) => "no",
            None => "",
        },
        show: filters.show.map_or("", Show::as_str),
        sorts: vec![("name", "name"), ("next", "next fire"), ("outcome", "last outcome")],
        sort: filters.sort.as_str(),
        narrowed: filters.narrows(),
        clear: filters.summary_link(None, None).href(),
        filters: filters.clone(),
        jobs: rows,
        strip: STRIP,
        legend: RunStatus::ALL.iter().map(|status| (*status, glyph(*status))).collect(),
        shown,
        previous_page,
        next_page,
    })?;
    Ok(html.0)
}
