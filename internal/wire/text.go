package wire

import (
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Printable reports whether s is valid UTF-8 without control characters
// (C0, DEL, C1): the one definition of "printable" on the wire. PostgreSQL
// text cannot even hold NUL.
func Printable(s string) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError || r < 0xa0 {
			return false
		}
		i += n
	}
	return true
}

// idChars reports whether s is 1 to max bytes of [A-Za-z0-9_-].
func idChars(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidKeyID reports whether s is a key id: 1 to MaxKeyIDLen of
// [A-Za-z0-9_-].
func ValidKeyID(s string) bool { return idChars(s, MaxKeyIDLen) }

// OwnerBudgetPrefix starts the budget id of an owner's limits among a
// usage answer's shares: "owner:" and the owner. No key id has a colon,
// so the two kinds of budget cannot meet.
const OwnerBudgetPrefix = "owner:"

// ValidBudgetID reports whether s names a budget in a usage answer's
// shares: a key id (a lineage's first key) or OwnerBudgetPrefix and a
// valid owner.
func ValidBudgetID(s string) bool {
	if len(s) > len(OwnerBudgetPrefix) && s[:len(OwnerBudgetPrefix)] == OwnerBudgetPrefix {
		return ValidOwner(s[len(OwnerBudgetPrefix):])
	}
	return ValidKeyID(s)
}

// lowerIDChars reports whether s is 1 to max bytes of [a-z0-9_-].
func lowerIDChars(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidPlanID reports whether s is a plan id: 1 to MaxPlanIDLen of
// [a-z0-9_-], chosen by the operator ("free", "pro-2025").
func ValidPlanID(s string) bool { return lowerIDChars(s, MaxPlanIDLen) }

// UnnamedLimit is the RateLimit-Policy item name of a key's unnamed rate
// limit; no named limit may take it.
const UnnamedLimit = "key"

// ValidLimitName reports whether s may name a rate limit: 1 to
// MaxLimitNameLen of [a-z0-9_-], and not UnnamedLimit. A name appears in
// RateLimit-Policy as a quoted key, which these characters never need to
// escape.
func ValidLimitName(s string) bool { return s != UnnamedLimit && lowerIDChars(s, MaxLimitNameLen) }

// ValidBoot reports whether s is a boot id: 1 to MaxBootLen of
// [A-Za-z0-9_-] (the filter draws 16 lower-case hex digits).
func ValidBoot(s string) bool { return idChars(s, MaxBootLen) }

// ValidNode reports whether s is a node name: 1 to MaxNodeLen bytes of
// printable UTF-8.
func ValidNode(s string) bool { return len(s) >= 1 && len(s) <= MaxNodeLen && Printable(s) }

// ValidOwner reports whether s may be a key's owner (or name): at most
// MaxOwnerLen characters of printable UTF-8; "" is no owner.
func ValidOwner(s string) bool {
	return Printable(s) && utf8.RuneCountInString(s) <= MaxOwnerLen
}

// ValidScope reports whether s is a scope: 1 to MaxScopeLen of
// [a-z0-9:._-].
func ValidScope(s string) bool {
	if len(s) == 0 || len(s) > MaxScopeLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == ':' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidCursor reports whether c may be a sync cursor: at most
// MaxCursorLen characters that need no escaping in a query ("" is none).
func ValidCursor(c string) bool {
	for i := 0; i < len(c); i++ {
		ch := c[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_' || ch == '.' || ch == '~' || ch == '%') {
			return false
		}
	}
	return len(c) <= MaxCursorLen
}

// ValidHash reports whether s is a key hash on the wire: 64 lower-case hex
// digits.
func ValidHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// HostPatternError explains why h is not a host pattern, or returns "".
//
// A pattern is "*" (any host), a lower-case DNS name of letters, digits
// and hyphens, optionally with a leading "*." wildcard label, or a
// bracketed IPv6 literal in canonical RFC 5952 form; any of them but "*"
// with an optional ":port" (1 to 65535). This is the syntax every stored
// pattern meets and the filter's matcher (keyrecord.MatchHost) relies on;
// the control plane admits new patterns under further rules (no wildcard
// over a public suffix, numeric names must be IPv4 addresses).
func HostPatternError(h string) string {
	switch {
	case h == "":
		return "must not be empty"
	case len(h) > MaxHostPatternLen:
		return "must be at most " + strconv.Itoa(MaxHostPatternLen) + " characters"
	case h == "*":
		return ""
	case strings.Contains(h, "://"):
		return "must be a host name without a scheme"
	case strings.ContainsAny(h, "/?#@ \t"):
		return "must be a host name without path, query, user or spaces"
	}
	host, port := h, ""
	if h[0] == '[' {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return "unterminated IPv6 literal"
		}
		host, port = h[1:end], h[end+1:]
		if port != "" && port[0] != ':' {
			return "unexpected characters after the IPv6 literal"
		}
		addr, err := netip.ParseAddr(host)
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return "invalid IPv6 literal"
		}
		if s := addr.String(); s != host {
			return "IPv6 literal must be in canonical lower-case form (" + s + ")"
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 {
		host, port = h[:i], h[i:]
	}
	if port != "" && !validPort(port[1:]) {
		return "port must be 1 to 65535"
	}
	if h[0] == '[' {
		return ""
	}
	name := host
	if len(name) >= 2 && name[0] == '*' && name[1] == '.' {
		name = name[2:]
	}
	if name == "" {
		return "missing host name"
	}
	for start := 0; start <= len(name); {
		end := start + strings.IndexByte(name[start:], '.')
		if end < start {
			end = len(name)
		}
		if msg := labelError(name[start:end]); msg != "" {
			return msg
		}
		start = end + 1
	}
	return ""
}

// SplitHostPattern returns the name of a pattern HostPatternError accepts,
// without port and wildcard label, and whether it has that wildcard label.
// It returns "" for "*" and for an IPv6 literal.
func SplitHostPattern(h string) (name string, wildcard bool) {
	if h == "*" || h == "" || h[0] == '[' {
		return "", false
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	if len(h) >= 2 && h[0] == '*' && h[1] == '.' {
		return h[2:], true
	}
	return h, false
}

func validPort(p string) bool {
	if p == "" || len(p) > 5 || p[0] == '0' {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n >= 1 && n <= 65535
}

func labelError(label string) string {
	switch {
	case label == "":
		return "empty label (consecutive, leading or trailing dot)"
	case len(label) > 63:
		return "label longer than 63 characters"
	case label == "*":
		return "a wildcard is only allowed as the whole first label (*.example.com)"
	case label[0] == '-' || label[len(label)-1] == '-':
		return "label must not start or end with a hyphen"
	}
	for i := 0; i < len(label); {
		c := label[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
		case c >= 'A' && c <= 'Z':
			return "must be lower-case"
		case c >= utf8.RuneSelf:
			r, _ := utf8.DecodeRuneInString(label[i:])
			if r == utf8.RuneError {
				return "must be valid UTF-8"
			}
			// Quoted as typed; the filter compares the ASCII form clients
			// send in :authority.
			return `invalid character "` + string(r) + `": write internationalized names in their ASCII (xn--) form`
		default:
			return `invalid character "` + quoteASCII(c) + `"`
		}
		i++
	}
	return ""
}

// quoteASCII writes an ASCII byte as Go would inside a quoted string
// (strconv.Quote would pull Unicode tables into the filter's module).
func quoteASCII(c byte) string {
	const hexDigits = "0123456789abcdef"
	switch {
	case c == '"' || c == '\\':
		return "\\" + string(rune(c))
	case c < 0x20 || c >= 0x7f:
		return "\\x" + string(hexDigits[c>>4]) + string(hexDigits[c&15])
	}
	return string(rune(c))
}
