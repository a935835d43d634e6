-- Times are integers: unix microseconds for key and log timestamps, unix
-- seconds for usage minutes (so bucketing is portable arithmetic).

CREATE TABLE keys (
    id                    TEXT PRIMARY KEY,
    hash                  BLOB NOT NULL UNIQUE,   -- SHA-256 of the key, never the key
    name                  TEXT NOT NULL,
    owner                 TEXT NOT NULL,
    status                TEXT NOT NULL,
    hosts                 TEXT NOT NULL,          -- JSON array
    scopes                TEXT NOT NULL,          -- JSON array
    rate_limit            INTEGER,                  -- rate: all three NULL = no rate limit
    rate_period_ms        INTEGER,
    rate_burst            INTEGER,
    quota_limit           INTEGER,                  -- quota: both NULL = no quota
    quota_period          TEXT,                   -- 'day' or 'month'
    expires_at            INTEGER,
    metadata              TEXT,                   -- JSON object or NULL
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    last_used_at          INTEGER,
    quota_exhausted_until INTEGER
);
CREATE INDEX keys_created ON keys (created_at, id);
CREATE INDEX keys_owner_created ON keys (owner, created_at, id);

-- One row: the change-log version (bumped under the writer lock, so versions
-- commit in order) and the highest version pruned from the log.
CREATE TABLE sync_state (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    version        INTEGER NOT NULL,
    pruned_through INTEGER NOT NULL
);
INSERT INTO sync_state (id, version, pruned_through) VALUES (1, 0, 0);

CREATE TABLE change_log (
    version INTEGER PRIMARY KEY,
    hash    BLOB NOT NULL,
    key_id  TEXT,                                 -- NULL for a delete
    at      INTEGER NOT NULL
);
CREATE INDEX change_log_hash ON change_log (hash, version);

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    key_id TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_key ON audit_log (key_id, id);

CREATE TABLE usage_batches (
    node        TEXT NOT NULL,
    boot        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    counts      INTEGER NOT NULL,
    PRIMARY KEY (node, boot, seq)
) WITHOUT ROWID;
CREATE INDEX usage_batches_received ON usage_batches (received_at);

CREATE TABLE usage_minutes (
    key_id  TEXT NOT NULL,                        -- '' = no identified key
    minute  INTEGER NOT NULL,                     -- unix seconds, multiple of 60
    host    TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n       INTEGER NOT NULL,
    -- Minute first: a flush's rows are neighbours, so an ingest dirties
    -- few pages; per-key queries use the index below.
    PRIMARY KEY (minute, key_id, host, outcome)
) WITHOUT ROWID;
CREATE INDEX usage_minutes_key ON usage_minutes (key_id, minute);

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
