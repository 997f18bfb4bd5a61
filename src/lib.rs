//! tenure: a distributed cron scheduler that fires every job exactly once per scheduled slot.
//!
//! Replicas campaign for leadership in etcd; the leader claims each run in the ledger (PostgreSQL)
//! with its term as a fencing token before executing it. Read the modules in this order:
//! `schedule` (pure cron maths), `config` (the job file), `model` (the vocabulary the rest
//! shares: run statuses and outcomes, triggers, the cluster view), `leadership` and `election` (who may
//! fire, and with which term), `store` (the fenced run ledger), `executor` (running one job) and
//! `supervisor` (its processes die with the replica; `hardening` keeps both unreadable to jobs), `scheduler` (the firing loop), `worker` (runs the
//! leader assigns to this replica, each under an execution lease of its own) and `deadman` (its
//! ping to an outside monitor while it leads), `http` (health
//! and API), `app` (wiring), `secret` (values never printed), `cli` (commands), `client` (the commands that
//! talk to a replica's API).

pub mod app;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod deadman;
pub mod election;
pub mod executor;
pub mod fds;
pub mod hardening;
pub mod http;
pub mod leadership;
pub mod local;
pub mod memory;
pub mod model;
pub mod notify;
pub mod schedule;
pub mod scheduler;
pub mod secret;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod testing;
pub mod worker;
