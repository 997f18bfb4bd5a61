//! The cluster's history pages: `/terms` (every term, who led it and for how long) and
//! `/timeline` (the slots ahead, hour by hour and minute by minute).

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/terms", get(terms)).route("/timeline", get(timeline_page))
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
async fn timeline_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Html<String>, PageError> {
    // Scoped reads: one rendering per scope (role and teams), never another scope's jobs.
    let key = if state.auth.reads_protected() {
        format!("timeline:{:?}:{}", caller.principal.role, caller.principal.teams.join(","))
    } else {
        "timeline".to_owned()
    };
    if let Some(cached) = state.pages.get(&key) {
        return Ok(Html(cached.to_string()));
    }
    let _rendering = state.pages.rendering.lock().await;
    if let Some(cached) = state.pages.get(&key) {
        return Ok(Html(cached.to_string()));
    }
    let view = api::timeline_view(&state, &caller).await?;
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
