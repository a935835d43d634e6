package filter

import (
	"github.com/tetratelabs/proxy-wasm-go-sdk/proxywasm"

	"github.com/keygate/keygate/internal/wire"
)

// The outcome codes under the names the request path uses; the strings
// are internal/wire's.
const (
	outcomeAllowed     = wire.Allowed
	codeMissingKey     = wire.MissingKey
	codeMalformedKey   = wire.MalformedKey
	codeUnknownKey     = wire.UnknownKey
	codeAmbiguousKey   = wire.AmbiguousKey
	codeKeyRevoked     = wire.KeyRevoked
	codeKeyExpired     = wire.KeyExpired
	codeKeyDisabled    = wire.KeyDisabled
	codeHostNotAllowed = wire.HostNotAllowed
	codeInsufficient   = wire.InsufficientScope
	codeRateLimited    = wire.RateLimited
	codeQuotaExceeded  = wire.QuotaExceeded
	codeCacheDown      = wire.CacheUnavailable
	codeInvalidPath    = wire.InvalidPath
	codeUnenforceable  = wire.PolicyUnenforceable
	codeClientLimited  = wire.ClientRateLimited
	codeBadKeys        = wire.TooManyBadKeys
)

// problem is one refusal kind (wire.Refusals) with its precomputed
// response.
type problem struct {
	wire.Problem
	code    string
	status  uint32
	headers [][2]string
	body    []byte
}

var problems = func() []*problem {
	rs := wire.Refusals()
	ps := make([]*problem, len(rs))
	for i := range rs {
		ps[i] = &problem{Problem: rs[i], code: rs[i].Code, status: uint32(rs[i].Status)}
	}
	return ps
}()

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

// problemBody renders p's RFC 9457 body (wire.AppendProblem) with extra
// appended to its detail.
func problemBody(p *problem, extra string) []byte {
	return wire.AppendProblem(make([]byte, 0, 320+2*(len(p.Detail)+len(extra))), &p.Problem, extra)
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
