-- When a run really began: the instant its current attempt's process was spawned (after the
-- replica's supervisor reported the spawn) or its HTTP request began to be sent, by the clock of
-- the replica that executed it. Written with the attempt's outcome (the leader's batched
-- outcomes, or a worker's `finish_execution`), never at the slot: nothing is added to the
-- firing path. NULL while the run goes, for a run that never began (missed, skipped, killed
-- before its start, a process that could not be started), for one whose outcome its replica
-- never wrote (lost), and on rows written before this migration.
--
-- `started_at` keeps its meaning: the instant the fenced start was recorded, which for a start
-- recorded ahead is the planned start itself. Lateness is `began_at - planned_at`, a duration
-- `finished_at - began_at`.
ALTER TABLE runs ADD COLUMN began_at timestamptz;

-- `late` (notifications) from the real begin. A start recorded later than a route's threshold
-- is still told when it is recorded (0007's trigger): the run cannot begin before its start, so
-- that lateness is certain at once, and a long run's receiver hears it while the run goes. A
-- run whose start was recorded in time but which began later than the threshold (its replica
-- overloaded, its supervisor stalled) is told with its outcome, the first moment the ledger
-- knows it; never twice for one route. Only a first attempt: a retry begins after the earlier
-- attempts and their backoff by design, which is no lateness of the run.
CREATE FUNCTION runs_notify_began() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notifications (run_id, job, slot, event, target, label)
    SELECT NEW.id, NEW.job, NEW.slot, 'late', r.target, r.label
    FROM notify_routes r
    WHERE r.job = NEW.job AND r.late_ms IS NOT NULL
      AND NEW.began_at - COALESCE(NEW.planned_at, NEW.slot) > r.late_ms * interval '1 millisecond'
      AND COALESCE(NEW.started_at, NEW.planned_at, NEW.slot) - COALESCE(NEW.planned_at, NEW.slot)
          <= r.late_ms * interval '1 millisecond';
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_notify_began AFTER UPDATE OF began_at ON runs
    FOR EACH ROW WHEN (OLD.began_at IS NULL AND NEW.attempt = 1
                       AND NEW.began_at > COALESCE(NEW.planned_at, NEW.slot))
    EXECUTE FUNCTION runs_notify_began();
