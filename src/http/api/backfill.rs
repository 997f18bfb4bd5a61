//! Backfills: `POST /api/jobs/{name}/backfill` turns a past window into the schedule's slots
//! (a dry run lists those the ledger does not hold), and `/api/backfills` shows each with its
//! progress. The leader claims the queued slots like any other.

use super::*;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/jobs/{name}/backfill", post(backfill))
        .route("/api/backfills", get(backfills))
        .route("/api/backfills/{id}", get(backfill_progress))
}

/// The most slots one backfill may cover.
const BACKFILL_MAX_SLOTS: usize = 10_000;

/// `POST /api/jobs/{name}/backfill`: `{"from": T1, "to": T2, "dry_run": false}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillBody {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    #[serde(default)]
    dry_run: bool,
    /// Whether its runs release the runs waiting for its job, link after link (`after:`).
    #[serde(default)]
    cascade: bool,
}

/// What a dry run would run: the slots of the window the ledger does not hold.
#[derive(Debug, Serialize)]
struct BackfillPlan {
    job: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    dry_run: bool,
    slots: Vec<DateTime<Utc>>,
}

/// A backfill with its progress.
#[derive(Debug, Serialize)]
pub(in crate::http) struct BackfillView {
    #[serde(flatten)]
    pub record: BackfillRecord,
    pub pending: i64,
    pub finished: bool,
}

impl BackfillView {
    pub(in crate::http) fn of(record: BackfillRecord) -> BackfillView {
        let pending = record.pending();
        BackfillView { finished: pending == 0 && record.running == 0, pending, record }
    }
}

/// The slots of `name`'s schedule in `[from, to]`, all in the past, at most `BACKFILL_MAX_SLOTS`.
fn backfill_slots(
    state: &AppState,
    name: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, Problem> {
    let Some(job) = state.jobs.borrow().get(name).cloned() else {
        return Err(Problem::not_found(format!("no job `{name}` in the job file")));
    };
    if from > to {
        return Err(Problem::bad_request(format!("`from` ({from}) is after `to` ({to})")));
    }
    let now = Utc::now();
    if to > now {
        return Err(Problem::bad_request(format!(
            "`to` ({to}) is in the future: a backfill covers past slots; the schedule runs the rest"
        )));
    }
    let mut slots = Vec::new();
    // The schedule's slots after the instant just before `from`: `from` itself may be one.
    let Some(mut after) = from.checked_sub_signed(chrono::Duration::microseconds(1)) else {
        return Err(Problem::bad_request(format!("`from` ({from}) is before the first instant tenure can schedule")));
    };
    while let Some(slot) = job.schedule.next_after(after).filter(|slot| *slot <= to) {
        if slots.len() == BACKFILL_MAX_SLOTS {
            return Err(Problem::bad_request(format!(
                "the window holds more than {BACKFILL_MAX_SLOTS} slots of `{name}`; backfill it in parts"
            )));
        }
        slots.push(slot);
        after = slot;
    }
    Ok(slots)
}

async fn backfill(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::response::Response, Problem> {
    state.permit(&caller, Action::Backfill, Some(&name)).await?;
    let body = body.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let request: BackfillBody = serde_json::from_slice(&body).map_err(|error| {
        Problem::bad_request(format!(
            "expected a JSON object such as {{\"from\": \"2026-01-01T00:00:00Z\", \"to\": \"2026-01-02T00:00:00Z\", \
             \"dry_run\": true}}: {error}"
        ))
    })?;
    let slots = backfill_slots(&state, &name, request.from, request.to)?;
    if request.dry_run {
        let slots = state.store.unheld_slots(&name, &slots).await?;
        let plan = BackfillPlan { job: name, from: request.from, to: request.to, dry_run: true, slots };
        return Ok(Json(plan).into_response());
    }
    let team = state.jobs.borrow().get(&name).and_then(|job| job.team.clone());
    let detail = format!("{} – {}, {} slots", request.from, request.to, slots.len());
    let audit = caller.audit(Action::Backfill, Some((&name, team.as_deref())), AuditOutcome::Done, detail);
    let record = state.store.request_backfill(&name, request.from, request.to, &slots, &audit, request.cascade).await?;
    Ok((StatusCode::ACCEPTED, Json(BackfillView::of(record))).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct BackfillQuery {
    job: Option<String>,
}

/// `GET /api/backfills?job=NAME`: the newest 100 backfills, newest first, with their progress.
async fn backfills(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<BackfillQuery>,
) -> Result<Json<Vec<BackfillView>>, Problem> {
    let records = state.store.backfills(query.job.as_deref(), 100).await?;
    Ok(Json(records.into_iter().filter(|record| state.may_read(&caller, &record.job)).map(BackfillView::of).collect()))
}

async fn backfill_progress(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    id: Result<Path<i64>, Rejected>,
) -> Result<Json<BackfillView>, Problem> {
    let Path(id) = id.map_err(|_| Problem::bad_request("a backfill id is a number"))?;
    let record = state
        .store
        .backfill(id)
        .await?
        .filter(|record| state.may_read(&caller, &record.job))
        .ok_or_else(|| Problem::not_found(format!("no backfill {id}")))?;
    Ok(Json(BackfillView::of(record)))
}
