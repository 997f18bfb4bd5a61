-- Why a running run is to be stopped, and so the error it is recorded `killed` with: an
-- operator's cancel ("cancelled by admin (api): ...", written by the web, which starts and stops
-- nothing itself), or a `replace` ("replaced by a newer run"). The leader acts on an operator's
-- cancel by setting `cancel_requested` under the fence (as for `replace`): its own run is
-- stopped, and a run executing on another replica is refused its next renewal there. NULL for
-- every run nobody asked to stop.
ALTER TABLE runs ADD COLUMN cancel_reason text;

-- What the leader reads each time the controls may have changed: the cancels it has not acted on.
CREATE INDEX runs_cancels_pending ON runs (id)
    WHERE status = 'running' AND cancel_reason IS NOT NULL AND NOT cancel_requested;
