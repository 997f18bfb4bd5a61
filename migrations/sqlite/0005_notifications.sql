-- The same notification routes, outbox and triggers as migrations/postgres (0006), for
-- `tenure dev`. Instants are integer microseconds since the Unix epoch (UTC).
CREATE TABLE notify_routes (
    job         TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    label       TEXT    NOT NULL,
    events      TEXT    NOT NULL,
    late_ms     INTEGER,
    PRIMARY KEY (job, target)
);

CREATE TABLE notifications (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id         INTEGER NOT NULL,
    job            TEXT    NOT NULL,
    slot           INTEGER NOT NULL,
    event          TEXT    NOT NULL,
    target         TEXT    NOT NULL,
    label          TEXT    NOT NULL,
    created_at     INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    status         TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'abandoned')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    next_at        INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    sending_term   INTEGER,
    sending_until  INTEGER,
    delivered_at   INTEGER,
    last_error     TEXT
);
CREATE INDEX notifications_due ON notifications (next_at) WHERE status = 'pending';
CREATE INDEX notifications_run ON notifications (run_id);

CREATE TRIGGER runs_notify_outcome_insert AFTER INSERT ON runs
    WHEN NEW.status <> 'running'
BEGIN
    INSERT INTO notifications (run_id, job, slot, event, target, label)
    SELECT NEW.id, NEW.job, NEW.slot, NEW.status, r.target, r.label
    FROM notify_routes r
    WHERE r.job = NEW.job AND instr(r.events, ',' || NEW.status || ',') > 0;
END;

CREATE TRIGGER runs_notify_outcome_update AFTER UPDATE OF status ON runs
    WHEN NEW.status <> 'running' AND OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO notifications (run_id, job, slot, event, target, label)
    SELECT NEW.id, NEW.job, NEW.slot, NEW.status, r.target, r.label
    FROM notify_routes r
    WHERE r.job = NEW.job AND instr(r.events, ',' || NEW.status || ',') > 0;
    INSERT INTO notifications (run_id, job, slot, event, target, label)
    SELECT NEW.id, NEW.job, NEW.slot, 'recovered', r.target, r.label
    FROM notify_routes r
    WHERE NEW.status = 'succeeded' AND r.job = NEW.job AND instr(r.events, ',recovered,') > 0
      AND (SELECT p.status FROM runs p
           WHERE p.job = NEW.job AND p.slot < NEW.slot AND p.status NOT IN ('running', 'skipped', 'missed')
           ORDER BY p.slot DESC LIMIT 1) IN ('failed', 'timed_out', 'killed', 'lost');
END;

CREATE TRIGGER runs_notify_late_insert AFTER INSERT ON runs
    WHEN NEW.started_at > NEW.slot
BEGIN
    INSERT INTO notifications (run_id, job, slot, event, target, label)
    SELECT NEW.id, NEW.job, NEW.slot, 'late', r.target, r.label
    FROM notify_routes r
    WHERE r.job = NEW.job AND r.late_ms IS NOT NULL AND NEW.started_at - NEW.slot > r.late_ms * 1000;
END;

CREATE TRIGGER runs_notify_late_update AFTER UPDATE OF started_at ON runs
    WHEN OLD.started_at IS NULL AND NEW.started_at > NEW.slot
BEGIN
    INSERT INTO notifications (run_id, job, slot, event, target, label)
    SELECT NEW.id, NEW.job, NEW.slot, 'late', r.target, r.label
    FROM notify_routes r
    WHERE r.job = NEW.job AND r.late_ms IS NOT NULL AND NEW.started_at - NEW.slot > r.late_ms * 1000;
END;
