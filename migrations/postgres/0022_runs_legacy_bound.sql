-- The table as it stands becomes the ledger's first partition (0024), holding every slot before
-- the cut-over: the start of the UTC day after tomorrow (new claims go on landing in it until
-- then), or -infinity when it holds no row. Until 0024 has run, a slot from the cut-over on cannot
-- be recorded: an upgrade stopped between these steps must be resumed (start the new release
-- again) within a day. Attaching it without reading its rows under a lock
-- needs a CHECK constraint that proves its range: added NOT VALID here (a catalog change under a
-- lock of milliseconds), validated by 0023 without holding up writes.
--
-- The lock is asked for 100 ms at a time (`tenure_lock_exclusive`, 0010): a long reader ahead of
-- it would otherwise queue every claim behind this migration while it waits.
DO $$
DECLARE
    cutover timestamptz;
BEGIN
    PERFORM tenure_lock_exclusive('runs');
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'runs_legacy_bound') THEN
        RETURN;
    END IF;
    cutover := CASE WHEN EXISTS (SELECT 1 FROM runs) THEN date_trunc('day', now(), 'UTC') + interval '2 days'
                    ELSE '-infinity' END;
    EXECUTE format('ALTER TABLE runs ADD CONSTRAINT runs_legacy_bound CHECK (slot < %L::timestamptz) NOT VALID',
                   cutover);
END
$$;
