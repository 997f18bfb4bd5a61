//! Bad input never panics and is always answered clearly: random and mutated job files and cron
//! expressions, and malformed API requests that change nothing.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use tenure::schedule::{Schedule, parse_timezone};

const EXAMPLE: &str = include_str!("../../jobs.example.yaml");

/// Every error of a refused file is located (line and column from 1) and says something.
fn assert_located(text: &str) {
    if let Err(errors) = tenure::config::parse(text, "fuzz.yaml") {
        assert!(!errors.0.is_empty(), "refused without an error");
        for error in &errors.0 {
            assert!(error.line >= 1 && error.column >= 1, "unlocated: {error}");
            assert!(!error.message.is_empty(), "empty message at {}:{}", error.line, error.column);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_text_as_a_job_file_is_refused_with_located_errors(text in "\\\\PC{0,400}") {
        assert_located(&text);
    }

    #[test]
    fn a_mutated_example_never_panics(
        cuts in proptest::collection::vec((0usize..4000, 0usize..40, "[ \\n:\\-\\[\\]{}&*!|>'\"#a-z0-9@]{0,6}"), 1..6)
    ) {
        let mut text = EXAMPLE.to_owned();
        for (at, len, insert) in cuts {
            let mut at = at.min(text.len());
            while !text.is_char_boundary(at) { at -= 1; }
            let mut end = (at + len).min(text.len());
            while !text.is_char_boundary(end) { end -= 1; }
            text.replace_range(at..end.max(at), &insert);
        }
        assert_located(&text);
    }

    #[test]
    fn random_cron_expressions_never_panic_and_valid_ones_compute(
        fields in proptest::collection::vec("(\\*|[0-9]{1,3}|[0-9]{1,2}-[0-9]{1,2}|\\*/[0-9]{1,2}|[A-Z]{3}|L|[0-9]W|[0-7]#[1-5]|\\?|,)", 0..8),
        zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "Pacific/Chatham"]),
        seconds in 0i64..13_000_000_000,
    ) {
        let expression = fields.join(" ");
        let tz = parse_timezone(zone).unwrap();
        if let Ok(schedule) = Schedule::parse(&expression, tz) {
            let from = DateTime::<Utc>::from_timestamp(seconds, 0).unwrap();
            if let Some(next) = schedule.next_after(from) {
                prop_assert!(next > from, "{expression} in {zone}: {next} is not after {from}");
            }
        }
    }

    #[test]
    fn any_every_interval_is_accepted_or_refused_cleanly(text in "@every [0-9a-z ]{0,12}") {
        let _ = Schedule::parse(&text, chrono_tz::UTC);
    }
}

#[test]
fn deep_nesting_huge_numbers_and_non_utf8_are_refused_clearly() {
    let deep = format!("jobs: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_located(&deep);
    let deep_maps = format!("jobs:\n  - name: x\n    env: {}{}", "{a: ".repeat(50_000), "}".repeat(50_000));
    assert_located(&deep_maps);
    let huge = "jobs:\n  - name: big\n    schedule: \"* * * * *\"\n    shell: \"true\"\n    retries: { max: 999999999999999999999999999999, backoff: 99999999999999999999h }\n";
    let errors = tenure::config::parse(huge, "huge.yaml").unwrap_err();
    assert!(errors.0.iter().all(|e| e.line == 5), "{errors}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.yaml");
    std::fs::write(&path, b"jobs:\n  - name: caf\xe9\n").unwrap();
    let errors = tenure::config::load(&path).unwrap_err();
    assert_eq!(errors.0[0].line, 2, "{errors}");
    assert!(errors.0[0].message.contains("UTF-8"), "{errors}");
}
