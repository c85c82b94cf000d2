package keystore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
)

func sha256Sum(b []byte) []byte { d := sha256.Sum256(b); return d[:] }

// macKey is the snapshot MAC key of an unsealed keystore (for tests).
func (ks *Keystore) macKey() ([]byte, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.macKeyLocked()
}

// jsonSnapshot is the encoding/json form the streamed encoder must match
// byte for byte (the format older versions write and read; the MAC's
// digest is over these bytes).
func jsonSnapshot(t testing.TB, s *Snapshot) []byte {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(s); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// loadedSnapshot is a snapshot of a keystore with every kind of record and
// replicated state: keys, a deleted key (tombstone), a policy, a secret,
// an enrolment token, a revoked node.
func loadedSnapshot(t testing.TB) (*Keystore, *Snapshot) {
	ks := newKS(t, nil)
	mustInit(t, ks)
	ctx := context.Background()
	mustCreate(t, ks, "a", "")
	mustCreate(t, ks, "b", "chacha20-poly1305")
	if _, err := ks.RotateKey(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, ks, "gone", "")
	if _, err := ks.DeleteKey(ctx, "gone", MinPendingWindow); err != nil {
		t.Fatal(err)
	}
	ks.cfg.Now = func() time.Time { return time.Now().Add(MinPendingWindow + time.Hour) }
	if ok, err := ks.PurgeKey(ctx, "gone"); !ok || err != nil {
		t.Fatalf("purge: %v %v", ok, err)
	}
	ks.cfg.Now = time.Now
	if err := ks.PutPolicy(ctx, "p", api.Policy{Keys: []string{"a"}, Operations: []string{"wrap"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ks.PutSecret(ctx, "db-pw", []byte("s3cret<&>"), nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ks.IssueEnrolToken(ctx, "node9", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := ks.RevokeNode(ctx, "node8"); err != nil {
		t.Fatal(err)
	}
	s := ks.Snapshot()
	if len(s.Tombs) == 0 || s.Trust == nil || len(s.Entries) < 4 {
		t.Fatalf("fixture lacks state: %+v", s)
	}
	return ks, s
}

// TestSnapshotEncode_SameAsJSON: the streamed snapshot is byte for byte
// what encoding/json writes, without and with a MAC, and its digest is
// SHA-256 of json.Marshal of the snapshot without the MAC.
func TestSnapshotEncode_SameAsJSON(t *testing.T) {
	ks, s := loadedSnapshot(t)
	var got bytes.Buffer
	if _, err := s.WriteTo(&got); err != nil {
		t.Fatal(err)
	}
	if want := jsonSnapshot(t, s); !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("streamed snapshot differs from encoding/json:\n got %s\nwant %s", got.Bytes(), want)
	}

	// With the MAC: SnapshotTo computes it while streaming; it must be the
	// MAC of the snapshot's digest, placed where json.Marshal puts it.
	var authed bytes.Buffer
	if err := ks.SnapshotTo()(&authed); err != nil {
		t.Fatal(err)
	}
	var back Snapshot
	if err := json.Unmarshal(authed.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.MAC) == 0 {
		t.Fatal("an unsealed node's snapshot carries no MAC")
	}
	if want := jsonSnapshot(t, &back); !bytes.Equal(authed.Bytes(), want) {
		t.Fatalf("authenticated snapshot differs from encoding/json:\n got %s\nwant %s", authed.Bytes(), want)
	}
	mac := back.MAC
	back.MAC = nil
	plain, _ := json.Marshal(&back)
	k, err := ks.macKey()
	if err != nil {
		t.Fatal(err)
	}
	defer clear(k)
	old := back
	if err := old.authenticate(k); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(old.MAC, mac) {
		t.Fatal("the streamed MAC is not the MAC of the snapshot's digest")
	}
	d, _ := back.digest()
	if want := sha256Sum(plain); !bytes.Equal(d, want) {
		t.Fatal("digest is not SHA-256 of json.Marshal without the MAC")
	}

	// A restore of the streamed, authenticated snapshot works (and checks
	// the MAC over the re-encoded digest).
	if err := ks.RestoreRemote(bytes.NewReader(authed.Bytes())); err != nil {
		t.Fatal(err)
	}

	// Edge cases encoding/json treats specially: nil and empty data, map
	// keys that need escaping, a nil entries map.
	odd := &Snapshot{Format: 1, Entries: map[string]Entry{
		"keys/<a&b>":  {Version: 1, Term: 2, Data: []byte{}},
		"x\"y\\z":     {Version: 18446744073709551615, Term: 4294967295},
		"é\u2028\x01": {Version: 3, Data: []byte{0, 1, 2, 250}},
		"\xff":        {},
		"":            {Data: []byte("x")},
	}, Tombs: map[string]uint64{"keys/q": 2}}
	for _, s := range []*Snapshot{odd, {Format: 1}, {}} {
		var got bytes.Buffer
		if _, err := s.WriteTo(&got); err != nil {
			t.Fatal(err)
		}
		if want := jsonSnapshot(t, s); !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("differs from encoding/json:\n got %s\nwant %s", got.Bytes(), want)
		}
	}
}

// FuzzSnapshotEncode: for any snapshot encoding/json can decode, the
// streamed encoding is what encoding/json writes for it.
func FuzzSnapshotEncode(f *testing.F) {
	_, s := loadedSnapshot(f)
	f.Add(jsonSnapshot(f, s))
	f.Add([]byte(`{"format":1,"entries":{"keys/\u003c":{"v":1,"t":1,"d":null},"a":{"v":2,"t":0,"d":""}},"mac":"AAAA"}`))
	f.Add([]byte(`{"entries":null,"tombs":{"x":1},"unverified":[{"digest":"AA==","mac":null}],"pending_snapshot":{}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s Snapshot
		if json.Unmarshal(data, &s) != nil {
			return
		}
		var got bytes.Buffer
		if _, err := s.WriteTo(&got); err != nil {
			t.Fatal(err)
		}
		if want := jsonSnapshot(t, &s); !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("differs from encoding/json:\n got %s\nwant %s", got.Bytes(), want)
		}
	})
}

// TestSnapshotEncode_ReadsOldWriter: a snapshot written by the previous
// version (encoding/json) restores, MAC checked, into this one.
func TestSnapshotEncode_ReadsOldWriter(t *testing.T) {
	ks, s := loadedSnapshot(t)
	k, err := ks.macKey()
	if err != nil {
		t.Fatal(err)
	}
	defer clear(k)
	// The previous writer: authenticate (json.Marshal digest), then
	// json.Encoder.
	c := *s
	b, _ := json.Marshal(&c)
	c.MAC = snapshotMAC(k, c.Seal.ClusterID, sha256Sum(b))
	old := jsonSnapshot(t, &c)
	if err := ks.RestoreRemote(bytes.NewReader(old)); err != nil {
		t.Fatalf("a snapshot of the previous writer is refused: %v", err)
	}
}

// FuzzSnapshotDecode: the streamed decoder used on restore reads every
// input as encoding/json's Decoder does: what one accepts as a snapshot
// (format 1) the other accepts with the same content.
func FuzzSnapshotDecode(f *testing.F) {
	_, s := loadedSnapshot(f)
	f.Add(jsonSnapshot(f, s))
	f.Add([]byte(`{"format":1,"Entries":{"a":{"v":1,"d":"AA=="}},"entries":{"b":{"V":2,"t":1}},"ENTRIES":null,"entries":{"c":{}}}`))
	f.Add([]byte(`{"format":1,"entries":{"a":{"v":"x"}}}`))
	f.Add([]byte(`{"format":1,"entrieſ":{"a":{"v":1}},"format":1,"tombs":{"x":1}} trailing`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"format":1,"entries":{"a":{"v":1},}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var want Snapshot
		werr := json.NewDecoder(bytes.NewReader(data)).Decode(&want)
		got, gerr := decodeSnapshot(bytes.NewReader(data))
		if werr == nil && want.Format == 1 {
			if gerr != nil {
				t.Fatalf("encoding/json decodes it, the streamed decoder does not: %v", gerr)
			}
			if !reflect.DeepEqual(*got, want) {
				t.Fatalf("decoded differently:\n got %+v\nwant %+v", *got, want)
			}
		}
		if gerr == nil && got.Format == 1 {
			if werr != nil {
				t.Fatalf("the streamed decoder accepts what encoding/json refuses (%v)", werr)
			}
		}
		// The admin restore's decoder (decodeSnapshotStrict) against
		// json.Unmarshal, which it replaces there: trailing data refused.
		var uwant Snapshot
		uerr := json.Unmarshal(data, &uwant)
		sgot, serr := decodeSnapshotStrict(bytes.NewReader(data))
		if uerr == nil && uwant.Format == 1 {
			if serr != nil {
				t.Fatalf("json.Unmarshal decodes it, decodeSnapshotStrict does not: %v", serr)
			}
			if !reflect.DeepEqual(*sgot, uwant) {
				t.Fatalf("decoded differently:\n got %+v\nwant %+v", *sgot, uwant)
			}
		}
		if serr == nil && sgot.Format == 1 && uerr != nil {
			t.Fatalf("decodeSnapshotStrict accepts what json.Unmarshal refuses (%v)", uerr)
		}
	})
}
