package keyrecord

import (
	"errors"

	"github.com/tidwall/gjson"

	"github.com/keygate/keygate/apikey"
	"github.com/keygate/keygate/internal/wire"
)

// DecodeUpsert turns one element of a sync response's "upserts" array
// (wire.DecodeUpsert, docs/wire.md) into the key hash and the record to
// store. Any JSON gives a record or an error naming the member, never a
// panic; the hash is set whenever it could be read, so that the caller can
// fail closed for that key.
func DecodeUpsert(obj gjson.Result, epoch uint32) (apikey.Hash, Record, error) {
	var u wire.Upsert
	err := wire.DecodeUpsert(obj, &u)
	var h apikey.Hash
	if u.Hash != "" {
		var herr error
		if h, herr = apikey.ParseHash(u.Hash); herr != nil {
			return apikey.Hash{}, Record{}, errors.New("upsert.hash: want 64 hex characters")
		}
	}
	if err != nil {
		return h, Record{}, err
	}
	return h, FromUpsert(&u, epoch), nil
}

// FromUpsert is the record of a sync record that passed wire.CheckUpsert.
func FromUpsert(u *wire.Upsert, epoch uint32) Record {
	r := Record{ID: u.ID, Owner: u.Owner, Budget: u.Budget, ExpiresAt: u.ExpiresAt,
		Hosts: u.Hosts, Scopes: u.Scopes, Epoch: epoch}
	if r.Budget == r.ID {
		r.Budget = "" // the default, stored in no bytes
	}
	switch u.Status {
	case wire.StatusActive:
		r.Status = StatusActive
	case wire.StatusRevoked:
		r.Status = StatusRevoked
	default:
		r.Status = StatusDisabled
	}
	if u.Rate != nil {
		r.HasRate = true
		r.RateLimit, r.RatePeriodMS, r.RateBurst = u.Rate.Limit, u.Rate.PeriodMS, u.Rate.Burst
	}
	for _, l := range u.Limits {
		r.Limits = append(r.Limits, Limit{Name: l.Name, Limit: l.Limit, PeriodMS: l.PeriodMS, Burst: l.Burst})
	}
	for _, l := range u.OwnerLimits {
		r.OwnerLimits = append(r.OwnerLimits, Limit{Name: l.Name, Limit: l.Limit, PeriodMS: l.PeriodMS, Burst: l.Burst})
	}
	if u.Quota != nil {
		r.HasQuota = true
		r.QuotaLimit, r.QuotaExhausted = u.Quota.Limit, u.Quota.ExhaustedUntil
		r.QuotaPeriod = QuotaDay
		if u.Quota.Period == wire.QuotaMonth {
			r.QuotaPeriod = QuotaMonth
		}
	}
	return r
}
