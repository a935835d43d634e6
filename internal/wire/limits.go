package wire

// Limits of the wire formats (docs/wire.md). Where the two sides once
// differed, the stricter rule that every value ever stored still meets was
// kept (docs/wire.md, "Where the two sides used to differ").
const (
	// MaxSyncBody is the largest GET /v1/sync response body: Envoy buffers
	// callout bodies, and the control plane shrinks a page to stay under it.
	MaxSyncBody = 1 << 20
	// MaxSyncLimit is the largest and default records per sync page.
	MaxSyncLimit = 2000
	// MaxSyncWait is the longest long poll, in seconds.
	MaxSyncWait = 60
	// MaxCursorLen bounds a sync page's opaque cursor.
	MaxCursorLen = 1024

	// MaxNodeLen bounds a node name, in bytes of printable UTF-8.
	MaxNodeLen = 128
	// MaxBootLen bounds a boot id of [A-Za-z0-9_-].
	MaxBootLen = 64
	// MaxKeyIDLen bounds a key id of [A-Za-z0-9_-]. The control plane
	// issues "key_" and 20 Base62 characters, and always has.
	MaxKeyIDLen = 64
	// MaxUsageHostLen bounds a usage count's host, in bytes of printable
	// UTF-8.
	MaxUsageHostLen = 255
	// MaxCountN bounds one count's n, so that sums cannot overflow.
	MaxCountN = 1_000_000_000_000
	// MaxBatchCounts bounds the counts of one usage batch.
	MaxBatchCounts = 10_000
	// MaxUsageBody bounds a usage batch body in bytes.
	MaxUsageBody = 4 << 20
	// MaxUsageMinute is the latest usage minute, 9999-12-31T23:59:00Z
	// (later times cannot be written as RFC 3339).
	MaxUsageMinute = 253402300740

	// MaxHosts bounds a key's host patterns; MaxHostPatternLen each one.
	MaxHosts          = 100
	MaxHostPatternLen = 253
	// MaxScopes bounds a key's scopes; MaxScopeLen each one.
	MaxScopes   = 50
	MaxScopeLen = 64
	// MaxOwnerLen bounds a key's owner (and name), in characters of
	// printable UTF-8.
	MaxOwnerLen = 200

	// MaxRateLimit, MaxRateBurst and MaxRatePeriodMS bound a rate policy;
	// CheckRate also asks the limiter whether it can enforce it.
	MaxRateLimit    = 1_000_000_000
	MaxRateBurst    = 1_000_000_000
	MaxRatePeriodMS = 24 * 60 * 60 * 1000
	// MaxQuotaLimit bounds a quota's requests per period.
	MaxQuotaLimit = 1_000_000_000_000
	// MaxWireInt is the largest integer a sync record member may hold: a
	// JSON number exact as a double.
	MaxWireInt = 1 << 53

	// MaxPlanIDLen bounds a plan id of [a-z0-9_-] (docs/plans.md).
	MaxPlanIDLen = 64
	// MaxLimits bounds a key's or plan's named rate limits; MaxLimitNameLen
	// each one's name, of [a-z0-9_-].
	MaxLimits       = 4
	MaxLimitNameLen = 32

	// MaxProblemCodeLen bounds a problem's "error" code the filter reads.
	MaxProblemCodeLen = 64
)
