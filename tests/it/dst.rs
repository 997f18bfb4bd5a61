//! Daylight saving against an independent oracle (`cron_reference`): `Schedule::next_after`
//! started before every offset change of every IANA zone from 2020 to 2040, for generated
//! expressions.

use std::time::Instant;

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use tenure::schedule::Schedule;

use crate::cron_reference::{Reference, WallClock, transitions};

/// A small seeded generator (SplitMix64), so a failure names a case that can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u32) as usize]
    }
}

const MONTH_NAMES: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A range `a-b` around `centre` within `low..=high`, sometimes with a step.
fn range_around(rng: &mut Rng, centre: u32, low: u32, high: u32) -> String {
    let a = centre.saturating_sub(rng.below(3)).max(low);
    let b = (centre + rng.below(3)).min(high);
    if rng.chance(25) { format!("{a}-{b}/{}", 1 + rng.below(2)) } else { format!("{a}-{b}") }
}

fn minute_field(rng: &mut Rng) -> String {
    match rng.below(100) {
        0..30 => "*".into(),
        30..55 => format!("*/{}", rng.pick(&[1, 2, 3, 5, 7, 10, 15, 20, 25, 30, 45])),
        55..70 => rng.pick(&[0, 0, 15, 30, 30, 45, 59]).to_string(),
        70..80 => {
            let a = rng.below(50);
            let b = a + 1 + rng.below(59 - a);
            if rng.chance(50) { format!("{a}-{b}/{}", 2 + rng.below(14)) } else { format!("{a}-{b}") }
        }
        _ => {
            let mut items: Vec<u32> = (0..2 + rng.below(3)).map(|_| rng.below(60)).collect();
            items.sort_unstable();
            items.dedup();
            items.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        }
    }
}

/// Hours near the transition (`hours` are the local hours it touches) get most of the weight.
fn hour_field(rng: &mut Rng, hours: &[u32]) -> String {
    match rng.below(100) {
        0..30 => "*".into(),
        30..40 => format!("*/{}", rng.pick(&[1, 2, 3, 5])),
        40..65 => rng.pick(hours).to_string(),
        65..80 => {
            let centre = rng.pick(hours);
            range_around(rng, centre, 0, 23)
        }
        80..95 => {
            let mut items = vec![rng.pick(hours), rng.pick(hours), rng.below(24)];
            items.sort_unstable();
            items.dedup();
            items.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        }
        _ => rng.below(24).to_string(),
    }
}

fn day_of_month_field(rng: &mut Rng, day: u32) -> String {
    match rng.below(100) {
        0..55 => "*".into(),
        55..65 => format!("*/{}", 2 + rng.below(2)),
        65..75 => day.to_string(),
        75..85 => range_around(rng, day, 1, 31),
        85..92 => format!("{},{}", (day % 28) + 1, day),
        _ => (1 + rng.below(28)).to_string(),
    }
}

fn month_field(rng: &mut Rng, month: u32) -> String {
    let name = |m: u32| MONTH_NAMES[m as usize - 1].to_owned();
    match rng.below(100) {
        0..65 => "*".into(),
        65..75 => month.to_string(),
        75..85 => name(month),
        85..93 => format!("{}-{}", month.saturating_sub(1).max(1), (month + 1).min(12)),
        _ => format!("{},{}", name((month % 12) + 1), month),
    }
}

fn day_of_week_field(rng: &mut Rng, weekday: u32) -> String {
    match rng.below(100) {
        0..60 => "*".into(),
        60..70 => {
            if weekday == 0 && rng.chance(50) {
                "7".into()
            } else {
                weekday.to_string()
            }
        }
        70..78 => DAY_NAMES[weekday as usize].to_owned(),
        78..86 => rng.pick(&["MON-FRI", "SAT,SUN", "1-5", "0,6", "5-7", "SUN-WED"]).to_owned(),
        86..93 => format!("*/{}", 2 + rng.below(2)),
        _ => rng.below(8).to_string(),
    }
}

/// Seconds when a 6-field expression is generated: sparse, so a case stays a few hundred fires.
fn second_field(rng: &mut Rng) -> String {
    rng.pick(&["0", "30", "0,30", "*/20", "*/30", "10-40/15", "59"]).to_owned()
}

/// An expression biased towards firing around a transition whose local side is `wall`.
fn expression(rng: &mut Rng, hours: &[u32], wall: chrono::NaiveDateTime) -> String {
    let five = [
        minute_field(rng),
        hour_field(rng, hours),
        day_of_month_field(rng, wall.day()),
        month_field(rng, wall.month()),
        day_of_week_field(rng, wall.weekday().num_days_from_sunday()),
    ]
    .join(" ");
    if rng.chance(15) { format!("{} {five}", second_field(rng)) } else { five }
}

/// What a set of cases exercised, so the test cannot silently stop covering the hard parts.
#[derive(Default, Debug)]
struct Coverage {
    zones: usize,
    transitions: usize,
    cases: usize,
    fires: usize,
    /// Cases with a fire in the second pass of a repeated hour.
    second_pass: usize,
    /// Cases with two or more fires in the first pass of a repeated hour, entered from before it.
    several_in_first_pass: usize,
    /// Cases whose fixed-time job fired at a spring-forward jump.
    at_the_jump: usize,
}

/// Each transition is entered from this many random instants with as many random expressions.
const CASES_PER_TRANSITION: usize = 2;

/// `next_after`, iterated from 0-3 h before every offset change 2020-2040 of every
/// zone, must give exactly the reference's fire times up to an hour past the change.
#[test]
fn next_agrees_with_the_reference_around_every_transition_2020_to_2040() {
    let started = Instant::now();
    let from = DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
    let to = DateTime::parse_from_rfc3339("2041-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
    let mut rng = Rng(13);
    let mut coverage = Coverage::default();
    let mut failures = Vec::new();
    for tz in chrono_tz::TZ_VARIANTS {
        let changes = transitions(tz, from, to);
        coverage.zones += usize::from(!changes.is_empty());
        for (at, before, after) in changes {
            coverage.transitions += 1;
            let shift = TimeDelta::seconds((before - after).abs());
            let horizon = at + shift + TimeDelta::hours(1);
            let clock = WallClock::walk(tz, at - TimeDelta::hours(3) - TimeDelta::seconds(1), horizon);
            for _ in 0..CASES_PER_TRANSITION {
                // Whole minutes, odd seconds, and now and then a fraction of a second.
                let start = at - TimeDelta::seconds(i64::from(rng.below(3 * 3600 + 1)));
                let start =
                    if rng.chance(20) { start - TimeDelta::milliseconds(i64::from(1 + rng.below(999))) } else { start };
                let walls = [start, at - TimeDelta::seconds(1), at, at + shift, horizon]
                    .map(|t| t.with_timezone(&tz).naive_local());
                let mut hours: Vec<u32> = walls.iter().map(|w| w.hour()).collect();
                hours.dedup();
                let wall = walls[rng.below(walls.len() as u32) as usize];
                let expression = expression(&mut rng, &hours, wall);
                coverage.cases += 1;

                let reference = Reference::parse(&expression, tz).unwrap_or_else(|e| panic!("`{expression}`: {e}"));
                let want = reference.fires_between(&clock, start, horizon);
                let schedule =
                    Schedule::parse(&expression, tz).unwrap_or_else(|e| panic!("`{expression}` in {tz}: {e}"));
                let mut got = Vec::new();
                let mut t = start;
                while let Some(next) = schedule.next_after(t) {
                    if next > horizon || got.len() > want.len() {
                        break;
                    }
                    got.push(next);
                    t = next;
                }
                coverage.fires += want.len();
                let repeated = (after < before).then(|| (at - shift, at + shift));
                if let Some((first_pass, second_pass_end)) = repeated {
                    coverage.second_pass += usize::from(want.iter().any(|f| *f >= at && *f < second_pass_end));
                    coverage.several_in_first_pass += usize::from(
                        start < first_pass && want.iter().filter(|f| **f >= first_pass && **f < at).count() >= 2,
                    );
                } else {
                    coverage.at_the_jump += usize::from(want.contains(&at));
                }
                if got != want {
                    // From just before the first difference: `* * * * *` makes long lists.
                    let first = want.iter().zip(&got).take_while(|(w, g)| w == g).count().saturating_sub(2);
                    let show = |fires: &[DateTime<Utc>]| {
                        let shown = fires.iter().skip(first).take(8);
                        let shown: Vec<String> = shown.map(|f| f.with_timezone(&tz).to_rfc3339()).collect();
                        format!("[{first} before] {}", shown.join(" "))
                    };
                    failures.push(format!(
                        "`{expression}` in {tz} from {} (change at {}):\n  reference: {}\n  next:      {}",
                        start.with_timezone(&tz).to_rfc3339(),
                        at.with_timezone(&tz).to_rfc3339(),
                        show(&want),
                        show(&got)
                    ));
                }
            }
        }
    }
    eprintln!("{coverage:?} in {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {} cases disagree with the reference; the first ones:\n{}",
        failures.len(),
        coverage.cases,
        failures.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
    );
    // The generator keeps reaching the cases that went wrong before.
    assert!(coverage.zones > 100 && coverage.second_pass > 1_000, "{coverage:?}");
    assert!(coverage.several_in_first_pass > 500 && coverage.at_the_jump > 500, "{coverage:?}");
}

/// libfaketime moves the wall clock of one process (not its monotonic clock).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A child process killed when dropped, also when the test fails.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tenure dev` with a per-second job in New York, its wall clock starting at `start` (UTC); what it
/// logs goes to `dev.log` in `dir`.
fn dev_from(dir: &std::path::Path, port: u16, start: &str) -> Running {
    let jobs = dir.join("jobs.yaml");
    std::fs::write(
        &jobs,
        "jobs:\n  - name: tick\n    schedule: \"* * * * * *\"\n    timezone: America/New_York\n    command: [\"true\"]\n",
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_tenure"))
        .arg("dev")
        .arg("--jobs")
        .arg(&jobs)
        .arg("--ledger")
        .arg(dir.join("ledger.db"))
        .args(["--admin-token", "tok", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env("LD_PRELOAD", LIBFAKETIME)
        // `@`: the clock starts there and runs; read in the zone of TZ.
        .env("FAKETIME", format!("@{start}"))
        .env("TZ", "UTC")
        .env("DONT_FAKE_MONOTONIC", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("dev.log")).unwrap())
        .spawn()
        .map(Running)
        .expect("start tenure dev")
}

/// The slots in the ledger of job `tick`, earliest first.
async fn ledger_slots(port: u16) -> Vec<DateTime<Utc>> {
    let url = format!("http://127.0.0.1:{port}/api/jobs/tick/runs?limit=500");
    let Ok(answer) = reqwest::get(&url).await else { return Vec::new() };
    let Ok(page) = answer.json::<serde_json::Value>().await else { return Vec::new() };
    let mut slots: Vec<DateTime<Utc>> =
        page["runs"].as_array().into_iter().flatten().filter_map(|run| run["slot"].as_str()?.parse().ok()).collect();
    slots.sort_unstable();
    slots
}

/// On the real firing path: `tenure dev` (SQLite ledger) with its clock set by
/// libfaketime a few seconds before New York's repeated hour begins (01:00 EDT) and before the
/// fall-back itself (01:59:59 EDT -> 01:00 EST) fires a per-second job in exactly the slots
/// `next_after` gives, each once.
#[tokio::test]
async fn tenure_dev_fires_what_next_says_across_a_fall_back() {
    let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let schedule = Schedule::parse("* * * * * *", ny).unwrap();
    // (where the clock starts, the slot the ledger must reach)
    let windows = [("2026-11-01 04:59:52", "2026-11-01T05:00:06Z"), ("2026-11-01 05:59:52", "2026-11-01T06:00:06Z")];
    let mut running = Vec::new();
    for (start, through) in windows {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::harness::free_port();
        let child = dev_from(dir.path(), port, start);
        running.push((dir, port, child, start, through.parse::<DateTime<Utc>>().unwrap()));
    }
    for (dir, port, _, start, through) in &running {
        let reached = crate::harness::wait_until(std::time::Duration::from_secs(60), || async {
            ledger_slots(*port).await.last().is_some_and(|last| last >= through)
        })
        .await;
        let slots: Vec<DateTime<Utc>> = ledger_slots(*port).await.into_iter().filter(|s| s <= through).collect();
        let show =
            |slots: &[DateTime<Utc>]| slots.iter().map(|s| s.with_timezone(&ny).to_rfc3339()).collect::<Vec<_>>();
        assert!(
            reached,
            "clock from {start}: the ledger never reached {through}; it holds {:?}; its replica said:\n{}",
            show(&slots),
            std::fs::read_to_string(dir.path().join("dev.log")).unwrap_or_default()
        );
        let first = slots[0];
        assert!(first < *through - TimeDelta::seconds(8), "clock from {start}: the first slot {first} is too late");
        let expected: Vec<DateTime<Utc>> =
            std::iter::successors(Some(first), |t| schedule.next_after(*t)).take_while(|t| t <= through).collect();
        assert_eq!(show(&slots), show(&expected), "clock from {start}: the ledger against next_after");
    }
}
