//! Test-only switches for the fault suite, read from the environment. They exist only in builds
//! with the `testing` feature, which every `cargo test` build has (the crate is its own
//! dev-dependency with that feature); `cargo build`, `cargo run` and `cargo install` ignore the
//! variables entirely. Each is read once: the lease check is on the hot path.

use std::sync::OnceLock;

/// `TENURE_TEST_NO_SELF_FENCE`: the leader ignores its local lease deadline, so a paused leader
/// claims on resume and only the database fence stands between it and a double run; and an
/// executor ignores its execution lease's local deadline (`worker`), so the checker can be shown
/// an attempt overlapping its retry.
pub fn no_self_fence() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| switch("TENURE_TEST_NO_SELF_FENCE"))
}

/// `TENURE_TEST_IGNORE_REFUSALS`: the scheduler executes even when the ledger refuses a claim
/// or its start (fenced or already claimed), or the coordinator refuses to witness the start. Used once, to show the checker catches the double runs.
pub fn ignore_refusals() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| switch("TENURE_TEST_IGNORE_REFUSALS"))
}

/// `TENURE_TEST_NO_START_WITNESS`: the leader neither records its starts in the coordinator
/// nor, as a new term, asks what the ledger forgot; used once, to show that the checker catches
/// the double runs a database failover then causes.
pub fn no_start_witness() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| switch("TENURE_TEST_NO_START_WITNESS"))
}

/// `TENURE_TEST_CLAIM_HOLD_MS`: every PostgreSQL claim stays uncommitted this long, holding
/// the fence row `FOR SHARE`, so a test can pause the leader in the middle of a claim.
pub fn claim_hold() -> Option<std::time::Duration> {
    static HOLD: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    *HOLD.get_or_init(|| millis("TENURE_TEST_CLAIM_HOLD_MS"))
}

/// `TENURE_TEST_CLAIM_LEAD_MS`: runs are claimed this far ahead of their slots instead of the
/// learned lead, so a test can fault the leader between a claim and its slot.
pub fn claim_lead() -> Option<std::time::Duration> {
    static LEAD: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    *LEAD.get_or_init(|| millis("TENURE_TEST_CLAIM_LEAD_MS"))
}

/// `TENURE_TEST_START_LEAD_MS`: claimed runs record their start this far ahead of their slots
/// instead of the learned lead, so a test can fault the leader between a start and its slot.
pub fn start_lead() -> Option<std::time::Duration> {
    static LEAD: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    *LEAD.get_or_init(|| millis("TENURE_TEST_START_LEAD_MS"))
}

/// `TENURE_TEST_RELEASE_HOLD_MS`: what a look at the ledger for released runs (`after:`) found
/// reaches the leader this much later, so a test can fault the leader between an awaited run's
/// end and the claim of the run it releases.
pub fn release_hold() -> Option<std::time::Duration> {
    static HOLD: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    *HOLD.get_or_init(|| millis("TENURE_TEST_RELEASE_HOLD_MS"))
}

/// `TENURE_TEST_PRUNE_EVERY_MS`: the leader prunes the ledger this often instead of every
/// minute, so a test can watch retention work.
pub fn prune_every() -> Option<std::time::Duration> {
    static EVERY: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    *EVERY.get_or_init(|| millis("TENURE_TEST_PRUNE_EVERY_MS"))
}

/// `TENURE_TEST_HTTP_POOL_IDLE_MS`: an idle connection to an HTTP job's target is closed after
/// this long instead of `executor::HTTP_POOL_IDLE`, so a test can watch it closed.
pub fn http_pool_idle() -> Option<std::time::Duration> {
    static IDLE: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    *IDLE.get_or_init(|| millis("TENURE_TEST_HTTP_POOL_IDLE_MS"))
}

/// `TENURE_TEST_MIGRATE_TO`: a replica applies the PostgreSQL migrations up to this version
/// only, so it fires on the schema an upgrade starts from while a test migrates the rest.
pub fn migrate_to() -> Option<i64> {
    static TO: OnceLock<Option<i64>> = OnceLock::new();
    *TO.get_or_init(|| value("TENURE_TEST_MIGRATE_TO").and_then(|version| version.parse().ok()))
}

fn millis(name: &str) -> Option<std::time::Duration> {
    value(name).and_then(|ms| ms.parse().ok()).map(std::time::Duration::from_millis)
}

#[cfg(feature = "testing")]
fn value(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(not(feature = "testing"))]
fn value(_name: &str) -> Option<String> {
    None
}

#[cfg(feature = "testing")]
fn switch(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

#[cfg(not(feature = "testing"))]
fn switch(_name: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    /// Plain `cargo test` must build what the integration suite drives: were the feature off here,
    /// the suite would run against a binary that ignores its switches (or be skipped in silence).
    #[test]
    #[allow(clippy::assertions_on_constants, reason = "the constant is what the build chose")]
    fn every_test_build_has_the_testing_switches() {
        assert!(
            cfg!(feature = "testing"),
            "this test build lacks the `testing` feature: Cargo.toml's dev-dependency on the crate itself \
             turns it on for `cargo test`; run the suite with scripts/test"
        );
    }
}
