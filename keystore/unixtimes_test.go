package keystore

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// The in-memory int64 times encode exactly as the []time.Time (UTC) that
// every earlier version wrote into key records, so records written before
// and after this change are the same bytes and read the same.
func TestUnixTimes_SameJSONAsTime(t *testing.T) {
	old := struct {
		CreatedAt time.Time   `json:"created_at"`
		Versions  []time.Time `json:"versions"`
	}{
		CreatedAt: time.Date(2026, 12, 6, 12, 0, 0, 123456789, time.UTC),
		Versions:  []time.Time{time.Date(2026, 12, 6, 12, 0, 0, 123456789, time.UTC), time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2027, 1, 2, 3, 4, 5, 600, time.UTC)},
	}
	oldJSON, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	var m keyMeta
	if err := json.Unmarshal(oldJSON, &m); err != nil {
		t.Fatal(err)
	}
	if !m.CreatedAt.Time().Equal(old.CreatedAt) || len(m.Versions) != 3 || !m.Versions.At(2).Equal(old.Versions[2]) {
		t.Fatalf("decoded %v %v", m.CreatedAt.Time(), m.Versions)
	}
	again, err := json.Marshal(struct {
		CreatedAt unixTime  `json:"created_at"`
		Versions  unixTimes `json:"versions"`
	}{m.CreatedAt, m.Versions})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, oldJSON) {
		t.Fatalf("re-encoded\n%s\nwant\n%s", again, oldJSON)
	}
	// nil and empty as []time.Time: null and [].
	for _, v := range []unixTimes{nil, {}} {
		got, _ := json.Marshal(v)
		want, _ := json.Marshal([]time.Time(v.times()))
		if !bytes.Equal(got, want) {
			t.Fatalf("%#v: %s, want %s", v, got, want)
		}
	}
	// A time no clock made (outside UnixNano's range) is refused, not
	// silently changed.
	if err := json.Unmarshal([]byte(`{"created_at":"0001-01-01T00:00:00Z","versions":[]}`), &m); err == nil {
		t.Fatal("year 1 accepted")
	}
	if err := json.Unmarshal([]byte(`{"versions":["3000-01-01T00:00:00Z"]}`), &m); err == nil {
		t.Fatal("year 3000 accepted")
	}
}

// times is u as []time.Time (nil stays nil), for comparisons in tests.
func (u unixTimes) times() []time.Time {
	if u == nil {
		return nil
	}
	out := make([]time.Time, len(u))
	for i := range u {
		out[i] = u.At(i)
	}
	return out
}

// FuzzUnixTimes: whatever []time.Time decodes with times in range,
// unixTimes decodes to the same instants and encodes as []time.Time in UTC
// does; whatever it refuses, []time.Time refused or held a time out of
// range. No input panics.
func FuzzUnixTimes(f *testing.F) {
	f.Add([]byte(`["2026-12-06T12:00:00.123456789Z","2027-01-01T00:00:00+01:00"]`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`["0001-01-01T00:00:00Z"]`))
	f.Add([]byte(`["2262-04-11T23:47:16.854775807Z"]`))
	f.Add([]byte(`[1,2]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var ts []time.Time
		errT := json.Unmarshal(b, &ts)
		var u unixTimes
		errU := json.Unmarshal(b, &u)
		if errT != nil {
			if errU == nil {
				t.Fatalf("%q: unixTimes accepted what []time.Time refused", b)
			}
			return
		}
		if errU != nil {
			for _, tm := range ts {
				if _, err := toUnixNano(tm); err != nil {
					return
				}
			}
			t.Fatalf("%q: refused in-range times: %v", b, errU)
		}
		if len(u) != len(ts) || (u == nil) != (ts == nil) {
			t.Fatalf("%q: %d times, want %d", b, len(u), len(ts))
		}
		utc := make([]time.Time, 0, len(ts))
		for i, tm := range ts {
			if !u.At(i).Equal(tm) {
				t.Fatalf("%q: time %d is %v, want %v", b, i, u.At(i), tm)
			}
			utc = append(utc, tm.UTC())
		}
		if ts == nil {
			utc = nil
		}
		got, err := json.Marshal(u)
		if err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(utc)
		if err != nil {
			return // a time.Time whose year has no RFC 3339 form; unixTimes cannot hold one
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%q: encoded %s, want %s", b, got, want)
		}
	})
}
