//! Cron maths: parse a schedule expression in a time zone and compute fire times. Pure: no IO,
//! no clock reads; the caller passes every instant in.
//!
//! croner matches the fields; this module owns everything crontab users expect that croner does
//! differently:
//! - day-of-month and day-of-week are ANDed when either field starts with `*` (croner ORs
//!   whenever neither is a bare `*`);
//! - the daylight-saving rules of cronie, applied here on croner's *wall-clock* matches. A job is
//!   *fixed-time* when neither its minute nor its hour field (nor its second field, when given)
//!   starts with `*`, so `30 1-3 * * *` and `15 2,3 * * *` are fixed-time; otherwise it is a
//!   *wildcard* job.
//!   - A wildcard job fires on real elapsed time: at every instant whose wall time matches. In a
//!     repeated hour that is every matching time of both passes (`*/20 * * * *` in New York on
//!     2026-11-01: 01:00, 01:20, 01:40 at -04:00, then again at -05:00); in a skipped hour,
//!     nothing.
//!   - A fixed-time job fires at a matching wall time only the first time the wall clock shows it:
//!     in a repeated hour, on the first pass only.
//!   - A fixed-time job whose wall times fall in a skipped hour fires once, at the instant the
//!     clocks jump (`30 2 * * *` in Berlin on 2026-03-29 fires at 03:00+02:00). Several skipped
//!     matches (`15,45 2 * * *`), and a match at the jump's own wall time (`0 2,3 * * *`), are one
//!     fire: a slot is its instant, and every skipped time stands for the same one.
//! - `@every <duration>` is an interval anchored to the Unix epoch, so every replica computes the
//!   same slots without shared state.
//!
//! A job may have several expressions ([`Schedule::union`]): its fire times are theirs merged in
//! time order, two expressions that fall on the same instant making one fire (a slot is its
//! instant). [`jitter_offset`] is the deterministic delay a job's `jitter` gives one slot.
//! `words` says a schedule in words that match its fire times, and finds the steps that do not
//! divide their field (`*/45` in minutes), which `tenure validate` warns about.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Datelike, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

mod words;

pub use words::UnevenStep;

/// Why an expression or time zone was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid schedule `{expression}`: {reason}")]
    Invalid { expression: String, reason: String },
    #[error("schedule `{0}` can never fire")]
    NeverFires(String),
    #[error("unknown time zone `{0}`: expected an IANA name such as Europe/Berlin or UTC")]
    UnknownTimeZone(String),
}

/// What a schedule expression fires on.
#[derive(Debug, Clone)]
enum Kind {
    /// Wall-clock fields, matched in the job's zone.
    Cron { cron: Arc<Cron>, fixed_time: bool },
    /// Every `seconds`, anchored to the Unix epoch.
    Every { seconds: i64 },
}

/// A validated schedule in a time zone: one expression, or several merged.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The expressions as written, joined by [`Schedule::SEPARATOR`] when there are several.
    expression: String,
    expressions: Vec<String>,
    timezone: Tz,
    kinds: Vec<Kind>,
}

/// The widest daylight-saving shift considered when looking for repeated wall-clock times. Real
/// zones shift by 30 minutes to 2 hours.
const MAX_SHIFT: TimeDelta = TimeDelta::hours(3);

impl Schedule {
    /// Parse `expression` (5-field crontab, 6 fields with seconds first, a `@daily`-style macro or
    /// `@every 30s`) to be evaluated in `timezone`.
    pub fn parse(expression: &str, timezone: Tz) -> Result<Schedule, ScheduleError> {
        let trimmed = expression.trim();
        let invalid = |reason: String| ScheduleError::Invalid { expression: expression.to_owned(), reason };
        let kind = if let Some(interval) = trimmed.strip_prefix("@every") {
            let interval = interval.trim();
            let duration = humantime::parse_duration(interval)
                .map_err(|e| invalid(format!("`{interval}` is not a duration such as 30s or 5m ({e})")))?;
            if duration < Duration::from_secs(1) || duration.subsec_nanos() != 0 {
                return Err(invalid("an @every interval must be a whole number of seconds, at least 1s".into()));
            }
            let seconds = i64::try_from(duration.as_secs()).map_err(|_| invalid("interval too long".into()))?;
            Kind::Every { seconds }
        } else {
            let fields = expand_macro(trimmed).map_err(invalid)?;
            let parts: Vec<&str> = fields.split_whitespace().collect();
            if parts.len() != 5 && parts.len() != 6 {
                return Err(invalid(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, \
                     a macro such as @daily, or `@every 30s`; found {} field(s)",
                    parts.len()
                )));
            }
            let (seconds, rest) = if parts.len() == 6 { (Some(parts[0]), &parts[1..]) } else { (None, &parts[..]) };
            let (minute, hour, dom, dow) = (rest[0], rest[1], rest[2], rest[4]);
            // crontab(5): when either day field starts with `*`, both must match.
            let dom_and_dow = dom.starts_with('*') || dow.starts_with('*');
            let cron = compile(&fields, seconds.is_some(), dom_and_dow)
                .map_err(|e| invalid(field_reason(&parts, &croner_reason(&e))))?
                .ok_or_else(|| ScheduleError::NeverFires(expression.to_owned()))?;
            let fixed_time =
                !minute.starts_with('*') && !hour.starts_with('*') && !seconds.is_some_and(|s| s.starts_with('*'));
            Kind::Cron { cron, fixed_time }
        };
        let schedule = Schedule {
            expression: trimmed.to_owned(),
            expressions: vec![trimmed.to_owned()],
            timezone,
            kinds: vec![kind],
        };
        Ok(schedule)
    }

    /// No fire time at all, in `timezone`: the schedule of a job that runs only after other jobs
    /// (`after:` without `schedule:`). Its expression is empty.
    pub fn never(timezone: Tz) -> Schedule {
        Schedule { expression: String::new(), expressions: Vec::new(), timezone, kinds: Vec::new() }
    }

    /// Whether it fires at all (`Schedule::never` does not).
    pub fn fires(&self) -> bool {
        !self.kinds.is_empty()
    }

    /// How `expression` joins several expressions (no expression contains it).
    pub const SEPARATOR: &str = " | ";

    /// One schedule firing whenever any of `parts` fires (all in one zone, the first's). `None`
    /// for no parts.
    pub fn union(parts: Vec<Schedule>) -> Option<Schedule> {
        let mut parts = parts.into_iter();
        let mut union = parts.next()?;
        for part in parts {
            union.expressions.extend(part.expressions);
            union.kinds.extend(part.kinds);
        }
        union.expression = union.expressions.join(Self::SEPARATOR);
        Some(union)
    }

    /// The first fire time strictly after `after`, or `None` if there is none: the earliest of
    /// every expression's, so equal instants are one fire.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.kinds.iter().filter_map(|kind| kind.next_after(self.timezone, after)).min()
    }

    /// The schedule in English words that match its fire times, e.g. "At 02:30", "Every 15
    /// minutes during hours 9-17", "At seconds 0 and 45 of every minute" (several joined by
    /// "; "). A period is claimed only where the fire times keep it (see `words`).
    pub fn describe(&self) -> String {
        if !self.fires() {
            return "Only after the jobs it waits for".to_owned();
        }
        let words: Vec<String> = self.kinds.iter().map(Kind::describe).collect();
        words.join("; ")
    }

    /// Every step that does not divide its field's range (`*/45` in minutes fires at :00 and :45
    /// of each hour), with the index of its expression in [`Schedule::expressions`]: what
    /// `tenure validate` and a reload warn about. The schedule fires as written all the same.
    pub fn uneven_steps(&self) -> Vec<(usize, UnevenStep)> {
        let mut found = Vec::new();
        for (index, (expression, kind)) in self.expressions.iter().zip(&self.kinds).enumerate() {
            if let Kind::Cron { .. } = kind {
                let fields: Vec<&str> = expression.split_whitespace().collect();
                found.extend(words::uneven_steps(expression, &fields).into_iter().map(|step| (index, step)));
            }
        }
        found
    }

    /// The expression as written, or the expressions joined by [`Schedule::SEPARATOR`].
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Each expression as written.
    pub fn expressions(&self) -> &[String] {
        &self.expressions
    }

    pub fn timezone(&self) -> Tz {
        self.timezone
    }
}

impl Kind {
    fn next_after(&self, timezone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Kind::Every { seconds } => {
                let now = after.timestamp();
                let next = now.div_euclid(*seconds).checked_add(1)?.checked_mul(*seconds)?;
                DateTime::from_timestamp(next, 0)
            }
            Kind::Cron { cron, fixed_time } => next_cron(cron, *fixed_time, timezone, after),
        }
    }

    fn describe(&self) -> String {
        match self {
            Kind::Every { seconds } => {
                format!("Every {}", humantime::format_duration(Duration::from_secs(*seconds as u64)))
            }
            Kind::Cron { cron, .. } => words::describe(cron),
        }
    }
}

/// The delay `jitter` gives `job`'s run of `slot`: a whole number of milliseconds in
/// `[0, window)`, the same on every replica and in every release, so a failover does not move a
/// run. FNV-1a (64 bits) of the job's name, a zero byte and the slot's microseconds
/// (little-endian), mixed by MurmurHash3's finaliser: a fixed algorithm, unlike `std`'s `DefaultHasher`, whose output may change
/// between Rust releases. Jobs sharing an expression are spread over the window.
pub fn jitter_offset(job: &str, slot: DateTime<Utc>, window: Duration) -> Duration {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0100_0000_01b3;
    let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    if window_ms == 0 {
        return Duration::ZERO;
    }
    let micros = slot.timestamp_micros().to_le_bytes();
    let bytes = job.as_bytes().iter().chain(&[0]).chain(&micros).copied();
    let hash = bytes.fold(FNV_OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME));
    // MurmurHash3's finaliser: FNV's low bits follow its last bytes closely; this spreads them
    // over the whole window.
    let mut mixed = hash ^ (hash >> 33);
    mixed = mixed.wrapping_mul(0xff51_afd7_ed55_8ccd);
    mixed ^= mixed >> 33;
    mixed = mixed.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    mixed ^= mixed >> 33;
    Duration::from_millis(mixed % window_ms)
}

/// Parse an IANA time zone name. Abbreviations (`CET`, `EST`) and fixed offsets are refused
/// because they do not say which daylight-saving rules apply; `UTC` is accepted.
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    let unknown = || ScheduleError::UnknownTimeZone(name.to_owned());
    let is_iana = name == "UTC" || name.contains('/');
    if !is_iana {
        return Err(unknown());
    }
    name.parse().map_err(|_| unknown())
}

/// `@yearly` and friends as the crontab lines Vixie cron expands them to. `@reboot` has no slot
/// identity, so it is refused.
fn expand_macro(expression: &str) -> Result<String, String> {
    if !expression.starts_with('@') {
        return Ok(expression.to_owned());
    }
    let fields = match expression.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        other => {
            return Err(format!(
                "unknown macro `{other}`: expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, \
                 @hourly or `@every <duration>`"
            ));
        }
    };
    Ok(fields.to_owned())
}

/// Parse wall-clock fields with croner, once per distinct pattern: jobs share the result. A
/// croner `Cron` holds a byte per possible year (about 10 KB), so 100,000 jobs each with their
/// own would need a gigabyte. `Ok(None)`: the pattern never fires.
fn compile(fields: &str, seconds: bool, dom_and_dow: bool) -> Result<Option<Arc<Cron>>, croner::errors::CronError> {
    type Compiled = HashMap<(String, bool), Option<Arc<Cron>>>;
    static COMPILED: OnceLock<Mutex<Compiled>> = OnceLock::new();
    let cache = COMPILED.get_or_init(Mutex::default);
    let key = (fields.to_owned(), dom_and_dow);
    if let Some(found) = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&key) {
        return Ok(found.clone());
    }
    let cron = CronParser::builder()
        .seconds(if seconds { Seconds::Required } else { Seconds::Disallowed })
        .year(Year::Disallowed)
        .dom_and_dow(dom_and_dow)
        .build()
        .parse(fields)?;
    // Four centuries cover every calendar combination (the Gregorian cycle is 400 years), so a
    // pattern without a match from here on never fires.
    let from =
        NaiveDateTime::new(chrono::NaiveDate::from_ymd_opt(2000, 1, 1).expect("valid date"), chrono::NaiveTime::MIN);
    let fires = matches!(cron.find_next_occurrence(&from, true), Ok(found) if found.year() < 2400);
    let compiled = fires.then(|| Arc::new(cron));
    let mut cache = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Bounded: a process that sees this many distinct patterns starts over rather than grow.
    if cache.len() >= 200_000 {
        cache.clear();
    }
    cache.insert(key, compiled.clone());
    Ok(compiled)
}

/// croner says what is wrong but not where ("Number out of bounds."). Find the field at fault by
/// parsing each one alone, the others wildcards, and name it with its allowed values.
fn field_reason(parts: &[&str], reason: &str) -> String {
    const FIELDS: [(&str, &str); 6] = [
        ("second", "0-59"),
        ("minute", "0-59"),
        ("hour", "0-23"),
        ("day-of-month", "1-31, L, W"),
        ("month", "1-12 or JAN-DEC"),
        ("day-of-week", "0-7 or SUN-SAT, #, L"),
    ];
    let named = if parts.len() == 6 { &FIELDS[..] } else { &FIELDS[1..] };
    let reason = reason.trim_end_matches('.');
    for (index, (name, allowed)) in named.iter().enumerate() {
        let alone: Vec<&str> = (0..parts.len()).map(|i| if i == index { parts[i] } else { "*" }).collect();
        let parser = CronParser::builder()
            .seconds(if parts.len() == 6 { Seconds::Required } else { Seconds::Disallowed })
            .year(Year::Disallowed)
            .build();
        if parser.parse(&alone.join(" ")).is_err() {
            return format!("{name} field `{}`: {reason}; expected {allowed}", parts[index]);
        }
    }
    reason.to_owned()
}

fn croner_reason(error: &croner::errors::CronError) -> String {
    use croner::errors::CronError;
    match error {
        CronError::EmptyPattern => "the expression is empty".to_owned(),
        CronError::InvalidPattern(s) | CronError::IllegalCharacters(s) | CronError::ComponentError(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The first instant strictly after `after` at which a wall-clock pattern fires in `tz`.
///
/// croner walks wall-clock time, and wall-clock order is real-time order except across a
/// fall-back, where the wall clock runs the repeated hour twice. So the answer is the earliest of:
/// - the *walk*: wall-clock matches from `after`'s own wall time on, each turned into its instants
///   by the daylight-saving rules, up to the first that has one after `after`;
/// - the *second pass of earlier wall times* (wildcard jobs): when `after` lies in, or just before,
///   the first pass of a repeated hour, wall times at or before its own come round again;
/// - the *first pass of later wall times*: when the walk's instant lies after a fall-back (in the
///   second pass, or just beyond), later wall times of the first pass, before the fall-back, come
///   first. Without this a job firing several times an hour jumped from its first fire in the
///   repeated hour straight to the second pass.
fn next_cron(cron: &Cron, fixed_time: bool, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local_after = after.with_timezone(&tz).naive_local();
    let walked = walk(cron, fixed_time, tz, after, local_after);
    let earlier_walls_again =
        if fixed_time { None } else { second_pass_of_earlier_walls(cron, tz, after, local_after) };
    let later_walls_first =
        walked.and_then(|(wall, instant)| first_pass_of_later_walls(cron, tz, after, wall, instant));
    [walked.map(|(_, instant)| instant), earlier_walls_again, later_walls_first].into_iter().flatten().min()
}

/// The first wall-clock match at or after `local_after` with an instant after `after`, and that
/// instant (the earliest of its instants after `after`).
fn walk(
    cron: &Cron,
    fixed_time: bool,
    tz: Tz,
    after: DateTime<Utc>,
    local_after: NaiveDateTime,
) -> Option<(NaiveDateTime, DateTime<Utc>)> {
    let mut wall = cron.find_next_occurrence(&local_after, true).ok()?;
    // Bounded: the matches passed over lie in a gap or before `after` in a repeated hour, at most
    // two hours of seconds.
    for _ in 0..10_000 {
        if let Some(instant) = instants(tz, wall, fixed_time).into_iter().find(|instant| *instant > after) {
            return Some((wall, instant));
        }
        wall = cron.find_next_occurrence(&wall, false).ok()?;
    }
    None
}

/// When a fall-back follows `after` closely enough to repeat wall times at or before
/// `local_after`: the first of them that matches, in its second pass.
fn second_pass_of_earlier_walls(
    cron: &Cron,
    tz: Tz,
    after: DateTime<Utc>,
    local_after: NaiveDateTime,
) -> Option<DateTime<Utc>> {
    let transition = fall_back_within(tz, after, after + MAX_SHIFT)?;
    let new_offset = offset_at(tz, transition);
    let repeat_start = transition.naive_utc() + new_offset;
    if repeat_start > local_after {
        return None;
    }
    let wall = cron.find_next_occurrence(&repeat_start, true).ok()?;
    (wall <= local_after).then(|| (wall - new_offset).and_utc())
}

/// When the walk's `instant` (of wall time `wall`) follows a fall-back that itself follows
/// `after`: the first matching wall time after `wall` still in the first pass, before the
/// fall-back, and after `after`. First passes fire for fixed-time and wildcard jobs alike.
fn first_pass_of_later_walls(
    cron: &Cron,
    tz: Tz,
    after: DateTime<Utc>,
    wall: NaiveDateTime,
    instant: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let transition = fall_back_within(tz, after.max(instant - MAX_SHIFT), instant)?;
    let old_offset = offset_at(tz, transition - TimeDelta::seconds(1));
    let first_pass_end = transition.naive_utc() + old_offset;
    let from = wall.max(after.naive_utc() + old_offset);
    let later = cron.find_next_occurrence(&from, false).ok()?;
    let fires = (later - old_offset).and_utc();
    (later < first_pass_end && fires > after).then_some(fires)
}

/// The instants at which a wall-clock match fires, earliest first, per the daylight-saving rules.
fn instants(tz: Tz, wall: NaiveDateTime, fixed_time: bool) -> Vec<DateTime<Utc>> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
        LocalResult::Ambiguous(first, _) if fixed_time => vec![first.with_timezone(&Utc)],
        LocalResult::Ambiguous(first, second) => {
            vec![first.with_timezone(&Utc), second.with_timezone(&Utc)]
        }
        // Skipped by a jump forward: a fixed-time job fires right after the jump.
        LocalResult::None if fixed_time => jump_after(tz, wall).into_iter().collect(),
        LocalResult::None => Vec::new(),
    }
}

fn offset_at(tz: Tz, instant: DateTime<Utc>) -> TimeDelta {
    TimeDelta::seconds(i64::from(tz.offset_from_utc_datetime(&instant.naive_utc()).fix().local_minus_utc()))
}

/// The first instant whose wall-clock time is at or after `wall`, which lies in a gap.
fn jump_after(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let at_or_after =
        |t: i64| DateTime::from_timestamp(t, 0).is_some_and(|i| i.with_timezone(&tz).naive_local() >= wall);
    // Offsets stay within a day of UTC, so the jump lies within a day of the wall-clock time.
    let centre = wall.and_utc().timestamp();
    first_second(centre - 86_400, centre + 86_400, at_or_after)
}

/// The instant in `(from, to]` at which `tz` turns its clocks back, if any.
fn fall_back_within(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let before = offset_at(tz, from);
    if offset_at(tz, to) >= before {
        return None;
    }
    let turned = |t: i64| DateTime::from_timestamp(t, 0).is_some_and(|i| offset_at(tz, i) < before);
    first_second(from.timestamp(), to.timestamp(), turned)
}

/// The first whole second in `(low, high]` for which `past` holds, given that `past` is false at
/// `low`, true at `high` and flips once in between.
fn first_second(mut low: i64, mut high: i64, past: impl Fn(i64) -> bool) -> Option<DateTime<Utc>> {
    if past(low) || !past(high) {
        return None;
    }
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if past(mid) { high = mid } else { low = mid }
    }
    DateTime::from_timestamp(high, 0)
}

#[cfg(test)]
mod tests;
