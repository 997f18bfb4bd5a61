-- Issue 17, scheduling features.

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

-- A start is `late` (notifications) by its planned start, not its slot: a jittered run started
-- at its offset, or a backfill started when it was claimed, is on time. The function is 0006's
-- otherwise, unchanged.
CREATE OR REPLACE FUNCTION runs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Most jobs tell nobody: one index probe and nothing more (an outcome costs ~2 us more).
    IF NOT EXISTS (SELECT 1 FROM notify_routes WHERE job = NEW.job) THEN
        RETURN NULL;
    END IF;
    IF NEW.status <> 'running' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status) THEN
        INSERT INTO notifications (run_id, job, slot, event, target, label)
        SELECT NEW.id, NEW.job, NEW.slot, NEW.status, r.target, r.label
        FROM notify_routes r
        WHERE r.job = NEW.job AND strpos(r.events, ',' || NEW.status || ',') > 0;
        IF NEW.status = 'succeeded' THEN
            INSERT INTO notifications (run_id, job, slot, event, target, label)
            SELECT NEW.id, NEW.job, NEW.slot, 'recovered', r.target, r.label
            FROM notify_routes r
            WHERE r.job = NEW.job AND strpos(r.events, ',recovered,') > 0
              AND (SELECT p.status FROM runs p
                   WHERE p.job = NEW.job AND p.slot < NEW.slot AND p.status NOT IN ('running', 'skipped', 'missed')
                   ORDER BY p.slot DESC LIMIT 1) IN ('failed', 'timed_out', 'killed', 'lost');
        END IF;
    END IF;
    IF NEW.started_at > COALESCE(NEW.planned_at, NEW.slot) AND (TG_OP = 'INSERT' OR OLD.started_at IS NULL) THEN
        INSERT INTO notifications (run_id, job, slot, event, target, label)
        SELECT NEW.id, NEW.job, NEW.slot, 'late', r.target, r.label
        FROM notify_routes r
        WHERE r.job = NEW.job AND r.late_ms IS NOT NULL
          AND NEW.started_at - COALESCE(NEW.planned_at, NEW.slot) > r.late_ms * interval '1 millisecond';
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER runs_notify_insert ON runs;
DROP TRIGGER runs_notify_update ON runs;
CREATE TRIGGER runs_notify_insert AFTER INSERT ON runs
    FOR EACH ROW WHEN (NEW.status <> 'running' OR NEW.started_at > COALESCE(NEW.planned_at, NEW.slot))
    EXECUTE FUNCTION runs_notify();
CREATE TRIGGER runs_notify_update AFTER UPDATE OF status, started_at ON runs
    FOR EACH ROW WHEN ((NEW.status <> 'running' AND OLD.status IS DISTINCT FROM NEW.status)
                       OR (OLD.started_at IS NULL AND NEW.started_at > COALESCE(NEW.planned_at, NEW.slot)))
    EXECUTE FUNCTION runs_notify();
