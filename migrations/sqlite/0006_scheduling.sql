-- See migrations/postgres/0007_scheduling.sql. Instants are integer microseconds.
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

-- A start is `late` by its planned start, not its slot (see the PostgreSQL migration).
DROP TRIGGER runs_notify_late_insert;
DROP TRIGGER runs_notify_late_update;
CREATE TRIGGER runs_notify_late_insert AFTER INSERT ON runs
    WHEN NEW.started_at > COALESCE(NEW.planned_at, NEW.slot)
BEGIN
    INSERT INTO notifications (run_id, job, slot, event, target, label)
    SELECT NEW.id, NEW.job, NEW.slot, 'late', r.target, r.label
    FROM notify_routes r
    WHERE r.job = NEW.job AND r.late_ms IS NOT NULL
      AND NEW.started_at - COALESCE(NEW.planned_at, NEW.slot) > r.late_ms * 1000;
END;
CREATE TRIGGER runs_notify_late_update AFTER UPDATE OF started_at ON runs
    WHEN OLD.started_at IS NULL AND NEW.started_at > COALESCE(NEW.planned_at, NEW.slot)
BEGIN
    INSERT INTO notifications (run_id, job, slot, event, target, label)
    SELECT NEW.id, NEW.job, NEW.slot, 'late', r.target, r.label
    FROM notify_routes r
    WHERE r.job = NEW.job AND r.late_ms IS NOT NULL
      AND NEW.started_at - COALESCE(NEW.planned_at, NEW.slot) > r.late_ms * 1000;
END;
