package keystore

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Snapshot encoding without holding the document in memory (issue 15,
// memory). encoding/json builds a whole value in one buffer: a snapshot of
// 100,000 keys of 3 versions is ~53 MB of JSON, and writing one cost ~350 MB
// of allocations (the digest for the MAC marshalled it once more), which
// raised the leader's heap, and so its RSS, far above its live state on
// every raft snapshot. The encoder below streams the same bytes, entry by
// entry, through a small buffer; the format is unchanged (a node of an
// older version reads these snapshots, and this one reads theirs), and
// TestSnapshotEncode_SameAsJSON / FuzzSnapshotEncode check that it is
// byte for byte what json.Marshal writes, which the digest relies on. A
// restore decodes entry by entry too (decodeSnapshot).

// snapHead and snapTail are the fields of Snapshot before and after
// Entries, in Snapshot's order; every tail field is omitempty.
type snapHead struct {
	Format         int         `json:"format"`
	Seal           *SealConfig `json:"seal"`
	Keyring        []byte      `json:"keyring"`
	KeyringVersion uint64      `json:"keyring_version"`
}

type snapTail struct {
	Trust              *clusterState     `json:"trust,omitempty"`
	AuthOn             bool              `json:"auth_on,omitempty"`
	Unverified         []snapProof       `json:"unverified,omitempty"`
	UnverifiedOverflow bool              `json:"unverified_overflow,omitempty"`
	Tombs              map[string]uint64 `json:"tombs,omitempty"`
	Epoch              uint64            `json:"epoch,omitempty"`
	Pending            *snapProof        `json:"pending_snapshot,omitempty"`
}

// encodeBody writes s without its MAC exactly as json.Marshal would, but
// without the final "}" (so that a MAC can follow).
func (s *Snapshot) encodeBody(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 32<<10)
	head, err := json.Marshal(&snapHead{s.Format, s.Seal, s.Keyring, s.KeyringVersion})
	if err != nil {
		return err
	}
	bw.Write(head[:len(head)-1])
	bw.WriteString(`,"entries":`)
	if s.Entries == nil {
		bw.WriteString("null")
	} else {
		bw.WriteByte('{')
		keys := make([]string, 0, len(s.Entries))
		for k := range s.Entries {
			keys = append(keys, k)
		}
		// encoding/json sorts map keys by their Go string order.
		slices.Sort(keys)
		var buf []byte
		for i, k := range keys {
			buf = buf[:0]
			if i > 0 {
				buf = append(buf, ',')
			}
			buf, err = appendJSONString(buf, k)
			if err != nil {
				return err
			}
			buf = appendEntry(append(buf, ':'), s.Entries[k])
			if _, err := bw.Write(buf); err != nil {
				return err
			}
		}
		bw.WriteByte('}')
	}
	tail, err := json.Marshal(&snapTail{s.Trust, s.AuthOn, s.Unverified, s.UnverifiedOverflow, s.Tombs, s.Epoch, s.Pending})
	if err != nil {
		return err
	}
	if len(tail) > 2 { // not "{}"
		bw.WriteByte(',')
		bw.Write(tail[1 : len(tail)-1])
	}
	return bw.Flush()
}

// appendJSONString appends s as encoding/json encodes a string (with its
// HTML escaping); record paths are plain ASCII, so the fast path is the
// usual one.
func appendJSONString(b []byte, s string) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, err := json.Marshal(s)
			return append(b, q...), err
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"'), nil
}

// appendEntry appends e as encoding/json encodes an Entry.
func appendEntry(b []byte, e Entry) []byte {
	b = append(b, `{"v":`...)
	b = strconv.AppendUint(b, e.Version, 10)
	b = append(b, `,"t":`...)
	b = strconv.AppendUint(b, uint64(e.Term), 10)
	b = append(b, `,"d":`...)
	if e.Data == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, e.Data)
		b = append(b, '"')
	}
	return append(b, '}')
}

// digest is SHA-256 of the snapshot's JSON without its MAC (as
// json.Marshal writes it), computed without holding that JSON.
func (s *Snapshot) digest() ([]byte, error) {
	h := sha256.New()
	if err := s.encodeBody(h); err != nil {
		return nil, err
	}
	h.Write([]byte{'}'})
	return h.Sum(nil), nil
}

// writeJSON writes s as json.Encoder.Encode does (json.Marshal plus a
// newline). With k non-nil it sets s.MAC under k on the way, from the
// digest of the bytes it streams, so the snapshot is encoded only once.
func (s *Snapshot) writeJSON(w io.Writer, k []byte) error {
	var h hash.Hash
	body := w
	if k != nil && s.Seal != nil {
		h = sha256.New()
		body = io.MultiWriter(w, h)
		s.MAC = nil
	}
	if err := s.encodeBody(body); err != nil {
		return err
	}
	mac := s.MAC
	if h != nil {
		h.Write([]byte{'}'})
		mac = snapshotMAC(k, s.Seal.ClusterID, h.Sum(nil))
		s.MAC = mac
	}
	var end []byte
	if len(mac) > 0 { // omitempty
		end = append(end, `,"mac":"`...)
		end = base64.StdEncoding.AppendEncode(end, mac)
		end = append(end, '"')
	}
	end = append(end, "}\n"...)
	_, err := w.Write(end)
	return err
}

// decodeSnapshot reads a snapshot as json.NewDecoder(r).Decode(&s) does,
// but streams the entries: encoding/json holds the whole document (~53 MB
// for 100,000 keys of 3 versions) in its buffer while decoding it, on top
// of the state being replaced, on every snapshot install and restart. The
// other fields are small: they are gathered and decoded by encoding/json
// itself. FuzzSnapshotDecode checks that both decode any input alike.
func decodeSnapshot(r io.Reader) (*Snapshot, error) {
	return decodeSnapshotDec(json.NewDecoder(r))
}

// decodeSnapshotStrict decodes a snapshot as json.Unmarshal does: one
// value and nothing after it but white space. (A top-level null, an empty
// snapshot to json.Unmarshal, is refused here: neither is a snapshot that
// can be restored.)
func decodeSnapshotStrict(r io.Reader) (*Snapshot, error) {
	dec := json.NewDecoder(r)
	s, err := decodeSnapshotDec(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = errors.New("invalid data after the top-level value")
		}
		return nil, err
	}
	return s, nil
}

func decodeSnapshotDec(dec *json.Decoder) (*Snapshot, error) {
	var s Snapshot
	if err := expectDelim(dec, '{'); err != nil {
		// Not an object: let encoding/json decide (null is an empty
		// snapshot; anything else its error).
		return nil, err
	}
	rest := []byte{'{'}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := t.(string)
		if !ok {
			return nil, fmt.Errorf("invalid object key %v", t)
		}
		// encoding/json matches field names case-insensitively.
		if strings.EqualFold(key, "entries") {
			if err := decodeEntries(dec, &s.Entries); err != nil {
				return nil, err
			}
			continue
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		if len(rest) > 1 {
			rest = append(rest, ',')
		}
		kq, err := json.Marshal(key)
		if err != nil {
			return nil, err
		}
		rest = append(append(append(rest, kq...), ':'), raw...)
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, err
	}
	entries := s.Entries
	if err := json.Unmarshal(append(rest, '}'), &s); err != nil {
		return nil, err
	}
	s.Entries = entries
	return &s, nil
}

func expectDelim(dec *json.Decoder, d json.Delim) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if t != d {
		return fmt.Errorf("expected %v, found %v", d, t)
	}
	return nil
}

// decodeEntries decodes the entries map as encoding/json would into *m:
// null sets it to nil; an object adds its members to it (made if nil),
// each decoded into a fresh Entry.
func decodeEntries(dec *json.Decoder, m *map[string]Entry) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if t == nil {
		*m = nil
		return nil
	}
	if t != json.Delim('{') {
		return fmt.Errorf("entries: expected an object, found %v", t)
	}
	if *m == nil {
		*m = map[string]Entry{}
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := t.(string)
		if !ok {
			return fmt.Errorf("invalid object key %v", t)
		}
		var e Entry
		if err := dec.Decode(&e); err != nil {
			return err
		}
		(*m)[key] = e
	}
	_, err = dec.Token() // '}'
	return err
}
