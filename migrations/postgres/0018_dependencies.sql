-- Jobs that wait for other jobs (`after:`). A run released by its awaited runs is a row of
-- trigger `upstream` whose slot is theirs. A manual or backfill run releases the runs waiting
-- for its job only when its request asked (`cascade`); its claim copies the request's word onto
-- the run, so the leader's scan of ended runs reads it off the row.
--
-- Adding a column with a constant default changes only the catalog, under a lock of
-- milliseconds; the lock is asked for 100 ms at a time, as 0024 does, so that a long reader ahead
-- of it never queues the claims behind this migration while it waits. IF NOT EXISTS, as 0020:
-- applied twice, it changes nothing.
DO $$
BEGIN
    PERFORM set_config('lock_timeout', '100ms', true);
    FOR attempt IN 1..3000 LOOP
        BEGIN
            LOCK TABLE runs, triggers, backfills IN ACCESS EXCLUSIVE MODE;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = 3000 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.05 + random() * 0.1);
        END;
    END LOOP;
    ALTER TABLE runs ADD COLUMN IF NOT EXISTS cascade boolean NOT NULL DEFAULT false;
    ALTER TABLE triggers ADD COLUMN IF NOT EXISTS cascade boolean NOT NULL DEFAULT false;
    ALTER TABLE backfills ADD COLUMN IF NOT EXISTS cascade boolean NOT NULL DEFAULT false;
END
$$;
