package ui

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"
)

// nextHandler stands for the API behind the dashboard.
var nextHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Next", "api")
	w.WriteHeader(http.StatusTeapot)
})

func serve(h http.Handler, method, target string, header http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for k, v := range header {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestChartLibraryIsEmbeddedAndPinned(t *testing.T) {
	if MissingChartLibrary() {
		t.Fatal("the chart library is not embedded: run controlplane/internal/ui/setup.sh, then test again")
	}
	script, err := os.ReadFile("setup.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CHARTJS_SHA256=([0-9a-f]{64})$`).FindSubmatch(script)
	if m == nil {
		t.Fatal("setup.sh pins no CHARTJS_SHA256")
	}
	body, err := fs.ReadFile(static, "static/"+chartLibrary)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(body)
	if got := hex.EncodeToString(sum[:]); got != string(m[1]) {
		t.Fatalf("embedded chart library has SHA-256 %s, setup.sh pins %s: run setup.sh again", got, m[1])
	}
}

func TestIndexHeadersAndNoInlineScript(t *testing.T) {
	h := Mount(nextHandler)
	w := serve(h, "GET", "/ui/", nil)
	if w.Code != http.StatusOK {
		t.Fatalf("GET /ui/ = %d", w.Code)
	}
	want := map[string]string{
		"Content-Type":            "text/html; charset=utf-8",
		"Cache-Control":           "no-store",
		"X-Content-Type-Options":  "nosniff",
		"X-Frame-Options":         "DENY",
		"Referrer-Policy":         "no-referrer",
		"Content-Security-Policy": contentSecurityPolicy,
	}
	for k, v := range want {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if !strings.Contains(contentSecurityPolicy, "default-src 'self'") || strings.Contains(contentSecurityPolicy, "unsafe") {
		t.Errorf("CSP %q must be self-only without unsafe sources", contentSecurityPolicy)
	}
	body := w.Body.String()
	for _, tag := range regexp.MustCompile(`<script[^>]*>`).FindAllString(body, -1) {
		if !strings.Contains(tag, ` src="`) {
			t.Errorf("inline script %s: CSP forbids it", tag)
		}
	}
	if regexp.MustCompile(`\son[a-z]+=`).MatchString(body) || strings.Contains(body, "style=") {
		t.Error("index.html has inline handlers or styles")
	}
	for _, ref := range regexp.MustCompile(`(?:src|href)="([^"#]+)"`).FindAllStringSubmatch(body, -1) {
		if strings.Contains(ref[1], "//") {
			t.Errorf("index.html loads %s from another origin", ref[1])
			continue
		}
		if w := serve(h, "GET", "/ui/"+ref[1], nil); w.Code != http.StatusOK {
			t.Errorf("GET /ui/%s = %d", ref[1], w.Code)
		}
	}
}

func TestAssets(t *testing.T) {
	h := Mount(nextHandler)
	w := serve(h, "GET", "/ui/js/app.js", nil)
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Fatalf("GET app.js = %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	etag := w.Header().Get("ETag")
	if etag == "" || w.Header().Get("Cache-Control") != "no-cache" {
		t.Fatalf("app.js: ETag %q, Cache-Control %q", etag, w.Header().Get("Cache-Control"))
	}
	if w := serve(h, "GET", "/ui/js/app.js", http.Header{"If-None-Match": {`"x", ` + etag}}); w.Code != http.StatusNotModified || w.Body.Len() != 0 {
		t.Errorf("conditional GET = %d with %d bytes, want 304 and none", w.Code, w.Body.Len())
	}
	if w := serve(h, "GET", "/ui/js/app.js", http.Header{"If-None-Match": {`"other"`}}); w.Code != http.StatusOK {
		t.Errorf("GET with a stale ETag = %d", w.Code)
	}
	if w := serve(h, "HEAD", "/ui/style.css", nil); w.Code != http.StatusOK || w.Body.Len() != 0 || w.Header().Get("Content-Length") == "0" {
		t.Errorf("HEAD style.css = %d, %d body bytes, Content-Length %q", w.Code, w.Body.Len(), w.Header().Get("Content-Length"))
	}
	if w := serve(h, "GET", "/ui/vendor/chart.js.LICENSE.md", nil); w.Code != http.StatusOK {
		t.Errorf("the chart library's licence is not served: %d", w.Code)
	}
	if w := serve(h, "GET", "/ui/vendor/README.md", nil); w.Code != http.StatusNotFound {
		t.Errorf("GET vendor/README.md = %d, want 404", w.Code)
	}
}

func checkProblem(t *testing.T, w *httptest.ResponseRecorder, status int, code string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d", w.Code, status)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q", ct)
	}
	var p struct {
		Status  int    `json:"status"`
		Error   string `json:"error"`
		Message string `json:"message"`
		Detail  string `json:"detail"`
		Type    string `json:"type"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	if p.Status != status || p.Error != code || p.Detail == "" || p.Message != p.Detail || p.Type != "urn:keygate:problem:"+code {
		t.Fatalf("problem %+v, want status %d error %q", p, status, code)
	}
}

func TestRoutingAndErrors(t *testing.T) {
	h := Mount(nextHandler)
	if w := serve(h, "GET", "/ui", nil); w.Code != http.StatusMovedPermanently || w.Header().Get("Location") != "/ui/" {
		t.Errorf("GET /ui = %d to %q", w.Code, w.Header().Get("Location"))
	}
	for _, p := range []string{"/v1/keys", "/healthz", "/uix", "/"} {
		if w := serve(h, "GET", p, nil); w.Code != http.StatusTeapot || w.Header().Get("X-Next") != "api" {
			t.Errorf("GET %s was not passed on: %d", p, w.Code)
		}
	}
	checkProblem(t, serve(h, "GET", "/ui/nope.js", nil), http.StatusNotFound, "not_found")
	checkProblem(t, serve(h, "GET", "/ui/../static/index.html", nil), http.StatusNotFound, "not_found")
	w := serve(h, "POST", "/ui/", nil)
	checkProblem(t, w, http.StatusMethodNotAllowed, "method_not_allowed")
	if w.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("Allow = %q", w.Header().Get("Allow"))
	}
}

func TestMissingChartLibraryAnswers503(t *testing.T) {
	fsys := fstest.MapFS{
		"static/index.html":        {Data: []byte("<!doctype html>")},
		"static/vendor/README.md":  {Data: []byte("fetched by setup.sh")},
		"static/js/app.js":         {Data: []byte("export {}")},
		"static/vendor/.gitignore": {Data: []byte("*")},
	}
	h := &handler{assets: loadAssets(fsys), next: nextHandler}
	w := serve(h, "GET", "/ui/"+chartLibrary, nil)
	checkProblem(t, w, http.StatusServiceUnavailable, "unavailable")
	if !strings.Contains(w.Body.String(), "setup.sh") {
		t.Errorf("the 503 does not say how to fix it: %s", w.Body)
	}
	if w := serve(h, "GET", "/ui/", nil); w.Code != http.StatusOK {
		t.Errorf("the dashboard page itself must still load (it shows the error): %d", w.Code)
	}
}
