-- See migrations/postgres/0010_cancel.sql: why a running run is to be stopped (an operator's
-- cancel or a `replace`), recorded as its error when it is killed.
ALTER TABLE runs ADD COLUMN cancel_reason TEXT;

CREATE INDEX runs_cancels_pending ON runs (id)
    WHERE status = 'running' AND cancel_reason IS NOT NULL AND NOT cancel_requested;
