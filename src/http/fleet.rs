//! Every job's state as the overview counts, filters and sorts it (`JobState`), read for the whole
//! fleet in one query and shared by every rendering for a while. With 10,000 jobs that query takes
//! longer than a page may (hundreds of milliseconds: index probes for each job), so the overview
//! renders from the newest reading and, once it is older than `FRESH`, starts the next reading in
//! the background instead of making the viewer wait for it. A viewer waits for a reading only when
//! there is none, when it is older than `STALE`, or when the job file changed since (its jobs are
//! not the ones read). At most one reading runs at a time on a replica, however many viewers come.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::overview;
use crate::config::JobSet;
use crate::store::{JobState, Reads};

/// A reading this young is used as it is: the pages refresh themselves every two seconds.
pub const FRESH: Duration = Duration::from_secs(2);

/// A reading older than this is not shown: the viewer waits for a new one.
pub const STALE: Duration = Duration::from_secs(30);

/// One reading of the fleet's states.
pub struct Reading {
    /// When the query began: the states are at least as new as this.
    taken: Instant,
    /// The job set read: a reload makes the reading stale at once.
    jobs: Arc<JobSet>,
    pub states: HashMap<String, JobState>,
}

/// The newest reading and the one-at-a-time guard for the next.
#[derive(Clone, Default)]
pub struct FleetStates {
    newest: Arc<Mutex<Option<Arc<Reading>>>>,
    /// Held while a reading runs, in the background or for a waiting viewer.
    reading: Arc<tokio::sync::Mutex<()>>,
}

/// How a viewer may use the newest reading.
#[derive(Debug, PartialEq, Eq)]
enum Use {
    AsItIs,
    /// Shown now, and the next one started in the background.
    AndRefresh,
    /// Not usable: wait for a new reading.
    Wait,
}

fn usable(reading: Option<&Reading>, jobs: &Arc<JobSet>, now: Instant) -> Use {
    match reading {
        Some(reading) if Arc::ptr_eq(&reading.jobs, jobs) => {
            let age = now.saturating_duration_since(reading.taken);
            if age < FRESH {
                Use::AsItIs
            } else if age < STALE {
                Use::AndRefresh
            } else {
                Use::Wait
            }
        }
        _ => Use::Wait,
    }
}

impl FleetStates {
    fn newest(&self) -> Option<Arc<Reading>> {
        self.newest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn keep(&self, reading: Arc<Reading>) {
        let mut newest = self.newest.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if newest.as_ref().is_none_or(|kept| kept.taken <= reading.taken) {
            *newest = Some(reading);
        }
    }

    /// The states of every job in `jobs`, as recent as the rules above allow.
    pub async fn of(&self, store: &Reads, jobs: &Arc<JobSet>) -> Result<Arc<Reading>, sqlx::Error> {
        let newest = self.newest();
        match usable(newest.as_deref(), jobs, Instant::now()) {
            Use::AsItIs => return Ok(newest.expect("a usable reading exists")),
            Use::AndRefresh => {
                if let Ok(guard) = self.reading.clone().try_lock_owned() {
                    let (fleet, store, jobs) = (self.clone(), store.clone(), jobs.clone());
                    tokio::spawn(async move {
                        match read(&store, &jobs).await {
                            Ok(reading) => fleet.keep(Arc::new(reading)),
                            Err(error) => {
                                tracing::warn!(%error, "reading the fleet's states failed; the overview shows the last reading")
                            }
                        }
                        drop(guard);
                    });
                }
                return Ok(newest.expect("a usable reading exists"));
            }
            Use::Wait => {}
        }
        let _reading = self.reading.lock().await;
        // Another viewer's reading may have finished while this one waited for its turn.
        let newest = self.newest();
        if usable(newest.as_deref(), jobs, Instant::now()) != Use::Wait {
            return Ok(newest.expect("a usable reading exists"));
        }
        let reading = Arc::new(read(store, jobs).await?);
        self.keep(reading.clone());
        Ok(reading)
    }
}

async fn read(store: &Reads, jobs: &Arc<JobSet>) -> Result<Reading, sqlx::Error> {
    let taken = Instant::now();
    let names: Vec<String> = jobs.jobs().iter().map(|job| job.name.as_str().to_owned()).collect();
    let states = store.job_states(&names, Utc::now() - overview::LATE_SINCE, overview::LATE_AFTER).await?;
    Ok(Reading { taken, jobs: jobs.clone(), states })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> Arc<JobSet> {
        Arc::new(
            crate::config::parse("jobs:\n  - { name: a, schedule: '* * * * *', shell: 'true' }\n", "j.yaml").unwrap(),
        )
    }

    fn reading(jobs: &Arc<JobSet>, taken: Instant) -> Reading {
        Reading { taken, jobs: jobs.clone(), states: HashMap::new() }
    }

    #[test]
    fn a_reading_is_used_fresh_then_refreshed_in_the_background_then_waited_for() {
        let jobs = jobs();
        let now = Instant::now() + STALE * 2;
        assert_eq!(usable(None, &jobs, now), Use::Wait);
        assert_eq!(usable(Some(&reading(&jobs, now)), &jobs, now), Use::AsItIs);
        assert_eq!(usable(Some(&reading(&jobs, now - FRESH)), &jobs, now), Use::AndRefresh);
        assert_eq!(usable(Some(&reading(&jobs, now - STALE + Duration::from_millis(1))), &jobs, now), Use::AndRefresh);
        assert_eq!(usable(Some(&reading(&jobs, now - STALE)), &jobs, now), Use::Wait);
    }

    #[test]
    fn a_reloaded_job_file_is_never_shown_with_the_old_files_states() {
        let (old, new) = (jobs(), jobs());
        let now = Instant::now();
        assert_eq!(usable(Some(&reading(&old, now)), &new, now), Use::Wait);
    }
}
