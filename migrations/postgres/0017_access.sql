-- Who may do what, and who did what.
--
-- `api_tokens`: named API tokens. A token is `tenure_<id>_<secret>`; only `id` is stored as is,
-- the secret as SHA-256(salt || secret) with 16 random bytes of salt of its own. `teams` is a
-- comma-separated list; empty means every team. A token is valid while `revoked_at` is NULL and
-- `expires_at` is NULL or later than the database's clock, read on every request: a revocation or
-- an expiry holds on every replica at the next request.
CREATE TABLE api_tokens (
    id          text PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    teams       text NOT NULL DEFAULT '',
    salt        bytea NOT NULL,
    hash        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    expires_at  timestamptz,
    revoked_at  timestamptz,
    revoked_by  text
);

-- Keys the replicas share (the forms' anti-forgery key): made once by whichever replica needs
-- one first, then read by every replica.
CREATE TABLE web_keys (
    name text PRIMARY KEY,
    key  bytea NOT NULL
);

-- The audit trail: every change made through the web (trigger, cancel, pause, resume, backfill,
-- token created or revoked) and every refused attempt, written in the change's own transaction.
-- Append-only: tenure has no statement that changes a row, and the trigger below refuses one;
-- rows go only by age (`--audit-retain`).
CREATE TABLE audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    who         text NOT NULL,
    role        text,
    teams       text NOT NULL DEFAULT '',
    via         text NOT NULL,
    source      text NOT NULL,
    request_id  text NOT NULL,
    action      text NOT NULL,
    job         text,
    job_team    text,
    target      text,
    outcome     text NOT NULL CHECK (outcome IN ('done', 'refused')),
    detail      text NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_who ON audit (who, id);
CREATE INDEX audit_by_job ON audit (job, id);
CREATE INDEX audit_by_at ON audit (at);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END;
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only();
