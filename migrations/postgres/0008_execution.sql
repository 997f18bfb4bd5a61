-- Issue 19, execution across replicas: a run of a job with `run_on: any` or `{ tags: [..] }` is
-- claimed and started by the leader under its term, as every run, and executed by the replica
-- named in `executor` under an execution lease of its own.
--
-- `executor`: the replica the run (its current `attempt`) is assigned to; NULL for a run the
-- leader executes itself. `accepted`: the replica has accepted it (a conditional write keyed on
-- (id, attempt, executor)) and may execute it. `lease_until`: by the database's clock, until
-- when the replica must accept (not accepted yet) or renew (accepted); the leader gives the
-- attempt up only once it has passed by a grace period. `cancel_requested`: the leader asked
-- (`replace`) for the run to stop; the replica's next renewal is refused.
ALTER TABLE runs ADD COLUMN executor text;
ALTER TABLE runs ADD COLUMN accepted boolean NOT NULL DEFAULT false;
ALTER TABLE runs ADD COLUMN lease_until timestamptz;
ALTER TABLE runs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
CREATE INDEX runs_executing ON runs (executor) WHERE status = 'running' AND executor IS NOT NULL;

-- Every replica advertises itself here, every renewal interval, by the database's clock: what
-- it offers (its tags, comma-separated, and how many runs it takes at once). The leader counts
-- a replica seen within an execution lease as live.
CREATE TABLE replicas (
    node       text        PRIMARY KEY,
    tags       text        NOT NULL DEFAULT '',
    max_runs   integer     NOT NULL CHECK (max_runs > 0),
    last_seen  timestamptz NOT NULL DEFAULT now()
);
