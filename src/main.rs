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

fn main() -> ExitCode {
    // `tenure supervise` is started by the executor, not by people: parsed apart from the other
    // commands (it runs with an empty environment), and it logs nothing.
    if std::env::args_os().nth(1).is_some_and(|command| command == "supervise") {
        let args = tenure::cli::SuperviseArgs::parse_from(std::env::args_os().skip(1));
        let code = tenure::supervisor::supervise(args.silence_limit);
        return ExitCode::from(code as u8);
    }
    let cli = Cli::parse();
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

fn run(args: &tenure::cli::RunArgs) -> anyhow::Result<i32> {
    let settings = args.settings()?;
    // Install the Prometheus recorder before anything records.
    tenure::telemetry::metrics();
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        tenure::app::run(settings, listener, shutdown).await?;
        Ok(0)
    })
}

fn dev(args: &tenure::cli::DevArgs) -> anyhow::Result<i32> {
    let (settings, token) = args.settings()?;
    tenure::telemetry::metrics();
    // Check the job file first, so a broken one is reported before anything starts.
    let jobs = tenure::config::load(&settings.jobs_path).map_err(|errors| anyhow::anyhow!("{errors}"))?;
    // Before the port: a second dev in the same directory is told about the ledger, not the port.
    let lock = tenure::local::LedgerLock::acquire(&settings.ledger_path)?;
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        println!(
            "tenure dev: {} jobs from {}, ledger {}",
            jobs.jobs().len(),
            settings.jobs_path.display(),
            settings.ledger_path.display()
        );
        println!("  dashboard    http://{address}/");
        // A generated token is shown so it can be used; one the operator gave stays a secret.
        if args.admin_token.is_none() && args.admin_token_file.is_none() {
            println!("  admin token  {}   (trigger, pause, resume: any user name, this password)", token.expose());
        } else {
            println!("  admin token  the one given   (trigger, pause, resume: any user name, the token as password)");
        }
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
