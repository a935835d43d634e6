package shareddata

import (
	"errors"
	"testing"
	"unsafe"
)

func TestEnvoyCASRules(t *testing.T) {
	s := New()
	if _, _, err := s.Get("vm", "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v, want ErrNotFound", err)
	}
	// A missing key is inserted whatever cas is.
	if err := s.Set("vm", "k", []byte("a"), 12345); err != nil {
		t.Fatalf("insert with stale cas: %v", err)
	}
	v, cas1, err := s.Get("vm", "k")
	if err != nil || string(v) != "a" || cas1 == 0 {
		t.Fatalf("get = %q %d %v", v, cas1, err)
	}
	// cas 0 always succeeds.
	if err := s.Set("vm", "k", []byte("b"), 0); err != nil {
		t.Fatalf("set cas 0: %v", err)
	}
	// The old cas is now stale.
	if err := s.Set("vm", "k", []byte("c"), cas1); !errors.Is(err, ErrCASMismatch) {
		t.Fatalf("stale cas: %v, want ErrCASMismatch", err)
	}
	_, cas2, _ := s.Get("vm", "k")
	if err := s.Set("vm", "k", []byte("c"), cas2); err != nil {
		t.Fatalf("current cas: %v", err)
	}
	// cas comes from one process-wide counter: another key's cas is distinct.
	s.Set("vm", "other", []byte("x"), 0)
	_, casOther, _ := s.Get("vm", "other")
	_, cas3, _ := s.Get("vm", "k")
	if casOther == cas3 {
		t.Fatalf("cas values of two keys collide: %d", casOther)
	}
	// Partitions by vm_id.
	if _, _, err := s.Get("other-vm", "k"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("vm partitions leak: %v", err)
	}
	// Gets return copies.
	v, _, _ = s.Get("vm", "k")
	v[0] = 'z'
	if v2, _, _ := s.Get("vm", "k"); string(v2) != "c" {
		t.Fatalf("get did not copy: %q", v2)
	}
}

func TestCASSkipsZero(t *testing.T) {
	s := New()
	s.nextCAS = ^uint32(0)
	s.Set("vm", "k", nil, 0)
	if _, cas, _ := s.Get("vm", "k"); cas != 1 {
		t.Fatalf("cas after wrap = %d, want 1", cas)
	}
}

// The host passes keys that are views of guest memory: the store must keep
// its own copy of a key it inserts.
func TestSetCopiesTheKey(t *testing.T) {
	s := New()
	buf := []byte("key-1")
	key := unsafe.String(&buf[0], len(buf))
	if err := s.Set("vm", key, []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXXX")
	if v, _, err := s.Get("vm", "key-1"); err != nil || string(v) != "v" {
		t.Fatalf("after the caller's buffer changed: %q %v", v, err)
	}
}
