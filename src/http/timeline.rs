//! What comes: a job's next fire times in its zone and in UTC ([`upcoming`]), and the next 24
//! clock hours of every job's slots ([`timeline`]): counted per hour, with the minutes where most
//! jobs fire at once. Pure: the caller passes the job file, the paused jobs and the instant.
//!
//! Bounded whatever the file: per distinct schedule (jobs sharing one are walked once) at most
//! [`HOUR_CAP`] fires are walked in each hour, so 500 per-second jobs cost 24 x 61 steps each,
//! not 86,400. A job past the cap in an hour fires all through it, a background rather than a
//! cluster: it is counted apart there (`over_cap`, the job named in `capped_jobs`) and left out
//! of the hour's slots and of the minute counts, so the bars show where the other slots bunch.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Serialize;

use crate::config::JobSet;
use crate::schedule::Schedule;

/// How many fire times a job page lists, and the most the API gives at once.
pub const UPCOMING: usize = 10;
pub const MAX_UPCOMING: usize = 100;
/// The timeline's span, in clock hours from the current one.
pub const HOURS: usize = 24;
/// The most fires of one schedule counted in one hour.
pub const HOUR_CAP: u64 = 60;
/// How many minutes the timeline lists, and how many job names each shows.
const BUSIEST: usize = 10;
const NAMED: usize = 5;

/// One fire time, in the job's zone (RFC 3339 with its offset) and in UTC.
#[derive(Debug, Clone, Serialize)]
pub struct Fire {
    pub local: String,
    pub utc: DateTime<Utc>,
}

/// The first `count` fire times of `schedule` strictly after `now` (fewer when it ends).
pub fn upcoming(schedule: &Schedule, now: DateTime<Utc>, count: usize) -> Vec<Fire> {
    let zone = schedule.timezone();
    let mut fires = Vec::with_capacity(count);
    let mut after = now;
    while fires.len() < count {
        let Some(next) = schedule.next_after(after) else { break };
        fires.push(Fire { local: next.with_timezone(&zone).to_rfc3339(), utc: next });
        after = next;
    }
    fires
}

/// The next 24 clock hours of slots.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    /// The start of the current clock hour (UTC), and 24 hours later.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Jobs counted, and jobs left out because they are paused.
    pub jobs: usize,
    pub paused: usize,
    /// Every slot of the jobs within the cap in their hour.
    pub slots: u64,
    /// Whether some job fires more than `hour_cap` times in some hour.
    pub capped: bool,
    pub hour_cap: u64,
    /// The jobs counted to the cap somewhere, by name.
    pub capped_jobs: Vec<String>,
    pub hours: Vec<Hour>,
    /// The minutes with the most slots (jobs counted to the cap left out), most first.
    pub busiest_minutes: Vec<Minute>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hour {
    pub start: DateTime<Utc>,
    /// Slots in the hour of the jobs firing at most `hour_cap` times in it.
    pub slots: u64,
    /// How many jobs fire in it, those past the cap included.
    pub jobs: usize,
    /// How many jobs fire more than `hour_cap` times in it (not in `slots`).
    pub over_cap: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Minute {
    pub start: DateTime<Utc>,
    pub slots: u64,
    /// The first jobs firing in it, by name, and how many more.
    pub jobs: Vec<String>,
    pub more: usize,
}

/// One schedule's slots in the window: per hour (count, past the cap: then the count is 0), and
/// per minute of the window (hours past the cap left out).
struct Counts {
    hours: [(u64, bool); HOURS],
    minutes: BTreeMap<u32, u64>,
}

fn count(schedule: &Schedule, from: DateTime<Utc>) -> Counts {
    let mut counts = Counts { hours: [(0, false); HOURS], minutes: BTreeMap::new() };
    let mut next = schedule.next_after(from - TimeDelta::seconds(1));
    for hour in 0..HOURS {
        let end = from + TimeDelta::hours(hour as i64 + 1);
        let mut minutes = Vec::new();
        while let Some(at) = next.filter(|at| *at < end) {
            if counts.hours[hour].0 == HOUR_CAP {
                counts.hours[hour].1 = true;
                // The rest of this hour is not walked: on from its end.
                next = schedule.next_after(end - TimeDelta::seconds(1));
                break;
            }
            counts.hours[hour].0 += 1;
            minutes.push(((at - from).num_minutes()) as u32);
            next = schedule.next_after(at);
        }
        if counts.hours[hour].1 {
            counts.hours[hour].0 = 0;
        } else {
            for minute in minutes {
                *counts.minutes.entry(minute).or_default() += 1;
            }
        }
    }
    counts
}

/// The timeline of `jobs` from the clock hour of `now`; `paused`: the jobs paused now (by the
/// file or an operator), left out.
pub fn timeline(jobs: &JobSet, paused: &HashSet<String>, now: DateTime<Utc>) -> Timeline {
    let from = now.duration_trunc(TimeDelta::hours(1)).unwrap_or(now);
    let mut by_schedule: HashMap<(&str, chrono_tz::Tz), Counts> = HashMap::new();
    let mut counted = Vec::new();
    for job in jobs.jobs() {
        if paused.contains(job.name.as_str()) {
            continue;
        }
        let key = (job.schedule.expression(), job.schedule.timezone());
        by_schedule.entry(key).or_insert_with(|| count(&job.schedule, from));
        counted.push((job.name.as_str(), key));
    }
    let mut hours: Vec<Hour> = (0..HOURS)
        .map(|hour| Hour { start: from + TimeDelta::hours(hour as i64), slots: 0, jobs: 0, over_cap: 0 })
        .collect();
    let mut minutes: BTreeMap<u32, u64> = BTreeMap::new();
    let mut capped_jobs = Vec::new();
    for (name, key) in &counted {
        let counts = &by_schedule[key];
        for (hour, &(slots, capped)) in hours.iter_mut().zip(&counts.hours) {
            hour.slots += slots;
            hour.jobs += usize::from(slots > 0 || capped);
            hour.over_cap += usize::from(capped);
        }
        if counts.hours.iter().any(|(_, capped)| *capped) {
            capped_jobs.push((*name).to_owned());
        }
        for (minute, slots) in &counts.minutes {
            *minutes.entry(*minute).or_default() += slots;
        }
    }
    let mut busiest: Vec<(u32, u64)> = minutes.into_iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    busiest.truncate(BUSIEST);
    let busiest_minutes = busiest
        .into_iter()
        .map(|(minute, slots)| {
            let firing: Vec<&str> = counted
                .iter()
                .filter(|(_, key)| by_schedule[key].minutes.contains_key(&minute))
                .map(|(name, _)| *name)
                .collect();
            Minute {
                start: from + TimeDelta::minutes(i64::from(minute)),
                slots,
                jobs: firing.iter().take(NAMED).map(|name| (*name).to_owned()).collect(),
                more: firing.len().saturating_sub(NAMED),
            }
        })
        .collect();
    Timeline {
        from,
        to: from + TimeDelta::hours(HOURS as i64),
        jobs: counted.len(),
        paused: jobs.jobs().len() - counted.len(),
        slots: hours.iter().map(|hour| hour.slots).sum(),
        capped: !capped_jobs.is_empty(),
        hour_cap: HOUR_CAP,
        capped_jobs,
        hours,
        busiest_minutes,
    }
}
