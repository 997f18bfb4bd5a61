-- no-transaction
-- Retention of the outbox by age (delivered or abandoned events): found by index, not by
-- reading every event the outbox ever held.
CREATE INDEX CONCURRENTLY IF NOT EXISTS notifications_created ON notifications (created_at) WHERE status <> 'pending';
