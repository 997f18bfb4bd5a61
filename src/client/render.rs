//! The client's tables and summaries: plain text, columns aligned with two spaces, instants in
//! RFC 3339 UTC, durations without spaces (`850ms`, `12.3s`, `4m05s`: a runs table splits on
//! whitespace) and distances in time (`in 3.0s`, `850ms ago`). `now` is a parameter, so the
//! same answer always renders the same way. An absent value is `-`. No IO.

use chrono::{DateTime, SecondsFormat, Utc};

use super::types::{Backfill, BackfillPlan, Cluster, Job, Paused, Run, RunBrief, Term, Trigger};

/// Rows under a header, each column as wide as its widest cell; no trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|title| title.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|title| (*title).to_owned()).collect();
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:width$}  "));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// An instant in RFC 3339 UTC: `2026-11-27T09:44:00Z`, or to the millisecond when it has a
/// fraction (a manual trigger's slot, a start): `2026-11-27T09:44:00.120Z`.
pub fn instant(at: DateTime<Utc>) -> String {
    let precision = if at.timestamp_subsec_nanos() == 0 { SecondsFormat::Secs } else { SecondsFormat::Millis };
    at.to_rfc3339_opts(precision, true)
}

/// How far `at` is from `now`: `in 3.0 s`, `12 min 05 s ago`.
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let ms = (at - now).num_milliseconds();
    if ms >= 0 { format!("in {}", duration_ms(ms)) } else { format!("{} ago", duration_ms(-ms)) }
}

/// A duration in milliseconds, short: `850ms`, `12.3s`, `4m05s`, `2h10m`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

/// `tenure jobs`: the schedule's description last, the one column of words.
pub fn jobs(jobs: &[Job], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let state = match (&job.paused_by, job.paused) {
                (Some(by), true) => format!("paused ({by})"),
                (None, true) => "paused".to_owned(),
                (_, false) => "active".to_owned(),
            };
            let next = job.next_utc.map(|next| format!("{} ({})", instant(next), relative(next, now)));
            let last =
                job.last.as_ref().map(|run| format!("{} run {} ({})", run.status, run.id, relative(run.slot, now)));
            vec![
                job.name.clone(),
                job.schedule.clone(),
                job.timezone.clone(),
                job.kind.clone(),
                state,
                or_dash(next),
                or_dash(last),
                or_dash(job.description.clone()),
            ]
        })
        .collect();
    table(&["JOB", "SCHEDULE", "TIMEZONE", "KIND", "STATE", "NEXT", "LAST", "DESCRIPTION"], &rows)
}

/// `tenure runs JOB`.
pub fn runs(runs: &[RunBrief]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|run| {
            vec![
                run.id.to_string(),
                instant(run.slot),
                run.status.to_string(),
                run.trigger.to_string(),
                run.term.to_string(),
                run.node.clone(),
                run.attempt.to_string(),
                or_dash(run.duration_ms.map(duration_ms)),
                or_dash(run.lateness_ms.map(duration_ms)),
                or_dash(result_code(run)),
                or_dash(run.error.as_deref().map(first_line)),
            ]
        })
        .collect();
    table(&["ID", "SLOT", "STATUS", "TRIGGER", "TERM", "NODE", "ATTEMPT", "TOOK", "LATE", "CODE", "ERROR"], &rows)
}

/// A process's exit code, or an HTTP job's answer (`HTTP 500`).
fn result_code(run: &RunBrief) -> Option<String> {
    match (run.exit_code, run.http_status) {
        (Some(code), _) => Some(code.to_string()),
        (None, Some(status)) => Some(format!("HTTP {status}")),
        (None, None) => None,
    }
}

/// When a run was to start: its slot, or its slot plus the job's jitter offset.
fn planned_words(planned: DateTime<Utc>, slot: DateTime<Utc>) -> String {
    if planned == slot {
        format!("{} (its slot)", instant(planned))
    } else {
        format!("{} (jitter {})", instant(planned), duration_ms((planned - slot).num_milliseconds()))
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// `tenure show RUN_ID`, and `tenure trigger JOB --wait` once the run ended: every field, then
/// the output tail.
pub fn run(run: &Run) -> String {
    let brief = &run.brief;
    let fields = [
        ("slot", instant(brief.slot)),
        ("trigger", brief.trigger.to_string()),
        ("term", brief.term.to_string()),
        ("node", brief.node.clone()),
        ("executed on", brief.executor.clone().unwrap_or_else(|| format!("{} (the leader)", brief.node))),
        ("attempt", brief.attempt.to_string()),
        ("claimed", instant(run.claimed_at)),
        ("planned", or_dash(run.planned_at.map(|planned| planned_words(planned, brief.slot)))),
        ("start recorded", or_dash(run.start_recorded_at.map(instant))),
        ("began", or_dash(run.began_at.map(instant))),
        ("finished", or_dash(run.finished_at.map(instant))),
        ("took", or_dash(brief.duration_ms.map(duration_ms))),
        ("late", or_dash(brief.lateness_ms.map(duration_ms))),
        ("exit code", or_dash(brief.exit_code)),
        ("http status", or_dash(brief.http_status)),
        ("error", or_dash(brief.error.clone())),
    ];
    let mut text = format!("run {} of {}: {}\n", brief.id, run.job, brief.status);
    for (name, value) in fields {
        text.push_str(&format!("  {name:<16}{value}\n"));
    }
    for told in &run.notifications {
        let attempts = if told.attempts == 1 { "1 attempt".to_owned() } else { format!("{} attempts", told.attempts) };
        let error = told.last_error.as_deref().map(|error| format!(", last error: {error}")).unwrap_or_default();
        text.push_str(&format!(
            "  {:<16}{} to {}: {} ({attempts}{error})\n",
            "notified", told.event, told.target, told.status
        ));
    }
    if let Some(request) = &run.request {
        text.push_str(&format!("  {:<16}{}\n", "by", request.requested_by));
        text.push_str(&format!("  {:<16}{}\n", "reason", or_dash(request.reason.clone())));
        let policy = request.concurrency.clone().map(|policy| format!("{policy} (asked for)"));
        text.push_str(&format!("  {:<16}{}\n", "concurrency", policy.unwrap_or_else(|| "the job's".to_owned())));
        for (name, value) in &request.env {
            text.push_str(&format!("  {:<16}{name}={value}\n", "env"));
        }
    }
    if run.output.is_empty() {
        text.push_str("output: none\n");
    } else {
        text.push_str("output (tail):\n");
        text.push_str(&run.output);
        if !run.output.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

/// `tenure status`: the leader, the replicas, the warnings.
pub fn cluster(cluster: &Cluster, now: DateTime<Utc>) -> String {
    let mut text = match &cluster.leader {
        Some(leader) => {
            let since = leader.since.map(|since| format!(", since {}, {}", instant(since), relative(since, now)));
            format!("leader: {} (term {}{})\n", leader.node, leader.term, since.unwrap_or_default())
        }
        None => "leader: none\n".to_owned(),
    };
    text.push_str(&format!("answered by: {}\n\n", cluster.answered_by));
    let rows: Vec<Vec<String>> = cluster
        .replicas
        .iter()
        .map(|replica| {
            vec![
                replica.node.clone(),
                if replica.leader { "leader" } else { "follower" }.to_owned(),
                if replica.live { "yes" } else { "no" }.to_owned(),
                replica.version.clone(),
                replica.address.clone(),
                instant(replica.started_at),
                relative(replica.last_seen, now),
            ]
        })
        .collect();
    text.push_str(&table(&["REPLICA", "ROLE", "LIVE", "VERSION", "ADDRESS", "STARTED", "LAST SEEN"], &rows));
    for warning in &cluster.warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
    text
}

/// `tenure terms`: newest first.
pub fn terms(terms: &[Term], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = terms
        .iter()
        .map(|term| {
            vec![
                term.term.to_string(),
                term.node.clone(),
                instant(term.started_at),
                or_dash(term.last_seen_at.map(|seen| relative(seen, now))),
                or_dash(term.handover_ms.map(duration_ms)),
                if term.current { "yes" } else { "" }.to_owned(),
            ]
        })
        .collect();
    table(&["TERM", "NODE", "STARTED", "LAST SEEN", "HANDOVER", "CURRENT"], &rows)
}

/// `tenure trigger JOB` without `--wait`.
pub fn trigger(trigger: &Trigger) -> String {
    let state = match (trigger.run_id, trigger.handled_at) {
        (Some(run), _) => format!("run {run}"),
        (None, Some(_)) => "dropped: the job is not in the leader's job file".to_owned(),
        (None, None) => "waiting for the leader".to_owned(),
    };
    format!("triggered {} (trigger {}, key {}): {state}\n", trigger.job, trigger.id, trigger.idempotency_key)
}

/// `tenure backfill JOB --dry-run`: the slots a backfill would run.
pub fn backfill_plan(plan: &BackfillPlan) -> String {
    let mut text = format!("{} slot(s) of {} to run:\n", plan.slots.len(), plan.job);
    for slot in &plan.slots {
        text.push_str(&format!("  {}\n", instant(*slot)));
    }
    text
}

/// One line of a backfill's progress.
pub fn backfill(backfill: &Backfill) -> String {
    let state = if backfill.finished { "finished" } else { "going" };
    format!(
        "backfill {} of {} ({} .. {}): {}/{} done, {} running, {} pending: {state}\n",
        backfill.id,
        backfill.job,
        instant(backfill.from),
        instant(backfill.to),
        backfill.done,
        backfill.slots,
        backfill.running,
        backfill.pending
    )
}

/// `tenure pause JOB` and `tenure resume JOB`.
pub fn paused(answer: &Paused) -> String {
    format!("{} {}\n", if answer.paused { "paused" } else { "resumed" }, answer.job)
}

/// A text field of a JSON document, or `–`.
fn field(value: &serde_json::Value, name: &str) -> String {
    match value.get(name) {
        Some(serde_json::Value::String(text)) if !text.is_empty() => text.clone(),
        Some(serde_json::Value::Array(items)) if !items.is_empty() => {
            items.iter().filter_map(serde_json::Value::as_str).collect::<Vec<_>>().join(",")
        }
        _ => "–".to_owned(),
    }
}

/// `tenure whoami`: "alice (operator of payments, api-token)".
pub fn principal(principal: &serde_json::Value) -> String {
    let teams = field(principal, "teams");
    let scope = if teams == "–" { String::new() } else { format!(" of {teams}") };
    format!("{} ({}{scope}, {})\n", field(principal, "name"), field(principal, "role"), field(principal, "via"))
}

/// `tenure tokens list`: one row per token, never its secret.
pub fn tokens(tokens: &[serde_json::Value]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|token| {
            let state = if token.get("revoked_at").is_some_and(|at| !at.is_null()) {
                format!("revoked by {}", field(token, "revoked_by"))
            } else {
                "active".to_owned()
            };
            vec![
                field(token, "id"),
                field(token, "name"),
                field(token, "role"),
                field(token, "teams"),
                field(token, "expires_at"),
                state,
            ]
        })
        .collect();
    table(&["ID", "NAME", "ROLE", "TEAMS", "EXPIRES", "STATE"], &rows)
}

/// `tenure audit`: newest first.
pub fn audit(entries: &[serde_json::Value]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|entry| {
            vec![
                field(entry, "at"),
                field(entry, "who"),
                field(entry, "role"),
                field(entry, "action"),
                entry.get("job").and_then(|job| job.as_str()).map_or_else(|| field(entry, "target"), str::to_owned),
                field(entry, "outcome"),
                field(entry, "source"),
                field(entry, "request_id"),
                field(entry, "detail"),
            ]
        })
        .collect();
    table(&["AT", "WHO", "ROLE", "ACTION", "TARGET", "OUTCOME", "SOURCE", "REQUEST", "DETAIL"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_its_columns_and_ends_no_line_with_a_space() {
        let rows = vec![
            vec!["heartbeat".to_owned(), "* * * * * *".to_owned(), "-".to_owned()],
            vec!["a".to_owned(), "@daily".to_owned(), "succeeded run 7".to_owned()],
        ];
        assert_eq!(
            table(&["JOB", "SCHEDULE", "LAST"], &rows),
            "JOB        SCHEDULE     LAST\n\
             heartbeat  * * * * * *  -\n\
             a          @daily       succeeded run 7\n"
        );
    }

    /// What an audited change was done to is its job, else its target (a token, a backfill),
    /// under a header that names both.
    #[test]
    fn audit_shows_the_job_or_else_the_target() {
        let entries = [
            serde_json::json!({ "action": "pause", "job": "settle", "target": null }),
            serde_json::json!({ "action": "token-create", "job": null, "target": "tok_7" }),
        ];
        let text = audit(&entries);
        let lines: Vec<Vec<&str>> = text.lines().map(|line| line.split_whitespace().collect()).collect();
        assert_eq!(lines[0][4], "TARGET", "{text}");
        assert_eq!(lines[1][4], "settle", "{text}");
        assert_eq!(lines[2][4], "tok_7", "{text}");
    }

    /// `show` prints when a run was to start, as the API has it, also when that is its slot.
    #[test]
    fn show_prints_the_planned_start_with_or_without_jitter() {
        let run = |planned: &str| -> Run {
            serde_json::from_value(serde_json::json!({
                "id": 7, "slot": "2026-11-27T09:00:00Z", "trigger": "schedule", "term": 3, "node": "a",
                "executor": null, "attempt": 1, "status": "succeeded", "duration_ms": 12, "lateness_ms": 2,
                "exit_code": 0, "http_status": null, "error": null, "job": "tick",
                "claimed_at": "2026-11-27T08:59:59Z", "finished_at": "2026-11-27T09:00:07Z", "output": "",
                "planned_at": planned, "request": null
            }))
            .unwrap()
        };
        let planned_line =
            |text: String| text.lines().find(|line| line.trim_start().starts_with("planned")).unwrap().to_owned();
        assert_eq!(
            planned_line(self::run(&run("2026-11-27T09:00:00Z"))),
            "  planned         2026-11-27T09:00:00Z (its slot)"
        );
        assert_eq!(
            planned_line(self::run(&run("2026-11-27T09:00:07.500Z"))),
            "  planned         2026-11-27T09:00:07.500Z (jitter 7.5s)"
        );
    }

    #[test]
    fn instants_are_utc_and_distances_read_both_ways() {
        let now = DateTime::parse_from_rfc3339("2026-11-27T09:44:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(instant(now), "2026-11-27T09:44:00Z");
        assert_eq!(instant(now + chrono::Duration::milliseconds(120)), "2026-11-27T09:44:00.120Z");
        assert_eq!(instant(now + chrono::Duration::nanoseconds(317_359_769)), "2026-11-27T09:44:00.317Z");
        assert_eq!(relative(now + chrono::Duration::seconds(3), now), "in 3.0s");
        assert_eq!(relative(now - chrono::Duration::milliseconds(850), now), "850ms ago");
        assert_eq!(relative(now - chrono::Duration::seconds(725), now), "12m05s ago");
        assert_eq!(duration_ms(7_800_000), "2h10m");
    }
}
