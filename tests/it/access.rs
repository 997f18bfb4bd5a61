//! Sign-in and permissions through the router, without a socket, on a SQLite ledger: named
//! tokens created through the API, every role and team against every write endpoint and page
//! form (a cancel on a running run of each job), each attempt found in the audit trail under its
//! request id; revocation and expiry; reads scoped by team under `--protect-reads`; the
//! break-glass token, and CSRF, as before.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use chrono::Utc;
use serde_json::{Value, json};
use tenure::http::{AppState, Auth, ReadAccess, router};
use tenure::leadership::{Leadership, Term};
use tenure::model::{ClusterSnapshot, Trigger};
use tenure::store::{Claim, SkipIfRunning, Sqlite, Store};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::harness::wait_until;

const ADMIN: &str = "break-glass-token";

const JOBS: &str = r#"
jobs:
  - { name: pay, schedule: "0 * * * *", shell: "true", team: payments }
  - { name: index, schedule: "0 * * * *", shell: "true", team: search }
  - { name: sweep, schedule: "0 * * * *", shell: "true" }
"#;

async fn state(reads: ReadAccess) -> AppState {
    state_and_ledger(reads).await.0
}

/// The state, and the leader's side of its ledger (to claim runs to cancel).
async fn state_and_ledger(reads: ReadAccess) -> (AppState, Store) {
    let (store, reads_side) = Store::with_reads(Sqlite::in_memory().await.unwrap());
    let jobs = tenure::config::parse(JOBS, "jobs.yaml").unwrap();
    let state = AppState {
        node_id: "node-a".to_owned(),
        store: reads_side,
        leadership: watch::channel(Leadership::Follower { leader: None }).1,
        coordinator: None,
        jobs: watch::channel(Arc::new(jobs)).1,
        cluster: watch::channel(ClusterSnapshot::default()).1,
        auth: Auth::new(Some(ADMIN), reads),
        pages: Default::default(),
    };
    (state, store)
}

/// A running run of each job (claimed, never acted on: a cancel asks again and again).
async fn running_runs(store: &Store) -> Vec<i64> {
    let term = Term::for_tests(1, "c");
    store.begin_term(&term, "leader").await.unwrap();
    let mut runs = Vec::new();
    for job in ["pay", "index", "sweep"] {
        let at = Utc::now();
        let claim = Claim {
            job,
            slot: at,
            trigger: Trigger::Schedule,
            term: &term,
            node: "leader",
            config_hash: "hash",
            skip_if_running: SkipIfRunning::No,
            claimed_at: at,
            planned_at: at,
        };
        runs.push(store.claim_run(&claim).await.unwrap().run_id);
    }
    runs
}

struct Answer {
    status: StatusCode,
    request_id: String,
    set_cookie: Option<String>,
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
    let header_text = |name: header::HeaderName| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let request_id = header_text(header::HeaderName::from_static("x-request-id")).unwrap_or_default();
    let set_cookie = header_text(header::SET_COOKIE);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Answer { status, request_id, set_cookie, body: String::from_utf8(bytes.to_vec()).unwrap() }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn basic(token: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("anyone:{token}")))
}

async fn api(state: &AppState, method: &str, uri: &str, token: Option<&str>, body: Value) -> Answer {
    let mut request = Request::builder().method(method).uri(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, bearer(token));
    }
    let body = if body.is_null() { Body::empty() } else { Body::from(body.to_string()) };
    send(state, request.body(body).unwrap()).await
}

async fn create_token(state: &AppState, name: &str, role: &str, teams: &[&str], expires_in: Option<&str>) -> String {
    let mut body = json!({ "name": name, "role": role, "teams": teams });
    if let Some(expires_in) = expires_in {
        body["expires_in"] = json!(expires_in);
    }
    let answer = api(state, "POST", "/api/tokens", Some(ADMIN), body).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let token = answer.json()["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("tenure_"));
    token
}

/// The audit entry the request `request_id` caused.
async fn audited(state: &AppState, request_id: &str) -> Option<Value> {
    let page = api(state, "GET", "/api/audit?limit=500", Some(ADMIN), Value::Null).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.json()["entries"].as_array().unwrap().iter().find(|entry| entry["request_id"] == request_id).cloned()
}

/// What each principal of the matrix is.
struct Who {
    name: &'static str,
    role: &'static str,
    teams: &'static [&'static str],
}

const PRINCIPALS: [Who; 6] = [
    Who { name: "vera", role: "viewer", teams: &[] },
    Who { name: "petra", role: "operator", teams: &["payments"] },
    Who { name: "sam", role: "operator", teams: &["search"] },
    Who { name: "otto", role: "operator", teams: &[] },
    Who { name: "ada", role: "admin", teams: &[] },
    Who { name: "abe", role: "admin", teams: &["search"] },
];

/// The rule, written out apart from the code under test: an admin does everything; an operator
/// acts on a job of its teams (any job when it has none; a job of no team only then); a viewer
/// changes nothing; tokens and the audit trail are admins' alone.
fn expected(who: &Who, action: &str, job_team: Option<&str>) -> bool {
    match (who.role, action) {
        ("admin", _) => true,
        ("operator", "trigger" | "cancel" | "pause" | "resume" | "backfill") => {
            who.teams.is_empty() || job_team.is_some_and(|team| who.teams.contains(&team))
        }
        _ => false,
    }
}

#[tokio::test]
async fn every_role_and_team_against_every_write_endpoint_and_form_is_decided_and_audited() {
    let (state, ledger) = state_and_ledger(ReadAccess::Open).await;
    let runs = running_runs(&ledger).await;
    let mut tokens = Vec::new();
    for who in &PRINCIPALS {
        tokens.push(create_token(&state, who.name, who.role, who.teams, None).await);
    }
    // The page forms carry the anti-forgery value of one browser session (the admin's page).
    let page = send(
        &state,
        Request::get("/jobs/pay").header(header::AUTHORIZATION, basic(ADMIN)).body(Body::empty()).unwrap(),
    )
    .await;
    let cookie = page.set_cookie.unwrap().split(';').next().unwrap().to_owned();
    let csrf = page.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let from = (Utc::now() - chrono::Duration::hours(3)).to_rfc3339();
    let to = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let mut attempts = 0;
    for (who, token) in PRINCIPALS.iter().zip(&tokens) {
        for ((job, team), run) in
            [("pay", Some("payments")), ("index", Some("search")), ("sweep", None)].into_iter().zip(&runs)
        {
            for action in ["trigger", "cancel", "pause", "resume", "backfill"] {
                let body = if action == "backfill" { json!({ "from": from, "to": to }) } else { Value::Null };
                // A cancel names the job's running run; the others name the job.
                let target = if action == "cancel" { format!("runs/{run}") } else { format!("jobs/{job}") };
                let answer = api(&state, "POST", &format!("/api/{target}/{action}"), Some(token), body).await;
                let allowed = expected(who, action, team);
                let what = format!("{} ({} of {:?}) {action} {job} over the API", who.name, who.role, who.teams);
                assert_eq!(answer.status.is_success(), allowed, "{what}: {} {}", answer.status, answer.body);
                if !allowed {
                    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{what}");
                }
                if action == "trigger" && allowed {
                    assert_eq!(answer.json()["requested_by"], who.name, "{what}: who asked is the principal");
                }
                let entry = audited(&state, &answer.request_id).await.unwrap_or_else(|| panic!("{what}: not audited"));
                assert_eq!(entry["who"], who.name, "{what}");
                assert_eq!(entry["role"], who.role, "{what}");
                assert_eq!(entry["action"], action, "{what}");
                assert_eq!(entry["job"], job, "{what}");
                assert_eq!(entry["job_team"], team.map_or(Value::Null, |team| json!(team)), "{what}");
                assert_eq!(entry["outcome"], if allowed { "done" } else { "refused" }, "{what}");
                attempts += 1;
                if action == "backfill" {
                    continue;
                }
                // The same through the page's form, signed in by basic auth.
                let form = Request::post(format!("/{target}/{action}"))
                    .header(header::AUTHORIZATION, basic(token))
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::COOKIE, &cookie)
                    .body(Body::from(format!("csrf={csrf}")))
                    .unwrap();
                let answer = send(&state, form).await;
                let what = format!("{} ({} of {:?}) {action} {job} by form", who.name, who.role, who.teams);
                let status = if allowed { StatusCode::SEE_OTHER } else { StatusCode::FORBIDDEN };
                assert_eq!(answer.status, status, "{what}: {}", answer.body);
                let entry = audited(&state, &answer.request_id).await.unwrap_or_else(|| panic!("{what}: not audited"));
                assert_eq!((entry["who"].as_str(), entry["action"].as_str()), (Some(who.name), Some(action)), "{what}");
                assert_eq!(entry["outcome"], if allowed { "done" } else { "refused" }, "{what}");
                attempts += 1;
            }
        }
        // Tokens: create and revoke, over the API and by form; the audit trail: read.
        let allowed = who.role == "admin";
        let created = api(
            &state,
            "POST",
            "/api/tokens",
            Some(token),
            json!({ "name": format!("by-{}", who.name), "role": "viewer" }),
        )
        .await;
        assert_eq!(created.status.is_success(), allowed, "{} creates a token: {}", who.name, created.body);
        let entry = audited(&state, &created.request_id).await.unwrap();
        assert_eq!(entry["action"], "token-create");
        assert_eq!(entry["outcome"], if allowed { "done" } else { "refused" });
        let revoked =
            api(&state, "POST", &format!("/api/tokens/by-{}/revoke", who.name), Some(token), Value::Null).await;
        assert_eq!(revoked.status.is_success(), allowed, "{} revokes a token: {}", who.name, revoked.body);
        assert!(audited(&state, &revoked.request_id).await.is_some(), "{} revoke audited", who.name);
        let form = Request::post("/tokens")
            .header(header::AUTHORIZATION, basic(token))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &cookie)
            .body(Body::from(format!("csrf={csrf}&name=form-by-{}&role=viewer&teams=&expires_in=", who.name)))
            .unwrap();
        let answer = send(&state, form).await;
        assert_eq!(answer.status.is_success(), allowed, "{} creates a token by form: {}", who.name, answer.status);
        if allowed {
            assert!(answer.body.contains("id=\"new-token\""), "the new token is shown once");
        }
        assert!(audited(&state, &answer.request_id).await.is_some(), "{} token form audited", who.name);
        let audit = api(&state, "GET", "/api/audit", Some(token), Value::Null).await;
        assert_eq!(audit.status.is_success(), allowed, "{} reads the audit trail", who.name);
    }
    assert_eq!(attempts, PRINCIPALS.len() * 3 * 9);
    // Each cancel done is audited with the reason it recorded, which names who asked.
    let cancels = api(&state, "GET", "/api/audit?action=cancel&outcome=done&limit=500", Some(ADMIN), Value::Null).await;
    assert!(cancels.json()["entries"].as_array().unwrap().iter().all(|entry| {
        entry["detail"]
            .as_str()
            .is_some_and(|detail| detail.starts_with(&format!("cancelled by {} (", entry["who"].as_str().unwrap())))
    }));
}

#[tokio::test]
async fn refused_attempts_without_a_valid_token_or_with_a_forged_form_are_audited_and_the_admin_token_still_works() {
    let state = state(ReadAccess::Open).await;
    // Nobody, and a wrong token: 401, audited as anonymous.
    for token in [None, Some("tenure_0123456789abcdef_00"), Some("not-a-token")] {
        let answer = api(&state, "POST", "/api/jobs/pay/pause", token, Value::Null).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{token:?}");
        let entry = audited(&state, &answer.request_id).await.expect("audited");
        assert_eq!((entry["who"].as_str(), entry["outcome"].as_str()), (Some("anonymous"), Some("refused")));
        assert_eq!(entry["action"], "pause");
    }
    // A browser's basic auth is not enough for the API (no forgery through a remembered password).
    let basic_api = send(
        &state,
        Request::post("/api/jobs/pay/pause").header(header::AUTHORIZATION, basic(ADMIN)).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(basic_api.status, StatusCode::UNAUTHORIZED);
    // A forged form (a value of no session): refused and audited under the signed-in principal.
    let operator = create_token(&state, "olga", "operator", &[], None).await;
    let forged = send(
        &state,
        Request::post("/jobs/pay/pause")
            .header(header::AUTHORIZATION, basic(&operator))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("csrf=forged"))
            .unwrap(),
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let entry = audited(&state, &forged.request_id).await.expect("audited");
    assert_eq!((entry["who"].as_str(), entry["outcome"].as_str()), (Some("olga"), Some("refused")));
    // A cross-site form: refused before its body, audited.
    let cross = send(
        &state,
        Request::post("/jobs/pay/pause")
            .header(header::AUTHORIZATION, basic(&operator))
            .header("sec-fetch-site", "cross-site")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("csrf=x"))
            .unwrap(),
    )
    .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    assert!(audited(&state, &cross.request_id).await.is_some());
    // The break-glass token acts as `admin-token`, audited so.
    let glass = api(&state, "POST", "/api/jobs/pay/trigger", Some(ADMIN), Value::Null).await;
    assert_eq!(glass.status, StatusCode::ACCEPTED);
    assert_eq!(glass.json()["requested_by"], "admin-token");
    let entry = audited(&state, &glass.request_id).await.unwrap();
    assert_eq!((entry["who"].as_str(), entry["via"].as_str()), (Some("admin-token"), Some("admin-token")));
    // A retry of the trigger under its key is the same trigger, audited once.
    let keyed = |key: &str| {
        Request::post("/api/jobs/sweep/trigger")
            .header(header::AUTHORIZATION, bearer(ADMIN))
            .header("idempotency-key", key)
            .body(Body::empty())
            .unwrap()
    };
    send(&state, keyed("k1")).await;
    send(&state, keyed("k1")).await;
    let sweeps = api(&state, "GET", "/api/audit?job=sweep&action=trigger", Some(ADMIN), Value::Null).await.json();
    assert_eq!(sweeps["entries"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_revoked_or_expired_token_is_refused_at_its_next_request() {
    let state = state(ReadAccess::TokenRequired).await;
    let token = create_token(&state, "ci", "operator", &[], None).await;
    let whoami = api(&state, "GET", "/api/whoami", Some(&token), Value::Null).await.json();
    assert_eq!(whoami, json!({ "name": "ci", "role": "operator", "teams": [], "via": "api-token" }));
    let revoked = api(&state, "POST", "/api/tokens/ci/revoke", Some(ADMIN), Value::Null).await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(revoked.json()["revoked_by"], "admin-token");
    assert_eq!(api(&state, "GET", "/api/jobs", Some(&token), Value::Null).await.status, StatusCode::UNAUTHORIZED);
    let pause = api(&state, "POST", "/api/jobs/pay/pause", Some(&token), Value::Null).await;
    assert_eq!(pause.status, StatusCode::UNAUTHORIZED);
    // The name stays taken.
    let again = api(&state, "POST", "/api/tokens", Some(ADMIN), json!({ "name": "ci", "role": "viewer" })).await;
    assert_eq!(again.status, StatusCode::CONFLICT);

    let short = create_token(&state, "short", "viewer", &[], Some("1s")).await;
    assert_eq!(api(&state, "GET", "/api/jobs", Some(&short), Value::Null).await.status, StatusCode::OK);
    let expired = wait_until(Duration::from_secs(5), || async {
        api(&state, "GET", "/api/jobs", Some(&short), Value::Null).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(expired, "a token past its expiry is refused");
    // The list never shows a secret or a hash.
    let list = api(&state, "GET", "/api/tokens", Some(ADMIN), Value::Null).await;
    assert!(!list.body.contains(&token[token.len() - 64..]) && !list.body.contains("hash"), "{}", list.body);
}

#[tokio::test]
async fn protected_reads_show_a_team_its_own_jobs_only() {
    let state = state(ReadAccess::TokenRequired).await;
    let payments = create_token(&state, "pat", "viewer", &["payments"], None).await;
    let everyone = create_token(&state, "eve", "viewer", &[], None).await;
    let names = |answer: Answer| -> Vec<String> {
        answer.json().as_array().unwrap().iter().map(|job| job["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(api(&state, "GET", "/api/jobs", Some(&payments), Value::Null).await), ["pay"]);
    assert_eq!(names(api(&state, "GET", "/api/jobs", Some(&everyone), Value::Null).await), ["pay", "index", "sweep"]);
    assert_eq!(api(&state, "GET", "/api/jobs/index", Some(&payments), Value::Null).await.status, StatusCode::NOT_FOUND);
    assert_eq!(api(&state, "GET", "/api/jobs/pay", Some(&payments), Value::Null).await.status, StatusCode::OK);
    let overview = |token: &str| {
        let request = Request::get("/").header(header::AUTHORIZATION, basic(token)).body(Body::empty()).unwrap();
        send(&state, request)
    };
    let scoped = overview(&payments).await;
    assert!(scoped.body.contains("/jobs/pay") && !scoped.body.contains("/jobs/index"), "{}", scoped.body);
    // The overview's one-second cache is per scope: the next viewer sees its own jobs.
    assert!(overview(&everyone).await.body.contains("/jobs/index"));
    assert_eq!(api(&state, "GET", "/api/jobs", None, Value::Null).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_audit_trail_filters_by_who_job_action_and_time_and_pages_by_cursor() {
    let state = state(ReadAccess::Open).await;
    let otto = create_token(&state, "otto", "operator", &[], None).await;
    for _ in 0..5 {
        api(&state, "POST", "/api/jobs/pay/pause", Some(&otto), Value::Null).await;
        api(&state, "POST", "/api/jobs/sweep/resume", Some(&otto), Value::Null).await;
    }
    let get = |query: &str| {
        let state = state.clone();
        let uri = format!("/api/audit?{query}");
        async move { api(&state, "GET", &uri, Some(ADMIN), Value::Null).await.json() }
    };
    assert_eq!(get("who=otto").await["entries"].as_array().unwrap().len(), 10);
    assert_eq!(get("who=otto&job=pay").await["entries"].as_array().unwrap().len(), 5);
    assert_eq!(get("action=resume").await["entries"].as_array().unwrap().len(), 5);
    assert_eq!(get("action=token-create").await["entries"].as_array().unwrap().len(), 1);
    let future = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let since = url::form_urlencoded::byte_serialize(future.as_bytes()).collect::<String>();
    assert_eq!(get(&format!("since={since}")).await["entries"].as_array().unwrap().len(), 0);
    // Pages of 4, newest first, through every entry once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = get(&format!("who=otto&limit=4&cursor={cursor}")).await;
        seen.extend(page["entries"].as_array().unwrap().iter().map(|entry| entry["id"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 10);
    assert!(seen.windows(2).all(|pair| pair[0] > pair[1]), "newest first, no repeats: {seen:?}");
    let page = send(
        &state,
        Request::get("/audit?who=otto&limit=4")
            .header(header::AUTHORIZATION, basic(ADMIN))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("otto") && page.body.contains("id=\"older\""));
    // What a change was done to: a job, a backfill or, here, a token, under a header that says
    // so (not "Job").
    let created = get("action=token-create").await;
    let token_id = created["entries"][0]["target"].as_str().unwrap().to_owned();
    let page = send(
        &state,
        Request::get("/audit?action=token-create")
            .header(header::AUTHORIZATION, basic(ADMIN))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(page.body.contains("<th scope=\"col\">Target</th>"), "{}", page.body);
    assert!(!page.body.contains("<th scope=\"col\">Job</th>"), "{}", page.body);
    assert!(page.body.contains(&format!("token-create</td><td>{token_id}")), "{}", page.body);
    let viewer = create_token(&state, "vic", "viewer", &[], None).await;
    let refused =
        send(&state, Request::get("/audit").header(header::AUTHORIZATION, basic(&viewer)).body(Body::empty()).unwrap())
            .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
}

/// `GET /api/whoami` on a replica with `token`: its status.
async fn whoami_status(base: &str, token: &str) -> u16 {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    match client.get(format!("{base}/api/whoami")).bearer_auth(token).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn a_revocation_and_an_expiry_hold_on_every_replica_within_a_second() {
    use crate::cluster::{ADMIN_TOKEN, Cluster};
    let cluster = Cluster::start(2, "jobs:\n  - { name: yearly, schedule: '0 0 1 1 *', shell: 'true' }\n").await;
    cluster.wait_for_leader(Duration::from_secs(15)).await;
    let bases = [cluster.url(0), cluster.url(1)];
    for base in &bases {
        crate::harness::wait_for("the replica to answer", Duration::from_secs(10), || async {
            whoami_status(base, ADMIN_TOKEN).await == 200
        })
        .await;
    }
    let client = reqwest::Client::new();
    let create = |name: &'static str, expires_in: Option<&'static str>| {
        let client = client.clone();
        let url = format!("{}/api/tokens", bases[0]);
        async move {
            let body = json!({ "name": name, "role": "operator", "expires_in": expires_in });
            let answer: Value =
                client.post(url).bearer_auth(ADMIN_TOKEN).json(&body).send().await.unwrap().json().await.unwrap();
            answer
        }
    };
    let lasting = create("lasting", None).await;
    let lasting = lasting["token"].as_str().unwrap().to_owned();
    let brief = create("brief", Some("4s")).await;
    let expires_at: chrono::DateTime<Utc> = brief["expires_at"].as_str().unwrap().parse().unwrap();
    let brief = brief["token"].as_str().unwrap().to_owned();
    for base in &bases {
        assert_eq!(whoami_status(base, &lasting).await, 200, "{base}: a token made on replica 0 works here");
        assert_eq!(whoami_status(base, &brief).await, 200, "{base}: before its expiry");
    }
    // Revoked through replica 0: the next request to either replica is refused.
    let revoked =
        client.post(format!("{}/api/tokens/lasting/revoke", bases[0])).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    let answered = std::time::Instant::now();
    for base in bases.iter().rev() {
        assert_eq!(whoami_status(base, &lasting).await, 401, "{base}: revoked");
    }
    println!("revocation refused on both replicas {:?} after its answer", answered.elapsed());
    // Expired: refused by both replicas within a second of its expiry.
    let deadline = expires_at + chrono::Duration::seconds(1);
    let mut refused = [None, None];
    while Utc::now() < deadline + chrono::Duration::seconds(2) && refused.iter().any(Option::is_none) {
        for (index, base) in bases.iter().enumerate() {
            if refused[index].is_none() && whoami_status(base, &brief).await == 401 {
                refused[index] = Some(Utc::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (index, at) in refused.iter().enumerate() {
        let at = at.unwrap_or_else(|| panic!("replica {index} still took the token 3 s after its expiry"));
        println!(
            "replica {index} refused the expired token {} ms after its expiry",
            (at - expires_at).num_milliseconds()
        );
        assert!(at <= deadline, "replica {index} took the token until {at}, past {deadline}");
    }
}

/// The ledger's side, on PostgreSQL and SQLite alike: a token and its audit record in one
/// transaction; revocation keeps the row; the shared key is made once; pruning by age is the
/// only way an entry goes.
async fn tokens_and_audit_in_the_ledger(reads: tenure::store::Reads, store: Store) {
    use tenure::store::{AuditFilter, AuditRecord, NewToken};
    let audit = AuditRecord::by("root", "token-create");
    let token = NewToken {
        id: "0123456789abcdef",
        name: "ci",
        role: "operator",
        teams: "payments,search",
        salt: &[1; 16],
        hash: &[2; 32],
        created_by: "root",
        expires_at: None,
    };
    let record = reads.create_token(&token, &audit).await.unwrap();
    assert_eq!(record.teams, ["payments", "search"]);
    assert!(reads.create_token(&NewToken { id: "fedcba9876543210", ..token.clone() }, &audit).await.is_err());
    let check = reads.token("0123456789abcdef").await.unwrap().unwrap();
    assert!(check.valid && check.salt == [1; 16] && check.hash == [2; 32]);
    let revoked = reads.revoke_token("ci", &AuditRecord::by("root", "token-revoke")).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_by.as_deref(), Some("root"));
    assert!(!reads.token("0123456789abcdef").await.unwrap().unwrap().valid);
    // Revoking again changes and records nothing.
    reads.revoke_token("ci", &AuditRecord::by("root", "token-revoke")).await.unwrap();
    let all = AuditFilter { limit: 100, ..AuditFilter::default() };
    let entries = reads.audit(&all).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|entry| entry.record.action.as_str()).collect();
    assert_eq!(actions, ["token-revoke", "token-create"], "one record per change, newest first");
    assert_eq!(entries[0].record.target.as_deref(), Some("0123456789abcdef"));
    let key = reads.web_key("csrf", &[7; 32]).await.unwrap();
    assert_eq!(reads.web_key("csrf", &[8; 32]).await.unwrap(), key, "made once, then read");
    assert_eq!(store.prune_audit(Utc::now() - chrono::Duration::hours(1), 10).await.unwrap(), 0);
    assert_eq!(store.prune_audit(Utc::now() + chrono::Duration::seconds(1), 1).await.unwrap(), 1, "in batches");
    assert_eq!(reads.audit(&all).await.unwrap().len(), 1);
}

#[tokio::test]
async fn tokens_and_audit_in_the_sqlite_ledger() {
    let (store, reads) = Store::with_reads(Sqlite::in_memory().await.unwrap());
    tokens_and_audit_in_the_ledger(reads, store).await;
}

#[tokio::test]
async fn tokens_and_audit_in_the_postgres_ledger_and_an_audit_row_cannot_be_changed() {
    let pg = crate::harness::Postgres::start().await;
    let url = pg.create_database("access").await;
    let pool = tenure::store::connect(&url).await.unwrap();
    tenure::store::migrate(&pool).await.unwrap();
    let (store, reads) = Store::with_reads(tenure::store::Postgres::new(pool.clone()));
    tokens_and_audit_in_the_ledger(reads, store).await;
    let refused = sqlx::query("UPDATE audit SET who = 'someone else'").execute(&pool).await;
    assert!(refused.is_err_and(|error| error.to_string().contains("append-only")));
}
