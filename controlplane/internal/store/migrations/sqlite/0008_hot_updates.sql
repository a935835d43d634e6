-- Every batch rewrites its keys' demand rows (a new at and gen), and each
-- rewrite also moved the row's entry in an index on at that nothing needs:
-- Shares, read after every batch, scans the window's rows anyway, and the
-- prune that deletes older ones runs once a share window.
DROP INDEX share_instance_demand_at;
