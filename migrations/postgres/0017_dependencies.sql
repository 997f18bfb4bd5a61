-- Jobs that wait for other jobs (`after:`). A run released by its awaited runs is a row of
-- trigger `upstream` whose slot is theirs. A manual or backfill run releases the runs waiting
-- for its job only when its request asked (`cascade`); its claim copies the request's word onto
-- the run, so the leader's scan of ended runs reads it off the row. IF NOT EXISTS, as 0019: applied
-- twice, it changes nothing.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS cascade boolean NOT NULL DEFAULT false;
ALTER TABLE triggers ADD COLUMN IF NOT EXISTS cascade boolean NOT NULL DEFAULT false;
ALTER TABLE backfills ADD COLUMN IF NOT EXISTS cascade boolean NOT NULL DEFAULT false;
