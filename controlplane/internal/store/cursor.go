package store

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/keygate/keygate/apikey"
)

// Cursors are opaque to clients: base64url of "<kind>:<fields...>" with a
// version-tagged kind, so a cursor of one list is refused by another.

func encodeCursor(kind string, fields ...string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(kind + ":" + strings.Join(fields, ":")))
}

func decodeCursor(c, kind string, n int) ([]string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(raw) > 512 {
		return nil, fmt.Errorf("store: %w", ErrBadCursor)
	}
	parts := strings.Split(string(raw), ":")
	if len(parts) != n+1 || parts[0] != kind {
		return nil, fmt.Errorf("store: %w", ErrBadCursor)
	}
	return parts[1:], nil
}

func parseInts(fields []string) ([]int64, error) {
	out := make([]int64, len(fields))
	for i, f := range fields {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("store: %w", ErrBadCursor)
		}
		out[i] = v
	}
	return out, nil
}

// keysCursor continues ListKeys after (createdAt, id).
type keysCursor struct {
	createdAt int64
	id        string
}

func (c keysCursor) encode() string {
	// The id goes last and may itself contain ':' only if it is hex-encoded.
	return encodeCursor("k1", strconv.FormatInt(c.createdAt, 10), hex.EncodeToString([]byte(c.id)))
}

func decodeKeysCursor(s string) (keysCursor, error) {
	f, err := decodeCursor(s, "k1", 2)
	if err != nil {
		return keysCursor{}, err
	}
	at, err := strconv.ParseInt(f[0], 10, 64) // may be negative: callers may set CreatedAt
	if err != nil {
		return keysCursor{}, fmt.Errorf("store: %w", ErrBadCursor)
	}
	id, err := hex.DecodeString(f[1])
	if err != nil || len(id) == 0 {
		return keysCursor{}, fmt.Errorf("store: %w", ErrBadCursor)
	}
	return keysCursor{createdAt: at, id: string(id)}, nil
}

// auditCursor continues ListAudit below id.
func encodeAuditCursor(id int64) string { return encodeCursor("a1", strconv.FormatInt(id, 10)) }

func decodeAuditCursor(s string) (int64, error) {
	f, err := decodeCursor(s, "a1", 1)
	if err != nil {
		return 0, err
	}
	n, err := parseInts(f)
	if err != nil {
		return 0, err
	}
	return n[0], nil
}

// syncCursor continues a delta (after version last, up to version upto) or
// a snapshot (after hash, as of version upto) answered for since.
type syncCursor struct {
	snapshot bool
	since    int64
	upto     int64
	last     int64       // delta: last version sent
	hash     apikey.Hash // snapshot: last hash sent
}

func (c syncCursor) encode() string {
	if c.snapshot {
		return encodeCursor("s1", strconv.FormatInt(c.since, 10), strconv.FormatInt(c.upto, 10), c.hash.String())
	}
	return encodeCursor("d1", strconv.FormatInt(c.since, 10), strconv.FormatInt(c.upto, 10), strconv.FormatInt(c.last, 10))
}

func decodeSyncCursor(s string) (syncCursor, error) {
	if f, err := decodeCursor(s, "d1", 3); err == nil {
		n, err := parseInts(f)
		if err != nil {
			return syncCursor{}, err
		}
		if n[2] <= n[0] || n[2] > n[1] {
			return syncCursor{}, fmt.Errorf("store: %w", ErrBadCursor)
		}
		return syncCursor{since: n[0], upto: n[1], last: n[2]}, nil
	}
	f, err := decodeCursor(s, "s1", 3)
	if err != nil {
		return syncCursor{}, err
	}
	n, err := parseInts(f[:2])
	if err != nil {
		return syncCursor{}, err
	}
	h, err := apikey.ParseHash(f[2])
	if err != nil {
		return syncCursor{}, fmt.Errorf("store: %w", ErrBadCursor)
	}
	return syncCursor{snapshot: true, since: n[0], upto: n[1], hash: h}, nil
}

// placeholders numbers a query's arguments ($1, $2, ...) as a list query
// adds its conditions; both drivers accept the $n form.
type placeholders struct{ args []any }

// add appends v and returns its placeholder.
func (p *placeholders) add(v any) string {
	p.args = append(p.args, v)
	return "$" + strconv.Itoa(len(p.args))
}
