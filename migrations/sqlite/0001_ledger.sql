-- The same ledger as migrations/postgres, for `tenure dev`. Instants are integer microseconds
-- since the Unix epoch (UTC).
CREATE TABLE fence (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    term        INTEGER NOT NULL,
    cluster_id  TEXT    NOT NULL,
    node        TEXT    NOT NULL,
    raised_at   INTEGER NOT NULL DEFAULT 0
);
INSERT INTO fence (id, term, cluster_id, node) VALUES (1, 0, '', '');

CREATE TABLE terms (
    term        INTEGER PRIMARY KEY,
    cluster_id  TEXT    NOT NULL,
    node        TEXT    NOT NULL,
    started_at  INTEGER NOT NULL
);

CREATE TABLE runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job          TEXT    NOT NULL,
    slot         INTEGER NOT NULL,
    trigger      TEXT    NOT NULL DEFAULT 'schedule',
    term         INTEGER NOT NULL,
    node         TEXT    NOT NULL,
    config_hash  TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN
        ('running', 'succeeded', 'failed', 'timed_out', 'killed', 'skipped', 'missed', 'lost')),
    attempt      INTEGER NOT NULL DEFAULT 1,
    claimed_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    exit_code    INTEGER,
    http_status  INTEGER,
    error        TEXT,
    output       TEXT    NOT NULL DEFAULT '',
    UNIQUE (job, slot)
);
CREATE INDEX runs_job_status ON runs (job, status);
CREATE INDEX runs_job_slot_desc ON runs (job, slot DESC, id DESC);

CREATE TABLE job_controls (
    job         TEXT    PRIMARY KEY,
    paused      BOOLEAN NOT NULL,
    updated_by  TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE triggers (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job              TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL UNIQUE,
    requested_by     TEXT    NOT NULL,
    requested_at     INTEGER NOT NULL,
    run_id           INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    handled_at       INTEGER
);
