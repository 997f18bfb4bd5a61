-- no-transaction
-- What the leader reads each time the controls may have changed: the cancels it has not acted
-- on. Built CONCURRENTLY (claims go on while it reads the table), one statement per file, as
-- `0012`.
CREATE INDEX CONCURRENTLY IF NOT EXISTS runs_cancels_pending ON runs (id)
    WHERE status = 'running' AND cancel_reason IS NOT NULL AND NOT cancel_requested;
