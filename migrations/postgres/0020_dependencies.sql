-- Jobs that wait for other jobs (`after:`). A run released by its awaited runs is a row of
-- trigger `upstream` whose slot is theirs. A manual or backfill run releases the runs waiting
-- for its job only when its request asked (`cascade`); its claim copies the request's word onto
-- the run, so the leader's scan of ended runs reads it off the row.
ALTER TABLE runs ADD COLUMN cascade boolean NOT NULL DEFAULT false;
ALTER TABLE triggers ADD COLUMN cascade boolean NOT NULL DEFAULT false;
ALTER TABLE backfills ADD COLUMN cascade boolean NOT NULL DEFAULT false;
