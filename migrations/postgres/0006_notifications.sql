-- Who is told about which outcomes of which job: one row per (job, notification target), written
-- by the leader from its job file under the fence. `target` is a fingerprint of the target's
-- definition (never a secret); `label` is what may be shown of it (scheme and host).
-- `events` is a comma-framed list of words (',failed,lost,recovered,'); `late_ms` the lateness
-- above which a start is told, when asked for.
CREATE TABLE notify_routes (
    job         text   NOT NULL,
    target      text   NOT NULL,
    label       text   NOT NULL,
    events      text   NOT NULL,
    late_ms     bigint,
    PRIMARY KEY (job, target)
);

-- The outbox: one row per event and target, inserted by the triggers below in the very statement
-- that records the outcome, so an outcome is never recorded without its events. The leader
-- delivers them: it takes a batch for a while (`sending_term`, `sending_until`, under the fence),
-- sends, and records the answer only while the row is still its own.
CREATE TABLE notifications (
    id             bigserial   PRIMARY KEY,
    run_id         bigint      NOT NULL,
    job            text        NOT NULL,
    slot           timestamptz NOT NULL,
    event          text        NOT NULL,
    target         text        NOT NULL,
    label          text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    status         text        NOT NULL DEFAULT 'pending',
    attempts       integer     NOT NULL DEFAULT 0,
    next_at        timestamptz NOT NULL DEFAULT now(),
    sending_term   bigint,
    sending_until  timestamptz,
    delivered_at   timestamptz,
    last_error     text,
    CONSTRAINT notifications_status_check CHECK (status IN ('pending', 'delivered', 'abandoned'))
);
CREATE INDEX notifications_due ON notifications (next_at) WHERE status = 'pending';
CREATE INDEX notifications_run ON notifications (run_id);

-- An outcome recorded (a row inserted or updated into a status other than `running`): one event
-- per route that asks for it, and `recovered` for a success whose previous ended run of the job
-- failed. A start recorded later than its slot: `late`, per route whose threshold it passed.
CREATE FUNCTION runs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF NEW.started_at > NEW.slot AND (TG_OP = 'INSERT' OR OLD.started_at IS NULL) THEN
        INSERT INTO notifications (run_id, job, slot, event, target, label)
        SELECT NEW.id, NEW.job, NEW.slot, 'late', r.target, r.label
        FROM notify_routes r
        WHERE r.job = NEW.job AND r.late_ms IS NOT NULL
          AND NEW.started_at - NEW.slot > r.late_ms * interval '1 millisecond';
    END IF;
    RETURN NULL;
END
$$;

-- The conditions are repeated in WHEN so that the function is not even called for the common
-- writes (a claim, a start on time, an output update).
CREATE TRIGGER runs_notify_insert AFTER INSERT ON runs
    FOR EACH ROW WHEN (NEW.status <> 'running' OR NEW.started_at > NEW.slot)
    EXECUTE FUNCTION runs_notify();
CREATE TRIGGER runs_notify_update AFTER UPDATE OF status, started_at ON runs
    FOR EACH ROW WHEN ((NEW.status <> 'running' AND OLD.status IS DISTINCT FROM NEW.status)
                       OR (OLD.started_at IS NULL AND NEW.started_at > NEW.slot))
    EXECUTE FUNCTION runs_notify();
