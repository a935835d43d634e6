package filter

// Route matching runs on a normalized path, so that a route's scopes cannot
// be skipped by spelling its path another way that the upstream reads as
// the same: "//admin", "/./admin", "/x/../admin", "/%61dmin", "/admin\x"
// (and "/Admin" unless case_sensitive_paths). See docs/config.md, "Path
// matching".
//
// The normalization is RFC 3986's, as Envoy's normalize_path and
// merge_slashes do it and more: percent-escapes of unreserved characters
// (ALPHA DIGIT - . _ ~) are decoded, a backslash is a slash, empty segments
// are merged, and "." and ".." segments (also spelled %2e) are resolved.
// What cannot be normalized without guessing the upstream's reading is
// refused with 400 invalid_path: an encoded slash or backslash (%2F, %5C),
// an encoded NUL, a '%' not followed by two hex digits, and a path that
// does not start with '/'.

// pathNormal reports whether p (the path without its query) is already
// normal: then it is matched as it is, with no copy.
func pathNormal(p string) bool {
	if len(p) == 0 || p[0] != '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '%', '\\':
			return false
		case '/':
			if i+1 < len(p) && (p[i+1] == '/' || p[i+1] == '.' && dotSegment(p[i+1:])) {
				return false
			}
		}
	}
	return true
}

// dotSegment reports whether s starts with a "." or ".." segment.
func dotSegment(s string) bool {
	n := 1
	if len(s) > 1 && s[1] == '.' {
		n = 2
	}
	return len(s) == n || s[n] == '/'
}

// unhex returns the value of hex digit c, or -1.
func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func unreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// normalizePath appends the normalized form of p (a path without its
// query) to buf[:0] and returns it; ok is false when p cannot be normalized.
func normalizePath(p string, buf []byte) (out []byte, ok bool) {
	if len(p) == 0 || (p[0] != '/' && p[0] != '\\') {
		return buf[:0], false
	}
	// Pass 1: decode unreserved escapes, backslash to slash.
	out = buf[:0]
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch c {
		case '\\':
			c = '/'
		case '%':
			if i+2 >= len(p) {
				return out, false
			}
			h, l := unhex(p[i+1]), unhex(p[i+2])
			if h < 0 || l < 0 {
				return out, false
			}
			v := byte(h<<4 | l)
			switch {
			case v == '/' || v == '\\' || v == 0:
				return out, false
			case unreserved(v):
				c = v
				i += 2
			default: // an escape that stays one: copied as it is
				out = append(out, p[i], p[i+1], p[i+2])
				i += 2
				continue
			}
		}
		out = append(out, c)
	}
	// Pass 2, in place (the output never outruns the input): merge
	// slashes, resolve dot segments, keep a trailing slash.
	n, w := len(out), 0
	trailing := false
	for r := 0; r < n; {
		for r < n && out[r] == '/' {
			r++
		}
		start := r
		for r < n && out[r] != '/' {
			r++
		}
		seg := out[start:r]
		trailing = r == n && (len(seg) == 0 || isDots(seg))
		switch {
		case len(seg) == 0:
		case isDots(seg) && len(seg) == 1:
		case isDots(seg):
			for w > 0 && out[w-1] != '/' {
				w--
			}
			if w > 0 {
				w-- // drop the slash before the removed segment
			}
		default:
			out[w] = '/'
			w++
			w += copy(out[w:], seg)
			trailing = false
		}
	}
	if w == 0 || trailing {
		out[w] = '/'
		w++
	}
	return out[:w], true
}

// isDots reports whether seg is "." or "..".
func isDots(seg []byte) bool {
	return len(seg) == 1 && seg[0] == '.' || len(seg) == 2 && seg[0] == '.' && seg[1] == '.'
}

// hasPrefixFold reports whether s starts with prefix, ASCII letters of s
// compared lower-cased (prefix is lower-case already) when fold.
func hasPrefixFold(s, prefix string, fold bool) bool {
	if len(s) < len(prefix) {
		return false
	}
	if !fold {
		return s[:len(prefix)] == prefix
	}
	for i := 0; i < len(prefix); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}
