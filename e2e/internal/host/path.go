package host

import (
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// The HTTP connection manager's path options, applied to :path before any
// filter runs, in Envoy's order: escaped slashes, then normalize_path, then
// merge_slashes. Each works on the path before the query; the query is
// kept as it is.

// normalizeRequestPath applies o to the request's :path. ok is false when
// Envoy would refuse the request (400, path_normalization_failed).
func normalizeRequestPath(hm *headerMap, o PathOptions) (ok bool) {
	p, has := hm.get(":path")
	if !has || p == "" {
		return true
	}
	path, query := p, ""
	if i := strings.IndexByte(p, '?'); i >= 0 {
		path, query = p[:i], p[i:]
	}
	if strings.IndexByte(path, '#') >= 0 {
		return false // Envoy refuses a fragment in :path
	}
	if o.EscapedSlashes != hcmv3.HttpConnectionManager_KEEP_UNCHANGED {
		unescaped := unescapeSlashes(path)
		if unescaped != path && o.EscapedSlashes == hcmv3.HttpConnectionManager_REJECT_REQUEST {
			return false
		}
		path = unescaped
	}
	if o.Normalize {
		path = canonicalPath(path)
	}
	if o.MergeSlashes {
		path = mergeSlashes(path)
	}
	if path+query != p {
		hm.replace(":path", path+query)
	}
	return true
}

// unescapeSlashes decodes %2F and %5C (either case) to '/' and '\', as
// Envoy's PathUtil::unescapeSlashes.
func unescapeSlashes(path string) string {
	if strings.IndexByte(path, '%') < 0 {
		return path
	}
	return strings.NewReplacer("%2F", "/", "%2f", "/", "%5C", `\`, "%5c", `\`).Replace(path)
}

// pathEscape marks the bytes the URL canonicalizer percent-encodes in a
// path (the rest pass unchanged; '%', '.' and '\' are handled apart).
var pathEscape = func() (t [256]bool) {
	for c := 0; c <= 0x20; c++ {
		t[c] = true
	}
	for _, c := range "\"#<>?^`{|}" {
		t[c] = true
	}
	for c := 0x7f; c < 256; c++ {
		t[c] = true
	}
	return t
}()

// isDot returns the length of a dot at the start of s: 1 for ".", 3 for
// "%2e" or "%2E", 0 for none.
func isDot(s string) int {
	switch {
	case strings.HasPrefix(s, "."):
		return 1
	case len(s) >= 3 && s[0] == '%' && s[1] == '2' && (s[2] == 'e' || s[2] == 'E'):
		return 3
	}
	return 0
}

func isSlash(c byte) bool { return c == '/' || c == '\\' }

// canonicalPath is Envoy's normalize_path: the URL canonicalizer's path
// step (RFC 3986 dot-segment removal, also of %2e spellings; backslash as a
// slash; characters outside the path set percent-encoded; existing escapes
// kept exactly, so "%61" stays "%61"; a relative path gets a leading '/').
// Slashes are not merged here.
func canonicalPath(in string) string {
	out := make([]byte, 0, len(in)+1)
	if in == "" || !isSlash(in[0]) {
		out = append(out, '/')
	}
	backUp := func() { // drop the last segment, keep the slash before it
		i := len(out) - 1
		if i == 0 {
			return
		}
		for i--; i > 0 && out[i] != '/'; i-- {
		}
		out = out[:i+1]
	}
	for i := 0; i < len(in); i++ {
		c := in[i]
		if n := isDot(in[i:]); n > 0 {
			if len(out) > 0 && out[len(out)-1] == '/' {
				rest := in[i+n:]
				switch {
				case rest == "": // "." at the end
					i += n - 1
					continue
				case isSlash(rest[0]): // "./"
					i += n
					continue
				}
				if m := isDot(rest); m > 0 {
					after := rest[m:]
					if after == "" {
						backUp()
						i += n + m - 1
						continue
					}
					if isSlash(after[0]) {
						backUp()
						i += n + m
						continue
					}
				}
			}
			out = append(out, '.')
			i += n - 1
			continue
		}
		switch {
		case c == '\\':
			out = append(out, '/')
		case c == '%':
			if i+2 < len(in) && isHex(in[i+1]) && isHex(in[i+2]) {
				out = append(out, in[i:i+3]...)
				i += 2
			} else {
				out = append(out, '%')
			}
		case pathEscape[c]:
			const hex = "0123456789ABCDEF"
			out = append(out, '%', hex[c>>4], hex[c&15])
		default:
			out = append(out, c)
		}
	}
	return string(out)
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// mergeSlashes is Envoy's merge_slashes: runs of '/' become one, keeping a
// leading and a trailing slash.
func mergeSlashes(path string) string {
	if !strings.Contains(path, "//") {
		return path
	}
	var b strings.Builder
	if strings.HasPrefix(path, "/") {
		b.WriteByte('/')
	}
	first := true
	for _, seg := range strings.Split(path, "/") {
		if seg == "" {
			continue
		}
		if !first {
			b.WriteByte('/')
		}
		b.WriteString(seg)
		first = false
	}
	if strings.HasSuffix(path, "/") {
		b.WriteByte('/')
	}
	return b.String()
}
