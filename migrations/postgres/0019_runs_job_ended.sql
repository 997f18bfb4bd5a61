-- no-transaction
-- The runs of a job that ended recently (a slot skipped at its claim ends there), read off one index: what the leader scans for runs
-- whose dependents have no row yet (`Ledger::awaited_runs`). Built CONCURRENTLY, one statement
-- per file, as `0012`.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_job_ended ON runs (job, (COALESCE(finished_at, claimed_at)));
