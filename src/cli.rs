//! The command line: clap definitions (every flag also a `TENURE_*` variable) and the commands
//! that print and exit (`validate`, `next`). `run` is handed to `app`; the client commands
//! (`status`, `jobs`, `trigger`, ...) are defined and run by `client::commands`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::app::{DevSettings, RunSettings};
use crate::config;
use crate::deadman::{DeadManSettings, PingMethod};
use crate::election::{CoordinatorAccess, EtcdAccess, ZooKeeperAccess, ZooKeeperTls};
use crate::http::tls::ListenerTls;
use crate::http::{Auth, ReadAccess, Served};
use crate::schedule::{self, Schedule};
use crate::secret::Secret;
use crate::telemetry::LogFormat;

/// The flags (`--admin-token`) and variables (`TENURE_ADMIN_TOKEN`) that carry secrets: those
/// whose values the command line hides (`hide_env_values`), in every command. `main` scrubs them
/// from the replica's /proc once read (see `hardening`).
pub fn secret_arguments() -> (Vec<String>, Vec<String>) {
    fn walk(command: &clap::Command, flags: &mut Vec<String>, variables: &mut Vec<String>) {
        for arg in command.get_arguments().filter(|arg| arg.is_hide_env_values_set()) {
            for long in arg.get_long().into_iter().chain(arg.get_all_aliases().unwrap_or_default()) {
                flags.push(format!("--{long}"));
            }
            variables.extend(arg.get_env().map(|name| name.to_string_lossy().into_owned()));
        }
        for command in command.get_subcommands() {
            walk(command, flags, variables);
        }
    }
    let (mut flags, mut variables) = (Vec::new(), Vec::new());
    walk(&Cli::command(), &mut flags, &mut variables);
    // Read by no flag (`OidcArgs::oidc_client_secret`), scrubbed all the same.
    variables.push(OIDC_CLIENT_SECRET_VARIABLE.to_owned());
    for list in [&mut flags, &mut variables] {
        list.sort();
        list.dedup();
    }
    (flags, variables)
}

#[derive(Debug, Parser)]
#[command(
    name = "tenure",
    version,
    about = "A distributed cron scheduler that fires every job exactly once per slot",
    after_help = "The client commands (status, jobs, runs, show, trigger, pause, resume, backfill, terms, tokens, \
                  audit, login, whoami) talk to --server (TENURE_SERVER) and exit 0 when done, 2 on an error (one line \
                  on stderr); `tenure trigger --help` has the codes of --wait."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log line format.
    #[arg(long, global = true, env = "TENURE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a job file; print one line per job, or every error with its location.
    Validate(ValidateArgs),
    /// Print the next fire times of an expression or of a job in a job file.
    Next(NextArgs),
    /// Run one replica of a cluster (etcd or ZooKeeper for leadership, PostgreSQL for the run
    /// ledger).
    Run(Box<RunArgs>),
    /// Try tenure on this machine alone: one replica, an embedded SQLite ledger, the dashboard.
    Dev(DevArgs),
    /// Print the JSON Schema of the job file, for editors.
    Schema,
    /// Print a completion script for a shell: `tenure completions bash > /etc/bash_completion.d/tenure`,
    /// `tenure completions zsh > "${fpath[1]}/_tenure"`, `tenure completions fish > ~/.config/fish/completions/tenure.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print tenure's man page (roff): `tenure man > /usr/local/share/man/man1/tenure.1`.
    Man,
    /// The client commands (status, jobs, runs, show, trigger, pause, resume, terms): a
    /// replica's API over HTTP(S).
    #[command(flatten)]
    Client(crate::client::commands::ClientCommand),
}

/// `tenure supervise`, hidden: each replica starts one, which starts its command and shell runs
/// and kills their process groups if the replica dies or freezes (see `supervisor`). Not in `Command`, so
/// `--help` does not list it; `main` dispatches it before parsing anything else.
#[derive(Debug, Parser)]
#[command(name = "supervise")]
pub struct SuperviseArgs {
    /// Kill every job's process group when the replica sends nothing for this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub silence_limit: Duration,
}

/// Write the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "tenure", out);
}

/// Write the man page (roff) of `tenure`, its commands listed, to `out`.
pub fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(out)
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The job file.
    #[arg(env = "TENURE_JOBS")]
    pub file: PathBuf,
    /// Also check every `starting_deadline` against this ledger retention, as `run` and `dev` do.
    #[arg(long, env = "TENURE_RETAIN", value_parser = humantime::parse_duration)]
    pub retain: Option<Duration>,
    /// Treat warnings (a step that does not divide its field, such as `*/45` in minutes) as
    /// errors: exit 1. Without it they are printed and the file is valid.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct NextArgs {
    /// A schedule expression: 5-field crontab, 6 fields with seconds first, @daily, "@every 30s".
    #[arg(required_unless_present = "jobs", conflicts_with_all = ["jobs", "job"])]
    pub expression: Option<String>,
    /// IANA time zone of the expression.
    #[arg(long, env = "TENURE_TZ", default_value = "UTC")]
    pub tz: String,
    /// Job file to take the schedule from (with --job).
    #[arg(long, env = "TENURE_JOBS", requires = "job")]
    pub jobs: Option<PathBuf>,
    /// Name of the job in --jobs.
    #[arg(long, env = "TENURE_JOB", requires = "jobs")]
    pub job: Option<String>,
    /// Print fire times strictly after this instant (RFC 3339); default now.
    #[arg(long, env = "TENURE_FROM")]
    pub from: Option<DateTime<chrono::FixedOffset>>,
    /// How many fire times to print.
    #[arg(short = 'n', long = "count", env = "TENURE_COUNT", default_value_t = 5)]
    pub count: usize,
    /// First print the schedule in words, as the dashboard and the API describe it.
    #[arg(long)]
    pub describe: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job file; reloaded when it changes and on SIGHUP.
    #[arg(long, env = "TENURE_JOBS")]
    pub jobs: PathBuf,
    /// etcd endpoints, comma-separated (or --zookeeper).
    #[arg(long, env = "TENURE_ETCD", value_delimiter = ',', required_unless_present = "zookeeper")]
    pub etcd: Vec<String>,
    /// ZooKeeper servers, comma-separated `host:port` (a chroot path may end the list), instead
    /// of etcd; the session timeout is the lease TTL. `tcp+tls://host:port` for TLS (every
    /// server or none).
    #[arg(long, env = "TENURE_ZOOKEEPER", value_delimiter = ',', conflicts_with = "etcd")]
    pub zookeeper: Vec<String>,
    /// PostgreSQL URL of the run ledger; TLS as libpq reads it (`sslmode=verify-full`,
    /// `sslrootcert`, `sslcert`, `sslkey`).
    #[arg(long, env = "TENURE_DATABASE_URL", hide_env_values = true, required_unless_present = "database_url_file")]
    pub database_url: Option<Secret>,
    /// A file holding the PostgreSQL URL (a mounted secret), instead of --database-url.
    #[arg(long, env = "TENURE_DATABASE_URL_FILE", conflicts_with = "database_url")]
    pub database_url_file: Option<PathBuf>,
    #[command(flatten)]
    pub etcd_access: EtcdArgs,
    #[command(flatten)]
    pub zookeeper_access: ZooKeeperArgs,
    /// This replica's id; default host name and pid.
    #[arg(long, env = "TENURE_NODE_ID")]
    pub node_id: Option<String>,
    /// Address of the health, metrics and dashboard server.
    #[arg(long, env = "TENURE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Lease TTL (etcd) or session timeout (ZooKeeper): a crashed leader is replaced within
    /// about this long.
    #[arg(long, env = "TENURE_LEASE_TTL", value_parser = humantime::parse_duration, default_value = "10s")]
    pub lease_ttl: Duration,
    /// Election name; replicas with the same coordinator, database and election form one cluster.
    #[arg(long, env = "TENURE_ELECTION", default_value = "default")]
    pub election: String,
    /// On SIGTERM, how long in-flight runs may finish before they are killed.
    #[arg(long, env = "TENURE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = "30s")]
    pub shutdown_grace: Duration,
    /// Keep ledger rows this long; older finished rows are pruned in small batches by the leader.
    #[arg(long, env = "TENURE_RETAIN", value_parser = humantime::parse_duration, default_value = "30d")]
    pub retain: Duration,
    /// This replica's tags, comma-separated: jobs with `run_on: { tags: [..] }` execute only on a
    /// replica that has all of theirs.
    #[arg(long, env = "TENURE_TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// How many runs of `run_on: any` or `{ tags: [..] }` jobs this replica executes at once.
    #[arg(long, env = "TENURE_MAX_RUNS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_runs: u32,
    #[command(flatten)]
    pub web: WebArgs,
    #[command(flatten)]
    pub listener: ListenerArgs,
    #[command(flatten)]
    pub dead_man: DeadManArgs,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// The job file; reloaded when it changes and on SIGHUP.
    #[arg(long, env = "TENURE_JOBS", default_value = "jobs.example.yaml")]
    pub jobs: PathBuf,
    /// The SQLite ledger file, created if missing; keeps the run history across restarts. One
    /// `tenure dev` at a time per ledger (it holds a lock on `<ledger>.lock`).
    #[arg(long, env = "TENURE_LEDGER", default_value = ".tenure/ledger.db")]
    pub ledger: PathBuf,
    /// Address of the dashboard, API, health and metrics.
    #[arg(long, env = "TENURE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// On ctrl-c, how long in-flight runs may finish before they are killed.
    #[arg(long, env = "TENURE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = "10s")]
    pub shutdown_grace: Duration,
    /// Keep ledger rows this long.
    #[arg(long, env = "TENURE_RETAIN", value_parser = humantime::parse_duration, default_value = "7d")]
    pub retain: Duration,
    /// The break-glass admin token (default: a random one, printed at start).
    #[arg(long, env = "TENURE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// A file holding the admin token (a mounted secret), instead of --admin-token.
    #[arg(long, env = "TENURE_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// No admin token at all: only named tokens (`tenure tokens create`) sign in.
    #[arg(long, env = "TENURE_NO_ADMIN_TOKEN", conflicts_with_all = ["admin_token", "admin_token_file"])]
    pub no_admin_token: bool,
    /// Keep audit entries this long.
    #[arg(long, env = "TENURE_AUDIT_RETAIN", value_parser = humantime::parse_duration, default_value = "400d")]
    pub audit_retain: Duration,
    #[command(flatten)]
    pub oidc: Box<OidcArgs>,
    #[command(flatten)]
    pub listener: ListenerArgs,
    #[command(flatten)]
    pub dead_man: DeadManArgs,
}

/// How `--listen` is reached: HTTPS on it, or a proxy in front of it.
#[derive(Debug, Args)]
pub struct ListenerArgs {
    /// PEM file of the certificate (chain) to serve HTTPS with on --listen (with --tls-key);
    /// read again when it changes and on SIGHUP.
    #[arg(long, env = "TENURE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key (with --tls-cert).
    #[arg(long, env = "TENURE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where browsers reach tenure when a proxy serves it, e.g. `https://cron.example.com/`:
    /// only then are the proxy's `Forwarded` and `X-Forwarded-Host`/`-Proto` headers believed.
    #[arg(long, env = "TENURE_PUBLIC_URL")]
    pub public_url: Option<crate::http::PublicUrl>,
}

impl ListenerArgs {
    /// The certificate and key, read now: a file that cannot be served stops the start.
    fn tls(&self) -> anyhow::Result<Option<ListenerTls>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(ListenerTls::load(cert, key)?)),
            (None, None) => Ok(None),
            _ => anyhow::bail!("give both --tls-cert and --tls-key, or neither"),
        }
    }

    fn served(&self) -> Served {
        Served { tls: self.tls_cert.is_some(), public_url: self.public_url.clone() }
    }
}

/// The dead-man ping: an outside monitor that alerts when the cluster stops leading.
#[derive(Debug, Args)]
pub struct DeadManArgs {
    /// While this replica leads, request this URL every --heartbeat-interval (a plain GET by
    /// default), e.g. a Healthchecks.io or Cronitor check: when no replica leads, or the leader's
    /// firing loop is stuck, the pings stop and the monitor alerts. Only the leader pings. The URL
    /// may hold a token: logs show its host only.
    #[arg(long, env = "TENURE_HEARTBEAT_URL", hide_env_values = true)]
    pub heartbeat_url: Option<Secret>,
    /// How often the leader pings --heartbeat-url (also each ping's timeout, at most 10s).
    #[arg(long, env = "TENURE_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration, default_value = "1m")]
    pub heartbeat_interval: Duration,
    /// The pings' HTTP method (an empty POST for monitors that want one).
    #[arg(long, env = "TENURE_HEARTBEAT_METHOD", value_enum, default_value = "get")]
    pub heartbeat_method: PingMethod,
}

impl DeadManArgs {
    fn settings(&self) -> anyhow::Result<Option<DeadManSettings>> {
        let Some(url) = &self.heartbeat_url else { return Ok(None) };
        Ok(Some(DeadManSettings::new(url.clone(), self.heartbeat_interval, self.heartbeat_method)?))
    }
}

impl DevArgs {
    /// The settings, and the admin token in effect (generated when none was given; none with
    /// `--no-admin-token`).
    pub fn settings(&self) -> anyhow::Result<(DevSettings, Option<Secret>)> {
        let token = match Secret::inline_or_file(self.admin_token.as_ref(), self.admin_token_file.as_deref())? {
            _ if self.no_admin_token => None,
            Some(token) => Some(token),
            None => {
                let mut bytes = [0u8; 12];
                use std::io::Read;
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut bytes))
                    .context("read /dev/urandom")?;
                Some(Secret::new(hex::encode(bytes)))
            }
        };
        let host = hostname::get().context("read host name")?.to_string_lossy().into_owned();
        let settings = DevSettings {
            jobs_path: self.jobs.clone(),
            ledger_path: self.ledger.clone(),
            // One id per process, as for `tenure run`: the ledger tells leaders apart by node, so
            // two processes on one ledger (kept apart by its lock) could never pass as one.
            node_id: format!("{host}-dev-{}", std::process::id()),
            shutdown_grace: self.shutdown_grace,
            retain: self.retain,
            tls: self.listener.tls()?,
            auth: self.oidc.apply(
                Auth::new(token.as_ref().map(Secret::expose), ReadAccess::Open)
                    .served(self.listener.served())
                    .with_audit_retain(self.audit_retain),
                &self.listener,
            )?,
            dead_man: self.dead_man.settings()?,
        };
        Ok((settings, token))
    }
}

/// How to reach etcd: TLS and user/password authentication.
#[derive(Debug, Args)]
pub struct EtcdArgs {
    /// PEM file of the CA that signs etcd's server certificate (https:// endpoints; default the
    /// system's CA bundle).
    #[arg(long, env = "TENURE_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM file of this replica's client certificate, for etcd's --client-cert-auth.
    #[arg(long, env = "TENURE_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long, env = "TENURE_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user name, when etcd has authentication enabled.
    #[arg(long, env = "TENURE_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// The etcd user's password (prefer --etcd-password-file or the variable: flags show in ps).
    #[arg(long, env = "TENURE_ETCD_PASSWORD", hide_env_values = true, requires = "etcd_user")]
    pub etcd_password: Option<Secret>,
    /// A file holding the etcd user's password (a mounted secret).
    #[arg(long, env = "TENURE_ETCD_PASSWORD_FILE", conflicts_with = "etcd_password", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// Whether any of these was given (they mean nothing without etcd).
    fn is_given(&self) -> bool {
        self.etcd_ca.is_some() || self.etcd_cert.is_some() || self.etcd_user.is_some()
    }

    fn access(&self, endpoints: &[String]) -> anyhow::Result<EtcdAccess> {
        let password = Secret::inline_or_file(self.etcd_password.as_ref(), self.etcd_password_file.as_deref())?;
        let user = match (&self.etcd_user, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (Some(_), None) => anyhow::bail!("--etcd-user needs --etcd-password-file or TENURE_ETCD_PASSWORD"),
            (None, _) => None,
        };
        Ok(EtcdAccess {
            endpoints: endpoints.to_vec(),
            ca: self.etcd_ca.clone(),
            identity: self.etcd_cert.clone().zip(self.etcd_key.clone()),
            user,
        })
    }
}

/// How to reach ZooKeeper over TLS (`tcp+tls://` servers).
#[derive(Debug, Args)]
pub struct ZooKeeperArgs {
    /// PEM file of the CA that signs ZooKeeper's server certificates (tcp+tls:// servers;
    /// default the system's CA bundle).
    #[arg(long, env = "TENURE_ZOOKEEPER_CA")]
    pub zookeeper_ca: Option<PathBuf>,
    /// PEM file of this replica's client certificate, for ZooKeeper's ssl.clientAuth=need.
    #[arg(long, env = "TENURE_ZOOKEEPER_CERT", requires = "zookeeper_key")]
    pub zookeeper_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long, env = "TENURE_ZOOKEEPER_KEY", requires = "zookeeper_cert")]
    pub zookeeper_key: Option<PathBuf>,
}

impl ZooKeeperArgs {
    fn tls(&self) -> ZooKeeperTls {
        ZooKeeperTls {
            ca: self.zookeeper_ca.clone(),
            identity: self.zookeeper_cert.clone().zip(self.zookeeper_key.clone()),
        }
    }

    /// Whether any of these was given (they mean nothing without ZooKeeper).
    fn is_given(&self) -> bool {
        self.zookeeper_ca.is_some() || self.zookeeper_cert.is_some()
    }
}

/// Who may use the dashboard and the API.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("admin_token_source").args(["admin_token", "admin_token_file"])))]
pub struct WebArgs {
    /// The break-glass admin token: an admin on every job, a bearer token for the API, the
    /// password (any user name) for the pages' basic auth; its changes are audited as
    /// `admin-token`. Without it (the advice once named tokens exist: `tenure tokens create`), only
    /// named tokens sign in.
    #[arg(long, env = "TENURE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// A file holding the admin token (a mounted secret), instead of --admin-token.
    #[arg(long, env = "TENURE_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// Require a token for the pages and read endpoints too (health and metrics stay open); a
    /// token scoped to teams then sees only its teams' jobs.
    #[arg(long, env = "TENURE_PROTECT_READS")]
    pub protect_reads: bool,
    /// Keep audit entries this long; older ones are pruned by the leader (the only way an entry
    /// goes).
    #[arg(long, env = "TENURE_AUDIT_RETAIN", value_parser = humantime::parse_duration, default_value = "400d")]
    pub audit_retain: Duration,
    #[command(flatten)]
    pub oidc: Box<OidcArgs>,
}

/// Sign-in through the company's identity provider (OpenID Connect).
#[derive(Debug, Args)]
pub struct OidcArgs {
    /// The identity provider's issuer URL (its discovery document is
    /// `<issuer>/.well-known/openid-configuration`): browsers sign in there (`/auth/login`),
    /// with --oidc-client-id, --oidc-policy and --public-url (where the provider sends them back,
    /// to `auth/callback`). The client secret comes from --oidc-client-secret-file or the
    /// TENURE_OIDC_CLIENT_SECRET variable, never from a flag.
    #[arg(long, env = "TENURE_OIDC_ISSUER", requires_all = ["oidc_client_id", "oidc_policy"])]
    pub oidc_issuer: Option<String>,
    /// The dashboard's client id at the provider (a confidential client: code flow with PKCE).
    #[arg(long, env = "TENURE_OIDC_CLIENT_ID", requires = "oidc_issuer")]
    pub oidc_client_id: Option<String>,
    /// A file holding the client secret (a mounted secret).
    #[arg(long, env = "TENURE_OIDC_CLIENT_SECRET_FILE", requires = "oidc_issuer")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// The client secret from the environment (TENURE_OIDC_CLIENT_SECRET), read as the command
    /// line is parsed, before the environment is scrubbed; no flag sets it.
    #[arg(skip = std::env::var(OIDC_CLIENT_SECRET_VARIABLE).ok().filter(|value| !value.is_empty()).map(Secret::new))]
    pub oidc_client_secret: Option<Secret>,
    /// The public client `tenure login` signs in with (device authorization grant); without it
    /// the CLI signs in with tokens only.
    #[arg(long, env = "TENURE_OIDC_CLI_CLIENT_ID", requires = "oidc_issuer")]
    pub oidc_cli_client_id: Option<String>,
    /// The sign-in policy: the provider's groups mapped to roles and teams (YAML; see README).
    #[arg(long, env = "TENURE_OIDC_POLICY", requires = "oidc_issuer")]
    pub oidc_policy: Option<PathBuf>,
    /// How long a sign-in lasts (the session cookie's and `tenure login`'s session's life).
    #[arg(long, env = "TENURE_SESSION_TTL", value_parser = humantime::parse_duration, default_value = "8h")]
    pub session_ttl: Duration,
}

/// The variable the OpenID Connect client secret may come from (scrubbed like the others).
pub const OIDC_CLIENT_SECRET_VARIABLE: &str = "TENURE_OIDC_CLIENT_SECRET";

impl OidcArgs {
    /// `auth` with sign-in through the provider, when --oidc-issuer is given.
    fn apply(&self, auth: Auth, listener: &ListenerArgs) -> anyhow::Result<Auth> {
        let (Some(issuer), Some(client_id), Some(policy)) =
            (&self.oidc_issuer, &self.oidc_client_id, &self.oidc_policy)
        else {
            return Ok(auth);
        };
        let client_secret = match (&self.oidc_client_secret_file, &self.oidc_client_secret) {
            (Some(path), _) => Secret::from_file(path)?,
            (None, Some(secret)) => secret.clone(),
            (None, None) => anyhow::bail!(
                "--oidc-issuer needs the client secret: --oidc-client-secret-file PATH or {OIDC_CLIENT_SECRET_VARIABLE}"
            ),
        };
        let Some(public_url) = &listener.public_url else {
            anyhow::bail!(
                "--oidc-issuer needs --public-url: where browsers reach tenure, to which the provider sends them back"
            );
        };
        let redirect = public_url.url().join("auth/callback").context("the sign-in's redirect URL")?;
        let settings = crate::http::OidcSettings {
            issuer: issuer.clone(),
            client_id: client_id.clone(),
            client_secret,
            cli_client_id: self.oidc_cli_client_id.clone(),
            policy: crate::http::GroupPolicy::load(policy)
                .map_err(|errors| anyhow::anyhow!("the sign-in policy is invalid:\n{errors}"))?,
            policy_file: Some(policy.clone()),
            session_ttl: self.session_ttl,
            redirect,
        };
        Ok(auth.with_oidc(crate::http::Oidc::new(settings)?))
    }
}

impl WebArgs {
    pub fn auth(&self) -> anyhow::Result<Auth> {
        let token = Secret::inline_or_file(self.admin_token.as_ref(), self.admin_token_file.as_deref())?;
        let reads = if self.protect_reads { ReadAccess::TokenRequired } else { ReadAccess::Open };
        Ok(Auth::new(token.as_ref().map(Secret::expose), reads).with_audit_retain(self.audit_retain))
    }
}

impl RunArgs {
    fn coordinator(&self) -> anyhow::Result<CoordinatorAccess> {
        if self.zookeeper.is_empty() {
            if self.zookeeper_access.is_given() {
                anyhow::bail!("--zookeeper-ca, --zookeeper-cert and --zookeeper-key are for --zookeeper, not etcd");
            }
            return Ok(CoordinatorAccess::Etcd(self.etcd_access.access(&self.etcd)?));
        }
        if self.etcd_access.is_given() {
            anyhow::bail!("--etcd-ca, --etcd-cert, --etcd-key and --etcd-user are for etcd, not --zookeeper");
        }
        Ok(CoordinatorAccess::ZooKeeper(ZooKeeperAccess::new(&self.zookeeper, self.zookeeper_access.tls())?))
    }

    pub fn settings(&self) -> anyhow::Result<RunSettings> {
        if self.lease_ttl < Duration::from_secs(1) {
            anyhow::bail!("--lease-ttl must be at least 1s (etcd counts leases in whole seconds)");
        }
        let tags: Vec<String> =
            self.tags.iter().map(|tag| tag.trim().to_owned()).filter(|tag| !tag.is_empty()).collect();
        if let Some(bad) = tags.iter().find(|tag| !crate::config::is_tag(tag)) {
            anyhow::bail!("--tags: `{bad}` is not a tag (letters, digits, `-`, `_` and `.`, at most 64)");
        }
        let node_id = match &self.node_id {
            Some(id) => id.clone(),
            None => {
                let host = hostname::get().context("read host name")?.to_string_lossy().into_owned();
                format!("{host}-{}", std::process::id())
            }
        };
        Ok(RunSettings {
            jobs_path: self.jobs.clone(),
            coordinator: self.coordinator()?,
            database_url: Secret::inline_or_file(self.database_url.as_ref(), self.database_url_file.as_deref())?
                .context("give --database-url or --database-url-file")?,
            node_id,
            lease_ttl: self.lease_ttl,
            election: self.election.clone(),
            shutdown_grace: self.shutdown_grace,
            retain: self.retain,
            tls: self.listener.tls()?,
            auth: self.web.oidc.apply(self.web.auth()?.served(self.listener.served()), &self.listener)?,
            dead_man: self.dead_man.settings()?,
            tags,
            max_runs: self.max_runs,
        })
    }
}

/// `tenure validate`: 0 when the file is valid (its warnings printed to `err`), 1 with every
/// error otherwise; with `--strict`, warnings are errors.
pub fn validate(
    args: &ValidateArgs,
    now: DateTime<Utc>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> anyhow::Result<i32> {
    let checked = config::load(&args.file).and_then(|jobs| match args.retain {
        Some(retain) => jobs.check_retention(&args.file.display().to_string(), retain).map(|()| jobs),
        None => Ok(jobs),
    });
    let jobs = match checked {
        Ok(jobs) if args.strict && !jobs.warnings().is_empty() => {
            writeln!(err, "{}", config::ConfigErrors(jobs.warnings().to_vec()))?;
            return Ok(1);
        }
        Ok(jobs) => jobs,
        Err(errors) => {
            writeln!(err, "{errors}")?;
            return Ok(1);
        }
    };
    for warning in jobs.warnings() {
        writeln!(err, "{}", warning.as_warning())?;
    }
    for job in jobs.jobs() {
        let zone = job.schedule.timezone();
        let mut next = match (job.paused, job.schedule.next_after(now)) {
            (true, _) => "paused".to_owned(),
            (false, Some(next)) => format!("next {}", rfc3339_in(next, zone)),
            (false, None) if !job.after.is_empty() => "runs only after others".to_owned(),
            (false, None) => "never fires".to_owned(),
        };
        if !job.after.is_empty() {
            next.push_str(&format!("; {}", waits_for(job)));
        }
        writeln!(
            out,
            "{name}: \"{expression}\" ({description}) {zone} {next}",
            name = job.name,
            expression = job.schedule.expression(),
            description = job.schedule.describe(),
        )?;
    }
    let count = jobs.jobs().len();
    let noun = if count == 1 { "job" } else { "jobs" };
    let warned = match jobs.warnings().len() {
        0 => String::new(),
        1 => ", 1 warning".to_owned(),
        n => format!(", {n} warnings"),
    };
    writeln!(out, "{count} {noun} valid{warned} (config hash {})", jobs.hash())?;
    Ok(0)
}

/// What a job waits for, in words: "waits for extract (success), load (failure) within 5m".
pub fn waits_for(job: &config::Job) -> String {
    let awaited: Vec<String> = job.after.iter().map(|up| format!("{} ({})", up.job, up.on.as_str())).collect();
    format!("waits for {} within {}", awaited.join(", "), humantime::format_duration(job.wait_bound()))
}

/// `tenure next`: the next N fire times, strictly after `--from`; for a job that waits for
/// others (`--job`), what it waits for first.
pub fn next(args: &NextArgs, now: DateTime<Utc>, out: &mut impl Write, err: &mut impl Write) -> anyhow::Result<i32> {
    let schedule = match (&args.expression, &args.jobs, &args.job) {
        (Some(expression), _, _) => {
            let schedule = schedule::parse_timezone(&args.tz).and_then(|zone| Schedule::parse(expression, zone));
            match schedule {
                Ok(schedule) => schedule,
                Err(error) => {
                    writeln!(err, "error: {error}")?;
                    return Ok(1);
                }
            }
        }
        (None, Some(file), Some(name)) => {
            let jobs = match config::load(file) {
                Ok(jobs) => jobs,
                Err(errors) => {
                    writeln!(err, "{errors}")?;
                    return Ok(1);
                }
            };
            match jobs.get(name) {
                Some(job) => {
                    if !job.after.is_empty() {
                        writeln!(out, "{}", waits_for(job))?;
                    }
                    let dependents: Vec<&str> = jobs.dependents(name).iter().map(|job| job.name.as_str()).collect();
                    if !dependents.is_empty() {
                        writeln!(out, "its runs release: {}", dependents.join(", "))?;
                    }
                    job.schedule.clone()
                }
                None => {
                    writeln!(err, "error: no job named `{name}` in {}", file.display())?;
                    return Ok(1);
                }
            }
        }
        _ => {
            writeln!(err, "error: give an expression, or --jobs FILE with --job NAME")?;
            return Ok(2);
        }
    };
    if args.describe {
        writeln!(out, "{}", schedule.describe())?;
    }
    let mut after = args.from.map(|from| from.with_timezone(&Utc)).unwrap_or(now);
    for _ in 0..args.count {
        match schedule.next_after(after) {
            Some(next) => {
                writeln!(out, "{}", rfc3339_in(next, schedule.timezone()))?;
                after = next;
            }
            None => break,
        }
    }
    Ok(0)
}

/// An instant in RFC 3339 with the zone's UTC offset, e.g. `2026-03-29T03:00:00+02:00`.
pub fn rfc3339_in(instant: DateTime<Utc>, zone: chrono_tz::Tz) -> String {
    instant.with_timezone(&zone).to_rfc3339_opts(SecondsFormat::Secs, false)
}
