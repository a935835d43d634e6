-- Rotation lineage (docs/lifecycle.md).

-- predecessor_id: the key this one was rotated from; successor_id: the key
-- it was last rotated to (an active successor blocks another rotation);
-- grace_ends_at: when the grace period of that rotation ends (unix
-- microseconds). The key stops working at the earlier of expires_at and
-- grace_ends_at; a successor copies expires_at, never grace_ends_at.
ALTER TABLE keys ADD COLUMN predecessor_id TEXT;
ALTER TABLE keys ADD COLUMN successor_id TEXT;
ALTER TABLE keys ADD COLUMN grace_ends_at BIGINT;

-- Members of every lineage with more than one key (lineage_id is its first
-- key's id). Rows outlive their keys, so a deleted predecessor's usage
-- still counts against the lineage's quota.
CREATE TABLE key_lineage (
    key_id     TEXT PRIMARY KEY,
    lineage_id TEXT NOT NULL
);
CREATE INDEX key_lineage_lineage ON key_lineage (lineage_id, key_id);
