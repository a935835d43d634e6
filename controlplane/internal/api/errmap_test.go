package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/keygate/keygate/controlplane/internal/lifecycle"
	"github.com/keygate/keygate/controlplane/internal/store"
)

// TestErrorProblems checks the one table from domain and store errors to
// problems: every lifecycle refusal kind has an entry, and each error,
// wrapped as the store and the rules wrap it, becomes its problem.
func TestErrorProblems(t *testing.T) {
	for _, kind := range lifecycle.Kinds() {
		found := false
		for _, e := range errorProblems {
			found = found || e.err == kind
		}
		if !found {
			t.Errorf("lifecycle kind %q has no entry in errorProblems", kind)
		}
	}
	wrap := func(err error) error { return fmt.Errorf("store: transaction: %w", err) }
	for _, c := range []struct {
		name   string
		err    error
		status int
		code   string
		detail string
		field  string
	}{
		{"revoked", wrap(&lifecycle.Error{Kind: lifecycle.ErrRevoked, Message: "a revoked key cannot be rotated"}),
			http.StatusConflict, codeConflict, "a revoked key cannot be rotated", ""},
		{"expired", wrap(&lifecycle.Error{Kind: lifecycle.ErrExpired, Message: "an expired key cannot be rotated"}),
			http.StatusConflict, codeConflict, "an expired key cannot be rotated", ""},
		{"successor", wrap(&lifecycle.Error{Kind: lifecycle.ErrHasSuccessor, Message: "has key_b"}),
			http.StatusConflict, codeConflict, "has key_b", ""},
		{"lifecycle invalid", &lifecycle.Error{Kind: lifecycle.ErrInvalid, Field: "grace_seconds", Message: "must be 0 to 9"},
			http.StatusBadRequest, codeInvalidRequest, "grace_seconds: must be 0 to 9", "grace_seconds"},
		{"store field", wrap(&store.FieldError{Field: "hash", Message: "must be set"}),
			http.StatusBadRequest, codeInvalidRequest, "hash: must be set", "hash"},
		{"store invalid", wrap(store.ErrInvalid), http.StatusBadRequest, codeInvalidRequest, "invalid request", ""},
		{"not found", wrap(store.ErrNotFound), http.StatusNotFound, codeNotFound, "key not found", ""},
		{"conflict", wrap(store.ErrConflict), http.StatusConflict, codeConflict, "key conflicts with an existing one", ""},
		{"cursor", wrap(store.ErrBadCursor), http.StatusBadRequest, codeInvalidRequest, "cursor: malformed or does not belong to this query", "cursor"},
		{"timeout", wrap(context.DeadlineExceeded), http.StatusServiceUnavailable, codeUnavailable, "the store did not answer in time", ""},
		{"anything else", errors.New("disk on fire"), http.StatusInternalServerError, codeInternal, "internal error", ""},
	} {
		p := fromStoreError(c.err, "key")
		if p.Status != c.status || p.Code != c.code || p.Detail != c.detail {
			t.Errorf("%s: %d %s %q; want %d %s %q", c.name, p.Status, p.Code, p.Detail, c.status, c.code, c.detail)
		}
		if c.field != "" && (len(p.Errors) != 1 || p.Errors[0].Field != c.field) {
			t.Errorf("%s: field errors %+v, want one for %q", c.name, p.Errors, c.field)
		}
	}
}
