//! The `tenure` binary: parse the command line, start logging, run the command, exit.

use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use clap::Parser;
use tenure::cli::{Cli, Command};
use tokio_util::sync::CancellationToken;

/// Many small allocations from many threads at once (a burst of runs starting together):
/// mimalloc takes them with less contention than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same number in its v2 and v3 `mimalloc.h`; the Rust
/// bindings do not name it): how long memory freed stays committed before it goes back to the OS.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// How long memory freed stays with tenure: longer than the usual gap between bursts (a minute, for
/// `* * * * *` jobs), so that a burst finds the pages the last one used instead of faulting in and
/// zeroing fresh ones at its slot. mimalloc's default, one second, returned a per-second burst's
/// pages just before the next one needed them (about 470 page faults at each slot for 1,000 HTTP
/// runs). Memory a burst used goes back two minutes after the last burst that needed it.
const PURGE_DELAY_MS: std::ffi::c_long = 120_000;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Keep the memory of a burst of runs for the next one (see `PURGE_DELAY_MS`).
fn keep_burst_memory() {
    // SAFETY: sets one integer option; mimalloc reads it on its next purge.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

/// No transparent huge pages for this process (`PR_SET_THP_DISABLE`, what mimalloc does itself
/// when told `MIMALLOC_ALLOW_THP=0`). mimalloc marks its arena `MADV_HUGEPAGE`, and the kernel's
/// khugepaged then turns every 2 MiB of it that holds a single resident page into a whole huge
/// page, so resident memory crept up by 2 MiB steps while what tenure held stayed flat. The
/// supervisor clears the flag again at its start (`allow_huge_pages`): its jobs get the
/// machine's setting, not tenure's (its own allocator is started with `MIMALLOC_ALLOW_THP=0`).
fn no_huge_pages() {
    if let Err(error) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("warning: could not disable transparent huge pages (prctl PR_SET_THP_DISABLE): {error}");
    }
}

/// The supervisor's side of `no_huge_pages`: the replica's flag is inherited across exec, so the
/// supervisor clears it for the jobs it starts (`posix_spawn` has no place to do it per job).
fn allow_huge_pages() {
    let _ = nix::sys::prctl::set_thp_disable(false);
}

fn main() -> ExitCode {
    // First of all, before a secret is read: no other process of this user (a job) may read this
    // one's environment, files or memory through /proc (see `hardening`).
    if let Err(error) = tenure::hardening::forbid_inspection() {
        eprintln!("error: could not make tenure unreadable to other processes (prctl PR_SET_DUMPABLE): {error}");
        return ExitCode::FAILURE;
    }
    // Before anything scrubs the environment: a job file's `{ env: NAME }` reads this copy.
    tenure::secret::keep_environment();
    keep_burst_memory();
    // `tenure supervise` is started by the executor, not by people: parsed apart from the other
    // commands (it runs with an empty environment), and it logs nothing.
    if std::env::args_os().nth(1).is_some_and(|command| command == "supervise") {
        allow_huge_pages();
        let args = tenure::cli::SuperviseArgs::parse_from(std::env::args_os().skip(1));
        let code = tenure::supervisor::supervise(args.silence_limit);
        return ExitCode::from(code as u8);
    }
    no_huge_pages();
    let cli = Cli::parse();
    // A replica's secrets, now read, leave the command line and the environment /proc shows of
    // it (`cmdline` stays readable to every process). Still one thread: the environment may change.
    if matches!(cli.command, Command::Run(_) | Command::Dev(_)) {
        let (flags, variables) = tenure::cli::secret_arguments();
        if let Err(error) = tenure::hardening::scrub_secrets(&flags, &variables) {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    tenure::telemetry::init_logging(cli.log_format);
    let result = match &cli.command {
        Command::Validate(args) => {
            tenure::cli::validate(args, Utc::now(), &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Next(args) => tenure::cli::next(args, Utc::now(), &mut std::io::stdout(), &mut std::io::stderr()),
        Command::Run(args) => run(args),
        Command::Dev(args) => dev(args),
        Command::Schema => {
            print!("{}", tenure::config::job_file_schema());
            Ok(0)
        }
        Command::Completions { shell } => {
            tenure::cli::completions(*shell, &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => tenure::cli::man_page(&mut std::io::stdout()).map(|()| 0).map_err(Into::into),
        Command::Client(command) => {
            Ok(tenure::client::commands::run(command, &mut std::io::stdout(), &mut std::io::stderr()))
        }
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raise the soft open-files limit to the hard one: the runs and the dashboard's connections
/// share it (`tenure::fds`); the processes tenure starts get the old soft limit back.
fn raise_open_files_limit() {
    match tenure::fds::raise_soft_limit() {
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-files limit"),
    }
}

/// The replica's async runtime: a worker per core, each collecting its own heap as it goes idle
/// (`tenure::memory`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    tenure::memory::collect_when_idle(builder.enable_all()).build().context("start the async runtime")
}

fn run(args: &tenure::cli::RunArgs) -> anyhow::Result<i32> {
    let settings = args.settings()?;
    raise_open_files_limit();
    // Install the Prometheus recorder before anything records.
    tenure::telemetry::metrics();
    let runtime = runtime()?;
    runtime.block_on(async {
        let listener = tenure::http::bind(&args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        tenure::app::run(settings, listener, shutdown).await?;
        Ok(0)
    })
}

fn dev(args: &tenure::cli::DevArgs) -> anyhow::Result<i32> {
    let (settings, token) = args.settings()?;
    raise_open_files_limit();
    tenure::telemetry::metrics();
    // Check the job file first, so a broken one is reported before anything starts.
    let jobs = tenure::config::load(&settings.jobs_path)
        .map_err(|errors| anyhow::anyhow!("{}", errors.summary(tenure::config::LOGGED_ERRORS)))?;
    // Before the port: a second dev in the same directory is told about the ledger, not the port.
    let lock = tenure::local::LedgerLock::acquire(&settings.ledger_path)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        let listener = tenure::http::bind(&args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        println!(
            "tenure dev: {} jobs from {}, ledger {}",
            jobs.jobs().len(),
            settings.jobs_path.display(),
            settings.ledger_path.display()
        );
        let scheme = if settings.tls.is_some() { "https" } else { "http" };
        println!("  dashboard    {scheme}://{address}/");
        // A generated token is shown so it can be used; one the operator gave stays a secret.
        let generated = args.admin_token.is_none() && args.admin_token_file.is_none();
        match &token {
            Some(token) if generated => {
                println!("  admin token  {}   (trigger, pause, resume: any user name, this password)", token.expose());
            }
            Some(_) => {
                println!(
                    "  admin token  the one given   (trigger, pause, resume: any user name, the token as password)"
                );
            }
            None => println!("  admin token  off (--no-admin-token): named tokens only"),
        }
        let shown_token = match &token {
            Some(token) if generated => token.expose(),
            Some(_) => "<the token given>",
            None => "<a named token>",
        };
        println!("  command line export TENURE_SERVER={scheme}://{address} TENURE_ADMIN_TOKEN={shown_token}");
        println!("               tenure status");
        println!("  ctrl-c stops; edit the job file and it reloads");
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        tenure::app::dev(settings, lock, listener, shutdown).await?;
        Ok(0)
    })
}

/// SIGTERM and ctrl-c both start the one shutdown: stop firing, resign, drain.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: handing over"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: handing over"),
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far.
    fn minor_faults() -> i64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) }, 0);
        // SAFETY: filled above.
        unsafe { usage.assume_init() }.ru_minflt
    }

    /// A burst's allocations: many small blocks, each written to, all freed at the end.
    fn burst() {
        let blocks: Vec<Vec<u8>> = (0..4_000).map(|i| vec![i as u8; 4_000]).collect();
        std::hint::black_box(&blocks);
    }

    #[test]
    fn a_burst_a_second_after_the_last_finds_its_memory_still_there() {
        keep_burst_memory();
        burst();
        // The next burst comes a second and a half later (past mimalloc's default purge delay);
        // small allocations meanwhile give the allocator its chances to purge.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(1_500);
        while std::time::Instant::now() < until {
            std::hint::black_box(vec![0u8; 64]);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let before = minor_faults();
        burst();
        let faults = minor_faults() - before;
        // 16 MB written: about 3,900 pages if they had gone back to the OS.
        assert!(faults < 100, "{faults} page faults in a burst that reused memory");
    }
}
