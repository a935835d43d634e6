package wire

// Outcome codes: Allowed, the outcome of a request the filter let through,
// and the stable refusal codes of the filter's problem responses. A usage
// count carries one of them as its "outcome"; a problem body carries the
// refusal code as its "error" and in its "type" (ProblemTypePrefix + code).
const (
	Allowed             = "allowed"
	MissingKey          = "missing_key"
	MalformedKey        = "malformed_key"
	UnknownKey          = "unknown_key"
	AmbiguousKey        = "ambiguous_key"
	KeyRevoked          = "key_revoked"
	KeyExpired          = "key_expired"
	KeyDisabled         = "key_disabled"
	HostNotAllowed      = "host_not_allowed"
	InsufficientScope   = "insufficient_scope"
	RateLimited         = "rate_limited"
	QuotaExceeded       = "quota_exceeded"
	CacheUnavailable    = "cache_unavailable"
	InvalidPath         = "invalid_path"
	PolicyUnenforceable = "policy_unenforceable"
	// ClientRateLimited: too many requests without a key from one client
	// address (the filter's client_limits.anonymous).
	ClientRateLimited = "client_rate_limited"
	// TooManyBadKeys: too many requests with unknown, malformed or revoked
	// keys from one client address (client_limits.bad_keys).
	TooManyBadKeys = "too_many_bad_keys"
)

// ProblemTypePrefix makes a problem's "type" URI from its stable code, on
// both sides.
const ProblemTypePrefix = "urn:keygate:problem:"

// Control-plane problem codes the filter acts on (docs/problems.md lists
// the others).
const (
	// SeqOutOfRange (409 on POST /v1/usage): the batch can never be
	// accepted; the filter drops it.
	SeqOutOfRange = "seq_out_of_range"
	// InstanceExists (409 on POST /v1/nodes/register): the filter draws a
	// new boot id.
	InstanceExists = "instance_exists"
	// InstanceTokenRequired (403 on POST /v1/usage with the fleet
	// credential): the filter registers.
	InstanceTokenRequired = "instance_token_required"
)

// outcomes lists every outcome, Allowed first, then the refusals in the
// order of docs/problems.md.
var outcomes = [...]string{
	Allowed, MissingKey, MalformedKey, UnknownKey, AmbiguousKey, KeyRevoked,
	KeyExpired, KeyDisabled, HostNotAllowed, InsufficientScope, RateLimited,
	QuotaExceeded, CacheUnavailable, InvalidPath, PolicyUnenforceable,
	ClientRateLimited, TooManyBadKeys,
}

// Outcomes returns every outcome a usage count may carry: Allowed, then
// each refusal code (a new slice on each call).
func Outcomes() []string { return append([]string(nil), outcomes[:]...) }

// IsOutcome reports whether s is an outcome code. It does not allocate.
func IsOutcome(s string) bool {
	for _, o := range outcomes {
		if o == s {
			return true
		}
	}
	return false
}
