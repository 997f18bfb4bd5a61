-- The range of slots retention is rewriting, if any: [sealed_from, sealed_to). Every statement
-- that records a slot reads the fence `FOR SHARE` and records nothing in that range, so setting
-- it (an update of this row, which waits for the claims in flight and is waited for by the next
-- ones, as `begin_term` is) closes the range to claims before its partition is copied; a claim
-- refused there is a delay, retried once the range is open again. NULL: nothing sealed.
ALTER TABLE fence ADD COLUMN IF NOT EXISTS sealed_from timestamptz;
ALTER TABLE fence ADD COLUMN IF NOT EXISTS sealed_to timestamptz;
