-- Usage of accepted batches not yet merged into usage_minutes and
-- usage_days (store/rollup.go). An ingest appends one row holding its
-- batch's (minute, key, host, outcome) sums as parallel arrays: no unique
-- index to probe, no row lock to wait for however many Envoys report the
-- same key and minute at once, and one tuple instead of thousands. A
-- rollup moves the rows into usage_minutes and usage_days in one
-- transaction.
CREATE TABLE usage_pending (
    minute  BIGINT[] NOT NULL,                   -- unix seconds, multiples of 60
    key_id  TEXT[] NOT NULL,                     -- '' = no identified key
    host    TEXT[] NOT NULL,
    outcome TEXT[] NOT NULL,
    n       BIGINT[] NOT NULL
);

-- The pending counts as rows, for the readers that count them together
-- with usage_minutes or usage_days (quotas, anonymous hosts).
CREATE VIEW usage_pending_rows AS
    SELECT u.minute, u.key_id, u.host, u.outcome, u.n
    FROM usage_pending p
    CROSS JOIN LATERAL unnest(p.minute, p.key_id, p.host, p.outcome, p.n) AS u(minute, key_id, host, outcome, n);

-- Pending rows live for about a second: storing them uncompressed saves
-- the ingest the compression of its arrays.
ALTER TABLE usage_pending ALTER COLUMN minute SET STORAGE EXTERNAL,
    ALTER COLUMN key_id SET STORAGE EXTERNAL, ALTER COLUMN host SET STORAGE EXTERNAL,
    ALTER COLUMN outcome SET STORAGE EXTERNAL, ALTER COLUMN n SET STORAGE EXTERNAL;
