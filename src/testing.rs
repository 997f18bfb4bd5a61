//! Test-only switches for the fault suite, read from the environment. They exist only in builds
//! with the `testing` feature (`scripts/test` builds the binary under test that way); a release
//! build ignores the variables entirely.

/// `TENURE_TEST_NO_SELF_FENCE`: the leader ignores its local lease deadline, so a paused leader
/// claims on resume and only the database fence stands between it and a double run.
pub fn no_self_fence() -> bool {
    switch("TENURE_TEST_NO_SELF_FENCE")
}

/// `TENURE_TEST_IGNORE_REFUSALS`: the scheduler executes even when the ledger refuses a claim
/// (fenced or already claimed). Used once, to show the checker catches the double runs.
pub fn ignore_refusals() -> bool {
    switch("TENURE_TEST_IGNORE_REFUSALS")
}

#[cfg(feature = "testing")]
fn switch(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

#[cfg(not(feature = "testing"))]
fn switch(_name: &str) -> bool {
    false
}
