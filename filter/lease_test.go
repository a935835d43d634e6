package filter

import (
	"errors"
	"testing"

	"github.com/keygate/keygate/bucket"
	"github.com/keygate/keygate/internal/shareddata"
)

// envoyStore is bucket.Store on shareddata, which follows Envoy's cas rules
// (a missing key is inserted whatever the cas; cas 0 always writes), unlike
// proxytest: the lease is tested against the rules it runs under.
type envoyStore struct{ vm shareddata.VM }

func (s envoyStore) Get(key string) ([]byte, uint32, error) {
	v, cas, err := s.vm.Get(key)
	if errors.Is(err, shareddata.ErrNotFound) {
		return nil, 0, bucket.ErrNotFound
	}
	return v, cas, err
}

func (s envoyStore) Set(key string, value []byte, cas uint32) error {
	err := s.vm.Set(key, value, cas)
	if errors.Is(err, shareddata.ErrCASMismatch) {
		return bucket.ErrCASMismatch
	}
	return err
}

// leaseFleet is several VMs' leases on one Envoy's shared data, with an
// injected clock in ms: worker VMs, and the sync service if service >= 0
// names one.
type leaseFleet struct {
	t      *testing.T
	leases []*lease
	held   []bool
	now    int64
}

func newLeaseFleet(t *testing.T, n int, durMS int64) *leaseFleet {
	return newServiceFleet(t, n, durMS, -1)
}

func newServiceFleet(t *testing.T, n int, durMS int64, service int) *leaseFleet {
	store := envoyStore{shareddata.VM{Store: shareddata.New(), ID: ""}} // Istio: no vm_id
	f := &leaseFleet{t: t, held: make([]bool, n), now: 1_700_000_000_000}
	for i := 0; i < n; i++ {
		f.leases = append(f.leases, newLease(store, uint64(i+1)*0x9e3779b97f4a7c15, durMS, i == service))
	}
	return f
}

// elect ticks the VMs in order every syncTickMS until one holds the lease,
// at most leaseStartGraceMS and three ticks: a worker leaves a new record
// to the sync service for leaseStartGraceMS, then takes it and confirms.
func (f *leaseFleet) elect(order []int) int {
	f.t.Helper()
	start := f.now
	for f.holder() < 0 {
		if f.now-start > leaseStartGraceMS+2*syncTickMS {
			f.t.Fatalf("order %v: no holder %d ms after the first tick", order, f.now-start)
		}
		for _, i := range order {
			f.tick(i)
		}
		f.now += syncTickMS
	}
	return f.holder()
}

// tick runs worker i's tick and checks that no two workers ever sync at
// once.
func (f *leaseFleet) tick(i int) {
	f.t.Helper()
	held, started, stopped := f.leases[i].tick(f.now)
	if started != (held && !f.held[i]) || stopped != (!held && f.held[i]) {
		f.t.Fatalf("worker %d: held %v started %v stopped %v after held %v", i, held, started, stopped, f.held[i])
	}
	f.held[i] = held
	for j, h := range f.held {
		if j != i && h && held {
			f.t.Fatalf("at %d workers %d and %d both hold the lease", f.now, i, j)
		}
	}
}

func (f *leaseFleet) holder() int {
	for i, h := range f.held {
		if h {
			return i
		}
	}
	return -1
}

// TestLeaseOneHolderAndTakeover: workers ticking every syncTickMS (in
// every order) elect one holder; it keeps the lease while it renews; when
// it stops (its VM died), another worker holds it after lease_ms and no
// later than lease_ms + leaseTakeoverMS after the last renewal; the old
// holder, back, learns it lost it.
func TestLeaseOneHolderAndTakeover(t *testing.T) {
	const durMS = 1000
	for _, order := range [][]int{{0, 1, 2}, {2, 1, 0}, {1, 0, 2}} {
		f := newLeaseFleet(t, 3, durMS)
		first := f.elect(order)
		for step := 0; step < 100; step++ { // 10 s of renewals
			for _, i := range order {
				f.tick(i)
			}
			if f.holder() != first {
				t.Fatalf("order %v: lease moved from %d to %d while renewed", order, first, f.holder())
			}
			f.now += syncTickMS
		}
		// The holder dies right after a renewal.
		lastRenewal := f.now - syncTickMS
		f.held[first] = false
		for f.holder() < 0 {
			for _, i := range order {
				if i != first {
					f.tick(i)
				}
			}
			if h := f.holder(); h >= 0 {
				took := f.now - lastRenewal
				if took < durMS || took > durMS+leaseTakeoverMS {
					t.Fatalf("order %v: worker %d took over %d ms after the last renewal, want within [%d, %d]",
						order, h, took, durMS, durMS+leaseTakeoverMS)
				}
				break
			}
			if f.now-lastRenewal > 10*durMS {
				t.Fatalf("order %v: no takeover", order)
			}
			f.now += syncTickMS
		}
		second := f.holder()
		// The old holder comes back (a VM whose ticks stalled): it does
		// not hold the lease, and never both.
		f.held[first] = true
		f.tick(first)
		if f.held[first] || !f.leases[second].check(f.now) || f.leases[first].check(f.now) {
			t.Fatalf("order %v: the stalled holder kept the lease", order)
		}
	}
}

// TestLeaseMissingRecordRace: two workers that both find no lease record
// (Envoy inserts a missing key whatever the cas, so both inserts succeed)
// still never sync at once.
func TestLeaseMissingRecordRace(t *testing.T) {
	f := newLeaseFleet(t, 2, 1000)
	// Worker 0 finds no record, inserts a free one, takes it once its
	// grace is over and confirms it: it syncs.
	if f.elect([]int{0}) != 0 {
		t.Fatal("worker 0 does not hold the lease")
	}
	// Worker 1 had found no record either; its insert lands now, and
	// succeeds (a missing key is inserted whatever the cas): the lease
	// reads expired. Worker 1 ticks first and takes it; worker 0 must
	// stop before worker 1 syncs (f.tick fails on two holders).
	var buf [leaseLen]byte
	if err := f.leases[1].store.Set(leaseKey, leaseRecord{}.encode(&buf), 0); err != nil {
		t.Fatal(err)
	}
	for step := 0; step < 10; step++ {
		f.tick(1)
		f.tick(0)
		f.now += syncTickMS
	}
	if f.holder() != 1 {
		t.Fatalf("holder %d, want worker 1", f.holder())
	}
}

// TestLeaseUnreadableRecord: a record that is not a lease is taken over
// (after one confirming tick), never trusted.
func TestLeaseUnreadableRecord(t *testing.T) {
	f := newLeaseFleet(t, 1, 1000)
	if err := f.leases[0].store.Set(leaseKey, []byte("garbage"), 0); err != nil {
		t.Fatal(err)
	}
	f.tick(0)
	if f.held[0] {
		t.Fatal("held without a confirming renewal")
	}
	f.now += syncTickMS
	f.tick(0)
	if !f.held[0] {
		t.Fatal("an unreadable lease record was not taken over")
	}
}

// TestLeaseRelease: a holder going away (on_done) ends its lease at once;
// another worker syncs two ticks later, without waiting for lease_ms.
func TestLeaseRelease(t *testing.T) {
	f := newLeaseFleet(t, 2, 60000)
	f.elect([]int{0})
	f.leases[0].release(f.now)
	f.held[0] = false
	for step := 0; step < 2; step++ {
		f.tick(1)
		f.now += syncTickMS
	}
	if !f.held[1] {
		t.Fatal("the released lease was not taken within two ticks")
	}
	f.leases[0].release(f.now) // no longer the holder: changes nothing
	if !f.leases[1].check(f.now) {
		t.Fatal("a former holder's release ended the new holder's lease")
	}
}

// TestLeaseServiceFirst: with the sync service among the candidates, the
// service holds the lease after at most three of its ticks, whichever
// candidate ticks first and even when the workers started up to
// leaseStartGraceMS before it; the workers never hold it while it renews;
// when the service's VM dies (Envoy does not reload it) a worker holds it
// within [lease_ms, lease_ms + leaseTakeoverMS] of its last renewal; the
// service, back after a stall, does not take it back.
func TestLeaseServiceFirst(t *testing.T) {
	const durMS = 1000
	const service = 0
	for _, c := range []struct {
		order     []int
		lateTicks int // worker ticks before the service's first
	}{
		{[]int{0, 1, 2}, 0},
		{[]int{2, 1, 0}, 0},
		{[]int{1, 0, 2}, 0},
		{[]int{1, 2, 0}, leaseStartGraceMS/syncTickMS - 2},
	} {
		f := newServiceFleet(t, 3, durMS, service)
		for step := 0; step < c.lateTicks; step++ {
			f.tick(1)
			f.tick(2)
			f.now += syncTickMS
		}
		serviceStart := f.now
		if h := f.elect(c.order); h != service {
			t.Fatalf("%+v: worker %d holds the lease, want the sync service", c, h)
		}
		if took := f.now - serviceStart; took > 3*syncTickMS {
			t.Fatalf("%+v: the sync service held the lease %d ms after its first tick", c, took)
		}
		for step := 0; step < 100; step++ {
			for _, i := range c.order {
				f.tick(i)
			}
			if f.holder() != service {
				t.Fatalf("%+v: lease moved to %d while the service renewed", c, f.holder())
			}
			f.now += syncTickMS
		}
		lastRenewal := f.now - syncTickMS
		f.held[service] = false // its VM trapped: it ticks no more
		for f.holder() < 0 {
			for _, i := range c.order {
				if i != service {
					f.tick(i)
				}
			}
			if h := f.holder(); h >= 0 {
				took := f.now - lastRenewal
				if took < durMS || took > durMS+leaseTakeoverMS {
					t.Fatalf("%+v: worker %d took over %d ms after the service's last renewal, want within [%d, %d]",
						c, h, took, durMS, durMS+leaseTakeoverMS)
				}
				break
			}
			if f.now-lastRenewal > 10*durMS {
				t.Fatalf("%+v: no worker took over from the dead service", c)
			}
			f.now += syncTickMS
		}
		worker := f.holder()
		f.held[service] = true
		f.tick(service)
		if f.held[service] || !f.leases[worker].check(f.now) || f.leases[service].check(f.now) {
			t.Fatalf("%+v: the stalled service took the lease back", c)
		}
	}
}

// TestLeaseServiceStandby: a sync service that starts after a worker
// already holds the lease (its ticks came more than leaseStartGraceMS
// late) stays a candidate without taking a live lease, and syncs once that
// worker's VM is gone.
func TestLeaseServiceStandby(t *testing.T) {
	const durMS = 1000
	f := newServiceFleet(t, 2, durMS, 0)
	if f.elect([]int{1}) != 1 {
		t.Fatal("the worker does not hold the lease")
	}
	for step := 0; step < 50; step++ {
		f.tick(0)
		f.tick(1)
		if f.holder() != 1 {
			t.Fatalf("the service took a live lease from the worker (holder %d)", f.holder())
		}
		f.now += syncTickMS
	}
	f.held[1] = false
	for step := 0; step < (durMS+leaseTakeoverMS)/syncTickMS+1 && !f.held[0]; step++ {
		f.tick(0)
		f.now += syncTickMS
	}
	if !f.held[0] {
		t.Fatal("the service did not take over from the dead worker")
	}
}
