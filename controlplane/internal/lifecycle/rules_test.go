package lifecycle

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/controlplane/internal/store"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) *time.Time { v := t0.Add(d); return &v }

func i64(v int64) *int64 { return &v }

// kindOf is the refusal kind of err (nil for none), failing on an error
// that is not an *Error.
func kindOf(t *testing.T, err error) error {
	t.Helper()
	if err == nil {
		return nil
	}
	var le *Error
	if !errors.As(err, &le) {
		t.Fatalf("%v is not a *lifecycle.Error", err)
	}
	for _, k := range Kinds() {
		if errors.Is(err, k) {
			return k
		}
	}
	t.Fatalf("%v wraps no kind of Kinds()", err)
	return nil
}

func TestTransition(t *testing.T) {
	const (
		active   = store.StatusActive
		disabled = store.StatusDisabled
		revoked  = store.StatusRevoked
	)
	for _, c := range []struct {
		from, to string
		changed  bool
		kind     error
		message  string
	}{
		{active, disabled, true, nil, ""},
		{active, revoked, true, nil, ""},
		{disabled, active, true, nil, ""},
		{disabled, revoked, true, nil, ""},
		{active, active, false, nil, ""},
		{disabled, disabled, false, nil, ""},
		{revoked, revoked, false, nil, ""}, // revoking again is a no-op
		{revoked, active, false, ErrRevoked, "a revoked key cannot be re-enabled"},
		{revoked, disabled, false, ErrRevoked, "a revoked key cannot be disabled"},
		{active, "deleted", false, ErrInvalid, `must be "active"`},
	} {
		changed, err := Transition(c.from, c.to)
		if changed != c.changed || kindOf(t, err) != c.kind {
			t.Errorf("%s -> %s: changed %v, %v; want %v, %v", c.from, c.to, changed, err, c.changed, c.kind)
		}
		if c.message != "" && (err == nil || !strings.Contains(err.Error(), c.message)) {
			t.Errorf("%s -> %s: %v, want it to say %q", c.from, c.to, err, c.message)
		}
	}
}

func TestCheckChange(t *testing.T) {
	for status, want := range map[string]error{
		store.StatusActive: nil, store.StatusDisabled: nil, store.StatusRevoked: ErrRevoked,
	} {
		if got := kindOf(t, CheckChange(&store.Key{Status: status})); got != want {
			t.Errorf("%s: %v, want %v", status, got, want)
		}
	}
}

func TestCheckRotation(t *testing.T) {
	succ := &store.Key{ID: "key_succ", Status: store.StatusActive}
	for _, c := range []struct {
		name string
		old  store.Key
		succ *store.Key
		want error
	}{
		{"active", store.Key{Status: store.StatusActive}, nil, nil},
		{"disabled rotates too", store.Key{Status: store.StatusDisabled}, nil, nil},
		{"expiry ahead", store.Key{Status: store.StatusActive, ExpiresAt: at(time.Second)}, nil, nil},
		{"grace ahead", store.Key{Status: store.StatusActive, GraceEndsAt: at(time.Second)}, nil, nil},
		{"expired", store.Key{Status: store.StatusActive, ExpiresAt: at(-time.Second)}, nil, ErrExpired},
		{"expires this instant", store.Key{Status: store.StatusActive, ExpiresAt: at(0)}, nil, ErrExpired},
		{"grace over", store.Key{Status: store.StatusActive, ExpiresAt: at(time.Hour), GraceEndsAt: at(-time.Second)}, nil, ErrExpired},
		{"revoked", store.Key{Status: store.StatusRevoked}, nil, ErrRevoked},
		{"revoked and expired", store.Key{Status: store.StatusRevoked, ExpiresAt: at(-time.Hour)}, nil, ErrRevoked},
		{"has a successor", store.Key{Status: store.StatusActive}, succ, ErrHasSuccessor},
		{"successor wins over revoked", store.Key{Status: store.StatusRevoked}, succ, ErrHasSuccessor},
	} {
		err := CheckRotation(&c.old, c.succ, t0)
		if got := kindOf(t, err); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
		if c.want == ErrHasSuccessor && !strings.Contains(err.Error(), succ.ID) {
			t.Errorf("%s: %q does not name the successor", c.name, err)
		}
	}
}

func TestSuccessor(t *testing.T) {
	old := &store.Key{
		ID: "key_old", Name: "n", Owner: "o", Status: store.StatusDisabled,
		Hosts: []string{"a.example.com"}, Scopes: []string{"read"},
		Rate:      &store.Rate{Limit: 5, PeriodMS: 1000, Burst: 4},
		Quota:     &store.Quota{Limit: 9, Period: "day"},
		ExpiresAt: at(48 * time.Hour), GraceEndsAt: at(time.Hour),
		Metadata:      []byte(`{"a":1}`),
		PredecessorID: "key_first", SuccessorID: "key_revoked",
		CreatedAt: t0.Add(-time.Hour), UpdatedAt: t0.Add(-time.Minute), LastUsedAt: at(-time.Second),
		QuotaExhaustedUntil: at(time.Hour),
		Limits:              []store.NamedRate{{Name: "burst", Rate: store.Rate{Limit: 2, PeriodMS: 1000}}},
		PlanID:              "pro", Own: store.OwnRate | store.OwnLimits,
	}
	want := &store.Key{
		Name: "n", Owner: "o", Status: store.StatusDisabled,
		Hosts: []string{"a.example.com"}, Scopes: []string{"read"},
		Rate: old.Rate, Quota: old.Quota,
		Limits: old.Limits, PlanID: "pro", Own: store.OwnRate | store.OwnLimits, // same plan, same overrides
		ExpiresAt: old.ExpiresAt, // its own expiry, never the grace end
		Metadata:  old.Metadata, CreatedAt: t0, UpdatedAt: t0,
	}
	got := Successor(old, t0)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Successor:\n got %+v\nwant %+v", got, want)
	}
	got.Hosts[0] = "changed"
	if old.Hosts[0] != "a.example.com" {
		t.Error("the successor shares its hosts with the old key")
	}
	if s := Successor(&store.Key{}, t0); s.Hosts == nil || s.Scopes == nil {
		t.Error("nil hosts or scopes not made empty")
	}
}

func TestGraceEnd(t *testing.T) {
	for _, c := range []struct {
		name    string
		current *time.Time
		grace   time.Duration
		want    time.Time
	}{
		{"first rotation", nil, time.Hour, t0.Add(time.Hour)},
		{"at once", nil, 0, t0},
		{"earlier than before", at(2 * time.Hour), time.Hour, t0.Add(time.Hour)},
		{"never later", at(time.Hour), 2 * time.Hour, t0.Add(time.Hour)},
	} {
		if got := GraceEnd(&store.Key{GraceEndsAt: c.current}, t0, c.grace); !got.Equal(c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestStopsAtAndExpired(t *testing.T) {
	for _, c := range []struct {
		name           string
		expires, grace *time.Time
		stops          time.Time
		expiredAtT0    bool
	}{
		{"never", nil, nil, time.Time{}, false},
		{"own expiry", at(time.Hour), nil, t0.Add(time.Hour), false},
		{"grace end", nil, at(time.Hour), t0.Add(time.Hour), false},
		{"grace before expiry", at(2 * time.Hour), at(time.Hour), t0.Add(time.Hour), false},
		{"expiry before grace", at(time.Hour), at(2 * time.Hour), t0.Add(time.Hour), false},
		{"past", at(-time.Nanosecond), nil, t0.Add(-time.Nanosecond), true},
		{"now", nil, at(0), t0, true},
	} {
		k := &store.Key{ExpiresAt: c.expires, GraceEndsAt: c.grace}
		if got := StopsAt(k); !got.Equal(c.stops) {
			t.Errorf("%s: StopsAt %v, want %v", c.name, got, c.stops)
		}
		if got := Expired(k, t0); got != c.expiredAtT0 {
			t.Errorf("%s: Expired %v, want %v", c.name, got, c.expiredAtT0)
		}
	}
}

func TestGrace(t *testing.T) {
	for _, c := range []struct {
		in   *int64
		want time.Duration
		kind error
	}{
		{nil, 24 * time.Hour, nil},
		{i64(0), 0, nil},
		{i64(90), 90 * time.Second, nil},
		{i64(2_592_000), 30 * 24 * time.Hour, nil},
		{i64(2_592_001), 0, ErrInvalid},
		{i64(-1), 0, ErrInvalid},
	} {
		got, err := Grace(c.in)
		if got != c.want || kindOf(t, err) != c.kind {
			t.Errorf("Grace(%v) = %v, %v; want %v, %v", c.in, got, err, c.want, c.kind)
		}
		var le *Error
		if errors.As(err, &le) && le.Field != "grace_seconds" {
			t.Errorf("field %q", le.Field)
		}
	}
}

func TestCheckIdempotencyKey(t *testing.T) {
	for in, ok := range map[string]bool{
		"a": true, "retry-7f3c": true, strings.Repeat("x", 255): true, "!~": true,
		"": false, strings.Repeat("x", 256): false, "with space": false, "tab\t": false, "é": false, "\x7f": false,
	} {
		err := CheckIdempotencyKey(in)
		if (err == nil) != ok || (err != nil && kindOf(t, err) != ErrInvalid) {
			t.Errorf("%q: %v, want ok=%v", in, err, ok)
		}
	}
}

var idPattern = regexp.MustCompile(`^key_[0-9A-Za-z]{20}$`)

func TestNewID(t *testing.T) {
	r := rand.NewChaCha8([32]byte{1})
	seen := map[string]bool{}
	var counts [256]int
	for range 5000 {
		id, err := NewID(r)
		if err != nil || !idPattern.MatchString(id) || seen[id] {
			t.Fatalf("NewID = %q, %v (seen before: %v)", id, err, seen[id])
		}
		seen[id] = true
		for _, c := range []byte(id[len(IDPrefix):]) {
			counts[c]++
		}
	}
	// 100,000 digits over 62 symbols: about 1613 each; a biased drawing
	// (modulo without rejection) would put the first 8 symbols ~25% higher.
	for _, c := range []byte("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") {
		if counts[c] < 1400 || counts[c] > 1830 {
			t.Errorf("symbol %q drawn %d times of 100000", c, counts[c])
		}
	}
	if _, err := NewID(bytes.NewReader(make([]byte, 8))); !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		t.Errorf("short randomness: %v", err)
	}
}

func TestIdempotentRand(t *testing.T) {
	read := func(cred, oldID, newID, idem string) []byte {
		b := make([]byte, 100)
		if _, err := io.ReadFull(idempotentRand([]byte(cred), oldID, newID, idem), b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	a := read("cred", "key_a", "key_b", "i1")
	if !bytes.Equal(a, read("cred", "key_a", "key_b", "i1")) {
		t.Fatal("the same rotation request derives different randomness")
	}
	for name, other := range map[string][]byte{
		"credential":      read("cred2", "key_a", "key_b", "i1"),
		"old id":          read("cred", "key_x", "key_b", "i1"),
		"new id":          read("cred", "key_a", "key_c", "i1"),
		"idempotency key": read("cred", "key_a", "key_b", "i2"),
	} {
		if bytes.Equal(a, other) {
			t.Errorf("another %s derives the same randomness", name)
		}
	}
}
