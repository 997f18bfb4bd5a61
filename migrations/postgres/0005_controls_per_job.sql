-- An idempotency key is unique per job, not across jobs: the same key sent for another job is
-- that job's own trigger.
ALTER TABLE triggers DROP CONSTRAINT triggers_idempotency_key_key;
ALTER TABLE triggers ADD CONSTRAINT triggers_job_idempotency_key_key UNIQUE (job, idempotency_key);

-- When an operator last ended a pause of the job. A term that loads the job's cursor starts it
-- no earlier than this, so the paused period is neither replayed nor recorded `missed`, even
-- when the leader that saw the resume dies before the job fires again.
ALTER TABLE job_controls ADD COLUMN resumed_at timestamptz;
