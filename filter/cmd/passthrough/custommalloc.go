//go:build tinygo && !custommalloc

package main

// Built like the filter (see filter/cmd/filter/custommalloc.go): without
// -tags=custommalloc the benchmarks' baseline would leak in Envoy as well.
var _ = buildWithTagsCustommalloc
