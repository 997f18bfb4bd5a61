-- Each job's cursor, apart from the runs so that retention and manual triggers cannot move it:
-- the newest scheduled slot any term claimed or recorded, or when the job was first seen.
CREATE TABLE job_cursors (
    job   text        PRIMARY KEY,
    slot  timestamptz NOT NULL
);
INSERT INTO job_cursors (job, slot)
    SELECT job, max(slot) FROM runs WHERE trigger = 'schedule' GROUP BY job;
-- Claims never started, which a newer term may take over.
CREATE INDEX runs_unstarted ON runs (job, slot) WHERE status = 'running' AND started_at IS NULL;
