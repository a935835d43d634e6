package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygate/keygate/internal/wire"
)

// rotate posts a rotation and returns the answer.
func (e *env) rotate(id string, body any, hdr ...string) *response {
	e.t.Helper()
	return e.call("POST", "/v1/keys/"+id+"/rotate", adminToken, body, hdr...)
}

func (e *env) getKey(id string) keyJSON {
	e.t.Helper()
	var k keyJSON
	r := e.admin("GET", "/v1/keys/"+id, nil)
	if r.status != http.StatusOK {
		e.t.Fatalf("get %s: %d %s", id, r.status, r.body)
	}
	r.json(e.t, &k)
	return k
}

// syncRecords returns the filters' view of every key, by id.
func (e *env) syncRecords() map[string]syncRecord {
	e.t.Helper()
	recs, _, _ := e.fullSnapshot(wire.MaxSyncLimit)
	return recs
}

// TestRotationLineage: a key has at most one active successor; a
// successor takes its predecessor's own expiry, never a grace end, and can
// itself be rotated, which starts a grace period for it alone.
func TestRotationLineage(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		own := t0.Add(48*time.Hour + 250*time.Millisecond)
		a := e.createKey(map[string]any{"name": "lineage", "hosts": []string{"api.example.com"},
			"expires_at": own.Format(time.RFC3339Nano)})
		r := e.rotate(a.ID, map[string]any{"grace_seconds": 3600})
		if r.status != http.StatusCreated {
			t.Fatalf("rotate a: %d %s", r.status, r.body)
		}
		var b keyJSON
		r.json(t, &b)
		if b.PredecessorID != a.ID || b.ExpiresAt == nil || !b.ExpiresAt.Equal(own) || b.GraceEndsAt != nil {
			t.Fatalf("b: predecessor %q expires %v grace %v; want %s, %v, none", b.PredecessorID, b.ExpiresAt, b.GraceEndsAt, a.ID, own)
		}
		aGrace := t0.Add(time.Hour)
		if g := e.getKey(a.ID); g.SuccessorID != b.ID || !g.GraceEndsAt.Equal(aGrace) || !g.ExpiresAt.Equal(own) {
			t.Fatalf("a after rotation: %+v", g)
		}

		// Rotating a again: 409, naming the successor; nothing changes.
		e.clock.Advance(2 * time.Second)
		p := e.rotate(a.ID, map[string]any{"grace_seconds": 60}).problem(t, http.StatusConflict, "conflict")
		if !strings.Contains(p.Detail, b.ID) {
			t.Fatalf("conflict detail %q does not name the successor %s", p.Detail, b.ID)
		}
		if g := e.getKey(a.ID); g.SuccessorID != b.ID || !g.GraceEndsAt.Equal(aGrace) {
			t.Fatalf("a after the refused rotation: %+v", g)
		}

		// Rotating the successor works and starts b's own grace period.
		r = e.rotate(b.ID, map[string]any{"grace_seconds": 60})
		if r.status != http.StatusCreated {
			t.Fatalf("rotate b: %d %s", r.status, r.body)
		}
		var c keyJSON
		r.json(t, &c)
		bGrace := e.clock.Now().Add(time.Minute)
		if c.PredecessorID != b.ID || !c.ExpiresAt.Equal(own) || c.GraceEndsAt != nil ||
			!c.RotatedFrom.ExpiresAt.Equal(bGrace) {
			t.Fatalf("c: %+v", c)
		}
		if g := e.getKey(b.ID); !g.GraceEndsAt.Equal(bGrace) || g.SuccessorID != c.ID || g.Expired {
			t.Fatalf("b after rotation: %+v", g)
		}
		if g := e.getKey(a.ID); !g.GraceEndsAt.Equal(aGrace) {
			t.Fatalf("rotating b moved a's grace end: %+v", g)
		}

		// Past b's grace (the old bug killed the newest key here): b is
		// expired, c lives to the lineage's own expiry, on the wire too.
		e.clock.Advance(61 * time.Second)
		if !e.getKey(b.ID).Expired || e.getKey(c.ID).Expired || e.getKey(a.ID).Expired {
			t.Fatal("after b's grace: want only b expired")
		}
		recs := e.syncRecords()
		wantOwn := own.Truncate(time.Second).Unix() + 1 // rounded up
		if recs[c.ID].ExpiresAt != wantOwn || recs[b.ID].ExpiresAt != bGrace.Unix() || recs[a.ID].ExpiresAt != aGrace.Unix() {
			t.Fatalf("sync expiries a %d b %d c %d; want %d %d %d", recs[a.ID].ExpiresAt, recs[b.ID].ExpiresAt,
				recs[c.ID].ExpiresAt, aGrace.Unix(), bGrace.Unix(), wantOwn)
		}
		// An expired key cannot be rotated; a revoked successor frees its
		// predecessor for another rotation.
		e.rotate(b.ID, nil).problem(t, http.StatusConflict, "conflict")
		if r := e.admin("POST", "/v1/keys/"+b.ID+"/revoke", nil); r.status != http.StatusOK {
			t.Fatalf("revoke b: %d %s", r.status, r.body)
		}
		r = e.rotate(a.ID, map[string]any{"grace_seconds": 7200})
		if r.status != http.StatusCreated {
			t.Fatalf("rotate a after b's revocation: %d %s", r.status, r.body)
		}
		var d keyJSON
		r.json(t, &d)
		if g := e.getKey(a.ID); g.SuccessorID != d.ID || !g.GraceEndsAt.Equal(aGrace) {
			t.Fatalf("a's grace end moved later or successor not updated: %+v", g)
		}
	})
}

// TestRotationIdempotencyKey: repeating a rotation with the same
// Idempotency-Key answers the same successor and key again; another
// Idempotency-Key, or none, is a 409.
func TestRotationIdempotencyKey(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		k := e.createKey(map[string]any{"hosts": []string{"api.example.com"}})
		first := e.rotate(k.ID, map[string]any{"grace_seconds": 600}, "Idempotency-Key", "rot-7f3a")
		if first.status != http.StatusCreated || first.header.Get("Idempotent-Replayed") != "" {
			t.Fatalf("first: %d %v %s", first.status, first.header, first.body)
		}
		var n1 keyJSON
		first.json(t, &n1)
		e.clock.Advance(5 * time.Second)
		again := e.rotate(k.ID, map[string]any{"grace_seconds": 600}, "Idempotency-Key", "rot-7f3a")
		if again.status != http.StatusCreated || again.header.Get("Idempotent-Replayed") != "true" ||
			again.header.Get("Location") != "/v1/keys/"+n1.ID {
			t.Fatalf("replay: %d %v %s", again.status, again.header, again.body)
		}
		var n2 keyJSON
		again.json(t, &n2)
		if n2.ID != n1.ID || n2.Key != n1.Key || n2.Key == "" || n2.RotatedFrom == nil ||
			!n2.RotatedFrom.ExpiresAt.Equal(n1.RotatedFrom.ExpiresAt) {
			t.Fatalf("replay answered %+v, first %+v", n2, n1)
		}
		e.rotate(k.ID, nil, "Idempotency-Key", "rot-other").problem(t, http.StatusConflict, "conflict")
		e.rotate(k.ID, nil).problem(t, http.StatusConflict, "conflict")
		e.rotate(k.ID, nil, "Idempotency-Key", "bad key").problem(t, http.StatusBadRequest, "invalid_request")
		// Only one successor exists.
		var list struct{ Keys []keyJSON }
		e.admin("GET", "/v1/keys", nil).json(t, &list)
		if len(list.Keys) != 2 {
			t.Fatalf("%d keys, want 2", len(list.Keys))
		}
		// Once the successor is deleted (or revoked), the same
		// Idempotency-Key makes a new rotation with a new key, never the
		// discarded one again.
		if r := e.admin("DELETE", "/v1/keys/"+n1.ID, nil); r.status != http.StatusNoContent {
			t.Fatalf("delete the successor: %d", r.status)
		}
		third := e.rotate(k.ID, nil, "Idempotency-Key", "rot-7f3a")
		var n4 keyJSON
		third.json(t, &n4)
		if third.status != http.StatusCreated || third.header.Get("Idempotent-Replayed") != "" || n4.ID == n1.ID || n4.Key == n1.Key {
			t.Fatalf("rotation after the successor's deletion: %d %s", third.status, third.body)
		}
		// Without Idempotency-Key keys are random; with it, they differ by
		// old key (same header value on another key).
		k2 := e.createKey(map[string]any{})
		r := e.rotate(k2.ID, nil, "Idempotency-Key", "rot-7f3a")
		var n3 keyJSON
		r.json(t, &n3)
		if r.status != http.StatusCreated || n3.Key == n1.Key {
			t.Fatalf("same Idempotency-Key on another key: %d, key reused %v", r.status, n3.Key == n1.Key)
		}
	})
}

// TestConcurrentRotations: 50 rotations of one key at once make exactly one
// successor; 20 at once with one Idempotency-Key all answer that one.
func TestConcurrentRotations(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		k := e.createKey(map[string]any{"hosts": []string{"api.example.com"}})
		statuses := make([]int, 50)
		var wg sync.WaitGroup
		for i := range statuses {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses[i] = e.rotate(k.ID, map[string]any{"grace_seconds": 60}).status
			}()
		}
		wg.Wait()
		created, conflicts := 0, 0
		for _, s := range statuses {
			switch s {
			case http.StatusCreated:
				created++
			case http.StatusConflict:
				conflicts++
			}
		}
		if created != 1 || conflicts != 49 {
			t.Fatalf("50 concurrent rotations: %d created, %d conflicts (%v)", created, conflicts, statuses)
		}
		var list struct{ Keys []keyJSON }
		e.admin("GET", "/v1/keys", nil).json(t, &list)
		if len(list.Keys) != 2 {
			t.Fatalf("%d keys after 50 concurrent rotations, want 2", len(list.Keys))
		}

		k2 := e.createKey(map[string]any{})
		ids := make([]string, 20)
		keys := make([]string, 20)
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := e.rotate(k2.ID, nil, "Idempotency-Key", "same-for-all")
				if r.status == http.StatusCreated {
					var v keyJSON
					if err := json.Unmarshal(r.body, &v); err == nil {
						ids[i], keys[i] = v.ID, v.Key
					}
				}
			}()
		}
		wg.Wait()
		for i := range ids {
			if ids[i] == "" || ids[i] != ids[0] || keys[i] != keys[0] {
				t.Fatalf("idempotent concurrent rotations answered different successors: %v", ids)
			}
		}
	})
}

// TestExpiryPrecision: expiries and grace ends keep their fraction of a
// second in the API, and the sync wire (whole seconds) rounds them up, so
// a key never stops early.
func TestExpiryPrecision(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		exp := t0.Add(time.Hour + 250*time.Millisecond)
		k := e.createKey(map[string]any{"expires_at": exp.Format(time.RFC3339Nano)})
		if !k.ExpiresAt.Equal(exp) || !e.getKey(k.ID).ExpiresAt.Equal(exp) {
			t.Fatalf("expires_at %v, want %v", k.ExpiresAt, exp)
		}
		e.clock.Advance(700 * time.Millisecond)
		r := e.rotate(k.ID, map[string]any{"grace_seconds": 10})
		var nk keyJSON
		r.json(t, &nk)
		grace := t0.Add(10*time.Second + 700*time.Millisecond)
		if r.status != http.StatusCreated || !nk.RotatedFrom.ExpiresAt.Equal(grace) || !e.getKey(k.ID).GraceEndsAt.Equal(grace) {
			t.Fatalf("grace end %v, want %v (%s)", nk.RotatedFrom, grace, r.body)
		}
		recs := e.syncRecords()
		if recs[k.ID].ExpiresAt != grace.Unix()+1 || recs[nk.ID].ExpiresAt != exp.Unix()+1 {
			t.Fatalf("wire expiries %d, %d; want %d, %d", recs[k.ID].ExpiresAt, recs[nk.ID].ExpiresAt, grace.Unix()+1, exp.Unix()+1)
		}
		// Whole seconds stay as they are.
		whole := t0.Add(2 * time.Hour)
		w := e.createKey(map[string]any{"expires_at": whole.Format(time.RFC3339)})
		if got := e.syncRecords()[w.ID].ExpiresAt; got != whole.Unix() {
			t.Fatalf("whole-second expiry on the wire %d, want %d", got, whole.Unix())
		}
		// A PATCHed expiry keeps its milliseconds too.
		patched := t0.Add(3*time.Hour + 1*time.Millisecond)
		r = e.admin("PATCH", "/v1/keys/"+w.ID, map[string]any{"expires_at": patched.Format(time.RFC3339Nano)})
		if r.status != http.StatusOK || !e.getKey(w.ID).ExpiresAt.Equal(patched) || e.syncRecords()[w.ID].ExpiresAt != patched.Unix()+1 {
			t.Fatalf("patched expiry: %d %s", r.status, r.body)
		}
	})
}

// TestQuotaFollowsLineage: a key's quota is one budget with the keys it was
// rotated from and to; usage of either counts, both are exhausted
// together, a new rotation starts exhausted, and deleting a predecessor
// does not give its usage back.
func TestQuotaFollowsLineage(t *testing.T) {
	backends(t, func(t *testing.T, open opener) {
		e := newEnv(t, open)
		dayEnd := time.Date(2030, 3, 5, 0, 0, 0, 0, time.UTC)
		a := e.createKey(map[string]any{"hosts": []string{"api.example.com"}, "quota": map[string]any{"limit": 100, "period": "day"}})
		e.postBatch("n1", 1, count(a.ID, e.clock.Now(), "allowed", 60))
		r := e.rotate(a.ID, map[string]any{"grace_seconds": 3600})
		var b keyJSON
		r.json(t, &b)
		if r.status != http.StatusCreated || b.QuotaExhaustedUntil != nil {
			t.Fatalf("rotate: %d %s", r.status, r.body)
		}
		if g := e.getKey(b.ID); g.QuotaUsed == nil || *g.QuotaUsed != 60 {
			t.Fatalf("new key's quota_used %v, want the lineage's 60", g.QuotaUsed)
		}
		e.postBatch("n1", 2, count(b.ID, e.clock.Now(), "allowed", 30))
		for _, id := range []string{a.ID, b.ID} {
			if g := e.getKey(id); *g.QuotaUsed != 90 || g.QuotaExhaustedUntil != nil {
				t.Fatalf("%s: used %d exhausted %v, want 90 and not exhausted", id, *g.QuotaUsed, g.QuotaExhaustedUntil)
			}
		}
		// The old key, still in its grace period, uses the same budget up.
		v0 := e.syncPage("since=0").Version
		e.postBatch("n2", 1, count(a.ID, e.clock.Now(), "allowed", 10))
		for _, id := range []string{a.ID, b.ID} {
			if g := e.getKey(id); *g.QuotaUsed != 100 || g.QuotaExhaustedUntil == nil || !g.QuotaExhaustedUntil.Equal(dayEnd) {
				t.Fatalf("%s at 100 of 100: used %d exhausted %v", id, *g.QuotaUsed, g.QuotaExhaustedUntil)
			}
		}
		p := e.syncPage("since=" + itoa(v0))
		exhausted := map[string]bool{}
		for _, u := range p.Upserts {
			exhausted[u.ID] = u.Quota != nil && u.Quota.ExhaustedUntil == dayEnd.Unix()
		}
		if !exhausted[a.ID] || !exhausted[b.ID] {
			t.Fatalf("sync delta does not exhaust both keys: %+v", p.Upserts)
		}
		// A rotation of the exhausted key starts exhausted.
		r = e.rotate(b.ID, map[string]any{"grace_seconds": 0})
		var c keyJSON
		r.json(t, &c)
		if r.status != http.StatusCreated || c.QuotaExhaustedUntil == nil || !c.QuotaExhaustedUntil.Equal(dayEnd) {
			t.Fatalf("rotation of an exhausted key: %d %s", r.status, r.body)
		}
		if e.syncRecords()[c.ID].Quota.ExhaustedUntil != dayEnd.Unix() {
			t.Fatal("the new key is not exhausted on the wire")
		}
		// Deleting a predecessor keeps its usage in the budget; raising the
		// limit lifts the exhaustion of the key it is raised on.
		if r := e.admin("DELETE", "/v1/keys/"+a.ID, nil); r.status != http.StatusNoContent {
			t.Fatalf("delete a: %d", r.status)
		}
		if g := e.getKey(c.ID); *g.QuotaUsed != 100 {
			t.Fatalf("after deleting a: used %d, want 100", *g.QuotaUsed)
		}
		r = e.admin("PATCH", "/v1/keys/"+c.ID, map[string]any{"quota": map[string]any{"limit": 150, "period": "day"}})
		if g := e.getKey(c.ID); r.status != http.StatusOK || g.QuotaExhaustedUntil != nil || *g.QuotaUsed != 100 {
			t.Fatalf("after raising the limit: %d %+v", r.status, g)
		}
		// An unrelated key's budget is its own.
		other := e.createKey(map[string]any{"quota": map[string]any{"limit": 100, "period": "day"}})
		if g := e.getKey(other.ID); *g.QuotaUsed != 0 {
			t.Fatalf("unrelated key used %d", *g.QuotaUsed)
		}
	})
}
