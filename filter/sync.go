package filter

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"math"
	"strconv"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
	"github.com/tidwall/gjson"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/internal/wire"
	"github.com/keygate/keygate/keyrecord"
)

const (
	syncTickMS      = 100
	maxBatchCounts  = wire.MaxBatchCounts
	maxResponseSize = wire.MaxSyncBody

	// maxPendingCounts bounds the syncer's backlog of (minute, outcome,
	// key, host) counts waiting for the control plane: about 150 bytes
	// each in the VM's heap. Past it, counts of combinations not yet
	// pending are dropped and counted (syncerRecord.usageDropped).
	maxPendingCounts = 50000
	dropLogPeriodMS  = 60000

	// maxRegisterBackoffMS caps the wait between registration attempts;
	// it grows past max_backoff_ms (usage waits, workers stay fresh) so
	// that a fleet restarting at once does not hammer the control plane's
	// registration bound.
	maxRegisterBackoffMS = 30000

	// syncerKey holds the syncing VM's own bookkeeping (syncerRecord),
	// which workers never read.
	syncerKey    = "keygate/syncer"
	syncerFormat = 2
	syncerLen    = 1 + 4 + 8 + 8
)

// syncerRecord is what a syncing VM keeps in shared data for its successor,
// for the filters and for tests: the highest epoch any record may carry,
// how many requests' usage counts were dropped because the backlog was
// full, and the staleness bound its configuration was checked against.
type syncerRecord struct {
	epochHigh      uint32
	usageDropped   uint64
	maxStalenessMS int64
}

func (r syncerRecord) encode(b *[syncerLen]byte) []byte {
	b[0] = syncerFormat
	binary.LittleEndian.PutUint32(b[1:], r.epochHigh)
	binary.LittleEndian.PutUint64(b[5:], r.usageDropped)
	binary.LittleEndian.PutUint64(b[13:], uint64(r.maxStalenessMS))
	return b[:]
}

func decodeSyncer(b []byte) (syncerRecord, bool) {
	if len(b) != syncerLen || b[0] != syncerFormat {
		return syncerRecord{}, false
	}
	return syncerRecord{
		epochHigh:      binary.LittleEndian.Uint32(b[1:]),
		usageDropped:   binary.LittleEndian.Uint64(b[5:]),
		maxStalenessMS: int64(binary.LittleEndian.Uint64(b[13:])),
	}, true
}

// warnStaleness logs when a filter's max_staleness_ms is below the bound
// the sync service's configuration was checked against: its staleness rule
// (docs/config.md) does not hold for that filter, and one failed long poll
// may make it answer 503. Envoy starts bootstrap services before
// listeners, so the record is normally there.
func warnStaleness(filterMS int64) {
	b, _, err := proxywasm.GetSharedData(syncerKey)
	if err != nil {
		return
	}
	if r, ok := decodeSyncer(b); ok && r.maxStalenessMS > filterMS {
		proxywasm.LogWarnf("keygate: max_staleness_ms %d is below the sync service's max_staleness_ms %d: "+
			"one failed sync may make this filter stale; give both roles the same value", filterMS, r.maxStalenessMS)
	}
}

// syncer is the syncing VM: it pulls key records from the control plane into
// shared data and pushes usage counts to it. It runs once per process, in
// the VM holding the sync lease (lease.go): the singleton bootstrap service
// sharing the filter's vm_id, or a worker whose filter configuration has a
// "sync" object. A trap kills a bootstrap service for good (Envoy never
// reloads one; a worker then takes the lease over), so nothing here may
// panic on any input: every index is bounded and every body is checked
// (size, nesting) before it is parsed.
type syncer struct {
	cfg   *syncConfig
	clock Clock

	// lease: the syncer runs while its VM holds the lease and keeps what
	// the next holder continues in shared data (handover.go). stopped: the
	// lease went to another VM; answers still coming in are ignored.
	lease   *lease
	stopped bool

	// Key sync.
	state      syncState
	snapEpoch  uint32 // non-zero while a snapshot is being paged in
	cursor     string
	syncBusy   bool
	syncFails  int
	nextSyncMS int64
	recBuf     []byte
	wrote      bool // records written since the state's gen last moved
	rec        syncerRecord

	// Live records (not deleted) in shared data under the state's epoch,
	// and under the snapshot being paged in; stored under recordsKey.
	records, snapRecords int64
	stats                *syncStats // nil: not reported
	startMS              int64

	// Instance (docs/config.md, "Instance identity").
	node, boot string
	token      string // instance token; never logged
	// legacy: the control plane has no registration endpoint (404);
	// usage goes with the fleet credential, as before instances existed.
	legacy    bool
	regBusy   bool
	regFails  int
	nextRegMS int64

	// Usage.
	seq      int64
	pending  map[string]int64 // line prefix (see usage.go) -> count
	inflight []byte           // the batch being sent, resent until acknowledged
	// The counts in inflight, to carry them into a new instance when the
	// control plane no longer knows this one.
	inflightKeys []string
	inflightNs   []int64
	usageBusy    bool
	usageFails   int
	nextFlushMS  int64
	queueID      uint32
	shareIDs     map[string]bool // key ids with a share entry in shared data
	// idleReported: the last batch sent was empty; stay silent until
	// traffic comes back.
	idleReported bool
	// Counts dropped (requests) since the last log line about it.
	droppedUnlogged uint64
	lastDropLogMS   int64
}

func newSyncer(cfg *syncConfig, clock Clock, l *lease) *syncer {
	return &syncer{cfg: cfg, clock: clock, lease: l, pending: make(map[string]int64), shareIDs: make(map[string]bool), lastDropLogMS: math.MinInt64 / 2}
}

func (s *syncer) nowMS() int64 { return s.clock() / 1e6 }

func (s *syncer) start() error {
	id, err := proxywasm.RegisterSharedQueue(usageQueue)
	if err != nil {
		return errors.New("registering usage queue: " + err.Error())
	}
	s.queueID = id
	// A restarted syncer continues from what the previous one stored.
	if b, _, err := proxywasm.GetSharedData(stateKey); err == nil {
		if st, ok := decodeState(b); ok {
			s.state = st
		}
	}
	if b, _, err := proxywasm.GetSharedData(syncerKey); err == nil {
		if r, ok := decodeSyncer(b); ok {
			s.rec = r
		}
	}
	s.records = loadRecordCount(s.state.epoch)
	// Published for the filters (warnStaleness).
	s.rec.maxStalenessMS = s.cfg.maxStalenessMS
	var rb [syncerLen]byte
	if err := setShared(syncerKey, s.rec.encode(&rb)); err != nil {
		return errors.New("storing the sync service's record: " + err.Error())
	}
	s.node = s.cfg.nodeID
	if s.node == "" {
		if b, err := proxywasm.GetProperty([]string{"node", "id"}); err == nil && wire.ValidNode(string(b)) {
			s.node = string(b)
		} else {
			if err == nil && len(b) > 0 {
				proxywasm.LogWarnf("keygate: node.id is not 1 to 128 bytes of printable UTF-8; using \"unnamed\" (set node_id)")
			}
			s.node = "unnamed"
		}
	}
	now := s.nowMS()
	s.startMS = now
	s.nextFlushMS = now + int64(s.cfg.flushPeriodMS)
	if !s.resume() {
		if err := s.newBoot(); err != nil {
			return err
		}
		s.persist()
	}
	if s.inflight != nil {
		s.nextFlushMS = now // the previous holder's batch: resend at once
	}
	return proxywasm.SetTickPeriodMilliSeconds(syncTickMS)
}

// resume continues the instance a previous lease holder stored: same boot
// id, token and seq, and its unacknowledged batch. It reports false when
// there is none (or not for this node).
func (s *syncer) resume() bool {
	b, _, err := proxywasm.GetSharedData(instanceKey)
	if err != nil {
		return false
	}
	r, ok := decodeInstance(b)
	if !ok {
		proxywasm.LogErrorf("keygate: unreadable instance record in shared data; registering a new instance")
		return false
	}
	if r.node != s.node {
		// The candidates' sync settings differ (node_id): the batch in
		// flight belongs to the other node's instance.
		what := ""
		if r.inflight != nil {
			what = "; its unacknowledged batch " + strconv.FormatInt(r.seq, 10) + " is not resent"
		}
		proxywasm.LogWarnf("keygate: took over the sync lease from node %q as node %q (give every candidate the same node_id); registering a new instance%s", r.node, s.node, what)
		return false
	}
	s.boot, s.token, s.seq, s.legacy = r.boot, r.token, r.seq, r.legacy
	if b, _, err := proxywasm.GetSharedData(shareIDsKey); err == nil {
		s.shareIDs = decodeShareIDs(b)
	}
	if r.inflight != nil {
		keys, ns, err := batchCounts(r.inflight)
		if err != nil {
			// Never resend what this filter cannot read back: a 401 would
			// have nothing to carry into a new instance.
			proxywasm.LogCriticalf("keygate: %v; dropping the unacknowledged batch %d", err, r.seq)
		} else {
			s.inflight, s.inflightKeys, s.inflightNs = r.inflight, keys, ns
		}
	}
	proxywasm.LogInfof("keygate: took over the sync lease; continuing instance %q/%s at batch %d", s.node, s.boot, s.seq)
	return true
}

// persist stores the instance and the unacknowledged batch for the next
// lease holder.
func (s *syncer) persist() {
	r := instanceRecord{node: s.node, boot: s.boot, token: s.token, seq: s.seq, legacy: s.legacy, inflight: s.inflight}
	if err := setShared(instanceKey, r.encode()); err != nil {
		proxywasm.LogErrorf("keygate: storing the instance for the next sync lease holder: %v", err)
	}
}

// active reports whether this syncer may act on an answer: while its VM
// still holds the lease.
func (s *syncer) active() bool {
	return !s.stopped && s.lease.check(s.nowMS())
}

// stop ends a syncer whose VM lost the lease: answers still in flight are
// ignored, and the queue's next consumer is the new holder.
func (s *syncer) stop() { s.stopped = true }

// newBoot draws a new boot id: 16 hex digits from crypto/rand. A boot id
// is never reused, so every instance this VM registers is new.
func (s *syncer) newBoot() error {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return errors.New("reading randomness for the boot id: " + err.Error())
	}
	const hexDigits = "0123456789abcdef"
	boot := make([]byte, 16)
	for i, b := range rnd {
		boot[2*i], boot[2*i+1] = hexDigits[b>>4], hexDigits[b&15]
	}
	s.boot = string(boot)
	return nil
}

func (s *syncer) tick() {
	now := s.nowMS()
	s.stats.gauges(now, s.state.lastSyncMS, s.startMS, s.records)
	if !s.syncBusy && now >= s.nextSyncMS {
		s.dispatchSync()
	}
	registered := s.token != "" || s.legacy
	if !registered && !s.regBusy && now >= s.nextRegMS {
		// Usage waits for an instance token; counts keep merging.
		s.dispatchRegister()
	}
	// The counts live in the shared queue; take them out only to build a
	// batch, and put back what is left.
	if now >= s.nextFlushMS {
		s.nextFlushMS = now + int64(s.cfg.flushPeriodMS)
		s.drainQueue(s.queueID)
		if registered && !s.usageBusy {
			s.dispatchUsage()
		}
		s.compact()
	}
}

// compact puts the pending counts back into the usage queue, merged into
// one message: nothing waits in a VM's memory, where a dead lease holder
// would take it along.
func (s *syncer) compact() {
	if len(s.pending) == 0 {
		return
	}
	msg := make([]byte, 0, len(s.pending)*64)
	for k, n := range s.pending {
		msg = append(msg, k...)
		msg = append(msg, '\t')
		msg = strconv.AppendInt(msg, n, 10)
		msg = append(msg, '\n')
	}
	if err := proxywasm.EnqueueSharedQueue(s.queueID, msg); err != nil {
		proxywasm.LogErrorf("keygate: putting %d usage counts back into the queue: %v (kept in memory)", len(s.pending), err)
		return
	}
	clear(s.pending)
}

// backoff is the wait after the fails-th failure in a row. The first
// failure is retried at once (under Envoy's round robin the retry goes to
// another endpoint of the cluster), so waiting starts with the second:
// retry_ms, doubled on each further failure up to max_backoff_ms.
func (s *syncer) backoff(fails int) int64 {
	d := s.cfg.retryMS
	for i := 2; i < fails && d < s.cfg.maxBackoffMS; i++ {
		d *= 2
	}
	if d > s.cfg.maxBackoffMS {
		d = s.cfg.maxBackoffMS
	}
	return d
}

// headers are a callout's headers; credential is the fleet credential or
// the instance token.
func (s *syncer) headers(method, path, credential string) [][2]string {
	return [][2]string{
		{":method", method},
		{":path", path},
		{":authority", s.cfg.authority},
		{"authorization", "Bearer " + credential},
		{"accept", "application/json"},
	}
}

func (s *syncer) dispatchSync() {
	path := s.cfg.syncPath + "?since=" + strconv.FormatInt(s.state.version, 10)
	wait := s.cfg.longPollS
	if s.cursor != "" {
		path += "&cursor=" + s.cursor
		wait = 0 // paging: no waiting between pages
	}
	if s.syncFails > 0 {
		// After a failure an answer now makes the workers fresh at once;
		// a long poll would be held while nothing changed.
		wait = 0
	}
	path += "&wait=" + strconv.FormatInt(wait, 10) + "&node=" + queryEscape(s.node) + "&boot=" + s.boot
	timeout := s.cfg.timeoutMS
	if wait > 0 {
		// The control plane holds it up to wait: a hung one costs at most
		// this much beyond it.
		timeout = uint32(wait)*1000 + longPollMarginMS
	}
	_, err := proxywasm.DispatchHttpCall(s.cfg.cluster, s.headers("GET", path, s.cfg.credential), nil, nil, timeout, s.onSyncResponse)
	if err != nil {
		proxywasm.LogErrorf("keygate: sync call to cluster %q: %v", s.cfg.cluster, err)
		s.stats.count(syncStatFailure)
		s.syncFails++
		s.nextSyncMS = s.nowMS() + s.backoff(max(s.syncFails, 2))
		return
	}
	s.syncBusy = true
}

func (s *syncer) onSyncResponse(numHeaders, bodySize, _ int) {
	s.syncBusy = false
	if !s.active() {
		return
	}
	status, body, err := calloutResult(numHeaders, bodySize)
	if err == nil && status != "200" {
		err = errors.New("control plane answered " + status + ": " + snippet(body))
	}
	before := s.state.version
	if err == nil {
		err = s.applyPage(body)
	}
	if err != nil {
		s.stats.count(syncStatFailure)
		s.syncFails++
		proxywasm.LogErrorf("keygate: sync: %v (serving cached keys; attempt %d)", err, s.syncFails)
		if s.syncFails > 3 && s.cursor != "" {
			// A cursor the control plane no longer honours: start the
			// paging again. A snapshot started anew takes a new epoch
			// (applyPage): records this one wrote must not survive it.
			s.cursor = ""
			s.snapEpoch = 0
		}
		if s.syncFails == 1 {
			s.dispatchSync() // at once, asking for an immediate answer
			return
		}
		s.nextSyncMS = s.nowMS() + s.backoff(s.syncFails)
		return
	}
	s.stats.count(syncStatSuccess)
	s.syncFails = 0
	if s.cursor != "" || (s.cfg.longPollS > 0 && s.state.version != before) {
		// The next page, or the next long poll after a change: at once,
		// not on the next tick, so a change landing in between waits for
		// nothing. An answer that moved nothing (a long poll that timed
		// out, or a control plane answering at once without news) waits
		// for the tick, so no answer can make the syncer spin.
		s.dispatchSync()
		return
	}
	s.nextSyncMS = s.nowMS()
}

// calloutResult reads a callout's :status and body. A reset (no headers) is
// an error.
func calloutResult(numHeaders, bodySize int) (string, []byte, error) {
	if numHeaders == 0 {
		return "", nil, errors.New("callout reset")
	}
	hdrs, err := proxywasm.GetHttpCallResponseHeaders()
	if err != nil {
		return "", nil, err
	}
	status := ""
	for _, h := range hdrs {
		if h[0] == ":status" {
			status = h[1]
		}
	}
	var body []byte
	if bodySize > 0 {
		if bodySize > maxResponseSize {
			return status, nil, errors.New("response body over 1 MiB")
		}
		if body, err = proxywasm.GetHttpCallResponseBody(0, bodySize); err != nil {
			return status, nil, err
		}
	}
	return status, body, nil
}

func snippet(b []byte) string {
	if len(b) > 200 {
		b = b[:200]
	}
	return string(b)
}

// applyPage writes one sync response into shared data (docs/wire.md).
func (s *syncer) applyPage(body []byte) error {
	if !jsonDepthOK(body) {
		return errors.New("response nests deeper than 32 levels")
	}
	if !gjson.ValidBytes(body) {
		return errors.New("response is not valid JSON")
	}
	root := gjson.ParseBytes(body)
	head, err := wire.DecodeSyncHead(root)
	if err != nil {
		return err
	}
	snapshot, more, cursor := head.Snapshot, head.More, head.Cursor
	epoch := s.state.epoch
	if snapshot {
		// The first page of a snapshot (asked without a cursor) starts a
		// new one; later pages continue it. Every snapshot started takes an
		// epoch never used before: an abandoned one may have written
		// records of keys deleted since, and reusing its epoch would bring
		// them back when the new snapshot completes.
		if s.snapEpoch == 0 || s.cursor == "" {
			var err error
			if s.snapEpoch, err = s.newEpoch(); err != nil {
				return err
			}
		}
		epoch = s.snapEpoch
	}
	var firstErr error
	wire.ForEachUpsert(root, func(u *wire.Upsert, err error) bool {
		var rec keyrecord.Record
		if err != nil {
			// Fail closed for that key: a record we cannot read might be a
			// revocation. Tombstone it when we know its hash.
			h, herr := apikey.ParseHash(u.Hash)
			if u.Hash == "" || herr != nil {
				if firstErr == nil {
					firstErr = err
				}
				return true
			}
			proxywasm.LogErrorf("keygate: sync: refusing key %s…: %v", u.Hash[:8], err)
			rec = keyrecord.Record{ID: "invalid", Status: keyrecord.StatusDeleted, Epoch: epoch}
			if err := s.writeRecord(h, &rec); err != nil && firstErr == nil {
				firstErr = err
			}
			return true
		}
		h, herr := apikey.ParseHash(u.Hash)
		if herr != nil { // never: CheckUpsert checked it
			if firstErr == nil {
				firstErr = herr
			}
			return true
		}
		rec = keyrecord.FromUpsert(u, epoch)
		if err := s.writeRecord(h, &rec); err != nil && firstErr == nil {
			firstErr = err
		}
		return true
	})
	wire.ForEachDelete(root, func(hash string, ok bool) bool {
		h, err := apikey.ParseHash(hash)
		if !ok || err != nil {
			if firstErr == nil {
				firstErr = errors.New("response.deletes: want 64-hex hashes")
			}
			return true
		}
		rec := keyrecord.Record{ID: "deleted", Status: keyrecord.StatusDeleted, Epoch: epoch}
		if err := s.writeRecord(h, &rec); err != nil && firstErr == nil {
			firstErr = err
		}
		return true
	})
	if firstErr != nil {
		if s.wrote {
			// Records changed: workers must drop what they cached, even
			// though this page does not advance the sync.
			s.wrote = false
			s.state.gen++
			var buf [stateLen]byte
			_ = setShared(stateKey, s.state.encode(&buf))
		}
		return firstErr
	}
	if s.wrote || (!more && snapshot) {
		s.wrote = false
		s.state.gen++
	}
	if more {
		s.cursor = cursor
	} else {
		s.cursor = ""
		if snapshot {
			s.state.epoch = s.snapEpoch
			s.snapEpoch = 0
			s.records, s.snapRecords = s.snapRecords, 0
		}
		s.state.version = head.Version
	}
	s.storeRecordCount()
	s.state.lastSyncMS = s.nowMS()
	var buf [stateLen]byte
	return setShared(stateKey, s.state.encode(&buf))
}

// newEpoch reserves an epoch above every one records may carry, and
// stores the reservation before any record carries it (a restarted syncer
// must not reuse it either).
func (s *syncer) newEpoch() (uint32, error) {
	e := max(s.rec.epochHigh, s.state.epoch) + 1
	s.rec.epochHigh = e
	var buf [syncerLen]byte
	if err := setShared(syncerKey, s.rec.encode(&buf)); err != nil {
		return 0, errors.New("storing the snapshot epoch: " + err.Error())
	}
	return e, nil
}

func (s *syncer) writeRecord(h apikey.Hash, rec *keyrecord.Record) error {
	var err error
	s.recBuf, err = rec.Append(s.recBuf[:0])
	if err != nil {
		return err
	}
	var key [1 + len(h)]byte
	key[0] = recordTag
	copy(key[1:], h[:])
	delta := int64(0)
	if rec.Status != keyrecord.StatusDeleted {
		delta = 1
	}
	if old, _, err := proxywasm.GetSharedData(string(key[:])); err == nil {
		if v, err := keyrecord.Parse(old); err == nil && v.Epoch() >= rec.Epoch && v.Status() != keyrecord.StatusDeleted {
			delta-- // replaces a live record of the same epoch
		}
	}
	s.wrote = true
	if err := setShared(string(key[:]), s.recBuf); err != nil {
		return err
	}
	if s.snapEpoch != 0 && rec.Epoch == s.snapEpoch {
		s.snapRecords += delta
	} else {
		s.records += delta
	}
	return nil
}

// recordsKey holds the live record count under an epoch: epoch (4) |
// count (8), so that a restarted syncer or the next lease holder goes on
// counting.
const recordsKey = "keygate/records"

func (s *syncer) storeRecordCount() {
	var b [12]byte
	binary.LittleEndian.PutUint32(b[:], s.state.epoch)
	binary.LittleEndian.PutUint64(b[4:], uint64(s.records))
	if err := setShared(recordsKey, b[:]); err != nil {
		proxywasm.LogWarnf("keygate: storing the record count: %v", err)
	}
}

// loadRecordCount returns the stored live record count when it was counted
// under epoch, else 0 (the next snapshot counts afresh).
func loadRecordCount(epoch uint32) int64 {
	b, _, err := proxywasm.GetSharedData(recordsKey)
	if err != nil || len(b) != 12 || binary.LittleEndian.Uint32(b) != epoch {
		return 0
	}
	return int64(binary.LittleEndian.Uint64(b[4:]))
}

// drainQueue merges the workers' usage messages into the pending counts.
func (s *syncer) drainQueue(queueID uint32) {
	dropped := s.rec.usageDropped
	for {
		msg, err := proxywasm.DequeueSharedQueue(queueID)
		if err != nil {
			if !errors.Is(err, types.ErrorStatusEmpty) {
				proxywasm.LogErrorf("keygate: reading usage queue: %v", err)
			}
			break
		}
		s.merge(msg)
	}
	if s.rec.usageDropped != dropped {
		var buf [syncerLen]byte
		_ = setShared(syncerKey, s.rec.encode(&buf))
		s.logDrops()
	}
}

// logDrops reports dropped counts, at most once a minute.
func (s *syncer) logDrops() {
	now := s.nowMS()
	if s.droppedUnlogged == 0 || now-s.lastDropLogMS < dropLogPeriodMS {
		return
	}
	proxywasm.LogErrorf("keygate: usage backlog full (%d counts waiting for the control plane): dropped the counts of %d requests (%d since start)",
		len(s.pending), s.droppedUnlogged, s.rec.usageDropped)
	s.droppedUnlogged, s.lastDropLogMS = 0, now
}

// merge adds one queue message (see usage.go) to the pending counts. A
// line that is not "<minute>\t<outcome>\t<key id>\t<host>\t<n>" is
// dropped: batches are built from these fields without further checks.
func (s *syncer) merge(msg []byte) {
	for len(msg) > 0 {
		line := msg
		if nl := indexByteB(msg, '\n'); nl >= 0 {
			line, msg = msg[:nl], msg[nl+1:]
		} else {
			msg = nil
		}
		tab := lastIndexByteB(line, '\t')
		if tab <= 0 || !usageLinePrefix(line[:tab]) {
			proxywasm.LogErrorf("keygate: malformed usage line dropped")
			continue
		}
		n, err := strconv.ParseInt(string(line[tab+1:]), 10, 64)
		if err != nil || n <= 0 {
			proxywasm.LogErrorf("keygate: malformed usage line dropped")
			continue
		}
		n = min(n, wire.MaxCountN)
		if c, ok := s.pending[string(line[:tab])]; ok {
			s.pending[string(line[:tab])] = min(c+n, wire.MaxCountN) // saturates: never past what a batch may carry
			continue
		}
		if len(s.pending) >= maxPendingCounts {
			s.rec.usageDropped += uint64(n)
			s.droppedUnlogged += uint64(n)
			continue
		}
		s.pending[string(line[:tab])] = n
	}
}

// usageLinePrefix reports whether p is "<minute>\t<outcome>\t<key id>\t<host>"
// whose fields make a count the control plane takes (wire.CheckUsageCount):
// a minute of 1 to 12 digits without a leading zero, an outcome code, a
// key id or "", and a usage host.
func usageLinePrefix(p []byte) bool {
	tabs := 0
	for _, c := range p {
		if c == '\t' {
			tabs++
		}
	}
	f := splitTabs(string(p))
	if tabs != 3 || len(f[0]) == 0 || len(f[0]) > 12 || len(f[0]) > 1 && f[0][0] == '0' {
		return false
	}
	minute := int64(0)
	for i := 0; i < len(f[0]); i++ {
		c := f[0][i]
		if c < '0' || c > '9' {
			return false
		}
		minute = minute*10 + int64(c-'0')
	}
	c := wire.UsageCount{Minute: minute, Outcome: f[1], KeyID: f[2], Host: f[3], N: 1}
	m, _ := wire.CheckUsageCount(&c)
	return m == ""
}

func indexByteB(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func lastIndexByteB(b []byte, c byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == c {
			return i
		}
	}
	return -1
}

// usageCredential is what usage batches carry: the instance token, or the
// fleet credential for a control plane without instances.
func (s *syncer) usageCredential() string {
	if s.legacy {
		return s.cfg.credential
	}
	return s.token
}

// dispatchUsage sends the in-flight batch again, or a new one built from
// the pending counts.
func (s *syncer) dispatchUsage() {
	if s.inflight == nil {
		if len(s.pending) == 0 {
			if s.idleReported || s.seq == 0 {
				return
			}
			// Traffic stopped: one empty batch tells the control plane at
			// once that this node's demand is zero, so the fleet's shares
			// move to the nodes that still have traffic.
			s.idleReported = true
		} else {
			s.idleReported = false
		}
		s.seq++
		s.inflight = s.buildBatch()
		s.persist() // before it leaves: a successor resends this very batch
	}
	_, err := proxywasm.DispatchHttpCall(s.cfg.cluster, append(s.headers("POST", s.cfg.usagePath, s.usageCredential()),
		[2]string{"content-type", "application/json"}), s.inflight, nil, s.cfg.timeoutMS, s.onUsageResponse)
	if err != nil {
		proxywasm.LogErrorf("keygate: usage call to cluster %q: %v", s.cfg.cluster, err)
		return
	}
	s.usageBusy = true
}

// buildBatch moves up to maxBatchCounts pending counts into a batch body.
func (s *syncer) buildBatch() []byte {
	b := make([]byte, 0, 128+min(len(s.pending), maxBatchCounts)*96)
	b = wire.AppendUsageHead(b, s.node, s.boot, s.seq)
	s.inflightKeys, s.inflightNs = s.inflightKeys[:0], s.inflightNs[:0]
	n := 0
	for k, v := range s.pending {
		if n == maxBatchCounts {
			break
		}
		// k is "<minute>\t<outcome>\t<key id>\t<host>" (usageLinePrefix).
		f := splitTabs(k)
		minute, _ := strconv.ParseInt(f[0], 10, 64)
		b = wire.AppendUsageCount(b, n == 0, &wire.UsageCount{KeyID: f[2], Minute: minute, Host: f[3], Outcome: f[1], N: v})
		s.inflightKeys = append(s.inflightKeys, k)
		s.inflightNs = append(s.inflightNs, v)
		delete(s.pending, k)
		n++
	}
	return wire.AppendUsageEnd(b)
}

func splitTabs(k string) [4]string {
	var f [4]string
	i := 0
	for j := 0; j < 3; j++ {
		t := indexByte(k[i:], '\t')
		if t < 0 {
			break
		}
		f[j] = k[i : i+t]
		i += t + 1
	}
	f[3] = k[i:]
	return f
}

func (s *syncer) onUsageResponse(numHeaders, bodySize, _ int) {
	s.usageBusy = false
	if !s.active() {
		return // the next holder resends the batch
	}
	status, body, err := calloutResult(numHeaders, bodySize)
	switch {
	case err != nil:
	case status == "200":
		s.inflight = nil
		s.inflightKeys, s.inflightNs = s.inflightKeys[:0], s.inflightNs[:0]
		s.usageFails = 0
		s.persist()
		if err := s.applyShares(body); err != nil {
			proxywasm.LogErrorf("keygate: usage response: %v (keeping the previous limit shares)", err)
		}
		if len(s.pending) >= maxBatchCounts {
			s.nextFlushMS = s.nowMS() // a backlog: send the next batch at once
		}
		return
	case status == "400" || status == "413" || status == "409" && problemCode(body) == wire.SeqOutOfRange:
		// The control plane will never take this batch; resending would
		// wedge every later count behind it.
		proxywasm.LogCriticalf("keygate: usage batch %d refused for good (%s): %s", s.seq, status, snippet(body))
		s.inflight = nil
		s.inflightKeys, s.inflightNs = s.inflightKeys[:0], s.inflightNs[:0]
		s.usageFails = 0 // it answered: the next failure is retried at once again
		s.persist()
		return
	case !s.legacy && (status == "401" || status == "403"),
		s.legacy && status == "403" && problemCode(body) == wire.InstanceTokenRequired:
		// The control plane does not know this instance (any more), or
		// wants instance tokens now: become a new instance and send the
		// unacknowledged counts under it.
		proxywasm.LogWarnf("keygate: usage batch %d refused (%s %s); registering node %q as a new instance",
			s.seq, status, problemCode(body), s.node)
		if err := s.newInstance(); err != nil {
			proxywasm.LogErrorf("keygate: %v", err)
		}
		return
	default:
		err = errors.New("control plane answered " + status)
	}
	s.usageFails++
	proxywasm.LogWarnf("keygate: usage flush: %v (batch %d kept for retry)", err, s.seq)
	if s.usageFails == 1 {
		s.dispatchUsage() // at once
		return
	}
	s.nextFlushMS = s.nowMS() + s.backoff(s.usageFails)
}

// newInstance forgets the instance: the unacknowledged batch's counts go
// back to the pending ones (the control plane never took them: it refused
// the batch for its credential), and the next tick registers a new boot id
// whose batches start again at seq 1.
func (s *syncer) newInstance() error {
	for i, k := range s.inflightKeys {
		if i < len(s.inflightNs) {
			s.pending[k] += s.inflightNs[i]
		}
	}
	s.inflight = nil
	s.inflightKeys, s.inflightNs = s.inflightKeys[:0], s.inflightNs[:0]
	s.token, s.legacy = "", false
	s.seq, s.idleReported = 0, false
	s.usageFails, s.regFails = 0, 0
	s.nextRegMS = s.nowMS()
	err := s.newBoot()
	s.persist()
	s.compact()
	return err
}

// dispatchRegister registers this instance (node, boot) with the fleet
// credential; the answer carries the instance token usage needs.
func (s *syncer) dispatchRegister() {
	body := wire.AppendRegistration(nil, s.node, s.boot)
	_, err := proxywasm.DispatchHttpCall(s.cfg.cluster, append(s.headers("POST", s.cfg.registerPath, s.cfg.credential),
		[2]string{"content-type", "application/json"}), body, nil, s.cfg.timeoutMS, s.onRegisterResponse)
	if err != nil {
		proxywasm.LogErrorf("keygate: register call to cluster %q: %v", s.cfg.cluster, err)
		s.regFails++
		s.nextRegMS = s.nowMS() + s.backoff(max(s.regFails, 2))
		return
	}
	s.regBusy = true
}

func (s *syncer) onRegisterResponse(numHeaders, bodySize, _ int) {
	s.regBusy = false
	if !s.active() {
		return
	}
	status, body, err := calloutResult(numHeaders, bodySize)
	switch {
	case err != nil:
	case status == "201":
		if err = s.takeToken(body); err == nil {
			s.regFails = 0
			s.persist()
			proxywasm.LogInfof("keygate: registered as instance %q/%s", s.node, s.boot)
			return
		}
	case status == "409" && problemCode(body) == wire.InstanceExists:
		// Boot ids are never reused: draw another.
		err = errors.New("instance exists; drawing a new boot id")
		if berr := s.newBoot(); berr != nil {
			err = berr
		}
		s.persist()
	case status == "404":
		// A control plane from before instance tokens: usage goes with
		// the fleet credential until it asks for a token (403
		// instance_token_required).
		proxywasm.LogWarnf("keygate: the control plane has no %s; sending usage with the fleet credential", s.cfg.registerPath)
		s.legacy, s.regFails = true, 0
		s.persist()
		return
	case status == "400" || status == "401" || status == "403":
		err = errors.New("control plane refused the registration (" + status + "): " + snippet(body))
		proxywasm.LogCriticalf("keygate: %v", err)
	default:
		err = errors.New("control plane answered " + status)
	}
	s.regFails++
	proxywasm.LogWarnf("keygate: registering instance %q: %v (usage waits; attempt %d)", s.node, err, s.regFails)
	if s.regFails == 1 {
		s.dispatchRegister() // at once
		return
	}
	s.nextRegMS = s.nowMS() + min(s.backoff(s.regFails)*int64(s.regFails), maxRegisterBackoffMS)
}

// takeToken reads a registration answer: the instance must be ours and the
// token well formed. The body is never logged (it holds the token).
func (s *syncer) takeToken(body []byte) error {
	if !jsonDepthOK(body) || !gjson.ValidBytes(body) {
		return errors.New("registration answer is not valid JSON")
	}
	root := gjson.ParseBytes(body)
	if root.Get("instance.node").Str != s.node || root.Get("instance.boot").Str != s.boot {
		return errors.New("registration answer names another instance")
	}
	tok := root.Get("token")
	if tok.Type != gjson.String || !wire.ValidInstanceToken(tok.Str) {
		return errors.New("registration answer holds no well-formed instance token")
	}
	s.token = tok.Str
	return nil
}

// problemCode is the stable "error" member of a problem+json body, or "".
func problemCode(body []byte) string {
	if !jsonDepthOK(body) {
		return ""
	}
	return wire.ProblemCode(body)
}

// queryEscape percent-encodes s for a query parameter value (all but the
// unreserved characters).
func queryEscape(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hexDigits[c>>4], hexDigits[c&15])
	}
	return string(b)
}

// applyShares stores the fleet-wide limit shares of a usage response
// (docs/wire.md): one entry per listed key, the default share in the sync
// state, and clears entries of keys no longer listed.
func (s *syncer) applyShares(body []byte) error {
	if len(body) == 0 || !jsonDepthOK(body) || !gjson.ValidBytes(body) {
		return errors.New("not valid JSON")
	}
	root := gjson.ParseBytes(body)
	shares := root.Get("shares")
	if !shares.Exists() {
		return nil // an older control plane: whole rates stay in force
	}
	if !shares.IsObject() {
		return errors.New("shares: want an object")
	}
	def := root.Get("default_share")
	if def.Exists() && (def.Type != gjson.Number || def.Num <= 0 || def.Num > 1) {
		return errors.New("default_share: want a number in (0, 1]")
	}
	// Workers look for per-key shares only while the state says there may
	// be some: say so before writing the first.
	if !s.state.keyShares && len(shares.Map()) > 0 {
		s.state.keyShares = true
		var buf [stateLen]byte
		if err := setShared(stateKey, s.state.encode(&buf)); err != nil {
			return err
		}
	}
	var firstErr error
	seen := make(map[string]bool, len(s.shareIDs))
	shares.ForEach(func(k, v gjson.Result) bool {
		if v.Type != gjson.Number || v.Num <= 0 || v.Num > 1 || !wire.ValidBudgetID(k.Str) {
			firstErr = errors.New("shares: want budget id -> number in (0, 1]")
			return false
		}
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], math.Float64bits(v.Num))
		if err := setShared(string(shareTag)+k.Str, b[:]); err != nil {
			firstErr = err
			return false
		}
		seen[k.Str] = true
		return true
	})
	if firstErr != nil {
		return firstErr
	}
	for id := range s.shareIDs {
		if !seen[id] {
			if err := setShared(string(shareTag)+id, nil); err != nil {
				return err
			}
		}
	}
	if !sameIDs(seen, s.shareIDs) {
		// The next lease holder must know which entries to clear.
		if err := setShared(shareIDsKey, encodeShareIDs(seen)); err != nil {
			return err
		}
	}
	s.shareIDs = seen
	changed := false
	if def.Exists() && def.Num != s.state.defaultShare {
		s.state.defaultShare, changed = def.Num, true
	}
	if len(seen) == 0 && s.state.keyShares { // every share is gone
		s.state.keyShares, changed = false, true
	}
	if changed {
		var buf [stateLen]byte
		return setShared(stateKey, s.state.encode(&buf))
	}
	return nil
}
