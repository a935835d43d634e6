// Package keyrecord owns the binary record the filter keeps per key hash in
// Envoy's shared data: its layout (Record, Append), the zero-copy reader the
// request path uses (View), the decoding of a sync upsert into a record, and
// host-pattern matching against a record's hosts.
package keyrecord
