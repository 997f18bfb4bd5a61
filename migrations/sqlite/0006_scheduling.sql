-- See migrations/postgres/0007_scheduling.sql (0005 is left to another change made at the same
-- time). Instants are integer microseconds.
ALTER TABLE runs ADD COLUMN planned_at INTEGER;

ALTER TABLE triggers ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
ALTER TABLE triggers ADD COLUMN reason TEXT;
ALTER TABLE triggers ADD COLUMN concurrency TEXT;

CREATE TABLE backfills (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job           TEXT    NOT NULL,
    from_slot     INTEGER NOT NULL,
    to_slot       INTEGER NOT NULL,
    requested_by  TEXT    NOT NULL,
    requested_at  INTEGER NOT NULL,
    slots         INTEGER NOT NULL
);
CREATE TABLE backfill_slots (
    backfill_id  INTEGER NOT NULL REFERENCES backfills (id) ON DELETE CASCADE,
    job          TEXT    NOT NULL,
    slot         INTEGER NOT NULL,
    PRIMARY KEY (job, slot)
);
CREATE INDEX backfill_slots_backfill ON backfill_slots (backfill_id, slot);
