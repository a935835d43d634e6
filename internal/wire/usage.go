package wire

import (
	"strconv"
	"unicode/utf8"
)

// UsageCount is one count of a POST /v1/usage batch.
type UsageCount struct {
	KeyID   string // "" when no key was identified
	Minute  int64  // unix seconds at the start of a UTC minute
	Host    string // "" when unknown
	Outcome string
	N       int64
}

// FieldError names one invalid member of a wire message in wire terms
// (e.g. "counts[3].n") and says why.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// Messages of the usage batch checks, shared by every validator.
var (
	msgNode    = "must be 1 to " + strconv.Itoa(MaxNodeLen) + " bytes of printable UTF-8"
	msgBoot    = "must be 1 to " + strconv.Itoa(MaxBootLen) + " characters of [A-Za-z0-9_-]"
	msgSeq     = "must be at least 1"
	msgCounts  = "at most " + strconv.Itoa(MaxBatchCounts) + " counts per batch"
	msgKeyID   = `must be "" (no key identified) or a key id: 1 to ` + strconv.Itoa(MaxKeyIDLen) + " characters of [A-Za-z0-9_-]"
	msgMinute  = "must be the start of a UTC minute (unix seconds, a positive multiple of 60) up to 9999-12-31"
	msgHost    = "must be at most " + strconv.Itoa(MaxUsageHostLen) + " bytes of printable UTF-8"
	msgOutcome = "must be allowed or a refusal code of docs/wire.md"
	msgN       = "must be 1 to " + strconv.FormatInt(MaxCountN, 10)
)

// CheckNode returns why node is not a node name, or "".
func CheckNode(node string) string {
	if !ValidNode(node) {
		return msgNode
	}
	return ""
}

// CheckBoot returns why boot is not a boot id, or "".
func CheckBoot(boot string) string {
	if !ValidBoot(boot) {
		return msgBoot
	}
	return ""
}

// CheckSeq returns why seq is not a batch's seq, or "".
func CheckSeq(seq int64) string {
	if seq < 1 {
		return msgSeq
	}
	return ""
}

// CheckCountsLen returns why a batch may not hold n counts, or "".
func CheckCountsLen(n int) string {
	if n > MaxBatchCounts {
		return msgCounts
	}
	return ""
}

// CheckUsageHead checks a batch's node, boot, seq and number of counts;
// it returns the first invalid member and why, or "", "".
func CheckUsageHead(node, boot string, seq int64, counts int) (field, message string) {
	switch {
	case !ValidNode(node):
		return "node", msgNode
	case !ValidBoot(boot):
		return "boot", msgBoot
	case seq < 1:
		return "seq", msgSeq
	case counts > MaxBatchCounts:
		return "counts", msgCounts
	}
	return "", ""
}

// CheckUsageCount checks one count; it returns the first invalid member
// (key_id, minute, host, outcome or n) and why, or "", "".
func CheckUsageCount(c *UsageCount) (member, message string) {
	switch {
	case c.KeyID != "" && !ValidKeyID(c.KeyID):
		return "key_id", msgKeyID
	case c.Minute <= 0 || c.Minute%60 != 0 || c.Minute > MaxUsageMinute:
		return "minute", msgMinute
	case len(c.Host) > MaxUsageHostLen || !Printable(c.Host):
		return "host", msgHost
	case !IsOutcome(c.Outcome):
		return "outcome", msgOutcome
	case c.N < 1 || c.N > MaxCountN:
		return "n", msgN
	}
	return "", ""
}

// CountField names member of the i-th count: "counts[3].n".
func CountField(i int, member string) string {
	return "counts[" + strconv.Itoa(i) + "]." + member
}

// CheckUsageBatch checks a whole batch and returns its first error as a
// *FieldError, or nil.
func CheckUsageBatch(node, boot string, seq int64, counts []UsageCount) error {
	if f, m := CheckUsageHead(node, boot, seq, len(counts)); f != "" {
		return &FieldError{Field: f, Message: m}
	}
	for i := range counts {
		if f, m := CheckUsageCount(&counts[i]); f != "" {
			return &FieldError{Field: CountField(i, f), Message: m}
		}
	}
	return nil
}

// AppendUsageHead appends the start of a batch body, up to the opening
// bracket of "counts"; AppendUsageCount appends each count and
// AppendUsageEnd closes the body.
func AppendUsageHead(b []byte, node, boot string, seq int64) []byte {
	b = append(b, `{"node":`...)
	b = AppendJSONString(b, node)
	b = append(b, `,"boot":`...)
	b = AppendJSONString(b, boot)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, seq, 10)
	return append(b, `,"counts":[`...)
}

// AppendUsageCount appends one count object, after a comma unless it is
// the batch's first.
func AppendUsageCount(b []byte, first bool, c *UsageCount) []byte {
	if !first {
		b = append(b, ',')
	}
	b = append(b, `{"key_id":`...)
	b = AppendJSONString(b, c.KeyID)
	b = append(b, `,"minute":`...)
	b = strconv.AppendInt(b, c.Minute, 10)
	b = append(b, `,"host":`...)
	b = AppendJSONString(b, c.Host)
	b = append(b, `,"outcome":`...)
	b = AppendJSONString(b, c.Outcome)
	b = append(b, `,"n":`...)
	b = strconv.AppendInt(b, c.N, 10)
	return append(b, '}')
}

// AppendUsageEnd closes a batch body.
func AppendUsageEnd(b []byte) []byte { return append(b, "]}"...) }

// AppendRegistration appends a POST /v1/nodes/register body.
func AppendRegistration(b []byte, node, boot string) []byte {
	b = append(b, `{"node":`...)
	b = AppendJSONString(b, node)
	b = append(b, `,"boot":`...)
	b = AppendJSONString(b, boot)
	return append(b, '}')
}

// ValidInstanceToken reports whether t looks like an instance token:
// "kgi_" and 43 Base62 characters.
func ValidInstanceToken(t string) bool {
	if len(t) != len(InstanceTokenPrefix)+InstanceTokenChars || t[:len(InstanceTokenPrefix)] != InstanceTokenPrefix {
		return false
	}
	for i := len(InstanceTokenPrefix); i < len(t); i++ {
		c := t[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// The instance token's form: the prefix and that many Base62 characters
// (256 bits).
const (
	InstanceTokenPrefix = "kgi_"
	InstanceTokenChars  = 43
)

// AppendJSONString appends s as a JSON string: '"', '\\' and control
// characters escaped, bytes that are not valid UTF-8 as U+FFFD. It is the
// encoding of every string the wire encoders write.
func AppendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	b = appendEscaped(b, s)
	return append(b, '"')
}

func appendEscaped(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[r>>4], hexDigits[r&15])
		default:
			b = utf8.AppendRune(b, r)
		}
	}
	return b
}
