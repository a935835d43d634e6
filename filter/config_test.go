package filter

import (
	"strings"
	"testing"

	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm/types"
)

func TestConfigValidation(t *testing.T) {
	cases := []struct {
		config string
		field  string // "" means the configuration is valid
	}{
		{``, ""},
		{`{}`, ""},
		{testConfig, ""},
		{syncTestConfig, ""},
		{`{"failure_mode":"open","anonymous":"allow","max_staleness_ms":5000,"key_prefix":"live","strip_credential":false,
		   "identity_headers":{"key_id":"","owner":"x-owner"},"ratelimit_headers":false,"flush_period_ms":500}`, ""},
		{`not json`, "(root)"},
		{`[1]`, "(root)"},
		{`{"role":"both"}`, "role"},
		{`{"role":7}`, "role"},
		{`{"key_prefix":"AK"}`, "key_prefix"},
		{`{"key_prefix":"waytoolongprefix17"}`, "key_prefix"},
		{`{"strip_credential":"yes"}`, "strip_credential"},
		{`{"unknown":1}`, "unknown"},
		{`{"key_sources":[]}`, "key_sources"},
		{`{"key_sources":[{"type":"form","name":"k"}]}`, "key_sources[0].type"},
		{`{"key_sources":[{"type":"cookie","name":"Api-Key_1"}]}`, ""},
		{`{"key_sources":[{"type":"cookie"}]}`, "key_sources[0].name"},
		{`{"key_sources":[{"type":"cookie","name":"a;b"}]}`, "key_sources[0].name"},
		{`{"key_sources":[{"type":"cookie","name":"a b"}]}`, "key_sources[0].name"},
		{`{"key_sources":[{"type":"header"}]}`, "key_sources[0].name"},
		{`{"key_sources":[{"type":"header","name":"X-Api-Key"}]}`, "key_sources[0].name"},
		{`{"key_sources":[{"type":"header","name":"authorization"}]}`, "key_sources[0].name"},
		{`{"key_sources":[{"type":"bearer","name":"x"}]}`, "key_sources[0].name"},
		{`{"key_sources":[{"type":"query","name":"k","extra":1}]}`, "key_sources[0].extra"},
		{`{"identity_headers":{"key":"x"}}`, "identity_headers.key"},
		{`{"identity_headers":{"key_id":"Bad Header"}}`, "identity_headers.key_id"},
		{`{"routes":{}}`, "routes"},
		{`{"routes":[{"scopes":["a"]}]}`, "routes[0]"},
		{`{"routes":[{"path_prefix":"/a","path_exact":"/b"}]}`, "routes[0]"},
		{`{"routes":[{"path_prefix":"a"}]}`, "routes[0]"},
		{`{"routes":[{"path_prefix":"/a?x=1"}]}`, "routes[0]"},
		{`{"routes":[{"path_prefix":"//a"}]}`, "routes[0]"},
		{`{"routes":[{"path_exact":"/a/../b"}]}`, "routes[0]"},
		{`{"routes":[{"path_prefix":"/%61"}]}`, "routes[0]"},
		{`{"routes":[{"path_prefix":"/.well-known/"}]}`, ""},
		{`{"case_sensitive_paths":"yes"}`, "case_sensitive_paths"},
		{`{"routes":[{"path_prefix":"/a","methods":["get"]}]}`, "routes[0].methods"},
		{`{"routes":[{"path_prefix":"/a","cost":0}]}`, "routes[0].cost"},
		{`{"routes":[{"path_prefix":"/a","cost":1.5}]}`, "routes[0].cost"},
		{`{"routes":[{"path_prefix":"/a","scopes":[""]}]}`, "routes[0].scopes"},
		{`{"routes":[{"path_prefix":"/a","scopes":["a b:c"]}]}`, "routes[0].scopes"},
		{`{"routes":[{"path_prefix":"/a","scopes":["billing:write"]}]}`, ""},
		{`{"routes":[{"path_prefix":"/a","limits":{"key":1,"burst":2,"sustained-2":1000000}}]}`, ""},
		{`{"routes":[{"path_prefix":"/a","limits":{}}]}`, ""},
		{`{"client_limits":{"trusted_hops":1,"anonymous":{"limit":60,"period_ms":60000},"bad_keys":{"limit":10,"period_ms":60000,"burst":0}}}`, ""},
		{`{"client_limits":{}}`, "client_limits"},
		{`{"client_limits":{"trusted_hops":17,"anonymous":{"limit":1,"period_ms":1000}}}`, "client_limits.trusted_hops"},
		{`{"client_limits":{"anonymous":{"limit":1}}}`, "client_limits.anonymous"},
		{`{"client_limits":{"bad_keys":{"limit":0,"period_ms":1000}}}`, "client_limits.bad_keys.limit"},
		{`{"client_limits":{"bad_keys":{"limit":1,"period_ms":86400000,"burst":1000000000}}}`, "client_limits.bad_keys.burst"},
		{`{"client_limits":{"bad_keys":{"limit":1,"period_ms":1000,"x":1}}}`, "client_limits.bad_keys.x"},
		{`{"routes":[{"path_prefix":"/a","scopes":["read"],"scopes_any":["billing:read","billing:admin"]}]}`, ""},
		{`{"routes":[{"path_prefix":"/a","scopes_any":["Billing"]}]}`, "routes[0].scopes_any"},
		{`{"routes":[{"path_prefix":"/a","scopes_any":"billing"}]}`, "routes[0].scopes_any"},
		{`{"routes":[{"path_prefix":"/a","limits":[]}]}`, "routes[0].limits"},
		{`{"routes":[{"path_prefix":"/a","limits":{"Burst":1}}]}`, "routes[0].limits"},
		{`{"routes":[{"path_prefix":"/a","limits":{"burst":0}}]}`, "routes[0].limits.burst"},
		{`{"routes":[{"path_prefix":"/a","limits":{"burst":1.5}}]}`, "routes[0].limits.burst"},
		{`{"routes":[{"path_prefix":"/a","limits":{"burst":1,"burst":2}}]}`, "routes[0].limits.burst"},
		{`{"routes":[{"path_prefix":"/a","cost":2,"limits":{"burst":1}}]}`, "routes[0].limits"},
		{`{"routes":[{"path_prefix":"/a","rate_limit":false,"limits":{"burst":1}}]}`, "routes[0].limits"},
		{`{"failure_mode":"maybe"}`, "failure_mode"},
		{`{"max_staleness_ms":10}`, "max_staleness_ms"},
		{`{"max_staleness_ms":1e300}`, "max_staleness_ms"},
		{`{"anonymous":true}`, "anonymous"},
		{`{"flush_period_ms":-1}`, "flush_period_ms"},
		{`{"vm_id":""}`, ""},
		// Filter-only mode: the sync settings in the filter's "sync".
		{filterOnlyConfig, ""},
		{`{"sync":{"control_plane":{"cluster":"c","authority":"a","credential":"s"}}}`, ""},
		{`{"sync":{}}`, "sync.control_plane"},
		{`{"sync":[]}`, "sync"},
		{`{"sync":{"control_plane":{"authority":"a","credential":"s"}}}`, "sync.control_plane.cluster"},
		{`{"sync":{"role":"sync","control_plane":{"cluster":"c","authority":"a","credential":"s"}}}`, "sync.role"},
		{`{"sync":{"max_staleness_ms":60000,"control_plane":{"cluster":"c","authority":"a","credential":"s"}}}`, "sync.max_staleness_ms"},
		{`{"sync":{"lease_ms":499,"control_plane":{"cluster":"c","authority":"a","credential":"s"}}}`, "sync.lease_ms"},
		{`{"sync":{"lease_ms":60001,"control_plane":{"cluster":"c","authority":"a","credential":"s"}}}`, "sync.lease_ms"},
		// The sync service is a lease candidate too.
		{`{"role":"sync","lease_ms":1000,"control_plane":{"cluster":"c","authority":"a","credential":"s"}}`, ""},
		{`{"role":"sync","lease_ms":499,"control_plane":{"cluster":"c","authority":"a","credential":"s"}}`, "lease_ms"},
		{`{"role":"sync","lease_ms":"3000","control_plane":{"cluster":"c","authority":"a","credential":"s"}}`, "lease_ms"},
		// The staleness rule with the takeover: 20000 + 2000 + 2000 + 5000
		// + lease_ms 3000 + 200 = 32200.
		{`{"max_staleness_ms":32200,"sync":{"control_plane":{"cluster":"c","authority":"a","credential":"s"}}}`, ""},
		{`{"max_staleness_ms":32199,"sync":{"control_plane":{"cluster":"c","authority":"a","credential":"s"}}}`, "max_staleness_ms"},
		{`{"role":"sync"}`, "control_plane"},
		{`{"role":"sync","control_plane":{"cluster":"c","authority":"a","credential":"s","bogus":1}}`, "control_plane.bogus"},
		{`{"role":"sync","control_plane":{"authority":"a","credential":"s"}}`, "control_plane.cluster"},
		{`{"role":"sync","control_plane":{"cluster":"c","authority":"a"}}`, "control_plane.credential"},
		{`{"role":"sync","control_plane":{"cluster":"c","authority":"a","credential":"s p"}}`, "control_plane.credential"},
		{`{"role":"sync","control_plane":{"cluster":"c","authority":"a","credential":"s","sync_path":"v1"}}`, "control_plane"},
		{`{"role":"sync","control_plane":{"cluster":"c","authority":"a","credential":"s","long_poll_s":61}}`, "control_plane.long_poll_s"},
		{`{"role":"sync","control_plane":{"cluster":"c","authority":"a","credential":"s"},"routes":[]}`, "routes"},
		// The staleness rule: long_poll_s*1000 + 2000 + max_backoff_ms +
		// timeout_ms + lease_ms + 200 must fit in max_staleness_ms.
		{`{"role":"sync","max_staleness_ms":32200,"control_plane":{"cluster":"c","authority":"a","credential":"s"}}`, ""},
		{`{"role":"sync","max_staleness_ms":32199,"control_plane":{"cluster":"c","authority":"a","credential":"s"}}`, "max_staleness_ms"},
		{`{"role":"sync","max_staleness_ms":3700,"max_backoff_ms":500,"retry_ms":50,"lease_ms":500,"control_plane":{"cluster":"c","authority":"a","credential":"s","long_poll_s":0,"timeout_ms":500}}`, ""},
		{`{"role":"sync","max_staleness_ms":3699,"max_backoff_ms":500,"retry_ms":50,"lease_ms":500,"control_plane":{"cluster":"c","authority":"a","credential":"s","long_poll_s":0,"timeout_ms":500}}`, "max_staleness_ms"},
		{`{"role":"sync","control_plane":{"cluster":"c","authority":"a","credential":"s","timeout_ms":40000}}`, "max_staleness_ms"},
		{`{"role":"sync","max_backoff_ms":40000,"control_plane":{"cluster":"c","authority":"a","credential":"s"}}`, "max_staleness_ms"},
		{`{"role":"sync","max_backoff_ms":500,"retry_ms":1000,"control_plane":{"cluster":"c","authority":"a","credential":"s"}}`, "retry_ms"},
		{`{"role":"sync","max_backoff_ms":5,"control_plane":{"cluster":"c","authority":"a","credential":"s"}}`, "max_backoff_ms"},
		{`{"role":"sync","node_id":"a\u0001b","control_plane":{"cluster":"c","authority":"a","credential":"s"}}`, "node_id"},
		{`{"role":"sync","control_plane":{"cluster":"c","authority":"a","credential":"s","register_path":"x"}}`, "control_plane"},
		{strings.Repeat("[", 5000) + strings.Repeat("]", 5000), "(root)"},
	}
	runBoth(t, func(t *testing.T, vm func() types.VMContext) {
		for _, c := range cases {
			opt := proxytest.NewEmulatorOption().WithVMContext(vm()).WithPluginConfiguration([]byte(c.config))
			host, reset := proxytest.NewHostEmulator(opt)
			status := host.StartPlugin()
			logs := strings.Join(host.GetCriticalLogs(), "\n")
			reset()
			if c.field == "" {
				if status != types.OnPluginStartStatusOK {
					t.Errorf("valid config %s refused: %s", c.config, logs)
				}
				continue
			}
			if status == types.OnPluginStartStatusOK {
				t.Errorf("config %s accepted, want an error on %s", c.config, c.field)
				continue
			}
			if !strings.Contains(logs, "config: "+c.field+":") {
				t.Errorf("config %s: log %q does not name %s", c.config, logs, c.field)
			}
			if strings.Contains(logs, `"s p"`) || strings.Contains(logs, "s p") {
				t.Errorf("credential echoed in log: %s", logs)
			}
		}
	})
}

// The scan skips headers on their name's length alone: every name it reads
// must pass, long names included.
func TestScanLenCoversEveryName(t *testing.T) {
	long := strings.Repeat("x", 70)
	cfg, err := parseFilterConfig([]byte(`{"key_sources":[{"type":"bearer"},{"type":"header","name":"` + long + `"}],
	  "identity_headers":{"key_id":"x-id","owner":"x-the-owner"}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{":authority", ":path", ":method", "authorization", long, "x-id", "x-the-owner", strings.Repeat("y", 80)} {
		if !cfg.scanLen(len(name)) {
			t.Errorf("header %q skipped", name)
		}
	}
	if cfg.scanLen(len("accept")) || cfg.scanLen(len("x-forwarded-proto")) {
		t.Error("lengths no name has are scanned")
	}
}
