-- Operator actions that must survive failover: pauses and manual triggers.
CREATE TABLE job_controls (
    job         text        PRIMARY KEY,
    paused      boolean     NOT NULL,
    updated_by  text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A manual trigger is executed by the leader through the same fenced claim as a scheduled slot:
-- its slot is `requested_at` and its trigger `manual`. The idempotency key makes a double click
-- fire once.
CREATE TABLE triggers (
    id               bigserial   PRIMARY KEY,
    job              text        NOT NULL,
    idempotency_key  text        NOT NULL UNIQUE,
    requested_by     text        NOT NULL,
    requested_at     timestamptz NOT NULL,
    run_id           bigint      REFERENCES runs (id) ON DELETE SET NULL,
    handled_at       timestamptz
);
CREATE INDEX triggers_pending ON triggers (requested_at) WHERE handled_at IS NULL;

-- Cursor pagination of one job's ledger, newest first.
CREATE INDEX runs_job_slot_desc ON runs (job, slot DESC, id DESC);
