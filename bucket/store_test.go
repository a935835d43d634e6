package bucket_test

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/keygate/keygate/bucket"
	"github.com/keygate/keygate/internal/shareddata"
)

const (
	ms  = int64(1e6)
	sec = int64(1e9)
	// t0 is the fake clock's start: a realistic unix time in nanoseconds.
	t0 = int64(1_763_900_000) * sec
)

// sharedStore adapts internal/shareddata, which follows Envoy's cas rules, to
// bucket.Store, the way the filter adapts proxywasm's status errors.
type sharedStore struct {
	vm shareddata.VM
}

func newSharedStore() sharedStore {
	return sharedStore{vm: shareddata.VM{Store: shareddata.New(), ID: "keygate"}}
}

func (s sharedStore) Get(key string) ([]byte, uint32, error) {
	v, cas, err := s.vm.Get(key)
	return v, cas, mapErr(err)
}

func (s sharedStore) Set(key string, value []byte, cas uint32) error {
	return mapErr(s.vm.Set(key, value, cas))
}

func mapErr(err error) error {
	switch {
	case errors.Is(err, shareddata.ErrNotFound):
		return bucket.ErrNotFound
	case errors.Is(err, shareddata.ErrCASMismatch):
		return bucket.ErrCASMismatch
	}
	return err
}

// countingStore counts the calls that reach the Store under it, safely for
// concurrent use.
type countingStore struct {
	bucket.Store
	gets, sets, mismatches atomic.Int64
}

func (c *countingStore) Get(key string) ([]byte, uint32, error) {
	c.gets.Add(1)
	return c.Store.Get(key)
}

func (c *countingStore) Set(key string, value []byte, cas uint32) error {
	c.sets.Add(1)
	err := c.Store.Set(key, value, cas)
	if errors.Is(err, bucket.ErrCASMismatch) {
		c.mismatches.Add(1)
	}
	return err
}

// memStore is a single-goroutine Store with Envoy's cas rules whose Get does
// not copy, so allocation tests and benchmarks measure the limiter alone
// (Envoy's get copies into the guest heap; that cost is the host's). Entries
// are a slice, not a map: TinyGo's map lookups allocate.
type memStore struct {
	entries []memEntry
	nextCAS uint32
}

type memEntry struct {
	key   string
	value []byte
	cas   uint32
}

func newMemStore() *memStore { return &memStore{} }

func (s *memStore) find(key string) *memEntry {
	for i := range s.entries {
		if s.entries[i].key == key {
			return &s.entries[i]
		}
	}
	return nil
}

func (s *memStore) Get(key string) ([]byte, uint32, error) {
	e := s.find(key)
	if e == nil {
		return nil, 0, bucket.ErrNotFound
	}
	return e.value, e.cas, nil
}

func (s *memStore) Set(key string, value []byte, cas uint32) error {
	e := s.find(key)
	if e != nil && cas != 0 && cas != e.cas {
		return bucket.ErrCASMismatch
	}
	if e == nil {
		s.entries = append(s.entries, memEntry{key: key})
		e = &s.entries[len(s.entries)-1]
	}
	e.value = append(e.value[:0], value...)
	s.nextCAS++
	if s.nextCAS == 0 {
		s.nextCAS = 1
	}
	e.cas = s.nextCAS
	return nil
}

// put stores raw bytes under key, as a corrupt or foreign writer would.
func (s sharedStore) put(t *testing.T, key string, value []byte) {
	t.Helper()
	if err := s.vm.Set(key, value, 0); err != nil {
		t.Fatal(err)
	}
}

// noStore fails the test on any access.
type noStore struct{ t *testing.T }

func (s noStore) Get(string) ([]byte, uint32, error) {
	s.t.Error("unexpected Get")
	return nil, 0, bucket.ErrNotFound
}

func (s noStore) Set(string, []byte, uint32) error {
	s.t.Error("unexpected Set")
	return nil
}

// failingStore returns err from every call.
type failingStore struct{ err error }

func (s failingStore) Get(string) ([]byte, uint32, error) { return nil, 0, s.err }
func (s failingStore) Set(string, []byte, uint32) error   { return s.err }

// meddlingStore lets another worker write between this worker's Get and Set,
// for the first n Sets: the deterministic form of losing a compare-and-swap
// race. With other set, the other worker takes a token with its own Limiter;
// without, it rewrites the current value unchanged (which still moves cas).
type meddlingStore struct {
	sharedStore
	other *bucket.Limiter
	p     bucket.Policy
	now   int64
	n     int
	t     *testing.T
}

func (s *meddlingStore) Set(key string, value []byte, cas uint32) error {
	if s.n > 0 {
		s.n--
		if s.other != nil {
			if _, err := s.other.Take(key, s.p, 1, s.now); err != nil {
				s.t.Fatalf("meddler: %v", err)
			}
		} else {
			v, _, err := s.vm.Get(key)
			if err != nil {
				s.t.Fatalf("meddler: %v", err)
			}
			if err := s.vm.Set(key, v, 0); err != nil {
				s.t.Fatalf("meddler: %v", err)
			}
		}
	}
	return s.sharedStore.Set(key, value, cas)
}
