//! The dashboard for a fleet, in headless Chromium on one real `tenure dev` with 500 jobs (long
//! names, several schedules, per-second failing jobs, paused, HTTP and tagged ones): at 390,
//! 1,024 and 1,440 px nothing overflows and every job's state and next fire are on screen;
//! search, filters and sort narrow and order the rows from the URL; a live refresh leaves the
//! scroll position, a selection and the focus where they were; a run's output follows its end
//! only while the reader is at the bottom; pause asks first and its notice does not come back
//! on reload; every page passes axe-core (no serious or critical violation) and the status
//! colours' measured contrast in light and dark. Screenshots of every page at the three widths
//! land in target/screenshots/.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::Locator;
use serde_json::{Value, json};

use crate::dashboard::Chromium;
use crate::harness::{free_port, wait_for};

const TOKEN: &str = "fleet-test-token";
const WIDTHS: [u32; 3] = [390, 1024, 1440];

/// A name as long as a job's may be: 63 characters.
fn long_name(i: usize) -> String {
    format!("job-{i:03}-an-exceedingly-long-name-for-the-nightly-warehouse-loads").chars().take(63).collect()
}

/// 500 jobs as a fleet has them. Every 50th has a 63-character name; jobs 1, 51, ... fire every
/// second (1, 101, 201, ... fail, printing to stdout and stderr); every 11th has four schedules
/// (a long description); every 13th is paused; every 17th runs on `edge`-tagged replicas; every
/// 9th is an HTTP job; `chatty` prints 400 lines over 8 seconds when triggered.
fn fleet_jobs() -> String {
    let mut text = String::from("jobs:\n");
    for i in 0..500 {
        let name = if i % 50 == 0 { long_name(i) } else { format!("job-{i:03}") };
        let (schedule, shell) = if i % 50 == 1 {
            let shell = if i % 100 == 1 { r#""echo out; echo err >&2; exit 1""# } else { r#""true""# };
            (r#""* * * * * *""#.to_owned(), shell)
        } else if i % 11 == 0 {
            (r#"["0 9 * * MON-FRI", "30 17 * * MON-FRI", "15 3 1,15 * *", "45 22 L * *"]"#.to_owned(), r#""true""#)
        } else {
            (format!(r#""{} */2 * * *""#, i % 60), r#""true""#)
        };
        let mut extra = String::new();
        if i % 13 == 0 {
            extra.push_str(", paused: true");
        }
        if i % 17 == 0 {
            extra.push_str(", run_on: { tags: [edge] }");
        }
        let target = if i % 9 == 0 && i % 50 != 1 {
            r#"http: { url: "http://127.0.0.1:9/" }"#.to_owned()
        } else {
            format!("shell: {shell}")
        };
        text.push_str(&format!("  - {{ name: {name}, schedule: {schedule}, {target}{extra} }}\n"));
    }
    text.push_str(concat!(
        "  - name: chatty\n    schedule: \"0 0 1 1 *\"\n",
        "    shell: 'for i in $(seq 1 400); do echo \"line $i\"; if [ $((i % 10)) = 0 ]; then echo \"warning $i\" >&2; fi; sleep 0.02; done'\n",
        "    timeout: 2m\n"
    ));
    text
}

/// `tenure dev` on the fleet's job file, killed when dropped (also when the test fails).
struct Fleet {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Fleet {
    async fn start() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let jobs = dir.path().join("jobs.yaml");
        std::fs::write(&jobs, fleet_jobs()).unwrap();
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
            .args(["dev", "--admin-token", TOKEN, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--jobs")
            .arg(&jobs)
            .arg("--ledger")
            .arg(dir.path().join("ledger.db"))
            .env_remove("TENURE_TLS_CERT")
            .env_remove("TENURE_TLS_KEY")
            .env_remove("TENURE_PUBLIC_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tenure dev");
        let fleet = Fleet { child, _dir: dir, port };
        let cluster = format!("{}/api/cluster", fleet.http());
        wait_for("tenure dev to lead", Duration::from_secs(20), || async {
            let answer: Option<Value> = async { reqwest::get(&cluster).await.ok()?.json().await.ok() }.await;
            answer.is_some_and(|cluster| cluster["leader"]["term"].is_i64())
        })
        .await;
        fleet
    }

    fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Chrome DevTools command through chromedriver (`goog/cdp/execute`).
#[derive(Debug)]
struct Cdp(Value);

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/goog/cdp/execute", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(self.0.to_string()))
    }
}

/// Emulate `prefers-color-scheme` (and a viewport of `width`).
async fn emulate(chromium: &Chromium, width: u32, dark: bool) {
    let scheme = if dark { "dark" } else { "light" };
    chromium
        .browser
        .issue_cmd(Cdp(json!({"cmd": "Emulation.setEmulatedMedia",
            "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]}})))
        .await
        .expect("emulate the colour scheme");
    chromium
        .browser
        .issue_cmd(Cdp(json!({"cmd": "Emulation.setDeviceMetricsOverride",
            "params": {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 700}})))
        .await
        .expect("emulate the viewport");
}

async fn js(chromium: &Chromium, script: &str) -> Value {
    chromium.browser.execute(script, vec![]).await.unwrap_or_else(|error| panic!("{script}: {error}"))
}

/// Where every page must fit: the document no wider than the viewport, and each job's state
/// and next fire inside it. Returns a description of what does not fit (empty: all fits).
const FITS: &str = r#"
const width = window.innerWidth, faults = [];
if (document.documentElement.scrollWidth > width) faults.push(`page ${document.documentElement.scrollWidth} px wide in ${width}`);
for (const row of document.querySelectorAll("table.jobs tbody tr[data-key]")) {
  for (const part of ["th.name", "td.state", "td.next"]) {
    const cell = row.querySelector(part);
    if (!cell) { faults.push(`${row.dataset.key}: no ${part}`); continue; }
    const box = cell.getBoundingClientRect();
    if (box.left < 0 || box.right > width + 0.5 || box.width < 1) faults.push(`${row.dataset.key} ${part}: ${box.left}..${box.right}`);
  }
}
return faults;
"#;

/// Contrast of every status word, pill, badge, tile, link, button and strip glyph against what
/// is rendered behind it (colours resolved by drawing them on a canvas, alpha blended down to
/// the page), and of every strip cell's fill against the card. Returns the failures.
const CONTRAST: &str = r##"
const canvas = document.createElement("canvas"); canvas.width = canvas.height = 1;
const paint = canvas.getContext("2d", { willReadFrequently: true });
const rgba = (css) => { paint.clearRect(0, 0, 1, 1); paint.fillStyle = "#000"; paint.fillStyle = css; paint.fillRect(0, 0, 1, 1);
  const d = paint.getImageData(0, 0, 1, 1).data; return [d[0], d[1], d[2], d[3] / 255]; };
const over = (top, bottom) => [0, 1, 2].map((i) => top[i] * top[3] + bottom[i] * (1 - top[3])).concat([1]);
const backdrop = (element) => {
  const layers = [];
  for (let node = element; node && node.nodeType === 1; node = node.parentElement) {
    const colour = rgba(getComputedStyle(node).backgroundColor);
    if (colour[3] > 0) { layers.push(colour); if (colour[3] >= 1) break; }
  }
  let colour = [255, 255, 255, 1];
  if (!layers.length || layers[layers.length - 1][3] < 1) colour = rgba(getComputedStyle(document.body).backgroundColor);
  for (const layer of layers.reverse()) colour = over(layer, colour);
  return colour;
};
const luminance = (c) => { const [r, g, b] = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
const ratio = (a, b) => { const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
const faults = []; let checked = 0;
const text = ".status, .pill, .leader-badge, .tile, a, button, small, h2, footer, .notice, .warning, a.cell:not(:empty), .legend .cell:not(:empty), th, td, dt";
for (const element of document.querySelectorAll(text)) {
  if (!element.textContent.trim() || element.getClientRects().length === 0) continue;
  const style = getComputedStyle(element);
  const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
  const needed = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
  const value = ratio(over(rgba(style.color), backdrop(element)), backdrop(element));
  checked += 1;
  if (value < needed) faults.push(`${element.className || element.nodeName} "${element.textContent.trim().slice(0, 30)}": ${value.toFixed(2)} < ${needed}`);
}
for (const cell of document.querySelectorAll(".cell:not(.empty)")) {
  const style = getComputedStyle(cell);
  const fill = rgba(style.backgroundColor)[3] > 0 ? rgba(style.backgroundColor) : rgba(style.borderTopColor);
  const value = ratio(over(fill, backdrop(cell.parentElement)), backdrop(cell.parentElement));
  checked += 1;
  if (value < 3) faults.push(`cell ${cell.className}: ${value.toFixed(2)} < 3 against the card`);
}
return { checked, faults: [...new Set(faults)] };
"##;

/// axe-core's serious and critical violations on the page (its source injected first).
async fn axe(chromium: &Chromium, source: &str) -> Vec<String> {
    chromium.browser.execute(source, vec![]).await.expect("inject axe-core");
    let result = chromium
        .browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] }).then((r) => done(r.violations
               .filter((v) => v.impact === 'serious' || v.impact === 'critical')
               .map((v) => v.impact + ' ' + v.id + ': ' + v.help + ' (' + v.nodes.length + ' nodes, e.g. ' +
                 v.nodes[0].target.join(' ') + ')')), (e) => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .expect("run axe-core");
    serde_json::from_value(result).unwrap()
}

fn axe_source() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!("{}: {error}; scripts/test installs it (npm ci in tests/browser)", path.display())
    })
}

async fn rows(chromium: &Chromium) -> Vec<String> {
    let names = js(
        chromium,
        "return Array.from(document.querySelectorAll('table.jobs tbody tr[data-key]'), (r) => r.dataset.key)",
    )
    .await;
    serde_json::from_value(names).unwrap()
}

async fn post(url: String, body: Value) -> Value {
    let answer = reqwest::Client::new().post(url).bearer_auth(TOKEN).json(&body).send().await.unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    answer.json().await.unwrap_or(Value::Null)
}

async fn get_json(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// At every width: nothing overflows, every job's state and next fire are on screen; every page
/// passes axe-core and the measured contrast in light and dark; search, filters, the summary's
/// links and sorts narrow and order the rows, kept in the URL.
#[tokio::test]
async fn the_overview_fits_a_fleet_at_every_width_and_every_page_passes_axe_and_contrast_in_light_and_dark() {
    let fleet = Fleet::start().await;
    let base = fleet.http();
    let source = axe_source();
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    // Outcomes to show: the per-second jobs fire; a run of chatty gives the run page its output.
    post(format!("{base}/api/jobs/chatty/trigger"), json!({"reason": "fleet test", "env": {}})).await;
    wait_for("failing per-second jobs", Duration::from_secs(20), || async {
        let failing: Value = get_json(format!("{base}/api/jobs/job-001/runs?status=failed")).await;
        failing["runs"].as_array().is_some_and(|runs| runs.len() >= 3)
    })
    .await;
    let chatty = get_json(format!("{base}/api/jobs/chatty/runs")).await;
    let run = chatty["runs"][0]["id"].as_i64().expect("chatty's run");
    // The tokens page lists one; the audit page shows its creation and the trigger above.
    post(format!("{base}/api/tokens"), json!({"name": "deploy-bot", "role": "operator", "expires_in": "30d"})).await;

    let chromium = Chromium::start(&[]).await;
    let browser = &chromium.browser;
    // Signed in as an admin, every page shows all it can: the controls, and the admins' pages.
    browser.goto(&format!("http://admin:{TOKEN}@127.0.0.1:{}/signin", fleet.port)).await.unwrap();
    let pages = [
        ("overview", "/".to_owned()),
        ("job", "/jobs/job-001".to_owned()),
        ("run", format!("/runs/{run}")),
        ("terms", "/terms".to_owned()),
        ("timeline", "/timeline".to_owned()),
        ("audit", "/audit".to_owned()),
        ("tokens", "/tokens".to_owned()),
        ("not-found", "/jobs/no-such-job".to_owned()),
    ];
    let mut faults = Vec::new();
    for width in WIDTHS {
        for dark in [false, true] {
            emulate(&chromium, width, dark).await;
            for (name, path) in &pages {
                browser.goto(&format!("{base}{path}")).await.unwrap();
                let scheme = if dark { "dark" } else { "light" };
                let fits: Vec<String> = serde_json::from_value(js(&chromium, FITS).await).unwrap();
                faults.extend(fits.into_iter().map(|fault| format!("{name} at {width} px: {fault}")));
                let unscoped = js(&chromium, "return document.querySelectorAll('th:not([scope])').length").await;
                if unscoped != 0 {
                    faults.push(format!("{name}: {unscoped} table headers without a scope"));
                }
                let h1 = js(&chromium, "return document.querySelectorAll('h1').length").await;
                if h1 != 1 {
                    faults.push(format!("{name}: {h1} h1"));
                }
                if width == 1024 || width == 390 && !dark {
                    let contrast = js(&chromium, CONTRAST).await;
                    assert!(contrast["checked"].as_i64().unwrap() > 5, "{name}: {contrast}");
                    for fault in contrast["faults"].as_array().unwrap() {
                        faults.push(format!("{name} {scheme} {width} px contrast: {}", fault.as_str().unwrap()));
                    }
                    for violation in axe(&chromium, &source).await {
                        faults.push(format!("{name} {scheme} {width} px axe: {violation}"));
                    }
                }
                if !dark {
                    std::fs::write(shots.join(format!("{name}-{width}.png")), browser.screenshot().await.unwrap())
                        .unwrap();
                } else if width == 1024 {
                    std::fs::write(shots.join(format!("{name}-{width}-dark.png")), browser.screenshot().await.unwrap())
                        .unwrap();
                }
            }
        }
    }
    assert!(faults.is_empty(), "{faults:#?}");
    // The timeline is one of the main places: in the nav on every page, marked where it is.
    let current = js(
        &chromium,
        "return Array.from(document.querySelectorAll(\"nav[aria-label='Main'] a\"))
           .map((a) => a.getAttribute('href') + (a.getAttribute('aria-current') ? ' (here)' : ''));",
    )
    .await;
    assert_eq!(
        current,
        json!(["/", "/timeline", "/terms", "/audit", "/tokens"]),
        "the not-found page's nav: {current}"
    );
    browser.goto(&format!("{base}/timeline")).await.unwrap();
    let here = js(
        &chromium,
        "return document.querySelector(\"nav[aria-label='Main'] a[aria-current='page']\").getAttribute('href')",
    )
    .await;
    assert_eq!(here, "/timeline");

    // The first page of 100, every one of the 501 counted; the summary's numbers.
    emulate(&chromium, 1024, false).await;
    browser.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(rows(&chromium).await.len(), 100);
    let shown = js(&chromium, "return document.getElementById('shown').textContent").await;
    assert_eq!(shown, "1-100 of 501");
    let paused = browser.find(Locator::Css("#summary-paused b")).await.unwrap().text().await.unwrap();
    assert_eq!(paused, "39", "every 13th of 500 is paused");

    // Search through the form: the URL keeps it, the rows narrow to the names that contain it.
    browser.find(Locator::Id("search")).await.unwrap().send_keys("JOB-04").await.unwrap();
    browser.find(Locator::Id("apply")).await.unwrap().click().await.unwrap();
    wait_for("the search's rows", Duration::from_secs(10), || async {
        browser.current_url().await.is_ok_and(|url| url.as_str().contains("q=JOB-04"))
    })
    .await;
    let found = rows(&chromium).await;
    assert_eq!(found, (40..50).map(|i| format!("job-{i:03}")).collect::<Vec<_>>());

    // The summary's paused link filters; the filters narrow.
    browser.goto(&format!("{base}/")).await.unwrap();
    browser.find(Locator::Id("summary-paused")).await.unwrap().click().await.unwrap();
    wait_for("the paused jobs", Duration::from_secs(10), || async {
        browser.current_url().await.is_ok_and(|url| url.as_str().ends_with("/?paused=yes"))
    })
    .await;
    let found = rows(&chromium).await;
    assert_eq!(found.len(), 39);
    assert!(found.iter().all(|name| name[4..7].parse::<usize>().unwrap() % 13 == 0), "{found:?}");
    browser.goto(&format!("{base}/?kind=http&tag=edge")).await.unwrap();
    let found = rows(&chromium).await;
    let expected: Vec<String> = (0..500)
        .filter(|i| i % 9 == 0 && i % 50 != 1 && i % 17 == 0)
        .map(|i| if i % 50 == 0 { long_name(i) } else { format!("job-{i:03}") })
        .collect();
    assert_eq!(found, expected);
    // What a summary link or a filter selects is what its rows show.
    for (query, shown) in [
        ("show=failing", ".state .last .status.failed, .state .last .status.timed_out, .state .last .status.lost"),
        ("outcome=succeeded&paused=no", ".state .last .status.succeeded"),
        ("show=running", ".state .flags .status.running"),
    ] {
        browser.goto(&format!("{base}/?{query}")).await.unwrap();
        let found = rows(&chromium).await;
        let showing = js(&chromium, &format!("return Array.from(document.querySelectorAll('table.jobs tbody tr[data-key]')).filter((row) => row.querySelector('{shown}')).length")).await;
        assert!(!found.is_empty() || query == "show=running", "{query}: no rows");
        assert!(
            showing.as_u64().unwrap() + 1 >= found.len() as u64,
            "{query}: {showing} of {found:?} show it (a refresh may fall between)"
        );
    }
    // Sorts: by last outcome the failing first; by next fire soonest first, paused last.
    browser.goto(&format!("{base}/?sort=outcome")).await.unwrap();
    let found = rows(&chromium).await;
    let first =
        js(&chromium, "return document.querySelector('table.jobs tbody tr .state .last .status').className").await;
    assert!(first.as_str().is_some_and(|class| class.ends_with("failed")), "{first} first: {found:?}");
    browser.goto(&format!("{base}/?sort=next")).await.unwrap();
    let next: Vec<String> = serde_json::from_value(
        js(&chromium, "return Array.from(document.querySelectorAll('table.jobs tbody td.next'), (c) => c.firstChild.textContent.trim())").await,
    )
    .unwrap();
    let times: Vec<&str> = next.iter().map(String::as_str).filter(|text| text.ends_with("UTC")).collect();
    assert!(times.len() > 50 && times.windows(2).all(|pair| pair[0] <= pair[1]), "{next:?}");
    browser.goto(&format!("{base}/?sort=next&page=6")).await.unwrap();
    let last =
        js(&chromium, "return document.querySelector('table.jobs tbody tr:last-child td.next').textContent.trim()")
            .await;
    assert_eq!(last, "paused", "paused jobs come last");
    let console = chromium.console().await;
    chromium.close().await;
    // Nothing refused, nothing missing (the favicon included); the 404 asked for is the only error.
    let errors: Vec<&String> = console
        .iter()
        .filter(|line| {
            line.contains("Content Security Policy")
                || line.starts_with("SEVERE") && !line.contains("/jobs/no-such-job")
        })
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// The live refresh patches the page: scroll position, a text selection and the focused element
/// (the same node) survive several refreshes that changed the strips; a run's output follows its
/// end while the reader is at the bottom and stays put once they scrolled up; pause asks first,
/// and its notice does not come back on reload; a 401 is a page with a title and a way back.
#[tokio::test]
async fn a_live_refresh_keeps_the_readers_place_and_run_output_follows_its_end() {
    let fleet = Fleet::start().await;
    let base = fleet.http();
    let chromium = Chromium::start(&[]).await;
    let browser = &chromium.browser;
    emulate(&chromium, 1024, false).await;
    browser.goto(&format!("{base}/")).await.unwrap();
    // Scroll down, select a job's schedule text, focus the newest cell of job-051's strip.
    wait_for("job-051's strip", Duration::from_secs(10), || async {
        browser.find(Locator::Css("tr[data-key='job-051'] .strip a.cell")).await.is_ok()
    })
    .await;
    let before = js(
        &chromium,
        "window.scrollTo(0, 900);
         const text = document.querySelector(\"tr[data-key='job-060'] td.schedule .clamp\").firstChild;
         const range = document.createRange(); range.setStart(text, 3); range.setEnd(text, 12);
         getSelection().removeAllRanges(); getSelection().addRange(range);
         const cells = document.querySelectorAll(\"tr[data-key='job-051'] .strip a.cell\");
         const cell = cells[cells.length - 1]; cell.focus(); window.marked = cell;
         window.strip = document.querySelector(\"tr[data-key='job-051'] .strip\").innerHTML;
         return { y: window.scrollY, selection: getSelection().toString() };",
    )
    .await;
    assert!(before["y"].as_f64().unwrap() > 0.0, "{before}");
    // Three refreshes, the strips changing meanwhile.
    for round in 0..3 {
        let stamp = js(&chromium, "return document.getElementById('live-state').textContent").await;
        wait_for(&format!("refresh {round}"), Duration::from_secs(30), || async {
            js(&chromium, "return document.getElementById('live-state').textContent").await != stamp
        })
        .await;
    }
    let after = js(
        &chromium,
        "return { y: window.scrollY, selection: getSelection().toString(),
                  same: document.activeElement === window.marked && window.marked.isConnected,
                  run: document.activeElement.dataset.key === window.marked.dataset.key
                    && document.activeElement.closest(\"tr[data-key='job-051']\") !== null,
                  moved: document.querySelector(\"tr[data-key='job-051'] .strip\").innerHTML !== window.strip,
                  stops: document.querySelectorAll(\"tr[data-key='job-051'] .strip a.cell[tabindex='0']\").length };",
    )
    .await;
    assert_eq!(after["y"], before["y"], "{after}");
    assert_eq!(after["selection"], before["selection"], "{after}");
    // The very node the reader focused, still in the page: a patch never replaces it.
    assert_eq!(after["run"], true, "the focus is on the same run's cell: {after}");
    assert_eq!(after["same"], true, "the focused cell is the node the reader focused: {after}");
    assert_eq!(after["moved"], true, "the strip did change meanwhile: {after}");
    assert_eq!(after["stops"], 1, "one tab stop per strip: {after}");

    // A run's output: followed at the bottom, left alone once scrolled up.
    post(format!("{base}/api/jobs/chatty/trigger"), json!({})).await;
    let run = || async {
        let runs = get_json(format!("{base}/api/jobs/chatty/runs")).await;
        runs["runs"][0]["id"].as_i64()
    };
    let mut id = None;
    for _ in 0..50 {
        id = run().await;
        if id.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let id = id.expect("chatty's run");
    browser.goto(&format!("{base}/runs/{id}")).await.unwrap();
    let box_state = "const o = document.getElementById('output'); const lines = o.querySelectorAll('.line');
        return { top: o.scrollTop, bottom: o.scrollTop + o.clientHeight >= o.scrollHeight - 8, overflow: o.scrollHeight > o.clientHeight,
                 lines: lines.length, last: lines.length ? lines[lines.length - 1].textContent : '' };";
    wait_for("output longer than its box", Duration::from_secs(15), || async {
        js(&chromium, box_state).await["overflow"] == true
    })
    .await;
    let first = js(&chromium, box_state).await;
    wait_for("more output", Duration::from_secs(10), || async {
        js(&chromium, box_state).await["lines"].as_i64() > first["lines"].as_i64()
    })
    .await;
    let followed = js(&chromium, box_state).await;
    assert_eq!(followed["bottom"], true, "the box follows the end: {followed}");
    js(&chromium, "document.getElementById('output').scrollTop = 40; return null").await;
    let scrolled = js(&chromium, box_state).await;
    wait_for("more output after scrolling up", Duration::from_secs(10), || async {
        js(&chromium, box_state).await["lines"].as_i64() > scrolled["lines"].as_i64()
    })
    .await;
    let stayed = js(&chromium, box_state).await;
    assert_eq!(stayed["top"], scrolled["top"], "scrolled up, the box stays put: {stayed}");
    assert_eq!(stayed["bottom"], false, "{stayed}");
    wait_for("the run to end and the page to say so", Duration::from_secs(30), || async {
        js(&chromium, "return document.getElementById('live-state').textContent")
            .await
            .as_str()
            .is_some_and(|s| s.starts_with("final"))
    })
    .await;
    let state = js(&chromium, "return document.getElementById('live-state').textContent").await;
    let state = state.as_str().unwrap();
    assert!(
        regex_lite::Regex::new(r"^final · updated [0-2]\d:[0-5]\d:[0-5]\d UTC$").unwrap().is_match(state),
        "{state}"
    );
    // stdout and stderr told apart: every tenth line is stderr's, marked so.
    let streams = js(
        &chromium,
        "const lines = Array.from(document.querySelectorAll('#output .line'));
        return { stderr: lines.filter((l) => l.classList.contains('stderr')).map((l) => l.textContent.trim()),
                 stdout: lines.filter((l) => !l.classList.contains('stderr')).length };",
    )
    .await;
    let stderr: Vec<String> = serde_json::from_value(streams["stderr"].clone()).unwrap();
    assert!(stderr.len() >= 30 && stderr.iter().all(|line| line.starts_with("stderr warning ")), "{streams}");
    assert!(streams["stdout"].as_u64().unwrap() >= 300, "{streams}");
    let raw = reqwest::get(format!("{base}/runs/{id}/output")).await.unwrap();
    assert!(raw.headers()["content-disposition"].to_str().unwrap().contains("attachment"));
    let raw = raw.text().await.unwrap();
    assert!(raw.contains("line 400\n") && raw.contains("warning 400\n"), "{}", &raw[raw.len().saturating_sub(200)..]);

    // Pause asks first: going back changes nothing; confirming pauses; the notice once.
    browser.goto(&format!("http://admin:{TOKEN}@127.0.0.1:{}/signin", fleet.port)).await.unwrap();
    browser.goto(&format!("{base}/jobs/job-002")).await.unwrap();
    browser.find(Locator::Id("pause")).await.unwrap().click().await.unwrap();
    assert_eq!(js(&chromium, "return document.getElementById('confirm').open").await, true);
    browser.find(Locator::Id("confirm-no")).await.unwrap().click().await.unwrap();
    let job = get_json(format!("{base}/api/jobs/job-002")).await;
    assert_eq!(job["paused"], false, "going back paused nothing");
    browser.find(Locator::Id("pause")).await.unwrap().click().await.unwrap();
    browser.find(Locator::Id("confirm-yes")).await.unwrap().click().await.unwrap();
    wait_for("the notice", Duration::from_secs(10), || async { browser.find(Locator::Css(".notice")).await.is_ok() })
        .await;
    assert_eq!(get_json(format!("{base}/api/jobs/job-002")).await["paused"], true);
    let url = browser.current_url().await.unwrap();
    assert!(!url.as_str().contains("done="), "{url}");
    browser.refresh().await.unwrap();
    assert!(browser.find(Locator::Css(".notice")).await.is_err(), "the notice came back on reload");
    let console = chromium.console().await;
    chromium.close().await;
    assert!(!console.iter().any(|line| line.contains("Content Security Policy")), "{console:#?}");

    // A refused sign-in is a page with a title and ways back.
    let refused = reqwest::Client::new()
        .get(format!("{base}/signin"))
        .header("referer", format!("{base}/jobs/job-002"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let page = refused.text().await.unwrap();
    for expected in [
        "<title>401 Unauthorized · tenure</title>",
        "<h1>401 Unauthorized</h1>",
        "href=\"/\"",
        "href=\"/jobs/job-002\"",
        "href=\"/signin\"",
    ] {
        assert!(page.contains(expected), "{expected} not in {page}");
    }
}
