-- no-transaction
-- Deleting a run sets its trigger's `run_id` to NULL (ON DELETE SET NULL): without this index
-- every pruned row scanned the whole `triggers` table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS triggers_run ON triggers (run_id);
