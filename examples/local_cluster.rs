//! A real three-replica cluster on this machine, to watch a failover: a throwaway etcd and
//! PostgreSQL (the integration tests' launchers) and three `tenure run` processes on loopback.
//! Run it with `scripts/cluster [JOB FILE]`; then type `k` + Enter to SIGKILL the leader, `t` to
//! SIGTERM it, `s` to start stopped replicas again, `q` to quit (everything is cleaned up).

#[path = "../tests/it/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;

const ADMIN_TOKEN: &str = "local";

struct Node {
    name: String,
    port: u16,
    child: Option<Child>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs = std::env::args().nth(1).unwrap_or_else(|| "jobs.example.yaml".into());
    let jobs = std::fs::canonicalize(&jobs).map_err(|e| anyhow::anyhow!("job file {jobs}: {e}"))?;
    let binary = tenure_binary()?;
    println!("starting etcd and PostgreSQL on free loopback ports...");
    let etcd = harness::Etcd::start().await;
    let pg = harness::Postgres::start().await;
    let database = pg.create_database("tenure").await;
    let logs = tempfile::tempdir()?;

    let mut nodes: Vec<Node> =
        (0..3).map(|i| Node { name: format!("node-{i}"), port: port_near(8080 + i as u16), child: None }).collect();
    for node in &mut nodes {
        start(node, &binary, &jobs, &etcd.client_url(), &database, logs.path())?;
    }
    println!("\ntenure cluster: 3 replicas, etcd {}, PostgreSQL {database}", etcd.client_url());
    for node in &nodes {
        println!(
            "  {}  http://127.0.0.1:{}/   log {}",
            node.name,
            node.port,
            logs.path().join(format!("{}.log", node.name)).display()
        );
    }
    println!("  admin token `{ADMIN_TOKEN}` (any user name)");
    println!("\n  k + Enter  SIGKILL the leader (a follower takes over within the 3 s lease)");
    println!("  t + Enter  SIGTERM the leader (hands over at once)");
    println!("  s + Enter  start stopped replicas again");
    println!("  q + Enter  quit\n");

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut shown = None;
    let mut signalled: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let leader = leader(&nodes).await;
                if leader != shown {
                    match &leader {
                        Some((index, term)) => {
                            let after = signalled.take().map(|at| format!(", {:.0?} after the signal", at.elapsed()));
                            println!("leader: {} (term {term}{})", nodes[*index].name, after.unwrap_or_default());
                        }
                        None => println!("leader: none"),
                    }
                    shown = leader;
                }
            }
            line = lines.next_line() => {
                let command = match line? { Some(line) => line.trim().to_owned(), None => "q".to_owned() };
                match command.as_str() {
                    "k" | "t" => match leader(&nodes).await {
                        Some((index, _)) => {
                            let node = &mut nodes[index];
                            let signal = if command == "k" { Signal::SIGKILL } else { Signal::SIGTERM };
                            if let Some(child) = node.child.as_mut() {
                                kill(Pid::from_raw(child.id() as i32), signal)?;
                                signalled = Some(std::time::Instant::now());
                                println!("sent {signal:?} to {}", node.name);
                                let _ = child.wait();
                            }
                            node.child = None;
                        }
                        None => println!("no leader right now"),
                    },
                    "s" => {
                        for node in nodes.iter_mut().filter(|node| node.child.is_none()) {
                            start(node, &binary, &jobs, &etcd.client_url(), &database, logs.path())?;
                            println!("started {}", node.name);
                        }
                    }
                    "q" => break,
                    "" => {}
                    other => println!("unknown command `{other}`: k, t, s or q"),
                }
            }
        }
    }
    for node in &mut nodes {
        if let Some(mut child) = node.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }
    println!("stopped; etcd and PostgreSQL are removed with their temporary directories");
    Ok(())
}

/// `tenure` next to this example's build directory (`target/<profile>/tenure`).
fn tenure_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe.parent().and_then(|dir| dir.parent()).map(|dir| dir.join("tenure"));
    binary.filter(|path| path.exists()).ok_or_else(|| anyhow::anyhow!("build tenure first: `cargo build`"))
}

/// `preferred` when nobody listens there, else any free port.
fn port_near(preferred: u16) -> u16 {
    match std::net::TcpListener::bind(("127.0.0.1", preferred)) {
        Ok(_) => preferred,
        Err(_) => harness::free_port(),
    }
}

fn start(
    node: &mut Node,
    binary: &std::path::Path,
    jobs: &std::path::Path,
    etcd: &str,
    database: &str,
    logs: &std::path::Path,
) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(logs.join(format!("{}.log", node.name)))?;
    let child = Command::new(binary)
        .args(["run", "--lease-ttl", "3s", "--shutdown-grace", "5s", "--admin-token", ADMIN_TOKEN, "--jobs"])
        .arg(jobs)
        .args(["--etcd", etcd, "--database-url", database, "--node-id", &node.name])
        .args(["--listen", &format!("127.0.0.1:{}", node.port)])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    node.child = Some(child);
    Ok(())
}

async fn leader(nodes: &[Node]) -> Option<(usize, i64)> {
    let client = reqwest::Client::builder().timeout(Duration::from_millis(250)).build().ok()?;
    for (index, node) in nodes.iter().enumerate() {
        if node.child.is_none() {
            continue;
        }
        let url = format!("http://127.0.0.1:{}/readyz", node.port);
        let Ok(response) = client.get(url).send().await else { continue };
        let Ok(ready) = response.json::<serde_json::Value>().await else { continue };
        if ready["role"] == "leader" {
            return ready["term"].as_i64().map(|term| (index, term));
        }
    }
    None
}
