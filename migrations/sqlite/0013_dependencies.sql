-- As PostgreSQL's 0018 and 0019: whether a manual or backfill run releases the runs waiting for
-- its job (`cascade`), on the request and the run; a job's recently ended runs by index.
ALTER TABLE runs ADD COLUMN cascade INTEGER NOT NULL DEFAULT 0;
ALTER TABLE triggers ADD COLUMN cascade INTEGER NOT NULL DEFAULT 0;
ALTER TABLE backfills ADD COLUMN cascade INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_job_ended ON runs (job, (COALESCE(finished_at, claimed_at)));
