-- no-transaction
-- Space freed by retention goes back to the file system: pruning ends each batch with
-- `PRAGMA incremental_vacuum`. The mode takes effect on an existing file only through one
-- VACUUM, which rewrites the ledger file once, at this start-up, before anything fires.
PRAGMA auto_vacuum = INCREMENTAL;
VACUUM;
