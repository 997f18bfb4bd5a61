//! The JSON API and the pages through the router, without a socket: a SQLite ledger with runs
//! in it, a job file, and a cluster snapshot with a leader.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::Value;
use tenure::http::{AppState, Auth, ReadAccess, router};
use tenure::leadership::{Leadership, Term};
use tenure::model::{ClusterSnapshot, Member, RunOutcome, RunStatus, Trigger};
use tenure::store::{Claim, Reads, SkipIfRunning, Sqlite, Store};
use tokio::sync::watch;
use tower::ServiceExt;

const TOKEN: &str = "s3cret-token";

const JOBS: &str = r#"
jobs:
  - name: tick
    schedule: "* * * * *"
    shell: "echo tick"
    overrides: [DRY_RUN, REGION]
  - name: berlin
    schedule: "30 2 * * *"
    timezone: Europe/Berlin
    http: { url: "http://127.0.0.1:9/x" }
    paused: true
"#;

struct Fixture {
    state: AppState,
    store: Store,
}

async fn fixture(reads_need: ReadAccess) -> Fixture {
    let (store, reads) = Store::with_reads(Sqlite::in_memory().await.unwrap());
    let term = Term::for_tests(42, "cluster");
    store.begin_term(&term, "node-a").await.unwrap();
    // 30 runs of `tick`: every third failed, one still running.
    for minute in 0..30 {
        let slot = Utc.with_ymd_and_hms(2026, 11, 23, 10, minute, 0).unwrap();
        let claim = Claim {
            job: "tick",
            slot,
            trigger: Trigger::Schedule,
            term: &term,
            node: "node-a",
            config_hash: "abc",
            skip_if_running: SkipIfRunning::No,
            claimed_at: slot,
            planned_at: slot,
        };
        let claimed = store.claim_run(&claim).await.unwrap();
        // Its start recorded ahead, at the plan; it began 120 ms later.
        store.start_runs(&term, &[(claimed.run_id, slot)]).await.unwrap();
        if minute == 29 {
            store.update_output(claimed.run_id, "half way <there>").await.unwrap();
            continue;
        }
        let status = if minute % 3 == 0 { RunStatus::Failed } else { RunStatus::Succeeded };
        let outcome = RunOutcome {
            status,
            exit_code: Some(if status == RunStatus::Failed { 3 } else { 0 }),
            http_status: None,
            error: (status == RunStatus::Failed).then(|| "exited with status 3".to_owned()),
            output: format!("run {minute}"),
            began_at: Some(slot + chrono::Duration::milliseconds(120)),
            finished_at: slot + chrono::Duration::seconds(2),
        };
        store.finish_run(claimed.run_id, &outcome).await.unwrap();
    }
    let jobs = tenure::config::parse(JOBS, "jobs.yaml").unwrap();
    let member = |node: &str| Member {
        node: node.to_owned(),
        version: "0.1.0".to_owned(),
        address: "127.0.0.1:1".to_owned(),
        config_hash: jobs.hash().to_owned(),
        started_at: Utc::now(),
    };
    let mut snapshot = ClusterSnapshot { leader: Some(("node-a".to_owned(), 42)), roster: Vec::new() };
    snapshot.observe(&[member("node-a"), member("node-b")], Utc::now());
    let state = AppState {
        node_id: "node-b".to_owned(),
        store: reads,
        leadership: watch::channel(Leadership::Follower { leader: Some("node-a".to_owned()) }).1,
        coordinator: None,
        jobs: watch::channel(Arc::new(jobs)).1,
        cluster: watch::channel(snapshot).1,
        auth: Auth::new(Some(TOKEN), reads_need),
        pages: Default::default(),
    };
    Fixture { state, store }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn send(state: &AppState, request: Request<Body>) -> Answer {
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Answer { status, content_type, headers, body: String::from_utf8(bytes.to_vec()).unwrap() }
}

async fn get(state: &AppState, uri: &str) -> Answer {
    send(state, Request::get(uri).body(Body::empty()).unwrap()).await
}

fn post(uri: &str, authorization: Option<&str>) -> axum::http::request::Builder {
    let builder = Request::post(uri);
    match authorization {
        Some(value) => builder.header(header::AUTHORIZATION, value),
        None => builder,
    }
}

/// A page as the administrator's browser, signed in, sees it: with the forms it may use.
async fn signed_in_get(state: &AppState, uri: &str) -> Answer {
    send(state, Request::get(uri).header(header::AUTHORIZATION, basic(TOKEN)).body(Body::empty()).unwrap()).await
}

fn basic(password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}")))
}

#[tokio::test]
async fn jobs_cluster_and_terms_read_as_json() {
    let f = fixture(ReadAccess::Open).await;
    let jobs = get(&f.state, "/api/jobs").await;
    assert_eq!(jobs.status, StatusCode::OK);
    assert_eq!(jobs.headers["x-total-count"], "2");
    assert_eq!(get(&f.state, "/api/jobs?page=2").await.json(), serde_json::json!([]), "past the last page");
    let jobs = jobs.json();
    assert_eq!(jobs[0]["name"], "tick");
    assert_eq!(jobs[0]["description"], "Every minute");
    assert_eq!(jobs[0]["recent"].as_array().unwrap().len(), 20, "a strip of the last 20 outcomes");
    assert_eq!(jobs[0]["last"]["status"], "running");
    assert!(jobs[0]["next_utc"].is_string());
    assert_eq!(jobs[1]["paused"], true);
    assert_eq!(jobs[1]["paused_by"], "file");
    assert_eq!(jobs[1]["timezone"], "Europe/Berlin");
    assert!(jobs[1]["next_utc"].is_null(), "a paused job has no next fire time");

    let cluster = get(&f.state, "/api/cluster").await.json();
    assert_eq!(cluster["leader"]["node"], "node-a");
    assert_eq!(cluster["leader"]["term"], 42);
    assert!(cluster["leader"]["since"].is_string(), "since comes from the terms history");
    assert_eq!(cluster["replicas"].as_array().unwrap().len(), 2);
    assert_eq!(cluster["warnings"].as_array().unwrap().len(), 0);
    let terms = get(&f.state, "/api/terms").await.json();
    assert_eq!(terms[0]["term"], 42);
    assert_eq!(terms[0]["current"], true);

    let openapi = get(&f.state, "/api/openapi.json").await;
    assert_eq!(openapi.status, StatusCode::OK);
    let paths = openapi.json()["paths"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    for path in [
        "/api/jobs",
        "/api/jobs/{name}",
        "/api/jobs/{name}/runs",
        "/api/jobs/{name}/trigger",
        "/api/jobs/{name}/pause",
        "/api/jobs/{name}/resume",
        "/api/runs/{id}",
        "/api/cluster",
        "/api/terms",
        "/api/openapi.json",
        "/api/jobs/{name}/next",
        "/api/timeline",
    ] {
        assert!(paths.iter().any(|p| p == path), "{path} missing from the OpenAPI document");
    }
}

#[tokio::test]
async fn a_job_ledger_pages_by_cursor_and_filters_by_status() {
    let f = fixture(ReadAccess::Open).await;
    let first = get(&f.state, "/api/jobs/tick/runs?limit=12").await.json();
    let runs = first["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 12);
    assert_eq!(runs[0]["status"], "running", "newest first");
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = get(&f.state, &format!("/api/jobs/tick/runs?limit=12&cursor={cursor}")).await.json();
    let third_cursor = second["next_cursor"].as_str().unwrap();
    let third = get(&f.state, &format!("/api/jobs/tick/runs?limit=12&cursor={third_cursor}")).await.json();
    assert_eq!(third["runs"].as_array().unwrap().len(), 6);
    assert!(third["next_cursor"].is_null(), "the last page says so");

    let failed = get(&f.state, "/api/jobs/tick/runs?status=failed").await.json();
    let failed = failed["runs"].as_array().unwrap();
    assert_eq!(failed.len(), 10);
    assert!(failed.iter().all(|run| run["status"] == "failed" && run["exit_code"] == 3));
    assert_eq!(failed[0]["duration_ms"], 1880);
    assert_eq!(failed[0]["lateness_ms"], 120);

    let bad = get(&f.state, "/api/jobs/tick/runs?status=exploded").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.content_type, "application/problem+json");
    assert!(bad.json()["detail"].as_str().unwrap().contains("expected one of running, succeeded"));
    let missing = get(&f.state, "/api/jobs/nope/runs").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.content_type, "application/problem+json");

    let id = runs[0]["id"].as_i64().unwrap();
    let run = get(&f.state, &format!("/api/runs/{id}")).await.json();
    assert_eq!(run["output"], "half way <there>", "a running run shows its live output");
    assert_eq!(get(&f.state, "/api/runs/999999").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn mutations_need_the_bearer_token_and_a_double_click_fires_once() {
    let f = fixture(ReadAccess::Open).await;
    let refused = send(&f.state, post("/api/jobs/tick/trigger", None).body(Body::empty()).unwrap()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.content_type, "application/problem+json");
    assert!(refused.headers.contains_key(header::WWW_AUTHENTICATE));
    let wrong = send(&f.state, post("/api/jobs/tick/trigger", Some("Bearer nope")).body(Body::empty()).unwrap()).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    // Basic auth is for the pages' forms, which carry an anti-forgery field; the API wants bearer.
    let basic_api =
        send(&f.state, post("/api/jobs/tick/trigger", Some(&basic(TOKEN))).body(Body::empty()).unwrap()).await;
    assert_eq!(basic_api.status, StatusCode::UNAUTHORIZED);

    let bearer = format!("Bearer {TOKEN}");
    let click = || {
        post("/api/jobs/tick/trigger", Some(&bearer)).header("Idempotency-Key", "click-1").body(Body::empty()).unwrap()
    };
    let first = send(&f.state, click()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let second = send(&f.state, click()).await;
    assert_eq!(first.json()["id"], second.json()["id"], "the same key is one trigger");
    assert_eq!(f.store.pending_triggers().await.unwrap().len(), 1);
    let unknown = send(&f.state, post("/api/jobs/nope/trigger", Some(&bearer)).body(Body::empty()).unwrap()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // Resume overrides the job file's `paused: true`; pause is recorded as the operator's.
    let resumed = send(&f.state, post("/api/jobs/berlin/resume", Some(&bearer)).body(Body::empty()).unwrap()).await;
    assert_eq!(resumed.status, StatusCode::OK);
    let berlin = get(&f.state, "/api/jobs/berlin").await.json();
    assert_eq!(berlin["paused"], false);
    assert!(berlin["next_utc"].is_string());
    send(&f.state, post("/api/jobs/tick/pause", Some(&bearer)).body(Body::empty()).unwrap()).await;
    let tick = get(&f.state, "/api/jobs/tick").await.json();
    assert_eq!((tick["paused"].clone(), tick["paused_by"].clone()), (Value::Bool(true), Value::from("operator")));
}

#[tokio::test]
async fn pages_render_and_forms_need_basic_auth_and_the_forgery_field() {
    let f = fixture(ReadAccess::Open).await;
    let overview = get(&f.state, "/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.content_type.starts_with("text/html"));
    for text in
        ["node-a", "term <b id=\"leader-term\">42</b>", "tick", "Every minute", "berlin", "paused", "Europe/Berlin"]
    {
        assert!(overview.body.contains(text), "overview lacks {text:?}");
    }
    let anonymous = get(&f.state, "/jobs/tick").await;
    assert!(!anonymous.body.contains("id=\"trigger\""), "no action for someone not signed in");
    assert!(anonymous.body.contains("href=\"/signin\""));
    let job = signed_in_get(&f.state, "/jobs/tick").await;
    assert_eq!(job.status, StatusCode::OK);
    assert!(job.body.contains("id=\"trigger\""));
    assert!(job.body.contains("exited with status 3"));
    assert!(job.body.contains("<svg"), "the duration chart");
    assert!(!job.body.contains("id=\"older\""), "30 runs fit on one page of 50");
    let failed = get(&f.state, "/jobs/tick?status=failed").await;
    assert_eq!(failed.body.matches("<span class=\"status failed\">failed</span>").count(), 10);
    let run_id = f.state.store.job_runs("tick", Some(RunStatus::Running), None, 1).await.unwrap()[0].id;
    let run = get(&f.state, &format!("/runs/{run_id}")).await;
    assert!(
        run.body.contains("half way &#60;there&#62;") || run.body.contains("half way &lt;there&gt;"),
        "output is escaped: {}",
        run.body
    );
    assert!(run.body.contains("data-refresh"), "a running run refreshes live");
    let terms = get(&f.state, "/terms").await;
    assert!(terms.body.contains("node-a") && terms.body.contains("current"));
    // In-process leadership (as `tenure dev`): the page says what a term is there, not etcd's.
    let what = terms.body.split("id=\"what-a-term-is\">").nth(1).unwrap().split("</p>").next().unwrap();
    assert!(what.contains("in-process leadership") && !what.contains("etcd revision"), "{what}");
    assert_eq!(get(&f.state, "/jobs/nope").await.status, StatusCode::NOT_FOUND);

    let csrf = job.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    // The value is bound to the session cookie the page set.
    let session = job.headers[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let form = |authorization: Option<&str>, csrf: &str| {
        post("/jobs/tick/pause", authorization)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &session)
            .body(Body::from(format!("csrf={csrf}")))
            .unwrap()
    };
    assert_eq!(send(&f.state, form(None, &csrf)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(send(&f.state, form(Some(&basic(TOKEN)), "forged")).await.status, StatusCode::FORBIDDEN);
    assert_eq!(send(&f.state, form(Some(&basic("wrong")), &csrf)).await.status, StatusCode::UNAUTHORIZED);
    let done = send(&f.state, form(Some(&basic(TOKEN)), &csrf)).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(done.headers[header::LOCATION], "/jobs/tick?done=pause");
    assert!(f.store.job_controls().await.unwrap()["tick"].paused);
}

/// A cancel through the API and through the run page's form: recorded on the running row with
/// who asked and why (the leader acts on it), the same request again changes nothing, a run that
/// has ended is a 409 and an unknown one a 404, in problem+json; the form is offered only while
/// the run goes and carries the anti-forgery field; a row that did not run says why.
#[tokio::test]
async fn a_cancel_is_recorded_for_the_leader_and_a_finished_or_unknown_run_is_refused_clearly() {
    let f = fixture(ReadAccess::Open).await;
    let running = f.state.store.job_runs("tick", Some(RunStatus::Running), None, 1).await.unwrap()[0].id;
    let finished = f.state.store.job_runs("tick", Some(RunStatus::Succeeded), None, 1).await.unwrap()[0].id;
    let bearer = format!("Bearer {TOKEN}");
    let cancel = |id: i64, authorization: Option<&str>, body: &str| {
        post(&format!("/api/runs/{id}/cancel"), authorization)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let refused = send(&f.state, cancel(running, None, "")).await;
    assert_eq!((refused.status, refused.content_type.as_str()), (StatusCode::UNAUTHORIZED, "application/problem+json"));
    let asked = send(&f.state, cancel(running, Some(&bearer), r#"{"reason": "wrong input"}"#)).await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{}", asked.body);
    assert_eq!((asked.json()["id"].as_i64(), asked.json()["status"].as_str()), (Some(running), Some("running")));
    let again = send(&f.state, cancel(running, Some(&bearer), "")).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    let pending = f.store.pending_cancels().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].run_id, pending[0].reason.as_str()),
        (running, "cancelled by admin-token (api): wrong input")
    );
    let ended = send(&f.state, cancel(finished, Some(&bearer), "")).await;
    assert_eq!((ended.status, ended.content_type.as_str()), (StatusCode::CONFLICT, "application/problem+json"));
    assert!(ended.json()["detail"].as_str().unwrap().contains("has ended (succeeded)"), "{}", ended.body);
    let unknown = send(&f.state, cancel(999_999, Some(&bearer), "")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let garbled = send(&f.state, cancel(running, Some(&bearer), r#"{"why": 1}"#)).await;
    assert_eq!(garbled.status, StatusCode::BAD_REQUEST);

    // The page: the form while the run goes (with the session's anti-forgery value), none after;
    // only to someone signed in who may cancel.
    assert!(!get(&f.state, &format!("/runs/{running}")).await.body.contains("/cancel\""));
    let page = signed_in_get(&f.state, &format!("/runs/{running}")).await;
    assert!(page.body.contains(&format!("action=\"/runs/{running}/cancel\"")), "{}", page.body);
    assert!(!signed_in_get(&f.state, &format!("/runs/{finished}")).await.body.contains("/cancel\""));
    let cookie = page.headers[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let csrf = page.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let form = |csrf: &str| {
        post(&format!("/runs/{running}/cancel"), Some(&basic(TOKEN)))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &cookie)
            .body(Body::from(format!("csrf={csrf}&reason=from+the+page")))
            .unwrap()
    };
    assert_eq!(send(&f.state, form("forged")).await.status, StatusCode::FORBIDDEN);
    let done = send(&f.state, form(&csrf)).await;
    assert_eq!(
        (done.status, done.headers[header::LOCATION].to_str().unwrap()),
        (StatusCode::SEE_OTHER, &*format!("/runs/{running}"))
    );
    let finished_form = send(
        &f.state,
        post(&format!("/runs/{finished}/cancel"), Some(&basic(TOKEN)))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &cookie)
            .body(Body::from(format!("csrf={csrf}")))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (finished_form.status, finished_form.content_type.starts_with("text/html")),
        (StatusCode::CONFLICT, true)
    );

    // The leader acted: the row is `killed` with who and why, and its page says why.
    let term = Term::for_tests(42, "cluster");
    assert_eq!(f.store.apply_cancels(&term, &[running]).await.unwrap(), [running]);
    let outcome = RunOutcome {
        status: RunStatus::Killed,
        exit_code: None,
        http_status: None,
        error: Some("cancelled by admin-token (api): wrong input".to_owned()),
        output: String::new(),
        began_at: None,
        finished_at: Utc::now(),
    };
    f.store.finish_run(running, &outcome).await.unwrap();
    let page = get(&f.state, &format!("/runs/{running}")).await;
    let why = page.body.split("id=\"why\">").nth(1).unwrap().split("</dd>").next().unwrap();
    assert_eq!(why, "cancelled by admin-token (api): wrong input");
    assert_eq!(
        get(&f.state, &format!("/api/runs/{running}")).await.json()["error"],
        "cancelled by admin-token (api): wrong input"
    );
}

#[tokio::test]
async fn protected_reads_need_the_token_but_health_and_metrics_stay_open() {
    let f = fixture(ReadAccess::TokenRequired).await;
    for uri in ["/", "/jobs/tick", "/terms", "/api/jobs", "/api/cluster"] {
        let answer = get(&f.state, uri).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(answer.headers.contains_key(header::WWW_AUTHENTICATE), "{uri}");
    }
    let with =
        send(&f.state, Request::get("/").header(header::AUTHORIZATION, basic(TOKEN)).body(Body::empty()).unwrap())
            .await;
    assert_eq!(with.status, StatusCode::OK);
    for uri in ["/healthz", "/metrics", "/readyz"] {
        assert_eq!(get(&f.state, uri).await.status, StatusCode::OK, "{uri}");
    }
}

#[tokio::test]
async fn malformed_requests_get_clear_problems_and_change_nothing() {
    let f = fixture(ReadAccess::Open).await;
    let bearer = format!("Bearer {TOKEN}");
    let trigger = |body: Body| post("/api/jobs/tick/trigger", Some(&bearer)).body(body).unwrap();
    let problem = |answer: &Answer, status: StatusCode, needle: &str| {
        assert_eq!(answer.status, status, "{}", answer.body);
        assert_eq!(answer.content_type, "application/problem+json", "{}", answer.body);
        let detail = answer.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains(needle), "{detail:?} lacks {needle:?}");
    };
    problem(&send(&f.state, trigger(Body::from("{not json"))).await, StatusCode::BAD_REQUEST, "expected a JSON object");
    problem(
        &send(&f.state, trigger(Body::from(r#"{"idempotency_key": "k", "extra": 1}"#))).await,
        StatusCode::BAD_REQUEST,
        "unknown field",
    );
    problem(&send(&f.state, trigger(Body::from(vec![b'x'; 100_000]))).await, StatusCode::PAYLOAD_TOO_LARGE, "bytes");
    let wrong_method = send(&f.state, Request::get("/api/jobs/tick/trigger").body(Body::empty()).unwrap()).await;
    problem(&wrong_method, StatusCode::METHOD_NOT_ALLOWED, "methods");
    let delete = send(&f.state, Request::delete("/api/jobs").body(Body::empty()).unwrap()).await;
    problem(&delete, StatusCode::METHOD_NOT_ALLOWED, "methods");
    problem(&get(&f.state, "/api/nope").await, StatusCode::NOT_FOUND, "openapi");
    problem(&get(&f.state, "/api/runs/abc").await, StatusCode::BAD_REQUEST, "number");
    for tricky in ["/api/jobs/..%2F..%2Fetc%2Fpasswd/runs", "/api/jobs/%00/runs", "/api/jobs/tick%20/runs"] {
        problem(&get(&f.state, tricky).await, StatusCode::NOT_FOUND, "no job");
    }
    let tricky_trigger =
        send(&f.state, post("/api/jobs/..%2Ftick/trigger", Some(&bearer)).body(Body::empty()).unwrap()).await;
    problem(&tricky_trigger, StatusCode::NOT_FOUND, "no job");
    problem(
        &send(&f.state, post("/api/jobs/tick/pause", Some("Bearer wrong")).body(Body::empty()).unwrap()).await,
        StatusCode::UNAUTHORIZED,
        "Bearer",
    );

    // Nothing was recorded by any of that.
    assert!(f.store.pending_triggers().await.unwrap().is_empty());
    assert!(f.store.job_controls().await.unwrap().is_empty());

    // The body's key is used like the header's.
    let keyed = send(&f.state, trigger(Body::from(r#"{"idempotency_key": "body-key"}"#))).await;
    assert_eq!(keyed.status, StatusCode::ACCEPTED, "{}", keyed.body);
    assert_eq!(keyed.json()["idempotency_key"], "body-key");
}

#[tokio::test]
async fn idempotency_keys_are_per_job_and_bad_keys_are_refused() {
    let f = fixture(ReadAccess::Open).await;
    let bearer = format!("Bearer {TOKEN}");
    let keyed = |job: &str, key: &[u8]| {
        post(&format!("/api/jobs/{job}/trigger"), Some(&bearer))
            .header("Idempotency-Key", axum::http::HeaderValue::from_bytes(key).unwrap())
            .body(Body::empty())
            .unwrap()
    };
    let tick = send(&f.state, keyed("tick", b"shared-1")).await;
    assert_eq!(tick.status, StatusCode::ACCEPTED, "{}", tick.body);
    let berlin = send(&f.state, keyed("berlin", b"shared-1")).await;
    assert_eq!(berlin.status, StatusCode::ACCEPTED, "{}", berlin.body);
    assert_eq!(berlin.json()["job"], "berlin", "the same key for another job is that job's own trigger");
    assert_ne!(berlin.json()["id"], tick.json()["id"]);
    let again = send(&f.state, keyed("tick", b"shared-1")).await;
    assert_eq!(again.json()["id"], tick.json()["id"], "the same key for the same job is one trigger");
    let pending: Vec<String> = f.store.pending_triggers().await.unwrap().into_iter().map(|t| t.job).collect();
    assert_eq!(pending, ["tick", "berlin"]);

    let refused = |answer: &Answer| {
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        assert_eq!(answer.content_type, "application/problem+json");
        let detail = answer.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("1 to 255 visible ASCII characters"), "{detail}");
    };
    refused(&send(&f.state, keyed("tick", "clé-1".as_bytes())).await);
    refused(&send(&f.state, keyed("tick", b"")).await);
    refused(&send(&f.state, keyed("tick", b"two words")).await);
    let body = |key: String| {
        post("/api/jobs/tick/trigger", Some(&bearer))
            .body(Body::from(serde_json::json!({ "idempotency_key": key }).to_string()))
            .unwrap()
    };
    refused(&send(&f.state, body("bell\u{7}".to_owned())).await);
    refused(&send(&f.state, body("k".repeat(256))).await);
    refused(&send(&f.state, body("ключ".to_owned())).await);
    assert_eq!(f.store.pending_triggers().await.unwrap().len(), 2, "a refused key records nothing");
    let longest = send(&f.state, body("k".repeat(255))).await;
    assert_eq!(longest.status, StatusCode::ACCEPTED, "{}", longest.body);

    // A resume of a job nothing pauses records nothing: a resume instant would excuse its slots.
    let resumed = send(&f.state, post("/api/jobs/tick/resume", Some(&bearer)).body(Body::empty()).unwrap()).await;
    assert_eq!(resumed.status, StatusCode::OK);
    assert!(f.store.job_controls().await.unwrap().is_empty());
    // The job file's pause is ended by a resume, and when is recorded.
    send(&f.state, post("/api/jobs/berlin/resume", Some(&bearer)).body(Body::empty()).unwrap()).await;
    assert!(f.store.job_controls().await.unwrap()["berlin"].resumed_at.is_some());
}

#[tokio::test]
async fn internal_errors_show_a_correlation_id_and_no_driver_text() {
    // A ledger that cannot be reached: PostgreSQL on a port nobody listens on.
    let mut f = fixture(ReadAccess::Open).await;
    let pool = tenure::store::connect("postgres://tenure:pw-in-url@127.0.0.1:1/tenure").await.unwrap();
    f.state.store = Reads::new(pool);
    for path in ["/api/jobs/tick/runs", "/jobs/tick", "/terms"] {
        let answer = get(&f.state, path).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {}", answer.body);
        let id = answer.headers.get("x-correlation-id").map(|v| v.to_str().unwrap().to_owned());
        let id = id.unwrap_or_else(|| panic!("{path}: no x-correlation-id header: {}", answer.body));
        assert!(id.len() >= 12, "{id}");
        assert!(answer.body.contains(&id), "{path}: the body names the correlation id {id}: {}", answer.body);
        let lower = answer.body.to_lowercase();
        for internal in ["pool", "timed out", "refused", "sqlx", "os error", "pw-in-url", "127.0.0.1:1"] {
            assert!(!lower.contains(internal), "{path}: {internal:?} shown to the client: {}", answer.body);
        }
    }
}

#[tokio::test]
async fn a_cross_origin_form_post_is_refused_even_with_the_admins_credentials() {
    let f = fixture(ReadAccess::Open).await;
    // The attacker reads the job page (signed in themselves) and takes its anti-forgery value.
    let attackers_view = signed_in_get(&f.state, "/jobs/tick").await;
    let csrf =
        attackers_view.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    // The administrator's browser, signed in (basic auth cached), submits the attacker's form.
    let forged = |headers: &[(&str, &str)]| {
        let mut request = post("/jobs/tick/pause", Some(&basic(TOKEN)))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::HOST, "tenure.internal:8080");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Body::from(format!("csrf={csrf}"))).unwrap()
    };
    let modern = send(&f.state, forged(&[("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")])).await;
    assert_eq!(modern.status, StatusCode::FORBIDDEN, "{}", modern.body);
    let origin_only = send(&f.state, forged(&[("origin", "https://evil.example")])).await;
    assert_eq!(origin_only.status, StatusCode::FORBIDDEN, "{}", origin_only.body);
    // A browser that sends neither header: the value is bound to the attacker's own session.
    let bare = send(&f.state, forged(&[])).await;
    assert_eq!(bare.status, StatusCode::FORBIDDEN, "{}", bare.body);
    assert_eq!(
        f.store.job_controls().await.unwrap().get("tick").map(|control| control.paused),
        None,
        "nothing was paused"
    );

    // The administrator's own page and form, same origin: accepted.
    let own = signed_in_get(&f.state, "/jobs/tick").await;
    let cookie = own.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();
    let own_csrf = own.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let request = post("/jobs/tick/pause", Some(&basic(TOKEN)))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "tenure.internal:8080")
        .header("origin", "http://tenure.internal:8080")
        .header("sec-fetch-site", "same-origin")
        .header(header::COOKIE, &session)
        .body(Body::from(format!("csrf={own_csrf}")))
        .unwrap();
    let done = send(&f.state, request).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert!(f.store.job_controls().await.unwrap()["tick"].paused);
}

#[tokio::test]
async fn the_terms_page_shows_the_newest_terms_only() {
    let fixture = fixture(ReadAccess::Open).await;
    // A long-lived cluster: hundreds of hand-overs after the fixture's term 42.
    for revision in 43..43 + tenure::http::view::TERMS_SHOWN as i64 + 50 {
        fixture.store.begin_term(&Term::for_tests(revision, "cluster"), "node-a").await.unwrap();
    }
    let newest = 42 + tenure::http::view::TERMS_SHOWN as i64 + 50;
    let answer = get(&fixture.state, "/api/terms").await;
    assert_eq!(answer.status, StatusCode::OK);
    let terms = answer.json();
    let terms = terms.as_array().unwrap();
    assert_eq!(terms.len(), tenure::http::view::TERMS_SHOWN);
    assert_eq!(terms[0]["term"], newest);
    assert_eq!(terms[terms.len() - 1]["term"], newest + 1 - tenure::http::view::TERMS_SHOWN as i64);
    let page = get(&fixture.state, "/terms").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains(">42<"), "the oldest term is not on the page");
}

/// A manual run sets only the variables its job lists under `overrides`: any other name (the
/// loader's, the shell's, or just not listed) is refused with a 400 that names the allowed ones,
/// a job listing none takes no variable at all, and the job's view lists them for a form.
#[tokio::test]
async fn a_trigger_sets_only_the_variables_its_job_lists_under_overrides() {
    let f = fixture(ReadAccess::Open).await;
    let bearer = format!("Bearer {TOKEN}");
    let trigger = |state: AppState, body: &'static str| {
        let bearer = bearer.clone();
        async move { send(&state, post("/api/jobs/tick/trigger", Some(&bearer)).body(Body::from(body)).unwrap()).await }
    };
    for body in [
        r#"{"env": {"LD_PRELOAD": "/tmp/evil.so"}}"#,
        r#"{"env": {"DRY_RUN": "1", "PATH": "/tmp/evil"}}"#,
        r#"{"env": {"BASH_ENV": "/tmp/evil.sh"}}"#,
        r#"{"env": {"COLOR": "blue"}}"#,
    ] {
        let refused = trigger(f.state.clone(), body).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}: {}", refused.body);
        assert_eq!(refused.content_type, "application/problem+json");
        let detail = refused.json()["detail"].as_str().unwrap().to_owned();
        assert!(detail.contains("job `tick` lets a manual run set only DRY_RUN, REGION (its `overrides`)"), "{detail}");
    }
    let accepted = trigger(f.state.clone(), r#"{"env": {"REGION": "eu"}}"#).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    assert_eq!(get(&f.state, "/api/jobs/tick").await.json()["overrides"], serde_json::json!(["DRY_RUN", "REGION"]));

    // The same job without `overrides:`: no variable at all, whatever its name.
    let mut state = f.state.clone();
    let listed_none =
        tenure::config::parse(&JOBS.replace("    overrides: [DRY_RUN, REGION]\n", ""), "jobs.yaml").unwrap();
    state.jobs = watch::channel(Arc::new(listed_none)).1;
    let refused = trigger(state.clone(), r#"{"env": {"DRY_RUN": "1"}}"#).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.body);
    let detail = refused.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("job `tick` lets a manual run set no variable (it lists none under `overrides`)"),
        "{detail}"
    );
    assert_eq!(get(&state, "/api/jobs/tick").await.json()["overrides"], serde_json::json!([]));
    // A trigger without `env` is as welcome as ever.
    assert_eq!(trigger(state, r#"{"reason": "just run it"}"#).await.status, StatusCode::ACCEPTED);
}

/// A trigger's overrides come back on its run (JSON and page), a
/// backfill is refused without the token and for a bad window, its dry run lists the slots,
/// and the job page shows its progress.
#[tokio::test]
async fn overrides_and_backfills_through_the_api_and_the_pages() {
    let f = fixture(ReadAccess::Open).await;
    let bearer = format!("Bearer {TOKEN}");
    let body = r#"{"env": {"DRY_RUN": "1"}, "reason": "after <the> outage", "concurrency": "allow"}"#;
    let trigger = send(&f.state, post("/api/jobs/tick/trigger", Some(&bearer)).body(Body::from(body)).unwrap()).await;
    assert_eq!(trigger.status, StatusCode::ACCEPTED, "{}", trigger.body);
    let trigger = trigger.json();
    assert_eq!((trigger["env"]["DRY_RUN"].as_str(), trigger["concurrency"].as_str()), (Some("1"), Some("allow")));
    let http_env = r#"{"env": {"X": "1"}}"#;
    let refused =
        send(&f.state, post("/api/jobs/berlin/trigger", Some(&bearer)).body(Body::from(http_env)).unwrap()).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.json()["detail"].as_str().unwrap().contains("an HTTP job has no environment"), "{}", refused.body);

    // The leader claims it (here by hand, as the scheduler does).
    let term = Term::for_tests(42, "cluster");
    let slot = chrono::DateTime::parse_from_rfc3339(trigger["requested_at"].as_str().unwrap()).unwrap().to_utc();
    let claim = Claim {
        job: "tick",
        slot,
        trigger: Trigger::Manual { request: trigger["id"].as_i64().unwrap() },
        term: &term,
        node: "node-a",
        config_hash: "abc",
        skip_if_running: SkipIfRunning::No,
        claimed_at: slot,
        planned_at: slot,
    };
    let run_id = f.store.claim_run(&claim).await.unwrap().run_id;
    let run = get(&f.state, &format!("/api/runs/{run_id}")).await.json();
    assert_eq!(run["request"]["reason"], "after <the> outage");
    assert_eq!(run["request"]["env"]["DRY_RUN"], "1");
    assert_eq!(run["request"]["concurrency"], "allow");
    let page = get(&f.state, &format!("/runs/{run_id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("after &#60;the&#62; outage"), "escaped on the page: {}", page.body);
    assert!(page.body.contains("<code>DRY_RUN=1</code>") && page.body.contains("allow (asked for)"), "{}", page.body);

    let window = r#"{"from": "2026-11-23T09:00:00Z", "to": "2026-11-23T09:04:00Z", "dry_run": true}"#;
    let anonymous = send(&f.state, post("/api/jobs/tick/backfill", None).body(Body::from(window)).unwrap()).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let dry = send(&f.state, post("/api/jobs/tick/backfill", Some(&bearer)).body(Body::from(window)).unwrap()).await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
    assert_eq!(dry.json()["slots"].as_array().unwrap().len(), 5, "09:00 to 09:04, both ends");
    for (window, needle) in [
        (r#"{"from": "2026-11-23T10:00:00Z", "to": "2026-11-23T09:00:00Z"}"#, "is after `to`"),
        (r#"{"from": "2026-11-23T10:00:00Z", "to": "2999-01-01T00:00:00Z"}"#, "is in the future"),
        (r#"{"from": "2000-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}"#, "more than 10000 slots"),
        (r#"{"from": "yesterday", "to": "2026-01-01T00:00:00Z"}"#, "expected a JSON object"),
    ] {
        let refused =
            send(&f.state, post("/api/jobs/tick/backfill", Some(&bearer)).body(Body::from(window)).unwrap()).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{window}");
        assert!(refused.json()["detail"].as_str().unwrap().contains(needle), "{}", refused.body);
    }
    // 10:00 to 10:29 are in the ledger already (the fixture's runs): only 10:30 to 10:34 queue.
    let window = r#"{"from": "2026-11-23T10:25:00Z", "to": "2026-11-23T10:34:00Z"}"#;
    let recorded =
        send(&f.state, post("/api/jobs/tick/backfill", Some(&bearer)).body(Body::from(window)).unwrap()).await;
    assert_eq!(recorded.status, StatusCode::ACCEPTED, "{}", recorded.body);
    let recorded = recorded.json();
    assert_eq!((recorded["slots"].as_i64(), recorded["pending"].as_i64()), (Some(5), Some(5)));
    let id = recorded["id"].as_i64().unwrap();
    assert_eq!(get(&f.state, &format!("/api/backfills/{id}")).await.json()["finished"], false);
    assert_eq!(get(&f.state, "/api/backfills?job=tick").await.json().as_array().unwrap().len(), 1);
    let job = get(&f.state, "/jobs/tick").await;
    assert!(job.body.contains("id=\"backfills\""), "{}", job.body);
}

/// The headers a browser is told to protect every answer with, whatever produced it.
fn assert_browser_protections(what: &str, answer: &Answer) {
    let header = |name: &str| answer.headers.get(name).map(|value| value.to_str().unwrap().to_owned());
    let policy = header("content-security-policy").unwrap_or_else(|| panic!("{what}: no Content-Security-Policy"));
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "object-src 'none'",
    ] {
        assert!(policy.contains(directive), "{what}: the policy lacks {directive}: {policy}");
    }
    assert!(!policy.contains("unsafe-"), "{what}: {policy}");
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{what}");
    assert_eq!(header("x-frame-options").as_deref(), Some("DENY"), "{what}");
    assert_eq!(header("referrer-policy").as_deref(), Some("same-origin"), "{what}");
}

/// Every answer carries the CSP, `nosniff`, framing denied and the referrer policy: pages, the
/// API, problems, 404s of both, static files, probes and metrics. The pages hold no inline script,
/// style or handler (the policy would refuse them). No HSTS on a plain listener.
#[tokio::test]
async fn every_answer_carries_the_browser_protections_and_pages_have_nothing_inline() {
    let f = fixture(ReadAccess::Open).await;
    let run = get(&f.state, "/api/jobs/tick/runs").await.json()["runs"][0]["id"].as_i64().unwrap();
    let run_page = format!("/runs/{run}");
    let mut answers = Vec::new();
    for path in [
        "/",
        "/jobs/tick",
        run_page.as_str(),
        "/terms",
        "/jobs/no-such-job",
        "/no/such/page",
        "/static/app.css",
        "/static/live.js",
        "/api/jobs",
        "/api/cluster",
        "/api/jobs/no-such-job/runs",
        "/api/no-such-endpoint",
        "/api/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        answers.push((path.to_owned(), get(&f.state, path).await));
    }
    answers.push((
        "an API change without the token".to_owned(),
        send(&f.state, post("/api/jobs/tick/pause", None).body(Body::empty()).unwrap()).await,
    ));
    answers.push((
        "a forged form".to_owned(),
        send(
            &f.state,
            post("/jobs/tick/pause", Some(&basic(TOKEN)))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("csrf=x"))
                .unwrap(),
        )
        .await,
    ));
    answers.push((
        "a wrong method".to_owned(),
        send(&f.state, Request::delete("/api/jobs").body(Body::empty()).unwrap()).await,
    ));
    answers.push((
        "sign-in".to_owned(),
        send(
            &f.state,
            Request::get("/signin").header(header::AUTHORIZATION, basic(TOKEN)).body(Body::empty()).unwrap(),
        )
        .await,
    ));
    let statuses: Vec<(&str, u16)> =
        answers.iter().map(|(what, answer)| (what.as_str(), answer.status.as_u16())).collect();
    assert!(
        statuses.iter().any(|(_, status)| *status == 404) && statuses.iter().any(|(_, status)| *status == 401),
        "{statuses:?}"
    );
    for (what, answer) in &answers {
        assert_browser_protections(what, answer);
        assert!(answer.headers.get("strict-transport-security").is_none(), "{what}: HSTS on a plain listener");
        if answer.content_type.starts_with("text/html") {
            let body = answer.body.to_lowercase();
            assert!(!body.contains(" style="), "{what}: an inline style: {}", answer.body);
            let inline_script =
                body.match_indices("<script").any(|(at, _)| !body[at..].split('>').next().unwrap().contains("src="));
            assert!(!inline_script, "{what}: an inline script: {}", answer.body);
            let handler = regex_lite::Regex::new(r"\son[a-z]+\s*=").unwrap();
            assert!(!handler.is_match(&body), "{what}: an inline event handler: {}", answer.body);
        }
    }
    // The pages' charts (the job's durations, the terms' timeline) are styled by the stylesheet.
    let job = get(&f.state, "/jobs/tick").await;
    assert!(job.body.contains("<svg") && job.body.contains("class=\"chart"), "{}", job.body);
}

/// A form post that forges the administrator's browser, with the given request headers (the
/// replica is reached as `tenure.internal:8080`).
async fn form_post(f: &Fixture, headers: &[(&str, &str)]) -> Answer {
    let own = signed_in_get(&f.state, "/jobs/tick").await;
    let cookie = own.headers[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let csrf = own.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let mut request = post("/jobs/tick/pause", Some(&basic(TOKEN)))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "tenure.internal:8080")
        .header(header::COOKIE, cookie);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(&f.state, request.body(Body::from(format!("csrf={csrf}"))).unwrap()).await
}

/// The Origin (or, without one, the Referer) must be this replica's own origin: scheme, host and
/// port. A plain listener is `http://`; another port, or `https://`, is another origin.
#[tokio::test]
async fn an_origin_or_referer_with_another_scheme_or_port_is_refused() {
    let f = fixture(ReadAccess::Open).await;
    for headers in [
        &[("origin", "https://tenure.internal:8080")][..],
        &[("origin", "http://tenure.internal:9090")],
        &[("origin", "http://tenure.internal")],
        &[("origin", "null")],
        &[("origin", "https://tenure.internal:8080"), ("sec-fetch-site", "same-origin")],
        &[("referer", "https://tenure.internal:8080/jobs/tick")],
        &[("referer", "http://tenure.internal:9090/jobs/tick")],
    ] {
        let answer = form_post(&f, headers).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{headers:?}: {}", answer.body);
    }
    assert_eq!(f.store.job_controls().await.unwrap().get("tick").map(|control| control.paused), None);
    let own = form_post(&f, &[("referer", "http://tenure.internal:8080/jobs/tick")]).await;
    assert_eq!(own.status, StatusCode::SEE_OTHER, "{}", own.body);
    let own = form_post(&f, &[("origin", "http://TENURE.internal:8080"), ("sec-fetch-site", "same-origin")]).await;
    assert_eq!(own.status, StatusCode::SEE_OTHER, "{}", own.body);
}

/// `X-Forwarded-Host`, `X-Forwarded-Proto` and `Forwarded` say nothing unless `--public-url`
/// says a proxy serves tenure; then the origin they describe (or the public URL's) is this one.
#[tokio::test]
async fn forwarded_headers_count_only_with_a_public_url() {
    let proxied =
        [("origin", "https://tenure.example"), ("x-forwarded-host", "tenure.example"), ("x-forwarded-proto", "https")];
    let mut f = fixture(ReadAccess::Open).await;
    for headers in [
        &proxied[..],
        &[("origin", "http://tenure.example"), ("x-forwarded-host", "tenure.example")],
        &[("origin", "https://tenure.example"), ("forwarded", "for=10.0.0.1;proto=https;host=tenure.example")],
    ] {
        let answer = form_post(&f, headers).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "without --public-url {headers:?}: {}", answer.body);
    }
    assert_eq!(f.store.job_controls().await.unwrap().get("tick").map(|control| control.paused), None);

    let public: tenure::http::PublicUrl = "https://tenure.example/".parse().unwrap();
    f.state.auth =
        Auth::new(Some(TOKEN), ReadAccess::Open).served(tenure::http::Served { tls: false, public_url: Some(public) });
    for headers in [
        &[("origin", "http://tenure.example"), ("x-forwarded-host", "tenure.example"), ("x-forwarded-proto", "https")]
            [..],
        &[("origin", "https://evil.example"), ("x-forwarded-host", "tenure.example"), ("x-forwarded-proto", "https")],
        &[("origin", "https://tenure.example:8443"), ("forwarded", "proto=https;host=tenure.example")],
    ] {
        let answer = form_post(&f, headers).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "with --public-url {headers:?}: {}", answer.body);
    }
    for headers in [
        &proxied[..],
        // The public URL itself, whatever the proxy says of the host.
        &[("origin", "https://tenure.example")],
        // Another name the proxy serves tenure under, told in either header.
        &[("origin", "https://cron.example"), ("x-forwarded-host", "cron.example"), ("x-forwarded-proto", "https")],
        &[
            ("origin", "https://cron.example:8443"),
            ("forwarded", "for=10.0.0.1;proto=https;host=\"cron.example:8443\", for=10.0.0.2"),
        ],
    ] {
        let answer = form_post(&f, headers).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "with --public-url {headers:?}: {}", answer.body);
    }
}

/// Every route of the router, as (method, path template), and two no route has. `{name}`, `{id}` and `{action}` are
/// filled with generated segments.
const ROUTES: &[(&str, &str)] = &[
    // The routes that read a body, thrice: most of what can go wrong is there.
    ("POST", "/api/jobs/{name}/trigger"),
    ("POST", "/api/jobs/{name}/backfill"),
    ("POST", "/jobs/{name}/{action}"),
    ("POST", "/api/jobs/{name}/trigger"),
    ("POST", "/api/jobs/{name}/backfill"),
    ("POST", "/jobs/{name}/{action}"),
    ("POST", "/api/runs/{id}/cancel"),
    ("POST", "/runs/{id}/cancel"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/{name}"),
    ("GET", "/api/jobs/{name}/runs"),
    ("POST", "/api/jobs/{name}/trigger"),
    ("POST", "/api/jobs/{name}/pause"),
    ("POST", "/api/jobs/{name}/resume"),
    ("POST", "/api/jobs/{name}/backfill"),
    ("GET", "/api/backfills"),
    ("GET", "/api/backfills/{id}"),
    ("GET", "/api/runs/{id}"),
    ("POST", "/api/runs/{id}/cancel"),
    ("GET", "/api/cluster"),
    ("GET", "/api/terms"),
    ("GET", "/api/openapi.json"),
    ("GET", "/api/{name}"),
    ("GET", "/"),
    ("GET", "/jobs/{name}"),
    ("POST", "/jobs/{name}/{action}"),
    ("GET", "/runs/{id}"),
    ("POST", "/runs/{id}/cancel"),
    ("GET", "/terms"),
    ("GET", "/signin"),
    ("GET", "/static/app.css"),
    ("GET", "/{name}"),
];

/// Each byte as `%XX`: any byte string, invalid UTF-8 and `/` included, as one path segment.
fn percent_encoded(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("%{byte:02X}")).collect()
}

/// A path segment or query value: numbers at and past the edges, words the routes know, any
/// bytes percent-encoded, and raw text with broken escapes.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "nope",
            "0",
            "1",
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999",
            "1e3",
            "trigger",
            "backfill",
            "failed",
            "running",
            "..",
            "",
        ])
        .prop_map(str::to_owned),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(|bytes| percent_encoded(&bytes)),
        "[a-zA-Z0-9%._~+-]{0,12}",
    ]
}

/// A segment for `placeholder`: mostly one the route knows (so the handler behind it runs),
/// otherwise hostile text.
fn segment(known: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(known).prop_map(str::to_owned),
        1 => hostile_text(),
    ]
}

/// Instants at the edges of what chrono represents.
fn edge_instant() -> impl Strategy<Value = serde_json::Value> {
    prop::sample::select(vec![
        "-262143-01-01T00:00:00Z",
        "-262143-01-01T00:00:00.000001Z",
        "+262142-12-31T23:59:59.999999999Z",
    ])
    .prop_map(serde_json::Value::from)
}

/// Instants a client may send: the edges of what chrono represents, years out of its range,
/// ordinary ones, and what is no instant.
fn hostile_instant() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        3 => edge_instant(),
        2 => prop::sample::select(vec![
            "0000-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "2026-11-23T09:00:00Z",
            "2026-11-23T10:34:00Z",
            "2026-11-23T10:00:00+14:00",
        ])
        .prop_map(serde_json::Value::from),
        1 => (-262_143i64..=262_142, 1u32..=12, 1u32..=28).prop_map(|(year, month, day)| serde_json::Value::from(
            format!("{year:+07}-{month:02}-{day:02}T00:00:00Z")
        )),
        1 => prop::sample::select(vec!["-262144-12-31T23:59:59Z", "+262143-01-01T00:00:00Z", "yesterday", ""])
            .prop_map(serde_json::Value::from),
        1 => any::<i64>().prop_map(serde_json::Value::from),
        1 => Just(serde_json::Value::Null),
    ]
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "\\PC{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[A-Za-z_0-9]{0,8}", inner, 0..4)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A backfill window.
fn backfill_body() -> impl Strategy<Value = Vec<u8>> {
    (hostile_instant(), hostile_instant(), prop::option::of(prop_oneof![Just(serde_json::json!(true)), any_json()]))
        .prop_map(|(from, to, dry_run)| {
            let mut body = serde_json::json!({ "from": from, "to": to });
            if let Some(dry_run) = dry_run {
                body["dry_run"] = dry_run;
            }
            body.to_string().into_bytes()
        })
}

/// A trigger's overrides.
fn trigger_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::option::of("\\PC{0,8}"),
        prop::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..3),
        prop::option::of("\\PC{0,8}"),
        prop::option::of(prop::sample::select(vec!["allow", "forbid", "replace", "skip", "bogus"])),
    )
        .prop_map(|(key, env, reason, concurrency)| {
            serde_json::json!({ "idempotency_key": key, "env": env, "reason": reason, "concurrency": concurrency })
                .to_string()
                .into_bytes()
        })
}

/// Stands in a generated form for the session's anti-forgery value.
const CSRF: &str = "CSRF-OF-THE-SESSION";

/// A body for `template`: mostly the shape its route reads, otherwise any JSON or bytes.
fn hostile_body(template: &str) -> BoxedStrategy<Vec<u8>> {
    let shaped = match template {
        "/api/jobs/{name}/backfill" => backfill_body().boxed(),
        "/api/jobs/{name}/trigger" => trigger_body().boxed(),
        "/api/runs/{id}/cancel" => prop::option::of(hostile_text())
            .prop_map(|reason| serde_json::json!({ "reason": reason }).to_string().into_bytes())
            .boxed(),
        "/runs/{id}/cancel" => (prop_oneof![3 => Just(CSRF.to_owned()), 1 => hostile_text()], hostile_text())
            .prop_map(|(csrf, reason)| format!("csrf={csrf}&reason={reason}").into_bytes())
            .boxed(),
        "/jobs/{name}/{action}" => {
            (prop_oneof![3 => Just(CSRF.to_owned()), 1 => hostile_text()], prop::option::of(hostile_text()))
                .prop_map(|(csrf, key)| match key {
                    Some(key) => format!("csrf={csrf}&key={key}").into_bytes(),
                    None => format!("csrf={csrf}").into_bytes(),
                })
                .boxed()
        }
        _ => Just(Vec::new()).boxed(),
    };
    prop_oneof![
        6 => shaped,
        1 => any_json().prop_map(|body| body.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
    .boxed()
}

/// One generated request: a route (and sometimes another method), its segments, a query, a body
/// and credentials.
#[derive(Debug, Clone)]
struct Hostile {
    method: &'static str,
    template: &'static str,
    segments: [String; 3],
    query: Vec<(String, String)>,
    body: Vec<u8>,
    content_type: &'static str,
    credential: Credential,
}

/// What a generated request shows: the token as its route takes it (a bearer token for the API,
/// basic auth with the session for the pages), none, or a wrong one.
#[derive(Debug, Clone, Copy)]
enum Credential {
    Right,
    None,
    Wrong,
}

fn hostile_request() -> impl Strategy<Value = Hostile> {
    prop::sample::select(ROUTES).prop_flat_map(|(method, template)| {
        (
            prop_oneof![9 => Just(method), 1 => prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD"])],
            [segment(&["tick", "berlin"]), segment(&["1", "2", "30", "31"]), segment(&["trigger", "pause", "resume"])],
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(vec!["page", "status", "cursor", "limit", "job", "done"])
                            .prop_map(str::to_owned),
                        "[a-z%]{0,5}"
                    ],
                    hostile_text(),
                ),
                0..4,
            ),
            hostile_body(template),
            prop::sample::select(vec![
                "application/json",
                "application/x-www-form-urlencoded",
                "application/x-www-form-urlencoded",
                "text/plain",
                "",
            ]),
            prop_oneof![6 => Just(Credential::Right), 1 => Just(Credential::None), 1 => Just(Credential::Wrong)],
        )
            .prop_map(move |(method, segments, query, body, content_type, credential)| Hostile {
                method,
                template,
                segments,
                query,
                body,
                content_type,
                credential,
            })
    })
}

impl Hostile {
    fn uri(&self) -> String {
        let mut path = self.template.to_owned();
        for (placeholder, segment) in ["{name}", "{id}", "{action}"].iter().zip(&self.segments) {
            path = path.replace(placeholder, segment);
        }
        // `/api/{name}`, `/{name}`: paths no route has.
        if !self.query.is_empty() {
            let pairs: Vec<String> = self.query.iter().map(|(key, value)| format!("{key}={value}")).collect();
            path = format!("{path}?{}", pairs.join("&"));
        }
        path
    }

    /// The request, or `None` when the generated text is no URI at all (the listener refuses
    /// those before any route sees them).
    fn request(&self, session: &str, csrf: &str) -> Option<Request<Body>> {
        let uri: axum::http::Uri = self.uri().parse().ok()?;
        let mut request = Request::builder().method(self.method).uri(uri);
        let api = self.template.starts_with("/api/");
        request = match self.credential {
            Credential::None => request,
            Credential::Right if api => request.header(header::AUTHORIZATION, format!("Bearer {TOKEN}")),
            Credential::Right => request
                .header(header::AUTHORIZATION, basic(TOKEN))
                .header(header::COOKIE, session)
                .header("sec-fetch-site", "same-origin"),
            Credential::Wrong => request.header(header::AUTHORIZATION, "Bearer wrong"),
        };
        if !self.content_type.is_empty() {
            request = request.header(header::CONTENT_TYPE, self.content_type);
        }
        // A page form with the session's own anti-forgery value, so the handler behind it runs.
        let body = match std::str::from_utf8(&self.body) {
            Ok(text) if text.contains(CSRF) => text.replace(CSRF, csrf).into_bytes(),
            _ => self.body.clone(),
        };
        request.body(Body::from(body)).ok()
    }
}

/// Generated paths, queries and bodies at every route, with and without credentials: every answer
/// is a 2xx, a redirect, or a 4xx in the surface's error format (problem+json under `/api`, the
/// error page elsewhere); never a 5xx, a panic or a bare text answer.
#[test]
fn every_route_answers_generated_input_with_a_success_or_a_clear_client_error() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let f = runtime.block_on(fixture(ReadAccess::Open));
    let page = runtime.block_on(signed_in_get(&f.state, "/jobs/tick"));
    let session = page.headers[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let csrf = page.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let config = Config { cases: 1_000, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let outcome = runner.run(&hostile_request(), |hostile| {
        let Some(request) = hostile.request(&session, &csrf) else { return Ok(()) };
        let answer = runtime.block_on(send(&f.state, request));
        let what = format!(
            "{} {} -> {} {}: {}",
            hostile.method,
            hostile.uri(),
            answer.status,
            answer.content_type,
            answer.body
        );
        if answer.status.is_server_error() {
            return Err(TestCaseError::fail(format!("a server error: {what}")));
        }
        if answer.status.is_client_error() {
            let api = hostile.uri().starts_with("/api/");
            let expected = if api { "application/problem+json" } else { "text/html" };
            if !answer.content_type.starts_with(expected) {
                return Err(TestCaseError::fail(format!("not {expected}: {what}")));
            }
        }
        Ok(())
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

/// A job's next ten fire times, in its zone and in UTC: from the API and on its page (both
/// columns, or UTC alone with `?tz=utc`, a link and no script).
#[tokio::test]
async fn a_job_shows_its_next_ten_fire_times_in_its_zone_and_in_utc() {
    let f = fixture(ReadAccess::Open).await;
    let next = get(&f.state, "/api/jobs/berlin/next").await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
    let next = next.json();
    assert_eq!((next["timezone"].as_str(), next["paused"].as_bool()), (Some("Europe/Berlin"), Some(true)));
    let fires = next["fires"].as_array().unwrap();
    assert_eq!(fires.len(), 10, "{next}");
    for pair in fires.windows(2) {
        let (a, b) = (pair[0]["utc"].as_str().unwrap(), pair[1]["utc"].as_str().unwrap());
        assert!(a < b, "in time order: {a} then {b}");
    }
    // 02:30 in Berlin is 00:30 or 01:30 UTC, as daylight saving has it.
    for fire in fires {
        let (local, utc) = (fire["local"].as_str().unwrap(), fire["utc"].as_str().unwrap());
        assert!(
            local.contains("T02:30:00+01:00") || local.contains("T02:30:00+02:00") || local.contains("T03:00:00+02:00"),
            "{local}"
        );
        let same =
            chrono::DateTime::parse_from_rfc3339(local).unwrap() == chrono::DateTime::parse_from_rfc3339(utc).unwrap();
        assert!(same, "{local} is {utc}");
    }
    assert_eq!(get(&f.state, "/api/jobs/berlin/next?count=3").await.json()["fires"].as_array().unwrap().len(), 3);
    assert_eq!(get(&f.state, "/api/jobs/berlin/next?count=1000").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&f.state, "/api/jobs/nope/next").await.status, StatusCode::NOT_FOUND);

    let page = get(&f.state, "/jobs/berlin").await;
    assert_eq!(page.status, StatusCode::OK);
    let upcoming = section(&page.body, "upcoming");
    assert!(
        upcoming.contains("<th scope=\"col\">Europe/Berlin</th>") && upcoming.contains("<th scope=\"col\">UTC</th>"),
        "{upcoming}"
    );
    assert_eq!(upcoming.matches("<tr class=\"fire\">").count(), 10, "{upcoming}");
    let first = fires[0]["utc"].as_str().unwrap().replace('T', " ").replace('Z', "");
    assert!(upcoming.contains(&first[..16]), "{first} in {upcoming}");
    assert!(upcoming.contains("paused"), "a paused job's times say it is paused: {upcoming}");
    assert!(upcoming.contains("href=\"/jobs/berlin?tz=utc#upcoming\""), "{upcoming}");
    let utc_page = get(&f.state, "/jobs/berlin?tz=utc").await;
    let utc_only = section(&utc_page.body, "upcoming");
    assert!(!utc_only.contains("<th scope=\"col\">Europe/Berlin</th>"), "{utc_only}");
    assert_eq!(utc_only.matches("<tr class=\"fire\">").count(), 10, "{utc_only}");
    assert!(utc_only.contains("href=\"/jobs/berlin#upcoming\""), "{utc_only}");
}

/// The element with `id` and what follows it up to its closing `</section>`.
fn section<'a>(body: &'a str, id: &str) -> &'a str {
    let start = body.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in {body}"));
    let end = body[start..].find("</section>").map_or(body.len(), |end| start + end);
    &body[start..end]
}

/// The next 24 hours of every job's slots, per clock hour, with the busiest minutes: 520 jobs,
/// three of them per second. A job firing more than 60 times in an hour is walked no further
/// there (never millions of slots enumerated) and counted apart, and the page says so.
#[tokio::test]
async fn the_timeline_counts_every_jobs_slots_per_hour_and_says_where_it_capped() {
    let f = fixture(ReadAccess::Open).await;
    let mut yaml = String::from("jobs:\n");
    for i in 0..500 {
        yaml.push_str(&format!("  - {{ name: hourly-{i}, schedule: '0 * * * *', shell: 'true' }}\n"));
    }
    for i in 0..3 {
        yaml.push_str(&format!("  - {{ name: every-second-{i}, schedule: '* * * * * *', shell: 'true' }}\n"));
    }
    for i in 0..16 {
        yaml.push_str(&format!("  - {{ name: nightly-{i}, schedule: '30 2 * * *', shell: 'true' }}\n"));
    }
    yaml.push_str("  - { name: resting, schedule: '0 * * * *', shell: 'true', paused: true }\n");
    let mut state = f.state.clone();
    state.jobs = watch::channel(Arc::new(tenure::config::parse(&yaml, "jobs.yaml").unwrap())).1;

    let timeline = get(&state, "/api/timeline").await;
    assert_eq!(timeline.status, StatusCode::OK, "{}", timeline.body);
    let timeline = timeline.json();
    assert_eq!((timeline["jobs"].as_u64(), timeline["paused"].as_u64()), (Some(519), Some(1)), "{timeline}");
    let hours = timeline["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    for hour in hours {
        let start: chrono::DateTime<Utc> = hour["start"].as_str().unwrap().parse().unwrap();
        let nightly = if start.format("%H").to_string() == "02" { 16 } else { 0 };
        // 500 hourly and the nightly ones at 02:30; the 3 per-second ones apart.
        assert_eq!(hour["slots"].as_u64(), Some(500 + nightly), "{hour}");
        assert_eq!(hour["over_cap"].as_u64(), Some(3), "{hour}");
        assert_eq!(hour["jobs"].as_u64(), Some(503 + nightly), "{hour}");
    }
    assert_eq!(timeline["capped_jobs"], serde_json::json!(["every-second-0", "every-second-1", "every-second-2"]));
    // The busiest minutes are the tops of the hours, 500 jobs each; capped jobs are left out.
    let busiest = &timeline["busiest_minutes"][0];
    assert_eq!(busiest["slots"].as_u64(), Some(500), "{busiest}");
    assert!(busiest["start"].as_str().unwrap().ends_with(":00:00Z"), "{busiest}");
    assert_eq!(busiest["jobs"].as_array().unwrap().len(), 5, "the first few named: {busiest}");
    assert_eq!(busiest["more"].as_u64(), Some(495), "{busiest}");

    let page = get(&state, "/timeline").await;
    assert_eq!(page.status, StatusCode::OK);
    let body = &page.body;
    assert!(body.contains("<h1>Next 24 hours</h1>"), "{body}");
    assert_eq!(body.matches("<tr class=\"hour\">").count(), 24, "{body}");
    assert!(body.contains("every-second-0"), "the capped jobs are named: {body}");
    assert!(body.contains("every-second-2 fire more than 60 times in an hour"), "the page says it capped: {body}");
    assert!(body.contains("<td>500</td><td>503</td><td>3</td>"), "the hour's jobs past the cap, apart: {body}");
}
