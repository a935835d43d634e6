package cli

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/internal/testkit"
)

// fleetDenied reads the fleet's refused requests per day over the last
// 200 days through the API.
func fleetDenied(t *testing.T, base string) map[time.Time]int64 {
	t.Helper()
	from := time.Now().Add(-200 * 24 * time.Hour).Unix()
	req, _ := http.NewRequest("GET", base+"/v1/usage/series?step=day&from="+itoa(from), nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var u struct {
		Buckets []struct {
			Start  time.Time `json:"start"`
			Denied int64     `json:"denied"`
		} `json:"buckets"`
	}
	if err := json.Unmarshal(body, &u); err != nil {
		t.Fatal(err)
	}
	out := map[time.Time]int64{}
	for _, b := range u.Buckets {
		if b.Denied > 0 {
			out[b.Start] = b.Denied
		}
	}
	return out
}

// serve deletes usage past --usage-retention when it starts (and hourly).
func TestServePrunesUsage(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "keygate.db")
	st, err := store.OpenSQLite(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(24 * time.Hour)
	old, recent := now.Add(-100*24*time.Hour), now.Add(-10*24*time.Hour)
	if _, err := st.IngestUsage(context.Background(), &store.UsageBatch{Node: "n", Boot: "b", Seq: 1, Counts: []store.UsageCount{
		{Minute: old, Host: "x", Outcome: "missing_key", N: 5},
		{Minute: recent, Host: "x", Outcome: "missing_key", N: 7},
	}}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	env := map[string]string{"KEYGATE_STORE": "sqlite:" + dbPath, "KEYGATE_ADMIN_TOKEN": adminToken,
		"KEYGATE_FILTER_TOKEN": filterToken, "KEYGATE_USAGE_RETENTION": "30d"}
	var stderr testkit.Log
	base, stop := serveOnce(t, env, &stderr)
	defer stop()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := fleetDenied(t, base)
		if got[old] == 0 && got[recent] == 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usage not pruned: %v\n%s", got, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Credentials from the environment must be generated ones or carry about
// 128 bits; the error names the variable and never shows the value.
func TestServeWeakCredentials(t *testing.T) {
	dir := t.TempDir()
	genAdmin, err := apikey.NewKey("kgadmin", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var raw [16]byte
	rand.Read(raw[:])
	hex16, b64 := hex.EncodeToString(raw[:]), base64.StdEncoding.EncodeToString(raw[:])
	for i, v := range []string{"Abcdef1234567890", "averyveryverylongpassword", hex16[:30], "correct horse battery staple", "tökentökentökentökentökentöken"} {
		for _, name := range []string{"KEYGATE_ADMIN_TOKEN", "KEYGATE_FILTER_TOKEN", "KEYGATE_ADMIN_TOKEN_PREVIOUS", "KEYGATE_FILTER_TOKEN_PREVIOUS"} {
			env := map[string]string{"KEYGATE_STORE": "sqlite:" + filepath.Join(dir, fmt.Sprintf("%d.db", i)), name: v}
			code, out, errs := cmd(t, env, "serve", "--listen", "127.0.0.1:0")
			if code != 2 || !strings.Contains(errs, name+" ") || strings.Contains(errs+out, v) {
				t.Errorf("%s=%q: exit %d, stderr %s", name, v, code, errs)
			}
		}
	}
	// Generated credentials and random ones of 128 bits are taken.
	for _, c := range []struct{ admin, filter string }{
		{genAdmin, hex16},
		{b64, strings.ToUpper(hex16)},
	} {
		env := map[string]string{"KEYGATE_STORE": "sqlite:" + filepath.Join(dir, "ok.db"),
			"KEYGATE_ADMIN_TOKEN": c.admin, "KEYGATE_FILTER_TOKEN": c.filter}
		var stderr testkit.Log
		base, stop := serveOnce(t, env, &stderr)
		if get(t, base+"/v1/keys", c.admin) != 200 || get(t, base+"/v1/sync", c.filter) != 200 {
			t.Fatalf("credentials refused: %s", stderr.String())
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
}
