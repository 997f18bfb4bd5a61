-- The same indexes as the PostgreSQL migrations 0010 to 0015: a job's history by status read
-- off (job, status, slot); `runs_job_slot_desc` held the keys of the (job, slot) key and
-- `runs_job_status` a prefix of the new index's; a pruned run's trigger and old outbox events
-- found by index.
CREATE INDEX runs_job_status_slot ON runs (job, status, slot);
DROP INDEX runs_job_slot_desc;
DROP INDEX runs_job_status;
CREATE INDEX triggers_run ON triggers (run_id);
CREATE INDEX notifications_created ON notifications (created_at) WHERE status <> 'pending';
