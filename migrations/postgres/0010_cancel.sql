-- Why a running run is to be stopped, and so the error it is recorded `killed` with: an
-- operator's cancel ("cancelled by admin (api): ...", written by the web, which starts and stops
-- nothing itself), or a `replace` ("replaced by a newer run"). The leader acts on an operator's
-- cancel by setting `cancel_requested` under the fence (as for `replace`): its own run is
-- stopped, and a run executing on another replica is refused its next renewal there. NULL for
-- every run nobody asked to stop.
--
-- A nullable column without a default changes only the catalog, under a lock of milliseconds,
-- asked for 100 ms at a time (as 0018 and 0024 do) so that a long reader ahead of it never
-- queues the claims behind this migration. Its index is built CONCURRENTLY by 0011: built here,
-- in this transaction, it would hold up every claim while it read the whole table (1.5 s at
-- 10,000,000 rows, measured).
DO $$
BEGIN
    PERFORM set_config('lock_timeout', '100ms', true);
    FOR attempt IN 1..3000 LOOP
        BEGIN
            LOCK TABLE runs IN ACCESS EXCLUSIVE MODE;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = 3000 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.05 + random() * 0.1);
        END;
    END LOOP;
    ALTER TABLE runs ADD COLUMN IF NOT EXISTS cancel_reason text;
END
$$;
