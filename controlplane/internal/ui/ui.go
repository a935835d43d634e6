// Package ui serves the control plane's usage dashboard under /ui/: static
// HTML, CSS and small JavaScript modules embedded in the binary, plus the
// Chart.js bundle that setup.sh fetches from the npm registry. The pages
// talk to the control plane's own REST API with the admin credential, which
// the browser keeps in session storage only.
package ui

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/keygate/keygate/internal/wire"
)

// Path is the prefix the dashboard is served under.
const Path = "/ui/"

//go:embed static
var static embed.FS

// chartLibrary is the fetched (git-ignored) chart bundle, relative to static.
const chartLibrary = "vendor/chart.umd.js"

// contentSecurityPolicy allows only the control plane's own scripts, styles
// and API; no inline script, no framing.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// asset is one embedded file, ready to serve.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

// handler serves the dashboard's assets and passes every other request on.
type handler struct {
	assets map[string]asset // by path below Path, "" is index.html
	next   http.Handler
}

// Mount returns a handler that serves the dashboard under Path (and
// redirects "/ui" there) and passes every other request to next.
func Mount(next http.Handler) http.Handler {
	return &handler{assets: loadAssets(static), next: next}
}

// loadAssets reads every embedded file once and computes its ETag.
func loadAssets(fsys fs.FS) map[string]asset {
	out := map[string]asset{}
	root, err := fs.Sub(fsys, "static")
	if err != nil {
		return out // unreachable: "static" is embedded
	}
	_ = fs.WalkDir(root, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || (path.Ext(p) == ".md" && !strings.HasSuffix(p, "LICENSE.md")) {
			return nil
		}
		body, err := fs.ReadFile(root, p)
		if err != nil {
			return nil
		}
		sum := sha256.Sum256(body)
		ct := mime.TypeByExtension(path.Ext(p))
		switch path.Ext(p) {
		case ".js":
			ct = "text/javascript; charset=utf-8"
		case ".md":
			ct = "text/plain; charset=utf-8"
		case "":
			ct = "application/octet-stream"
		}
		out[p] = asset{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:16]) + `"`}
		return nil
	})
	if a, ok := out["index.html"]; ok {
		out[""] = a
	}
	return out
}

// MissingChartLibrary reports whether the binary was built without the
// chart bundle (setup.sh was not run before go build).
func MissingChartLibrary() bool {
	_, err := fs.Stat(static, "static/"+chartLibrary)
	return err != nil
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if p == strings.TrimSuffix(Path, "/") {
		http.Redirect(w, r, Path, http.StatusMovedPermanently)
		return
	}
	rest, ok := strings.CutPrefix(p, Path)
	if !ok {
		h.next.ServeHTTP(w, r)
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", contentSecurityPolicy)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("Cross-Origin-Opener-Policy", "same-origin")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		writeProblem(w, r, http.StatusMethodNotAllowed, "method_not_allowed", "method "+r.Method+" is not allowed here")
		return
	}
	a, ok := h.assets[rest]
	if !ok {
		if rest == chartLibrary {
			writeProblem(w, r, http.StatusServiceUnavailable, "unavailable",
				"the chart library is missing from this build: run controlplane/internal/ui/setup.sh, then rebuild the control plane")
			return
		}
		writeProblem(w, r, http.StatusNotFound, "not_found", "no such resource")
		return
	}
	if path.Ext(rest) == ".html" || rest == "" {
		hdr.Set("Cache-Control", "no-store")
	} else {
		// Assets change with the binary: revalidate each time (cheap 304).
		hdr.Set("Cache-Control", "no-cache")
		hdr.Set("ETag", a.etag)
		if match := r.Header.Get("If-None-Match"); match != "" && etagMatches(match, a.etag) {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	hdr.Set("Content-Type", a.contentType)
	hdr.Set("Content-Length", strconv.Itoa(len(a.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(a.body)
	}
}

// etagMatches implements If-None-Match's weak comparison over a list.
func etagMatches(header, etag string) bool {
	for _, v := range strings.Split(header, ",") {
		v = strings.TrimPrefix(strings.TrimSpace(v), "W/")
		if v == "*" || v == etag {
			return true
		}
	}
	return false
}

// writeProblem answers an RFC 9457 problem in the control plane's format
// (docs/problems.md): "message" is the deprecated alias of "detail".
func writeProblem(w http.ResponseWriter, r *http.Request, status int, code, detail string) {
	body, _ := json.Marshal(map[string]any{
		"type":     wire.ProblemTypePrefix + code,
		"title":    http.StatusText(status),
		"status":   status,
		"detail":   detail,
		"instance": r.URL.Path,
		"error":    code,
		"message":  detail,
	})
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
