-- Usage counts of accepted batches not yet merged into usage_minutes and
-- usage_days (store/rollup.go). SQLite has a single writer, so its ingest
-- merges straight into usage_minutes and usage_days and leaves this table
-- empty; it exists so that the queries that also count pending usage
-- (quotas, anonymous hosts) are the same on both stores.
CREATE TABLE usage_pending (
    minute  INTEGER NOT NULL,                    -- unix seconds, multiple of 60
    key_id  TEXT NOT NULL,                       -- '' = no identified key
    host    TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n       INTEGER NOT NULL
);
