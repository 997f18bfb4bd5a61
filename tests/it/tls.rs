//! Production connections: a throwaway CA (rcgen), PostgreSQL with `ssl = on` and
//! `hostssl` rules only (`cert` for the harness, `scram-sha-256 clientcert=verify-full` for
//! replicas), etcd with `--cert-file --key-file --trusted-ca-file --client-cert-auth` and
//! authentication on, ZooKeeper with only a `secureClientPort` and `ssl.clientAuth=need`.
//! Replicas read every secret from a file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::Signal;

use crate::checker::{Expect, check};
use crate::cluster::{ADMIN_TOKEN, Cluster, CoordinatorKind, Options, TICK, TTL, ZOOKEEPER_TTL};
use crate::harness::{ETCD_PASSWORD, ETCD_USER, PG_PASSWORD, Postgres, wait_for};

/// How long after `from` the fence first held a term newer than `old_term`, polled every 5 ms.
async fn new_term_in_fence(cluster: &Cluster, old_term: i64, from: Instant, timeout: Duration) -> (Duration, i64) {
    loop {
        if let Ok(fence) = cluster.store.fence().await {
            if fence.term > old_term {
                return (from.elapsed(), fence.term);
            }
        }
        assert!(from.elapsed() < timeout, "no new term in the fence within {timeout:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn over_tls_a_replica_leads_and_fires_and_the_core_failover_holds() {
    let mut cluster = Cluster::start_secure(3, TICK, None).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.let_it_tick(3).await;
    let witness = cluster.witness();
    assert!(witness.iter().all(|w| w.term == term && w.node == cluster.replicas[leader].node), "{witness:?}");

    // SIGKILL: the lease expires, a follower wins and raises the fence.
    let killed = Instant::now();
    cluster.kill(leader);
    let (kill_failover, killed_term) =
        new_term_in_fence(&cluster, term, killed, TTL * 4 + Duration::from_secs(5)).await;
    eprintln!("TLS SIGKILL failover: signal to new term in the fence {kill_failover:?} (TTL {TTL:?})");
    let (new_leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.let_it_tick(2).await;

    // SIGTERM: the leader resigns, a follower takes over within milliseconds.
    let signalled = Instant::now();
    cluster.signal(new_leader, Signal::SIGTERM);
    let (term_handover, _) = new_term_in_fence(&cluster, killed_term, signalled, Duration::from_secs(5)).await;
    eprintln!("TLS SIGTERM hand-over: signal to new term in the fence {term_handover:?}");
    cluster.terminate(new_leader).await;
    cluster.let_it_tick(3).await;
    assert!(kill_failover < TTL * 2 + Duration::from_millis(1500), "SIGKILL failover took {kill_failover:?}");
    assert!(term_handover < Duration::from_secs(1), "SIGTERM hand-over took {term_handover:?}");

    let witness = cluster.witness();
    let from = witness.first().unwrap().slot;
    let until = witness.last().unwrap().slot;
    let report =
        check(&witness, &cluster.ledger().await, &Expect { jobs: &["tick"], from, until, missed_allowed: true });
    cluster.verdict(&report).await;
    cluster.assert_healed(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_leader_keeps_its_lease_across_etcd_auth_token_expiries() {
    // etcd's tokens here are JWTs that expire 3 s after they are issued, however much they are
    // used. The leader must hold its term across several expiries, and a hand-over afterwards
    // must work: the follower's campaign, its win check and its new lease all need a token.
    let mut cluster = Cluster::start_secure(2, TICK, Some(3)).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    let started = Utc::now();
    // The scenario is time itself passing: three token lifetimes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ended = Utc::now();
    assert_eq!(cluster.leaders().await, [(leader, term)], "leadership changed\n{}", cluster.logs());
    // Every second of those ten fired once, in that term: a second of margin at either end for
    // the slot in flight.
    let (from, until) = (started + chrono::Duration::seconds(1), ended - chrono::Duration::seconds(1));
    let owed: Vec<i64> = (from.timestamp() + 1..=until.timestamp()).collect();
    let since: Vec<_> = cluster.witness().into_iter().filter(|w| w.slot > from && w.slot <= until).collect();
    let mut fired: Vec<i64> = since.iter().map(|w| w.slot.timestamp()).collect();
    fired.sort_unstable();
    assert_eq!(fired, owed, "the job kept firing, each slot once: {since:?}");
    assert!(since.iter().all(|w| w.term == term));
    let log = std::fs::read_to_string(&cluster.replicas[leader].log).unwrap();
    assert!(log.contains("became leader"), "the leader's log is read:\n{log}");
    for trouble in ["lost leadership", "registration lost", "election round failed"] {
        assert!(!log.contains(trouble), "{trouble:?} in the leader's log:\n{log}");
    }

    let signalled = Instant::now();
    cluster.signal(leader, Signal::SIGTERM);
    let (handover, new_term) = new_term_in_fence(&cluster, term, signalled, Duration::from_secs(10)).await;
    eprintln!("hand-over with expired tokens: {handover:?}");
    cluster.terminate(leader).await;
    wait_for("the new leader to fire", Duration::from_secs(10), || async {
        cluster.witness().iter().any(|w| w.term == new_term)
    })
    .await;
}

#[tokio::test]
async fn secrets_appear_in_no_log_page_api_error_or_help() {
    let cluster = Cluster::start_secure(2, TICK, None).await;
    let (leader, _) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.let_it_tick(2).await;
    let secrets = [PG_PASSWORD, ETCD_PASSWORD, ADMIN_TOKEN];
    let base = cluster.url(leader);
    let client = reqwest::Client::new();
    let mut seen = String::new();
    for path in ["/", "/jobs/tick", "/terms", "/api/cluster", "/api/jobs", "/api/jobs/tick/runs", "/readyz", "/metrics"]
    {
        let body = client.get(format!("{base}{path}")).send().await.unwrap().text().await.unwrap();
        seen.push_str(&body);
    }
    for replica in &cluster.replicas {
        seen.push_str(&std::fs::read_to_string(&replica.log).unwrap());
    }
    // Help with the secrets in the environment: clap must not print their values.
    let help = Command::new(env!("CARGO_BIN_EXE_tenure"))
        .args(["run", "--help"])
        .env("TENURE_DATABASE_URL", format!("postgres://tenure:{PG_PASSWORD}@db/tenure"))
        .env("TENURE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TENURE_ETCD_PASSWORD", ETCD_PASSWORD)
        .output()
        .unwrap();
    assert!(help.status.success());
    seen.push_str(&String::from_utf8_lossy(&help.stdout));
    // A start that fails on PostgreSQL: its error names the server with the password masked.
    let no_such_database = cluster.database_url.replace("/tenure?", "/no_such_database?");
    let failed = start_once(&cluster, &[("--database-url", &no_such_database)]);
    seen.push_str(&failed);
    assert!(failed.contains("tenure:***@127.0.0.1") && failed.contains("no_such_database"), "masked: {failed}");
    assert!(seen.contains("tick") && seen.contains("--etcd-password-file"), "the captured text is real");
    for secret in secrets {
        assert!(!seen.contains(secret), "{secret} leaked");
    }
}

/// Run `tenure run` once against the cluster's servers with the secure settings, `overrides`
/// replacing or adding flags (an empty value removes the flag), and return its stderr once it
/// exits (it must, and fail).
fn start_once(cluster: &Cluster, overrides: &[(&str, &str)]) -> String {
    let pki = &cluster.secure.as_ref().expect("a secure cluster").pki;
    let database_url = cluster.database_url.clone();
    let mut flags: Vec<(String, String)> = vec![
        ("--jobs".into(), cluster.jobs_path.display().to_string()),
        ("--database-url".into(), database_url),
        ("--listen".into(), "127.0.0.1:0".into()),
        ("--election".into(), "start-checks".into()),
    ];
    match &cluster.zookeeper {
        Some(zookeeper) => flags.extend([
            ("--zookeeper".into(), zookeeper.connect_string()),
            ("--zookeeper-ca".into(), pki.ca.display().to_string()),
            ("--zookeeper-cert".into(), pki.client.cert.display().to_string()),
            ("--zookeeper-key".into(), pki.client.key.display().to_string()),
        ]),
        None => flags.extend([
            ("--etcd".into(), cluster.etcd.client_url()),
            ("--etcd-ca".into(), pki.ca.display().to_string()),
            ("--etcd-cert".into(), pki.client.cert.display().to_string()),
            ("--etcd-key".into(), pki.client.key.display().to_string()),
            ("--etcd-user".into(), ETCD_USER.into()),
            ("--etcd-password-file".into(), pki.dir.path().join("etcd-password").display().to_string()),
        ]),
    }
    for (flag, value) in overrides {
        match flags.iter_mut().find(|(f, _)| f == flag) {
            Some(entry) => entry.1 = (*value).to_owned(),
            None => flags.push(((*flag).to_owned(), (*value).to_owned())),
        }
    }
    flags.retain(|(_, value)| !value.is_empty());
    let mut command = Command::new(env!("CARGO_BIN_EXE_tenure"));
    command.arg("run").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    for (flag, value) in &flags {
        command.args([flag, value]);
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("tenure kept running with {overrides:?}:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success(), "tenure exited 0 with {overrides:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The last line of a failed start: `error: ...`, one line, containing every `expected` text.
fn assert_error_line(stderr: &str, expected: &[&str]) -> String {
    let line = stderr.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or_default();
    assert!(line.starts_with("error: "), "the last line is the error:\n{stderr}");
    let lower = line.to_ascii_lowercase();
    for text in expected {
        assert!(lower.contains(&text.to_ascii_lowercase()), "{text:?} not in the error line {line:?}\n{stderr}");
    }
    line.to_owned()
}

fn url_with(url: &str, parameter: &str, value: &Path) -> String {
    let prefix = format!("{parameter}=");
    let parts: Vec<String> = url
        .split(['?', '&'])
        .skip(1)
        .map(|pair| if pair.starts_with(&prefix) { format!("{prefix}{}", value.display()) } else { pair.to_owned() })
        .collect();
    format!("{}?{}", url.split('?').next().unwrap(), parts.join("&"))
}

/// What is wrong, the flags that make it so, and what the error line must name.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a [&'a str]);

#[tokio::test]
async fn a_wrong_ca_an_expired_certificate_or_a_wrong_password_fail_at_start_with_one_line() {
    let cluster = Cluster::start_secure(0, TICK, None).await;
    let pki = &cluster.secure.as_ref().unwrap().pki;
    let database_url = cluster.database_url.clone();
    let wrong_password = pki.file("wrong-password", "not-the-password");
    let other_ca = pki.other_ca.display().to_string();
    let expired_cert = pki.expired_client.cert.display().to_string();
    let expired_key = pki.expired_client.key.display().to_string();
    let cases: Vec<Case> = vec![
        ("etcd, wrong CA", vec![("--etcd-ca", other_ca.clone())], &["etcd", "certificate"]),
        (
            "etcd, expired client certificate",
            vec![("--etcd-cert", expired_cert.clone()), ("--etcd-key", expired_key.clone())],
            &["etcd"],
        ),
        (
            "etcd, wrong password",
            vec![("--etcd-password-file", wrong_password.display().to_string())],
            &["etcd", "authentication failed"],
        ),
        (
            "PostgreSQL, wrong CA",
            vec![("--database-url", url_with(&database_url, "sslrootcert", &pki.other_ca))],
            &["PostgreSQL", "certificate"],
        ),
        (
            "PostgreSQL, expired client certificate",
            vec![(
                "--database-url",
                url_with(
                    &url_with(&database_url, "sslcert", &pki.expired_client.cert),
                    "sslkey",
                    &pki.expired_client.key,
                ),
            )],
            &["PostgreSQL", "certificate"],
        ),
        (
            "PostgreSQL, wrong password",
            vec![("--database-url", database_url.replace(PG_PASSWORD, "not-the-password"))],
            &["PostgreSQL", "password authentication failed"],
        ),
    ];
    for (what, overrides, expected) in cases {
        let overrides: Vec<(&str, &str)> = overrides.iter().map(|(flag, value)| (*flag, value.as_str())).collect();
        let line = assert_error_line(&start_once(&cluster, &overrides), expected);
        eprintln!("{what}: {line}");
        assert!(!line.contains(PG_PASSWORD) && !line.contains(ETCD_PASSWORD), "{line}");
    }

    // A server presenting an expired certificate.
    let expired_pg = Postgres::start_secure(pki, &pki.expired_server).await;
    let expired_url = database_url.replace(&format!(":{}/", cluster.pg.port()), &format!(":{}/", expired_pg.port()));
    let line =
        assert_error_line(&start_once(&cluster, &[("--database-url", &expired_url)]), &["PostgreSQL", "expired"]);
    eprintln!("PostgreSQL, expired server certificate: {line}");
}

#[tokio::test]
async fn plaintext_connections_to_tls_only_servers_are_refused() {
    let cluster = Cluster::start_secure(0, TICK, None).await;
    let database_url = cluster.database_url.clone();
    let plain_db = format!("{}?sslmode=disable", database_url.split('?').next().unwrap());
    let line =
        assert_error_line(&start_once(&cluster, &[("--database-url", &plain_db)]), &["PostgreSQL", "no encryption"]);
    eprintln!("PostgreSQL, sslmode=disable: {line}");

    let plain_etcd = cluster.etcd.client_url().replace("https://", "http://");
    let stderr =
        start_once(&cluster, &[("--etcd", &plain_etcd), ("--etcd-ca", ""), ("--etcd-cert", ""), ("--etcd-key", "")]);
    let line = assert_error_line(&stderr, &["etcd", "closed the connection", "use https://"]);
    eprintln!("etcd over http://: {line}");
}

fn on_tls_zookeeper() -> Options {
    Options { coordinator: CoordinatorKind::ZooKeeper { servers: 1 }, ..Options::default() }
}

/// The base64 lines of a PEM private key: none may appear in any text a replica writes.
fn key_lines(key: &Path) -> Vec<String> {
    let pem = std::fs::read_to_string(key).unwrap();
    let lines: Vec<String> =
        pem.lines().filter(|line| !line.starts_with("-----") && line.len() > 16).map(str::to_owned).collect();
    assert!(!lines.is_empty(), "{} is a PEM key", key.display());
    lines
}

#[tokio::test]
async fn over_tls_with_a_client_certificate_a_replica_leads_and_fires_on_a_tls_only_zookeeper() {
    let mut cluster = Cluster::start_secure_with(3, TICK, on_tls_zookeeper()).await;
    let (leader, term) = cluster.wait_for_leader(Duration::from_secs(20)).await;
    cluster.let_it_tick(3).await;
    let leader_node = cluster.replicas[leader].node.clone();
    let witness = cluster.witness();
    assert!(witness.len() >= 3 && witness.iter().all(|w| w.term == term && w.node == leader_node), "{witness:?}");
    // Every replica's dashboard API names the leader, and ZooKeeper (read over TLS) holds a
    // candidate znode of each live replica and of no other.
    cluster.assert_healed(Duration::from_secs(20)).await;
    let follower = (leader + 1) % cluster.replicas.len();
    let page = reqwest::get(cluster.url(follower)).await.unwrap().text().await.unwrap();
    assert!(page.contains(&leader_node), "the follower's dashboard names the leader {leader_node}:\n{page}");

    let pki = &cluster.secure.as_ref().unwrap().pki;
    let secret_lines = key_lines(&pki.client.key);
    for replica in &cluster.replicas {
        let log = std::fs::read_to_string(&replica.log).unwrap();
        assert!(!log.contains("PRIVATE KEY"), "{} logged a key", replica.node);
        for line in &secret_lines {
            assert!(!log.contains(line.as_str()), "{} logged the client key", replica.node);
        }
    }
    let log = std::fs::read_to_string(&cluster.replicas[leader].log).unwrap();
    assert!(log.contains("became leader"), "the leader's log is read:\n{log}");

    // The failover over TLS: SIGKILL (the session expires, a follower wins), then SIGTERM (the
    // leader closes its session, the last replica takes over at once).
    let killed = Instant::now();
    cluster.kill(leader);
    let (kill_failover, killed_term) =
        new_term_in_fence(&cluster, term, killed, ZOOKEEPER_TTL * 4 + Duration::from_secs(5)).await;
    eprintln!(
        "ZooKeeper TLS SIGKILL failover: signal to new term in the fence {kill_failover:?} (session {ZOOKEEPER_TTL:?})"
    );
    let (new_leader, _) = cluster.wait_for_leader(Duration::from_secs(10)).await;
    cluster.let_it_tick(2).await;
    let signalled = Instant::now();
    cluster.signal(new_leader, Signal::SIGTERM);
    let (term_handover, _) = new_term_in_fence(&cluster, killed_term, signalled, Duration::from_secs(5)).await;
    eprintln!("ZooKeeper TLS SIGTERM hand-over: signal to new term in the fence {term_handover:?}");
    cluster.terminate(new_leader).await;
    cluster.let_it_tick(2).await;
    assert!(kill_failover < ZOOKEEPER_TTL * 2 + Duration::from_millis(1500), "SIGKILL failover took {kill_failover:?}");
    assert!(term_handover < Duration::from_secs(1), "SIGTERM hand-over took {term_handover:?}");
    let witness = cluster.witness();
    let from = witness.first().unwrap().slot;
    let until = witness.last().unwrap().slot;
    let report =
        check(&witness, &cluster.ledger().await, &Expect { jobs: &["tick"], from, until, missed_allowed: true });
    cluster.verdict(&report).await;
}

#[tokio::test]
async fn zookeeper_a_wrong_ca_an_expired_certificate_or_an_unreadable_file_fail_at_start_with_one_line() {
    let cluster = Cluster::start_secure_with(0, TICK, on_tls_zookeeper()).await;
    let pki = &cluster.secure.as_ref().unwrap().pki;
    let zookeeper = cluster.zookeeper.as_ref().unwrap();
    let plain_servers = zookeeper.connect_string().replace("tcp+tls://", "");
    let other_ca = pki.other_ca.display().to_string();
    let missing = pki.dir.path().join("no-such-file.pem").display().to_string();
    let cases: Vec<Case> = vec![
        ("ZooKeeper, wrong CA", vec![("--zookeeper-ca", other_ca)], &["ZooKeeper", "certificate"]),
        (
            "ZooKeeper, expired client certificate",
            vec![
                ("--zookeeper-cert", pki.expired_client.cert.display().to_string()),
                ("--zookeeper-key", pki.expired_client.key.display().to_string()),
            ],
            &["ZooKeeper", "TLS", "alert"],
        ),
        (
            "ZooKeeper, CA file missing",
            vec![("--zookeeper-ca", missing.clone())],
            &["ZooKeeper", "read ZooKeeper CA file", "no-such-file.pem"],
        ),
        (
            "ZooKeeper, key file missing",
            vec![("--zookeeper-key", missing)],
            &["ZooKeeper", "read ZooKeeper client key", "no-such-file.pem"],
        ),
        (
            "ZooKeeper, a key where the certificate belongs",
            vec![("--zookeeper-cert", pki.client.key.display().to_string())],
            &["ZooKeeper", "client certificate"],
        ),
        (
            "ZooKeeper, TLS files for plaintext servers",
            vec![("--zookeeper", plain_servers)],
            &["--zookeeper-ca", "need tcp+tls://"],
        ),
    ];
    let secret_lines = key_lines(&pki.client.key);
    for (what, overrides, expected) in cases {
        let overrides: Vec<(&str, &str)> = overrides.iter().map(|(flag, value)| (*flag, value.as_str())).collect();
        let stderr = start_once(&cluster, &overrides);
        let line = assert_error_line(&stderr, expected);
        eprintln!("{what}: {line}");
        assert!(!stderr.contains("PRIVATE KEY"), "{what}: {stderr}");
        for secret in &secret_lines {
            assert!(!stderr.contains(secret.as_str()), "{what}: the key leaked: {stderr}");
        }
    }
}

#[tokio::test]
async fn plaintext_connections_to_a_tls_only_zookeeper_are_refused() {
    let cluster = Cluster::start_secure_with(0, TICK, on_tls_zookeeper()).await;
    let zookeeper = cluster.zookeeper.as_ref().unwrap();
    let plain_servers = zookeeper.connect_string().replace("tcp+tls://", "");
    let stderr = start_once(
        &cluster,
        &[("--zookeeper", &plain_servers), ("--zookeeper-ca", ""), ("--zookeeper-cert", ""), ("--zookeeper-key", "")],
    );
    let line = assert_error_line(&stderr, &["ZooKeeper", "closed the connection", "tcp+tls://"]);
    eprintln!("ZooKeeper in plaintext: {line}");
    assert!(!stderr.contains("became leader"), "{stderr}");
}
