// Package cptest runs the control plane in-process for tests outside
// controlplane/ that must drive its clock: the real HTTP API
// (controlplane/internal/api) on a real SQLite store, behind a loopback
// listener, with the clock the test gives. The e2e fleet simulation runs
// it with the hosts' FakeClock, so that the whole share loop follows one
// simulated time. Like net/http/httptest, it is for tests only.
package cptest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/keygate/keygate/controlplane/internal/api"
	"github.com/keygate/keygate/controlplane/internal/store"
)

// Server is a running control plane.
type Server struct {
	// Addr is its host:port on the loopback interface.
	Addr string
	// AdminToken and FilterToken are its two bearer credentials.
	AdminToken, FilterToken string

	st store.Store
}

// Start runs a control plane whose store and API read now, until tb ends.
// Its logs go to log (nil: discarded).
func Start(tb testing.TB, now func() time.Time, log io.Writer) *Server {
	tb.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(tb.TempDir(), "keygate.db"), store.WithClock(now))
	if err != nil {
		tb.Fatalf("cptest: open store: %v", err)
	}
	if log == nil {
		log = io.Discard
	}
	s := &Server{AdminToken: token(tb, "kgadmin_"), FilterToken: token(tb, "kgfilter_"), st: st}
	srv, err := api.New(api.Config{
		Store:            st,
		AdminCredential:  api.HashCredential(s.AdminToken),
		FilterCredential: api.HashCredential(s.FilterToken),
		Logger:           slog.New(slog.NewJSONHandler(log, nil)),
		Now:              now,
	})
	if err != nil {
		st.Close()
		tb.Fatalf("cptest: %v", err)
	}
	ts := httptest.NewServer(srv)
	s.Addr = ts.Listener.Addr().String()
	tb.Cleanup(func() {
		srv.BeginShutdown()
		ts.Close()
		st.Close()
	})
	return s
}

// Waiting is how many sync long-polls are parked in the store right now.
func (s *Server) Waiting() int {
	return s.st.(interface{ Waiting() int }).Waiting()
}

func token(tb testing.TB, prefix string) string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	return prefix + hex.EncodeToString(b[:])
}
