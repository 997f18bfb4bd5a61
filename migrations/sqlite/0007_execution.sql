-- The same as migrations/postgres/0008_execution.sql: execution across replicas. `tenure dev`
-- has one replica, both leader and executor. Instants are integer microseconds.
ALTER TABLE runs ADD COLUMN executor TEXT;
ALTER TABLE runs ADD COLUMN accepted BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN lease_until INTEGER;
ALTER TABLE runs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT 0;
CREATE INDEX runs_executing ON runs (executor) WHERE status = 'running' AND executor IS NOT NULL;

CREATE TABLE replicas (
    node       TEXT    PRIMARY KEY,
    tags       TEXT    NOT NULL DEFAULT '',
    max_runs   INTEGER NOT NULL CHECK (max_runs > 0),
    last_seen  INTEGER NOT NULL
);
