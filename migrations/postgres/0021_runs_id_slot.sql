-- no-transaction
-- The ledger becomes partitioned by slot (0024): its unique keys must hold the partition key, so
-- a run is found by (id, slot) there. Built CONCURRENTLY on the table as it stands (claims go
-- on), it becomes the index that the table, attached as the first partition, brings with it.
-- An interrupted build leaves an invalid index, which `store::migrate` drops before retrying.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS runs_legacy_id_slot ON runs (id, slot);
