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

fn words(expression: &str) -> String {
    Schedule::parse(expression, Tz::UTC).unwrap_or_else(|e| panic!("{expression}: {e}")).describe()
}

#[test]
fn a_step_that_does_not_divide_its_field_is_described_by_the_values_that_fire() {
    for (expression, expected) in [
        // A step restarts at every minute, hour or day: 45 then 15 apart, not every 45.
        ("*/45 * * * * *", "At seconds 0 and 45 of every minute"),
        ("*/50 * * * * *", "At seconds 0 and 50 of every minute"),
        ("*/45 * * * *", "At minutes 0 and 45 past every hour"),
        ("0 */5 * * *", "At 00:00, 05:00, 10:00, 15:00 and 20:00"),
        ("*/7 * * * *", "At minutes 0, 7, 14, 21, 28, 35, 42, 49 and 56 past every hour"),
        // Not starting at 0: the values, even when the step divides.
        ("5-59/15 * * * *", "At minutes 5, 20, 35 and 50 past every hour"),
        ("0 0 1 */5 *", "At 00:00, on day 1, in January, June and November"),
        // Steps that divide their field's range and start at 0 keep their period.
        ("*/15 * * * * *", "Every 15 seconds"),
        ("*/20 * * * *", "Every 20 minutes"),
        ("0 */6 * * *", "Every 6 hours, at minute 0"),
        ("30 */2 * * *", "Every 2 hours, at minute 30"),
        (
            "*/15 9-17 * * MON-FRI",
            "Every 15 minutes during hours 9-17, on Monday, Tuesday, Wednesday, Thursday and Friday",
        ),
        ("* * * * * *", "Every second"),
        ("30 * * * * *", "Every minute, at second 30"),
        ("0 * * * *", "At minute 0 past every hour"),
        ("30 2 * * *", "At 02:30"),
        ("15 30 2 * * *", "At 02:30:15"),
        ("*/10 30 2 * * *", "Every 10 seconds during 02:30"),
        ("* 0 * * *", "Every minute during hour 0"),
        ("*/10 */2 * * *", "Every 10 minutes during every 2nd hour"),
        ("@weekly", "At 00:00, on Sunday"),
    ] {
        assert_eq!(words(expression), expected, "`{expression}`");
    }
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

/// Descriptions against fire times, over generated expressions (in UTC: a wall-clock period is
/// not a real one across a daylight-saving change).
mod words_against_fire_times {
    use chrono::Timelike;
    use proptest::prelude::*;

    use super::*;

    /// One crontab field of values `0..=max`, in every form a step can take.
    fn field(max: u16) -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_owned()),
            (1..=max).prop_map(|k| format!("*/{k}")),
            (0..=max, 1..=max).prop_map(|(a, k)| format!("{a}/{k}")),
            (0..=max).prop_map(|a| a.to_string()),
            (0..=max, 0..=max).prop_map(|(a, b)| format!("{a},{b}")),
            (0..=max, 0..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            (0..=max, 0..=max, 1..=max).prop_map(|(a, b, k)| format!("{}-{}/{k}", a.min(b), a.max(b))),
        ]
    }

    /// The period a description claims ("Every 15 seconds", "Every 2 hours, at minute 30").
    fn claimed_period(words: &str) -> Option<TimeDelta> {
        let claim = regex_lite::Regex::new(r"^Every (?:(\d+) )?(second|minute|hour)s?\b").unwrap();
        let found = claim.captures(words)?;
        let count: i64 = found.get(1).map_or(1, |n| n.as_str().parse().unwrap());
        let unit = match &found[2] {
            "second" => 1,
            "minute" => 60,
            _ => 3_600,
        };
        Some(TimeDelta::seconds(count * unit))
    }

    /// What a description says fires: (unit, value) for "seconds 0 and 45", "minute 30",
    /// "hours 9-17", (hour, minute, second) for "02:30" and "02:30:15", and month numbers.
    struct Named {
        values: Vec<(&'static str, u32)>,
        times: Vec<(u32, u32, Option<u32>)>,
        months: Vec<u32>,
    }

    fn named(words: &str) -> Named {
        let lists =
            regex_lite::Regex::new(r"\b(second|minute|hour)s? (\d+(?:-\d+)?(?:(?:, | and )\d+(?:-\d+)?)*)").unwrap();
        let mut values = Vec::new();
        for found in lists.captures_iter(words) {
            let unit = match &found[1] {
                "second" => "second",
                "minute" => "minute",
                _ => "hour",
            };
            for item in found[2].split(", ").flat_map(|part| part.split(" and ")) {
                let (low, high) = item.split_once('-').unwrap_or((item, item));
                for value in low.parse::<u32>().unwrap()..=high.parse::<u32>().unwrap() {
                    values.push((unit, value));
                }
            }
        }
        let clock = regex_lite::Regex::new(r"\b(\d{2}):(\d{2})(?::(\d{2}))?\b").unwrap();
        let times = clock
            .captures_iter(words)
            .map(|t| (t[1].parse().unwrap(), t[2].parse().unwrap(), t.get(3).map(|s| s.as_str().parse().unwrap())))
            .collect();
        const MONTHS: [&str; 12] = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ];
        let months = (1..=12).filter(|m| words.contains(MONTHS[*m as usize - 1])).collect();
        Named { values, times, months }
    }

    fn has(fire: DateTime<Utc>, (unit, value): (&str, u32)) -> bool {
        match unit {
            "second" => fire.second() == value,
            "minute" => fire.minute() == value,
            _ => fire.hour() == value,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// A description that claims a period holds for 200 consecutive fire times (between
        /// fires of one minute, hour or day when it names a part of the day or of the year it
        /// holds in), and every second, minute, hour, time of day and month it names fires.
        #[test]
        fn a_description_claims_only_periods_and_values_that_the_fire_times_have(
            seconds in prop::option::of(field(59)),
            minute in field(59),
            hour in field(23),
            dom in prop::sample::select(vec!["*", "*", "1", "1-15", "*/10", "10,20"]),
            month in prop::sample::select(vec!["*", "*", "*/5", "*/3", "1,6", "JAN-MAR"]),
            dow in prop::sample::select(vec!["*", "*", "MON-FRI", "*/2", "SUN"]),
            start in 0i64..366 * 86_400,
        ) {
            let expression = match &seconds {
                Some(second) => format!("{second} {minute} {hour} {dom} {month} {dow}"),
                None => format!("{minute} {hour} {dom} {month} {dow}"),
            };
            // Generated fields may be out of range (`7-3/2` is fine, `*/59` too); skip refusals.
            let Ok(schedule) = Schedule::parse(&expression, Tz::UTC) else { return Ok(()) };
            let words = schedule.describe();
            let from = at("2027-01-01T00:00:00Z") + TimeDelta::seconds(start);
            let mut fires = Vec::with_capacity(200);
            let mut t = from;
            while fires.len() < 200 {
                t = schedule.next_after(t).expect("a parsed schedule fires");
                fires.push(t);
            }
            if let Some(period) = claimed_period(&words) {
                // Unqualified, it holds between any two fires; "during hours 9-17" or "on
                // Monday", between fires of the same minute, hour or day (the unit above).
                let whole = !words.contains(" during ") && !words.contains(", on ") && !words.contains(", in ");
                let unit = if period < TimeDelta::minutes(1) { 60 } else if period < TimeDelta::hours(1) { 3_600 } else { 86_400 };
                for pair in fires.windows(2) {
                    let same_unit = pair[0].timestamp() / unit == pair[1].timestamp() / unit;
                    if whole || same_unit {
                        prop_assert_eq!(pair[1] - pair[0], period, "`{}`: \"{}\" but {} then {}", expression, words, pair[0], pair[1]);
                    }
                }
            }
            let Named { values, times, months } = named(&words);
            let mut values_left = values;
            let mut times_left = times;
            let mut t = from;
            for _ in 0..200_000 {
                if values_left.is_empty() && times_left.is_empty() {
                    break;
                }
                t = schedule.next_after(t).expect("a parsed schedule fires");
                values_left.retain(|value| !has(t, *value));
                times_left.retain(|&(h, m, s)| !(t.hour() == h && t.minute() == m && s.is_none_or(|s| t.second() == s)));
            }
            prop_assert!(values_left.is_empty() && times_left.is_empty(), "`{}`: \"{}\" names {:?} {:?}, which never fire", expression, words, values_left, times_left);
            // A month fires in some year (day 1, 11, 21 or 31 that is a Sunday: not every year).
            for month in months {
                let fires_in = |year| {
                    let first = Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).unwrap();
                    let next = schedule.next_after(first - TimeDelta::seconds(1)).expect("fires");
                    (next.year(), next.month()) == (year, month)
                };
                prop_assert!((2028..2068).any(fires_in), "`{}`: \"{}\" names month {}", expression, words, month);
            }
        }
    }
}

#[test]
fn only_steps_over_a_whole_field_that_do_not_divide_it_are_uneven() {
    let uneven = |expression: &str| -> Vec<String> {
        let schedule = Schedule::parse(expression, Tz::UTC).unwrap_or_else(|e| panic!("{expression}: {e}"));
        schedule.uneven_steps().into_iter().map(|(_, step)| step.term).collect()
    };
    // Dividing steps, ranges the user chose, days of the month (no step divides months of 28 to
    // 31 days), macros and `@every`: nothing to say.
    for expression in ["*/15 * * * *", "0-30/7 * * * *", "5-59/15 * * * *", "0 0 */10 * *", "@daily", "@every 45m"] {
        assert_eq!(uneven(expression), Vec::<String>::new(), "`{expression}`");
    }
    assert_eq!(uneven("*/45 0-59/45 */5 * */5 */2"), ["*/45", "0-59/45", "*/5", "*/5", "*/2"]);
    let schedule = Schedule::parse("0 0 * */5 */2", Tz::UTC).unwrap();
    let messages: Vec<String> = schedule.uneven_steps().into_iter().map(|(_, step)| step.message).collect();
    assert!(messages[0].contains("fires in January, June and November (5 months apart, then 2"), "{}", messages[0]);
    assert!(!messages[0].contains("@every"), "months vary in length: {}", messages[0]);
    assert!(messages[1].contains("on Sunday, Tuesday, Thursday and Saturday"), "{}", messages[1]);
    assert!(messages[1].contains("`@every 2d`"), "{}", messages[1]);
    // Offsets locate the term in the expression.
    let steps = Schedule::parse("0 */5 * * *", Tz::UTC).unwrap().uneven_steps();
    assert_eq!(steps[0].1.offset, 2);
}
