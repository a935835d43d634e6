package store

// Design notes (the "why" behind the implementation).
//
// Why one implementation for two databases? The SQL is nearly all portable:
// times are integers (unix microseconds; usage minutes in unix seconds, so
// hour and day buckets are plain arithmetic), lists are JSON text, hashes
// are bytes, and modernc.org/sqlite binds $N placeholders by ordinal like
// PostgreSQL. Only DDL (migrations/<dialect>/), row locking (FOR UPDATE),
// the advisory lock around migrations, the bulk usage statements and the
// cross-replica wake-up (LISTEN/NOTIFY, listen.go) differ.
//
// Why a counter row for change-log versions? A sequence hands out numbers
// at insert time, but transactions commit in any order, so a reader could
// see version 11 committed while 10 is still in flight and skip 10 forever.
// Every key write instead bumps the single sync_state row with
// UPDATE ... RETURNING as its last step; the row lock serialises writers
// until commit, so versions become visible in order and a reader that sees
// version V sees every change up to V. Key writes are rare (admin actions),
// so serialising them costs nothing that matters. Versions are contiguous
// (a rolled-back transaction rolls its bump back too).
//
// Why read the current state in a delta rather than the state at the
// change? Filters only need the latest state per hash; sending a state newer
// than the page's version is harmless because its own change follows in
// the next delta. Each Sync page reads state and log in one snapshot
// (REPEATABLE READ on PostgreSQL), so pruning cannot slip in between.
//
// Why is pruning tracked in sync_state.pruned_through? A delta after since
// is complete only if no change after since was pruned; pruning removes a
// prefix of the log and records its end, and a since below it (or a delta
// cursor overtaken mid-paging) is answered with a snapshot.
//
// Why does SQLite use one writer connection? SQLite allows one writer at a
// time anyway; funnelling writes through one connection (BEGIN IMMEDIATE,
// WAL, busy_timeout for other processes) removes SQLITE_BUSY between our
// own goroutines, while reads use a separate pool and never block on it.
//
// Why minute-first usage keys? Rollups are keyed (minute, key_id, host,
// outcome): one flush touches neighbouring rows, so it dirties few pages;
// per-key reports use the (key_id, minute) index. Batches are aggregated
// and sorted in Go first, so no statement touches a row twice and
// concurrent writers lock rows in the same order (no deadlocks). On
// SQLite, an ingest upserts its rows in 25-row multi-row statements (the
// driver binds parameters in quadratic time, so bigger chunks cost more);
// on PostgreSQL it appends the batch as rows of arrays to
// usage_pending_groups or usage_pending (ingest_pg.go), and rollups upsert
// what is pending (rollup.go).
//
// Why is LastUsedAt the start of a minute? Usage arrives per minute, so the
// start of the latest minute with an allowed request is the most precise
// honest value; refused requests do not count as use, and a late batch
// never moves it back.
//
// Why do usage counters saturate, and where do anonymous hosts go? See
// controlplane/RATIONALE.md ("Why do counters saturate?", "How long is
// usage kept, and why fold anonymous hosts?"): counters stop at MaxCounter
// (2^53) through compare-then-add upserts, sums at the largest int64 (sum),
// counts without a key keep MaxAnonymousHosts hosts a minute
// (foldAnonymousHosts), and PruneUsage deletes usage past the retention an
// hour at a time.
