-- The leader's heartbeat in its term (see the PostgreSQL migration).
ALTER TABLE terms ADD COLUMN last_seen_at INTEGER;
