-- See migrations/postgres/0009_began.sql: when a run really began, written with its outcome,
-- and `late` told from it. Instants are integer microseconds.
ALTER TABLE runs ADD COLUMN began_at INTEGER;

CREATE TRIGGER runs_notify_late_began AFTER UPDATE OF began_at ON runs
    WHEN OLD.began_at IS NULL AND NEW.attempt = 1 AND NEW.began_at > COALESCE(NEW.planned_at, NEW.slot)
BEGIN
    INSERT INTO notifications (run_id, job, slot, event, target, label)
    SELECT NEW.id, NEW.job, NEW.slot, 'late', r.target, r.label
    FROM notify_routes r
    WHERE r.job = NEW.job AND r.late_ms IS NOT NULL
      AND NEW.began_at - COALESCE(NEW.planned_at, NEW.slot) > r.late_ms * 1000
      AND COALESCE(NEW.started_at, NEW.planned_at, NEW.slot) - COALESCE(NEW.planned_at, NEW.slot)
          <= r.late_ms * 1000;
END;
