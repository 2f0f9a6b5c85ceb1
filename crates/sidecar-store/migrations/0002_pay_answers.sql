-- alipay-sidecar state store, schema version 2 (issue 18).
-- pay_records.payment_id: Alipay's paymentId from the pay answer, when it had one: an inquiry
--   answer must name the same payment (M1).
-- pay_records.answers: verified inquiry answers about this very payment (matching ids); the
--   reconciler cancels at the close time only after at least one (L6).
ALTER TABLE pay_records ADD COLUMN payment_id TEXT;
ALTER TABLE pay_records ADD COLUMN answers BIGINT NOT NULL DEFAULT 0;
