//! Temporary stand-in for the job file module (being written on branch `config`).
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::schedule::Schedule;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobName(String);
impl std::fmt::Display for JobName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(&self.0) }
}
impl AsRef<str> for JobName { fn as_ref(&self) -> &str { &self.0 } }

#[derive(Debug, Clone)]
pub struct JobSet { jobs: Vec<Job>, hash: String }
impl JobSet {
    pub fn jobs(&self) -> &[Job] { &self.jobs }
    pub fn get(&self, name: &str) -> Option<&Job> { self.jobs.iter().find(|j| j.name.as_ref() == name) }
    pub fn hash(&self) -> &str { &self.hash }
}
#[derive(Debug, Clone)]
pub struct Job {
    pub name: JobName,
    pub schedule: Schedule,
    pub target: Target,
    pub timeout: Duration,
    pub concurrency: Concurrency,
    pub catch_up: CatchUp,
    pub starting_deadline: Duration,
    pub retries: Retries,
    pub paused: bool,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target { Command { argv: Vec<String> }, Shell { script: String }, Http(HttpTarget) }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget { pub url: String, pub method: String, pub headers: BTreeMap<String, String>, pub body: String, pub expect_status: Vec<u16> }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency { Allow, Forbid, Replace }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp { None, Latest, All }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries { pub max: u32, pub backoff: Duration }
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);
impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(&self.0.join("\n")) }
}
impl std::error::Error for ConfigErrors {}
pub fn load(path: &std::path::Path) -> Result<JobSet, ConfigErrors> { let _ = path; Err(ConfigErrors(vec!["stub".into()])) }
