//! How far ahead of its slot a run is claimed and started (its lead times), learned from this
//! replica's own statements. Not to be confused with leading (holding a term).

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest a run is claimed, or its start recorded, ahead of its slot.
const MAX_LEAD: Duration = Duration::from_secs(1);

/// How far ahead of its slot a run is claimed and started, so that nothing is left to the
/// database when the slot comes: the run's task wakes at its slot and executes at once.
///
/// A run claimed ahead records its fenced start (`started_at` = its slot) `starts` ahead of the
/// slot, once its claim has committed; the claim is sent `claims` before that. Each lead time is
/// learned from this replica's own statements: twice the slowest recent one (sent to committed;
/// it halves every five minutes), plus 5 ms, within its bounds. A start teaches it whenever it
/// was sent ahead, also when it committed after its slot (the very case the lead is for), and
/// only the statement that recorded it counts, not retries after errors before it (a database
/// outage is not a start's duration). The margin is wide on purpose: a
/// start that commits after its slot holds back every run of the burst that waits on it, so one
/// slow commit (a checkpoint, a loaded machine) outrunning the lead makes a whole burst late,
/// while a few more milliseconds of lead cost only a slightly longer window (below).
///
/// The price of a lead time is a window. A leader killed between a claim and its start leaves the
/// claim unstarted, for the next leader to run; killed or stopped past its lease between the
/// start and the slot, it leaves a run that was started and never executed: recorded `killed`
/// if the leader lives, reaped `lost` if it died. (A leader shutting down in order executes it
/// at its slot: `LeaseDeadline::resign`.) Keeping the start's lead time short (tens of
/// milliseconds with a healthy database) keeps that window short.
#[derive(Clone)]
pub(super) struct LeadTimes {
    pub(super) claims: LeadTime,
    pub(super) starts: LeadTime,
}

impl Default for LeadTimes {
    fn default() -> LeadTimes {
        LeadTimes {
            claims: LeadTime::new(Duration::from_millis(250), Duration::from_millis(50)),
            starts: LeadTime::new(Duration::from_millis(50), Duration::from_millis(20)),
        }
    }
}

impl LeadTimes {
    /// How far ahead of its slot a run is claimed.
    pub(super) fn claim(&self) -> Duration {
        if let Some(lead) = crate::testing::claim_lead() {
            return lead;
        }
        self.claims.lead() + self.start()
    }

    /// How far ahead of its slot a claimed run's start is recorded.
    pub(super) fn start(&self) -> Duration {
        if let Some(lead) = crate::testing::start_lead() {
            return lead;
        }
        self.starts.lead()
    }
}

/// One learned lead time (see `LeadTimes`).
#[derive(Clone)]
pub(super) struct LeadTime {
    /// The slowest recent statement and when it was observed; `None` before the first.
    slowest: Arc<Mutex<Option<(Duration, std::time::Instant)>>>,
    /// The lead time before the first observation, and the least one.
    first: Duration,
    least: Duration,
}

impl LeadTime {
    const HALF_LIFE: Duration = Duration::from_secs(300);

    fn new(first: Duration, least: Duration) -> LeadTime {
        LeadTime { slowest: Arc::default(), first, least }
    }

    pub(super) fn lead(&self) -> Duration {
        match self.slowest_now() {
            None => self.first,
            Some(slowest) => (slowest * 2 + Duration::from_millis(5)).clamp(self.least, MAX_LEAD),
        }
    }

    /// A statement sent ahead of its slot committed `took` after it was sent (a claim: after
    /// the scheduler decided to fire it).
    pub(super) fn observe(&self, took: Duration) {
        let slowest = self.slowest_now().unwrap_or_default().max(took);
        *self.slowest.lock().unwrap_or_else(|p| p.into_inner()) = Some((slowest, std::time::Instant::now()));
    }

    fn slowest_now(&self) -> Option<Duration> {
        let (took, at) = (*self.slowest.lock().unwrap_or_else(|p| p.into_inner()))?;
        Some(took.mul_f64(0.5f64.powf(at.elapsed().as_secs_f64() / Self::HALF_LIFE.as_secs_f64())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_lead_follows_its_slowest_recent_statement_within_bounds() {
        let leads = LeadTimes::default();
        let lead = &leads.claims;
        assert_eq!(lead.lead(), Duration::from_millis(250));
        lead.observe(Duration::from_millis(2));
        assert_eq!(lead.lead(), Duration::from_millis(50));
        lead.observe(Duration::from_millis(100));
        lead.observe(Duration::from_millis(3));
        let learned = lead.lead();
        assert!(learned >= Duration::from_millis(200) && learned <= Duration::from_millis(205), "{learned:?}");
        lead.observe(Duration::from_secs(5));
        assert_eq!(lead.lead(), MAX_LEAD);
        // The start's lead time is learned apart, and a claim is sent ahead of both.
        assert_eq!(leads.start(), Duration::from_millis(50));
        leads.starts.observe(Duration::ZERO);
        assert_eq!(leads.start(), Duration::from_millis(20));
        assert_eq!(leads.claim(), MAX_LEAD + Duration::from_millis(20));
    }
}
