//! The client commands: their clap definitions (every flag also a `TENURE_*` variable) and
//! running them against a replica. Each prints a table (or, with `--output json`, the API's
//! JSON as one document) and returns the process's exit code; an error is one line on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use super::types::{Run, Trigger};
use super::{Answer, Client, ClientError, render};
use crate::model::RunStatus;
use crate::secret::Secret;

/// Exit codes of the client commands (also in `--help` and the README).
pub mod exit {
    /// The command did what it was asked; with `trigger --wait`, the run succeeded.
    pub const OK: i32 = 0;
    /// `trigger --wait`: the run ended otherwise (failed, timed_out, killed, lost, missed,
    /// skipped) or the leader dropped the trigger.
    pub const RUN_DID_NOT_SUCCEED: i32 = 1;
    /// A usage error, or no answer: the server unreachable, or its error (unknown job or run,
    /// wrong token, ...).
    pub const ERROR: i32 = 2;
    /// `trigger --wait`: the run had not ended within `--timeout` (it goes on).
    pub const WAIT_TIMED_OUT: i32 = 3;
}

const EXIT_CODES: &str = "Exit codes: 0 done (with --wait: the run succeeded); 1 the run failed, timed out, was \
killed, lost, missed or skipped; 2 usage error, server unreachable or an error answer (one line on stderr); 3 \
--timeout passed before the run ended (it goes on).";

const CANCEL_EXIT_CODES: &str = "Exit codes: 0 asked (with --wait: the run ended killed by the cancel); 1 with \
--wait, the run ended otherwise before the cancel reached it; 2 usage error, server unreachable or an error answer \
(no such run; 409 when the run has ended already); 3 --timeout passed before the run ended.";

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Show the cluster as a replica sees it: the leader and its term, the replicas, warnings.
    Status(ServerArgs),
    /// List the jobs: schedule, state (active or paused), next fire time, last run.
    Jobs(ServerArgs),
    /// List a job's runs, newest first.
    Runs(RunsArgs),
    /// Show one run, with its output tail.
    Show(ShowArgs),
    /// Run a job now (through the same fenced claim as a scheduled slot); with --wait, follow
    /// the run and exit with its outcome.
    #[command(after_help = EXIT_CODES)]
    Trigger(TriggerArgs),
    /// Cancel a running run: the leader stops it (here or on the replica executing it) and
    /// records it `killed` with who asked and why; with --wait, follow it until it has ended.
    #[command(after_help = CANCEL_EXIT_CODES)]
    Cancel(CancelArgs),
    /// Pause a job: its slots are not run until it is resumed (overrides the job file).
    Pause(JobArgs),
    /// Resume a paused job: the slots of its pause are not owed.
    Resume(JobArgs),
    /// Run every slot of a job's schedule in a past window that the ledger does not hold
    /// (through fenced claims, trigger `backfill`, obeying the job's concurrency), and follow
    /// the progress until it ends; --dry-run lists the slots instead. Repeating it runs nothing
    /// new.
    #[command(after_help = BACKFILL_EXIT_CODES)]
    Backfill(BackfillArgs),
    /// List the leaders' terms (fencing tokens), newest first, with hand-over times.
    Terms(ServerArgs),
    /// Create, list and revoke named API tokens (admins).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// The audit trail, newest first: who changed what, and every refused attempt (admins).
    Audit(AuditArgs),
    /// Store a token for --server in your config directory (mode 0600), for the other commands:
    /// pasted on stdin, or read from --token-file; with --sso, a session from signing in at the
    /// company's identity provider (device authorization: open the address it prints, enter the
    /// code). Checked with the server first.
    Login(LoginArgs),
    /// Who the server takes you for: name, role, teams.
    Whoami(ServerArgs),
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; its text is printed this once (tenure keeps only a salted hash).
    Create(TokenCreateArgs),
    /// List the tokens (never their secrets).
    List(ServerArgs),
    /// Revoke a token by id or name: refused by every replica from its next request.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Sign in at the identity provider the server names (OpenID Connect device authorization)
    /// instead of pasting a token.
    #[arg(long)]
    pub sso: bool,
    /// With --sso: give up waiting for the sign-in after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub timeout: Duration,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// A name for the person or script it is for (e.g. alice@example.com, deploy-bot): what the
    /// audit trail and a manual run's page show.
    pub name: String,
    /// viewer (read), operator (also trigger, cancel, pause, resume, backfill) or admin.
    #[arg(long, value_parser = ["viewer", "operator", "admin"])]
    pub role: String,
    /// Only the jobs of this team (repeatable); none: every team.
    #[arg(long = "team")]
    pub teams: Vec<String>,
    /// Expire after this long (e.g. 90d, 12h); default never.
    #[arg(long)]
    pub expires_in: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    /// The token's id (`tenure tokens list`) or name.
    pub token: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries by this principal (a token's name, `admin-token`, `anonymous`).
    #[arg(long)]
    pub who: Option<String>,
    /// Only entries about this job.
    #[arg(long)]
    pub job: Option<String>,
    /// Only this action (trigger, cancel, pause, resume, backfill, token-create, token-revoke, ...).
    #[arg(long)]
    pub action: Option<String>,
    /// Only `done` or only `refused` attempts.
    #[arg(long, value_parser = ["done", "refused"])]
    pub outcome: Option<String>,
    /// Entries at or after this instant (RFC 3339).
    #[arg(long)]
    pub since: Option<chrono::DateTime<Utc>>,
    /// Entries before this instant (RFC 3339).
    #[arg(long)]
    pub until: Option<chrono::DateTime<Utc>>,
    /// At most this many entries.
    #[arg(long, short = 'n', default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Where the API is and how to talk to it.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Base URL of any replica's dashboard and API (http:// or https://).
    #[arg(long, env = "TENURE_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// A file holding the token (a named one, or the admin token), needed by trigger, pause,
    /// resume and backfill (and by reads under --protect-reads). Without it: the TENURE_TOKEN
    /// variable, then TENURE_ADMIN_TOKEN, then the token `tenure login` stored for --server.
    #[arg(long, env = "TENURE_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of a CA to trust for https:// servers, besides the built-in roots.
    #[arg(long, env = "TENURE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// `table` for people, `json` (the API's JSON, one document) for scripts.
    #[arg(long, short = 'o', env = "TENURE_OUTPUT", value_enum, default_value = "table")]
    pub output: Output,
}

const BACKFILL_EXIT_CODES: &str = "Exit codes: 0 done (every slot's run ended, whatever its outcome; or the \
dry run listed them); 2 usage error, server unreachable or an error answer (one line on stderr); 3 --timeout passed \
before the backfill ended (it goes on).";

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The job's name.
    pub job: String,
    /// The window's first instant (RFC 3339, e.g. 2026-11-01T00:00:00Z); slots at it count.
    #[arg(long)]
    pub from: chrono::DateTime<Utc>,
    /// The window's last instant (RFC 3339, not in the future); slots at it count.
    #[arg(long)]
    pub to: chrono::DateTime<Utc>,
    /// List the slots a backfill would run, and record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Its runs release the runs of the jobs waiting for this one (`after:`), link after link:
    /// the whole chain for every slot of the window, each link at most once.
    #[arg(long)]
    pub cascade: bool,
    /// Give up following after this long (exit code 3; the backfill goes on).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub timeout: Duration,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job's name.
    pub job: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// The job's name.
    pub job: String,
    /// Only runs with this status.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<RunStatus>,
    /// At most this many runs.
    #[arg(long, short = 'n', default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The run's id (the ID column of `tenure runs`).
    pub run_id: i64,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run's id (the ID column of `tenure runs`).
    pub run_id: i64,
    /// Follow the run until it has ended, print it, and exit with how it ended (see the exit
    /// codes).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (exit code 3).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m", requires = "wait")]
    pub timeout: Duration,
    /// Why: recorded as the run's error ("cancelled by NAME (api): REASON").
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// The job's name.
    pub job: String,
    /// Follow the run until it ends, print it, and exit with its outcome (see the exit codes).
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up waiting after this long (exit code 3; the run goes on).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h", requires = "wait")]
    pub timeout: Duration,
    /// Set a variable for this run only, over the job's `env` (repeatable; never a TENURE_*
    /// name). Recorded with the run.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_assignment)]
    pub env: Vec<(String, String)>,
    /// Why: recorded with the run and shown on its page.
    #[arg(long)]
    pub reason: Option<String>,
    /// Run under this concurrency policy instead of the job's (recorded with the run).
    #[arg(long, value_parser = ["allow", "forbid", "replace"])]
    pub concurrency: Option<String>,
    /// The run releases the runs of the jobs waiting for this one (`after:`), as a scheduled
    /// run does; without it a manual run releases nothing.
    #[arg(long)]
    pub cascade: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

fn parse_assignment(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err("expected NAME=VALUE".to_owned()),
    }
}

impl TriggerArgs {
    /// The trigger's body: what this run alone gets.
    fn overrides(&self) -> Value {
        let env: serde_json::Map<String, Value> =
            self.env.iter().map(|(name, value)| (name.clone(), Value::from(value.clone()))).collect();
        let mut body = serde_json::json!({ "env": env });
        if let Some(reason) = &self.reason {
            body["reason"] = Value::from(reason.clone());
        }
        if let Some(concurrency) = &self.concurrency {
            body["concurrency"] = Value::from(concurrency.clone());
        }
        if self.cascade {
            body["cascade"] = Value::from(true);
        }
        body
    }
}

fn parse_status(text: &str) -> Result<RunStatus, String> {
    RunStatus::parse(text).ok_or_else(|| {
        let all: Vec<&str> = RunStatus::ALL.iter().map(|status| status.as_str()).collect();
        format!("expected one of {}", all.join(", "))
    })
}

impl ServerArgs {
    /// The token from `--token-file`, else from `TENURE_ADMIN_TOKEN`. Read here rather than
    /// through a `--token` flag: a flag's value shows in `ps`.
    fn token(&self) -> Result<Option<Secret>, ClientError> {
        if let Some(path) = &self.token_file {
            // The path, never the contents, goes into the error.
            let token = Secret::from_file(path).map_err(|error| ClientError::Setup(format!("{error:#}")))?;
            return Ok(Some(token));
        }
        for variable in ["TENURE_TOKEN", "TENURE_ADMIN_TOKEN"] {
            if let Some(token) = std::env::var(variable).ok().filter(|token| !token.is_empty()) {
                return Ok(Some(Secret::new(token)));
            }
        }
        // No credentials file (no home) is no token, not an error: reads may be open.
        let Ok(path) = super::login::credentials_path() else { return Ok(None) };
        super::login::stored_token(&path, &self.server).map_err(|error| ClientError::Setup(format!("{error:#}")))
    }

    fn client(&self) -> Result<Client, ClientError> {
        Client::new(&self.server, self.token()?, self.ca_file.as_deref())
    }
}

impl ClientCommand {
    fn server(&self) -> &ServerArgs {
        match self {
            ClientCommand::Status(server) | ClientCommand::Jobs(server) | ClientCommand::Terms(server) => server,
            ClientCommand::Runs(args) => &args.server,
            ClientCommand::Show(args) => &args.server,
            ClientCommand::Cancel(args) => &args.server,
            ClientCommand::Trigger(args) => &args.server,
            ClientCommand::Pause(args) | ClientCommand::Resume(args) => &args.server,
            ClientCommand::Backfill(args) => &args.server,
            ClientCommand::Tokens(TokensCommand::Create(args)) => &args.server,
            ClientCommand::Tokens(TokensCommand::List(server)) => server,
            ClientCommand::Tokens(TokensCommand::Revoke(args)) => &args.server,
            ClientCommand::Audit(args) => &args.server,
            ClientCommand::Login(LoginArgs { server, .. }) | ClientCommand::Whoami(server) => server,
        }
    }
}

/// Run a client command; the exit code (see `exit`). Errors are written to `err` as one line.
pub fn run(command: &ClientCommand, out: &mut impl Write, err: &mut impl Write) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(err, "error: start the async runtime: {error}");
            return exit::ERROR;
        }
    };
    let mut printed = Vec::new();
    let result = runtime.block_on(execute(command, &mut printed, err));
    let written = out.write_all(&printed).and_then(|()| out.flush());
    match (result, written) {
        (Ok(code), Ok(())) => code,
        (Err(error), _) => {
            let _ = writeln!(err, "error: {error}");
            exit::ERROR
        }
        (Ok(_), Err(error)) => {
            let _ = writeln!(err, "error: write the output: {error}");
            exit::ERROR
        }
    }
}

/// `progress`: where a followed backfill reports as it goes (stderr; stdout gets the end).
async fn execute(command: &ClientCommand, out: &mut Vec<u8>, progress: &mut impl Write) -> Result<i32, ClientError> {
    let server = command.server();
    if let ClientCommand::Login(args) = command {
        if args.sso {
            return login_sso(args, out).await;
        }
        return login(&args.server, out).await;
    }
    let client = server.client()?;
    let now = Utc::now();
    let print = |out: &mut Vec<u8>, document: &Value, table: String| {
        let text = match server.output {
            Output::Table => table,
            Output::Json => format!("{}\n", serde_json::to_string_pretty(document).expect("a JSON value prints")),
        };
        out.extend_from_slice(text.as_bytes());
    };
    match command {
        ClientCommand::Status(_) => {
            let answer = client.cluster().await?;
            print(out, &answer.document, render::cluster(&answer.value, now));
        }
        ClientCommand::Jobs(_) => {
            let answer = client.jobs().await?;
            print(out, &answer.document, render::jobs(&answer.value, now));
        }
        ClientCommand::Runs(args) => {
            let answer = client.job_runs(&args.job, args.status, args.limit as usize).await?;
            print(out, &answer.document, render::runs(&answer.value.runs));
        }
        ClientCommand::Show(args) => {
            let answer = client.run(args.run_id).await?;
            print(out, &answer.document, render::run(&answer.value));
        }
        ClientCommand::Trigger(args) => return trigger(&client, args, server.output, out).await,
        ClientCommand::Cancel(args) => return cancel(&client, args, server.output, out).await,
        ClientCommand::Backfill(args) if args.dry_run => {
            let answer = client.backfill_plan(&args.job, args.from, args.to).await?;
            print(out, &answer.document, render::backfill_plan(&answer.value));
        }
        ClientCommand::Backfill(args) => return backfill(&client, args, server.output, out, progress).await,
        ClientCommand::Pause(args) => {
            let answer = client.pause(&args.job).await?;
            print(out, &answer.document, render::paused(&answer.value));
        }
        ClientCommand::Resume(args) => {
            let answer = client.resume(&args.job).await?;
            print(out, &answer.document, render::paused(&answer.value));
        }
        ClientCommand::Terms(_) => {
            let answer = client.terms().await?;
            print(out, &answer.document, render::terms(&answer.value, now));
        }
        ClientCommand::Whoami(_) => {
            let answer = client.whoami().await?;
            print(out, &answer.document, render::principal(&answer.value));
        }
        ClientCommand::Tokens(TokensCommand::List(_)) => {
            let answer = client.tokens().await?;
            print(out, &answer.document, render::tokens(&answer.value));
        }
        ClientCommand::Tokens(TokensCommand::Create(args)) => {
            let mut body = serde_json::json!({ "name": args.name, "role": args.role, "teams": args.teams });
            if let Some(expires_in) = &args.expires_in {
                body["expires_in"] = Value::from(expires_in.clone());
            }
            let answer = client.create_token(&body).await?;
            let token = answer.value.get("token").and_then(Value::as_str).unwrap_or_default();
            let table = format!(
                "{}\n{token}\n(shown this once: tenure keeps only a salted hash; `tenure login` stores it for the CLI)\n",
                render::tokens(std::slice::from_ref(&answer.value)).trim_end()
            );
            print(out, &answer.document, table);
        }
        ClientCommand::Tokens(TokensCommand::Revoke(args)) => {
            let answer = client.revoke_token(&args.token).await?;
            print(out, &answer.document, render::tokens(std::slice::from_ref(&answer.value)));
        }
        ClientCommand::Audit(args) => {
            let mut entries = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut query: Vec<(&str, String)> = Vec::new();
                for (name, value) in
                    [("who", &args.who), ("job", &args.job), ("action", &args.action), ("outcome", &args.outcome)]
                {
                    if let Some(value) = value {
                        query.push((name, value.clone()));
                    }
                }
                if let Some(since) = args.since {
                    query.push(("since", since.to_rfc3339()));
                }
                if let Some(until) = args.until {
                    query.push(("until", until.to_rfc3339()));
                }
                query.push(("limit", (args.limit as usize - entries.len()).min(500).to_string()));
                if let Some(cursor) = &cursor {
                    query.push(("cursor", cursor.clone()));
                }
                let answer = client.audit(&query).await?;
                entries.extend(answer.document.get("entries").and_then(Value::as_array).cloned().unwrap_or_default());
                cursor = answer.document.get("next_cursor").and_then(Value::as_str).map(str::to_owned);
                if cursor.is_none() || entries.len() >= args.limit as usize {
                    break;
                }
            }
            let table = render::audit(&entries);
            print(out, &serde_json::json!({ "entries": entries, "next_cursor": cursor }), table);
        }
        ClientCommand::Login(_) => unreachable!("handled above"),
    }
    Ok(exit::OK)
}

/// `tenure login`: the token from --token-file, else one line of stdin; checked with the server
/// (`/api/whoami`), then stored for --server (mode 0600).
async fn login(server: &ServerArgs, out: &mut Vec<u8>) -> Result<i32, ClientError> {
    let token = match &server.token_file {
        Some(path) => Secret::from_file(path).map_err(|error| ClientError::Setup(format!("{error:#}")))?,
        None => {
            use std::io::IsTerminal;
            if std::io::stdin().is_terminal() {
                eprint!("paste a token for {} (tenure tokens create, or the dashboard's Tokens page): ", server.server);
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|error| ClientError::Setup(format!("read the token from stdin: {error}")))?;
            let line = line.trim();
            if line.is_empty() {
                return Err(ClientError::Setup("no token on stdin".to_owned()));
            }
            Secret::new(line.to_owned())
        }
    };
    let client = Client::new(&server.server, Some(token.clone()), server.ca_file.as_deref())?;
    let who = client.whoami().await?;
    if who.value.get("via").and_then(Value::as_str) == Some("anonymous") {
        return Err(ClientError::Setup("the server did not take the token".to_owned()));
    }
    let path = super::login::credentials_path().map_err(|error| ClientError::Setup(format!("{error:#}")))?;
    super::login::store_token(&path, &server.server, token.expose())
        .map_err(|error| ClientError::Setup(format!("{error:#}")))?;
    let text = format!(
        "signed in to {} as {}; token stored in {}\n",
        client.server(),
        render::principal(&who.value).trim_end(),
        path.display()
    );
    out.extend_from_slice(text.as_bytes());
    Ok(exit::OK)
}

/// `tenure login --sso`: the device authorization grant at the provider the server names, with
/// the CLI's public client; the ID token it yields is exchanged at the server for a session
/// token (`/api/auth/session`), stored as `login` stores a token. The address and the code to
/// enter go to stderr; no token is ever printed.
async fn login_sso(args: &LoginArgs, out: &mut Vec<u8>) -> Result<i32, ClientError> {
    use openidconnect::{AuthType, ClientId, Scope};
    let server = &args.server;
    let client = Client::new(&server.server, None, server.ca_file.as_deref())?;
    let settings = client.oidc_settings().await?.value;
    let provider = |what: &str, error: &dyn std::fmt::Display| ClientError::Setup(format!("{what}: {error}"));
    let http = crate::http::oidc_http_client().map_err(|error| provider("the identity provider", &error))?;
    let metadata = crate::http::discover_provider(&settings.issuer, &http)
        .await
        .map_err(|error| provider(&format!("discover {}", settings.issuer), &error))?;
    let device =
        metadata.additional_metadata().device_authorization_endpoint.clone().ok_or_else(|| {
            ClientError::Setup(format!("{} offers no device authorization endpoint", settings.issuer))
        })?;
    let oidc = crate::http::OidcClient::from_provider_metadata(metadata, ClientId::new(settings.client_id), None)
        .set_device_authorization_url(device)
        .set_auth_type(AuthType::RequestBody);
    let scopes = settings.scopes.iter().filter(|scope| *scope != "openid").map(|scope| Scope::new(scope.clone()));
    let details: openidconnect::core::CoreDeviceAuthorizationResponse = oidc
        .exchange_device_code()
        .add_scopes(scopes)
        .request_async(&http)
        .await
        .map_err(|error| provider("the device authorization request", &error))?;
    let open = details
        .verification_uri_complete()
        .map_or_else(|| details.verification_uri().to_string(), |complete| complete.secret().clone());
    eprintln!("open {open} and enter the code {} to sign in", details.user_code().secret());
    let tokens = oidc
        .exchange_device_access_token(&details)
        .map_err(|error| provider("the device token request", &error))?
        .request_async(&http, tokio::time::sleep, Some(args.timeout))
        .await
        .map_err(|error| provider("the sign-in at the identity provider", &error))?;
    let id_token = openidconnect::TokenResponse::id_token(&tokens)
        .ok_or_else(|| ClientError::Setup("the identity provider sent no ID token".to_owned()))?;
    let session = client.session(&id_token.to_string()).await?.value;
    let token = session.get("token").and_then(Value::as_str).unwrap_or_default();
    let principal = session.get("principal").cloned().unwrap_or(Value::Null);
    let path = super::login::credentials_path().map_err(|error| ClientError::Setup(format!("{error:#}")))?;
    super::login::store_token(&path, &server.server, token)
        .map_err(|error| ClientError::Setup(format!("{error:#}")))?;
    let text = format!(
        "signed in to {} as {} until {}; session stored in {}\n",
        client.server(),
        render::principal(&principal).trim_end(),
        session.get("expires_at").and_then(Value::as_str).unwrap_or("?"),
        path.display()
    );
    out.extend_from_slice(text.as_bytes());
    Ok(exit::OK)
}

/// `tenure trigger JOB [--wait]`. The key is this invocation's own, so every request of it (a
/// retry of a shed one, the polls of `--wait`) is the one trigger.
async fn trigger(client: &Client, args: &TriggerArgs, output: Output, out: &mut Vec<u8>) -> Result<i32, ClientError> {
    let key = idempotency_key()?;
    let overrides = args.overrides();
    let triggered = client.trigger(&args.job, &key, &overrides).await?;
    if !args.wait {
        let text = match output {
            Output::Table => render::trigger(&triggered.value),
            Output::Json => json_line(&triggered.document),
        };
        out.extend_from_slice(text.as_bytes());
        return Ok(exit::OK);
    }
    let (code, text) = match follow(client, &args.job, &key, &overrides, triggered, args.timeout).await? {
        Followed::Ended(run) => {
            let code = match run.value.brief.status {
                RunStatus::Succeeded => exit::OK,
                _ => exit::RUN_DID_NOT_SUCCEED,
            };
            let text = match output {
                Output::Table => render::run(&run.value),
                Output::Json => json_line(&run.document),
            };
            (code, text)
        }
        Followed::Dropped(trigger) => {
            let text = match output {
                Output::Table => render::trigger(&trigger.value),
                Output::Json => json_line(&trigger.document),
            };
            (exit::RUN_DID_NOT_SUCCEED, text)
        }
        Followed::StillGoing { job, run_id } => {
            let what = match run_id {
                Some(id) => format!("run {id} of {job} had not ended"),
                None => format!("the trigger of {job} had not been claimed by a leader"),
            };
            let timeout = humantime::format_duration(args.timeout);
            let text = format!("{what} after {timeout} (--timeout); it goes on\n");
            (exit::WAIT_TIMED_OUT, text)
        }
    };
    out.extend_from_slice(text.as_bytes());
    Ok(code)
}

/// `tenure cancel RUN_ID [--wait]`: ask, then (with --wait) poll the run until it has ended.
async fn cancel(client: &Client, args: &CancelArgs, output: Output, out: &mut Vec<u8>) -> Result<i32, ClientError> {
    let mut run = client.cancel(args.run_id, args.reason.as_deref()).await?;
    if !args.wait {
        let text = match output {
            Output::Table => {
                format!(
                    "asked to cancel run {} of {}: the leader stops it and records it killed\n",
                    args.run_id, run.value.job
                )
            }
            Output::Json => json_line(&run.document),
        };
        out.extend_from_slice(text.as_bytes());
        return Ok(exit::OK);
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut wait = FOLLOW_FIRST_WAIT;
    while run.value.brief.status == RunStatus::Running {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let timeout = humantime::format_duration(args.timeout);
            out.extend_from_slice(
                format!("run {} had not ended after {timeout} (--timeout)\n", args.run_id).as_bytes(),
            );
            return Ok(exit::WAIT_TIMED_OUT);
        }
        tokio::time::sleep(wait.min(deadline - now)).await;
        wait = (wait * 3 / 2).min(FOLLOW_LONGEST_WAIT);
        run = client.run(args.run_id).await?;
    }
    let code = match run.value.brief.status {
        RunStatus::Killed => exit::OK,
        _ => exit::RUN_DID_NOT_SUCCEED,
    };
    let text = match output {
        Output::Table => render::run(&run.value),
        Output::Json => json_line(&run.document),
    };
    out.extend_from_slice(text.as_bytes());
    Ok(code)
}

fn json_line(document: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(document).expect("a JSON value prints"))
}

/// How a followed trigger came out.
enum Followed {
    /// Boxed: a run (its output tail, a manual run's request) is far larger than the rest.
    Ended(Box<Answer<Run>>),
    /// Handled without a run: the leader's job file no longer has the job.
    Dropped(Answer<Trigger>),
    StillGoing {
        job: String,
        run_id: Option<i64>,
    },
}

/// The first wait between two looks at a followed run, and the longest.
const FOLLOW_FIRST_WAIT: Duration = Duration::from_millis(100);
const FOLLOW_LONGEST_WAIT: Duration = Duration::from_secs(1);

/// Follow a trigger until its run ends, or `timeout`. The API has no stream of a run's end, so
/// this polls: quickly at first (most manual runs are short), then at most once a second. The
/// run id comes from sending the trigger again under its key, which answers with its state.
async fn follow(
    client: &Client,
    job: &str,
    key: &str,
    overrides: &Value,
    mut trigger: Answer<Trigger>,
    timeout: Duration,
) -> Result<Followed, ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut wait = FOLLOW_FIRST_WAIT;
    loop {
        match (trigger.value.run_id, trigger.value.handled_at) {
            (Some(id), _) => {
                let run = client.run(id).await?;
                if run.value.brief.status != RunStatus::Running {
                    return Ok(Followed::Ended(Box::new(run)));
                }
            }
            (None, Some(_)) => return Ok(Followed::Dropped(trigger)),
            (None, None) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(Followed::StillGoing { job: job.to_owned(), run_id: trigger.value.run_id });
        }
        tokio::time::sleep(wait.min(deadline - now)).await;
        wait = (wait * 3 / 2).min(FOLLOW_LONGEST_WAIT);
        if trigger.value.run_id.is_none() {
            trigger = client.trigger(job, key, overrides).await?;
        }
    }
}

/// `tenure backfill JOB --from T1 --to T2`: record it, then report its progress on `progress`
/// each time it changes until every slot's run has ended (or `--timeout`), and print the end
/// (with `--output json`, the last answer as one document).
async fn backfill(
    client: &Client,
    args: &BackfillArgs,
    output: Output,
    out: &mut Vec<u8>,
    progress: &mut impl Write,
) -> Result<i32, ClientError> {
    let mut answer = client.backfill(&args.job, args.from, args.to, args.cascade).await?;
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut wait = FOLLOW_FIRST_WAIT;
    let mut shown = String::new();
    loop {
        let line = render::backfill(&answer.value);
        if answer.value.finished {
            let text = match output {
                Output::Table => line,
                Output::Json => json_line(&answer.document),
            };
            out.extend_from_slice(text.as_bytes());
            return Ok(exit::OK);
        }
        if line != shown {
            // Reported as it goes: a person watching sees the progress, not only its end.
            let _ = progress.write_all(line.as_bytes()).and_then(|()| progress.flush());
            shown = line;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let timeout = humantime::format_duration(args.timeout);
            let text = format!(
                "backfill {} of {} had not ended after {timeout} (--timeout); it goes on\n",
                answer.value.id, answer.value.job
            );
            out.extend_from_slice(text.as_bytes());
            return Ok(exit::WAIT_TIMED_OUT);
        }
        tokio::time::sleep(wait.min(deadline - now)).await;
        wait = (wait * 3 / 2).min(FOLLOW_LONGEST_WAIT);
        answer = client.backfill_progress(answer.value.id).await?;
    }
}

/// A fresh idempotency key, `cli-` and 128 random bits: unique across every client.
fn idempotency_key() -> Result<String, ClientError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .map_err(|error| ClientError::Setup(format!("read /dev/urandom: {error}")))?;
    Ok(format!("cli-{}", hex::encode(bytes)))
}
