//! Browser protections and TLS on the listener, on a real `tenure dev` and in headless Chromium:
//! a page of another origin cannot frame a job page; the dashboard works under its
//! Content-Security-Policy with nothing refused in the console; `--tls-cert`/`--tls-key` serve
//! HTTPS on `--listen` to the CLI and to Chromium (a CA the test makes), refuse plaintext, mark
//! the session cookie `Secure` and send HSTS, and a replaced certificate is served without a
//! restart (a broken pair keeps the one served).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fantoccini::Locator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dashboard::Chromium;
use crate::harness::{free_port, wait_for, wait_until};

const TOKEN: &str = "browser-test-token";

const JOBS: &str = r#"
jobs:
  - name: tick
    schedule: "* * * * * *"
    shell: "true"
  - name: greet
    schedule: "0 0 1 1 *"
    shell: 'echo "hello from $TENURE_JOB"'
"#;

/// A `tenure dev` on a job file of its own, killed when dropped (also when the test fails).
struct Dev {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Dev {
    /// Start it with `extra` arguments; not waited for.
    fn spawn(extra: &[&str]) -> Dev {
        Dev::spawn_with(JOBS, extra)
    }

    /// Start it on the job file `jobs` with `extra` arguments; not waited for.
    fn spawn_with(jobs_yaml: &str, extra: &[&str]) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let jobs = dir.path().join("jobs.yaml");
        std::fs::write(&jobs, jobs_yaml).unwrap();
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
            .args(["dev", "--admin-token", TOKEN, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--jobs")
            .arg(&jobs)
            .arg("--ledger")
            .arg(dir.path().join("ledger.db"))
            .args(extra)
            .env_remove("TENURE_TLS_CERT")
            .env_remove("TENURE_TLS_KEY")
            .env_remove("TENURE_PUBLIC_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dev.stderr")).unwrap())
            .spawn()
            .expect("start tenure dev");
        Dev { child, dir, port }
    }

    /// Start it plain and wait until it leads.
    async fn start() -> Dev {
        Dev::start_with(JOBS).await
    }

    /// Start it plain on the job file `jobs` and wait until it leads.
    async fn start_with(jobs: &str) -> Dev {
        let dev = Dev::spawn_with(jobs, &[]);
        let cluster = format!("{}/api/cluster", dev.http());
        wait_for("tenure dev to lead", Duration::from_secs(15), || async {
            let answer: Option<serde_json::Value> =
                async { reqwest::get(&cluster).await.ok()?.json().await.ok() }.await;
            answer.is_some_and(|cluster| cluster["leader"]["term"].is_i64())
        })
        .await;
        dev
    }

    fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dev.stderr")).unwrap_or_default()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A page of another origin (another loopback port), served by the test: `body` to every request.
async fn other_origin(body: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

/// Clickjacking: a page of another origin frames a job page, whose Pause button a disguised click
/// would press. The answer forbids framing (`frame-ancestors 'none'`, `X-Frame-Options: DENY`),
/// and Chromium draws nothing of the page in the frame.
#[tokio::test]
async fn a_page_from_another_origin_cannot_frame_a_job_page() {
    let dev = Dev::start().await;
    let job_page = format!("{}/jobs/greet", dev.http());
    let answer = reqwest::get(&job_page).await.unwrap();
    let policy = answer.headers().get("content-security-policy").map(|v| v.to_str().unwrap().to_owned());
    let framing = answer.headers().get("x-frame-options").map(|v| v.to_str().unwrap().to_owned());

    let attacker = other_origin(format!(
        "<!doctype html><title>win a prize</title>\
         <iframe id=victim src=\"{job_page}\" width=800 height=600 onload=\"document.title='framed'\"></iframe>"
    ))
    .await;
    let chromium = Chromium::start(&[]).await;
    let browser = &chromium.browser;
    // The page itself draws its Pause button for a signed-in operator: what the frame would show.
    browser.goto(&format!("http://admin:{TOKEN}@127.0.0.1:{}/signin", dev.port)).await.unwrap();
    browser.goto(&job_page).await.unwrap();
    browser.find(Locator::Id("pause")).await.expect("the job page draws its Pause button");

    browser.goto(&format!("http://localhost:{attacker}/")).await.unwrap();
    wait_for("the frame to load", Duration::from_secs(10), || async {
        browser.title().await.is_ok_and(|title| title == "framed")
    })
    .await;
    browser.enter_frame(0).await.unwrap();
    let inside = browser.execute("return document.documentElement.outerHTML", vec![]).await.unwrap();
    let pause = browser.find(Locator::Id("pause")).await;
    browser.enter_parent_frame().await.unwrap();
    let console = chromium.console().await;
    chromium.close().await;

    assert!(pause.is_err(), "the framed job page drew its Pause button:\n{inside}");
    assert!(!inside.to_string().contains("id=\"pause\""), "the frame holds the job page:\n{inside}");
    let policy = policy.expect("the job page carries a Content-Security-Policy");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert_eq!(framing.as_deref(), Some("DENY"));
    assert!(
        console.iter().any(|line| line.contains("frame-ancestors")),
        "Chromium says why it refused the frame: {console:#?}"
    );
}

/// What the browser's console says of the Content-Security-Policy.
fn policy_complaints(console: &[String]) -> Vec<&String> {
    console
        .iter()
        .filter(|line| line.contains("Content Security Policy") || line.contains("Content-Security-Policy"))
        .collect()
}

/// Every page of the dashboard works under the policy: the live refresh (a script fetching the
/// page again), the charts (styled by the stylesheet now, not inline), sign-in and the forms.
/// Chromium's console holds no refusal.
#[tokio::test]
async fn the_dashboard_works_under_its_content_security_policy() {
    let dev = Dev::start().await;
    let base = dev.http();
    let answer = reqwest::get(format!("{base}/")).await.unwrap();
    let policy = answer.headers().get("content-security-policy").map(|v| v.to_str().unwrap().to_owned());

    let chromium = Chromium::start(&[]).await;
    let browser = &chromium.browser;
    // The console is read at all: a message of our own comes back.
    browser.goto(&format!("{base}/")).await.unwrap();
    browser.execute("console.error('console probe')", vec![]).await.unwrap();
    let probe = chromium.console().await;
    assert!(probe.iter().any(|line| line.contains("console probe")), "{probe:#?}");

    // The overview refreshes itself.
    wait_for("the live refresh on the overview", Duration::from_secs(10), || async {
        let state = browser.find(Locator::Id("live-state")).await.unwrap().text().await.unwrap();
        state.contains("updated")
    })
    .await;
    wait_for("outcomes of tick in the strip", Duration::from_secs(10), || async {
        browser.find_all(Locator::Css(".strip .cell.succeeded")).await.is_ok_and(|cells| cells.len() >= 2)
    })
    .await;

    // The job page: its chart styled by the stylesheet, refreshed in place.
    browser.goto(&format!("{base}/jobs/tick")).await.unwrap();
    wait_for("the duration chart", Duration::from_secs(10), || async {
        browser.find(Locator::Css("svg.chart")).await.is_ok()
    })
    .await;
    let height = browser
        .execute("return getComputedStyle(document.querySelector('svg.chart')).maxHeight", vec![])
        .await
        .unwrap();
    assert_eq!(height, "160px", "the chart's height comes from the stylesheet");
    wait_for("the live refresh on the job page", Duration::from_secs(10), || async {
        browser.find(Locator::Id("live-state")).await.unwrap().text().await.unwrap().contains("updated")
    })
    .await;

    // Sign in, then trigger, pause and resume through the page's forms.
    browser.goto(&format!("http://admin:{TOKEN}@127.0.0.1:{}/signin", dev.port)).await.unwrap();
    browser.goto(&format!("{base}/jobs/greet")).await.unwrap();
    browser.find(Locator::Id("trigger")).await.unwrap().click().await.unwrap();
    wait_for("the triggered run, succeeded, on the job page", Duration::from_secs(15), || async {
        browser.find_all(Locator::Css("table.runs tbody .status.succeeded")).await.is_ok_and(|found| found.len() == 1)
    })
    .await;
    let notice = browser.find(Locator::Css(".notice")).await.unwrap().text().await.unwrap();
    assert!(notice.starts_with("Triggered"), "{notice}");
    // Pause asks first (the page's own <dialog>, under the policy too).
    browser.find(Locator::Id("pause")).await.unwrap().click().await.unwrap();
    browser.find(Locator::Id("confirm-yes")).await.unwrap().click().await.unwrap();
    wait_for("the page after pause", Duration::from_secs(10), || async {
        browser.find(Locator::Id("paused")).await.is_ok()
    })
    .await;
    browser.find(Locator::Id("resume")).await.unwrap().click().await.unwrap();
    // The click starts a navigation; the page after the form's redirect says what was done.
    wait_for("the page after resume", Duration::from_secs(10), || async {
        match browser.find(Locator::Css(".notice")).await {
            Ok(notice) => notice.text().await.is_ok_and(|text| text.starts_with("Resumed")),
            Err(_) => false,
        }
    })
    .await;

    // The run and the terms (its timeline styled by the stylesheet too).
    browser.find(Locator::Css("table.runs tbody tr td a")).await.unwrap().click().await.unwrap();
    wait_for("the run page", Duration::from_secs(10), || async {
        browser.find(Locator::Id("run-status")).await.is_ok()
    })
    .await;
    assert_eq!(browser.find(Locator::Id("run-status")).await.unwrap().text().await.unwrap(), "succeeded");
    browser.goto(&format!("{base}/terms")).await.unwrap();
    browser.find(Locator::Css("svg.timeline")).await.expect("the terms' timeline");
    wait_for("the live refresh on the terms page", Duration::from_secs(10), || async {
        browser.find(Locator::Id("live-state")).await.unwrap().text().await.unwrap().contains("updated")
    })
    .await;
    // An error page, with its stylesheet.
    browser.goto(&format!("{base}/jobs/no-such-job")).await.unwrap();
    let console = chromium.console().await;
    chromium.close().await;

    let policy = policy.expect("the overview carries a Content-Security-Policy");
    assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"), "{policy}");
    assert!(policy_complaints(&console).is_empty(), "the policy refused something: {console:#?}");
}

/// The origin check of a real listener: the wrong scheme or port is refused; `X-Forwarded-Host`
/// is ignored without `--public-url` and honoured with it.
#[tokio::test]
async fn a_real_listener_checks_the_whole_origin_and_forwarded_headers_only_with_a_public_url() {
    let plain = Dev::start().await;
    let behind = Dev::spawn(&["--public-url", "https://tenure.example"]);
    wait_for("the proxied dev to answer", Duration::from_secs(15), || async {
        reqwest::get(format!("{}/healthz", behind.http())).await.is_ok_and(|answer| answer.status() == 200)
    })
    .await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // A form post as a signed-in browser makes it, with the session's own anti-forgery value.
    let pause = async |dev: &Dev, headers: &[(&str, String)]| {
        let page =
            client.get(format!("{}/jobs/tick", dev.http())).basic_auth("admin", Some(TOKEN)).send().await.unwrap();
        let cookie = page.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let body = page.text().await.unwrap();
        let csrf = body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let mut request = client
            .post(format!("{}/jobs/tick/pause", dev.http()))
            .basic_auth("admin", Some(TOKEN))
            .header("cookie", cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}"));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send().await.unwrap().status().as_u16()
    };
    let own = |dev: &Dev| format!("127.0.0.1:{}", dev.port);
    let other_port = free_port();
    let forwarded = [
        ("origin", "https://tenure.example".to_owned()),
        ("x-forwarded-host", "tenure.example".to_owned()),
        ("x-forwarded-proto", "https".to_owned()),
    ];
    assert_eq!(pause(&plain, &[("origin", format!("https://{}", own(&plain)))]).await, 403, "another scheme");
    assert_eq!(pause(&plain, &[("origin", format!("http://127.0.0.1:{other_port}"))]).await, 403, "another port");
    assert_eq!(pause(&plain, &forwarded).await, 403, "X-Forwarded-Host without --public-url");
    assert_eq!(pause(&plain, &[("origin", format!("http://{}", own(&plain)))]).await, 303, "its own origin");
    assert_eq!(pause(&behind, &forwarded).await, 303, "X-Forwarded-Host with --public-url");
    assert_eq!(
        pause(
            &behind,
            &[("origin", "http://tenure.example".to_owned()), ("x-forwarded-host", "tenure.example".to_owned())]
        )
        .await,
        403,
        "the public URL's host over another scheme"
    );
}

/// A CA of the test's and the certificates it signs for the listener.
struct ListenerPki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A certificate for 127.0.0.1 and localhost, its key, and the SPKI hash Chromium trusts it by.
struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
    spki_sha256: String,
}

impl ListenerPki {
    fn new() -> ListenerPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let dir = tempfile::Builder::new().prefix("tenure-listener-pki").tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "tenure listener test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, cert.pem()).unwrap();
        ListenerPki { dir, ca, issuer: Issuer::new(params, key) }
    }

    /// A leaf with this serial, valid from `from_year` on.
    fn leaf(&self, serial: u64, from_year: i32) -> Leaf {
        use base64::Engine;
        use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, SerialNumber};
        use sha2::Digest;
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = rcgen::date_time_ymd(from_year, 1, 1);
        params.not_after = rcgen::date_time_ymd(from_year + 10, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let spki =
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(key.subject_public_key_info()));
        Leaf { cert: cert.pem(), key: key.serialize_pem(), der: cert.der().to_vec(), spki_sha256: spki }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// Put `cert` and `key` in place as a deploy would: each written aside, then renamed over.
    fn install(&self, cert: &str, key: &str) {
        for (path, text) in [(self.cert_path(), cert), (self.key_path(), key)] {
            let aside = path.with_extension("new");
            std::fs::write(&aside, text).unwrap();
            std::fs::rename(&aside, &path).unwrap();
        }
    }
}

/// The certificate the listener on `port` presents, trusting only `ca`.
async fn served_certificate(port: u16, ca: &Path) -> Option<Vec<u8>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let tls = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.ok()?;
    tls.get_ref().1.peer_certificates()?.first().map(|cert| cert.to_vec())
}

/// `tenure ARGS` with no `TENURE_*` variable of the test's environment.
async fn tenure(args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenure"));
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("TENURE_")) {
        command.env_remove(name);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("tenure {args:?} did not end within 30 s"))
        .expect("run tenure");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// TLS on `--listen`: the CLI (`--ca-file`) and Chromium (trusting the certificate's key) reach
/// it; plaintext is refused; the session cookie is `Secure` and every answer carries HSTS; a
/// new certificate put in place is served without a restart, and a broken pair keeps it.
#[tokio::test]
async fn over_tls_the_cli_and_chromium_reach_the_listener_and_a_new_certificate_is_served_without_restart() {
    let pki = ListenerPki::new();
    let first = pki.leaf(1001, 2024);
    pki.install(&first.cert, &first.key);
    let cert = pki.cert_path();
    let key = pki.key_path();
    let mut dev = Dev::spawn(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let base = format!("https://127.0.0.1:{}", dev.port);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let client = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let leading = wait_until(Duration::from_secs(15), || async {
        let answer: Option<serde_json::Value> =
            async { client.get(format!("{base}/api/cluster")).send().await.ok()?.json().await.ok() }.await;
        answer.is_some_and(|cluster| cluster["leader"]["term"].is_i64())
    })
    .await;
    assert!(leading, "tenure dev over TLS did not answer:\n{}", dev.stderr());
    assert_eq!(served_certificate(dev.port, &pki.ca).await.as_deref(), Some(&first.der[..]));

    // The CLI, trusting the test's CA.
    let (code, stdout, stderr) = tenure(&["status", "--server", &base, "--ca-file", pki.ca.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("leader"), "{stdout}");

    // Every answer says to keep to HTTPS; the session cookie goes back only over it.
    for path in ["/", "/jobs/greet", "/api/jobs", "/static/app.css", "/no/such/page", "/api/jobs/nope/runs", "/metrics"]
    {
        let answer = client.get(format!("{base}{path}")).send().await.unwrap();
        let hsts = answer.headers().get("strict-transport-security").map(|v| v.to_str().unwrap().to_owned());
        assert!(hsts.as_deref().is_some_and(|hsts| hsts.starts_with("max-age=")), "{path}: {hsts:?}");
        assert_eq!(answer.headers().get("x-frame-options").map(|v| v.to_str().unwrap()), Some("DENY"), "{path}");
    }
    let page = client.get(format!("{base}/jobs/greet")).send().await.unwrap();
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");

    // Plaintext on the TLS port: told to use HTTPS, never served.
    let plain = reqwest::get(format!("http://127.0.0.1:{}/api/jobs", dev.port)).await;
    match plain {
        Ok(answer) => {
            assert_eq!(answer.status(), 400);
            let text = answer.text().await.unwrap();
            assert!(text.contains("https://") && !text.contains("greet"), "{text}");
        }
        Err(error) => assert!(!error.is_status(), "{error}"),
    }

    // Chromium, trusting the certificate's key.
    let chromium = Chromium::start(&[format!("--ignore-certificate-errors-spki-list={}", first.spki_sha256)]).await;
    let browser = &chromium.browser;
    browser.goto(&format!("{base}/")).await.unwrap();
    browser.find(Locator::Id("leader-node")).await.expect("the overview over HTTPS");
    let secure = browser.execute("return window.isSecureContext && location.protocol", vec![]).await.unwrap();
    assert_eq!(secure, "https:");
    wait_for("the live refresh over HTTPS", Duration::from_secs(10), || async {
        browser.find(Locator::Id("live-state")).await.unwrap().text().await.unwrap().contains("updated")
    })
    .await;
    let console = chromium.console().await;
    chromium.close().await;
    assert!(policy_complaints(&console).is_empty(), "{console:#?}");

    // A renewed certificate from the same CA (another serial, another validity, another key).
    let renewed = pki.leaf(1002, 2025);
    pki.install(&renewed.cert, &renewed.key);
    wait_for("the renewed certificate to be served", Duration::from_secs(15), || async {
        served_certificate(dev.port, &pki.ca).await.as_deref() == Some(&renewed.der[..])
    })
    .await;
    let (code, stdout, stderr) = tenure(&["status", "--server", &base, "--ca-file", pki.ca.to_str().unwrap()]).await;
    assert_eq!(code, 0, "after the renewal: {stdout}{stderr}");

    // A certificate whose key is not the one beside it: logged, and the renewed one still served.
    // (Installing a pair is two renames: the poll may have seen a mismatch in between already.)
    let complaints = || dev.stderr().matches("keeping the one served").count();
    let before = complaints();
    let stray = pki.leaf(1003, 2025);
    pki.install(&stray.cert, &renewed.key);
    wait_for("the broken pair to be logged", Duration::from_secs(15), || async { complaints() > before }).await;
    assert_eq!(served_certificate(dev.port, &pki.ca).await.as_deref(), Some(&renewed.der[..]));
    assert!(dev.child.try_wait().is_ok_and(|status| status.is_none()), "still running:\n{}", dev.stderr());
    pki.install(&stray.cert, &stray.key);
    wait_for("the repaired pair to be served", Duration::from_secs(15), || async {
        served_certificate(dev.port, &pki.ca).await.as_deref() == Some(&stray.der[..])
    })
    .await;
}

/// `--tls-cert` and `--tls-key` come together (clap says which is missing); a file that cannot
/// be read, holds no certificate or no key, or a key that is not the certificate's, stops the
/// start with one line naming the file.
#[tokio::test]
async fn tls_flags_come_together_and_a_bad_file_is_named_in_one_line_at_start() {
    let pki = ListenerPki::new();
    let leaf = pki.leaf(7, 2024);
    let other = pki.leaf(8, 2024);
    let file = |name: &str, text: &str| {
        let path = pki.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (cert, key, other_key) = (file("a.crt", &leaf.cert), file("a.key", &leaf.key), file("b.key", &other.key));
    let empty = file("empty.pem", "");
    let jobs = file("jobs.yaml", JOBS);
    let ledger = pki.dir.path().join("ledger.db");
    let ledger = ledger.to_str().unwrap();

    let (code, _, stderr) = tenure(&["dev", "--tls-cert", &cert]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let (code, _, stderr) = tenure(&["dev", "--tls-key", &key]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    let (code, _, stderr) = tenure(&[
        "run",
        "--jobs",
        "x.yaml",
        "--etcd",
        "http://127.0.0.1:1",
        "--database-url",
        "postgres://x@y/z",
        "--tls-cert",
        &cert,
    ])
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let (code, _, stderr) = tenure(&["dev", "--public-url", "ftp://tenure.example"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--public-url"), "{stderr}");

    let missing = "/nonexistent/tls.crt";
    for (args, expected) in [
        (
            [missing, key.as_str()],
            format!("error: read --tls-cert {missing}: No such file or directory (os error 2)\n"),
        ),
        ([empty.as_str(), key.as_str()], format!("error: --tls-cert {empty}: no PEM certificate in it\n")),
        ([cert.as_str(), empty.as_str()], format!("error: --tls-key {empty}: no PEM private key in it\n")),
        (
            [cert.as_str(), other_key.as_str()],
            format!("error: --tls-key {other_key} is not the key of the certificate in --tls-cert {cert}\n"),
        ),
    ] {
        let (code, stdout, stderr) = tenure(&[
            "dev",
            "--tls-cert",
            args[0],
            "--tls-key",
            args[1],
            "--listen",
            "127.0.0.1:0",
            "--jobs",
            &jobs,
            "--ledger",
            ledger,
            "--shutdown-grace",
            "0s",
        ])
        .await;
        assert_eq!((code, stderr.as_str()), (1, expected.as_str()), "{stdout}");
    }
}

/// The job page's next fire times (in its zone and UTC, and UTC alone) and the 24-hour
/// timeline fit the window at 390, 1,024 and 1,440 px: no element of theirs ends right of the
/// viewport or scrolls sideways, with a job name of 63 characters and per-second jobs.
#[tokio::test]
async fn the_next_fire_times_and_the_timeline_fit_the_width_at_390_1024_and_1440_px() {
    let long = "a-job-name-of-sixty-three-characters-that-fills-its-whole-lengt";
    let mut jobs = format!(
        "jobs:\n  - name: {long}\n    schedule: \"*/45 * * * * *\"\n    timezone: America/Argentina/Buenos_Aires\n    shell: \"true\"\n"
    );
    for i in 0..40 {
        jobs.push_str(&format!("  - {{ name: {}-{i}, schedule: '0 * * * *', shell: 'true' }}\n", &long[..60]));
    }
    jobs.push_str("  - { name: every-second, schedule: '* * * * * *', shell: 'true' }\n");
    jobs.push_str(
        "  - { name: at-two-thirty, schedule: '30 2 * * *', timezone: Europe/Berlin, shell: 'true', paused: true }\n",
    );
    let dev = Dev::start_with(&jobs).await;
    let chromium = Chromium::start(&[]).await;
    let browser = &chromium.browser;
    const OVERFLOW: &str = r#"
        const [ids, whole] = arguments;
        const width = document.documentElement.clientWidth;
        const found = [];
        for (const id of ids) {
            const part = document.getElementById(id);
            if (!part) { found.push(`#${id} missing`); continue; }
            for (const element of [part, ...part.querySelectorAll('*')]) {
                const right = element.getBoundingClientRect().right;
                const name = `#${id} ${element.tagName.toLowerCase()}.${element.getAttribute('class') || ''}`;
                if (right > width + 0.5) found.push(`${name} ends at ${right} px of ${width}`);
                const scrolls = ['auto', 'scroll'].includes(getComputedStyle(element).overflowX);
                if (scrolls && element.scrollWidth > element.clientWidth + 1) {
                    found.push(`${name} scrolls: ${element.scrollWidth} px in ${element.clientWidth}`);
                }
            }
        }
        if (whole && document.documentElement.scrollWidth > window.innerWidth) {
            found.push(`the page is ${document.documentElement.scrollWidth} px wide in ${window.innerWidth}`);
        }
        return found;
    "#;
    let pages: [(String, &[&str], bool); 4] = [
        (format!("/jobs/{long}"), &["upcoming"], false),
        (format!("/jobs/{long}?tz=utc"), &["upcoming"], false),
        ("/jobs/at-two-thirty".to_owned(), &["upcoming"], false),
        ("/timeline".to_owned(), &["slots-by-hour", "busiest-minutes"], true),
    ];
    let mut found = Vec::new();
    for width in [390, 1024, 1440] {
        browser.set_window_size(width, 900).await.unwrap();
        for (path, parts, whole) in &pages {
            browser.goto(&format!("{}{path}", dev.http())).await.unwrap();
            let answer =
                browser.execute(OVERFLOW, vec![serde_json::json!(parts), serde_json::json!(whole)]).await.unwrap();
            for complaint in answer.as_array().unwrap() {
                found.push(format!("{width} px {path}: {}", complaint.as_str().unwrap()));
            }
        }
        // The parts are there: ten fire times; 24 hours.
        browser.goto(&format!("{}/jobs/{long}", dev.http())).await.unwrap();
        let rows = browser.find_all(Locator::Css("#upcoming tr.fire")).await.unwrap();
        assert_eq!(rows.len(), 10, "at {width} px");
        browser.goto(&format!("{}/timeline", dev.http())).await.unwrap();
        let hours = browser.find_all(Locator::Css("#slots-by-hour tr.hour")).await.unwrap();
        assert_eq!(hours.len(), 24, "at {width} px");
    }
    chromium.close().await;
    assert!(found.is_empty(), "{found:#?}");
}
