-- Per-Envoy instances (docs/wire.md, "Instances").

-- One row per registered instance: a running Envoy, named by its node name
-- and the boot id its filter drew at start. token_hash is the SHA-256 of
-- the instance token (the token itself is never stored). acked_seq is the
-- highest usage batch seq accepted from the instance; seen_at the latest of
-- registered_at, last_batch_at and last_sync_at (pruning, listing order).
CREATE TABLE instances (
    node          TEXT NOT NULL,
    boot          TEXT NOT NULL,
    token_hash    BYTEA NOT NULL UNIQUE,
    registered_at BIGINT NOT NULL,                 -- unix microseconds
    last_batch_at BIGINT,
    last_sync_at  BIGINT,
    seen_at       BIGINT NOT NULL,
    acked_seq     BIGINT NOT NULL,
    PRIMARY KEY (node, boot)
) WITH (fillfactor = 70);
CREATE INDEX instances_registered ON instances (registered_at);
CREATE INDEX instances_seen ON instances (seen_at);

-- Fleet-wide rate-limit shares keyed by instance rather than node name:
-- like share_nodes and share_demand of 0002, which stay (unused by this
-- version) so that replicas of the previous version keep working during a
-- rolling upgrade; a later migration drops them.
CREATE TABLE share_instances (
    node        TEXT NOT NULL,
    boot        TEXT NOT NULL,
    last_at     BIGINT NOT NULL,                  -- unix microseconds
    interval_us BIGINT NOT NULL,
    gen         BIGINT NOT NULL,
    PRIMARY KEY (node, boot)
) WITH (fillfactor = 70);
CREATE INDEX share_instances_last ON share_instances (last_at);

CREATE TABLE share_instance_demand (
    key_id TEXT NOT NULL,
    node   TEXT NOT NULL,
    boot   TEXT NOT NULL,
    at     BIGINT NOT NULL,                       -- unix microseconds
    gen    BIGINT NOT NULL,
    n      BIGINT NOT NULL,
    PRIMARY KEY (key_id, node, boot)
);
CREATE INDEX share_instance_demand_at ON share_instance_demand (at);
