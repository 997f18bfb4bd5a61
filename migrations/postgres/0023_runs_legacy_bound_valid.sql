-- no-transaction
-- Reads every row once, under a lock that holds up no write (SHARE UPDATE EXCLUSIVE).
ALTER TABLE runs VALIDATE CONSTRAINT runs_legacy_bound;
