-- alipay-sidecar state store, schema version 3 (issue 22): the backfill from Alipay's
-- notification event log (inquireNotificationList).
-- backfill_cursors: one row per merchant. last_complete_to is the eventCreateTimeTo (UTC ms) of
--   the last walk that reached the end of the list; the next walk starts there (minus an
--   overlap). lease_owner/lease_until: the replica walking now (PostgreSQL: one at a time).
CREATE TABLE backfill_cursors (
    merchant          TEXT PRIMARY KEY,
    last_complete_to  BIGINT,
    last_complete_at  BIGINT,
    lease_owner       TEXT,
    lease_until       BIGINT
);
-- "Is this event journaled?" by its key without the notify path (which the event log does
-- not carry).
CREATE INDEX notifications_business ON notifications (client_id, business_id);
