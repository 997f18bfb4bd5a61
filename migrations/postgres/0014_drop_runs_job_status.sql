-- no-transaction
-- Its keys are a prefix of `runs_job_status_slot`'s, which answers every query it did.
DROP INDEX CONCURRENTLY IF EXISTS runs_job_status;
