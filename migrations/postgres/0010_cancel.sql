-- Why a running run is to be stopped, and so the error it is recorded `killed` with: an
-- operator's cancel ("cancelled by admin (api): ...", written by the web, which starts and stops
-- nothing itself), or a `replace` ("replaced by a newer run"). The leader acts on an operator's
-- cancel by setting `cancel_requested` under the fence (as for `replace`): its own run is
-- stopped, and a run executing on another replica is refused its next renewal there. NULL for
-- every run nobody asked to stop.
--
-- A nullable column without a default changes only the catalog, under a lock of milliseconds.
-- Its index is built CONCURRENTLY by 0011: built here, in this transaction, it would hold up
-- every claim while it read the whole table (1.5 s at 10,000,000 rows, measured).
--
-- `tenure_lock_exclusive(tables)` takes ACCESS EXCLUSIVE locks on `tables` (a LOCK TABLE list)
-- for the rest of the calling transaction, asked for 100 ms at a time with a pause between
-- (for up to about 7 minutes, then the migration fails and is retried at the next start): a
-- lock request queued behind a long reader would queue every claim behind it, where a request
-- that gives up lets them pass. Every migration that changes a table the claims use takes its
-- lock through it (0018, 0022, 0024).
CREATE OR REPLACE FUNCTION tenure_lock_exclusive(tables text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lock_timeout', '100ms', true);
    FOR attempt IN 1..3000 LOOP
        BEGIN
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tables);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = 3000 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.05 + random() * 0.1);
        END;
    END LOOP;
END
$$;

SELECT tenure_lock_exclusive('runs');
ALTER TABLE runs ADD COLUMN IF NOT EXISTS cancel_reason text;
