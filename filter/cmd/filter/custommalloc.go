//go:build tinygo && !custommalloc

package main

// Without -tags=custommalloc TinyGo exports its default malloc, which Envoy
// then allocates every buffer it copies into the module with, and which
// keeps each one until a free that Envoy never calls: the filter would
// leak every request's headers. ./build.sh sets the tag (RATIONALE.md,
// "Why build with -tags custommalloc?"); this undefined name stops a build
// without it.
var _ = buildWithTagsCustommalloc
