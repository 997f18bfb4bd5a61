-- no-transaction
-- The same keys as `runs_job_slot_key` (job, slot), which a backward scan reads newest first:
-- twice the size (rows arrive in ascending slot order and left its pages half empty) for nothing.
DROP INDEX CONCURRENTLY IF EXISTS runs_job_slot_desc;
