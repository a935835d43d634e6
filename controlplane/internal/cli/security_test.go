package cli

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

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
