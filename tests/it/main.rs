//! The one integration-test binary. Tests start their own etcd and PostgreSQL (see `harness`)
//! and, for cluster scenarios, real `tenure run` processes.

/// Sign-in and permissions: roles and teams against every write endpoint and form, tokens,
/// the audit trail.
mod access;
/// The Prometheus alert rules: promtool, and the series they read against a real replica's.
mod alerts;
/// The API and the pages through the router, without a socket.
mod api;
/// Random, mutated and malformed input: never a panic, always a clear error.
mod bad_input;
/// Browser protections (CSP, framing, origins) and TLS on the listener, in headless Chromium.
mod browser;
/// Verdicts over witness and ledger.
mod checker;
/// The command line on the example and the broken fixtures.
mod cli;
/// The client commands against real `tenure dev`, TLS and cluster servers.
mod client;
/// A cluster of real `tenure run` processes on a throwaway etcd and PostgreSQL.
mod cluster;
/// The singleton guarantees under the faults of the core issue.
mod core;
/// A brute-force cron oracle, independent of croner and of `schedule`.
mod cron_reference;
/// The dashboard and API of a real cluster, and in headless Chromium.
mod dashboard;
/// The database failing over to a standby: asynchronous loses commits, never a slot twice.
mod db_failover;
/// The dead-man ping: only the leader pings an outside monitor, and stops with the last leader.
mod deadman;
/// Jobs that wait for other jobs (`after:`): the ledger's scan, chains across leader faults,
/// failure branches, fan-in, cascades.
mod dependencies;
/// `tenure dev`: one command, SQLite, the dashboard.
mod dev;
/// Daylight saving: `next` against the oracle around every transition, and the firing path.
mod dst;
/// Runs executing on worker replicas under leases of their own, across faults.
mod execution;
/// The executor on real processes and a real HTTP server.
mod executor;
/// The fault suite: partitions, pauses, kills, restarts, reloads.
mod faults;
/// The dashboard for a fleet of 500 jobs in headless Chromium: widths, filters, live refresh,
/// run output, axe-core and contrast in light and dark.
mod fleet;
/// Throwaway etcd, ZooKeeper and PostgreSQL servers with fault injection.
mod harness;
/// Hostile job files: huge, deep, alias bombs, 100,000 errors.
mod hostile;
/// Slow and hostile clients against a real listener: timeouts, the connection cap, admission.
mod http_limits;
/// Secrets of HTTP jobs: redacted wherever shown, or read from the environment or a file.
mod http_secrets;
/// Hostile job files refused on reload without delaying a slot or flooding the log.
mod job_file_reload;
/// Lateness and duration from a run's real begin, across a frozen supervisor or replica.
mod lateness;
/// The leadership contract on etcd, on ZooKeeper and in-process.
mod leadership;
/// The ledger contract on PostgreSQL and SQLite.
mod ledger;
/// A ledger of a million rows: pruning and history pages read what they use, space goes back.
mod ledger_ages;
/// The execution part of the ledger contract: acceptance, renewal, give-up, cancel.
mod ledger_execution;
/// The notification outbox's part of the ledger contract.
mod ledger_outbox;
/// The ledger partitioned by slot: disk given back by whole partitions, claims, fence and pages
/// across partitions.
mod ledger_partitions;
/// Readers never starve claims; a full dashboard sheds load.
mod load;
/// Notifications by outcome, from a real cluster to a real receiver.
mod notify;
/// A TCP fault proxy (blackhole, reset, refuse, delay) on loopback.
mod proxy;
/// Several schedules, jitter, backfill and manual overrides on real clusters.
mod scheduling;
/// What a job can see of tenure through /proc, and whom it runs as (`user:`).
mod security;
/// Sign-in through a real OpenID provider (oidc-provider on node): Chromium, forged and
/// replayed answers, sessions on both replicas, `tenure login --sso`.
mod signin;
/// The harness itself: both servers come up, answer, survive restarts.
mod smoke;
/// Starting up against a real PostgreSQL: migrations, replicas together, a newer schema.
mod startup;
/// TLS and authentication to PostgreSQL and etcd, secrets from files, start-up refusals.
mod tls;
/// The singleton guarantees with ZooKeeper as the coordinator: kills, pauses, a blackhole, and
/// an ensemble losing its own leader.
mod zookeeper;
