//! The schedule by example: crontab fields, leap days, both daylight-saving transitions, `@every`,
//! refusals and descriptions (the brute-force reference lives in `tests/it/cron_reference.rs`).
use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).expect("rfc3339").with_timezone(&Utc)
}

/// The next `n` fire times after `from`, as RFC 3339 in the schedule's zone.
fn fires(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
    let tz = parse_timezone(zone).expect("zone");
    let schedule = Schedule::parse(expr, tz).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut t = at(from);
    (0..n)
        .map(|_| {
            t = schedule.next_after(t).expect("fires");
            t.with_timezone(&tz).to_rfc3339()
        })
        .collect()
}

/// (expression, zone, from, expected fire times)
type Case = (&'static str, &'static str, &'static str, &'static [&'static str]);

fn check(cases: &[Case]) {
    for (expr, zone, from, want) in cases {
        let got = fires(expr, zone, from, want.len());
        assert_eq!(got, *want, "`{expr}` in {zone} after {from}");
    }
}

#[test]
fn plain_crontab() {
    check(&[
        ("*/15 * * * *", "UTC", "2026-05-01T10:07:00Z", &["2026-05-01T10:15:00+00:00", "2026-05-01T10:30:00+00:00"]),
        // Strictly after: a fire time equal to `from` is not repeated.
        ("0 * * * *", "UTC", "2026-05-01T10:00:00Z", &["2026-05-01T11:00:00+00:00"]),
        // Seconds first when six fields are given.
        ("*/20 * * * * *", "UTC", "2026-05-01T10:00:00Z", &["2026-05-01T10:00:20+00:00", "2026-05-01T10:00:40+00:00"]),
        // Names for months and days, case-insensitive.
        (
            "0 9 * jan-feb mon",
            "UTC",
            "2026-01-01T00:00:00Z",
            &["2026-01-05T09:00:00+00:00", "2026-01-12T09:00:00+00:00"],
        ),
        // Day of week 0 and 7 are both Sunday.
        ("0 0 * * 0", "UTC", "2026-05-01T00:00:00Z", &["2026-05-03T00:00:00+00:00"]),
        ("0 0 * * 7", "UTC", "2026-05-01T00:00:00Z", &["2026-05-03T00:00:00+00:00"]),
        ("0 0 * * 1", "UTC", "2026-05-01T00:00:00Z", &["2026-05-04T00:00:00+00:00"]),
        // Macros.
        ("@daily", "UTC", "2026-05-01T10:00:00Z", &["2026-05-02T00:00:00+00:00"]),
        ("@midnight", "UTC", "2026-05-01T10:00:00Z", &["2026-05-02T00:00:00+00:00"]),
        ("@hourly", "UTC", "2026-05-01T10:00:00Z", &["2026-05-01T11:00:00+00:00"]),
        ("@weekly", "UTC", "2026-05-01T10:00:00Z", &["2026-05-03T00:00:00+00:00"]),
        ("@monthly", "UTC", "2026-05-01T10:00:00Z", &["2026-06-01T00:00:00+00:00"]),
        ("@yearly", "UTC", "2026-05-01T10:00:00Z", &["2027-01-01T00:00:00+00:00"]),
        ("@annually", "UTC", "2026-05-01T10:00:00Z", &["2027-01-01T00:00:00+00:00"]),
        // A zone without daylight saving.
        (
            "30 2 * * *",
            "Asia/Kolkata",
            "2026-03-27T18:00:00Z",
            &["2026-03-28T02:30:00+05:30", "2026-03-29T02:30:00+05:30"],
        ),
        ("0 * * * *", "Asia/Kolkata", "2026-10-24T23:30:00Z", &["2026-10-25T06:00:00+05:30"]),
    ]);
}

#[test]
fn day_of_month_and_day_of_week() {
    check(&[
        // Both restricted: either matches (the 1st, and every Monday).
        (
            "0 0 1 * MON",
            "UTC",
            "2026-06-01T00:00:00Z",
            &[
                "2026-06-08T00:00:00+00:00",
                "2026-06-15T00:00:00+00:00",
                "2026-06-22T00:00:00+00:00",
                "2026-06-29T00:00:00+00:00",
                "2026-07-01T00:00:00+00:00",
            ],
        ),
        // A day field starting with `*` makes both required: Mondays on odd days.
        (
            "0 0 */2 * MON",
            "UTC",
            "2026-06-01T00:00:00Z",
            &["2026-06-15T00:00:00+00:00", "2026-06-29T00:00:00+00:00", "2026-07-13T00:00:00+00:00"],
        ),
        (
            "0 0 1 * */2",
            "UTC",
            "2026-01-01T00:00:00Z",
            &["2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00", "2026-08-01T00:00:00+00:00"],
        ),
    ]);
}

#[test]
fn leap_days_and_short_months() {
    check(&[
        ("0 12 29 2 *", "UTC", "2026-01-01T00:00:00Z", &["2028-02-29T12:00:00+00:00", "2032-02-29T12:00:00+00:00"]),
        ("0 12 29 2 *", "Europe/Berlin", "2026-01-01T00:00:00Z", &["2028-02-29T12:00:00+01:00"]),
        // The 31st only exists in seven months.
        (
            "0 0 31 * *",
            "UTC",
            "2026-01-31T00:00:00Z",
            &[
                "2026-03-31T00:00:00+00:00",
                "2026-05-31T00:00:00+00:00",
                "2026-07-31T00:00:00+00:00",
                "2026-08-31T00:00:00+00:00",
            ],
        ),
        ("0 0 31 * *", "America/New_York", "2026-10-31T05:00:00Z", &["2026-12-31T00:00:00-05:00"]),
        ("0 0 L * *", "UTC", "2026-01-31T00:00:00Z", &["2026-02-28T00:00:00+00:00", "2026-03-31T00:00:00+00:00"]),
        ("0 0 L 2 *", "UTC", "2027-03-01T00:00:00Z", &["2028-02-29T00:00:00+00:00"]),
    ]);
}

/// Clocks jump forward: a fixed-time job in the skipped hour fires once right after the jump;
/// a wildcard job fires on real time, so nothing in the skipped hour.
#[test]
fn spring_forward() {
    check(&[
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-03-28T12:00:00Z",
            &["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
        ),
        (
            "0 2 * * *",
            "Europe/Berlin",
            "2026-03-28T12:00:00Z",
            &["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"],
        ),
        // Two fixed times in the gap still fire once.
        (
            "15,45 2 * * *",
            "Europe/Berlin",
            "2026-03-28T12:00:00Z",
            &["2026-03-29T03:00:00+02:00", "2026-03-30T02:15:00+02:00"],
        ),
        (
            "30 1-3 * * *",
            "Europe/Berlin",
            "2026-03-28T23:00:00Z",
            &["2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"],
        ),
        (
            "0 * * * *",
            "Europe/Berlin",
            "2026-03-28T23:30:00Z",
            &["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"],
        ),
        (
            "*/30 * * * *",
            "Europe/Berlin",
            "2026-03-29T00:45:00Z",
            &["2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00"],
        ),
        (
            "30 2 * * *",
            "America/New_York",
            "2026-03-07T12:00:00Z",
            &["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
        ),
        (
            "0 * * * *",
            "America/New_York",
            "2026-03-08T05:30:00Z",
            &["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00"],
        ),
        // Southern hemisphere: Sydney springs forward in October (02:00 -> 03:00).
        (
            "30 2 * * *",
            "Australia/Sydney",
            "2026-10-03T00:00:00Z",
            &["2026-10-04T03:00:00+11:00", "2026-10-05T02:30:00+11:00"],
        ),
        (
            "0 * * * *",
            "Australia/Sydney",
            "2026-10-03T14:30:00Z",
            &["2026-10-04T01:00:00+10:00", "2026-10-04T03:00:00+11:00"],
        ),
    ]);
}

/// Clocks go back: a fixed-time job fires once, on the first occurrence; a wildcard job fires
/// in both copies of the repeated hour.
#[test]
fn fall_back() {
    check(&[
        (
            "30 2 * * *",
            "Europe/Berlin",
            "2026-10-24T12:00:00Z",
            &["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        ),
        (
            "0 * * * *",
            "Europe/Berlin",
            "2026-10-24T23:30:00Z",
            &["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"],
        ),
        (
            "30 * * * *",
            "Europe/Berlin",
            "2026-10-25T00:15:00Z",
            &["2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00", "2026-10-25T03:30:00+01:00"],
        ),
        // From inside the first copy, the earlier wall-clock times come round again.
        (
            "*/20 * * * *",
            "Europe/Berlin",
            "2026-10-25T00:50:00Z",
            &["2026-10-25T02:00:00+01:00", "2026-10-25T02:20:00+01:00"],
        ),
        // From inside the second copy, a fixed-time job does not fire again.
        ("30 2 * * *", "Europe/Berlin", "2026-10-25T01:10:00Z", &["2026-10-26T02:30:00+01:00"]),
        // Hour lists and ranges are fixed-time too.
        (
            "15 2,3 * * *",
            "Europe/Berlin",
            "2026-10-24T23:00:00Z",
            &["2026-10-25T02:15:00+02:00", "2026-10-25T03:15:00+01:00", "2026-10-26T02:15:00+01:00"],
        ),
        (
            "30 1-3 * * *",
            "America/New_York",
            "2026-11-01T04:00:00Z",
            &["2026-11-01T01:30:00-04:00", "2026-11-01T02:30:00-05:00", "2026-11-01T03:30:00-05:00"],
        ),
        (
            "0 * * * *",
            "America/New_York",
            "2026-11-01T04:30:00Z",
            &["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00"],
        ),
        // Southern hemisphere: Sydney falls back in April (03:00 -> 02:00).
        (
            "30 2 * * *",
            "Australia/Sydney",
            "2026-04-04T00:00:00Z",
            &["2026-04-05T02:30:00+11:00", "2026-04-06T02:30:00+10:00"],
        ),
        (
            "15 2,3 * * *",
            "Australia/Sydney",
            "2026-04-04T14:00:00Z",
            &["2026-04-05T02:15:00+11:00", "2026-04-05T03:15:00+10:00"],
        ),
        (
            "0 * * * *",
            "Australia/Sydney",
            "2026-04-04T14:30:00Z",
            &["2026-04-05T02:00:00+11:00", "2026-04-05T02:00:00+10:00", "2026-04-05T03:00:00+10:00"],
        ),
    ]);
}

/// A job firing several times an hour, entering a repeated hour from before it,
/// fires every matching minute of the first pass, then of the second; in every hemisphere and
/// for half-hour and 45-minute zones.
#[test]
fn several_fires_an_hour_keep_the_first_pass_of_a_repeated_hour() {
    check(&[
        (
            "*/20 * * * *",
            "America/New_York",
            "2026-11-01T04:30:00Z",
            &[
                "2026-11-01T00:40:00-04:00",
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:20:00-04:00",
                "2026-11-01T01:40:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T01:20:00-05:00",
                "2026-11-01T01:40:00-05:00",
                "2026-11-01T02:00:00-05:00",
            ],
        ),
        (
            "*/20 * * * *",
            "Europe/Berlin",
            "2026-10-24T23:50:00Z",
            &[
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:20:00+02:00",
                "2026-10-25T02:40:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T02:20:00+01:00",
                "2026-10-25T02:40:00+01:00",
                "2026-10-25T03:00:00+01:00",
            ],
        ),
        (
            "*/20 * * * *",
            "Australia/Sydney",
            "2026-04-04T14:50:00Z",
            &[
                "2026-04-05T02:00:00+11:00",
                "2026-04-05T02:20:00+11:00",
                "2026-04-05T02:40:00+11:00",
                "2026-04-05T02:00:00+10:00",
                "2026-04-05T02:20:00+10:00",
                "2026-04-05T02:40:00+10:00",
                "2026-04-05T03:00:00+10:00",
            ],
        ),
        // Chatham repeats 02:45-03:45 (+13:45, then +12:45).
        (
            "*/20 * * * *",
            "Pacific/Chatham",
            "2026-04-04T12:50:00Z",
            &[
                "2026-04-05T02:40:00+13:45",
                "2026-04-05T03:00:00+13:45",
                "2026-04-05T03:20:00+13:45",
                "2026-04-05T03:40:00+13:45",
                "2026-04-05T03:00:00+12:45",
                "2026-04-05T03:20:00+12:45",
                "2026-04-05T03:40:00+12:45",
                "2026-04-05T04:00:00+12:45",
            ],
        ),
        (
            "*/20 * * * *",
            "America/St_Johns",
            "2026-11-01T03:20:00Z",
            &[
                "2026-11-01T01:00:00-02:30",
                "2026-11-01T01:20:00-02:30",
                "2026-11-01T01:40:00-02:30",
                "2026-11-01T01:00:00-03:30",
                "2026-11-01T01:20:00-03:30",
                "2026-11-01T01:40:00-03:30",
                "2026-11-01T02:00:00-03:30",
            ],
        ),
        // Seconds first: the same rule.
        (
            "0 */30 * * * *",
            "America/New_York",
            "2026-11-01T04:45:00Z",
            &[
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T01:30:00-05:00",
                "2026-11-01T02:00:00-05:00",
            ],
        ),
        // A fixed-time list or range still fires once, on the first pass.
        (
            "0,20,40 1 * * *",
            "America/New_York",
            "2026-11-01T04:30:00Z",
            &[
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:20:00-04:00",
                "2026-11-01T01:40:00-04:00",
                "2026-11-02T01:00:00-05:00",
            ],
        ),
    ]);
    // Every real minute of the two hours from the start of the repeated one: 120 runs, not 61.
    let ny = parse_timezone("America/New_York").unwrap();
    for (expression, runs) in [("* * * * *", 120), ("*/5 * * * *", 24)] {
        let schedule = Schedule::parse(expression, ny).unwrap();
        let (start, end) = (at("2026-11-01T04:59:59Z"), at("2026-11-01T06:59:59Z"));
        let fires = std::iter::successors(schedule.next_after(start), |t| schedule.next_after(*t))
            .take_while(|t| *t <= end)
            .count();
        assert_eq!(fires, runs, "`{expression}`");
    }
}

#[test]
fn every_is_anchored_to_the_epoch() {
    check(&[
        ("@every 30s", "UTC", "2026-05-01T10:00:10Z", &["2026-05-01T10:00:30+00:00", "2026-05-01T10:01:00+00:00"]),
        (
            "@every 1h",
            "Europe/Berlin",
            "2026-10-25T00:30:00Z",
            &["2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"],
        ),
        ("@every 7m", "UTC", "1970-01-01T00:00:00Z", &["1970-01-01T00:07:00+00:00"]),
    ]);
}

#[test]
fn refuses_what_cannot_fire_or_parse() {
    let utc = Tz::UTC;
    for never in ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6 *"] {
        assert!(matches!(Schedule::parse(never, utc), Err(ScheduleError::NeverFires(_))), "{never}");
    }
    for bad in [
        "",
        "* * * *",
        "* * * * * * *",
        "61 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "@reboot",
        "@every",
        "@every 0s",
        "@every 1500ms",
        "@every soon",
        "x * * * *",
    ] {
        assert!(matches!(Schedule::parse(bad, utc), Err(ScheduleError::Invalid { .. })), "{bad:?} should be invalid");
    }
    // The error names the field at fault and what it allows.
    for (bad, field) in [
        ("61 * * * *", "minute field `61`"),
        ("* 24 * * *", "hour field `24`"),
        ("* * 0 * *", "day-of-month field `0`"),
        ("* * * 13 *", "month field `13`"),
        ("* * * * 8", "day-of-week field `8`"),
        ("60 * * * * *", "second field `60`"),
    ] {
        let message = Schedule::parse(bad, utc).unwrap_err().to_string();
        assert!(message.contains(field), "{bad:?}: {message}");
        assert!(message.contains("expected"), "{bad:?}: {message}");
    }
    for zone in ["Mars/Olympus", "CET", "EST", "+02:00", "europe/berlin"] {
        assert!(parse_timezone(zone).is_err(), "{zone}");
    }
    for zone in ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires"] {
        assert!(parse_timezone(zone).is_ok(), "{zone}");
    }
}

#[test]
fn describes_in_words() {
    let s = Schedule::parse("30 2 * * *", Tz::UTC).unwrap();
    assert!(s.describe().contains("02:30"), "{}", s.describe());
    assert_eq!(Schedule::parse("@every 30s", Tz::UTC).unwrap().describe(), "Every 30s");
    assert_eq!(Schedule::parse("*/5 * * * * *", Tz::UTC).unwrap().describe(), "Every 5 seconds");
    assert_eq!(Schedule::parse("* * * * *", Tz::UTC).unwrap().describe(), "Every minute");
}

#[test]
fn several_expressions_merge_in_time_order_and_equal_instants_fire_once() {
    let parts = ["0,30 * * * *", "15 * * * *", "*/30 * * * *"]
        .into_iter()
        .map(|expression| Schedule::parse(expression, Tz::UTC).unwrap())
        .collect();
    let schedule = Schedule::union(parts).unwrap();
    assert_eq!(schedule.expression(), "0,30 * * * * | 15 * * * * | */30 * * * *");
    assert_eq!(schedule.expressions().len(), 3);
    let mut t = at("2026-05-01T10:00:00Z");
    let got: Vec<String> = (0..5)
        .map(|_| {
            t = schedule.next_after(t).unwrap();
            t.to_rfc3339()
        })
        .collect();
    // :00 and :30 come from two expressions each: one fire per instant.
    assert_eq!(
        got,
        [
            "2026-05-01T10:15:00+00:00",
            "2026-05-01T10:30:00+00:00",
            "2026-05-01T11:00:00+00:00",
            "2026-05-01T11:15:00+00:00",
            "2026-05-01T11:30:00+00:00",
        ]
    );
    assert_eq!(schedule.describe().matches("; ").count(), 2, "{}", schedule.describe());
    assert!(Schedule::union(Vec::new()).is_none());
}

#[test]
fn jitter_is_deterministic_and_within_its_window_over_ten_thousand_slots() {
    let window = Duration::from_secs(30);
    let mut slot = at("2026-01-01T00:00:00Z");
    let mut offsets = std::collections::HashSet::new();
    let (mut low, mut high) = (0, 0);
    for _ in 0..10_000 {
        let offset = jitter_offset("nightly-report", slot, window);
        assert!(offset < window, "{offset:?} at {slot}");
        assert_eq!(offset, jitter_offset("nightly-report", slot, window), "the same on every call");
        assert_eq!(offset.subsec_nanos() % 1_000_000, 0, "whole milliseconds");
        offsets.insert(offset);
        if offset < window / 2 {
            low += 1
        } else {
            high += 1
        }
        slot += chrono::Duration::seconds(1);
    }
    // Spread over the window, not stuck on a few values or one half.
    assert!(offsets.len() > 5_000, "{} distinct offsets", offsets.len());
    assert!((4_000..6_000).contains(&low) && (4_000..6_000).contains(&high), "{low} / {high}");
    // Another job sharing the slots gets other offsets: the point of `spread`.
    let slot = at("2026-01-01T00:00:00Z");
    let jobs: std::collections::HashSet<Duration> =
        (0..20).map(|i| jitter_offset(&format!("job-{i}"), slot, window)).collect();
    assert!(jobs.len() > 15, "{jobs:?}");
    // Fixed across releases: a change of algorithm would move every jittered run at an upgrade.
    assert_eq!(jitter_offset("nightly-report", slot, window), Duration::from_millis(PINNED_OFFSET_MS));
    assert_eq!(jitter_offset("x", slot, Duration::ZERO), Duration::ZERO);
}

/// `jitter_offset("nightly-report", 2026-01-01T00:00:00Z, 30s)`, computed apart from this crate
/// (FNV-1a over the bytes, then the MurmurHash3 finaliser, in a few lines of Python).
const PINNED_OFFSET_MS: u64 = 27_706;
