package filter

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tidwall/gjson"
)

// FuzzSyncInputs feeds arbitrary bytes to everything the syncing VM parses
// from outside: sync pages, usage answers (shares), registration answers,
// problem bodies and worker queue messages. None may panic: in the module a
// panic is a trap, and Envoy never reloads a failed sync service
// (e2e/RATIONALE.md). The stack depth a native run tolerates is larger than
// TinyGo's; TestDeepJSONRefused covers depth on the compiled module.
//
//	go test -run '^$' -fuzz FuzzSyncInputs -fuzztime 30s ./filter
func FuzzSyncInputs(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "sync_*.json"))
	for _, name := range files {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"accepted":1,"shares":{"key_a":0.5},"default_share":0.25}`))
	f.Add([]byte(`{"instance":{"node":"node-a","boot":"0123456789abcdef"},"token":"kgi_` + strings.Repeat("a", 43) + `"}`))
	f.Add([]byte("1640995200\tallowed\tkey_a\tapi.example.com\t5\n1640995200\tunknown_key\t\t\t2\n"))
	f.Add([]byte(`{"error":"seq_out_of_range"}`))
	f.Add([]byte(strings.Repeat("[", 40)))

	opt := proxytest.NewEmulatorOption().WithVMContext(NewVM(fakeClock())).WithPluginConfiguration([]byte(syncTestConfig))
	_, reset := proxytest.NewHostEmulator(opt)
	defer reset()
	cfg, err := parseSyncConfig([]byte(syncTestConfig))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s := newSyncer(cfg, fakeClock(), newLease(hostStore{}, 1, cfg.leaseMS, true))
		s.node, s.boot = "node-a", "0123456789abcdef"
		_ = s.applyPage(b)
		s.cursor = "c2" // a later page of a snapshot
		_ = s.applyPage(b)
		_ = s.applyShares(b)
		_ = s.takeToken(b)
		_ = problemCode(b)
		s.merge(b)
		if len(s.pending) > 0 {
			s.seq++
			if batch := s.buildBatch(); !jsonDepthOK(batch) || !gjson.ValidBytes(batch) {
				t.Fatalf("merged lines make a batch that is not valid JSON: %s", batch)
			}
		}
	})
}
