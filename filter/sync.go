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

	"github.com/keygate/keygate/keycache"
)

const (
	syncTickMS      = 100
	maxBackoffMS    = 30000
	maxBatchCounts  = 10000
	maxResponseSize = 1 << 20 // Envoy buffers callout bodies; the control plane stays under it
)

// syncer is the syncing VM: it pulls key records from the control plane into
// shared data and pushes usage counts to it. Envoy runs it once per process
// as a singleton bootstrap service sharing the filter's vm_id.
type syncer struct {
	cfg   *syncConfig
	clock Clock

	// Key sync.
	state      syncState
	snapEpoch  uint32 // non-zero while a snapshot is being paged in
	cursor     string
	syncBusy   bool
	syncFails  int
	nextSyncMS int64
	recBuf     []byte
	wrote      bool // records written since the state's gen last moved

	// Usage.
	node, boot  string
	seq         int64
	pending     map[string]int64 // line prefix (see usage.go) -> count
	inflight    []byte           // the batch being sent, resent until acknowledged
	usageBusy   bool
	usageFails  int
	nextFlushMS int64
	queueID     uint32
	shareIDs    map[string]bool // key ids with a share entry in shared data
	// idleReported: the last batch sent was empty; stay silent until
	// traffic comes back.
	idleReported bool
}

func newSyncer(cfg *syncConfig, clock Clock) *syncer {
	return &syncer{cfg: cfg, clock: clock, pending: make(map[string]int64), shareIDs: make(map[string]bool)}
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
	s.node = s.cfg.nodeID
	if s.node == "" {
		if b, err := proxywasm.GetProperty([]string{"node", "id"}); err == nil && len(b) > 0 && len(b) <= 128 {
			s.node = string(b)
		} else {
			s.node = "unknown"
		}
	}
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
	now := s.nowMS()
	s.nextFlushMS = now + int64(s.cfg.flushPeriodMS)
	return proxywasm.SetTickPeriodMilliSeconds(syncTickMS)
}

func (s *syncer) tick() {
	now := s.nowMS()
	if !s.syncBusy && now >= s.nextSyncMS {
		s.dispatchSync()
	}
	if !s.usageBusy && now >= s.nextFlushMS {
		s.nextFlushMS = now + int64(s.cfg.flushPeriodMS)
		s.dispatchUsage()
	}
}

func (s *syncer) backoff(fails int) int64 {
	d := s.cfg.retryMS
	for i := 1; i < fails && d < maxBackoffMS; i++ {
		d *= 2
	}
	if d > maxBackoffMS {
		d = maxBackoffMS
	}
	return d
}

func (s *syncer) headers(method, path string) [][2]string {
	return [][2]string{
		{":method", method},
		{":path", path},
		{":authority", s.cfg.authority},
		{"authorization", "Bearer " + s.cfg.credential},
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
	path += "&wait=" + strconv.FormatInt(wait, 10)
	timeout := s.cfg.timeoutMS + uint32(wait)*1000
	_, err := proxywasm.DispatchHttpCall(s.cfg.cluster, s.headers("GET", path), nil, nil, timeout, s.onSyncResponse)
	if err != nil {
		proxywasm.LogErrorf("keygate: sync call to cluster %q: %v", s.cfg.cluster, err)
		s.syncFailed()
		return
	}
	s.syncBusy = true
}

func (s *syncer) syncFailed() {
	s.syncFails++
	s.nextSyncMS = s.nowMS() + s.backoff(s.syncFails)
}

func (s *syncer) onSyncResponse(numHeaders, bodySize, _ int) {
	s.syncBusy = false
	status, body, err := calloutResult(numHeaders, bodySize)
	if err == nil && status != "200" {
		err = errors.New("control plane answered " + status + ": " + snippet(body))
	}
	if err == nil {
		err = s.applyPage(body)
	}
	if err != nil {
		proxywasm.LogErrorf("keygate: sync: %v (serving cached keys; attempt %d)", err, s.syncFails+1)
		if s.syncFails > 2 && s.cursor != "" {
			s.cursor = "" // a cursor the control plane no longer honours: start the paging again
		}
		s.syncFailed()
		return
	}
	s.syncFails = 0
	s.nextSyncMS = s.nowMS() // long-poll again at once
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
	if !gjson.ValidBytes(body) {
		return errors.New("response is not valid JSON")
	}
	root := gjson.ParseBytes(body)
	version := root.Get("version")
	if version.Type != gjson.Number || version.Num < 0 {
		return errors.New("response.version: want a non-negative number")
	}
	snapshot := root.Get("snapshot").Type == gjson.True
	more := root.Get("more").Type == gjson.True
	cursor := root.Get("cursor").Str
	if more && cursor == "" {
		return errors.New("response.more without a cursor")
	}
	if !isCursor(cursor) {
		return errors.New("response.cursor: unexpected characters")
	}
	epoch := s.state.epoch
	if snapshot {
		if s.snapEpoch == 0 {
			s.snapEpoch = s.state.epoch + 1
		}
		epoch = s.snapEpoch
	}
	var firstErr error
	root.Get("upserts").ForEach(func(_, item gjson.Result) bool {
		h, rec, err := keycache.DecodeUpsert(item, epoch)
		if err != nil {
			// Fail closed for that key: a record we cannot read might be a
			// revocation. Tombstone it when we know its hash.
			if h == (keycache.Hash{}) {
				if firstErr == nil {
					firstErr = err
				}
				return true
			}
			proxywasm.LogErrorf("keygate: sync: refusing key %s…: %v", h.String()[:8], err)
			rec = keycache.Record{ID: "invalid", Status: keycache.StatusDeleted, Epoch: epoch}
		}
		if err := s.writeRecord(h, &rec); err != nil && firstErr == nil {
			firstErr = err
		}
		return true
	})
	root.Get("deletes").ForEach(func(_, item gjson.Result) bool {
		h, err := keycache.ParseHash(item.Str)
		if err != nil {
			if firstErr == nil {
				firstErr = errors.New("response.deletes: want 64-hex hashes")
			}
			return true
		}
		rec := keycache.Record{ID: "deleted", Status: keycache.StatusDeleted, Epoch: epoch}
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
		}
		s.state.version = int64(version.Num)
	}
	s.state.lastSyncMS = s.nowMS()
	var buf [stateLen]byte
	return setShared(stateKey, s.state.encode(&buf))
}

func isCursor(c string) bool {
	for i := 0; i < len(c); i++ {
		ch := c[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_' || ch == '.' || ch == '~' || ch == '%') {
			return false
		}
	}
	return len(c) <= 1024
}

func (s *syncer) writeRecord(h keycache.Hash, rec *keycache.Record) error {
	var err error
	s.recBuf, err = rec.Append(s.recBuf[:0])
	if err != nil {
		return err
	}
	var key [1 + len(h)]byte
	key[0] = recordTag
	copy(key[1:], h[:])
	s.wrote = true
	return setShared(string(key[:]), s.recBuf)
}

// drainQueue merges the workers' usage messages into the pending counts.
func (s *syncer) drainQueue(queueID uint32) {
	for {
		msg, err := proxywasm.DequeueSharedQueue(queueID)
		if err != nil {
			if !errors.Is(err, types.ErrorStatusEmpty) {
				proxywasm.LogErrorf("keygate: reading usage queue: %v", err)
			}
			return
		}
		s.merge(msg)
	}
}

// merge adds one queue message (see usage.go) to the pending counts.
func (s *syncer) merge(msg []byte) {
	for len(msg) > 0 {
		line := msg
		if nl := indexByteB(msg, '\n'); nl >= 0 {
			line, msg = msg[:nl], msg[nl+1:]
		} else {
			msg = nil
		}
		tab := lastIndexByteB(line, '\t')
		if tab <= 0 {
			continue
		}
		n, err := strconv.ParseInt(string(line[tab+1:]), 10, 64)
		if err != nil || n <= 0 {
			proxywasm.LogErrorf("keygate: malformed usage line dropped")
			continue
		}
		s.pending[string(line[:tab])] += n
	}
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
	}
	_, err := proxywasm.DispatchHttpCall(s.cfg.cluster, append(s.headers("POST", s.cfg.usagePath),
		[2]string{"content-type", "application/json"}), s.inflight, nil, s.cfg.timeoutMS, s.onUsageResponse)
	if err != nil {
		proxywasm.LogErrorf("keygate: usage call to cluster %q: %v", s.cfg.cluster, err)
		return
	}
	s.usageBusy = true
}

// buildBatch moves up to maxBatchCounts pending counts into a batch body.
func (s *syncer) buildBatch() []byte {
	b := make([]byte, 0, 128+len(s.pending)*96)
	b = append(b, `{"node":`...)
	b = appendJSONString(b, s.node)
	b = append(b, `,"boot":`...)
	b = appendJSONString(b, s.boot)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, s.seq, 10)
	b = append(b, `,"counts":[`...)
	n := 0
	for k, v := range s.pending {
		if n == maxBatchCounts {
			break
		}
		// k is "<minute>\t<outcome>\t<key id>\t<host>".
		f := splitTabs(k)
		if n > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"key_id":`...)
		b = appendJSONString(b, f[2])
		b = append(b, `,"minute":`...)
		b = append(b, f[0]...)
		b = append(b, `,"host":`...)
		b = appendJSONString(b, f[3])
		b = append(b, `,"outcome":`...)
		b = appendJSONString(b, f[1])
		b = append(b, `,"n":`...)
		b = strconv.AppendInt(b, v, 10)
		b = append(b, '}')
		delete(s.pending, k)
		n++
	}
	return append(b, "]}"...)
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
	status, body, err := calloutResult(numHeaders, bodySize)
	switch {
	case err != nil:
	case status == "200":
		s.inflight = nil
		s.usageFails = 0
		if err := s.applyShares(body); err != nil {
			proxywasm.LogErrorf("keygate: usage response: %v (keeping the previous limit shares)", err)
		}
		if len(s.pending) >= maxBatchCounts {
			s.nextFlushMS = s.nowMS() // a backlog: send the next batch at once
		}
		return
	case status == "400" || status == "413":
		// The control plane will never take this batch; resending would
		// wedge every later count behind it.
		proxywasm.LogCriticalf("keygate: usage batch %d refused for good (%s): %s", s.seq, status, snippet(body))
		s.inflight = nil
		return
	default:
		err = errors.New("control plane answered " + status)
	}
	s.usageFails++
	proxywasm.LogWarnf("keygate: usage flush: %v (batch %d kept for retry)", err, s.seq)
	s.nextFlushMS = s.nowMS() + s.backoff(s.usageFails)
}

// applyShares stores the fleet-wide limit shares of a usage response
// (docs/wire.md): one entry per listed key, the default share in the sync
// state, and clears entries of keys no longer listed.
func (s *syncer) applyShares(body []byte) error {
	if len(body) == 0 || !gjson.ValidBytes(body) {
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
		if v.Type != gjson.Number || v.Num <= 0 || v.Num > 1 || k.Str == "" || len(k.Str) > keycache.MaxStringLen {
			firstErr = errors.New("shares: want key id -> number in (0, 1]")
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

// appendJSONString appends s as a JSON string; bytes that are not valid
// UTF-8 become U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[r>>4], hexDigits[r&15])
		default:
			b = append(b, string(r)...)
		}
	}
	return append(b, '"')
}
