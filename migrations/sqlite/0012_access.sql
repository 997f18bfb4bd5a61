-- See migrations/postgres/0010_access.sql: named API tokens (salted hashes), the replicas' shared
-- keys and the append-only audit trail. Instants are integer microseconds.
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    teams       TEXT NOT NULL DEFAULT '',
    salt        BLOB NOT NULL,
    hash        BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER,
    revoked_by  TEXT
);

CREATE TABLE web_keys (
    name TEXT PRIMARY KEY,
    key  BLOB NOT NULL
);

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    who         TEXT NOT NULL,
    role        TEXT,
    teams       TEXT NOT NULL DEFAULT '',
    via         TEXT NOT NULL,
    source      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    action      TEXT NOT NULL,
    job         TEXT,
    job_team    TEXT,
    target      TEXT,
    outcome     TEXT NOT NULL CHECK (outcome IN ('done', 'refused')),
    detail      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_who ON audit (who, id);
CREATE INDEX audit_by_job ON audit (job, id);
CREATE INDEX audit_by_at ON audit (at);

CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
