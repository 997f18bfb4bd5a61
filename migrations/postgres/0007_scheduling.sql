-- Issue 17, scheduling features. (0006 is left to another change made at the same time; sqlx
-- applies every migration it has not applied, gaps included.)

-- When the run was planned to start: its slot plus the job's jitter offset (the slot itself
-- without jitter; the claim instant for a backfill). Lateness and the starting deadline are
-- measured from it. NULL on rows written before this migration: read as the slot.
ALTER TABLE runs ADD COLUMN planned_at timestamptz;

-- What an operator's manual trigger asked for, beside the run it made: environment overrides
-- (a JSON object of names to values), a reason, and a concurrency policy other than the job's
-- (NULL: the job's own).
ALTER TABLE triggers ADD COLUMN env text NOT NULL DEFAULT '{}';
ALTER TABLE triggers ADD COLUMN reason text;
ALTER TABLE triggers ADD COLUMN concurrency text;

-- A backfill request: every slot of the job's schedule in [from_slot, to_slot] that the ledger
-- did not hold when it was requested, queued in `backfill_slots` for the leader to claim (the
-- same fenced claim as a scheduled slot, trigger `backfill`). A slot leaves the queue once its
-- row in `runs` has started or ended; the (job, slot) key keeps a slot to one queue entry and
-- one run, so a request made twice queues nothing new.
CREATE TABLE backfills (
    id            bigserial   PRIMARY KEY,
    job           text        NOT NULL,
    from_slot     timestamptz NOT NULL,
    to_slot       timestamptz NOT NULL,
    requested_by  text        NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    slots         bigint      NOT NULL
);
CREATE TABLE backfill_slots (
    backfill_id  bigint      NOT NULL REFERENCES backfills (id) ON DELETE CASCADE,
    job          text        NOT NULL,
    slot         timestamptz NOT NULL,
    PRIMARY KEY (job, slot)
);
CREATE INDEX backfill_slots_backfill ON backfill_slots (backfill_id, slot);
