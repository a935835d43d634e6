package wire

import (
	"errors"
	"strconv"

	"github.com/tidwall/gjson"
)

// Problem is an RFC 9457 problem body as both sides write it: "type" is
// ProblemTypePrefix + Code, "error" the stable Code, "detail" the human
// text and "message" its deprecated alias (the same text, for clients
// written before "detail").
type Problem struct {
	Code   string
	Status int
	Title  string
	Detail string
}

// refusals are the filter's problems, one per refusal code.
var refusals = [...]Problem{
	{MissingKey, 401, "Missing API key", "This API needs an API key: send it as 'Authorization: Bearer <key>'."},
	{MalformedKey, 401, "Malformed API key", "The API key is not well-formed (prefix, length, characters or checksum)."},
	{UnknownKey, 401, "Unknown API key", "The API key is not known."},
	{AmbiguousKey, 401, "Ambiguous API key", "The request carries more than one different API key."},
	{KeyRevoked, 401, "API key revoked", "The API key has been revoked."},
	{KeyExpired, 401, "API key expired", "The API key has expired."},
	{KeyDisabled, 401, "API key disabled", "The API key is disabled."},
	{HostNotAllowed, 403, "Host not allowed", "The API key is not allowed for this host."},
	{InsufficientScope, 403, "Insufficient scope", "The API key lacks a scope this route requires."},
	{RateLimited, 429, "Rate limited", "The API key's rate limit is exceeded; retry after the time in Retry-After."},
	{QuotaExceeded, 429, "Quota exceeded", "The API key's quota for this period is used up."},
	{CacheUnavailable, 503, "Key cache unavailable", "API keys cannot be checked right now; retry later."},
	{InvalidPath, 400, "Invalid path", "The request path cannot be normalized: it holds an encoded slash or backslash, an invalid percent-escape, or does not start with '/'."},
	{PolicyUnenforceable, 500, "Rate policy unenforceable", "The API key's rate limit cannot be enforced by this gateway; the key's owner must fix it."},
	{ClientRateLimited, 429, "Too many requests from this client", "Too many requests without an API key from this client address; retry after the time in Retry-After."},
	{TooManyBadKeys, 429, "Too many invalid API keys", "Too many requests with unknown, malformed or revoked API keys from this client address; retry after the time in Retry-After."},
}

// Refusals returns the filter's problem for every refusal code, in the
// order of Outcomes (a new slice on each call).
func Refusals() []Problem { return append([]Problem(nil), refusals[:]...) }

// AppendProblem appends p's body with extra appended to its detail (and
// message). It writes the members in the order type, title, status,
// detail, error, message; extra must need no JSON escaping. No part of
// any key ever reaches it.
func AppendProblem(b []byte, p *Problem, extra string) []byte {
	b = append(b, `{"type":"`+ProblemTypePrefix...)
	b = appendEscaped(b, p.Code)
	b = append(b, '"')
	b = append(b, `,"title":`...)
	b = AppendJSONString(b, p.Title)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(p.Status), 10)
	b = append(b, `,"detail":`...)
	b = appendJSONText(b, p.Detail, extra)
	b = append(b, `,"error":`...)
	b = AppendJSONString(b, p.Code)
	b = append(b, `,"message":`...)
	b = appendJSONText(b, p.Detail, extra)
	return append(b, '}')
}

// appendJSONText appends the JSON string of a+c without concatenating.
func appendJSONText(b []byte, a, c string) []byte {
	b = append(b, '"')
	b = appendEscaped(b, a)
	b = appendEscaped(b, c)
	return append(b, '"')
}

// CheckProblem checks a problem+json body against the shape both sides
// write: "type" is ProblemTypePrefix + "error", "error" a code of at most
// MaxProblemCodeLen lower-case letters and underscores, "status" an error
// status, "title" and "detail" non-empty strings and "message", when
// present, equal to "detail". Other members may follow ("instance",
// "errors").
func CheckProblem(body []byte) error {
	if !gjson.ValidBytes(body) {
		return errors.New("problem: not valid JSON")
	}
	root := gjson.ParseBytes(body)
	if !root.IsObject() {
		return errors.New("problem: not an object")
	}
	code := root.Get("error")
	if code.Type != gjson.String || !validCode(code.Str) {
		return errors.New("problem.error: want a code of [a-z_]")
	}
	if t := root.Get("type"); t.Type != gjson.String || t.Str != ProblemTypePrefix+code.Str {
		return errors.New("problem.type: want " + ProblemTypePrefix + code.Str)
	}
	if st := root.Get("status"); st.Type != gjson.Number || st.Num < 400 || st.Num > 599 || st.Num != float64(int(st.Num)) {
		return errors.New("problem.status: want an error status")
	}
	for _, m := range [...]string{"title", "detail"} {
		if v := root.Get(m); v.Type != gjson.String || v.Str == "" {
			return errors.New("problem." + m + ": want a non-empty string")
		}
	}
	if m := root.Get("message"); m.Exists() && (m.Type != gjson.String || m.Str != root.Get("detail").Str) {
		return errors.New("problem.message: want the same text as detail")
	}
	return nil
}

// ProblemCode returns the "error" code of a problem body, or "" when the
// body is not a problem.
func ProblemCode(body []byte) string {
	if len(body) == 0 || !gjson.ValidBytes(body) {
		return ""
	}
	code := gjson.GetBytes(body, "error")
	if code.Type != gjson.String || !validCode(code.Str) {
		return ""
	}
	return code.Str
}

func validCode(s string) bool {
	if s == "" || len(s) > MaxProblemCodeLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 'a' || c > 'z') && c != '_' {
			return false
		}
	}
	return true
}
