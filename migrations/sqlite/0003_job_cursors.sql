-- Each job's cursor (see the PostgreSQL migration).
CREATE TABLE job_cursors (
    job   TEXT    PRIMARY KEY,
    slot  INTEGER NOT NULL
);
INSERT INTO job_cursors (job, slot)
    SELECT job, max(slot) FROM runs WHERE trigger = 'schedule' GROUP BY job;
