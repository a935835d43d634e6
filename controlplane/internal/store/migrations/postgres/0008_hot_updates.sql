-- Every batch rewrites its keys' demand rows (a new at and gen). With an
-- index on at none of those updates could be HOT: each row version added
-- an entry to both indexes, half of the share upsert's cost in a batch.
-- Nothing needs the index: Shares, read after every batch, scans the
-- window's rows anyway, and the prune that deletes older ones runs once a
-- share window. The free space lets the new versions stay on their page.
DROP INDEX share_instance_demand_at;
ALTER TABLE share_instance_demand SET (fillfactor = 70);

-- The first batch of a minute moves its keys' last_used_at, on a full page
-- an update that writes a new entry into each of the keys' five indexes
-- (about 15 ms of a 10,000-count batch of 500 keys). Room on the page lets
-- it be HOT; existing pages get the room as their rows move.
ALTER TABLE keys SET (fillfactor = 80);
