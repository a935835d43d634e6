// Package store is the control plane's source of truth: keys (hashes only),
// the change log the filters sync from, the audit log and usage rollups.
// One implementation (sqlStore) speaks two SQL dialects and passes one test
// suite on both: SQLite (embedded default, pure Go) and PostgreSQL (several
// control-plane replicas).
package store

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/keygate/keygate/apikey"
)

// Errors every implementation returns (wrapped or as is).
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
	// ErrInvalid is wrapped by every validation error (see FieldError).
	ErrInvalid = errors.New("invalid")
	// ErrBadCursor is wrapped when a pagination cursor is malformed or does
	// not belong to the request it is sent with.
	ErrBadCursor = errors.New("bad cursor")
)

// FieldError is a validation error naming the offending field in wire terms
// (e.g. "counts[3].outcome"). It wraps ErrInvalid.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return "invalid " + e.Field + ": " + e.Message }

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// Key statuses.
const (
	StatusActive   = "active"
	StatusRevoked  = "revoked"
	StatusDisabled = "disabled"
)

// Rate is a rate limit: Limit requests per PeriodMS milliseconds, plus Burst.
type Rate struct {
	Limit    int64 `json:"limit"`
	PeriodMS int64 `json:"period_ms"`
	Burst    int64 `json:"burst"`
}

// NamedRate is one named rate limit of a key or plan (e.g. "burst" 10 per
// second and "sustained" 1000 per hour): a request takes from every limit
// that applies to its route.
type NamedRate struct {
	Name string `json:"name"`
	Rate
}

// Quota is a request budget per UTC day or month.
type Quota struct {
	Limit  int64  `json:"limit"`
	Period string `json:"period"` // "day" or "month"
}

// Key is one API key as stored. Hash is the SHA-256 of the key; the key
// itself is never stored.
type Key struct {
	ID     string
	Hash   apikey.Hash
	Name   string
	Owner  string
	Status string
	Hosts  []string
	Scopes []string
	Rate   *Rate
	Quota  *Quota
	// Limits are the key's named rate limits, sorted by name (never nil).
	Limits    []NamedRate
	ExpiresAt *time.Time
	Metadata  json.RawMessage // a JSON object, or nil
	CreatedAt time.Time
	UpdatedAt time.Time
	// LastUsedAt is maintained by IngestUsage.
	LastUsedAt *time.Time
	// PredecessorID is the key this one was rotated from, SuccessorID the
	// key it was last rotated to, GraceEndsAt when that rotation's grace
	// period ends. All three are maintained by RotateKey only.
	PredecessorID string
	SuccessorID   string
	GraceEndsAt   *time.Time
	// QuotaExhaustedUntil is set by IngestUsage when the fleet's allowed
	// requests in the current quota period reach the quota (the end of the
	// period), and kept consistent by UpdateKey when the quota changes; nil
	// if never exhausted. A time in the past means not exhausted any more.
	QuotaExhaustedUntil *time.Time
	// PlanID is the key's plan, "" for none. Own says which of Rate, Quota,
	// Scopes and Limits are the key's own values (overrides); the store fills the
	// others from the plan whenever the key or its plan is written, so
	// Rate, Quota and Scopes always hold the key's effective limits. A key
	// without a plan owns them all.
	PlanID string
	Own    Own
	// OwnerLimits are the named rate limits of the key's owner, shared by
	// all the owner's keys (SetOwnerLimits); the store fills them in
	// whenever the key is written, from its Owner.
	OwnerLimits []NamedRate
}

// Own is a set of a key's limit fields (Key.Own).
type Own uint8

// The limit fields a key may own or take from its plan.
const (
	OwnRate Own = 1 << iota
	OwnQuota
	OwnScopes
	OwnLimits
	OwnAll = OwnRate | OwnQuota | OwnScopes | OwnLimits
)

// EffectiveExpiry is when the key stops working: the earlier of its own
// expiry and the end of its rotation's grace period; nil if neither.
func (k *Key) EffectiveExpiry() *time.Time {
	switch {
	case k.GraceEndsAt == nil:
		return k.ExpiresAt
	case k.ExpiresAt == nil || k.GraceEndsAt.Before(*k.ExpiresAt):
		return k.GraceEndsAt
	}
	return k.ExpiresAt
}

// RotateFunc decides a rotation on the locked old key (see Store.RotateKey).
// successor is the old key's active successor, or nil. It returns the new
// key and the end of the old key's grace period, or an error that aborts
// the rotation.
type RotateFunc func(old, successor *Key) (newKey *Key, graceEnd time.Time, err error)

// ListFilter selects keys for ListKeys. Cursor is opaque (from a previous
// page); Limit <= 0 means the implementation's default (100), max 1000.
type ListFilter struct {
	Owner  string
	Status string
	Plan   string
	Cursor string
	Limit  int
}

// AuditEntry is one admin action. Detail never holds a secret.
type AuditEntry struct {
	ID     int64
	At     time.Time
	Actor  string // who: "admin" or a credential's name
	Action string // "key.create", "key.revoke", ...
	KeyID  string
	Detail json.RawMessage // a JSON object
}

// AuditFilter selects audit entries, newest first.
type AuditFilter struct {
	KeyID  string
	Cursor string
	Limit  int
}

// Change is one entry of a sync response: an upsert (Key != nil) or a delete
// (Key == nil, Hash set).
type Change struct {
	Hash apikey.Hash
	Key  *Key
	// Budget is the key's rate budget: the id of its rotation lineage's
	// first key, Key.ID for a key never rotated ("" for a delete). The
	// filters name a key's limiter state and fleet share after it
	// (docs/lifecycle.md).
	Budget string
}

// SyncPage is what the sync endpoint sends (see docs/wire.md).
type SyncPage struct {
	Version  int64
	Snapshot bool
	More     bool
	Cursor   string
	Changes  []Change
}

// UsageCount is one line of a usage batch (docs/wire.md).
type UsageCount struct {
	KeyID   string
	Minute  time.Time // start of a UTC minute
	Host    string
	Outcome string // "allowed" or a refusal code
	N       int64
}

// UsageBatch is one flush from one Envoy, identified by (Node, Boot, Seq).
type UsageBatch struct {
	Node   string
	Boot   string
	Seq    int64
	Counts []UsageCount
}

// UsagePoint is one bucket of a usage time series.
type UsagePoint struct {
	Start   time.Time
	Outcome string
	N       int64
}

// UsageTotal is one row of a top-keys report or a key's totals.
type UsageTotal struct {
	KeyID   string
	Allowed int64
	Denied  int64
}

// TopOrder ranks a top-keys report.
type TopOrder int

const (
	// ByTotal ranks keys by allowed+denied requests.
	ByTotal TopOrder = iota
	// ByDenied ranks keys by refused requests; keys without refusals are
	// left out.
	ByDenied
)

// Shares is one node's part of every fleet-wide rate limit (docs/wire.md,
// POST /v1/usage): Keys maps the budget id (the first key of a rotation
// lineage, a key's own id when it was never rotated) of each rate-limited
// key with demand anywhere in the fleet within the share window to the
// node's share in (0, 1]; Default applies to every other rate-limited key. Nodes is the
// number of active nodes the shares were divided among, the asking node
// included.
type Shares struct {
	Keys    map[string]float64
	Default float64
	Nodes   int
}

// Store is what the control plane needs of its database (sqlStore on SQLite
// or PostgreSQL).
//
// Every method that changes a key (create, update, rotate, delete) writes the
// key's change to the change log in the same transaction, so Sync sees it.
type Store interface {
	// Keys.
	CreateKey(ctx context.Context, k *Key) error // ErrConflict on duplicate id or hash
	GetKey(ctx context.Context, id string) (*Key, error)
	ListKeys(ctx context.Context, f ListFilter) (keys []*Key, next string, err error)
	// UpdateKey reads the key, applies fn and writes it back in one
	// transaction; fn returning an error aborts the update.
	UpdateKey(ctx context.Context, id string, fn func(*Key) error) (*Key, error)
	DeleteKey(ctx context.Context, id string) error
	// RotateKey locks the old key and calls fn with it and its active
	// successor (not deleted, not revoked; nil if none), in one
	// transaction: fn refuses (its error aborts the rotation) or returns
	// the new key and the end of the old key's grace period. A key has at
	// most one active successor: if it has one, the rotation fails with
	// ErrConflict whatever fn returns. The new key is stored with the old
	// one's own ExpiresAt (never a grace end) and joins its lineage; the
	// old one's GraceEndsAt is set to graceEnd unless that is later than
	// it was, and its SuccessorID to the new key. Deciding on the locked
	// row means a concurrent revoke, update or rotation is either seen by
	// fn or waits for this one.
	RotateKey(ctx context.Context, oldID string, fn RotateFunc) (old, newKey *Key, err error)

	// Plans (plans.go). DeletePlan fails with a *PlanInUseError
	// (ErrConflict) while keys reference the plan; a key naming an unknown
	// plan fails with a FieldError on plan_id.
	CreatePlan(ctx context.Context, p *Plan) error // ErrConflict on a duplicate id
	GetPlan(ctx context.Context, id string) (*Plan, error)
	ListPlans(ctx context.Context) ([]*Plan, error)
	UpdatePlan(ctx context.Context, id string, fn func(*Plan) error) (*Plan, error)
	DeletePlan(ctx context.Context, id string) error

	// Owner limits (owners.go). SetOwnerLimits replaces an owner's named
	// limits (none: removes them), rewrites them into every key of the
	// owner and logs one change per key, so the filters receive them;
	// it returns the number of keys.
	SetOwnerLimits(ctx context.Context, owner string, limits []NamedRate) (keys int64, err error)
	GetOwnerLimits(ctx context.Context, owner string) (limits []NamedRate, keys int64, err error)

	// Audit.
	AppendAudit(ctx context.Context, e *AuditEntry) error
	ListAudit(ctx context.Context, f AuditFilter) (entries []*AuditEntry, next string, err error)

	// Sync. Sync answers a delta after since, or a (paged) snapshot when
	// since is 0, too old or ahead; limit <= 0 means 2000. WaitForChange
	// blocks until the current version is above since or ctx ends; it must
	// work across replicas sharing one database (polling is fine).
	Sync(ctx context.Context, since int64, cursor string, limit int) (*SyncPage, error)
	CurrentVersion(ctx context.Context) (int64, error)
	WaitForChange(ctx context.Context, since int64) error

	// Usage. IngestUsage merges a batch exactly once: it returns
	// duplicate=true and changes nothing for a batch identity it has seen.
	// In the same transaction it advances each key's LastUsedAt, records
	// the node's demand per key for Shares, adds allowed requests to the
	// keys' quota periods and sets QuotaExhaustedUntil (with a change-log
	// entry) on keys whose quota the fleet has used up.
	IngestUsage(ctx context.Context, b *UsageBatch) (duplicate bool, err error)
	// Shares divides each rate-limited key's rate among the instances
	// active within the share window in proportion to their recent demand
	// (see shares.go) and returns the part of instance (node, boot).
	Shares(ctx context.Context, node, boot string) (*Shares, error)
	// QuotaUsed returns the allowed requests of a key's lineage (the key,
	// the keys it was rotated from and to, deleted ones included) in the
	// UTC quota period ("day" or "month") that contains at: one budget.
	QuotaUsed(ctx context.Context, keyID, period string, at time.Time) (int64, error)
	// UsageSeries returns per-bucket, per-outcome sums for one key ("" for
	// requests with no identified key) in [from, to); step is "minute",
	// "hour" or "day".
	UsageSeries(ctx context.Context, keyID string, from, to time.Time, step string) ([]UsagePoint, error)
	// UsageByHost returns per-host sums for one key in [from, to).
	UsageByHost(ctx context.Context, keyID string, from, to time.Time) (map[string]UsageTotal, error)
	// FleetSeries is UsageSeries over every key, requests without an
	// identified key included.
	FleetSeries(ctx context.Context, from, to time.Time, step string) ([]UsagePoint, error)
	// HostTotals returns the top hosts of the whole fleet by requests in
	// [from, to) (KeyID empty), most first; top <= 0 means 10, at most 1000.
	HostTotals(ctx context.Context, from, to time.Time, top int) (map[string]UsageTotal, error)
	// TopKeys returns the identified keys with the most requests (or
	// refusals) in [from, to).
	TopKeys(ctx context.Context, from, to time.Time, top int, order TopOrder) ([]UsageTotal, error)

	// Instances (instances.go). IngestUsage also refuses, with
	// ErrSeqOutOfRange, a batch of a registered instance whose seq is more
	// than MaxSeqAhead above the highest it accepted from that instance,
	// and records the instance's latest batch.
	RegisterInstance(ctx context.Context, node, boot string, tokenHash [32]byte, maxPerMinute int) (*Instance, error) // ErrConflict, ErrTooMany
	InstanceByToken(ctx context.Context, tokenHash [32]byte) (*Instance, error)                                       // ErrNotFound
	TouchInstanceSync(ctx context.Context, node, boot string) (registered bool, err error)
	ListInstances(ctx context.Context, limit int) ([]*Instance, error)
	LiveInstances(ctx context.Context, top int) (total int, crowded map[string]int, err error)
	LiveNodeAges(ctx context.Context, top int) (*NodeAges, error)
	KeyCounts(ctx context.Context) (map[string]int64, error)
	PruneInstances(ctx context.Context, before time.Time) (removed int64, err error)

	// Settings: small named values (e.g. the admin credential's hash).
	GetSetting(ctx context.Context, name string) (string, error) // ErrNotFound
	SetSettingIfAbsent(ctx context.Context, name, value string) (set bool, err error)

	// Retention. PruneChanges drops change-log entries recorded before
	// before, and all but the newest MaxChangeLogEntries; a filter whose
	// since is older than what remains is answered with a snapshot.
	// PruneUsageBatches forgets usage batch identities received before
	// before (a batch retried after that would count twice, so keep them
	// well beyond the filters' retry horizon). Both return the rows removed.
	PruneChanges(ctx context.Context, before time.Time) (removed int64, err error)
	PruneUsageBatches(ctx context.Context, before time.Time) (removed int64, err error)
	// PruneUsage deletes the usage of minutes before before (the usage
	// retention), and quota days before it that no current quota period
	// reads.
	PruneUsage(ctx context.Context, before time.Time) (removed int64, err error)

	Ping(ctx context.Context) error
	Close() error
}
