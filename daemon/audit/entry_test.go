package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 28, 18, 0, 0, 123456789, time.UTC)

func sampleEntry() *Entry {
	return &Entry{
		Seq: 42, Time: t0, NodeID: "node1", Type: TypeRequest, RequestID: "ab12-2a", Operation: "wrap",
		Caller: &Caller{UID: 1001, GID: 1001, PID: 4242, Unit: "billing.service"},
		Key:    "billing-db", KeyVersion: 3, Outcome: OutcomeOK,
		HMAC:     map[string]string{"aad": "hmac-sha256:00ff"},
		PrevHash: GenesisHash,
	}
}

// rehash replaces the hash at the end of line (no newline) with the hash
// of its new body, as a forger who knows the format would.
func rehash(t *testing.T, line []byte) []byte {
	t.Helper()
	body := line[:len(line)-hashSuffixLen]
	sum := sha256.Sum256(body)
	out := append([]byte(nil), body...)
	out = append(out, `,"hash":"sha256:`...)
	out = append(out, hex.EncodeToString(sum[:])...)
	return append(out, `"}`...)
}

func TestEncode_Format(t *testing.T) {
	e := sampleEntry()
	line := Encode(e)
	want := `{"seq":42,"time":"2026-11-28T18:00:00.123Z","node_id":"node1","type":"request","request_id":"ab12-2a","operation":"wrap",` +
		`"caller":{"uid":1001,"gid":1001,"pid":4242,"unit":"billing.service"},"key":"billing-db","key_version":3,"outcome":"ok","error_code":"",` +
		`"hmac":{"aad":"hmac-sha256:00ff"},"prev_hash":"` + GenesisHash + `","hash":"` + e.Hash + "\"}\n"
	if got := string(line); got != want {
		t.Fatalf("line:\n%s\nwant:\n%s", got, want)
	}
	body := line[:len(line)-1-hashSuffixLen]
	sum := sha256.Sum256(body)
	if got, exp := e.Hash, HashPrefix+hex.EncodeToString(sum[:]); got != exp {
		t.Fatalf("hash %s, want %s (sha256 of everything before the hash field)", got, exp)
	}
}

func TestEncodeParse_RoundTrip(t *testing.T) {
	for _, c := range []struct {
		name string
		mod  func(e *Entry)
	}{
		{"request", func(e *Entry) {}},
		{"event without caller", func(e *Entry) {
			e.Type, e.Caller, e.RequestID, e.Key, e.KeyVersion, e.HMAC = TypeEvent, nil, "", "", 0, nil
			e.Detail = map[string]string{"rule": "denied", "count": "11", "window": "1m0s"}
		}},
		{"denied with error code", func(e *Entry) { e.Outcome, e.ErrorCode = OutcomeDenied, "permission_denied" }},
		{"escapes", func(e *Entry) {
			e.Caller.Unit = "we\"ird\\unit\n\x01\x7f\u2028é"
			e.Detail = map[string]string{"z": "last", "a": "first\t", "ü": "ß"}
		}},
		{"invalid utf-8 becomes U+FFFD", func(e *Entry) { e.Caller.Unit = "bad\xffunit" }},
		{"max numbers", func(e *Entry) {
			e.Seq = 1<<64 - 1
			e.Caller = &Caller{UID: 1<<32 - 1, GID: 0, PID: -1}
			e.KeyVersion = 1<<31 - 1
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := sampleEntry()
			c.mod(e)
			line := Encode(e)
			got, err := ParseLine(bytes.TrimSuffix(line, []byte("\n")))
			if err != nil {
				t.Fatalf("ParseLine(%s): %v", line, err)
			}
			want := *e
			want.Time = e.Time.Truncate(time.Millisecond)
			if want.Caller != nil {
				c := *want.Caller
				c.Unit = strings.ToValidUTF8(c.Unit, "\ufffd")
				want.Caller = &c
			}
			if len(want.HMAC) == 0 {
				want.HMAC = map[string]string{}
			}
			if !reflect.DeepEqual(*got, want) {
				t.Fatalf("parsed %+v\nwant   %+v", *got, want)
			}
			if again := Encode(got); !bytes.Equal(again, line) {
				t.Fatalf("re-encoded differs:\n%s\n%s", again, line)
			}
		})
	}
}

func TestParseLine_Rejects(t *testing.T) {
	good := bytes.TrimSuffix(Encode(sampleEntry()), []byte("\n"))
	edit := func(old, new string) func(t *testing.T) []byte {
		return func(t *testing.T) []byte {
			if !bytes.Contains(good, []byte(old)) {
				t.Fatalf("sample has no %q", old)
			}
			return bytes.Replace(good, []byte(old), []byte(new), 1)
		}
	}
	edited := func(old, new string) func(t *testing.T) []byte {
		return func(t *testing.T) []byte { return rehash(t, edit(old, new)(t)) }
	}
	for _, c := range []struct {
		name string
		line func(t *testing.T) []byte
		kind string
	}{
		{"empty", func(*testing.T) []byte { return nil }, KindMalformed},
		{"cut short", func(*testing.T) []byte { return good[:len(good)/2] }, KindTruncated},
		{"hash removed", func(*testing.T) []byte { return append(good[:len(good)-hashSuffixLen:len(good)-hashSuffixLen], '}') }, KindTruncated},
		{"uppercase hash", func(*testing.T) []byte { return []byte(strings.ToUpper(string(good))) }, KindTruncated},
		{"field edited", edit(`"key_version":3`, `"key_version":4`), KindEdited},
		{"field edited, hash recomputed, still canonical", edited(`"key_version":3`, `"key_version":4`), ""},
		{"whitespace added", edited(`"seq":42,`, `"seq": 42,`), KindEdited},
		{"fields reordered", edited(`"node_id":"node1","type":"request"`, `"type":"request","node_id":"node1"`), KindEdited},
		{"unknown field", edited(`"key":"billing-db"`, `"key":"billing-db","note":"x"`), KindMalformed},
		{"number as string", edited(`"key_version":3`, `"key_version":"3"`), KindMalformed},
		{"number with exponent", edited(`"key_version":3`, `"key_version":3e0`), KindMalformed},
		{"bad outcome", edited(`"outcome":"ok"`, `"outcome":"fine"`), KindEdited},
		{"bad type", edited(`"type":"request"`, `"type":"other"`), KindEdited},
		{"seq zero", edited(`"seq":42`, `"seq":0`), KindEdited},
		{"time not canonical", edited(`18:00:00.123Z`, `18:00:00.1Z`), KindEdited},
		{"time with offset", edited(`18:00:00.123Z`, `19:00:00.123+01:00`), KindEdited},
		{"bad prev_hash", edited(GenesisHash, "sha256:abc"), KindEdited},
		{"null hmac", edited(`"hmac":{"aad":"hmac-sha256:00ff"}`, `"hmac":null`), KindEdited},
		{"empty detail", edited(`"prev_hash"`, `"detail":{},"prev_hash"`), KindEdited},
		{"escaped differently", edited(`"node1"`, `"node\u0031"`), KindEdited},
		{"not json", func(t *testing.T) []byte {
			return rehash(t, []byte(`garbage garbage garbage garbage garbage garbage garbage garbage garbage garbage garbage`))
		}, KindMalformed},
		{"two objects", func(t *testing.T) []byte {
			return rehash(t, append([]byte(`{"seq":1}`), good...))
		}, KindMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, err := ParseLine(c.line(t))
			if c.kind == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			var le *LineError
			if !errors.As(err, &le) || e != nil {
				t.Fatalf("ParseLine = %v, %v; want a *LineError and no entry", e, err)
			}
			if got, exp := le.Kind, c.kind; got != exp {
				t.Fatalf("kind %q (%v), want %q", got, err, exp)
			}
		})
	}
}

func TestAppendTime(t *testing.T) {
	for _, tm := range []time.Time{t0, time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2026, 3, 4, 5, 6, 7, 8e6, time.FixedZone("x", 3600)), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(-5, 1, 1, 0, 0, 0, 0, time.UTC)} {
		if got, exp := string(appendTime(nil, tm)), tm.UTC().Format(TimeLayout); got != exp {
			t.Errorf("appendTime(%v) = %s, want %s", tm, got, exp)
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	e := sampleEntry()
	b.ReportAllocs()
	for b.Loop() {
		Encode(e)
	}
}
