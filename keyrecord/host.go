package keyrecord

import "github.com/keygate/keygate/internal/wire"

// Host patterns (a key's allowed hosts) and how they match a request's
// :authority. Matching is ASCII case-insensitive, ignores one trailing dot on
// either side, and never allocates.
//
//	api.example.com        that host, any port
//	api.example.com:8443   that host, port 8443 only (an authority without
//	                       a port does not match: the filter cannot know the
//	                       scheme's default)
//	*.example.com          exactly one label in front of example.com:
//	                       a.example.com, not a.b.example.com, not
//	                       example.com, not badexample.com (as in TLS
//	                       certificates, RFC 6125 6.4.3)
//	*                      any host
//	[2001:db8::1]          an IPv6 literal, compared as text (write it in
//	                       its canonical RFC 5952 form)
//
// An authority that is empty, has an empty host, a non-numeric port, or a
// bare (unbracketed) IPv6 address matches nothing, not even "*".

// MatchHost reports whether pattern allows authority.
func MatchHost(pattern, authority string) bool {
	// The conversion does not escape, so the compiler does not copy.
	return matchHost([]byte(pattern), authority)
}

func matchHost(pattern []byte, authority string) bool {
	host, port, ok := splitAuthority(authority)
	return ok && matchSplit(pattern, host, port)
}

// matchSplit is matchHost on an authority already split by splitAuthority.
func matchSplit(pattern []byte, host, port string) bool {
	phost, pport, ok := splitPattern(pattern)
	if !ok {
		return false
	}
	if len(pport) > 0 && string(pport) != port {
		return false
	}
	if len(phost) == 1 && phost[0] == '*' {
		return true
	}
	if len(phost) > 2 && phost[0] == '*' && phost[1] == '.' {
		suffix := phost[1:] // ".example.com"
		if len(host) <= len(suffix) || host[0] == '[' {
			return false
		}
		label := host[:len(host)-len(suffix)]
		for i := 0; i < len(label); i++ {
			if label[i] == '.' {
				return false
			}
		}
		return equalFold(suffix, host[len(host)-len(suffix):])
	}
	return equalFold(phost, host)
}

// SplitAuthority splits an :authority into host and port, accepting
// [v6]:port and dropping one trailing dot from the host. ok is false for an
// authority MatchHost refuses.
func SplitAuthority(a string) (host, port string, ok bool) { return splitAuthority(a) }

func splitAuthority(a string) (host, port string, ok bool) {
	if len(a) == 0 {
		return "", "", false
	}
	if a[0] == '[' {
		end := -1
		for i := 1; i < len(a); i++ {
			if a[i] == ']' {
				end = i
				break
			}
		}
		if end < 2 {
			return "", "", false
		}
		host, rest := a[:end+1], a[end+1:]
		if rest == "" {
			return host, "", true
		}
		if rest[0] != ':' || !digits(rest[1:]) {
			return "", "", false
		}
		return host, rest[1:], true
	}
	colon := -1
	for i := 0; i < len(a); i++ {
		if a[i] == ':' {
			if colon >= 0 {
				return "", "", false // bare IPv6 or garbage
			}
			colon = i
		}
	}
	host = a
	if colon >= 0 {
		host, port = a[:colon], a[colon+1:]
		if !digits(port) {
			return "", "", false
		}
	}
	if len(host) > 1 && host[len(host)-1] == '.' {
		host = host[:len(host)-1]
	}
	if host == "" || host == "." {
		return "", "", false
	}
	return host, port, true
}

// splitPattern is splitAuthority for a pattern held as bytes.
func splitPattern(p []byte) (host, port []byte, ok bool) {
	if len(p) == 0 {
		return nil, nil, false
	}
	i := len(p) - 1
	for i >= 0 && p[i] >= '0' && p[i] <= '9' {
		i--
	}
	if i >= 0 && i < len(p)-1 && p[i] == ':' && (p[0] != '[' || (i > 0 && p[i-1] == ']')) {
		host, port = p[:i], p[i+1:]
	} else {
		host = p
	}
	if len(host) > 1 && host[len(host)-1] == '.' {
		host = host[:len(host)-1]
	}
	return host, port, len(host) > 0
}

func digits(s string) bool {
	if s == "" || len(s) > 5 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func equalFold(a []byte, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// AppendUsageHost appends the host of authority as usage counts carry it
// (docs/wire.md): lower-cased, without port and trailing dot, at most
// wire.MaxUsageHostLen bytes of [a-z0-9._:[]-]; nothing for an authority
// MatchHost refuses or a host with other characters. It never allocates
// beyond growing b.
func AppendUsageHost(b []byte, authority string) []byte {
	host, _, ok := splitAuthority(authority)
	if !ok || len(host) > wire.MaxUsageHostLen {
		return b
	}
	start := len(b)
	for i := 0; i < len(host); i++ {
		c := host[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '.', c == '-', c == '_', c == ':', c == '[', c == ']':
		default:
			return b[:start]
		}
		b = append(b, c)
	}
	return b
}
