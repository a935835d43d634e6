-- Times are integers: unix microseconds for key and log timestamps, unix
-- seconds for usage minutes (so bucketing is portable arithmetic).

CREATE TABLE keys (
    id                    TEXT PRIMARY KEY,
    hash                  BYTEA NOT NULL UNIQUE,   -- SHA-256 of the key, never the key
    name                  TEXT NOT NULL,
    owner                 TEXT NOT NULL,
    status                TEXT NOT NULL,
    hosts                 TEXT NOT NULL,          -- JSON array
    scopes                TEXT NOT NULL,          -- JSON array
    rate_limit            BIGINT,                  -- rate: all three NULL = no rate limit
    rate_period_ms        BIGINT,
    rate_burst            BIGINT,
    quota_limit           BIGINT,                  -- quota: both NULL = no quota
    quota_period          TEXT,                   -- 'day' or 'month'
    expires_at            BIGINT,
    metadata              TEXT,                   -- JSON object or NULL
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    last_used_at          BIGINT,
    quota_exhausted_until BIGINT
);
CREATE INDEX keys_created ON keys (created_at, id);
CREATE INDEX keys_owner_created ON keys (owner, created_at, id);

-- One row: the change-log version (bumped under the writer lock, so versions
-- commit in order) and the highest version pruned from the log.
CREATE TABLE sync_state (
    id             BIGINT PRIMARY KEY CHECK (id = 1),
    version        BIGINT NOT NULL,
    pruned_through BIGINT NOT NULL
);
INSERT INTO sync_state (id, version, pruned_through) VALUES (1, 0, 0);

CREATE TABLE change_log (
    version BIGINT PRIMARY KEY,
    hash    BYTEA NOT NULL,
    key_id  TEXT,                                 -- NULL for a delete
    at      BIGINT NOT NULL
);
CREATE INDEX change_log_hash ON change_log (hash, version);

CREATE TABLE audit_log (
    id     BIGSERIAL PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    key_id TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_key ON audit_log (key_id, id);

CREATE TABLE usage_batches (
    node        TEXT NOT NULL,
    boot        TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    counts      BIGINT NOT NULL,
    PRIMARY KEY (node, boot, seq)
);
CREATE INDEX usage_batches_received ON usage_batches (received_at);

CREATE TABLE usage_minutes (
    key_id  TEXT NOT NULL,                        -- '' = no identified key
    minute  BIGINT NOT NULL,                     -- unix seconds, multiple of 60
    host    TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n       BIGINT NOT NULL,
    -- Minute first: a flush's rows are neighbours, so an ingest dirties
    -- few pages; per-key queries use the index below.
    PRIMARY KEY (minute, key_id, host, outcome)
) WITH (fillfactor = 80); -- room for HOT updates of n (no index writes)
CREATE INDEX usage_minutes_key ON usage_minutes (key_id, minute);

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
