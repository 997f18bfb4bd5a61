//! What a hostile job file costs a running replica: for each of the reload test's hostile files,
//! a fresh `tenure dev` (the release binary) on a good file, then the file replaced and SIGHUP
//! sent; prints the time until the rejection is logged, the replica's peak resident memory
//! (`VmHWM` of `/proc/PID/status`) before and after, and the bytes the rejection logged.
//! No assertions: figures. Run `cargo build --release && cargo run --release --example
//! hostile_job_file`.

#[path = "../tests/it/hostile.rs"]
mod hostile;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const GOOD: &str = "jobs:\n  - name: tick\n    schedule: \"* * * * * *\"\n    shell: 'true'\n";
const REJECTED: &str = "job file is invalid";

fn main() -> anyhow::Result<()> {
    let binary = tenure_binary()?;
    println!("job file size limit: {} bytes", tenure::config::MAX_FILE_BYTES);
    println!(
        "{:<44} {:>10} {:>12} {:>12} {:>12} {:>10}",
        "file", "size (MB)", "reject (ms)", "HWM (MiB)", "HWM+ (MiB)", "log (KB)"
    );
    for (name, bytes) in hostile::hostile_files(tenure::config::MAX_FILE_BYTES) {
        let dir = tempfile::tempdir()?;
        let jobs = dir.path().join("jobs.yaml");
        std::fs::write(&jobs, GOOD)?;
        let mut dev = Dev::start(&binary, dir.path(), &jobs)?;
        wait(Duration::from_secs(20), || dev.appended().contains("fence raised"))?;
        std::thread::sleep(Duration::from_millis(1_500));
        dev.appended();
        let before = vm_hwm_mib(dev.pid());
        std::fs::write(&jobs, &bytes)?;
        let started = Instant::now();
        kill(Pid::from_raw(dev.pid() as i32), Signal::SIGHUP)?;
        let mut logged = 0;
        wait(Duration::from_secs(300), || {
            let text = dev.appended();
            logged += text.len();
            text.contains(REJECTED)
        })?;
        let rejected = started.elapsed();
        // The rest of the rejection's log entry, and nothing else: the job's own lines excluded.
        std::thread::sleep(Duration::from_millis(300));
        logged +=
            dev.appended().lines().filter(|line| !line.contains("run finished")).map(|l| l.len() + 1).sum::<usize>();
        let after = vm_hwm_mib(dev.pid());
        println!(
            "{:<44} {:>10.1} {:>12.0} {:>12.0} {:>12.0} {:>10.1}",
            name,
            bytes.len() as f64 / 1e6,
            rejected.as_secs_f64() * 1000.0,
            after,
            after - before,
            logged as f64 / 1000.0
        );
        dev.stop();
    }
    Ok(())
}

fn tenure_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe.parent().and_then(|dir| dir.parent()).map(|dir| dir.join("tenure"));
    binary.filter(|path| path.exists()).ok_or_else(|| anyhow::anyhow!("build tenure first: `cargo build --release`"))
}

struct Dev {
    child: Child,
    log: PathBuf,
    /// How much of the log `appended` has returned.
    read: u64,
}

impl Dev {
    fn start(binary: &Path, dir: &Path, jobs: &Path) -> anyhow::Result<Dev> {
        let log = dir.join("tenure.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(binary)
            .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--jobs")
            .arg(jobs)
            .arg("--ledger")
            .arg(dir.join("ledger.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Dev { child, log, read: 0 })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the replica logged since the last call.
    fn appended(&mut self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut bytes = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.seek(SeekFrom::Start(self.read));
            let _ = file.read_to_end(&mut bytes);
        }
        self.read += bytes.len() as u64;
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait(timeout: Duration, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn vm_hwm_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
