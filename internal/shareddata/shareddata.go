// Package shareddata is an in-process copy of Envoy's proxy-wasm shared data
// (proxy-wasm-cpp-host SharedData): a process-wide map, partitioned by vm_id,
// behind one mutex, with Envoy's compare-and-swap rules. The e2e host serves
// proxy_get/set_shared_data from it, and bucket's hammer tests use it as the
// double, so both follow Envoy rather than the SDK's proxytest (which differs:
// per-key cas+1 and cas 0 mismatching on an existing key).
//
// Envoy's rules, reproduced here:
//   - a set with cas == 0 always succeeds;
//   - a key that does not exist yet is inserted whatever cas is;
//   - an existing key with a non-zero cas different from its current one
//     fails with ErrCASMismatch;
//   - cas values come from one process-wide counter starting at 1 that skips 0;
//   - a get of a missing key fails with ErrNotFound;
//   - every get returns a copy.
package shareddata

import (
	"errors"
	"strings"
	"sync"
)

var (
	// ErrNotFound is proxy-wasm's NOT_FOUND (1).
	ErrNotFound = errors.New("shared data: not found")
	// ErrCASMismatch is proxy-wasm's CAS_MISMATCH (8).
	ErrCASMismatch = errors.New("shared data: cas mismatch")
)

type entry struct {
	value []byte
	cas   uint32
}

// Store holds the shared data of one proxy process.
type Store struct {
	mu      sync.Mutex
	nextCAS uint32
	vms     map[string]map[string]*entry
}

// New returns an empty Store.
func New() *Store {
	return &Store{vms: make(map[string]map[string]*entry)}
}

// Get returns a copy of the value stored under key in vmID's partition and its
// current cas.
func (s *Store) Get(vmID, key string) ([]byte, uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.vms[vmID][key]
	if !ok {
		return nil, 0, ErrNotFound
	}
	return append([]byte(nil), e.value...), e.cas, nil
}

// Set stores a copy of value under key with Envoy's cas rules.
func (s *Store) Set(vmID, key string, value []byte, cas uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	part := s.vms[vmID]
	if part == nil {
		part = make(map[string]*entry)
		s.vms[vmID] = part
	}
	e, ok := part[key]
	if ok && cas != 0 && cas != e.cas {
		return ErrCASMismatch
	}
	if !ok {
		e = &entry{}
		part[strings.Clone(key)] = e // key may be a view of the caller's memory
	}
	e.value = append(e.value[:0:0], value...)
	e.cas = s.newCAS()
	return nil
}

// Len returns the number of keys in vmID's partition.
func (s *Store) Len(vmID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.vms[vmID])
}

// newCAS returns the next process-wide cas, never 0. Call with mu held.
func (s *Store) newCAS() uint32 {
	s.nextCAS++
	if s.nextCAS == 0 {
		s.nextCAS = 1
	}
	return s.nextCAS
}

// VM is one vm_id's view of a Store, with the Get/Set shape the filter's
// packages use.
type VM struct {
	Store *Store
	ID    string
}

// Get returns the value and cas under key.
func (v VM) Get(key string) ([]byte, uint32, error) { return v.Store.Get(v.ID, key) }

// Set stores value under key with Envoy's cas rules.
func (v VM) Set(key string, value []byte, cas uint32) error {
	return v.Store.Set(v.ID, key, value, cas)
}
