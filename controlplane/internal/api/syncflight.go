package api

import (
	"context"
	"errors"
	"sync"

	"github.com/keygate/keygate/controlplane/internal/store"
)

// syncFlight lets sync requests asking for the same page at the same time
// share one store read. When a change wakes every long-poll of a replica
// at once, they all ask for the same delta (same since, no cursor): without
// this, a fleet of N Envoys costs N identical reads per change, which
// queue for the pool ahead of usage batches. A page is never modified
// after it is read, so the waiters share it. A request that joins a read
// begun just before a change may get the page without that change: it
// answers with the older version, and the filter's next long-poll (the
// store is past that version) is answered at once, so nothing is missed.
type syncFlight struct {
	mu    sync.Mutex
	calls map[syncQuery]*syncCall
}

type syncQuery struct {
	since  int64
	cursor string
	limit  int
}

type syncCall struct {
	done    chan struct{}
	page    *store.SyncPage
	err     error
	waiters int // requests sharing the read (tests)
}

// do returns the page for q, reading it through read unless a read of
// the same q is under way, whose result it then shares. A waiter whose
// shared read failed because the reading request went away reads for
// itself.
func (f *syncFlight) do(ctx context.Context, q syncQuery, read func(context.Context) (*store.SyncPage, error)) (*store.SyncPage, error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[syncQuery]*syncCall{}
	}
	if c, ok := f.calls[q]; ok {
		c.waiters++
		f.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if ctx.Err() == nil && (errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded)) {
			return read(ctx)
		}
		return c.page, c.err
	}
	c := &syncCall{done: make(chan struct{})}
	f.calls[q] = c
	f.mu.Unlock()
	c.page, c.err = read(ctx)
	f.mu.Lock()
	delete(f.calls, q)
	f.mu.Unlock()
	close(c.done)
	return c.page, c.err
}
