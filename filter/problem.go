package filter

import "github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"

// Outcome codes: "allowed" and the stable refusal codes of the problem
// responses (docs/wire.md uses the same strings for usage counts).
const (
	outcomeAllowed     = "allowed"
	codeMissingKey     = "missing_key"
	codeMalformedKey   = "malformed_key"
	codeUnknownKey     = "unknown_key"
	codeAmbiguousKey   = "ambiguous_key"
	codeKeyRevoked     = "key_revoked"
	codeKeyExpired     = "key_expired"
	codeKeyDisabled    = "key_disabled"
	codeHostNotAllowed = "host_not_allowed"
	codeInsufficient   = "insufficient_scope"
	codeRateLimited    = "rate_limited"
	codeQuotaExceeded  = "quota_exceeded"
	codeCacheDown      = "cache_unavailable"
	codeInvalidPath    = "invalid_path"
	codeUnenforceable  = "policy_unenforceable"
)

// problemTypePrefix makes a problem's "type" URI from its stable code.
const problemTypePrefix = "urn:keygate:problem:"

// problem is one refusal kind with its precomputed RFC 9457 response.
type problem struct {
	code    string
	status  uint32
	title   string
	detail  string
	headers [][2]string
	body    []byte
}

var problems = []*problem{
	{code: codeMissingKey, status: 401, title: "Missing API key", detail: "This API needs an API key: send it as 'Authorization: Bearer <key>'."},
	{code: codeMalformedKey, status: 401, title: "Malformed API key", detail: "The API key is not well-formed (prefix, length, characters or checksum)."},
	{code: codeUnknownKey, status: 401, title: "Unknown API key", detail: "The API key is not known."},
	{code: codeAmbiguousKey, status: 401, title: "Ambiguous API key", detail: "The request carries more than one different API key."},
	{code: codeKeyRevoked, status: 401, title: "API key revoked", detail: "The API key has been revoked."},
	{code: codeKeyExpired, status: 401, title: "API key expired", detail: "The API key has expired."},
	{code: codeKeyDisabled, status: 401, title: "API key disabled", detail: "The API key is disabled."},
	{code: codeHostNotAllowed, status: 403, title: "Host not allowed", detail: "The API key is not allowed for this host."},
	{code: codeInsufficient, status: 403, title: "Insufficient scope", detail: "The API key lacks a scope this route requires."},
	{code: codeRateLimited, status: 429, title: "Rate limited", detail: "The API key's rate limit is exceeded; retry after the time in Retry-After."},
	{code: codeQuotaExceeded, status: 429, title: "Quota exceeded", detail: "The API key's quota for this period is used up."},
	{code: codeCacheDown, status: 503, title: "Key cache unavailable", detail: "API keys cannot be checked right now; retry later."},
	{code: codeInvalidPath, status: 400, title: "Invalid path", detail: "The request path cannot be normalized: it holds an encoded slash or backslash, an invalid percent-escape, or does not start with '/'."},
	{code: codeUnenforceable, status: 500, title: "Rate policy unenforceable", detail: "The API key's rate limit cannot be enforced by this gateway; the key's owner must fix it."},
}

func problemFor(code string) *problem {
	for _, p := range problems {
		if p.code == code {
			return p
		}
	}
	return nil
}

func init() {
	for _, p := range problems {
		p.body = problemBody(p, "")
		p.headers = [][2]string{{"content-type", "application/problem+json"}, {"cache-control", "no-store"}}
		if p.status == 503 {
			p.headers = append(p.headers, [2]string{"retry-after", "5"})
		}
		if p.status == 401 {
			v := `Bearer realm="api"`
			if p.code != codeMissingKey {
				v += `, error="invalid_token"`
			}
			p.headers = append(p.headers, [2]string{"www-authenticate", v})
		}
	}
}

// problemBody renders the RFC 9457 body: "type" urn:keygate:problem:<code>,
// the human text in "detail" (extra appended), the stable code in "error",
// and "message", a deprecated alias of "detail" kept for older clients. No
// part of any key ever reaches it.
func problemBody(p *problem, extra string) []byte {
	b := make([]byte, 0, 320+2*len(p.detail))
	b = append(b, `{"type":"`+problemTypePrefix...)
	b = append(b, p.code...)
	b = append(b, `","title":"`...)
	b = append(b, p.title...)
	b = append(b, `","status":`...)
	b = append(b, itoa(int64(p.status))...)
	b = append(b, `,"detail":"`...)
	b = append(b, p.detail...)
	b = append(b, extra...)
	b = append(b, `","error":"`...)
	b = append(b, p.code...)
	b = append(b, `","message":"`...)
	b = append(b, p.detail...)
	b = append(b, extra...)
	b = append(b, `"}`...)
	return b
}

// sendProblem ends the stream with p's precomputed response.
func sendProblem(p *problem) {
	_ = proxywasm.SendHttpResponse(p.status, p.headers, p.body, -1)
}

// sendRetry ends the stream with a 429 (or 503) that tells when to retry.
func sendRetry(p *problem, retryAfterS int64, extraHeaders [][2]string, extra string) {
	if retryAfterS < 1 {
		retryAfterS = 1
	}
	h := make([][2]string, 0, len(p.headers)+1+len(extraHeaders))
	h = append(h, p.headers...)
	h = append(h, [2]string{"retry-after", itoa(retryAfterS)})
	h = append(h, extraHeaders...)
	_ = proxywasm.SendHttpResponse(p.status, h, problemBody(p, extra), -1)
}
