//! Sign-in through a real OpenID provider: oidc-provider on node (tests/browser, installed by
//! `npm ci`), started on a free loopback port with two accounts and their groups, in front of a
//! two-replica cluster whose replicas share nothing but the ledger. Chromium signs in at the
//! provider and is an operator of its team on both replicas (one cookie, either replica), then
//! signs out; an HTTP client that speaks the provider's login pages itself forges the state,
//! brings the code of another sign-in (its nonce), replays a used code, and presents expired
//! and altered sessions; `tenure login --sso` signs in with the device grant.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use fantoccini::Locator;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tenure::http::identity::Role;
use tenure::http::session::{Attempt, IDENTITY_COOKIE, Session, SessionKey};

use crate::cluster::{Cluster, Options};
use crate::dashboard::Chromium;
use crate::harness::{free_port, wait_for};

const JOBS: &str = r#"
jobs:
  - name: pay
    schedule: "0 0 1 1 *"
    shell: "echo paid"
    team: payments
  - name: index
    schedule: "0 0 1 1 *"
    shell: "echo indexed"
    team: search
"#;

/// The web client's secret: in the provider's configuration and a file tenure reads; never on
/// a command line, in a log, a URL or a page.
const CLIENT_SECRET: &str = "web-client-secret-5d1e0c7a";

const POLICY: &str = "claim: groups
scopes: [groups]
groups:
  pay-oncall: { role: operator, teams: [payments] }
  staff: { role: viewer }
";

/// oidc-provider on node, in a process group of its own: dropping it kills the group.
struct Provider {
    child: Child,
    port: u16,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Provider {
    /// Start it on `port`, sending browsers back to `redirects`; returns once it listens.
    fn start(port: u16, redirects: &[String]) -> Provider {
        use std::os::unix::process::CommandExt;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/oidc-provider.mjs");
        assert!(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: scripts/test installs it (npm ci in tests/browser)"
        );
        let config = json!({
            "web": { "client_id": "tenure-web", "client_secret": CLIENT_SECRET, "redirect_uris": redirects },
            "cli": { "client_id": "tenure-cli" },
            "accounts": { "alice": ["pay-oncall", "staff"], "victor": ["staff"], "mallory": ["contractors"] },
        });
        let mut child = Command::new("node")
            .arg(script)
            .env("PORT", port.to_string())
            .env("OIDC_TEST_CONFIG", config.to_string())
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node (Debian nodejs; scripts/test installs npm)");
        let stdout = child.stdout.take().unwrap();
        let provider = Provider { child, port };
        let mut lines = BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(line)) if line == "listening" => {
                // Whatever else it prints is read and dropped: a closed pipe would end it.
                std::thread::spawn(move || lines.for_each(drop));
                provider
            }
            other => panic!("oidc-provider did not start: {other:?}"),
        }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Two replicas signing in at `provider_port`, each its own `--public-url`.
async fn cluster(provider_port: u16, dir: &std::path::Path) -> Cluster {
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    std::fs::write(dir.join("client-secret"), format!("{CLIENT_SECRET}\n")).unwrap();
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let env = vec![
        ("TENURE_OIDC_ISSUER".to_owned(), format!("http://127.0.0.1:{provider_port}")),
        ("TENURE_OIDC_CLIENT_ID".to_owned(), "tenure-web".to_owned()),
        ("TENURE_OIDC_CLIENT_SECRET_FILE".to_owned(), path("client-secret")),
        ("TENURE_OIDC_CLI_CLIENT_ID".to_owned(), "tenure-cli".to_owned()),
        ("TENURE_OIDC_POLICY".to_owned(), path("policy.yaml")),
        ("TENURE_PUBLIC_URL".to_owned(), "http://127.0.0.1:{port}/".to_owned()),
        ("TENURE_PROTECT_READS".to_owned(), "true".to_owned()),
    ];
    let cluster = Cluster::start_with(2, JOBS, Options { env, ..Options::default() }).await;
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster
}

/// An HTTP client that keeps cookies (by name: the provider's and tenure's never share one)
/// and follows redirects itself, so a test sees each step and can stop before tenure's callback.
struct Browserless {
    http: reqwest::Client,
    cookies: Mutex<BTreeMap<String, String>>,
}

/// A page: where it was fetched, its status and body.
struct Page {
    url: url::Url,
    status: StatusCode,
    body: String,
}

impl Browserless {
    fn new() -> Browserless {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browserless { http, cookies: Mutex::default() }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .lock()
            .unwrap()
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().unwrap().get(name).cloned()
    }

    fn set_cookie(&self, name: &str, value: Option<&str>) {
        let mut cookies = self.cookies.lock().unwrap();
        match value {
            Some(value) => cookies.insert(name.to_owned(), value.to_owned()),
            None => cookies.remove(name),
        };
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Option<String>, String) {
        let response = request.header("cookie", self.cookie_header()).send().await.unwrap();
        for value in response.headers().get_all("set-cookie") {
            let text = value.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let gone = attributes.to_ascii_lowercase().contains("max-age=0")
                || attributes.contains("1970")
                || value.is_empty();
            self.set_cookie(name.trim(), if gone { None } else { Some(value) });
        }
        let location = response.headers().get("location").map(|value| value.to_str().unwrap().to_owned());
        let status = response.status();
        (status, location, response.text().await.unwrap())
    }

    /// GET `url` and follow redirects until `stop` says a location is not to be fetched (it is
    /// returned unfetched, status 303) or a page answers.
    async fn follow(&self, url: &str, stop: impl Fn(&url::Url) -> bool) -> Page {
        let mut url = url::Url::parse(url).unwrap();
        for _ in 0..20 {
            if stop(&url) {
                return Page { url, status: StatusCode::SEE_OTHER, body: String::new() };
            }
            let (status, location, body) = self.send(self.http.get(url.clone())).await;
            match location {
                Some(location) if status.is_redirection() => url = url.join(&location).unwrap(),
                _ => return Page { url, status, body },
            }
        }
        panic!("too many redirects");
    }

    /// Submit the page's first form: its inputs that carry a value, then `fields`; follow.
    async fn submit(&self, page: &Page, fields: &[(&str, &str)], stop: impl Fn(&url::Url) -> bool) -> Page {
        let form = page.body.split("<form").nth(1).unwrap_or_else(|| panic!("no form at {}: {}", page.url, page.body));
        let action = attribute(form, "action").unwrap();
        let mut values: Vec<(String, String)> = page
            .body
            .split("<input")
            .skip(1)
            .filter_map(|input| Some((attribute(input, "name")?, attribute(input, "value")?)))
            .collect();
        values.extend(fields.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())));
        let target = page.url.join(&action.replace("&amp;", "&")).unwrap();
        let (status, location, body) = self.send(self.http.post(target.clone()).form(&values)).await;
        match location {
            Some(location) if status.is_redirection() => {
                self.follow(target.join(&location).unwrap().as_str(), stop).await
            }
            _ => Page { url: target, status, body },
        }
    }
}

/// The value of `name="..."` in the first tag of `html`.
fn attribute(html: &str, name: &str) -> Option<String> {
    let tag = html.split('>').next()?;
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(tag[start..].split('"').next()?.to_owned())
}

/// Sign in as `user` at the provider from tenure's `/auth/login` on `base`, up to the callback
/// tenure would be sent to (not fetched): its URL.
async fn code_for(agent: &Browserless, base: &str, user: &str) -> url::Url {
    let at_callback = |url: &url::Url| url.path() == "/auth/callback";
    // A new person each time: the provider would otherwise remember the last one.
    agent.cookies.lock().unwrap().retain(|name, _| name.starts_with("tenure_"));
    let login = agent.follow(&format!("{base}/auth/login?back=/jobs/pay"), at_callback).await;
    assert_eq!(login.status, StatusCode::OK, "the provider's login page at {}: {}", login.url, login.body);
    assert!(agent.cookie("tenure_signin").is_some(), "the sign-in's cookie was set");
    let consent = agent.submit(&login, &[("login", user), ("password", "any")], at_callback).await;
    let callback = agent.submit(&consent, &[], at_callback).await;
    assert_eq!(callback.url.path(), "/auth/callback", "{}", callback.body);
    callback.url
}

/// `url` with its `state` parameter replaced by `state`.
fn with_state(url: &url::Url, state: &str) -> url::Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(name, value)| {
            let value = if name == "state" { state.to_owned() } else { value.into_owned() };
            (name.into_owned(), value)
        })
        .collect();
    let mut changed = url.clone();
    changed.query_pairs_mut().clear().extend_pairs(&pairs);
    changed
}

/// Fetch a callback URL at tenure: its status, where it sends the browser, its page.
async fn callback(agent: &Browserless, url: &url::Url) -> (StatusCode, Option<String>, String) {
    agent.send(agent.http.get(url.clone())).await
}

async fn whoami(agent: &Browserless, base: &str) -> Value {
    let (status, _, body) = agent.send(agent.http.get(format!("{base}/api/whoami"))).await;
    if status != StatusCode::OK {
        return json!({ "status": status.as_u16() });
    }
    serde_json::from_str(&body).unwrap()
}

/// Audit entries of `action` whose `who` is `who`, newest first.
async fn audited(base: &str, action: &str) -> Vec<Value> {
    let page = reqwest::Client::new()
        .get(format!("{base}/api/audit?action={action}&limit=200"))
        .bearer_auth(crate::cluster::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let page: Value = page.json().await.unwrap();
    page["entries"].as_array().cloned().unwrap_or_default()
}

/// In Chromium at 1,024 px: the job page's Sign in leads to the provider; signed in there as
/// alice (groups pay-oncall and staff), the policy makes her an operator of payments: her
/// session cookie (HttpOnly, SameSite=Lax, expiring) works on both replicas, she triggers the
/// payments job on the other one, sees no trigger on search's job, and signs out. The client
/// secret is in no replica's log or command line, and the page never shows a token.
#[tokio::test]
async fn signing_in_at_the_identity_provider_in_chromium_holds_on_both_replicas_with_the_policys_role() {
    let dir = tempfile::tempdir().unwrap();
    let provider_port = free_port();
    let cluster = cluster(provider_port, dir.path()).await;
    let redirects: Vec<String> = (0..2).map(|i| format!("{}/auth/callback", cluster.url(i))).collect();
    let _provider = Provider::start(provider_port, &redirects);
    let (first, second) = (cluster.url(0), cluster.url(1));

    let chromium = Chromium::start(&["--window-size=1024,900".to_owned()]).await;
    let browser = &chromium.browser;
    let text = async || browser.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
    // Reads are protected: the job page sends the browser to the provider to sign in.
    browser.goto(&format!("{first}/jobs/pay")).await.unwrap();
    assert!(browser.current_url().await.unwrap().as_str().starts_with(&format!("http://127.0.0.1:{provider_port}/")));
    browser.find(Locator::Css("input[name=login]")).await.unwrap().send_keys("alice").await.unwrap();
    browser.find(Locator::Css("input[name=password]")).await.unwrap().send_keys("any password").await.unwrap();
    browser.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    // The provider's consent page (once the login form has gone), then back to tenure.
    wait_for("the provider's consent page", Duration::from_secs(15), || async {
        browser.find(Locator::Css("input[name=login]")).await.is_err()
    })
    .await;
    browser.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for("back on the job page, signed in", Duration::from_secs(15), || async {
        browser.find(Locator::Id("signed-in")).await.is_ok()
    })
    .await;
    assert_eq!(browser.current_url().await.unwrap().as_str(), format!("{first}/jobs/pay"));
    let shown = browser.find(Locator::Id("signed-in")).await.unwrap().text().await.unwrap();
    assert_eq!(shown, "Signed in as alice (operator of payments).");
    assert!(browser.find(Locator::Id("trigger")).await.is_ok(), "an operator of payments may trigger pay");
    let cookies = browser.get_all_cookies().await.unwrap();
    let identity = cookies.iter().find(|cookie| cookie.name() == IDENTITY_COOKIE).expect("the session cookie");
    assert_eq!(identity.http_only(), Some(true));
    assert_eq!(format!("{:?}", identity.same_site()), "Some(Lax)");
    assert_eq!(identity.secure(), Some(false), "plain HTTP: not Secure (it is over TLS)");
    assert!(identity.expires().is_some(), "the session expires");
    assert!(cookies.iter().all(|cookie| cookie.name() != "tenure_signin"), "the sign-in's own cookie is cleared");

    // The other replica takes the same session: no sign-in there, and the trigger works.
    browser.goto(&format!("{second}/jobs/pay")).await.unwrap();
    assert!(text().await.contains("Signed in as alice (operator of payments)."));
    browser.find(Locator::Id("trigger")).await.unwrap().click().await.unwrap();
    wait_for("the triggered run on the second replica's page", Duration::from_secs(15), || async {
        browser.find_all(Locator::Css("table.runs tbody .status.succeeded")).await.is_ok_and(|found| found.len() == 1)
    })
    .await;
    let row = browser.find(Locator::Css("table.runs tbody tr")).await.unwrap().text().await.unwrap();
    assert!(row.contains("manual"), "{row}");
    let triggers = audited(&first, "trigger").await;
    assert_eq!((triggers[0]["who"].as_str(), triggers[0]["via"].as_str()), (Some("alice"), Some("session")));
    let signins = audited(&second, "sign-in").await;
    assert!(signins.iter().any(|entry| entry["who"] == "alice" && entry["outcome"] == "done"), "{signins:?}");
    // Search's job: readable? No: alice's reads are scoped to payments.
    browser.goto(&format!("{second}/jobs/index")).await.unwrap();
    assert!(text().await.contains("404"), "{}", text().await);
    assert!(browser.find(Locator::Id("trigger")).await.is_err());

    // Sign out: the cookie goes, and the job page asks to sign in again.
    browser.goto(&format!("{second}/jobs/pay")).await.unwrap();
    browser.find(Locator::Id("sign-out")).await.unwrap().click().await.unwrap();
    // The click returns before the next page has loaded: wait for it rather than read the old one.
    wait_for("the signed-out page", Duration::from_secs(15), || async {
        browser.find(Locator::Id("signed-out")).await.is_ok()
    })
    .await;
    let cookies = browser.get_all_cookies().await.unwrap();
    assert!(cookies.iter().all(|cookie| cookie.name() != IDENTITY_COOKIE), "signed out: {cookies:?}");
    chromium.close().await;

    // No secret in a log, a command line or a URL it was sent to.
    for replica in &cluster.replicas {
        let log = std::fs::read_to_string(&replica.log).unwrap();
        assert!(!log.contains(CLIENT_SECRET), "{} logs the client secret", replica.node);
        assert!(!log.contains("tenure_identity=") && !log.contains("session."), "{} logs a session", replica.node);
        if let Some(pid) = replica.pid() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&cmdline).contains(CLIENT_SECRET));
        }
    }
}

/// What the callback refuses, each audited: a forged state; an ID token carrying another
/// sign-in's nonce; a code used already; another sign-in's code (its PKCE challenge); a group
/// the policy does not name. Then sessions: the one a sign-in made works on both replicas; the same
/// session expired, or altered to claim admin, is nobody (a change with it is refused 401).
#[tokio::test]
async fn forged_states_other_nonces_used_codes_and_expired_or_altered_sessions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let provider_port = free_port();
    let cluster = cluster(provider_port, dir.path()).await;
    let redirects: Vec<String> = (0..2).map(|i| format!("{}/auth/callback", cluster.url(i))).collect();
    let _provider = Provider::start(provider_port, &redirects);
    let (first, second) = (cluster.url(0), cluster.url(1));
    let agent = Browserless::new();

    // A forged state: the code is real, the state is not the one this browser's sign-in sent.
    let url = code_for(&agent, &first, "alice").await;
    let (status, _, body) = callback(&agent, &with_state(&url, "forged")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("state is not this sign-in"), "{body}");
    assert!(agent.cookie(IDENTITY_COOKIE).is_none());

    // The replicas' shared key, read from the ledger as they read it: what lets this test write
    // the cookies an attacker could not.
    let pool = tenure::store::connect(&cluster.database_url).await.unwrap();
    let shared: Vec<u8> =
        sqlx::query_scalar("SELECT key FROM web_keys WHERE name = 'csrf'").fetch_one(&pool).await.unwrap();
    let key = SessionKey::derive(&shared);
    let now = chrono::Utc::now().timestamp();

    // Another sign-in's nonce: sign-in one's code, state and PKCE verifier, but the nonce of
    // sign-in two in its cookie. The provider exchanges the code; its ID token carries sign-in
    // one's nonce, which is not the one this sign-in expects.
    let one = code_for(&agent, &first, "alice").await;
    let one_cookie = agent.cookie("tenure_signin").unwrap();
    let two = code_for(&agent, &first, "alice").await;
    let two_cookie = agent.cookie("tenure_signin").unwrap();
    let attempt_two = key.open_attempt(&two_cookie, now).unwrap();
    let attempt_one = key.open_attempt(&one_cookie, now).unwrap();
    let other_nonce = key.seal_attempt(&Attempt { nonce: attempt_two.nonce, ..attempt_one });
    agent.set_cookie("tenure_signin", Some(&other_nonce));
    let (status, _, body) = callback(&agent, &one).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("nonce"), "{body}");
    assert!(agent.cookie(IDENTITY_COOKIE).is_none());

    // A used code: sign-in one's own, with its own cookie (kept by an attacker), once spent.
    agent.set_cookie("tenure_signin", Some(&one_cookie));
    let (status, _, body) = callback(&agent, &one).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("did not take the code"), "{body}");

    // Another sign-in's code with this one's state and cookie: its PKCE challenge is not this
    // sign-in's verifier, and the provider refuses it.
    agent.set_cookie("tenure_signin", Some(&two_cookie));
    let three = code_for(&agent, &first, "alice").await;
    agent.set_cookie("tenure_signin", Some(&two_cookie));
    let state_of_two = two.query_pairs().find(|(name, _)| name == "state").unwrap().1.into_owned();
    let (status, _, body) = callback(&agent, &with_state(&three, &state_of_two)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("did not take the code"), "{body}");

    // A group the policy does not name: no sign-in.
    let stranger = code_for(&agent, &first, "mallory").await;
    let (status, _, body) = callback(&agent, &stranger).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("give no role"), "{body}");

    // A proper sign-in (victor: staff, a viewer), taken by the second replica as well.
    let victor = code_for(&agent, &first, "victor").await;
    let (status, location, _) = callback(&agent, &victor).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/jobs/pay")));
    for base in [&first, &second] {
        let who = whoami(&agent, base).await;
        assert_eq!(
            (who["name"].as_str(), who["role"].as_str(), who["via"].as_str()),
            (Some("victor"), Some("viewer"), Some("session")),
            "{base}"
        );
    }
    let refused = audited(&first, "sign-in").await;
    assert!(refused.iter().filter(|entry| entry["outcome"] == "refused").count() >= 5, "{refused:?}");

    // The same session expired, or altered: nobody.
    let sealed = agent.cookie(IDENTITY_COOKIE).unwrap();
    let victor_session = key.open_session(&sealed, now).expect("the cookie is a session this cluster signed");
    let expired = key.seal_session(&Session { expires: now - 1, ..victor_session.clone() });
    agent.set_cookie(IDENTITY_COOKIE, Some(&expired));
    assert_eq!(whoami(&agent, &first).await["status"], 401, "an expired session reads nothing under protected reads");
    let (head, tag) = sealed.rsplit_once('.').unwrap();
    let claimed = serde_json::to_vec(&Session { role: Role::Admin, ..victor_session }).unwrap();
    use base64::Engine;
    let altered = format!("session.{}.{tag}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claimed));
    assert_ne!(head, altered.rsplit_once('.').unwrap().0);
    agent.set_cookie(IDENTITY_COOKIE, Some(&altered));
    assert_eq!(whoami(&agent, &second).await["status"], 401, "an altered session is nobody");
    // A change with it: refused and audited as anonymous.
    let (status, _, _) = agent.send(agent.http.post(format!("{first}/jobs/pay/pause")).form(&[("csrf", "x")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// `tenure login --sso`: the device authorization grant at the provider the server names; the
/// person opens the address it prints (here an HTTP client speaking the provider's pages),
/// enters the code and signs in; the CLI stores a session the other replica takes too, with the
/// policy's role.
#[tokio::test]
async fn tenure_login_signs_in_with_the_device_grant_and_the_session_works_on_both_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let provider_port = free_port();
    let cluster = cluster(provider_port, dir.path()).await;
    let redirects: Vec<String> = (0..2).map(|i| format!("{}/auth/callback", cluster.url(i))).collect();
    let provider = Provider::start(provider_port, &redirects);
    let config = dir.path().join("config");
    let mut login = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["login", "--sso", "--server", &cluster.url(0), "--timeout", "60s"])
        .env("XDG_CONFIG_HOME", &config)
        .env_remove("TENURE_TOKEN")
        .env_remove("TENURE_ADMIN_TOKEN")
        .env_remove("TENURE_ADMIN_TOKEN_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = login.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let open = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("{line}"));
    assert!(open.starts_with(&provider.issuer()), "{line}");
    // The person: the code page, its confirmation, the login and consent.
    let agent = Browserless::new();
    let never = |_: &url::Url| false;
    let entered = agent.follow(open, never).await;
    let confirm = agent.submit(&entered, &[], never).await;
    let login_page = agent.submit(&confirm, &[], never).await;
    let consent = agent.submit(&login_page, &[("login", "alice"), ("password", "any")], never).await;
    let done = agent.submit(&consent, &[], never).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let output = tokio::time::timeout(Duration::from_secs(30), login.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("as alice") && stdout.contains("operator"), "{stdout}");
    assert!(!stdout.contains("session."), "no token printed: {stdout}");
    // The stored session, on its replica; and the same session on the other one.
    let stored: Value =
        serde_json::from_slice(&std::fs::read(config.join("tenure/credentials.json")).unwrap()).unwrap();
    let session = stored[cluster.url(0).as_str()].as_str().unwrap().to_owned();
    assert!(session.starts_with("tenure_s1.session."), "a session token is stored");
    let whoami = |server: String, token: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tenure"));
        command
            .args(["whoami", "--server", &server, "--output", "json"])
            .env("XDG_CONFIG_HOME", &config)
            .env_remove("TENURE_TOKEN")
            .env_remove("TENURE_ADMIN_TOKEN")
            .env_remove("TENURE_ADMIN_TOKEN_FILE");
        if let Some(token) = token {
            command.env("TENURE_TOKEN", token);
        }
        command.output().unwrap()
    };
    let here = whoami(cluster.url(0), None);
    assert!(here.status.success(), "{}", String::from_utf8_lossy(&here.stderr));
    let whoami = whoami(cluster.url(1), Some(&session));
    assert!(whoami.status.success(), "{}", String::from_utf8_lossy(&whoami.stderr));
    let who: Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(
        (who["name"].as_str(), who["role"].as_str(), who["teams"].clone(), who["via"].as_str()),
        (Some("alice"), Some("operator"), json!(["payments"]), Some("session"))
    );
}

/// The key ids the provider publishes (its discovery document's `jwks_uri`).
async fn signing_kids(issuer: &str) -> Vec<String> {
    let http = reqwest::Client::new();
    let discovery: Value =
        http.get(format!("{issuer}/.well-known/openid-configuration")).send().await.unwrap().json().await.unwrap();
    let jwks: Value = http.get(discovery["jwks_uri"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    jwks["keys"].as_array().unwrap().iter().map(|key| key["kid"].as_str().unwrap().to_owned()).collect()
}

/// Sign `user` in on `base` through the callback; whom `/api/whoami` then says they are there.
async fn sign_in(agent: &Browserless, base: &str, user: &str) -> Value {
    agent.set_cookie(IDENTITY_COOKIE, None);
    let url = code_for(agent, base, user).await;
    let (status, location, body) = callback(agent, &url).await;
    assert_eq!((status, location.as_deref()), (StatusCode::SEE_OTHER, Some("/jobs/pay")), "{user}: {body}");
    whoami(agent, base).await
}

/// The provider rotates its signing key (restarted on its port with a new key under a new
/// `kid`) after a replica has read its keys: the next sign-in there, right away, succeeds (the
/// replica reads the provider's keys again when none it knows verifies the ID token).
#[tokio::test]
async fn a_sign_in_right_after_the_provider_rotates_its_signing_key_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let provider_port = free_port();
    let cluster = cluster(provider_port, dir.path()).await;
    let redirects: Vec<String> = (0..2).map(|i| format!("{}/auth/callback", cluster.url(i))).collect();
    let provider = Provider::start(provider_port, &redirects);
    let first = cluster.url(0);
    let agent = Browserless::new();
    let old_kids = signing_kids(&provider.issuer()).await;
    let who = sign_in(&agent, &first, "victor").await;
    assert_eq!((who["name"].as_str(), who["role"].as_str()), (Some("victor"), Some("viewer")), "{who}");

    // The rotation: the same issuer, a new key, none of the old ones published.
    drop(provider);
    let provider = Provider::start(provider_port, &redirects);
    let new_kids = signing_kids(&provider.issuer()).await;
    assert!(new_kids.iter().all(|kid| !old_kids.contains(kid)), "{old_kids:?} then {new_kids:?}");

    let who = sign_in(&agent, &first, "alice").await;
    assert_eq!(
        (who["name"].as_str(), who["role"].as_str(), who["teams"].clone()),
        (Some("alice"), Some("operator"), json!(["payments"])),
        "{who}"
    );
}

/// A replica started with a good policy is given an invalid one (a role that is none) and
/// SIGHUP: it logs the error with the file, line and column, and still signs people in with the
/// old grants. Given a good new one and SIGHUP, its next sign-in is granted by the new one.
#[tokio::test]
async fn an_invalid_policy_on_reload_is_logged_located_and_the_last_good_one_keeps_granting() {
    let dir = tempfile::tempdir().unwrap();
    let provider_port = free_port();
    let cluster = cluster(provider_port, dir.path()).await;
    let redirects: Vec<String> = (0..2).map(|i| format!("{}/auth/callback", cluster.url(i))).collect();
    let _provider = Provider::start(provider_port, &redirects);
    let first = cluster.url(0);
    let agent = Browserless::new();
    let policy = dir.path().join("policy.yaml");
    let log = || std::fs::read_to_string(&cluster.replicas[0].log).unwrap();
    let grants = |who: &Value| (who["name"].clone(), who["role"].clone(), who["teams"].clone());
    let operator_of_payments = (json!("alice"), json!("operator"), json!(["payments"]));
    assert_eq!(grants(&sign_in(&agent, &first, "alice").await), operator_of_payments);

    let invalid = "claim: groups\nscopes: [groups]\ngroups:\n  pay-oncall: { role: admin, teams: [payments] }\n  \
                   staff: { role: owner }\n";
    let column = invalid.lines().nth(4).unwrap().find("owner").unwrap() + 1;
    std::fs::write(&policy, invalid).unwrap();
    cluster.signal(0, nix::sys::signal::Signal::SIGHUP);
    let located = format!("policy.yaml:5:{column}: group `staff`: role `owner` is not viewer, operator or admin");
    wait_for("the invalid policy's error in the log", Duration::from_secs(15), || async { log().contains(&located) })
        .await;
    assert!(log().contains("keeping the last good one"), "{}", log());
    let counted = reloads(&first).await;
    assert!(counted.contains(r#"tenure_sign_in_policy_reloads_total{result="failure"} 1"#), "{counted}");
    // The last good policy still grants: alice an operator of payments, not the admin the
    // invalid file would make her.
    assert_eq!(grants(&sign_in(&agent, &first, "alice").await), operator_of_payments);

    let good = "claim: groups\nscopes: [groups]\ngroups:\n  pay-oncall: { role: admin }\n  staff: { role: viewer }\n";
    std::fs::write(&policy, good).unwrap();
    cluster.signal(0, nix::sys::signal::Signal::SIGHUP);
    wait_for("the new policy in force", Duration::from_secs(15), || async {
        log().contains("sign-in policy reloaded")
    })
    .await;
    assert_eq!(grants(&sign_in(&agent, &first, "alice").await), (json!("alice"), json!("admin"), json!([])));
    assert_eq!(grants(&sign_in(&agent, &first, "victor").await), (json!("victor"), json!("viewer"), json!([])));
    let counted = reloads(&first).await;
    assert!(counted.contains(r#"tenure_sign_in_policy_reloads_total{result="success"} 1"#), "{counted}");
}

/// The sign-in policy's reload counters in a replica's `/metrics`.
async fn reloads(base: &str) -> String {
    let metrics = reqwest::Client::new().get(format!("{base}/metrics")).bearer_auth(crate::cluster::ADMIN_TOKEN);
    let metrics = metrics.send().await.unwrap().text().await.unwrap();
    metrics
        .lines()
        .filter(|line| line.starts_with("tenure_sign_in_policy_reloads_total"))
        .collect::<Vec<_>>()
        .join("\n")
}
