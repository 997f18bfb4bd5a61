//! The command line as a user meets it: `validate` on the example and on broken files, `next`.

use std::process::Command;

fn tenure(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("TENURE_TZ")
        .env_remove("TENURE_FROM")
        .output()
        .expect("run tenure");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn the_example_validates_with_one_line_per_job() {
    let (code, stdout, stderr) = tenure(&["validate", "jobs.example.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let jobs = [
        "heartbeat",
        "disk-usage",
        "fails-on-purpose",
        "self-check",
        "nightly-report",
        "digest",
        "sync-eu",
        "sync-us",
        "billing-sync",
    ];
    assert_eq!(lines.len(), jobs.len() + 1, "{stdout}");
    for (line, job) in lines.iter().zip(jobs) {
        assert!(line.starts_with(&format!("{job}: ")), "{line}");
    }
    assert!(lines[4].contains("Europe/Berlin next "), "{}", lines[4]);
    assert!(lines[5].starts_with("digest: \"0 9 * * MON-FRI | 0 12 * * SAT\" ("), "{}", lines[5]);
    assert!(lines[3].ends_with("paused"), "{}", lines[3]);
    assert!(lines[8].ends_with("paused"), "{}", lines[8]);
    assert!(lines[9].starts_with("9 jobs valid"), "{}", lines[9]);
}

/// Each broken fixture yields exactly these located errors, in file order, and exit code 1.
#[test]
fn broken_files_yield_every_error_located() {
    let cases: &[(&str, &[&str])] = &[
        (
            "tests/fixtures/unknown-field.yaml",
            &[
                "tests/fixtures/unknown-field.yaml:2:5: job `report`: missing `schedule`",
                "tests/fixtures/unknown-field.yaml:3:5: job `report`: unknown field `scedule` in a job (did you mean `schedule`?)",
            ],
        ),
        (
            "tests/fixtures/duplicates.yaml",
            &[
                "tests/fixtures/duplicates.yaml:5:11: job `cleanup`: duplicate job name `cleanup`: already defined at tests/fixtures/duplicates.yaml:2:11",
            ],
        ),
        (
            "tests/fixtures/bad-values.yaml",
            &[
                "tests/fixtures/bad-values.yaml:2:12: `timeout`: `soon` is not a duration such as 30s",
                "tests/fixtures/bad-values.yaml:4:11: invalid job name `Nightly Report`: expected 1 to 63 characters",
                "tests/fixtures/bad-values.yaml:5:15: job `Nightly Report`: `schedule`: schedule `0 0 30 2 *` can never fire",
                "tests/fixtures/bad-values.yaml:6:15: job `Nightly Report`: `timezone`: unknown time zone `Mars/Olympus`",
                "tests/fixtures/bad-values.yaml:11:5: job `two-actions`: expected exactly one of `command`, `shell` or `http`",
                "tests/fixtures/bad-values.yaml:13:15: job `bad-policy`: `schedule`: invalid schedule `61 * * * *`: minute field `61`",
                "tests/fixtures/bad-values.yaml:15:18: job `bad-policy`: `concurrency`: `sometimes` is not one of allow, forbid, replace",
            ],
        ),
        ("tests/fixtures/not-yaml.yaml", &["tests/fixtures/not-yaml.yaml:4:13: "]),
    ];
    for (file, expected) in cases {
        let (code, stdout, stderr) = tenure(&["validate", file]);
        assert_eq!(code, 1, "{file}: {stdout}{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), expected.len(), "{file}:\n{stderr}");
        for (line, prefix) in lines.iter().zip(expected.iter()) {
            assert!(line.starts_with(prefix), "{file}: expected a line starting\n  {prefix}\nfound\n  {line}");
        }
    }
}

#[test]
fn next_prints_rfc3339_with_the_zone_offset_strictly_after_from() {
    let (code, stdout, stderr) =
        tenure(&["next", "30 2 * * *", "--tz", "Europe/Berlin", "--from", "2026-03-28T01:30:00Z", "-n", "3"]);
    assert_eq!(code, 0, "{stderr}");
    // The 28th's 02:30 CET is exactly `--from`, so it is not printed; the 29th's falls in the
    // skipped hour and fires at 03:00 CEST.
    assert_eq!(stdout, "2026-03-29T03:00:00+02:00\n2026-03-30T02:30:00+02:00\n2026-03-31T02:30:00+02:00\n");

    let (code, stdout, _) = tenure(&[
        "next",
        "--jobs",
        "jobs.example.yaml",
        "--job",
        "billing-sync",
        "--from",
        "2026-11-27T00:00:00Z",
        "-n",
        "2",
    ]);
    assert_eq!(code, 0);
    assert_eq!(stdout, "2026-11-27T09:00:00-05:00\n2026-11-30T09:00:00-05:00\n");

    // A job with several expressions prints their merged fire times.
    let (code, stdout, stderr) = tenure(&[
        "next",
        "--jobs",
        "jobs.example.yaml",
        "--job",
        "digest",
        "--from",
        "2026-11-27T00:00:00Z",
        "-n",
        "3",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "2026-11-27T09:00:00+00:00\n2026-11-28T12:00:00+00:00\n2026-11-30T09:00:00+00:00\n");

    let (code, _, stderr) = tenure(&["next", "0 0 30 2 *"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("can never fire"), "{stderr}");
    let (code, _, stderr) = tenure(&["next", "--jobs", "jobs.example.yaml", "--job", "nope"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("nope"), "{stderr}");
}

/// The repeated hour's first pass is printed in full before the second.
#[test]
fn next_prints_both_passes_of_a_repeated_hour() {
    let (code, stdout, stderr) =
        tenure(&["next", "*/20 * * * *", "--tz", "America/New_York", "--from", "2026-11-01T04:30:00Z", "-n", "8"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "2026-11-01T00:40:00-04:00\n2026-11-01T01:00:00-04:00\n2026-11-01T01:20:00-04:00\n2026-11-01T01:40:00-04:00\n\
         2026-11-01T01:00:00-05:00\n2026-11-01T01:20:00-05:00\n2026-11-01T01:40:00-05:00\n2026-11-01T02:00:00-05:00\n"
    );
}

#[test]
fn version_and_help() {
    let (code, stdout, _) = tenure(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), format!("tenure {}", env!("CARGO_PKG_VERSION")));
    let (code, stdout, _) = tenure(&["help"]);
    assert_eq!(code, 0);
    for command in ["validate", "next", "run", "schema"] {
        assert!(stdout.contains(command), "{stdout}");
    }
}

/// A `starting_deadline` longer than the ledger keeps its rows is refused, located,
/// by `validate --retain` and by `dev` at start.
#[test]
fn a_starting_deadline_longer_than_the_retention_is_refused_where_it_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.yaml");
    std::fs::write(
        &file,
        "jobs:\n  - name: nightly\n    schedule: \"30 2 * * *\"\n    shell: \"true\"\n    starting_deadline: 2d\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let expected = format!(
        "{path}:5:24: job `nightly`: `starting_deadline` 2days is longer than the ledger's retention (--retain 1day); \
         expected at most the retention"
    );
    let (code, _, stderr) = tenure(&["validate", "--retain", "1d", path]);
    assert_eq!((code, stderr.trim()), (1, expected.as_str()));
    let (code, _, _) = tenure(&["validate", "--retain", "3d", path]);
    assert_eq!(code, 0);
    let ledger = dir.path().join("ledger.db");
    let (code, _, stderr) = tenure(&[
        "dev",
        "--jobs",
        path,
        "--retain",
        "1d",
        "--listen",
        "127.0.0.1:0",
        "--ledger",
        ledger.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
}

/// `tenure supervise` is for the executor only: not offered in the help.
#[test]
fn the_supervisor_command_is_hidden_from_help() {
    let (code, stdout, _) = tenure(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("validate") && !stdout.contains("supervise"), "{stdout}");
    let (code, _, stderr) = tenure(&["supervise", "--silence-limit", "1s"]);
    assert_eq!(code, 2, "no job to supervise is a usage error: {stderr}");
}

/// `tenure run` with these arguments, killed if it has not exited within 10 s (a replica that
/// accepted its flags would wait for its database and coordinator). Exit code (-1 when it had to
/// be killed) and standard error.
fn run_briefly(args: &[&str]) -> (i32, String) {
    run_briefly_with(args, &[])
}

/// `run_briefly` with these environment variables set.
fn run_briefly_with(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenure"))
        .arg("run")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("TENURE_ETCD")
        .env_remove("TENURE_ZOOKEEPER")
        .env_remove("TENURE_ZOOKEEPER_CA")
        .env_remove("TENURE_ZOOKEEPER_CERT")
        .env_remove("TENURE_ZOOKEEPER_KEY")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tenure");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (code, stderr)
}

/// `--zookeeper` is an alternative to `--etcd`, not an addition, and a malformed server
/// list or an etcd-only flag beside it stops the replica at once with one line, before it waits
/// for anything.
#[test]
fn zookeeper_flags_are_checked_before_anything_starts() {
    let database = "postgres://tenure@127.0.0.1:9/tenure";
    let base = ["--jobs", "jobs.example.yaml", "--database-url", database, "--listen", "127.0.0.1:0"];
    let cases: &[(&[&str], &[&str])] = &[
        (&["--etcd", "http://127.0.0.1:2379", "--zookeeper", "127.0.0.1:2181"], &["--zookeeper", "--etcd"]),
        (&["--zookeeper", "127.0.0.1:2181", "--etcd-ca", "/nonexistent/ca.crt"], &["--etcd-ca", "--zookeeper"]),
        (&["--zookeeper", "zk-1:2181,zk-2:abc"], &["--zookeeper", "zk-2:abc", "port"]),
        (&["--zookeeper", "zk-1:2181,:2181"], &["--zookeeper", ":2181", "host"]),
        (&["--zookeeper", "tcp+tls://zk-1:2281,zk-2:2181"], &["--zookeeper", "all TLS or none"]),
    ];
    for (flags, words) in cases {
        let args: Vec<&str> = base.iter().chain(flags.iter()).copied().collect();
        let (code, stderr) = run_briefly(&args);
        assert!(code > 0, "{flags:?} was accepted (exit {code}): {stderr}");
        for word in *words {
            assert!(stderr.contains(word), "{flags:?}: {word:?} not in the error: {stderr}");
        }
    }
}

/// `--zookeeper-ca`, `--zookeeper-cert` and `--zookeeper-key` (or
/// their `TENURE_ZOOKEEPER_*` variables) mean something only with `tcp+tls://` servers; given
/// with plaintext servers or with etcd they stop the replica at once with one line.
#[test]
fn zookeeper_tls_files_without_tls_servers_are_refused_at_once() {
    let database = "postgres://tenure@127.0.0.1:9/tenure";
    let base = ["--jobs", "jobs.example.yaml", "--database-url", database, "--listen", "127.0.0.1:0"];
    // Each case: the arguments, the environment, and what the refusal must say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &["--zookeeper", "127.0.0.1:2181", "--zookeeper-ca", "/etc/zk/ca.crt"],
            &[],
            &["--zookeeper-ca", "tcp+tls://"],
        ),
        (
            &["--zookeeper", "127.0.0.1:2181", "--zookeeper-cert", "/etc/zk/c.crt", "--zookeeper-key", "/etc/zk/c.key"],
            &[],
            &["--zookeeper-key", "tcp+tls://"],
        ),
        (
            &["--zookeeper", "127.0.0.1:2181"],
            &[("TENURE_ZOOKEEPER_CA", "/etc/zk/ca.crt")],
            &["--zookeeper-ca", "tcp+tls://"],
        ),
        (
            &["--etcd", "http://127.0.0.1:2379", "--zookeeper-ca", "/etc/zk/ca.crt"],
            &[],
            &["--zookeeper-ca", "not etcd"],
        ),
        (
            &["--etcd", "http://127.0.0.1:2379"],
            &[("TENURE_ZOOKEEPER_CERT", "/etc/zk/c.crt"), ("TENURE_ZOOKEEPER_KEY", "/etc/zk/c.key")],
            &["--zookeeper-cert", "not etcd"],
        ),
    ];
    for (flags, env, words) in cases {
        let args: Vec<&str> = base.iter().chain(flags.iter()).copied().collect();
        let (code, stderr) = run_briefly_with(&args, env);
        assert!(code > 0, "{flags:?} {env:?} was accepted (exit {code}): {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{flags:?} {env:?}: one line: {stderr}");
        for word in *words {
            assert!(stderr.contains(word), "{flags:?} {env:?}: {word:?} not in the error: {stderr}");
        }
    }
}

/// The shell completions and the man page an operator installs once.
#[test]
fn completions_for_each_shell_and_a_man_page_are_printed() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef tenure"), ("fish", "complete -c tenure")] {
        let (code, out, err) = tenure(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(marker) && out.contains("trigger") && out.contains("--database-url"), "{shell}: {out}");
    }
    let (code, out, err) = tenure(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(".TH tenure 1") && out.contains("completions") && out.contains("validate"), "{out}");
    let (code, _, err) = tenure(&["completions", "powerpoint"]);
    assert_eq!(code, 2, "an unknown shell is refused: {err}");
}

/// A step that does not divide its field (`*/45` in minutes fires at :00 and :45) is a warning:
/// located, with the times it fires and the `@every` form that has the period, printed by
/// `validate`, which still exits 0; `--strict` makes it an error (exit 1) for CI.
#[test]
fn validate_warns_about_a_step_that_does_not_divide_its_field_and_strict_refuses_it() {
    let file = "tests/fixtures/uneven-step.yaml";
    let (code, stdout, stderr) = tenure(&["validate", file]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stderr,
        "tests/fixtures/uneven-step.yaml:3:16: warning: job `every-45-minutes`: `*/45` in the minute field: \
         the step does not divide 60, so it restarts every hour: fires at minutes 0 and 45 of every hour \
         (45 minutes apart, then 15 from the last to the first of the next hour), not every 45 minutes; \
         for a fire every 45 minutes write `@every 45m`\n"
    );
    assert!(
        stdout.contains("every-45-minutes: \"*/45 * * * *\" (At minutes 0 and 45 past every hour) UTC next"),
        "{stdout}"
    );
    assert!(stdout.contains("quarter-hours: \"*/15 * * * *\" (Every 15 minutes) UTC next"), "{stdout}");
    assert!(stdout.ends_with(&format!("2 jobs valid, 1 warning (config hash {})\n", hash_of(&stdout))), "{stdout}");

    let (code, stdout, stderr) = tenure(&["validate", "--strict", file]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("tests/fixtures/uneven-step.yaml:3:16: job `every-45-minutes`: `*/45` in the minute field"),
        "{stderr}"
    );
    // A file without one passes --strict.
    let (code, _, stderr) = tenure(&["validate", "--strict", "jobs.example.yaml"]);
    assert_eq!(code, 0, "{stderr}");
}

fn hash_of(stdout: &str) -> &str {
    stdout.rsplit("(config hash ").next().unwrap().trim_end().trim_end_matches(')')
}

/// `next --describe` says the schedule in the dashboard's words before its fire times.
#[test]
fn next_describes_the_schedule_in_the_words_the_dashboard_uses() {
    let (code, stdout, stderr) =
        tenure(&["next", "*/45 * * * * *", "--describe", "--from", "2026-11-27T00:00:00Z", "-n", "3"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "At seconds 0 and 45 of every minute\n\
         2026-11-27T00:00:45+00:00\n2026-11-27T00:01:00+00:00\n2026-11-27T00:01:45+00:00\n"
    );
}
