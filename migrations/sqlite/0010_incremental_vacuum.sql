-- no-transaction
-- Space freed by retention goes back to the file system: pruning ends each batch with
-- `PRAGMA incremental_vacuum`. The mode takes effect on an existing file only through one
-- VACUUM, which rewrites the ledger once, at this start-up (about 2 s per 100 MB).
PRAGMA auto_vacuum = INCREMENTAL;
VACUUM;
