package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"

	"github.com/keygate/keygate/controlplane/internal/lifecycle"
)

// Validation limits.
const (
	maxHosts        = 100
	maxHostLen      = 253
	maxScopes       = 50
	maxScopeLen     = 64
	maxTextLen      = 200 // names and owners, in characters
	maxMetadata     = 4 << 10
	maxRateLimit    = 1_000_000_000
	maxRateBurst    = 1_000_000_000
	maxRatePeriodMS = 24 * 60 * 60 * 1000 // one day
	maxQuotaLimit   = 1_000_000_000_000
	maxGraceSeconds = int64(lifecycle.MaxGrace / time.Second)
)

// fieldErrors collects validation errors of one request.
type fieldErrors []FieldError

func (fe *fieldErrors) add(field, format string, args ...any) {
	*fe = append(*fe, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

func (fe fieldErrors) problem() *problem {
	if len(fe) == 0 {
		return nil
	}
	return invalid(fe...)
}

// checkText validates a name or owner: at most maxTextLen characters of
// valid UTF-8 without control characters.
func checkText(fe *fieldErrors, field, s string) {
	switch {
	case !utf8.ValidString(s):
		fe.add(field, "must be valid UTF-8")
	case utf8.RuneCountInString(s) > maxTextLen:
		fe.add(field, "must be at most %d characters", maxTextLen)
	case strings.ContainsFunc(s, unicode.IsControl):
		fe.add(field, "must not contain control characters")
	}
}

// checkHosts validates a list of host patterns.
func checkHosts(fe *fieldErrors, field string, hosts []string) {
	if len(hosts) > maxHosts {
		fe.add(field, "at most %d hosts", maxHosts)
		return
	}
	seen := make(map[string]bool, len(hosts))
	for i, h := range hosts {
		f := field + "[" + strconv.Itoa(i) + "]"
		if msg := hostPatternError(h); msg != "" {
			fe.add(f, "%s", msg)
		} else if seen[h] {
			fe.add(f, "duplicate host pattern")
		}
		seen[h] = true
	}
}

// hostPatternError explains why h is not a valid host pattern, or returns "".
//
// Valid: a lower-case DNS name (optionally with a leading "*." wildcard
// label), "*" alone, a canonical dotted-quad IPv4 literal, or a bracketed
// IPv6 literal; any of them but "*" with an optional ":port". A wildcard
// must sit under a registrable domain: "*.com", "*.co.uk", "*.github.io"
// (public suffixes) and "*.internal" (one label) would match hosts of
// unrelated owners, and "*" says "any host" explicitly. A name whose last
// label is numeric must be an IPv4 address, as a resolver would read it.
func hostPatternError(h string) string {
	switch {
	case h == "":
		return "must not be empty"
	case len(h) > maxHostLen:
		return fmt.Sprintf("must be at most %d characters", maxHostLen)
	case h == "*":
		return ""
	case strings.Contains(h, "://"):
		return "must be a host name without a scheme"
	case strings.ContainsAny(h, "/?#@ \t"):
		return "must be a host name without path, query, user or spaces"
	}
	host, port := h, ""
	if strings.HasPrefix(h, "[") {
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
		if addr.String() != host {
			return "IPv6 literal must be in canonical lower-case form (" + addr.String() + ")"
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 {
		host, port = h[:i], h[i:]
	}
	if port != "" {
		n, err := strconv.Atoi(port[1:])
		if err != nil || n < 1 || n > 65535 || port[1] == '0' || port[1] == '+' {
			return "port must be 1 to 65535"
		}
	}
	if strings.HasPrefix(h, "[") {
		return ""
	}
	name, wildcard := strings.CutPrefix(host, "*.")
	if name == "" {
		return "missing host name"
	}
	labels := strings.Split(name, ".")
	for _, label := range labels {
		if msg := labelError(label); msg != "" {
			return msg
		}
	}
	if last := labels[len(labels)-1]; digits(last) {
		addr, err := netip.ParseAddr(name)
		if err != nil || !addr.Is4() {
			return fmt.Sprintf("%q is not a valid IPv4 address (four numbers 0 to 255 without leading zeros)", name)
		}
		if wildcard {
			return "a wildcard cannot cover an IP address"
		}
		return ""
	}
	if wildcard {
		if len(labels) == 1 {
			return fmt.Sprintf("a wildcard must cover a registered domain, not the top-level name %q (use \"*\" for any host)", name)
		}
		if suffix, _ := publicsuffix.PublicSuffix(name); suffix == name {
			return fmt.Sprintf("a wildcard must cover a registered domain, not the public suffix %q (use \"*\" for any host)", name)
		}
	}
	return ""
}

// digits reports whether s is a non-empty run of ASCII digits.
func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
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
	for _, c := range label {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
		case c >= 'A' && c <= 'Z':
			return "must be lower-case"
		case c == utf8.RuneError:
			return "must be valid UTF-8"
		case c >= utf8.RuneSelf:
			// Quoted as a string, not a byte, so it shows as typed; the
			// filter compares the ASCII form clients send in :authority.
			msg := fmt.Sprintf("invalid character %q: write internationalized names in their ASCII (xn--) form", string(c))
			if a, err := idna.Lookup.ToASCII(label); err == nil && a != label {
				msg += fmt.Sprintf(", %q for %q", a, label)
			}
			return msg
		default:
			return fmt.Sprintf("invalid character %q", string(c))
		}
	}
	return ""
}

// checkScopes validates a list of scopes: [a-z0-9:._-]{1,64}.
func checkScopes(fe *fieldErrors, field string, scopes []string) {
	if len(scopes) > maxScopes {
		fe.add(field, "at most %d scopes", maxScopes)
		return
	}
	seen := make(map[string]bool, len(scopes))
	for i, s := range scopes {
		f := field + "[" + strconv.Itoa(i) + "]"
		if !validScope(s) {
			fe.add(f, "must be 1 to %d characters of a-z 0-9 : . _ -", maxScopeLen)
		} else if seen[s] {
			fe.add(f, "duplicate scope")
		}
		seen[s] = true
	}
}

func validScope(s string) bool {
	if len(s) == 0 || len(s) > maxScopeLen {
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

// checkMetadata validates metadata: a JSON object of at most 4 KiB. It
// returns the compacted object, or nil for JSON null.
func checkMetadata(fe *fieldErrors, field string, raw json.RawMessage) json.RawMessage {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	if raw[0] != '{' {
		fe.add(field, "must be a JSON object")
		return nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		fe.add(field, "must be a JSON object")
		return nil
	}
	if buf.Len() > maxMetadata {
		fe.add(field, "must be at most %d bytes of compact JSON", maxMetadata)
		return nil
	}
	return buf.Bytes()
}

// parseExpiry parses an RFC 3339 expiry that must lie in the future.
func parseExpiry(fe *fieldErrors, field, s string, now time.Time) *time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		fe.add(field, "must be an RFC 3339 timestamp such as 2030-01-02T15:04:05Z")
		return nil
	}
	if !t.After(now) {
		fe.add(field, "must be in the future")
		return nil
	}
	if t.UTC().After(maxQueryTime) { // RFC 3339 ends at year 9999 (in UTC)
		fe.add(field, "must not be after 9999-12-31T00:00:00Z")
		return nil
	}
	// Kept to the microsecond the store holds; the sync wire rounds up to
	// whole seconds, so the key never stops early.
	t = t.UTC()
	return &t
}

// validKeyID tells whether s has the shape of a key id this service issues
// (loosely: ids are opaque to clients; this only keeps junk out of the store).
func validKeyID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
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
