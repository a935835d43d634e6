package keyrecord

import (
	"errors"
	"math"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/internal/wire"

	"github.com/tidwall/gjson"
)

// DecodeUpsert turns one element of a sync response's "upserts" array
// (docs/wire.md) into the key hash and the record to store. Any JSON gives a
// record or an error naming the member, never a panic.
func DecodeUpsert(obj gjson.Result, epoch uint32) (apikey.Hash, Record, error) {
	var r Record
	if !obj.IsObject() {
		return apikey.Hash{}, r, errors.New("upsert is not an object")
	}
	hashField := obj.Get("hash")
	if hashField.Type != gjson.String {
		return apikey.Hash{}, r, errors.New("upsert.hash: want a string")
	}
	h, err := apikey.ParseHash(hashField.Str)
	if err != nil {
		return apikey.Hash{}, r, errors.New("upsert.hash: want 64 hex characters")
	}
	if r.ID, err = str(obj, "id", true); err != nil {
		return h, r, err
	}
	if r.Owner, err = str(obj, "owner", false); err != nil {
		return h, r, err
	}
	// An older control plane sends no budget: the key is its own budget.
	if r.Budget, err = str(obj, "budget", false); err != nil {
		return h, r, err
	}
	if r.Budget == r.ID {
		r.Budget = "" // the default, stored in no bytes
	}
	switch status := obj.Get("status"); status.Str {
	case "active":
		r.Status = StatusActive
	case "revoked":
		r.Status = StatusRevoked
	case "disabled":
		r.Status = StatusDisabled
	default:
		return h, r, errors.New("upsert.status: want active, revoked or disabled")
	}
	if r.ExpiresAt, err = integer(obj.Get("expires_at"), "upsert.expires_at", false); err != nil {
		return h, r, err
	}
	if r.Hosts, err = strList(obj.Get("hosts"), "upsert.hosts"); err != nil {
		return h, r, err
	}
	if r.Scopes, err = strList(obj.Get("scopes"), "upsert.scopes"); err != nil {
		return h, r, err
	}
	if rate := obj.Get("rate"); rate.Exists() && rate.Type != gjson.Null {
		if !rate.IsObject() {
			return h, r, errors.New("upsert.rate: want an object or null")
		}
		r.HasRate = true
		if r.RateLimit, err = integer(rate.Get("limit"), "upsert.rate.limit", true); err != nil {
			return h, r, err
		}
		if r.RatePeriodMS, err = integer(rate.Get("period_ms"), "upsert.rate.period_ms", true); err != nil {
			return h, r, err
		}
		if r.RatePeriodMS == 0 {
			return h, r, errors.New("upsert.rate.period_ms: must be positive")
		}
		if r.RateBurst, err = integer(rate.Get("burst"), "upsert.rate.burst", false); err != nil {
			return h, r, err
		}
	}
	if quota := obj.Get("quota"); quota.Exists() && quota.Type != gjson.Null {
		if !quota.IsObject() {
			return h, r, errors.New("upsert.quota: want an object or null")
		}
		r.HasQuota = true
		if r.QuotaLimit, err = integer(quota.Get("limit"), "upsert.quota.limit", true); err != nil {
			return h, r, err
		}
		switch quota.Get("period").Str {
		case "day":
			r.QuotaPeriod = QuotaDay
		case "month":
			r.QuotaPeriod = QuotaMonth
		default:
			return h, r, errors.New("upsert.quota.period: want day or month")
		}
		if r.QuotaExhausted, err = integer(quota.Get("exhausted_until"), "upsert.quota.exhausted_until", false); err != nil {
			return h, r, err
		}
	}
	if r.Limits, err = limitList(obj.Get("limits"), "upsert.limits"); err != nil {
		return h, r, err
	}
	if r.OwnerLimits, err = limitList(obj.Get("owner_limits"), "upsert.owner_limits"); err != nil {
		return h, r, err
	}
	r.Epoch = epoch
	return h, r, nil
}

// limitList reads the "limits" member: named rate limits with distinct
// valid names (absent or null: none).
func limitList(v gjson.Result, field string) ([]Limit, error) {
	if !v.Exists() || v.Type == gjson.Null {
		return nil, nil
	}
	if !v.IsArray() {
		return nil, errors.New(field + ": want an array")
	}
	var out []Limit
	var err error
	v.ForEach(func(_, item gjson.Result) bool {
		if len(out) == wire.MaxLimits {
			err = errors.New(field + ": too many named limits")
			return false
		}
		if !item.IsObject() {
			err = errors.New(field + ": want objects")
			return false
		}
		var l Limit
		name := item.Get("name")
		if name.Type != gjson.String || !wire.ValidLimitName(name.Str) {
			err = errors.New(field + ".name: want a limit name")
			return false
		}
		for _, prev := range out {
			if prev.Name == name.Str {
				err = errors.New(field + ".name: duplicate")
				return false
			}
		}
		l.Name = name.Str
		if l.Limit, err = integer(item.Get("limit"), field+".limit", true); err != nil {
			return false
		}
		if l.PeriodMS, err = integer(item.Get("period_ms"), field+".period_ms", true); err != nil {
			return false
		}
		if l.PeriodMS == 0 {
			err = errors.New(field + ".period_ms: must be positive")
			return false
		}
		if l.Burst, err = integer(item.Get("burst"), field+".burst", false); err != nil {
			return false
		}
		out = append(out, l)
		return true
	})
	return out, err
}

func str(obj gjson.Result, name string, required bool) (string, error) {
	v := obj.Get(name)
	if !v.Exists() && !required {
		return "", nil
	}
	if v.Type != gjson.String || (required && v.Str == "") {
		return "", errors.New("upsert." + name + ": want a non-empty string")
	}
	if len(v.Str) > MaxStringLen {
		return "", errors.New("upsert." + name + ": too long")
	}
	return v.Str, nil
}

// integer reads a non-negative integer member; absent means 0 unless required.
func integer(v gjson.Result, name string, required bool) (int64, error) {
	if !v.Exists() || v.Type == gjson.Null {
		if required {
			return 0, errors.New(name + ": required")
		}
		return 0, nil
	}
	if v.Type != gjson.Number || v.Num < 0 || v.Num != math.Trunc(v.Num) || v.Num > 1<<53 {
		return 0, errors.New(name + ": want a non-negative integer")
	}
	return int64(v.Num), nil
}

func strList(v gjson.Result, name string) ([]string, error) {
	if !v.Exists() || v.Type == gjson.Null {
		return nil, nil
	}
	if !v.IsArray() {
		return nil, errors.New(name + ": want an array of strings")
	}
	var out []string
	var err error
	v.ForEach(func(_, item gjson.Result) bool {
		if item.Type != gjson.String || item.Str == "" || len(item.Str) > MaxStringLen {
			err = errors.New(name + ": want non-empty strings")
			return false
		}
		if len(out) == MaxListLen {
			err = errors.New(name + ": too many entries")
			return false
		}
		out = append(out, item.Str)
		return true
	})
	return out, err
}
