// Package pathcheck has no code: its test checks that every repository
// path the documentation (*.md) and the Go comments mention exists, so
// that no comment points at a file that was moved, deleted or never there,
// or outside the repository.
package pathcheck
