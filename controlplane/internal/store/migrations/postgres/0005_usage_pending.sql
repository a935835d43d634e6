-- Usage counts of accepted batches not yet merged into usage_minutes and
-- usage_days (store/rollup.go). An ingest only appends here: no unique
-- index to probe and no row lock to wait for, however many Envoys report
-- the same key and minute at once. A rollup moves the rows into
-- usage_minutes and usage_days in one transaction; readers count both.
-- Rows are (minute, key, host, outcome) sums of one batch, so one identity
-- may have several rows.
CREATE TABLE usage_pending (
    minute  BIGINT NOT NULL,                     -- unix seconds, multiple of 60
    key_id  TEXT NOT NULL,                       -- '' = no identified key
    host    TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n       BIGINT NOT NULL
);
