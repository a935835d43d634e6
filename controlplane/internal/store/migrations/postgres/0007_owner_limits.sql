-- Owner limits (docs/plans.md, "Owner limits"): named rate limits shared
-- by all the keys of one owner, fleet-wide.

-- limits: a JSON array of {name, limit, period_ms, burst} sorted by name.
CREATE TABLE owner_limits (
    owner      TEXT PRIMARY KEY,
    limits     TEXT NOT NULL,
    updated_at BIGINT NOT NULL                     -- unix microseconds
);

-- Each key carries its owner's limits (rewritten when they change, so sync
-- reads them with the key) and the tightest of them in requests per second
-- (the fleet shares' rate for the owner's budget).
ALTER TABLE keys ADD COLUMN owner_limits TEXT NOT NULL DEFAULT '[]';
ALTER TABLE keys ADD COLUMN owner_limits_rate DOUBLE PRECISION;
