-- Jobs that wait for other jobs (`after:`). A run released by its awaited runs is a row of
-- trigger `upstream` whose slot is theirs. A manual or backfill run releases the runs waiting
-- for its job only when its request asked (`cascade`); its claim copies the request's word onto
-- the run, so the leader's scan of ended runs reads it off the row.
--
-- Adding a column with a constant default changes only the catalog, under a lock of
-- milliseconds; the lock is asked for 100 ms at a time (`tenure_lock_exclusive`, 0010), so that
-- a long reader ahead of it never queues the claims behind this migration while it waits. IF NOT EXISTS, as 0020:
-- applied twice, it changes nothing.
SELECT tenure_lock_exclusive('runs, triggers, backfills');
ALTER TABLE runs ADD COLUMN IF NOT EXISTS cascade boolean NOT NULL DEFAULT false;
ALTER TABLE triggers ADD COLUMN IF NOT EXISTS cascade boolean NOT NULL DEFAULT false;
ALTER TABLE backfills ADD COLUMN IF NOT EXISTS cascade boolean NOT NULL DEFAULT false;
