//! Retention: the leader prunes the ledger (its partitions, then its old rows) and the audit
//! trail, a thousand rows at a time, never holding up a claim.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::JobSet;
use crate::leadership::Leadership;
use crate::store::{Retention, Store};
use crate::telemetry::metric;

/// Ledger retention: the leader keeps the ledger's partitions (PostgreSQL: the next days made,
/// the partitions retention has passed dropped or rewritten, `Ledger::keep_partitions`), then
/// deletes finished rows older than their job's `retain` (or `--retain`), a thousand at a time
/// with a pause between batches, so pruning never holds up claims; each batch costs what it
/// deletes (`Ledger::prune_runs`). A cycle that fails is
/// counted (`tenure_ledger_prune_failures_total`, alerted on) and tried again a minute later.
pub(super) async fn prune_ledger(
    store: Store,
    retain: Duration,
    jobs: watch::Receiver<Arc<JobSet>>,
    leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) {
    let every = crate::testing::prune_every().unwrap_or(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = Utc::now();
        let retention = retention(&jobs.borrow(), retain, now);
        let before = retention.default_before;
        let mut pruned = 0;
        if leadership.borrow().is_leader() {
            // Whole partitions first (PostgreSQL): what they give back is not deleted row by row.
            match store.keep_partitions(&retention, now).await {
                Ok(count) => pruned += count,
                Err(error) => {
                    metrics::counter!(metric::PRUNE_FAILURES).increment(1);
                    tracing::warn!(%error, "ledger partition upkeep failed; retrying later");
                }
            }
        }
        let (count, failed) =
            prune_in_batches(&leadership, &shutdown, |batch| store.prune_runs(&retention, batch)).await;
        pruned += count;
        if let Some(error) = failed {
            metrics::counter!(metric::PRUNE_FAILURES).increment(1);
            tracing::warn!(%error, "ledger pruning failed; retrying later");
        }
        if pruned > 0 {
            metrics::counter!(metric::RUNS_PRUNED).increment(pruned);
            tracing::info!(pruned, before = %before, "pruned old ledger rows");
        }
    }
}

/// Audit retention: the leader deletes audit entries older than `--audit-retain`, a thousand at
/// a time (the only way an entry goes).
pub(super) async fn prune_audit(
    store: Store,
    audit_retain: Duration,
    leadership: watch::Receiver<Leadership>,
    shutdown: CancellationToken,
) {
    let every = crate::testing::prune_every().unwrap_or(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(before) =
            chrono::Duration::from_std(audit_retain).ok().and_then(|age| Utc::now().checked_sub_signed(age))
        else {
            continue;
        };
        let (pruned, failed) = prune_in_batches(&leadership, &shutdown, |batch| store.prune_audit(before, batch)).await;
        if let Some(error) = failed {
            tracing::warn!(%error, "audit pruning failed; retrying later");
        }
        if pruned > 0 {
            tracing::info!(pruned, before = %before, "pruned old audit entries");
        }
    }
}

/// Rows deleted per statement, and the pause between two statements: pruning a backlog never
/// holds a lock or a connection long enough to delay a claim.
const BATCH: i64 = 1000;
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// Deletes a batch at a time (`delete` is given the batch size and says how many rows it took)
/// while this replica leads, until a batch comes back short. Returns the rows deleted and the
/// error that stopped it early, if one did; the caller retries at its next cycle.
async fn prune_in_batches<F, Deleted>(
    leadership: &watch::Receiver<Leadership>,
    shutdown: &CancellationToken,
    mut delete: F,
) -> (u64, Option<sqlx::Error>)
where
    F: FnMut(i64) -> Deleted,
    Deleted: Future<Output = Result<u64, sqlx::Error>>,
{
    let mut pruned = 0;
    while leadership.borrow().is_leader() && !shutdown.is_cancelled() {
        match delete(BATCH).await {
            Ok(count) => {
                pruned += count;
                if count < BATCH as u64 {
                    break;
                }
                tokio::time::sleep(BETWEEN_BATCHES).await;
            }
            Err(error) => return (pruned, Some(error)),
        }
    }
    (pruned, None)
}

/// What pruning at `now` deletes: rows older than `retain` (`--retain`), or than their job's
/// own `retain`. A job gone from the file keeps the ledger's retention.
fn retention(jobs: &JobSet, retain: Duration, now: chrono::DateTime<Utc>) -> Retention {
    let before = |retain: Duration| {
        chrono::Duration::from_std(retain)
            .ok()
            .and_then(|age| now.checked_sub_signed(age))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
    };
    Retention {
        default_before: before(retain),
        per_job: jobs.jobs().iter().filter_map(|job| Some((job.name.to_string(), before(job.retain?)))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_takes_each_jobs_own_retain_and_the_ledgers_for_the_rest() {
        let jobs = crate::config::parse(
            "jobs:
  - { name: kept-long, schedule: '@hourly', shell: 'true', retain: 90d }
  - { name: plain, schedule: '@hourly', shell: 'true' }
  - { name: short, schedule: '@hourly', shell: 'true', retain: 1h, starting_deadline: 1h }
",
            "jobs.yaml",
        )
        .unwrap();
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z").unwrap().to_utc();
        let week = retention(&jobs, Duration::from_secs(7 * 86_400), now);
        assert_eq!(week.default_before, now - chrono::Duration::days(7));
        assert_eq!(
            week.per_job,
            [
                ("kept-long".to_owned(), now - chrono::Duration::days(90)),
                ("short".to_owned(), now - chrono::Duration::hours(1)),
            ]
        );
        // A retention too long to subtract keeps everything rather than panic.
        let forever = retention(&jobs, Duration::from_secs(u64::MAX / 4), now);
        assert_eq!(forever.default_before, chrono::DateTime::<Utc>::MIN_UTC);
    }

    /// Leading with term 7, a lease of an hour.
    fn leading() -> Leadership {
        use crate::leadership::{BootInstant, LeaderTerm, LeaseDeadline, NoStartWitness, Term};
        Leadership::Leader(LeaderTerm {
            term: Term::for_tests(7, crate::local::CLUSTER_ID),
            since: Utc::now(),
            lease: LeaseDeadline::new(BootInstant::now() + Duration::from_secs(3600)),
            step_down: CancellationToken::new(),
            starts: Arc::new(NoStartWitness),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn pruning_deletes_a_batch_at_a_time_until_a_short_batch_an_error_or_a_lost_lead() {
        let (lead, leadership) = watch::channel(leading());
        let shutdown = CancellationToken::new();

        // A backlog of 2,500 rows goes in three statements; the third, short, ends the cycle.
        let mut left = 2_500_u64;
        let mut asked = Vec::new();
        let (pruned, failed) = prune_in_batches(&leadership, &shutdown, |batch| {
            asked.push(batch);
            let taken = left.min(batch as u64);
            left -= taken;
            async move { Ok(taken) }
        })
        .await;
        assert_eq!((pruned, failed.is_none(), left), (2_500, true, 0));
        assert_eq!(asked, [BATCH, BATCH, BATCH]);

        // An error stops the cycle with what was deleted before it counted.
        let mut statements = 0;
        let (pruned, failed) = prune_in_batches(&leadership, &shutdown, |batch| {
            statements += 1;
            let answer = if statements < 3 { Ok(batch as u64) } else { Err(sqlx::Error::PoolTimedOut) };
            async move { answer }
        })
        .await;
        assert_eq!((pruned, statements), (2 * BATCH as u64, 3));
        assert!(matches!(failed, Some(sqlx::Error::PoolTimedOut)), "{failed:?}");

        // A replica that loses the lead deletes nothing more, however much is left.
        let mut statements = 0;
        let (pruned, failed) = prune_in_batches(&leadership, &shutdown, |batch| {
            statements += 1;
            lead.send_replace(Leadership::Follower { leader: None });
            async move { Ok(batch as u64) }
        })
        .await;
        assert_eq!((pruned, statements, failed.is_none()), (BATCH as u64, 1, true));
        let (pruned, _) = prune_in_batches(&leadership, &shutdown, |_| async { Ok(1) }).await;
        assert_eq!(pruned, 0, "a follower prunes nothing");

        // Nor does one shutting down.
        lead.send_replace(leading());
        shutdown.cancel();
        let (pruned, _) = prune_in_batches(&leadership, &shutdown, |_| async { Ok(1) }).await;
        assert_eq!(pruned, 0, "a replica shutting down prunes nothing");
    }
}
