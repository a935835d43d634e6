-- Fleet-wide rate-limit shares and quotas.

-- One row per Envoy node (the node name of its usage batches): when its
-- latest batch arrived, how much time that batch covers (since the node's
-- previous batch), and a generation bumped by every batch.
CREATE TABLE share_nodes (
    node        TEXT PRIMARY KEY,
    last_at     BIGINT NOT NULL,                  -- unix microseconds
    interval_us BIGINT NOT NULL,
    gen         BIGINT NOT NULL
) WITH (fillfactor = 70);
CREATE INDEX share_nodes_last ON share_nodes (last_at);

-- Demand (allowed + rate_limited requests) of one key at one node in the
-- node's batch of generation gen, which arrived at at. A row whose gen is
-- not its node's current gen had no demand in the node's latest batch.
CREATE TABLE share_demand (
    key_id TEXT NOT NULL,
    node   TEXT NOT NULL,
    at     BIGINT NOT NULL,                       -- unix microseconds
    gen    BIGINT NOT NULL,
    n      BIGINT NOT NULL,
    PRIMARY KEY (key_id, node)
);
CREATE INDEX share_demand_at ON share_demand (at);

-- Allowed requests per identified key and UTC day (unix seconds of its
-- midnight): quota periods are a day or a month of these rows.
CREATE TABLE usage_days (
    key_id  TEXT NOT NULL,
    day     BIGINT NOT NULL,
    allowed BIGINT NOT NULL,
    PRIMARY KEY (key_id, day)
) WITH (fillfactor = 80);
INSERT INTO usage_days (key_id, day, allowed)
    SELECT key_id, minute - (minute % 86400), SUM(n) FROM usage_minutes
    WHERE outcome = 'allowed' AND key_id <> ''
    GROUP BY key_id, minute - (minute % 86400);
