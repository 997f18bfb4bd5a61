-- no-transaction
-- A job's history filtered by status, newest first, read straight off one index: (job, status)
-- alone left the planner walking a job's whole history backwards and discarding what did not
-- match. Built CONCURRENTLY (claims go on while it builds, one statement per file because a
-- concurrent build cannot share a transaction); an interrupted build leaves an invalid index,
-- which `store::migrate` drops before the next attempt, so this statement starts afresh.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_job_status_slot ON runs (job, status, slot);
