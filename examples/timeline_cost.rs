//! What the 24-hour timeline (`/timeline`, `GET /api/timeline`) costs to compute: for job files
//! of hourly, per-minute and per-second jobs (jobs sharing a schedule, and every schedule
//! distinct), prints the jobs, the fires walked and the time of `http::timeline::timeline`.
//! No assertions: figures. Run `cargo run --release --example timeline_cost` (a debug build's
//! figures are several times higher).

use std::collections::HashSet;
use std::time::Instant;

use chrono::Utc;

fn main() -> anyhow::Result<()> {
    let files: Vec<(&str, String)> = vec![
        ("500 hourly, one schedule", file(500, |_| "0 * * * *".to_owned())),
        ("500 per-second, one schedule", file(500, |_| "* * * * * *".to_owned())),
        // Every seconds field a different spelling of "every second": 500 distinct schedules.
        ("500 per-second, all distinct", file(500, |i| format!("{}-59,0-{} * * * * *", i % 60, i % 60))),
        ("500 per-minute, all distinct", file(500, |i| format!("* {}-23,0-{} * * *", i % 24, i % 24))),
        (
            "10,000 mixed, 1,000 distinct",
            file(10_000, |i| match i % 4 {
                0 => format!("{} * * * *", i % 60),
                1 => format!("*/{} * * * *", 1 + i % 30),
                2 => format!("{} {} * * *", i % 60, (i / 60) % 24),
                _ => format!("{} */{} * * * *", i % 60, 1 + i % 10),
            }),
        ),
    ];
    println!("{:<32} {:>7} {:>12} {:>8} {:>10}", "job file", "jobs", "slots", "capped", "time (ms)");
    for (name, yaml) in files {
        let jobs = tenure::config::parse(&yaml, "jobs.yaml").map_err(|e| anyhow::anyhow!("{e}"))?;
        let started = Instant::now();
        let timeline = tenure::http::timeline::timeline(&jobs, &HashSet::new(), Utc::now());
        let took = started.elapsed();
        println!(
            "{name:<32} {:>7} {:>12} {:>8} {:>10.1}",
            timeline.jobs,
            timeline.slots,
            timeline.capped_jobs.len(),
            took.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

fn file(count: usize, schedule: impl Fn(usize) -> String) -> String {
    let mut yaml = String::from("jobs:\n");
    for i in 0..count {
        yaml.push_str(&format!("  - {{ name: job-{i}, schedule: '{}', shell: 'true' }}\n", schedule(i)));
    }
    yaml
}
