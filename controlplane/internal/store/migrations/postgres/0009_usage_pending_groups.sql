-- Usage pending a rollup, one row per (minute, host, outcome) of a batch
-- holding that group's keys and sums as parallel arrays (store/rollup.go).
-- A batch repeats a few hosts, outcomes and minutes over thousands of
-- counts: as columns of their own they are sent, decoded and stored once
-- per group instead of once per count, which made the ingest's statement
-- about half as costly. Batches of many groups still go to usage_pending
-- (ingest_pg.go), and replicas of the previous release keep writing there;
-- both tables are read and rolled up.
CREATE TABLE usage_pending_groups (
    minute  BIGINT NOT NULL,                      -- unix seconds, a multiple of 60
    host    TEXT NOT NULL,
    outcome TEXT NOT NULL,
    key_id  TEXT[] NOT NULL,                      -- '' = no identified key
    n       BIGINT[] NOT NULL
);
ALTER TABLE usage_pending_groups ALTER COLUMN key_id SET STORAGE EXTERNAL,
    ALTER COLUMN n SET STORAGE EXTERNAL;

CREATE OR REPLACE VIEW usage_pending_rows AS
    SELECT u.minute, u.key_id, u.host, u.outcome, u.n
    FROM usage_pending p
    CROSS JOIN LATERAL unnest(p.minute, p.key_id, p.host, p.outcome, p.n) AS u(minute, key_id, host, outcome, n)
    UNION ALL
    SELECT g.minute, u.key_id, g.host, g.outcome, u.n
    FROM usage_pending_groups g
    CROSS JOIN LATERAL unnest(g.key_id, g.n) AS u(key_id, n);
