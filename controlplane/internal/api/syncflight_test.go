package api

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/wire"
)

// gatedStore counts Sync calls and holds each until gate is closed or its
// request goes away.
type gatedStore struct {
	store.Store
	gate  chan struct{}
	syncs atomic.Int64
}

func (g *gatedStore) Sync(ctx context.Context, since int64, cursor string, limit int) (*store.SyncPage, error) {
	g.syncs.Add(1)
	select {
	case <-g.gate:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.Store.Sync(ctx, since, cursor, limit)
}

// flightWaiters is how many requests wait on the read in flight for q.
func (f *syncFlight) flightWaiters(q syncQuery) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.calls[q]; ok {
		return c.waiters
	}
	return -1
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSyncReadsShared: sync requests asking for the same page at once
// share one store read, and when the request that reads goes away the
// others read for themselves.
func TestSyncReadsShared(t *testing.T) {
	gs := &gatedStore{gate: make(chan struct{})}
	e := newEnvWith(t, sqliteOpener, func(c *Config) { gs.Store = c.Store; c.Store = gs })
	k := e.createKey(map[string]any{"hosts": []string{"api.example.com"}})
	q := syncQuery{since: 0, cursor: "", limit: wire.MaxSyncLimit}

	// The reading request goes away; the requests that joined it read
	// for themselves.
	lctx, cancelLeader := context.WithCancel(context.Background())
	leaderDone := make(chan struct{})
	go func() {
		defer close(leaderDone)
		req, _ := http.NewRequestWithContext(lctx, "GET", e.ts.URL+"/v1/sync", nil)
		req.Header.Set("Authorization", "Bearer "+filterToken)
		if resp, err := e.ts.Client().Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, "the first read", func() bool { return e.srv.syncs.flightWaiters(q) == 0 })
	const n = 20
	var wg sync.WaitGroup
	pages := make(chan syncResponse, 2*n)
	get := func() {
		defer wg.Done()
		req, _ := http.NewRequest("GET", e.ts.URL+"/v1/sync", nil)
		req.Header.Set("Authorization", "Bearer "+filterToken)
		resp, err := e.ts.Client().Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		defer resp.Body.Close()
		var p syncResponse
		if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&p) != nil {
			t.Errorf("sync: %d", resp.StatusCode)
			return
		}
		pages <- p
	}
	for range n {
		wg.Add(1)
		go get()
	}
	waitFor(t, "every request to join the read", func() bool { return e.srv.syncs.flightWaiters(q) == n })
	cancelLeader()
	<-leaderDone
	waitFor(t, "the waiters to read for themselves", func() bool { return gs.syncs.Load() == n+1 })
	close(gs.gate)
	wg.Wait()

	// Requests joining a read that succeeds share it: one read for all.
	gs.gate = make(chan struct{})
	gs.syncs.Store(0)
	for range n {
		wg.Add(1)
		go get()
	}
	waitFor(t, "every request to join the read", func() bool { return e.srv.syncs.flightWaiters(q) == n-1 })
	close(gs.gate)
	wg.Wait()
	close(pages)
	if got := gs.syncs.Load(); got != 1 {
		t.Fatalf("%d store reads for %d identical requests, want 1", got, n)
	}
	count := 0
	for p := range pages {
		count++
		if !p.Snapshot || len(p.Upserts) != 1 || p.Upserts[0].ID != k.ID {
			t.Fatalf("page %+v", p)
		}
	}
	if count != 2*n {
		t.Fatalf("%d answers, want %d", count, 2*n)
	}
}
