package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"

	"github.com/keygate/keygate/controlplane/internal/lifecycle"
	"github.com/keygate/keygate/internal/wire"
)

// Validation limits of the admin API's own (the wire's are internal/wire's).
const (
	maxMetadata     = 4 << 10
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

// checkText validates a name or owner (wire.ValidOwner): at most
// wire.MaxOwnerLen characters of valid UTF-8 without control characters.
func checkText(fe *fieldErrors, field, s string) {
	switch {
	case !utf8.ValidString(s):
		fe.add(field, "must be valid UTF-8")
	case utf8.RuneCountInString(s) > wire.MaxOwnerLen:
		fe.add(field, "must be at most %d characters", wire.MaxOwnerLen)
	case !wire.Printable(s):
		fe.add(field, "must not contain control characters")
	}
}

// checkHosts validates a list of host patterns.
func checkHosts(fe *fieldErrors, field string, hosts []string) {
	if len(hosts) > wire.MaxHosts {
		fe.add(field, "at most %d hosts", wire.MaxHosts)
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

// hostPatternError explains why h may not be a new host pattern, or
// returns "": it must have the wire's syntax (wire.HostPatternError), and
// a wildcard must sit under a registrable domain: "*.com", "*.co.uk",
// "*.github.io" (public suffixes) and "*.internal" (one label) would match
// hosts of unrelated owners, and "*" says "any host" explicitly. A name
// whose last label is numeric must be an IPv4 address, as a resolver
// would read it. (Patterns stored before these rules still sync: the
// filter checks the syntax only.)
func hostPatternError(h string) string {
	if msg := wire.HostPatternError(h); msg != "" {
		if strings.HasPrefix(msg, "invalid character") && strings.HasSuffix(msg, "(xn--) form") {
			name, _ := wire.SplitHostPattern(h)
			for _, label := range strings.Split(name, ".") {
				if a, err := idna.Lookup.ToASCII(label); err == nil && a != label {
					return msg + fmt.Sprintf(", %q for %q", a, label)
				}
			}
		}
		return msg
	}
	name, wildcard := wire.SplitHostPattern(h)
	if name == "" { // "*" or an IPv6 literal
		return ""
	}
	labels := strings.Split(name, ".")
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

// checkScopes validates a list of scopes (wire.ValidScope).
func checkScopes(fe *fieldErrors, field string, scopes []string) {
	if len(scopes) > wire.MaxScopes {
		fe.add(field, "at most %d scopes", wire.MaxScopes)
		return
	}
	seen := make(map[string]bool, len(scopes))
	for i, s := range scopes {
		f := field + "[" + strconv.Itoa(i) + "]"
		if !wire.ValidScope(s) {
			fe.add(f, "must be 1 to %d characters of a-z 0-9 : . _ -", wire.MaxScopeLen)
		} else if seen[s] {
			fe.add(f, "duplicate scope")
		}
		seen[s] = true
	}
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
