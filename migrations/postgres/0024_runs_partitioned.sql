-- The ledger partitioned by slot, one partition a UTC week (Monday to Monday), so that retention gives disk back by
-- dropping (or rewriting) whole partitions instead of leaving deleted rows' space in the table.
--
-- The table as it stands is renamed `runs_legacy` and attached as the first partition, covering
-- every slot before its cut-over (0022, proven by the constraint 0023 validated): no row is
-- copied and nothing is read under the lock, which is held for a few catalog changes and asked
-- for 100 ms at a time (`tenure_lock_exclusive`, 0010: a long reader ahead of it must not queue
-- the claims behind it).
--
-- The keys the ledger relies on hold the partition key: UNIQUE (job, slot) stays one constraint
-- over every partition (a slot is in exactly one partition, whose unique index holds it), and
-- a run is found by (id, slot) (ids still come from the one sequence, now owned by the parent).
-- `triggers.run_id` loses its foreign key (a key to a partitioned table must hold the partition
-- key, and dropping a partition does not run ON DELETE actions): every reader joins it to `runs`
-- and takes a run that is not there for one retention removed, as ON DELETE SET NULL left it.
-- The outbox's triggers move to the parent, which gives them to every partition.
DO $$
DECLARE
    cutover timestamptz;
    day timestamptz;
    next timestamptz;
BEGIN
    PERFORM tenure_lock_exclusive('runs, triggers');
    SELECT (regexp_match(pg_get_constraintdef(oid), '''([^'']+)'''))[1]::timestamptz INTO STRICT cutover
    FROM pg_constraint WHERE conname = 'runs_legacy_bound' AND conrelid = 'runs'::regclass;

    ALTER TABLE triggers DROP CONSTRAINT IF EXISTS triggers_run_id_fkey;
    DROP TRIGGER runs_notify_insert ON runs;
    DROP TRIGGER runs_notify_update ON runs;
    DROP TRIGGER runs_notify_began ON runs;
    ALTER TABLE runs RENAME TO runs_legacy;
    -- (id) alone is no key of the partitioned ledger; (id, slot), built by 0021, replaces it.
    ALTER TABLE runs_legacy DROP CONSTRAINT runs_pkey;
    ALTER INDEX runs_job_slot_key RENAME TO runs_legacy_job_slot_key;
    ALTER INDEX runs_job_status_slot RENAME TO runs_legacy_job_status_slot;
    ALTER INDEX runs_running RENAME TO runs_legacy_running;
    ALTER INDEX runs_unstarted RENAME TO runs_legacy_unstarted;
    ALTER INDEX runs_executing RENAME TO runs_legacy_executing;
    ALTER INDEX runs_cancels_pending RENAME TO runs_legacy_cancels_pending;
    ALTER INDEX runs_job_ended RENAME TO runs_legacy_job_ended;

    CREATE TABLE runs (LIKE runs_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)
        PARTITION BY RANGE (slot);
    ALTER TABLE runs DROP CONSTRAINT runs_legacy_bound;
    ALTER TABLE runs ADD CONSTRAINT runs_job_slot_key UNIQUE (job, slot);
    CREATE UNIQUE INDEX runs_id_slot ON runs (id, slot);
    CREATE INDEX runs_job_status_slot ON runs (job, status, slot);
    CREATE INDEX runs_running ON runs (term) WHERE status = 'running';
    CREATE INDEX runs_unstarted ON runs (job, slot) WHERE status = 'running' AND started_at IS NULL;
    CREATE INDEX runs_executing ON runs (executor) WHERE status = 'running' AND executor IS NOT NULL;
    CREATE INDEX runs_cancels_pending ON runs (id)
        WHERE status = 'running' AND cancel_reason IS NOT NULL AND NOT cancel_requested;
    CREATE INDEX runs_job_ended ON runs (job, (COALESCE(finished_at, claimed_at)));
    ALTER SEQUENCE runs_id_seq OWNED BY runs.id;
    -- `status` takes one of eight values, whatever a partition's statistics saw: a day on which
    -- every run succeeded must not make a generic plan take a filter on it for free (and page a
    -- job's failures off (job, slot), reading every row of the day). Set on each partition.
    ALTER TABLE runs_legacy ALTER COLUMN status SET (n_distinct = 8);
    EXECUTE format('ALTER TABLE runs ATTACH PARTITION runs_legacy FOR VALUES FROM (MINVALUE) TO (%L)', cutover);

    -- The weeks after the cut-over (from yesterday when nothing came before), the first one
    -- from the cut-over to the next Monday: the leader creates the following ones ahead of
    -- time, and any missing one when a claim needs it.
    day := greatest(cutover, date_trunc('day', now(), 'UTC') - interval '1 day');
    WHILE day < date_trunc('day', now(), 'UTC') + interval '9 days' LOOP
        next := date_trunc('week', day, 'UTC') + interval '7 days';
        EXECUTE format('CREATE TABLE %I (LIKE runs INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)',
                       'runs_' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'));
        EXECUTE format('ALTER TABLE %I ALTER COLUMN status SET (n_distinct = 8)',
                       'runs_' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'));
        EXECUTE format('ALTER TABLE runs ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       'runs_' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'), day, next);
        day := next;
    END LOOP;

    CREATE TRIGGER runs_notify_insert AFTER INSERT ON runs
        FOR EACH ROW WHEN (NEW.status <> 'running' OR NEW.started_at > COALESCE(NEW.planned_at, NEW.slot))
        EXECUTE FUNCTION runs_notify();
    CREATE TRIGGER runs_notify_update AFTER UPDATE OF status, started_at ON runs
        FOR EACH ROW WHEN ((NEW.status <> 'running' AND OLD.status IS DISTINCT FROM NEW.status)
                           OR (OLD.started_at IS NULL AND NEW.started_at > COALESCE(NEW.planned_at, NEW.slot)))
        EXECUTE FUNCTION runs_notify();
    CREATE TRIGGER runs_notify_began AFTER UPDATE OF began_at ON runs
        FOR EACH ROW WHEN (OLD.began_at IS NULL AND NEW.attempt = 1
                           AND NEW.began_at > COALESCE(NEW.planned_at, NEW.slot))
        EXECUTE FUNCTION runs_notify_began();
END
$$;
