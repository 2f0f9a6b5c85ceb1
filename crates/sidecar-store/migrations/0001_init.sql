-- alipay-sidecar state store, schema version 1. ONE text for SQLite and PostgreSQL: only types
-- both accept (TEXT, BIGINT, BYTEA; SQLite gives BYTEA numeric affinity, which stores blobs
-- unchanged), no auto-increment (ids are derived from the data), times are UTC milliseconds.

-- The notification journal: one row per event (de-duplication key -> event_id), also the
-- store-and-forward queue (status 'pending' with a next_attempt_at).
CREATE TABLE notifications (
    event_id         TEXT PRIMARY KEY,   -- evt_ + 128 bits of SHA-256(canonical key)
    merchant         TEXT NOT NULL,
    client_id        TEXT NOT NULL,
    path             TEXT NOT NULL,
    notify_type      TEXT NOT NULL,
    business_id_kind TEXT NOT NULL,
    business_id      TEXT NOT NULL,
    result_status    TEXT NOT NULL,
    result_code      TEXT NOT NULL,
    body_sha256      TEXT NOT NULL,      -- of the first copy received
    body             BYTEA NOT NULL,     -- bytes to deliver again, exactly as received/built
    headers          TEXT NOT NULL,      -- JSON [[name, value], ...] to deliver again
    status           TEXT NOT NULL,      -- pending | delivered | dead
    first_seen       BIGINT NOT NULL,
    last_seen        BIGINT NOT NULL,
    seen_count       BIGINT NOT NULL,    -- copies received (1 + re-sends)
    attempts         BIGINT NOT NULL,    -- failed delivery attempts
    last_error       TEXT,
    next_attempt_at  BIGINT,             -- NULL: not queued (delivered in line by the receiver)
    claim_owner      TEXT,               -- store-and-forward lease
    claim_until      BIGINT,
    delivered_at     BIGINT,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_first_seen ON notifications (first_seen);

-- Pay requests whose answer was not final, for the missed-notification reconciler.
CREATE TABLE pay_records (
    id                 TEXT PRIMARY KEY,  -- pay_ + 128 bits of SHA-256(merchant, paymentRequestId)
    merchant           TEXT NOT NULL,
    client_id          TEXT NOT NULL,
    payment_request_id TEXT NOT NULL,
    payment_notify_url TEXT,
    close_time         BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    status             TEXT NOT NULL,     -- open | closed
    outcome            TEXT,              -- notified | inquired_success | inquired_fail | cancelled | expired
    finished_at        BIGINT,
    next_at            BIGINT NOT NULL,   -- when the reconciler works it next
    inquiries          BIGINT NOT NULL,
    claim_owner        TEXT,
    claim_until        BIGINT,
    UNIQUE (merchant, payment_request_id)
);
CREATE INDEX pay_records_due ON pay_records (next_at) WHERE status = 'open';
CREATE INDEX pay_records_client ON pay_records (client_id, payment_request_id);
