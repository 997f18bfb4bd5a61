//! The firing loop driven through its inputs, in milliseconds: a `watch::Sender<Leadership>` for
//! the election, a stepped `Clock` for time, the SQLite ledger `tenure dev` uses (in memory: a
//! real ledger with the same fence and refusals, not a fake), and HTTP jobs that call a witness
//! on loopback, which notes the slot, term and job of every execution.

use std::sync::Mutex;

use chrono::Timelike;

use super::*;
use crate::leadership::{BootInstant, LeaseDeadline, StartRecord, StartWitness, Term, WitnessError};
use crate::store::{AuditRecord, Reads, RunRecord, Sqlite};

const NODE: &str = "node-1";

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn ms(millis: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(millis)
}

/// What the witness saw of one execution.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Execution {
    job: String,
    slot: DateTime<Utc>,
    term: i64,
}

/// An HTTP endpoint the jobs call: it answers 200 and notes each call's `X-Tenure-*` headers.
struct Witness {
    url: String,
    calls: Arc<Mutex<Vec<Execution>>>,
}

impl Witness {
    async fn start() -> Witness {
        let calls: Arc<Mutex<Vec<Execution>>> = Arc::default();
        let noted = calls.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::any(move |headers: axum::http::HeaderMap| {
                let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
                noted.lock().unwrap().push(Execution {
                    job: header("x-tenure-job"),
                    slot: at(&header("x-tenure-slot")),
                    term: header("x-tenure-term").parse().unwrap(),
                });
                async { "ok" }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Witness { url, calls }
    }

    fn executions(&self) -> Vec<Execution> {
        let mut calls = self.calls.lock().unwrap().clone();
        calls.sort();
        calls
    }

    /// A job file of HTTP jobs calling this witness: (name, schedule, further YAML lines).
    fn jobs(&self, jobs: &[(&str, &str, &str)]) -> JobSet {
        let mut yaml = String::from("jobs:\n");
        for (name, schedule, more) in jobs {
            yaml += &format!("  - name: {name}\n    schedule: \"{schedule}\"\n    http:\n      url: {}\n", self.url);
            for line in more.lines() {
                yaml += &format!("    {line}\n");
            }
        }
        crate::config::parse(&yaml, "jobs.yaml").unwrap()
    }
}

/// One ledger row, as the assertions compare it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    job: String,
    slot: DateTime<Utc>,
    term: i64,
    status: String,
    started_at: Option<DateTime<Utc>>,
}

fn row(job: &str, slot: &str, term: i64, status: &str, started: bool) -> Row {
    let slot = at(slot);
    Row { job: job.to_owned(), slot, term, status: status.to_owned(), started_at: started.then_some(slot) }
}

fn rows(runs: &[RunRecord]) -> Vec<Row> {
    let mut rows: Vec<Row> = runs
        .iter()
        .map(|run| Row {
            job: run.job.clone(),
            slot: run.slot,
            term: run.term,
            status: run.status.as_str().to_owned(),
            started_at: run.started_at,
        })
        .collect();
    rows.sort();
    rows
}

/// A scheduler running on its own task, and the senders that drive it.
struct Loop {
    clock: Clock,
    store: Store,
    reads: Reads,
    leadership: watch::Sender<Leadership>,
    _jobs: watch::Sender<Arc<JobSet>>,
    _members: watch::Sender<Vec<Member>>,
    _clock_check: watch::Sender<ClockCheck>,
    shutdown: CancellationToken,
    /// The scheduler's run tasks (claims, starts, executions, outcomes), to see them end.
    runs: TaskTracker,
    /// The lead times the scheduler learns (shared with it).
    lead_times: LeadTimes,
    scheduler: tokio::task::JoinHandle<()>,
}

impl Loop {
    async fn start((store, reads): (Store, Reads), jobs: JobSet, start: DateTime<Utc>) -> Loop {
        Loop::start_as(NODE, (store, reads), jobs, start).await
    }

    /// A replica `node` on the ledger `(store, reads)`, its clock at `start`, not leading.
    async fn start_as(node: &str, (store, reads): (Store, Reads), jobs: JobSet, start: DateTime<Utc>) -> Loop {
        let clock = Clock::stepped(start);
        let (leadership, leadership_rx) = watch::channel(Leadership::Follower { leader: None });
        let (jobs_tx, jobs_rx) = watch::channel(Arc::new(jobs));
        let member = Member {
            node: node.into(),
            version: String::new(),
            address: String::new(),
            config_hash: String::new(),
            started_at: start,
        };
        let (members, members_rx) = watch::channel(vec![member]);
        let (clock_check, clock_check_rx) =
            watch::channel(ClockCheck { skew_ms: Some(0), reachable: true, not_primary: None });
        let scheduler = Scheduler::new(SchedulerInputs {
            store: store.clone(),
            execution: crate::worker::ExecutionLease::for_ttl(Duration::from_secs(1)),
            node_id: node.into(),
            jobs: jobs_rx,
            leadership: leadership_rx,
            members: members_rx,
            clock_check: clock_check_rx,
            supervision: Supervision::new(Duration::from_secs(1)),
            shutdown_grace: Duration::from_secs(5),
            clock: clock.clone(),
            dead_man: None,
            reads: reads.clone(),
        });
        let shutdown = CancellationToken::new();
        let runs = scheduler.runs.clone();
        let lead_times = scheduler.lead_times.clone();
        let scheduler = tokio::spawn(scheduler.run(shutdown.clone()));
        Loop {
            clock,
            store,
            reads,
            leadership,
            _jobs: jobs_tx,
            _members: members,
            _clock_check: clock_check,
            shutdown,
            runs,
            lead_times,
            scheduler,
        }
    }

    /// Lead with term `revision` (a lease valid for an hour), and wait until its fence is raised.
    async fn lead(&self, revision: i64) -> LeaderTerm {
        self.lead_witnessed(revision, Arc::new(crate::leadership::NoStartWitness)).await
    }

    /// `lead`, recording starts in `starts`.
    async fn lead_witnessed(&self, revision: i64, starts: Arc<dyn StartWitness>) -> LeaderTerm {
        let leader = LeaderTerm {
            term: Term::for_tests(revision, crate::local::CLUSTER_ID),
            since: self.clock.now(),
            lease: LeaseDeadline::new(BootInstant::now() + Duration::from_secs(3600)),
            step_down: CancellationToken::new(),
            starts,
        };
        self.leadership.send_replace(Leadership::Leader(leader.clone()));
        let reads = &self.reads;
        wait_for(&format!("term {revision} begun"), || async move {
            let terms = reads.terms().await.unwrap();
            terms.iter().any(|term| term.term == revision).then_some(())
        })
        .await;
        leader
    }

    fn follow(&self) {
        self.leadership.send_replace(Leadership::Follower { leader: None });
    }

    /// Wait until every run task has ended (nothing of a term that ended is left to act).
    async fn wait_for_runs_to_end(&self) {
        let runs = &self.runs;
        wait_for("the run tasks to end", || async move { runs.is_empty().then_some(()) }).await;
    }

    /// Wait until the ledger's rows satisfy `done`; return them.
    async fn wait_for_rows(&self, what: &str, done: impl Fn(&[Row]) -> bool) -> Vec<Row> {
        let (reads, done) = (&self.reads, &done);
        wait_for(what, || async move {
            let rows = rows(&reads.all_runs().await.unwrap());
            done(&rows).then_some(rows)
        })
        .await
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.scheduler).await.unwrap().unwrap();
    }
}

/// Poll `probe` every 2 ms (real time) until it answers, for at most 10 s.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(what: &str, probe: impl Fn() -> F) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Both sides of a fresh SQLite ledger, as `tenure dev` has them.
async fn ledger() -> (Store, Reads) {
    Store::with_reads(Sqlite::in_memory().await.unwrap())
}

/// As if term 1 had begun at `at` and recorded the jobs' cursors: where the next term resumes.
async fn seed_cursors(store: &Store, jobs: &JobSet, at: DateTime<Utc>) {
    let earlier = Term::for_tests(1, crate::local::CLUSTER_ID);
    store.begin_term(&earlier, NODE).await.unwrap();
    let names: Vec<&str> = jobs.jobs().iter().map(|job| job.name.as_ref()).collect();
    store.job_cursors(&earlier, &names, at).await.unwrap();
}

/// A fresh scheduler claims 300 ms ahead (a claim lead time of 250 ms before any claim was
/// seen, plus a start lead time of 50 ms): 200 ms before the slot, it has claimed and not started.
async fn claimed_ahead(lp: &Loop, slot: DateTime<Utc>) {
    lp.clock.advance_to(slot - ms(200));
    lp.wait_for_rows("the claim ahead", |rows| rows.len() == 1).await;
    let claimed = rows(&lp.reads.all_runs().await.unwrap());
    assert_eq!(claimed, [row("minutely", "2026-03-02T10:01:00Z", 1, "running", false)]);
}

#[tokio::test]
async fn a_term_that_ends_between_a_claim_ahead_and_its_start_leaves_the_claim_to_the_next_term() {
    let witness = Witness::start().await;
    let slot = at("2026-03-02T10:01:00Z");
    let jobs = witness.jobs(&[("minutely", "* * * * *", "")]);
    let lp = Loop::start(ledger().await, jobs, at("2026-03-02T10:00:50Z")).await;
    let first = lp.lead(1).await;
    claimed_ahead(&lp, slot).await;
    // The term ends before the start: its claim is left unstarted for the next term, neither
    // started nor recorded `killed`.
    lp.follow();
    lp.wait_for_runs_to_end().await;
    let unstarted = rows(&lp.reads.all_runs().await.unwrap());
    assert_eq!(unstarted, [row("minutely", "2026-03-02T10:01:00Z", 1, "running", false)]);
    let _second = lp.lead(2).await;
    lp.clock.advance_to(slot);
    let rows = lp.wait_for_rows("the slot run", |rows| rows.iter().all(|row| row.status != "running")).await;
    assert_eq!(rows, [row("minutely", "2026-03-02T10:01:00Z", 2, "succeeded", true)]);
    assert_eq!(witness.executions(), [Execution { job: "minutely".into(), slot, term: 2 }]);
    assert!(!first.step_down.is_cancelled(), "the first term never tried to start its claim");
    lp.stop().await;
}

/// A loop leading term 1 from 10:00:50 with `witness`'s `minutely` job, on a ledger in a file;
/// and a second connection to that file, for the test to play other writers (or an outage).
async fn leading_on_a_file(witness: &Witness, dir: &tempfile::TempDir) -> (Loop, sqlx::SqliteConnection) {
    let path = dir.path().join("ledger.db");
    let ledger = Store::with_reads(Sqlite::open(&path).await.unwrap());
    let other = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("sqlite://{}", path.display()));
    let jobs = witness.jobs(&[("minutely", "* * * * *", "")]);
    let lp = Loop::start(ledger, jobs, at("2026-03-02T10:00:50Z")).await;
    lp.lead(1).await;
    (lp, other.await.unwrap())
}

/// The start's lead time learns from a start that committed after its slot: that is the commit
/// it exists for (one start outrunning the lead holds back every run of its burst), so it must
/// widen the lead, not be left out of what the lead learns.
#[tokio::test]
async fn a_start_sent_ahead_that_commits_after_its_slot_widens_the_start_lead() {
    let witness = Witness::start().await;
    let slot = at("2026-03-02T10:01:00Z");
    let dir = tempfile::tempdir().unwrap();
    let (lp, mut writer) = leading_on_a_file(&witness, &dir).await;
    // A slow statement: each start runs a trigger that multiplies its way through nine million
    // rows (timed here first, as this machine runs it; the trigger's body is the same query).
    sqlx::query("CREATE TABLE burn (x INTEGER)").execute(&mut writer).await.unwrap();
    let rows =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 3000) INSERT INTO burn SELECT x FROM c";
    sqlx::query(rows).execute(&mut writer).await.unwrap();
    let timed = std::time::Instant::now();
    sqlx::query("SELECT sum(p.x * q.x % 7) FROM burn p, burn q").execute(&mut writer).await.unwrap();
    let burn = timed.elapsed();
    let slow = "CREATE TRIGGER slow_starts BEFORE UPDATE OF started_at ON runs
                BEGIN SELECT sum(p.x * q.x % 7) FROM burn p, burn q; END";
    sqlx::query(slow).execute(&mut writer).await.unwrap();
    claimed_ahead(&lp, slot).await;
    assert_eq!(lp.lead_times.start(), Duration::from_millis(50), "no start seen yet");
    // The start is sent 50 ms ahead; its slot passes while it runs.
    lp.clock.advance_to(slot - ms(40));
    tokio::time::sleep(burn / 3).await;
    lp.clock.advance_to(slot + ms(100));
    let rows = lp.wait_for_rows("the slot run", |rows| rows.iter().all(|row| row.status != "running")).await;
    assert_eq!(rows, [row("minutely", "2026-03-02T10:01:00Z", 1, "succeeded", true)]);
    let learned = lp.lead_times.start();
    let least = (burn * 3 / 2).min(Duration::from_secs(1));
    assert!(learned >= least, "the start took at least {burn:?}; the lead stays {learned:?}");
    lp.stop().await;
}

/// Below half the 1.2 s outages of the two tests after it: a lead learned from the outage is at
/// least the outage, one learned from the statement is its duration (279 ms was seen for a claim
/// on a 2-core machine at a load average of 15).
const OUTAGE_NOT_LEARNED: Duration = Duration::from_millis(600);

/// What the start's lead time learns is how long the statement that recorded the start took,
/// not the retries before it: a start retried through a database outage leaves the lead at tens
/// of milliseconds once the database answers again (a lead of a second would widen the window
/// in which a leader's death leaves a started run unexecuted, for minutes after the outage).
#[tokio::test]
async fn a_start_retried_through_a_database_outage_teaches_the_lead_its_statement_not_the_outage() {
    let witness = Witness::start().await;
    let slot = at("2026-03-02T10:01:00Z");
    let dir = tempfile::tempdir().unwrap();
    let (lp, mut writer) = leading_on_a_file(&witness, &dir).await;
    claimed_ahead(&lp, slot).await;
    // Every start fails for 1.2 s (retried every `DATABASE_RETRY`), then the ledger answers.
    let refuse =
        "CREATE TRIGGER refuse_starts BEFORE UPDATE OF started_at ON runs BEGIN SELECT RAISE(ABORT, 'down'); END";
    sqlx::query(refuse).execute(&mut writer).await.unwrap();
    lp.clock.advance_to(slot - ms(40));
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    sqlx::query("DROP TRIGGER refuse_starts").execute(&mut writer).await.unwrap();
    lp.clock.advance_to(slot + ms(100));
    let rows = lp.wait_for_rows("the slot run", |rows| rows.iter().all(|row| row.status != "running")).await;
    assert_eq!(rows, [row("minutely", "2026-03-02T10:01:00Z", 1, "succeeded", true)]);
    let learned = lp.lead_times.start();
    // The outage lasted 1.2 s; the statement, even on a starved CPU, a few hundred ms at most.
    assert!(learned < OUTAGE_NOT_LEARNED, "the outage was learned as the start's duration: {learned:?}");
    lp.stop().await;
}

/// The claim's lead time, likewise, learns the statement that recorded the claim, not the
/// retries through an outage before it: claims go back to being sent a few tens of
/// milliseconds ahead once the database answers, not pinned a second ahead for minutes.
#[tokio::test]
async fn a_claim_retried_through_a_database_outage_teaches_the_lead_its_statement_not_the_outage() {
    let witness = Witness::start().await;
    let slot = at("2026-03-02T10:01:00Z");
    let dir = tempfile::tempdir().unwrap();
    let (lp, mut writer) = leading_on_a_file(&witness, &dir).await;
    // Every claim fails for 1.2 s (retried every `DATABASE_RETRY`), then the ledger answers.
    let refuse = "CREATE TRIGGER refuse_claims BEFORE INSERT ON runs BEGIN SELECT RAISE(ABORT, 'down'); END";
    sqlx::query(refuse).execute(&mut writer).await.unwrap();
    // The clock moves on with the outage (the slot passes).
    lp.clock.advance_to(slot - ms(200));
    tokio::time::sleep(Duration::from_millis(600)).await;
    lp.clock.advance_to(slot + ms(400));
    tokio::time::sleep(Duration::from_millis(600)).await;
    lp.clock.advance_to(slot + ms(1_000));
    assert!(lp.reads.all_runs().await.unwrap().is_empty(), "no claim while the ledger refuses them");
    sqlx::query("DROP TRIGGER refuse_claims").execute(&mut writer).await.unwrap();
    lp.wait_for_rows("the claim", |rows| rows.len() == 1).await;
    let learned = lp.lead_times.claims.lead();
    assert!(learned < OUTAGE_NOT_LEARNED, "the outage was learned as the claim's duration: {learned:?}");
    lp.stop().await;
}

#[tokio::test]
async fn a_newer_term_in_the_ledger_refuses_the_start_of_a_claim_ahead_and_the_leader_steps_down() {
    let witness = Witness::start().await;
    let slot = at("2026-03-02T10:01:00Z");
    let jobs = witness.jobs(&[("minutely", "* * * * *", "")]);
    let lp = Loop::start(ledger().await, jobs, at("2026-03-02T10:00:50Z")).await;
    let first = lp.lead(1).await;
    claimed_ahead(&lp, slot).await;
    // Another replica's newer term raises the fence while etcd still says we lead.
    lp.store.begin_term(&Term::for_tests(7, crate::local::CLUSTER_ID), "node-2").await.unwrap();
    lp.clock.advance_to(slot - ms(50));
    wait_for("the step-down", || async { first.step_down.is_cancelled().then_some(()) }).await;
    lp.clock.advance_to(slot + ms(1_000));
    let rows = rows(&lp.reads.all_runs().await.unwrap());
    assert_eq!(rows, [row("minutely", "2026-03-02T10:01:00Z", 1, "running", false)], "left for term 7");
    assert_eq!(witness.executions(), []);
    lp.stop().await;
}

#[tokio::test]
async fn a_lease_that_expires_before_a_claimed_slot_leaves_the_claim_to_the_next_term() {
    let witness = Witness::start().await;
    let slot = at("2026-03-02T10:01:00Z");
    let jobs = witness.jobs(&[("minutely", "* * * * *", "")]);
    let ledger = ledger().await;
    let lp = Loop::start(ledger.clone(), jobs.clone(), at("2026-03-02T10:00:50Z")).await;
    let first = lp.lead(1).await;
    claimed_ahead(&lp, slot).await;
    // The lease runs out before the start lead time, and nothing tells this replica it no longer
    // leads: its own deadline must keep it from starting the claim, or recording it `killed`.
    first.lease.expire();
    lp.clock.advance_to(slot);
    lp.wait_for_runs_to_end().await;
    let unstarted = rows(&lp.reads.all_runs().await.unwrap());
    assert_eq!(unstarted, [row("minutely", "2026-03-02T10:01:00Z", 1, "running", false)]);
    // Another replica wins the next term at the slot and takes the claim over.
    let next = Loop::start_as("node-2", ledger, jobs, slot).await;
    next.lead(2).await;
    let rows = next.wait_for_rows("the slot run", |rows| rows.iter().all(|row| row.status != "running")).await;
    assert_eq!(rows, [row("minutely", "2026-03-02T10:01:00Z", 2, "succeeded", true)]);
    assert_eq!(witness.executions(), [Execution { job: "minutely".into(), slot, term: 2 }]);
    assert!(!first.step_down.is_cancelled(), "the first term never tried to start its claim");
    lp.stop().await;
    next.stop().await;
}

#[tokio::test]
async fn across_the_fall_back_hour_a_wildcard_job_fires_in_both_copies_and_a_fixed_time_once() {
    let witness = Witness::start().await;
    let new_york = "timezone: America/New_York";
    let jobs = witness.jobs(&[("wildcard", "*/20 * * * *", new_york), ("fixed", "30 1 * * *", new_york)]);
    // 00:50 EDT; New York falls back at 06:00Z (02:00 EDT becomes 01:00 EST).
    let start = at("2026-11-01T04:50:00Z");
    let ledger = ledger().await;
    seed_cursors(&ledger.0, &jobs, start).await;
    let lp = Loop::start(ledger, jobs, start).await;
    lp.lead(2).await;
    let mut expected = Vec::new();
    for step in 1..=12 {
        let now = at("2026-11-01T04:50:00Z") + chrono::Duration::minutes(10 * step);
        lp.clock.advance_to(now);
        let local = now.with_timezone(&chrono_tz::America::New_York);
        let succeeded =
            |job: &str| Row { job: job.into(), slot: now, term: 2, status: "succeeded".into(), started_at: Some(now) };
        if now.minute() % 20 == 0 {
            expected.push(succeeded("wildcard"));
        }
        if now == at("2026-11-01T05:30:00Z") {
            expected.push(succeeded("fixed"));
        }
        expected.sort();
        let count = expected.len();
        let rows = lp
            .wait_for_rows(&format!("the slots up to {local}"), |rows| {
                rows.len() == count && rows.iter().all(|row| row.status != "running")
            })
            .await;
        assert_eq!(rows, expected, "at {local}");
    }
    let slots = |job: &str| -> Vec<DateTime<Utc>> {
        expected.iter().filter(|row| row.job == job).map(|row| row.slot).collect()
    };
    let z =
        |times: &[&str]| -> Vec<DateTime<Utc>> { times.iter().map(|t| at(&format!("2026-11-01T{t}:00Z"))).collect() };
    // 01:00, 01:20, 01:40 EDT, then 01:00, 01:20, 01:40 EST; 01:30 only in EDT.
    assert_eq!(slots("wildcard"), z(&["05:00", "05:20", "05:40", "06:00", "06:20", "06:40"]));
    assert_eq!(slots("fixed"), z(&["05:30"]));
    let executed: Vec<Execution> =
        expected.iter().map(|row| Execution { job: row.job.clone(), slot: row.slot, term: 2 }).collect();
    assert_eq!(witness.executions(), executed);
    lp.stop().await;
}

#[tokio::test]
async fn a_term_that_begins_late_catches_up_per_each_jobs_policy_and_starting_deadline() {
    let witness = Witness::start().await;
    let jobs = witness.jobs(&[
        ("none", "* * * * *", "catch_up: none"),
        ("latest", "* * * * *", "catch_up: latest"),
        ("all", "* * * * *", "catch_up: all"),
        ("all-2m", "* * * * *", "catch_up: all\nstarting_deadline: 2m"),
    ]);
    // An earlier term recorded the cursors at 10:00:30, then nobody led until 10:04:30.
    let ledger = ledger().await;
    seed_cursors(&ledger.0, &jobs, at("2026-03-02T10:00:30Z")).await;
    let lp = Loop::start(ledger, jobs, at("2026-03-02T10:04:30Z")).await;
    lp.lead(2).await;
    let rows = lp
        .wait_for_rows("the catch-up", |rows| rows.len() == 16 && rows.iter().all(|row| row.status != "running"))
        .await;
    let late = |job: &str, minute: u32, status: &str| {
        let slot = format!("2026-03-02T10:0{minute}:00Z");
        let started = status == "succeeded";
        Row { started_at: started.then(|| lp.clock.now()), ..row(job, &slot, 2, status, started) }
    };
    let mut expected = vec![
        late("none", 1, "missed"),
        late("none", 2, "missed"),
        late("none", 3, "missed"),
        late("none", 4, "missed"),
        late("latest", 1, "missed"),
        late("latest", 2, "missed"),
        late("latest", 3, "missed"),
        late("latest", 4, "succeeded"),
        late("all", 1, "succeeded"),
        late("all", 2, "succeeded"),
        late("all", 3, "succeeded"),
        late("all", 4, "succeeded"),
        late("all-2m", 1, "missed"),
        late("all-2m", 2, "missed"),
        late("all-2m", 3, "succeeded"),
        late("all-2m", 4, "succeeded"),
    ];
    expected.sort();
    assert_eq!(rows, expected);
    // Each missed row says why: its job's `catch_up`, or its starting deadline.
    let mut reasons: Vec<(String, String)> = lp
        .reads
        .all_runs()
        .await
        .unwrap()
        .into_iter()
        .filter(|run| run.status == crate::model::RunStatus::Missed)
        .map(|run| (run.job, run.error.unwrap_or_default()))
        .collect();
    reasons.sort();
    reasons.dedup();
    let reason = |job: &str, why: &str| (job.to_owned(), why.to_owned());
    assert_eq!(
        reasons,
        [
            reason("all-2m", "not run: its starting deadline (2m) had passed before a leader could start it"),
            reason("latest", "not run: late, and `catch_up: latest` runs only the newest late slot"),
            reason("none", "not run: late, and `catch_up: none` runs no late slot"),
        ]
    );
    let executed = |job: &str, minutes: &[u32]| -> Vec<Execution> {
        let slot = |minute| at(&format!("2026-03-02T10:0{minute}:00Z"));
        minutes.iter().map(|minute| Execution { job: job.into(), slot: slot(minute), term: 2 }).collect()
    };
    let mut expected = [executed("latest", &[4]), executed("all", &[1, 2, 3, 4]), executed("all-2m", &[3, 4])].concat();
    expected.sort();
    assert_eq!(witness.executions(), expected);
    // `all` runs its slots one after the other, oldest first.
    let calls = witness.calls.lock().unwrap().clone();
    let all: Vec<DateTime<Utc>> = calls.iter().filter(|call| call.job == "all").map(|call| call.slot).collect();
    assert!(all.is_sorted(), "{all:?}");
    lp.stop().await;
}

/// A coordinator's start record kept in memory (the real ones are etcd and ZooKeeper, tested on
/// real servers in the integration suite): what the loop's terms write survives them.
#[derive(Debug, Default)]
struct RememberedStarts(Mutex<Option<StartRecord>>);

#[async_trait::async_trait]
impl StartWitness for RememberedStarts {
    async fn read(&self) -> Result<Option<StartRecord>, WitnessError> {
        Ok(self.0.lock().unwrap().clone())
    }

    async fn write(&self, record: &StartRecord) -> Result<(), WitnessError> {
        *self.0.lock().unwrap() = Some(record.clone());
        Ok(())
    }
}

/// The ledger loses the last slot's claim, start and outcome, and the job's cursor with them,
/// as a promoted standby that had not received them would: the next term finds the slot in the
/// coordinator's start record and records it `lost` with the reason instead of running it again
/// (`catch_up: all` would run it), then fires the next slot as usual.
#[tokio::test]
async fn a_start_the_ledger_forgot_is_recorded_lost_and_never_run_again() {
    let witness = Witness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let ledger = Store::with_reads(Sqlite::open(&path).await.unwrap());
    let mut other =
        <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let jobs = witness.jobs(&[("minutely", "* * * * *", "catch_up: all")]);
    let lp = Loop::start(ledger, jobs, at("2026-03-02T10:00:50Z")).await;
    let starts: Arc<RememberedStarts> = Arc::default();
    lp.lead_witnessed(1, starts.clone()).await;
    for minute in ["01", "02"] {
        lp.clock.advance_to(at(&format!("2026-03-02T10:{minute}:00Z")));
        lp.wait_for_rows("the slot run", |rows| {
            rows.iter().all(|row| row.status == "succeeded") && rows.len() == minute.parse::<usize>().unwrap()
        })
        .await;
    }
    lp.follow();
    lp.wait_for_runs_to_end().await;
    // The database fails over to a standby that never received the 10:02 slot.
    let forgotten = at("2026-03-02T10:02:00Z").timestamp_micros();
    sqlx::query("DELETE FROM runs WHERE slot = ?1").bind(forgotten).execute(&mut other).await.unwrap();
    let kept = at("2026-03-02T10:01:00Z").timestamp_micros();
    sqlx::query("UPDATE job_cursors SET slot = ?1").bind(kept).execute(&mut other).await.unwrap();
    lp.lead_witnessed(2, starts.clone()).await;
    lp.clock.advance_to(at("2026-03-02T10:03:00Z"));
    let rows = lp
        .wait_for_rows("the next slot run", |rows| rows.len() == 3 && rows.iter().all(|row| row.status != "running"))
        .await;
    assert_eq!(
        rows,
        [
            row("minutely", "2026-03-02T10:01:00Z", 1, "succeeded", true),
            row("minutely", "2026-03-02T10:02:00Z", 2, "lost", false),
            row("minutely", "2026-03-02T10:03:00Z", 2, "succeeded", true),
        ]
    );
    let lost =
        lp.reads.all_runs().await.unwrap().into_iter().find(|run| run.status == crate::model::RunStatus::Lost).unwrap();
    assert_eq!(lost.error.as_deref(), Some(witness::FORGOTTEN_REASON));
    let slot = |minute: &str| at(&format!("2026-03-02T10:{minute}:00Z"));
    assert_eq!(
        witness.executions(),
        [
            Execution { job: "minutely".into(), slot: slot("01"), term: 1 },
            Execution { job: "minutely".into(), slot: slot("02"), term: 1 },
            Execution { job: "minutely".into(), slot: slot("03"), term: 2 },
        ]
    );
    lp.stop().await;
}

/// A term that ends between a claim ahead and its start leaves the claim to the next term: the
/// start record does not cover it (nothing was started), so the next term runs it, and a ledger
/// that lost nothing has nothing recorded `lost`.
#[tokio::test]
async fn a_claim_never_started_is_not_covered_by_the_start_record_and_runs_in_the_next_term() {
    let witness = Witness::start().await;
    let jobs = witness.jobs(&[("minutely", "* * * * *", "")]);
    let lp = Loop::start(ledger().await, jobs, at("2026-03-02T10:00:50Z")).await;
    let starts: Arc<RememberedStarts> = Arc::default();
    lp.lead_witnessed(1, starts.clone()).await;
    lp.clock.advance_to(at("2026-03-02T10:01:00Z"));
    lp.wait_for_rows("the first slot run", |rows| rows.len() == 1 && rows[0].status == "succeeded").await;
    lp.clock.advance_to(at("2026-03-02T10:01:59.800Z"));
    lp.wait_for_rows("the claim ahead", |rows| rows.len() == 2).await;
    lp.follow();
    lp.wait_for_runs_to_end().await;
    assert_eq!(starts.0.lock().unwrap().as_ref().unwrap().through, Some(at("2026-03-02T10:01:00Z")));
    lp.lead_witnessed(2, starts.clone()).await;
    lp.clock.advance_to(at("2026-03-02T10:02:00Z"));
    let rows = lp.wait_for_rows("the slot run", |rows| rows.iter().all(|row| row.status != "running")).await;
    assert_eq!(
        rows,
        [
            row("minutely", "2026-03-02T10:01:00Z", 1, "succeeded", true),
            row("minutely", "2026-03-02T10:02:00Z", 2, "succeeded", true),
        ]
    );
    lp.stop().await;
}

/// A manual trigger of a `forbid` job that lands between the scheduled slot's claim and its
/// start is not dropped: its row is claimed at once (the trigger handled), waits for the
/// scheduled run to end, then runs. Placed deterministically: the stepped clock holds the
/// scheduled run claimed and unstarted until the trigger's row is in the ledger.
#[tokio::test]
async fn a_manual_run_of_a_forbid_job_triggered_between_a_claim_and_its_start_runs_right_after_it() {
    let witness = Witness::start().await;
    let slot = at("2026-03-02T10:01:00Z");
    let jobs = witness.jobs(&[("minutely", "* * * * *", "concurrency: forbid")]);
    let lp = Loop::start(ledger().await, jobs, at("2026-03-02T10:00:50Z")).await;
    lp.lead(1).await;
    claimed_ahead(&lp, slot).await;
    let requested_at = lp.clock.now();
    let overrides = crate::store::TriggerOverrides::default();
    let request = crate::store::TriggerRequest {
        job: "minutely",
        idempotency_key: "between-claim-and-start",
        by: "admin",
        requested_at,
        overrides: &overrides,
    };
    lp.reads.request_trigger(&request, &AuditRecord::by("admin", "trigger")).await.unwrap();
    let reads = &lp.reads;
    let manual = wait_for("the manual trigger's row", || async move {
        let runs = reads.all_runs().await.unwrap();
        runs.into_iter().find(|run| run.trigger == crate::model::TriggerKind::Manual)
    })
    .await;
    assert_eq!(
        (manual.status, manual.started_at, manual.error.as_deref()),
        (crate::model::RunStatus::Running, None, None),
        "the manual run waits for the scheduled one, claimed: {manual:?}"
    );
    lp.clock.advance_to(slot + ms(10));
    let finished =
        lp.wait_for_rows("both runs", |rows| rows.len() == 2 && rows.iter().all(|row| row.status != "running")).await;
    assert!(finished.iter().all(|row| row.status == "succeeded"), "{finished:?}");
    let runs = lp.reads.all_runs().await.unwrap();
    let scheduled = runs.iter().find(|run| run.trigger == crate::model::TriggerKind::Schedule).unwrap();
    let manual = runs.iter().find(|run| run.trigger == crate::model::TriggerKind::Manual).unwrap();
    assert!(
        manual.began_at.unwrap() >= scheduled.finished_at.unwrap(),
        "the manual run began after the scheduled one ended: {scheduled:?} {manual:?}"
    );
    assert_eq!(witness.executions().len(), 2);
    lp.stop().await;
}

/// An operator's cancel goes through the ledger under the fence: a leader whose term the ledger
/// has seen superseded acts on none (the run's cancel stays pending for the current leader) and
/// steps down, as for a refused claim.
#[tokio::test]
async fn a_stale_leader_acts_on_no_cancel_and_steps_down() {
    let witness = Witness::start().await;
    let jobs = witness.jobs(&[("minutely", "* * * * *", "")]);
    let lp = Loop::start(ledger().await, jobs, at("2026-03-02T10:00:50Z")).await;
    let stale = lp.lead(1).await;
    // A run of another replica's, going; then a newer term raises the fence behind this
    // leader's back (it was cut off and does not know yet).
    let newer = Term::for_tests(2, crate::local::CLUSTER_ID);
    let term_one = Term::for_tests(1, crate::local::CLUSTER_ID);
    let claim = crate::store::Claim {
        job: "elsewhere",
        slot: at("2026-03-02T10:00:00Z"),
        trigger: Trigger::Schedule,
        term: &term_one,
        node: "node-9",
        config_hash: "hash",
        skip_if_running: crate::store::SkipIfRunning::No,
        claimed_at: at("2026-03-02T10:00:00Z"),
        planned_at: at("2026-03-02T10:00:00Z"),
    };
    let run = lp.store.claim_run(&claim).await.unwrap().run_id;
    lp.store.start_runs(&term_one, &[(run, at("2026-03-02T10:00:00Z"))]).await.unwrap();
    lp.store.begin_term(&newer, "node-2").await.unwrap();
    let asked =
        lp.reads.cancel_run(run, "cancelled by admin (api): stop", &AuditRecord::by("admin", "cancel")).await.unwrap();
    assert_eq!(asked, crate::store::CancelAnswer::Asked { job: "elsewhere".into() });
    let step_down = stale.step_down.clone();
    wait_for("the stale leader to step down", || {
        let step_down = step_down.clone();
        async move { step_down.is_cancelled().then_some(()) }
    })
    .await;
    let pending = lp.store.pending_cancels().await.unwrap();
    assert_eq!(pending.len(), 1, "the stale leader acted on the cancel: {pending:?}");
    assert_eq!(lp.reads.run(run).await.unwrap().unwrap().status, crate::model::RunStatus::Running);
    lp.stop().await;
}

/// A claim whose start the database could record only after the starting deadline is not run:
/// recorded `missed`, saying so.
#[tokio::test]
async fn a_start_recorded_only_after_the_starting_deadline_is_recorded_missed_saying_why() {
    let witness = Witness::start().await;
    let slot = at("2026-03-02T10:01:00Z");
    let dir = tempfile::tempdir().unwrap();
    let (lp, mut writer) = leading_on_a_file(&witness, &dir).await;
    claimed_ahead(&lp, slot).await;
    let refuse = "CREATE TRIGGER refuse BEFORE UPDATE OF started_at ON runs BEGIN SELECT RAISE(ABORT, 'down'); END";
    sqlx::query(refuse).execute(&mut writer).await.unwrap();
    // The starting deadline (5 minutes) passes while the database refuses the start.
    lp.clock.advance_to(slot - ms(20));
    lp.clock.advance_to(slot + chrono::Duration::minutes(6));
    sqlx::query("DROP TRIGGER refuse").execute(&mut writer).await.unwrap();
    let reads = &lp.reads;
    let row = wait_for("the slot's row to end", || async move {
        let row = reads.all_runs().await.unwrap().into_iter().find(|run| run.slot == slot);
        row.filter(|run| run.status != crate::model::RunStatus::Running)
    })
    .await;
    let why = "not run: its start was recorded only after the starting deadline";
    assert_eq!((row.status, row.error.as_deref()), (crate::model::RunStatus::Missed, Some(why)));
    assert!(witness.executions().iter().all(|e| e.slot != slot), "the slot ran");
    lp.stop().await;
}
