-- Plans (tiers): a named set of limits that keys reference (docs/plans.md).

-- A plan's rate and quota columns follow the keys table: all NULL = the
-- plan sets no rate limit (no quota). scopes is a JSON array; limits the
-- named rate limits, a JSON array of {name, limit, period_ms, burst}
-- sorted by name ('[]' for none).
CREATE TABLE plans (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    limits         TEXT NOT NULL,
    rate_limit     BIGINT,
    rate_period_ms BIGINT,
    rate_burst     BIGINT,
    quota_limit    BIGINT,
    quota_period   TEXT,
    created_at     BIGINT NOT NULL,                 -- unix microseconds
    updated_at     BIGINT NOT NULL
);

-- limits: the key's named rate limits, as in plans.
-- plan_id: the key's plan, NULL for none. own_limits says which of the
-- key's limit columns are the key's own values (bit 1 rate, 2 quota,
-- 4 scopes, 8 limits); the others hold its plan's, rewritten whenever the
-- plan changes, so every reader of the keys table (sync, quotas, shares)
-- sees the effective limits. A key without a plan owns all of them (15).
ALTER TABLE keys ADD COLUMN limits TEXT NOT NULL DEFAULT '[]';
-- limits_rate: the tightest named limit in requests per second, NULL for
-- none (the fleet shares' rate for a key without an unnamed rate).
ALTER TABLE keys ADD COLUMN limits_rate DOUBLE PRECISION;
ALTER TABLE keys ADD COLUMN plan_id TEXT;
ALTER TABLE keys ADD COLUMN own_limits BIGINT NOT NULL DEFAULT 15;
CREATE INDEX keys_plan ON keys (plan_id, id) WHERE plan_id IS NOT NULL;
