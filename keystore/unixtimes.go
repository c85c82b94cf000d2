package keystore

import (
	"encoding/json"
	"fmt"
	"time"
)

// unixTimes are a key's version creation times as Unix nanoseconds (UTC):
// 8 bytes a version in memory instead of a time.Time's 24 with a pointer
// the collector scans (issue 15, memory round 2). In a record they are
// JSON exactly as []time.Time in UTC encodes (RFC 3339 with nanoseconds,
// "Z"), which is what every version wrote, so records read and write the
// same across versions.
type unixTimes []int64

// unixTime is a key's creation time, as unixTimes are its versions'.
type unixTime int64

func (u unixTime) Time() time.Time { return time.Unix(0, int64(u)).UTC() }

func (u unixTime) MarshalJSON() ([]byte, error) { return u.Time().MarshalJSON() }

func (u *unixTime) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil // as time.Time does: leaves the value alone
	}
	var t time.Time
	if err := t.UnmarshalJSON(b); err != nil {
		return err
	}
	n, err := toUnixNano(t)
	if err != nil {
		return err
	}
	*u = unixTime(n)
	return nil
}

// toUnixNano is t as Unix nanoseconds. UnixNano is undefined outside
// 1678–2262; no writer made such a creation time (they come from the
// clock), so it is a corrupt record.
func toUnixNano(t time.Time) (int64, error) {
	n := t.UnixNano()
	if !time.Unix(0, n).Equal(t) {
		return 0, fmt.Errorf("time %s out of range", t.UTC().Format(time.RFC3339))
	}
	return n, nil
}

// At is version i+1's creation time.
func (u unixTimes) At(i int) time.Time { return time.Unix(0, u[i]).UTC() }

func (u unixTimes) MarshalJSON() ([]byte, error) {
	if u == nil {
		return []byte("null"), nil
	}
	out := make([]byte, 0, 2+len(u)*33)
	out = append(out, '[')
	for i := range u {
		if i > 0 {
			out = append(out, ',')
		}
		b, err := u.At(i).MarshalJSON()
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	return append(out, ']'), nil
}

func (u *unixTimes) UnmarshalJSON(b []byte) error {
	var ts []time.Time
	if err := json.Unmarshal(b, &ts); err != nil {
		return err
	}
	if ts == nil {
		*u = nil
		return nil
	}
	out := make(unixTimes, len(ts))
	for i, t := range ts {
		n, err := toUnixNano(t)
		if err != nil {
			return err
		}
		out[i] = n
	}
	*u = out
	return nil
}
