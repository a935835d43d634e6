-- Usage pending a rollup (PostgreSQL's usage_pending, store/rollup.go).
-- SQLite has a single writer, so its ingest merges straight into
-- usage_minutes and usage_days and nothing is ever pending; the view
-- exists so that the queries that count pending usage too (quotas,
-- anonymous hosts) are the same on both stores.
CREATE VIEW usage_pending_rows AS
    SELECT 0 AS minute, '' AS key_id, '' AS host, '' AS outcome, 0 AS n WHERE 0;
