//! A brute-force cron oracle, written independently of croner and of `tenure::schedule`: its own
//! field parser, Vixie cron's day-of-month / day-of-week rule, and cronie's daylight-saving rules,
//! applied by walking real UTC minutes and converting each to wall time with chrono-tz.
//!
//! It covers the subset the property tests generate: numbers, ranges, steps (`*/k`, `a-b/k`),
//! lists, month and day names, `*`, day-of-week 0-7; 5 fields, or 6 with seconds first (a second
//! field is matched inside each real minute: no zone changes its offset within a minute). `L`, `W`
//! and `#` are refused. It is slow (one conversion per real minute): tests only.
//!
//! The rules, as cronie applies them:
//! - a *wildcard* job (its minute or hour field, or its second field when given, starts with `*`)
//!   fires on real elapsed time: at every real instant whose wall time matches, so in both passes
//!   of a repeated hour and never in a skipped one;
//! - a *fixed-time* job fires at a real instant whose wall time matches only if that wall time
//!   has not been seen before (the first pass of a repeated hour), and once at the instant the
//!   clocks jump forward if any wall time skipped by the jump matches (several skipped matches, and
//!   a match at the jump instant itself, are one fire: a slot is its instant).

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Datelike, NaiveDateTime, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;

/// A set of allowed values for one field, as a bit mask (values 0..=59).
#[derive(Debug, Clone, Copy)]
struct Field {
    allowed: u64,
    /// The field's text starts with `*` (Vixie's `*_STAR` flags).
    star: bool,
}

impl Field {
    fn contains(&self, value: u32) -> bool {
        self.allowed & (1 << value) != 0
    }
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One value of a field: a number, or a name where the field has names.
fn value(text: &str, low: u32, high: u32, names: &[&str], name_base: u32) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(index) = names.iter().position(|name| *name == lower) {
        return Ok(index as u32 + name_base);
    }
    let number: u32 = text.parse().map_err(|_| format!("`{text}` is not a number"))?;
    if number < low || number > high {
        return Err(format!("{number} is outside {low}-{high}"));
    }
    Ok(number)
}

fn field(text: &str, low: u32, high: u32, names: &[&str], name_base: u32) -> Result<Field, String> {
    let mut allowed = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| format!("bad step in `{item}`"))?;
                if step == 0 {
                    return Err(format!("zero step in `{item}`"));
                }
                (range, step)
            }
            None => (item, 1),
        };
        let (first, last) = if range == "*" {
            (low, high)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, low, high, names, name_base)?, value(b, low, high, names, name_base)?)
        } else {
            let single = value(range, low, high, names, name_base)?;
            if item.contains('/') {
                return Err(format!("`{item}`: a step needs `*` or a range"));
            }
            (single, single)
        };
        if first > last {
            return Err(format!("backwards range `{range}`"));
        }
        for v in (first..=last).step_by(step as usize) {
            allowed |= 1 << v;
        }
    }
    Ok(Field { allowed, star: text.starts_with('*') })
}

/// A parsed expression in a zone.
#[derive(Debug, Clone)]
pub struct Reference {
    tz: Tz,
    seconds: Option<Field>,
    minute: Field,
    hour: Field,
    day_of_month: Field,
    month: Field,
    day_of_week: Field,
}

impl Reference {
    pub fn parse(expression: &str, tz: Tz) -> Result<Reference, String> {
        let parts: Vec<&str> = expression.split_whitespace().collect();
        let (seconds, rest) = match parts.len() {
            5 => (None, &parts[..]),
            6 => (Some(field(parts[0], 0, 59, &[], 0)?), &parts[1..]),
            n => return Err(format!("{n} fields")),
        };
        let day_of_week = field(rest[4], 0, 7, &DAYS, 0)?;
        // 7 is Sunday too.
        let day_of_week =
            Field { allowed: (day_of_week.allowed | (day_of_week.allowed >> 7)) & 0x7f, star: day_of_week.star };
        Ok(Reference {
            tz,
            seconds,
            minute: field(rest[0], 0, 59, &[], 0)?,
            hour: field(rest[1], 0, 23, &[], 0)?,
            day_of_month: field(rest[2], 1, 31, &[], 0)?,
            month: field(rest[3], 1, 12, &MONTHS, 1)?,
            day_of_week,
        })
    }

    /// Wildcard jobs fire on real time; the others are fixed-time.
    fn is_wildcard(&self) -> bool {
        self.minute.star || self.hour.star || self.seconds.is_some_and(|s| s.star)
    }

    /// Whether a wall-clock minute matches minute, hour, month and the day rule: when either day
    /// field starts with `*` both must match, otherwise either (crontab(5)).
    fn matches_minute(&self, wall: NaiveDateTime) -> bool {
        let by_month_day = self.day_of_month.contains(wall.day());
        let by_week_day = self.day_of_week.contains(wall.weekday().num_days_from_sunday());
        let day = if self.day_of_month.star || self.day_of_week.star {
            by_month_day && by_week_day
        } else {
            by_month_day || by_week_day
        };
        day && self.minute.contains(wall.minute())
            && self.hour.contains(wall.hour())
            && self.month.contains(wall.month())
    }

    /// The seconds within a matching minute at which the job fires.
    fn seconds(&self) -> impl Iterator<Item = u32> + '_ {
        (0..60).filter(|s| self.seconds.map_or(*s == 0, |f| f.contains(*s)))
    }

    /// Every fire instant in `(from, to]`, earliest first, on a `clock` walked in this
    /// expression's zone over at least that span.
    pub fn fires_between(&self, clock: &WallClock, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        assert!(clock.tz == self.tz && clock.from <= from && clock.to >= to, "the clock covers the span");
        let mut fires = BTreeSet::new();
        for minute in &clock.minutes {
            if minute.instant > to {
                break;
            }
            if (self.is_wildcard() || minute.first_pass) && self.matches_minute(minute.wall) {
                fires.extend(self.seconds().map(|s| minute.instant + TimeDelta::seconds(i64::from(s))));
            }
            // A fixed-time match among the wall minutes skipped by a jump forward fires at the
            // jump, once.
            if !self.is_wildcard() && minute.skipped.iter().any(|skipped| self.matches_minute(*skipped)) {
                fires.insert(minute.instant);
            }
        }
        fires.into_iter().filter(|fire| *fire > from && *fire <= to).collect()
    }

    /// Every fire instant in `(from, to]`, earliest first.
    pub fn fires(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        self.fires_between(&WallClock::walk(self.tz, from, to), from, to)
    }
}

/// One real minute and what the wall clock showed.
#[derive(Debug, Clone)]
struct Minute {
    instant: DateTime<Utc>,
    wall: NaiveDateTime,
    /// This wall time had not been shown before.
    first_pass: bool,
    /// The wall minutes a jump forward skipped just before this one.
    skipped: Vec<NaiveDateTime>,
}

/// The wall clock of a zone over a span of real time, minute by minute: the expensive part of the
/// oracle, shared by the expressions checked over the same span.
#[derive(Debug, Clone)]
pub struct WallClock {
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    minutes: Vec<Minute>,
}

impl WallClock {
    pub fn walk(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> WallClock {
        let minute = TimeDelta::minutes(1);
        // Start the walk before `from`, so wall times shown before it count as seen: a repeated
        // span is at most two hours long in real zones.
        let start = from - TimeDelta::minutes(150);
        let mut t = DateTime::from_timestamp(start.timestamp() - start.timestamp().rem_euclid(60), 0).unwrap();
        let mut seen: HashSet<NaiveDateTime> = HashSet::new();
        let mut previous_wall: Option<NaiveDateTime> = None;
        let mut minutes = Vec::new();
        while t <= to {
            let wall = t.with_timezone(&tz).naive_local();
            assert_eq!(wall.second(), 0, "offsets of whole minutes only");
            let mut skipped = Vec::new();
            if let Some(previous) = previous_wall {
                let mut missing = previous + minute;
                while missing < wall {
                    skipped.push(missing);
                    missing += minute;
                }
            }
            minutes.push(Minute { instant: t, wall, first_pass: seen.insert(wall), skipped });
            previous_wall = Some(wall);
            t += minute;
        }
        WallClock { tz, from, to, minutes }
    }
}

/// Every instant in `[from, to)` at which `tz` changes its UTC offset, with the offsets before
/// and after (seconds east of UTC). Sampled every few days, then bisected to the second: no zone
/// changes twice within the sampling step.
pub fn transitions(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<(DateTime<Utc>, i64, i64)> {
    use chrono::{Offset, TimeZone};
    let offset = |t: i64| {
        i64::from(
            tz.offset_from_utc_datetime(&DateTime::from_timestamp(t, 0).unwrap().naive_utc()).fix().local_minus_utc(),
        )
    };
    const STEP: i64 = 5 * 86_400;
    let mut found = Vec::new();
    let mut low = from.timestamp();
    while low < to.timestamp() {
        let high = (low + STEP).min(to.timestamp());
        let (before, after) = (offset(low), offset(high));
        if before != after {
            let (mut a, mut b) = (low, high);
            while b - a > 1 {
                let mid = a + (b - a) / 2;
                if offset(mid) == before { a = mid } else { b = mid }
            }
            found.push((DateTime::from_timestamp(b, 0).unwrap(), before, after));
        }
        low = high;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn local(fires: &[DateTime<Utc>], tz: Tz) -> Vec<String> {
        fires.iter().map(|f| f.with_timezone(&tz).to_rfc3339()).collect()
    }

    /// The oracle on cases whose answer crontab users know by heart, so that it is not merely
    /// agreeing with itself.
    #[test]
    fn the_reference_knows_the_cronie_answers() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let sydney: Tz = "Australia/Sydney".parse().unwrap();
        let cases: &[(&str, Tz, &str, &str, &[&str])] = &[
            (
                "*/20 * * * *",
                ny,
                "2026-11-01T04:30:00Z",
                "2026-11-01T06:45:00Z",
                &[
                    "2026-11-01T00:40:00-04:00",
                    "2026-11-01T01:00:00-04:00",
                    "2026-11-01T01:20:00-04:00",
                    "2026-11-01T01:40:00-04:00",
                    "2026-11-01T01:00:00-05:00",
                    "2026-11-01T01:20:00-05:00",
                    "2026-11-01T01:40:00-05:00",
                ],
            ),
            // Fixed time in a repeated hour: the first pass only, ranges and lists included.
            (
                "30 1-3 * * *",
                ny,
                "2026-11-01T04:00:00Z",
                "2026-11-01T09:00:00Z",
                &["2026-11-01T01:30:00-04:00", "2026-11-01T02:30:00-05:00", "2026-11-01T03:30:00-05:00"],
            ),
            // Fixed times in a skipped hour: one fire at the jump, also when 03:00 matches too.
            (
                "15,45 2 * * *",
                berlin,
                "2026-03-28T12:00:00Z",
                "2026-03-30T12:00:00Z",
                &["2026-03-29T03:00:00+02:00", "2026-03-30T02:15:00+02:00", "2026-03-30T02:45:00+02:00"],
            ),
            ("0 2,3 * * *", berlin, "2026-03-28T23:00:00Z", "2026-03-29T03:00:00Z", &["2026-03-29T03:00:00+02:00"]),
            // Wildcard jobs: nothing in the skipped hour.
            (
                "0 * * * *",
                berlin,
                "2026-03-28T23:30:00Z",
                "2026-03-29T02:30:00Z",
                &["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"],
            ),
            // Southern hemisphere fall-back in April, with a 6-field expression.
            (
                "0 0 * * * *",
                sydney,
                "2026-04-04T14:30:00Z",
                "2026-04-04T17:00:00Z",
                &["2026-04-05T02:00:00+11:00", "2026-04-05T02:00:00+10:00", "2026-04-05T03:00:00+10:00"],
            ),
            // Day of month OR day of week when neither starts with `*`; AND otherwise.
            (
                "0 0 1 * MON",
                Tz::UTC,
                "2026-06-01T00:00:00Z",
                "2026-07-02T00:00:00Z",
                &[
                    "2026-06-08T00:00:00+00:00",
                    "2026-06-15T00:00:00+00:00",
                    "2026-06-22T00:00:00+00:00",
                    "2026-06-29T00:00:00+00:00",
                    "2026-07-01T00:00:00+00:00",
                ],
            ),
            (
                "0 0 */2 * 7",
                Tz::UTC,
                "2026-06-01T00:00:00Z",
                "2026-07-31T00:00:00Z",
                &[
                    "2026-06-07T00:00:00+00:00",
                    "2026-06-21T00:00:00+00:00",
                    "2026-07-05T00:00:00+00:00",
                    "2026-07-19T00:00:00+00:00",
                ],
            ),
        ];
        for (expression, tz, from, to, want) in cases {
            let reference = Reference::parse(expression, *tz).unwrap();
            assert_eq!(local(&reference.fires(at(from), at(to)), *tz), *want, "`{expression}` in {tz}");
        }
        assert!(Reference::parse("0 0 L * *", Tz::UTC).is_err());
    }

    #[test]
    fn transitions_are_found_to_the_second() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let found = transitions(ny, at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"));
        assert_eq!(
            found,
            vec![
                (at("2026-03-08T07:00:00Z"), -5 * 3600, -4 * 3600),
                (at("2026-11-01T06:00:00Z"), -4 * 3600, -5 * 3600)
            ]
        );
        assert!(transitions(Tz::UTC, at("2020-01-01T00:00:00Z"), at("2041-01-01T00:00:00Z")).is_empty());
    }
}
