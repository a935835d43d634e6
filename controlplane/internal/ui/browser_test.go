package ui_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/controlplane/internal/api"
	"github.com/keygate/keygate/controlplane/internal/store"
	"github.com/keygate/keygate/controlplane/internal/ui"
)

const (
	adminToken  = "kgadmin_browser-test-admin-credential"
	filterToken = "kgfilter_browser-test-filter-credential"
)

// chromiumPath finds the browser: $KEYGATE_CHROMIUM, else Debian's chromium.
func chromiumPath(t *testing.T) string {
	if p := os.Getenv("KEYGATE_CHROMIUM"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("KEYGATE_CHROMIUM=%s is not runnable (%v): install chromium with controlplane/internal/ui/setup.sh", p, err)
		}
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed: run controlplane/internal/ui/setup.sh (or set KEYGATE_CHROMIUM)")
	return ""
}

// outDir is where screenshots go: $KEYGATE_TEST_OUT, else a temp dir.
func outDir(t *testing.T) string {
	dir := os.Getenv("KEYGATE_TEST_OUT")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// controlPlane runs the real API and dashboard on a real SQLite store.
func controlPlane(t *testing.T) (*httptest.Server, store.Store) {
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "keygate.db"))
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	srv, err := api.New(api.Config{Store: st,
		AdminCredential:  api.HashCredential(adminToken),
		FilterCredential: api.HashCredential(filterToken)})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(ui.Mount(srv))
	t.Cleanup(func() {
		srv.BeginShutdown()
		hs.Close()
	})
	return hs, st
}

type consoleKey struct{}

// console collects what the page writes to its console.
type console struct {
	mu     sync.Mutex
	errors []string
}

func (c *console) watch(ctx context.Context) {
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			// Failed HTTP requests (the login with a wrong credential, the
			// 404 of an optional endpoint) are logged by the network stack;
			// they are not JavaScript errors and the test checks what the
			// page shows for them instead.
			if m.IsException() || m.Type == chromedp.ConsoleError && m.Source != "network" {
				c.mu.Lock()
				c.errors = append(c.errors, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
				c.mu.Unlock()
			}
		}
	}()
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.errors, "\n")
}

func (c *console) check(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.errors {
		t.Errorf("browser console: %s", e)
	}
}

func apiCall(t *testing.T, base, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, base+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out
}

// clearInput empties a text field, as selecting all and deleting would.
// (chromedp.Clear resets the value attribute, which a field the user has
// typed in ignores.)
func clearInput(id string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](fmt.Sprintf(`(() => { const el = document.getElementById(%q);
			el.value = ""; el.dispatchEvent(new Event("input", {bubbles: true})); return true })()`, id))(ctx, t)
		return err
	})
}

// commas formats n as the page does (en-US thousands separators).
func commas(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// run runs browser steps and fails the test on the first error, with what
// the page showed.
func run(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, steps...); err != nil {
		t.Fatalf("%s: %v\npage: %s", what, err, pageState(ctx))
	}
}

// pageState describes the page for a failure message.
func pageState(ctx context.Context) string {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(sctx, chromedp.Evaluate[string](`JSON.stringify({url: location.pathname + location.hash,
		banner: document.getElementById("banner")?.textContent,
		dialogError: document.getElementById("dialog-error")?.textContent,
		view: document.getElementById("main")?.innerText.slice(0, 600),
		dialog: document.getElementById("dialog")?.open ? document.getElementById("dialog").innerText.slice(0, 300) : null})`))
	if err != nil {
		s = "(unreadable: " + err.Error() + ")"
	}
	if c, ok := ctx.Value(consoleKey{}).(*console); ok {
		s += "\nconsole errors:\n" + c.String()
	}
	return s
}

func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(sctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return eval[string](t, ctx, fmt.Sprintf(`document.querySelector(%q)?.textContent ?? "<missing>"`, sel))
}

func screenshot(t *testing.T, ctx context.Context, dir, name string, full bool) {
	t.Helper()
	a := chromedp.CaptureScreenshot()
	if full {
		a = chromedp.FullScreenshot(100)
	}
	img, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), img, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDashboardInChromium drives the dashboard in headless Chromium against
// the real control plane: sign-in, key creation, usage through the filter
// endpoint, the rendered totals and chart data, revocation from the page,
// phone width, and no console errors.
func TestDashboardInChromium(t *testing.T) {
	if ui.MissingChartLibrary() {
		t.Fatal("the chart library is not embedded: run controlplane/internal/ui/setup.sh, then test again")
	}
	browser := chromiumPath(t)
	hs, st := controlPlane(t)
	out := outDir(t)

	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(browser),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	cons := &console{}
	cons.watch(ctx)
	ctx = context.WithValue(ctx, consoleKey{}, cons)

	// Sign in: a wrong credential is refused, the right one kept in session
	// storage only.
	run(t, ctx, "open the dashboard",
		chromedp.EmulateViewport(1280, 800),
		chromedp.Navigate(hs.URL+"/ui/"),
		chromedp.WaitVisible(chromedp.ID("login-credential")),
		chromedp.SendKeys(chromedp.ID("login-credential"), "not-the-credential"),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.ID("login-error")))
	if got := text(t, ctx, "#login-error"); !strings.Contains(got, "not the admin credential") {
		t.Errorf("login error = %q", got)
	}
	run(t, ctx, "sign in",
		clearInput("login-credential"),
		chromedp.SendKeys(chromedp.ID("login-credential"), adminToken),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.ID("keys-table")))
	where := eval[map[string]any](t, ctx, `({href: location.href, session: sessionStorage.getItem("keygate.admin"),
		local: localStorage.length, cookie: document.cookie})`)
	if strings.Contains(where["href"].(string), adminToken) || where["session"] != adminToken ||
		where["local"] != 0.0 || where["cookie"] != "" {
		t.Errorf("credential storage after sign-in: %v", where)
	}

	// Create a key through the form; it is shown once.
	run(t, ctx, "create a key",
		chromedp.Click(chromedp.ID("new-key-button")),
		chromedp.WaitVisible(chromedp.ID("kf-name")),
		chromedp.SendKeys(chromedp.ID("kf-name"), "checkout service"),
		chromedp.SendKeys(chromedp.ID("kf-owner"), "acme"),
		chromedp.SendKeys(chromedp.ID("kf-hosts"), "api.example.com, *.shop.example.com"),
		chromedp.SendKeys(chromedp.ID("kf-scopes"), "read write"),
		chromedp.SendKeys(chromedp.ID("kf-rate-limit"), "100"),
		chromedp.Click(chromedp.ID("create-key")),
		chromedp.WaitVisible(chromedp.ID("new-key")))
	secret := eval[string](t, ctx, `document.getElementById("new-key").value`)
	keyID := strings.TrimSpace(text(t, ctx, "#key-id"))
	if err := apikey.CheckKey(secret, apikey.DefaultPrefix); err != nil {
		t.Fatalf("the shown key %q is not a key: %v", secret, err)
	}
	k, err := st.GetKey(context.Background(), keyID)
	if err != nil {
		t.Fatalf("the created key %q is not stored: %v", keyID, err)
	}
	if k.Hash != apikey.HashKey(secret) || k.Owner != "acme" || k.Name != "checkout service" ||
		strings.Join(k.Hosts, ",") != "api.example.com,*.shop.example.com" || k.Rate == nil || k.Rate.Limit != 100 ||
		k.Rate.Burst != 99 { // burst left empty: the whole limit at once

		t.Fatalf("stored key does not match the form: %+v", k)
	}
	run(t, ctx, "close the key dialog",
		chromedp.Click(chromedp.ID("secret-done")),
		chromedp.WaitNotVisible(chromedp.ID("dialog")))
	if n := eval[int](t, ctx, `document.body.innerHTML.split(`+fmt.Sprintf("%q", secret)+`).length - 1`); n != 0 {
		t.Errorf("the key is still in the page after the dialog closed (%d times)", n)
	}

	// A second key, created through the API, with fewer requests but more
	// refusals: the two rankings of the traffic page differ.
	// It is on a plan: the dashboard names the plan and the overrides.
	if code, p := apiCall(t, hs.URL, "POST", "/v1/plans", adminToken, map[string]any{
		"id": "team", "name": "Team", "rate": map[string]any{"limit": 50, "period": "second"}}); code != http.StatusCreated {
		t.Fatalf("create the plan: %d %v", code, p)
	}
	code, other := apiCall(t, hs.URL, "POST", "/v1/keys", adminToken, map[string]any{
		"name": "search backend", "owner": "globex", "hosts": []string{"search.example.com"}, "scopes": []string{"read"},
		"plan_id": "team"})
	if code != http.StatusCreated {
		t.Fatalf("create the second key: %d %v", code, other)
	}
	otherID := other["id"].(string)

	// Usage through the real filter endpoint, sent twice: merged once.
	now := time.Now().UTC().Truncate(time.Minute)
	var counts []map[string]any
	count := func(id string, ago int, host, outcome string, n int) {
		counts = append(counts, map[string]any{"key_id": id, "minute": now.Add(-time.Duration(ago) * time.Minute).Unix(),
			"host": host, "outcome": outcome, "n": n})
	}
	allowed := 0
	for ago := 1; ago <= 45; ago++ {
		n := 4 + ago*7%9
		allowed += n
		count(keyID, ago, "api.example.com", "allowed", n)
	}
	for _, ago := range []int{5, 6, 20} {
		count(keyID, ago, "api.example.com", "rate_limited", 2)
	}
	count(keyID, 12, "other.example.com", "host_not_allowed", 1)
	count(otherID, 3, "search.example.com", "allowed", 10)
	count(otherID, 4, "search.example.com", "insufficient_scope", 8)
	count("", 2, "api.example.com", "unknown_key", 40)
	count(keyID, 90, "api.example.com", "allowed", 1000) // outside the last hour
	batch := map[string]any{"node": "envoy-a", "boot": "b7f3c2d1e0a94c5f", "seq": 1, "counts": counts}
	code, reg := apiCall(t, hs.URL, "POST", "/v1/nodes/register", filterToken, map[string]string{"node": "envoy-a", "boot": "b7f3c2d1e0a94c5f"})
	instanceToken, _ := reg["token"].(string)
	if code != http.StatusCreated || instanceToken == "" {
		t.Fatalf("register: %d %v", code, reg)
	}
	for i, wantDup := range []bool{false, true} {
		code, res := apiCall(t, hs.URL, "POST", "/v1/usage", instanceToken, batch)
		if code != http.StatusOK || res["duplicate"] != wantDup {
			t.Fatalf("usage post %d: %d %v", i, code, res)
		}
	}

	// Open the key page by its address (the session survives the reload);
	// the graph for the last hour shows exactly those counts.
	if got := eval[string](t, ctx, `location.hash`); got != "#/keys/"+keyID {
		t.Fatalf("after creating the key the page is at %q", got)
	}
	run(t, ctx, "reload the key page",
		chromedp.Reload(),
		chromedp.WaitVisible(chromedp.ID("key-series")))
	eval[bool](t, ctx, `(() => { const s = document.getElementById("range"); s.value = "hour";
		s.dispatchEvent(new Event("change")); return true })()`)
	want := map[string]string{
		"#total-requests": fmt.Sprint(allowed + 7), "#total-allowed": fmt.Sprint(allowed), "#total-denied": "7",
		`[data-outcome="rate_limited"]`: "6", `[data-outcome="host_not_allowed"]`: "1",
	}
	run(t, ctx, "wait for the totals",
		chromedp.Poll[chromedp.Void](fmt.Sprintf(`document.getElementById("total-requests")?.textContent === %q`, want["#total-requests"]),
			chromedp.WithPollingTimeout(10*time.Second)))
	for sel, v := range want {
		if got := text(t, ctx, sel); got != v {
			t.Errorf("%s = %q, want %q", sel, got, v)
		}
	}
	chart := eval[map[string]any](t, ctx, `(() => {
		const c = Chart.getChart(document.getElementById("key-series"));
		const sums = {};
		for (const d of c.data.datasets) sums[d.label] = d.data.reduce((a, b) => a + b, 0);
		return {sums, buckets: c.data.labels.length, width: c.width, height: c.height, stacked: c.options.scales.y.stacked};
	})()`)
	sums, _ := chart["sums"].(map[string]any)
	if got, want := fmt.Sprint(sums), fmt.Sprintf("map[allowed:%d host_not_allowed:1 rate_limited:6]", allowed); got != want {
		t.Errorf("chart datasets sum to %s, want %s", got, want)
	}
	if b := chart["buckets"].(float64); b < 60 || b > 61 {
		t.Errorf("a last-hour chart by minute has %v buckets", b)
	}
	if chart["width"].(float64) < 300 || chart["height"].(float64) < 150 || chart["stacked"] != true {
		t.Errorf("chart not drawn as a stacked chart of a sensible size: %v", chart)
	}
	hosts := eval[[]string](t, ctx, `[...document.querySelectorAll("#hosts-table tbody tr")].map(r => r.innerText.replace(/\s+/g, " ").trim())`)
	if got, want := strings.Join(hosts, "|"), fmt.Sprintf("api.example.com %d 6|other.example.com 0 1", allowed); got != want {
		t.Errorf("per-host table = %q, want %q", got, want)
	}
	if n := eval[int](t, ctx, `Chart.getChart(document.getElementById("key-hosts")).data.labels.length`); n != 2 {
		t.Errorf("per-host chart has %d bars, want 2", n)
	}
	if got := text(t, ctx, "#key-details"); !strings.Contains(got, "Last 24 h"+commas(allowed+7+1000)+" requests") {
		t.Errorf("key details do not show the last 24 hours' requests: %q", got)
	}
	screenshot(t, ctx, out, "key-1280x800.png", false)
	screenshot(t, ctx, out, "key-1280-full.png", true)

	// Phone width: no horizontal scrolling, the chart still drawn.
	run(t, ctx, "phone viewport", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile),
		chromedp.Sleep(200*time.Millisecond))
	phone := eval[map[string]float64](t, ctx, `({scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
		chart: Chart.getChart(document.getElementById("key-series")).width})`)
	if phone["scroll"] > phone["inner"] || phone["chart"] < 200 || phone["chart"] > 390 {
		t.Errorf("at phone width: %v", phone)
	}
	screenshot(t, ctx, out, "key-390x844.png", false)
	run(t, ctx, "desktop viewport", chromedp.EmulateViewport(1280, 800))

	// A custom range of the last two hours takes in the older minute too.
	eval[bool](t, ctx, `(() => {
		const p = (n) => String(n).padStart(2, "0");
		const f = (d) => d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + "T" + p(d.getHours()) + ":" + p(d.getMinutes());
		const s = document.getElementById("range");
		s.value = "custom";
		s.dispatchEvent(new Event("change"));
		document.getElementById("range-from").value = f(new Date(Date.now() - 2 * 3600e3));
		document.getElementById("range-to").value = f(new Date(Date.now() + 60e3));
		document.querySelector("form.range").requestSubmit();
		return true })()`)
	run(t, ctx, "custom range totals",
		chromedp.Poll[chromedp.Void](fmt.Sprintf(`document.getElementById("total-requests")?.textContent === %q`, commas(allowed+7+1000)),
			chromedp.WithPollingTimeout(10*time.Second)))
	if b := eval[int](t, ctx, `Chart.getChart(document.getElementById("key-series")).data.labels.length`); b < 120 || b > 123 {
		t.Errorf("a two-hour custom range has %d buckets, want one per minute", b)
	}
	eval[bool](t, ctx, `(() => { const s = document.getElementById("range"); s.value = "hour";
		s.dispatchEvent(new Event("change")); return true })()`)
	run(t, ctx, "back to the last hour",
		chromedp.Poll[chromedp.Void](fmt.Sprintf(`document.getElementById("total-requests")?.textContent === %q`, want["#total-requests"]),
			chromedp.WithPollingTimeout(10*time.Second)))

	// The traffic page ranks the keys by traffic and by refusals.
	run(t, ctx, "traffic page",
		chromedp.Click(chromedp.CSS(`a[data-nav="fleet"]`)),
		chromedp.WaitVisible(chromedp.ID("top-traffic-chart")))
	rows := func(sel string) string {
		return strings.Join(eval[[]string](t, ctx, `[...document.querySelectorAll("`+sel+` tbody tr")].map(r => r.innerText.replace(/\s+/g, " ").trim())`), "|")
	}
	first := fmt.Sprintf("checkout service %s %s 7", keyID, commas(allowed))
	second := fmt.Sprintf("search backend %s 10 8", otherID)
	if got := rows("#top-traffic"); got != first+"|"+second {
		t.Errorf("top keys by traffic = %q", got)
	}
	if got := rows("#top-refusals"); got != second+"|"+first {
		t.Errorf("top keys by refusals = %q", got)
	}
	// The fleet series: every key's requests and the unidentified ones
	// (40 unknown_key), as the API serves them.
	if eval[bool](t, ctx, `!!document.getElementById("fleet-series-missing")`) {
		t.Fatal("the traffic page says the fleet series is not served")
	}
	run(t, ctx, "fleet totals", chromedp.Poll[chromedp.Void](fmt.Sprintf(`document.querySelector("#fleet-totals #total-requests")?.textContent === %q`, commas(allowed+10+7+8+40)),
		chromedp.WithPollingTimeout(10*time.Second)))
	fleet := eval[map[string]any](t, ctx, `(() => { const sums = {};
		for (const d of Chart.getChart(document.getElementById("fleet-series")).data.datasets) sums[d.label] = d.data.reduce((a, b) => a + b, 0);
		return sums })()`)
	if fmt.Sprint(fleet) != fmt.Sprintf("map[allowed:%d host_not_allowed:1 insufficient_scope:8 rate_limited:6 unknown_key:40]", allowed+10) {
		t.Errorf("fleet chart datasets sum to %v", fleet)
	}
	screenshot(t, ctx, out, "traffic-1280x800.png", false)

	// Edit, disable and enable from the key page.
	run(t, ctx, "edit",
		chromedp.Navigate(hs.URL+"/ui/#/keys/"+keyID),
		chromedp.WaitVisible(chromedp.ID("edit-key")),
		chromedp.Click(chromedp.ID("edit-key")),
		chromedp.WaitVisible(chromedp.ID("kf-scopes")),
		clearInput("kf-scopes"),
		chromedp.SendKeys(chromedp.ID("kf-scopes"), "read"),
		chromedp.SendKeys(chromedp.ID("kf-quota-limit"), "5000"),
		chromedp.Click(chromedp.ID("save-key")),
		chromedp.WaitNotVisible(chromedp.ID("dialog")),
		chromedp.Poll[chromedp.Void](`document.getElementById("key-details")?.textContent.includes("5,000/day")`, chromedp.WithPollingTimeout(10*time.Second)))
	if k, err := st.GetKey(context.Background(), keyID); err != nil || strings.Join(k.Scopes, " ") != "read" ||
		k.Quota == nil || k.Quota.Limit != 5000 || k.Quota.Period != "day" || strings.Join(k.Hosts, ",") != "api.example.com,*.shop.example.com" {
		t.Errorf("after the edit the key is %+v (%v)", k, err)
	}
	for _, step := range []struct{ button, confirm, status string }{
		{"disable-key", "confirm-disable", "disabled"}, {"enable-key", "confirm-enable", "active"},
	} {
		run(t, ctx, step.button,
			chromedp.Click(chromedp.ID(step.button)),
			chromedp.WaitVisible(chromedp.ID(step.confirm)),
			chromedp.Click(chromedp.ID(step.confirm)),
			chromedp.WaitVisible(chromedp.CSS(`.page-head .badge[data-status="`+step.status+`"]`)))
		if k, err := st.GetKey(context.Background(), keyID); err != nil || k.Status != step.status {
			t.Errorf("after %s the stored key is %+v (%v)", step.button, k, err)
		}
	}

	// Rotate with a grace period: the new key is shown once, the old one
	// expires at the end of the grace.
	run(t, ctx, "rotate",
		chromedp.Click(chromedp.ID("rotate-key")),
		chromedp.WaitVisible(chromedp.ID("grace-seconds")),
		clearInput("grace-seconds"),
		chromedp.SendKeys(chromedp.ID("grace-seconds"), "600"),
		chromedp.Click(chromedp.ID("confirm-rotate")),
		chromedp.WaitVisible(chromedp.ID("new-key")),
		chromedp.Click(chromedp.ID("copy-key")),
		chromedp.Poll[chromedp.Void](`document.querySelector("#dialog [role=status]").textContent !== ""`, chromedp.WithPollingTimeout(5*time.Second)))
	rotated := eval[string](t, ctx, `document.getElementById("new-key").value`)
	newID := strings.TrimSpace(text(t, ctx, "#key-id"))
	if nk, err := st.GetKey(context.Background(), newID); err != nil || newID == keyID || nk.Hash != apikey.HashKey(rotated) || nk.Owner != "acme" {
		t.Errorf("rotation: new key %q (%v): %+v", newID, err, nk)
	}
	if old, err := st.GetKey(context.Background(), keyID); err != nil || old.GraceEndsAt == nil || old.SuccessorID != newID ||
		time.Until(*old.GraceEndsAt) < 590*time.Second || time.Until(*old.GraceEndsAt) > 610*time.Second {
		t.Errorf("rotation: the old key's grace should end in 600 s: %+v (%v)", old, err)
	}
	run(t, ctx, "close the rotated key with Escape", chromedp.KeyEvent(kb.Escape), chromedp.WaitNotVisible(chromedp.ID("dialog")))
	if n := eval[int](t, ctx, `document.body.innerHTML.split(`+fmt.Sprintf("%q", rotated)+`).length - 1`); n != 0 {
		t.Errorf("the rotated key is still in the page after Escape (%d times)", n)
	}

	// Revoke from the key page; the API agrees.
	run(t, ctx, "revoke",
		chromedp.Navigate(hs.URL+"/ui/#/keys/"+keyID),
		chromedp.WaitVisible(chromedp.ID("revoke-key")),
		chromedp.Click(chromedp.ID("revoke-key")),
		chromedp.WaitVisible(chromedp.ID("confirm-revoke")),
		chromedp.Click(chromedp.ID("confirm-revoke")),
		chromedp.WaitVisible(chromedp.CSS(`.page-head .badge[data-status="revoked"]`)))
	if code, res := apiCall(t, hs.URL, "GET", "/v1/keys/"+keyID, adminToken, nil); code != http.StatusOK || res["status"] != "revoked" {
		t.Errorf("after revoking in the page, the API says %d %v", code, res["status"])
	}
	if n := eval[int](t, ctx, `document.querySelectorAll("#revoke-key, #rotate-key, #edit-key").length`); n != 0 {
		t.Errorf("a revoked key still offers %d actions", n)
	}

	// The key list shows it revoked with its traffic; signing out forgets
	// the credential.
	run(t, ctx, "key list",
		chromedp.Click(chromedp.CSS(`a[data-nav="keys"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#keys-table tr[data-key-id="`+keyID+`"]`)))
	row := text(t, ctx, `#keys-table tr[data-key-id="`+keyID+`"]`)
	for _, want := range []string{"checkout service", "acme", "revoked", "100/s", "5,000/day", commas(allowed+7+1000) + " (7 refused)"} {
		if !strings.Contains(row, want) {
			t.Errorf("key row %q lacks %q", row, want)
		}
	}
	if row := text(t, ctx, `#keys-table tr[data-key-id="`+newID+`"]`); !strings.Contains(row, "active") || !strings.Contains(row, "read") {
		t.Errorf("rotated key row %q", row)
	}
	screenshot(t, ctx, out, "keys-1280x800.png", false)

	// Owner filter, pages of 50 and the search box.
	for i := range 53 {
		if code, res := apiCall(t, hs.URL, "POST", "/v1/keys", adminToken, map[string]any{
			"name": fmt.Sprintf("bulk %02d", i), "owner": "bulk"}); code != http.StatusCreated {
			t.Fatalf("create bulk key %d: %d %v", i, code, res)
		}
	}
	rowCount := func() int {
		return eval[int](t, ctx, `document.querySelectorAll("#keys-table tbody tr[data-key-id]").length`)
	}
	run(t, ctx, "filter by owner",
		chromedp.SendKeys(chromedp.ID("owner-filter"), "bulk"),
		chromedp.Click(chromedp.CSS(`#key-filters button[type="submit"]`)),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll("#keys-table tbody tr[data-key-id]").length === 50 && !document.getElementById("next-page").disabled`,
			chromedp.WithPollingTimeout(10*time.Second)),
		chromedp.Click(chromedp.ID("next-page")),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll("#keys-table tbody tr[data-key-id]").length === 3`, chromedp.WithPollingTimeout(10*time.Second)))
	if eval[bool](t, ctx, `document.getElementById("next-page").disabled`) != true {
		t.Error("the last page still offers Next")
	}
	run(t, ctx, "previous page",
		chromedp.Click(chromedp.ID("prev-page")),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll("#keys-table tbody tr[data-key-id]").length === 50`, chromedp.WithPollingTimeout(10*time.Second)))
	run(t, ctx, "search",
		chromedp.SendKeys(chromedp.ID("search"), "bulk 07"),
		chromedp.Click(chromedp.CSS(`#key-filters button[type="submit"]`)),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll("#keys-table tbody tr[data-key-id]").length === 1`, chromedp.WithPollingTimeout(10*time.Second)))
	if got := text(t, ctx, "#keys-table tbody tr[data-key-id] a"); got != "bulk 07" || rowCount() != 1 {
		t.Errorf("search for bulk 07 shows %q", got)
	}
	run(t, ctx, "search by key id opens the key",
		clearInput("search"),
		chromedp.SendKeys(chromedp.ID("search"), otherID),
		chromedp.Click(chromedp.CSS(`#key-filters button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.ID("key-series")))
	if got := strings.TrimSpace(text(t, ctx, "#key-id")); got != otherID {
		t.Errorf("searching a key id opened %q, want %q", got, otherID)
	}
	if got := text(t, ctx, "#key-details"); !strings.Contains(got, "Planteam (overrides: scopes)") || !strings.Contains(got, "50/s +49 burst") {
		t.Errorf("the details of a key on a plan do not show the plan and its rate: %q", got)
	}
	run(t, ctx, "sign out",
		chromedp.Click(chromedp.ID("logout")),
		chromedp.WaitVisible(chromedp.ID("login-credential")))
	if v := eval[any](t, ctx, `sessionStorage.getItem("keygate.admin")`); v != nil {
		t.Errorf("credential still in session storage after sign-out: %v", v)
	}

	cons.check(t)
	t.Logf("screenshots in %s", out)
}
