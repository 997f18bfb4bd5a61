-- The fence: the newest term any leader has raised, and the etcd cluster it came from.
-- Exactly one row. A claim is accepted only while its term is >= fence.term.
CREATE TABLE fence (
    id          smallint    PRIMARY KEY CHECK (id = 1),
    term        bigint      NOT NULL,
    cluster_id  text        NOT NULL,
    node        text        NOT NULL,
    raised_at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO fence (id, term, cluster_id, node) VALUES (1, 0, '', '');

-- Who led when: one row per term, written in the same transaction that raises the fence.
CREATE TABLE terms (
    term        bigint      PRIMARY KEY,
    cluster_id  text        NOT NULL,
    node        text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);

-- The run ledger: one row per (job, slot). The unique key is what makes a slot fire once.
CREATE TABLE runs (
    id           bigserial   PRIMARY KEY,
    job          text        NOT NULL,
    slot         timestamptz NOT NULL,
    trigger      text        NOT NULL DEFAULT 'schedule',
    term         bigint      NOT NULL,
    node         text        NOT NULL,
    config_hash  text        NOT NULL,
    status       text        NOT NULL,
    attempt      integer     NOT NULL DEFAULT 1,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    exit_code    integer,
    http_status  integer,
    error        text,
    output       text        NOT NULL DEFAULT '',
    CONSTRAINT runs_job_slot_key UNIQUE (job, slot),
    CONSTRAINT runs_status_check CHECK (status IN
        ('running', 'succeeded', 'failed', 'timed_out', 'killed', 'skipped', 'missed', 'lost'))
);
CREATE INDEX runs_job_status ON runs (job, status);
CREATE INDEX runs_running ON runs (term) WHERE status = 'running';
