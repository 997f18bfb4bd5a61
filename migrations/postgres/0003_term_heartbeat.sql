-- The leader's heartbeat in its term: the terms page measures each hand-over from the previous
-- leader's last heartbeat to the new term's start.
ALTER TABLE terms ADD COLUMN last_seen_at timestamptz;
