//! `tenure dev` as a newcomer runs it: one command, a SQLite ledger, the dashboard; a restart
//! is a new, higher term and keeps the history.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::harness::{free_port, wait_for};

async fn get_json(url: &str) -> Option<Value> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
    client.get(url).send().await.ok()?.json().await.ok()
}

fn start(dir: &std::path::Path, port: u16) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["dev", "--jobs", "jobs.example.yaml", "--admin-token", "tok", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--ledger")
        .arg(dir.join("ledger.db"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tenure dev")
}

#[tokio::test]
async fn dev_fires_the_example_at_once_and_a_restart_is_a_higher_term() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = start(dir.path(), port);

    // The per-second job has run and the dashboard shows it.
    wait_for("the heartbeat job to succeed", Duration::from_secs(15), || async {
        let Some(jobs) = get_json(&format!("{base}/api/jobs")).await else { return false };
        jobs.as_array()
            .is_some_and(|jobs| jobs.iter().any(|j| j["name"] == "heartbeat" && j["last"]["status"] == "succeeded"))
    })
    .await;
    let cluster = get_json(&format!("{base}/api/cluster")).await.unwrap();
    let first_term = cluster["leader"]["term"].as_i64().unwrap();
    assert_eq!(cluster["replicas"].as_array().unwrap().len(), 1);
    let page = reqwest::get(format!("{base}/")).await.unwrap().text().await.unwrap();
    assert!(page.contains("heartbeat") && page.contains("leader"));
    // A manual trigger goes through the same claim path.
    let answer = reqwest::Client::new()
        .post(format!("{base}/api/jobs/disk-usage/trigger"))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    wait_for("the triggered run", Duration::from_secs(10), || async {
        let Some(page) = get_json(&format!("{base}/api/jobs/disk-usage/runs")).await else { return false };
        page["runs"]
            .as_array()
            .is_some_and(|runs| runs.iter().any(|r| r["trigger"] == "manual" && r["status"] == "succeeded"))
    })
    .await;

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "dev stops cleanly on SIGTERM: {status:?}");
    let mut banner = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut banner).unwrap();
    assert!(banner.contains(&format!("http://127.0.0.1:{port}/")), "{banner}");

    let mut child = start(dir.path(), port);
    wait_for("the restarted dev to lead", Duration::from_secs(15), || async {
        get_json(&format!("{base}/api/cluster"))
            .await
            .is_some_and(|c| c["leader"]["term"].as_i64().is_some_and(|t| t > first_term))
    })
    .await;
    let runs = get_json(&format!("{base}/api/jobs/disk-usage/runs")).await.unwrap();
    assert!(
        runs["runs"].as_array().unwrap().iter().any(|r| r["trigger"] == "manual"),
        "the ledger survived the restart"
    );
    let terms = get_json(&format!("{base}/api/terms")).await.unwrap();
    assert_eq!(terms.as_array().unwrap().len(), 2);
    assert!(terms[0]["handover_ms"].is_i64(), "the restart shows as a hand-over");
    let _ = child.kill();
    let _ = child.wait();
}

/// The example file is a newcomer's first dashboard: on any port, every job it does not pause
/// succeeds, except the one whose name says it fails on purpose; and the banner gives the two
/// lines that point the command line at this dev process.
#[tokio::test]
async fn the_example_jobs_succeed_in_dev_except_the_one_failing_on_purpose() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // Ended with SIGTERM, when the test is done and when it fails.
    struct Dev(std::process::Child);
    impl Dev {
        fn stop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGTERM);
                let _ = self.0.wait();
            }
        }
    }
    impl Drop for Dev {
        fn drop(&mut self) {
            self.stop();
        }
    }
    let mut dev = Dev(start(dir.path(), port));
    wait_for("tenure dev to serve its jobs", Duration::from_secs(15), || async {
        get_json(&format!("{base}/api/jobs")).await.is_some()
    })
    .await;
    let jobs = get_json(&format!("{base}/api/jobs")).await.unwrap();
    let unpaused: Vec<String> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|job| job["paused"] == false)
        .map(|job| job["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(unpaused.len() >= 6 && unpaused.iter().any(|job| job == "fails-on-purpose"), "{jobs}");
    let client = reqwest::Client::new();
    for job in &unpaused {
        let answer = client.post(format!("{base}/api/jobs/{job}/trigger")).bearer_auth("tok").send().await.unwrap();
        assert_eq!(answer.status(), 202, "trigger {job}");
    }
    // Each job's manual run once it has ended (the failing one after its two retries, 3 s apart).
    let ended = |base: String, unpaused: Vec<String>| async move {
        let mut outcomes = std::collections::BTreeMap::new();
        for job in unpaused {
            let page = get_json(&format!("{base}/api/jobs/{job}/runs")).await?;
            let run = page["runs"].as_array()?.iter().find(|run| run["trigger"] == "manual")?.clone();
            let status = run["status"].as_str()?.to_owned();
            if matches!(status.as_str(), "claimed" | "running" | "retrying") {
                return None;
            }
            outcomes.insert(job, status);
        }
        Some(outcomes)
    };
    wait_for("every triggered run to end", Duration::from_secs(40), || {
        let ended = ended(base.clone(), unpaused.clone());
        async move { ended.await.is_some() }
    })
    .await;
    let outcomes = ended(base.clone(), unpaused.clone()).await.unwrap();
    for (job, status) in &outcomes {
        let expected = if job == "fails-on-purpose" { "failed" } else { "succeeded" };
        assert_eq!(status, expected, "{job}: {outcomes:?}");
    }
    dev.stop();
    let mut banner = String::new();
    std::io::Read::read_to_string(dev.0.stdout.as_mut().unwrap(), &mut banner).unwrap();
    assert!(
        banner.contains(&format!("export TENURE_SERVER={base} TENURE_ADMIN_TOKEN=")) && !banner.contains("=tok"),
        "{banner}"
    );
    assert!(banner.contains("tenure status"), "{banner}");
}

/// A `tenure dev` process on `ledger`, killed when dropped (also when the test fails).
struct DevProcess {
    child: std::process::Child,
    stderr: std::path::PathBuf,
}

impl DevProcess {
    fn start(jobs: &std::path::Path, ledger: &std::path::Path, port: u16, name: &str) -> DevProcess {
        let stderr = ledger.with_file_name(format!("{name}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_tenure"))
            .args(["dev", "--admin-token", "tok", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--jobs")
            .arg(jobs)
            .arg("--ledger")
            .arg(ledger)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start tenure dev");
        DevProcess { child, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (slot, term) of every execution the job itself recorded, in order.
fn witnessed(path: &std::path::Path) -> Vec<(String, i64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            Some((fields.next()?.to_owned(), fields.next()?.parse().ok()?))
        })
        .collect()
}

/// Two `tenure dev` on one ledger both led, under the same term, and every slot ran
/// twice. The second must refuse to start, saying who holds the ledger; a SIGKILLed dev must not
/// keep the next one out.
#[tokio::test]
async fn a_second_dev_on_one_ledger_refuses_to_start_and_no_slot_runs_twice() {
    let dir = tempfile::tempdir().unwrap();
    let witness = dir.path().join("witness");
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(
        &jobs,
        format!(
            "jobs:\n  - name: tick\n    schedule: \"* * * * * *\"\n    shell: 'echo \"$TENURE_SLOT $TENURE_TERM\" >> {}'\n",
            witness.display()
        ),
    )
    .unwrap();
    let ledger = dir.path().join("ledger.db");

    let mut first = DevProcess::start(&jobs, &ledger, free_port(), "first");
    wait_for("the first dev to fire", Duration::from_secs(15), || async { witnessed(&witness).len() >= 2 }).await;
    let first_term = witnessed(&witness)[0].1;

    let mut second = DevProcess::start(&jobs, &ledger, free_port(), "second");
    wait_for("the second dev to exit", Duration::from_secs(10), || {
        let exited = second.child.try_wait().unwrap().is_some();
        async move { exited }
    })
    .await;
    let status = second.child.wait().unwrap();
    assert!(!status.success(), "the second dev must fail: {status:?}");
    let message = second.stderr();
    let error = message.lines().find(|line| line.starts_with("error:")).unwrap_or_else(|| panic!("{message}"));
    assert!(
        error.contains(&ledger.display().to_string()) && error.contains(&format!("pid {}", first.child.id())),
        "the message names the ledger and the process holding it: {error}"
    );

    // The first keeps firing, alone.
    let seen = witnessed(&witness).len();
    wait_for("the first dev to keep firing", Duration::from_secs(10), || async {
        witnessed(&witness).len() >= seen + 3
    })
    .await;
    assert!(first.child.try_wait().unwrap().is_none(), "the first dev still runs: {}", first.stderr());

    // SIGKILL releases the lock with the process: the next start on the ledger leads at once.
    kill(Pid::from_raw(first.child.id() as i32), Signal::SIGKILL).unwrap();
    first.child.wait().unwrap();
    let third = DevProcess::start(&jobs, &ledger, free_port(), "third");
    wait_for("the restarted dev to fire in a newer term", Duration::from_secs(15), || async {
        witnessed(&witness).iter().any(|(_, term)| *term > first_term)
    })
    .await;
    drop(third);

    // No slot ran twice, and every execution is the ledger's row of the term that ran it.
    let executions = witnessed(&witness);
    let mut slots: Vec<&str> = executions.iter().map(|(slot, _)| slot.as_str()).collect();
    slots.sort_unstable();
    let twice: Vec<&&str> = slots.windows(2).filter(|pair| pair[0] == pair[1]).map(|pair| &pair[0]).collect();
    assert!(twice.is_empty(), "slots executed twice: {twice:?}\n{executions:?}");
    let store = tenure::store::Reads::from_ledger(tenure::store::Sqlite::open(&ledger).await.unwrap());
    let rows = store.all_runs().await.unwrap();
    for (slot, term) in &executions {
        let slot = chrono::DateTime::parse_from_rfc3339(slot).unwrap();
        assert!(
            rows.iter().any(|row| row.job == "tick" && row.slot == slot && row.term == *term),
            "the execution of {slot} in term {term} has no ledger row of its term"
        );
    }
}

/// The environment a job's `env` dump shows, as name -> value.
fn environment(dump: &str) -> std::collections::BTreeMap<String, String> {
    dump.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// Every job saw `TENURE_ADMIN_TOKEN`, `TENURE_DATABASE_URL` and any other `TENURE_*`
/// setting of tenure itself. A real `tenure dev` with all three set runs a job that dumps its
/// environment: none of tenure's settings reach it; the run's values, the job's `env` and what
/// its `inherit_env` names do.
#[tokio::test]
async fn a_job_gets_its_run_values_and_env_but_none_of_tenures_settings() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("env.dump");
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(
        &jobs,
        format!(
            "jobs:\n  - name: dump-env\n    schedule: \"* * * * * *\"\n    env: {{ GREETING: hello }}\n    \
             inherit_env: [AWS_REGION]\n    \
             shell: 'env > {0}.tmp && mv {0}.tmp {0}'\n",
            dump.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["dev", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--jobs")
        .arg(&jobs)
        .arg("--ledger")
        .arg(dir.path().join("ledger.db"))
        .env("TENURE_ADMIN_TOKEN", "admin-secret")
        .env("TENURE_DATABASE_URL", "postgres://tenure:db-secret@db/tenure")
        .env("TENURE_FOO", "foo-setting")
        .env("UNRELATED_SECRET", "not-for-jobs")
        .env("AWS_REGION", "eu-west-1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tenure dev");
    let found = crate::harness::wait_until(Duration::from_secs(15), || async { dump.exists() }).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "the job never dumped its environment");
    let text = std::fs::read_to_string(&dump).unwrap();
    let seen = environment(&text);

    for secret in ["admin-secret", "db-secret", "foo-setting", "not-for-jobs"] {
        assert!(!text.contains(secret), "`{secret}` reached the job:\n{text}");
    }
    let tenure_names: Vec<&str> = seen.keys().map(String::as_str).filter(|name| name.starts_with("TENURE_")).collect();
    assert_eq!(
        tenure_names,
        ["TENURE_ATTEMPT", "TENURE_JOB", "TENURE_NODE", "TENURE_RUN_ID", "TENURE_SLOT", "TENURE_TERM"],
        "only the run's own values:\n{text}"
    );
    assert_eq!(seen["TENURE_JOB"], "dump-env");
    assert_eq!(seen["TENURE_ATTEMPT"], "1");
    assert_eq!(seen.get("GREETING").map(String::as_str), Some("hello"));
    assert_eq!(seen.get("AWS_REGION").map(String::as_str), Some("eu-west-1"));
    assert!(seen.contains_key("PATH"), "PATH is inherited:\n{text}");
}

/// A log written to a file is plain text (colour codes only on a terminal); on a terminal,
/// `NO_COLOR` turns them off too.
#[tokio::test]
async fn logs_are_coloured_only_on_a_terminal_and_never_with_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(&jobs, "jobs:\n  - name: tick\n    schedule: \"* * * * * *\"\n    shell: 'true'\n").unwrap();
    let ledger = dir.path().join("ledger.db");
    let dev = DevProcess::start(&jobs, &ledger, free_port(), "to-a-file");
    wait_for("a few log lines", Duration::from_secs(15), || async { dev.stderr().lines().count() >= 3 }).await;
    let log = dev.stderr();
    assert!(!log.contains('\u{1b}'), "colour codes in a log file:\n{log:?}");
    drop(dev);

    // On a terminal (`script` gives the command one), colour unless NO_COLOR is set.
    let on_a_terminal = |no_color: bool| {
        let command = format!(
            "timeout -s INT 3 {} dev --listen 127.0.0.1:{} --jobs {} --ledger {}",
            env!("CARGO_BIN_EXE_tenure"),
            free_port(),
            jobs.display(),
            dir.path().join(if no_color { "plain.db" } else { "coloured.db" }).display()
        );
        let mut script = Command::new("script");
        script.args(["-qfec", &command, "/dev/null"]);
        if no_color {
            script.env("NO_COLOR", "1");
        }
        let output = script.stdin(Stdio::null()).output().expect("script runs (util-linux)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let coloured = on_a_terminal(false);
    assert!(coloured.contains("\u{1b}["), "no colour on a terminal:\n{coloured:?}");
    let plain = on_a_terminal(true);
    assert!(plain.contains("INFO") && !plain.contains('\u{1b}'), "colour with NO_COLOR:\n{plain:?}");
}

/// `THP_enabled` of a process, from its `/proc/PID/status` (1: transparent huge pages allowed).
fn huge_pages_enabled(status: &str) -> Option<String> {
    status.lines().find_map(|line| Some(line.strip_prefix("THP_enabled:")?.trim().to_owned()))
}

/// mimalloc marks its arena for transparent huge pages, and the kernel then filled every 2 MiB of
/// it holding one resident page into a huge page: a replica's resident memory crept up while
/// what it held stayed flat. A real `tenure dev` runs without them; its supervisor and its jobs
/// get the machine's setting (what this test process has), not tenure's.
#[tokio::test]
async fn a_replica_runs_without_transparent_huge_pages_and_its_jobs_with_the_machines_setting() {
    let ours =
        huge_pages_enabled(&std::fs::read_to_string("/proc/self/status").unwrap()).expect("THP_enabled in status");
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("thp.dump");
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(
        &jobs,
        format!(
            "jobs:\n  - name: huge-pages\n    schedule: \"* * * * * *\"\n    \
             shell: 'grep THP_enabled /proc/$$/status > {0}.tmp && grep THP_enabled /proc/$PPID/status >> {0}.tmp && mv {0}.tmp {0}'\n",
            dump.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["dev", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--jobs")
        .arg(&jobs)
        .arg("--ledger")
        .arg(dir.path().join("ledger.db"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tenure dev");
    let found = crate::harness::wait_until(Duration::from_secs(15), || async { dump.exists() }).await;
    let replica = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    // The supervisor's own memory: no mapping marked for huge pages (`hg`), so its arena does not
    // grow by 2 MiB steps where the machine's setting is `madvise`.
    let supervisor = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|children| children.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"supervise"))
        });
    let supervisor_maps = supervisor.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok());
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "the job never wrote its THP_enabled");
    assert_eq!(huge_pages_enabled(&replica).as_deref(), Some("0"), "the replica's THP_enabled");
    let supervisor_maps = supervisor_maps.expect("the supervisor's smaps (this test reads it as root)");
    let marked: Vec<&str> = supervisor_maps
        .lines()
        .filter(|l| l.starts_with("VmFlags:") && l.split_whitespace().any(|f| f == "hg"))
        .collect();
    assert!(marked.is_empty(), "the supervisor marked memory for huge pages: {marked:?}");
    let text = std::fs::read_to_string(&dump).unwrap();
    let seen: Vec<String> = text.lines().filter_map(huge_pages_enabled).collect();
    assert_eq!(seen, [ours.clone(), ours], "the job's and its supervisor's THP_enabled, as this process's:\n{text}");
}

/// Connections to HTTP jobs' targets are kept for the next request (no handshake at the slot),
/// but not forever: an idle one is closed after the pool's idle time (90 s;
/// `TENURE_TEST_HTTP_POOL_IDLE_MS` shortens it here). A target that answers once and is then
/// left alone sees its connection closed by tenure.
#[tokio::test]
async fn an_idle_connection_to_an_http_jobs_target_is_closed_after_the_pools_idle_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = target.local_addr().unwrap();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let heard = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = target.accept().await {
            let (closed_tx, heard) = (closed_tx.clone(), heard.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                let mut answered = None;
                loop {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                            heard.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            answered = Some(std::time::Instant::now());
                        }
                    }
                }
                if let Some(at) = answered {
                    let _ = closed_tx.send(at.elapsed());
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(
        &jobs,
        format!("jobs:\n  - name: ping\n    schedule: \"0 0 1 1 *\"\n    http: {{ url: \"http://{address}/\" }}\n"),
    )
    .unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["dev", "--admin-token", "tok", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--jobs")
        .arg(&jobs)
        .arg("--ledger")
        .arg(dir.path().join("ledger.db"))
        .env("TENURE_TEST_HTTP_POOL_IDLE_MS", "1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tenure dev");
    let base = format!("http://127.0.0.1:{port}");
    wait_for("the manual run to be accepted", Duration::from_secs(15), || async {
        let answer =
            reqwest::Client::new().post(format!("{base}/api/jobs/ping/trigger")).bearer_auth("tok").send().await;
        answer.is_ok_and(|answer| answer.status() == 202)
    })
    .await;
    let idle = tokio::time::timeout(Duration::from_secs(20), closed.recv()).await;
    let _ = child.kill();
    let _ = child.wait();
    let requests = requests.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(requests, 1, "requests heard by the target");
    let idle = idle.expect("tenure kept its idle connection to the target open for 20 s").unwrap();
    assert!(idle < Duration::from_secs(10), "closed after {idle:?} idle");
}
