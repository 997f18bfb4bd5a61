//! A wall-clock schedule in words that match its fire times, and the warning for a step that
//! does not divide its field.
//!
//! A step restarts at every minute, hour, day or year: `*/45` in the seconds field fires at :00
//! and :45 of each minute, 45 then 15 seconds apart. So a description claims a period ("Every 15
//! seconds", "Every 2 hours, at minute 30") only when the field's values are 0, k, 2k, ... with k
//! dividing the field's range (60, 60, 24); any other set of values is named ("At seconds 0 and
//! 45 of every minute", "At 00:00, 05:00, 10:00, 15:00 and 20:00"). The seconds, minutes, hours
//! and months are told here from the values croner matches; the days (of the month, of the week,
//! `L`, `W`, `#`) are croner's own words, which name days and claim no period.

use std::sync::OnceLock;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// `ALL_BIT` of croner's components: a value matches plainly (not only as `L`, `W` or `#`).
const PLAIN: u8 = 1;

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

const WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// The values of one field, as a description tells them.
#[derive(Debug, PartialEq, Eq)]
enum Values {
    /// Every value of the field.
    All,
    /// 0, k, 2k, ... with k (> 1) dividing the field's range: a true period.
    Every(u16),
    /// Anything else, named.
    Some(Vec<u16>),
}

impl Values {
    fn of(values: Vec<u16>, range: u16) -> Values {
        if values.len() == usize::from(range) {
            return Values::All;
        }
        match values.get(1) {
            Some(&step)
                if step > 1
                    && range % step == 0
                    && values.len() == usize::from(range / step)
                    && values.iter().zip(0..).all(|(value, i)| *value == i * step) =>
            {
                Values::Every(step)
            }
            _ => Values::Some(values),
        }
    }
}

/// `schedule` (a parsed crontab pattern) in words, e.g. "At 02:30", "Every 15 minutes during
/// hours 9-17, on Monday", "At seconds 0 and 45 of every minute".
pub(super) fn describe(cron: &Cron) -> String {
    let pattern = &cron.pattern;
    let time = time_words(
        pattern.seconds.get_set_values(PLAIN),
        pattern.minutes.get_set_values(PLAIN),
        pattern.hours.get_set_values(PLAIN),
    );
    let mut parts = vec![time];
    if let Some(days) = day_words(cron) {
        parts.push(days);
    }
    let months = pattern.months.get_set_values(PLAIN);
    if months.len() < 12 {
        let names = months.iter().map(|m| MONTHS[usize::from(*m) - 1].to_owned()).collect();
        parts.push(format!("in {}", join(names)));
    }
    parts.join(", ")
}

/// The seconds, minutes and hours of a day at which it fires, in words.
fn time_words(seconds: Vec<u16>, minutes: Vec<u16>, hours: Vec<u16>) -> String {
    let single_second = (seconds.len() == 1).then(|| seconds[0]);
    let on_the_minute = single_second == Some(0);
    let (second, minute, hour) = (Values::of(seconds, 60), Values::of(minutes, 60), Values::of(hours, 24));
    // The seconds as the start of a sentence, and the word that ties them to what follows.
    let (seconds_words, tie) = match &second {
        Values::All => ("Every second".to_owned(), "during"),
        Values::Every(k) => (format!("Every {k} seconds"), "during"),
        Values::Some(values) => (format!("At {}", named("second", values)), "of"),
    };
    match (&minute, &hour) {
        (Values::All, Values::All) => match (&second, single_second) {
            (_, Some(0)) => "Every minute".to_owned(),
            (_, Some(s)) => format!("Every minute, at second {s}"),
            (Values::Some(_), None) => format!("{seconds_words} of every minute"),
            _ => seconds_words,
        },
        (Values::Every(k), Values::All) if on_the_minute => format!("Every {k} minutes"),
        (Values::Every(k), Values::All) if single_second.is_some() => {
            format!("Every {k} minutes, at second {}", single_second.unwrap_or(0))
        }
        (Values::Some(values), Values::All) if on_the_minute => {
            format!("At {} past every hour", named("minute", values))
        }
        (_, Values::All) => format!("{seconds_words} {tie} {} past every hour", minutes_words(&minute)),
        (Values::Some(values), Values::Every(k)) if on_the_minute && values.len() == 1 => {
            format!("Every {k} hours, at minute {}", values[0])
        }
        (Values::Some(minute_values), Values::Every(_) | Values::Some(_))
            if hour_count(&hour) * minute_values.len() <= 6 =>
        {
            let hour_values = match &hour {
                Values::Some(values) => values.clone(),
                _ => (0..24).filter(|h| matches!(hour, Values::Every(k) if h % k == 0)).collect(),
            };
            let mut times = Vec::new();
            for h in &hour_values {
                for m in minute_values {
                    times.push(match single_second {
                        Some(s) if s != 0 => format!("{h:02}:{m:02}:{s:02}"),
                        _ => format!("{h:02}:{m:02}"),
                    });
                }
            }
            match single_second {
                Some(_) => format!("At {}", join(times)),
                None => format!("{seconds_words} {tie} {}", join(times)),
            }
        }
        _ => {
            let hours = match &hour {
                Values::Every(k) => format!("every {} hour", ordinal(*k)),
                Values::Some(values) => named("hour", values),
                Values::All => unreachable!("every hour is matched above"),
            };
            match (&minute, on_the_minute) {
                (Values::All, true) => format!("Every minute during {hours}"),
                (Values::Every(k), true) => format!("Every {k} minutes during {hours}"),
                (Values::Some(values), true) => format!("At {} of {hours}", named("minute", values)),
                (Values::All, false) if tie == "during" => format!("{seconds_words} during {hours}"),
                (Values::All, false) => format!("{seconds_words} of every minute during {hours}"),
                _ => format!("{seconds_words} {tie} {} of {hours}", minutes_words(&minute)),
            }
        }
    }
}

fn hour_count(hour: &Values) -> usize {
    match hour {
        Values::All => 24,
        Values::Every(k) => usize::from(24 / k),
        Values::Some(values) => values.len(),
    }
}

/// The minutes as a part of a sentence: "every 2nd minute", "minutes 0 and 45".
fn minutes_words(minute: &Values) -> String {
    match minute {
        Values::All => "every minute".to_owned(),
        Values::Every(k) => format!("every {} minute", ordinal(*k)),
        Values::Some(values) => named("minute", values),
    }
}

/// "second 30", "minutes 0 and 45", "hours 9-17".
fn named(unit: &str, values: &[u16]) -> String {
    let plural = if values.len() == 1 { "" } else { "s" };
    format!("{unit}{plural} {}", numbers(values))
}

/// "0 and 45", "0, 5, 10 and 15", "9-17" (three or more consecutive values as a range).
fn numbers(values: &[u16]) -> String {
    let mut items = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        if j >= i + 2 {
            items.push(format!("{}-{}", values[i], values[j]));
        } else {
            items.extend(values[i..=j].iter().map(u16::to_string));
        }
        i = j + 1;
    }
    join(items)
}

/// "a", "a and b", "a, b and c".
fn join(mut items: Vec<String>) -> String {
    match items.len() {
        0 | 1 => items.pop().unwrap_or_default(),
        _ => {
            let last = items.pop().unwrap_or_default();
            format!("{} and {last}", items.join(", "))
        }
    }
}

fn ordinal(n: u16) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// croner's words for the days ("on day 1 and 15", "on Monday", "on the last day of the
/// month"), without its time of day and months (told here): the pattern with its time made
/// 00:00:00 and every month, described, and "At 00:00" cut off. `None` for every day.
fn day_words(cron: &Cron) -> Option<String> {
    static MIDNIGHT: OnceLock<Cron> = OnceLock::new();
    let midnight = MIDNIGHT.get_or_init(|| {
        CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .build()
            .parse("0 0 0 * * *")
            .expect("a valid pattern")
    });
    let mut days = cron.pattern.clone();
    days.seconds = midnight.pattern.seconds.clone();
    days.minutes = midnight.pattern.minutes.clone();
    days.hours = midnight.pattern.hours.clone();
    days.months = midnight.pattern.months.clone();
    let words = days.describe();
    let words = words.trim_end_matches('.').strip_prefix("At 00:00")?.strip_prefix(", ")?;
    // croner writes "Monday, Tuesday, and Friday"; the rest of the description has no comma
    // before "and".
    Some(words.replace(", and ", " and "))
}

/// A step in `field` (the field's text, `*/45`) that does not divide the field's range: the
/// values it fires at restart every minute, hour, day, week or year.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnevenStep {
    /// The term with the step, as written (`*/45`), and its char offset in the expression.
    pub term: String,
    pub offset: usize,
    /// What it says, in a sentence: the field, when it fires, how far apart, and the `@every`
    /// form with the period meant (when the field's unit is fixed).
    pub message: String,
}

/// The fields of a crontab line (seconds first when 6): name, unit, range start, range size and
/// the `@every` unit (none for months, which vary in length).
const FIELDS: [(&str, &str, u16, u16, Option<&str>); 6] = [
    ("second", "second", 0, 60, Some("s")),
    ("minute", "minute", 0, 60, Some("m")),
    ("hour", "hour", 0, 24, Some("h")),
    ("day-of-month", "day", 1, 31, None),
    ("month", "month", 1, 12, None),
    ("day-of-week", "day", 0, 7, Some("d")),
];

/// Every step of a crontab line (`fields`, macros expanded) that does not divide its field's
/// range (`*/45`, `5/45`; not `0-30/15`, whose range the user chose). Day-of-month steps are
/// left alone: no step divides months of 28 to 31 days.
pub(super) fn uneven_steps(expression: &str, fields: &[&str]) -> Vec<UnevenStep> {
    let kinds = if fields.len() == 6 { &FIELDS[..] } else { &FIELDS[1..] };
    let mut found = Vec::new();
    let mut search_from = 0;
    for (text, &(field, unit, start, range, every)) in fields.iter().zip(kinds) {
        let field_offset = expression[search_from..].find(text).map_or(0, |at| at + search_from);
        search_from = field_offset + text.len();
        if field == "day-of-month" {
            continue;
        }
        let mut term_offset = field_offset;
        for term in text.split(',') {
            let here = term_offset;
            term_offset += term.len() + 1;
            let Some((base, step)) = term.split_once('/') else { continue };
            let Ok(step) = step.parse::<u16>() else { continue };
            let first = match base {
                "*" => start,
                _ => match base.split_once('-') {
                    Some((low, high)) if low.parse() == Ok(start) && high.parse() == Ok(start + range - 1) => start,
                    Some(_) => continue,
                    None => match base.parse::<u16>() {
                        Ok(first) => first,
                        Err(_) => continue,
                    },
                },
            };
            if step <= 1 || step >= range || range % step == 0 {
                continue;
            }
            let values: Vec<u16> = (first..start + range).step_by(usize::from(step)).collect();
            let (Some(&low), Some(&high)) = (values.first(), values.last()) else { continue };
            let wrap = low + range - high;
            let parent = match field {
                "second" => "minute",
                "minute" => "hour",
                "hour" => "day",
                "month" => "year",
                _ => "week",
            };
            let fires = match field {
                "month" => {
                    format!("in {}", join(values.iter().map(|m| MONTHS[usize::from(*m) - 1].to_owned()).collect()))
                }
                "day-of-week" => {
                    format!("on {}", join(values.iter().map(|d| WEEKDAYS[usize::from(*d) % 7].to_owned()).collect()))
                }
                _ => format!("at {} of every {parent}", named(unit, &values)),
            };
            let apart = if values.len() > 1 {
                format!("{step} {unit}s apart, then {wrap} from the last to the first of the next {parent}")
            } else {
                format!("once a {parent}")
            };
            let meant = match every {
                Some(suffix) => format!("; for a fire every {step} {unit}s write `@every {step}{suffix}`"),
                None => String::new(),
            };
            // A term is short; a hostile file's (`*/000…045`) is cut for the message.
            let term: String = term.chars().take(24).collect();
            found.push(UnevenStep {
                offset: here,
                message: format!(
                    "`{term}` in the {field} field: the step does not divide {range}, so it restarts every {parent}: \
                     fires {fires} ({apart}), not every {step} {unit}s{meant}"
                ),
                term,
            });
        }
    }
    found
}
