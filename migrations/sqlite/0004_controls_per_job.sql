-- See migrations/postgres/0005_controls_per_job.sql. SQLite cannot drop a column's UNIQUE
-- constraint, so the triggers table is rebuilt with the key unique per job.
CREATE TABLE triggers_per_job (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job              TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    requested_by     TEXT    NOT NULL,
    requested_at     INTEGER NOT NULL,
    run_id           INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    handled_at       INTEGER,
    UNIQUE (job, idempotency_key)
);
INSERT INTO triggers_per_job (id, job, idempotency_key, requested_by, requested_at, run_id, handled_at)
    SELECT id, job, idempotency_key, requested_by, requested_at, run_id, handled_at FROM triggers;
DROP TABLE triggers;
ALTER TABLE triggers_per_job RENAME TO triggers;

ALTER TABLE job_controls ADD COLUMN resumed_at INTEGER;
