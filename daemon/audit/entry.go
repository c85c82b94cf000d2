package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Entry types.
const (
	TypeRequest = "request"
	TypeEvent   = "event"
)

// Outcomes.
const (
	OutcomeOK     = "ok"
	OutcomeDenied = "denied"
	OutcomeError  = "error"
)

// HashPrefix starts every hash and prev_hash.
const HashPrefix = "sha256:"

// GenesisHash is the prev_hash of the first entry of a chain (seq 1).
const GenesisHash = HashPrefix + "0000000000000000000000000000000000000000000000000000000000000000"

// TimeLayout is the entry time format: RFC 3339, UTC, milliseconds.
const TimeLayout = "2006-01-02T15:04:05.000Z"

// MaxLine is the longest line the verifier accepts. Entries are far
// smaller: names are bounded by the API and details by the writer (see
// MaxDetail), so a longer line is not an audit entry.
const MaxLine = 64 << 10

// Limits that keep an entry bounded whatever the caller passes in.
const (
	// MaxDetail is the number of detail (and hmac) fields kept; the writer
	// drops the rest (in key order) and says so in a "truncated" field.
	MaxDetail = 16
	// MaxValue is the longest string value kept, in bytes; longer values
	// are cut and end in "…".
	MaxValue = 512
)

// Caller is who made a request, as the kernel reported it.
type Caller struct {
	UID  uint32 `json:"uid"`
	GID  uint32 `json:"gid"`
	PID  int32  `json:"pid"`
	Unit string `json:"unit"`
}

// Entry is one line of the audit log. Seq, PrevHash and Hash are set by the
// Writer (or by ParseLine); the rest by whoever records the entry.
type Entry struct {
	Seq        uint64
	Time       time.Time
	NodeID     string
	Type       string // TypeRequest or TypeEvent
	RequestID  string
	Operation  string
	Caller     *Caller // nil: no caller (an event the node raised itself)
	Key        string
	KeyVersion int
	Outcome    string // OutcomeOK, OutcomeDenied or OutcomeError
	ErrorCode  string
	// HMAC holds "hmac-sha256:…" values of sensitive request fields, by
	// field name ("aad").
	HMAC map[string]string
	// Detail holds further facts about the entry (an unseal's progress, a
	// batch's size, an alert's rule); never a secret.
	Detail   map[string]string
	PrevHash string
	Hash     string
}

// appendBody appends the canonical encoding of e up to and including
// prev_hash (the part the hash covers), without the closing brace.
func appendBody(b []byte, e *Entry) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"time":"`...)
	b = appendTime(b, e.Time)
	b = append(b, `","node_id":`...)
	b = appendString(b, e.NodeID)
	b = append(b, `,"type":`...)
	b = appendString(b, e.Type)
	b = append(b, `,"request_id":`...)
	b = appendString(b, e.RequestID)
	b = append(b, `,"operation":`...)
	b = appendString(b, e.Operation)
	b = append(b, `,"caller":`...)
	if c := e.Caller; c == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, `{"uid":`...)
		b = strconv.AppendUint(b, uint64(c.UID), 10)
		b = append(b, `,"gid":`...)
		b = strconv.AppendUint(b, uint64(c.GID), 10)
		b = append(b, `,"pid":`...)
		b = strconv.AppendInt(b, int64(c.PID), 10)
		b = append(b, `,"unit":`...)
		b = appendString(b, c.Unit)
		b = append(b, '}')
	}
	b = append(b, `,"key":`...)
	b = appendString(b, e.Key)
	b = append(b, `,"key_version":`...)
	b = strconv.AppendInt(b, int64(e.KeyVersion), 10)
	b = append(b, `,"outcome":`...)
	b = appendString(b, e.Outcome)
	b = append(b, `,"error_code":`...)
	b = appendString(b, e.ErrorCode)
	b = append(b, `,"hmac":`...)
	b = appendMap(b, e.HMAC)
	if len(e.Detail) > 0 {
		b = append(b, `,"detail":`...)
		b = appendMap(b, e.Detail)
	}
	b = append(b, `,"prev_hash":`...)
	b = appendString(b, e.PrevHash)
	return b
}

// appendLine appends e's full canonical line (with e.Hash as it is) and a
// newline.
func appendLine(b []byte, e *Entry) []byte {
	b = appendBody(b, e)
	b = append(b, `,"hash":`...)
	b = appendString(b, e.Hash)
	return append(b, "}\n"...)
}

// Encode returns e's canonical line, newline included, after computing
// e.Hash from the other fields. It does not touch e.Seq or e.PrevHash.
func Encode(e *Entry) []byte { return appendEncoded(make([]byte, 0, 768), e) }

// appendEncoded is Encode appending to b.
func appendEncoded(b []byte, e *Entry) []byte {
	start := len(b)
	b = appendBody(b, e)
	sum := sha256.Sum256(b[start:])
	var hx [2 * sha256.Size]byte
	hex.Encode(hx[:], sum[:])
	e.Hash = HashPrefix + string(hx[:])
	b = append(b, `,"hash":"`...)
	b = append(b, e.Hash...) // lowercase hex: nothing to escape
	return append(b, "\"}\n"...)
}

// appendTime appends t as TimeLayout does, by hand: it is on every
// request's path and the layout interpreter costs several times more.
func appendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	y, mo, d := t.Date()
	h, mi, sec := t.Clock()
	if y < 0 || y > 9999 {
		return t.AppendFormat(b, TimeLayout)
	}
	ms := t.Nanosecond() / 1e6
	return append(b, byte('0'+y/1000), byte('0'+y/100%10), byte('0'+y/10%10), byte('0'+y%10), '-',
		byte('0'+int(mo)/10), byte('0'+int(mo)%10), '-', byte('0'+d/10), byte('0'+d%10), 'T',
		byte('0'+h/10), byte('0'+h%10), ':', byte('0'+mi/10), byte('0'+mi%10), ':', byte('0'+sec/10), byte('0'+sec%10), '.',
		byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10), 'Z')
}

func appendMap(b []byte, m map[string]string) []byte {
	b = append(b, '{')
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, m[k])
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string: quotes, backslashes and control
// characters escaped, invalid UTF-8 replaced by U+FFFD (as encoding/json
// decodes it, so that a decoded entry encodes back to the same bytes).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, "\ufffd"...)
		} else if r == '\u2028' || r == '\u2029' {
			// Line and paragraph separators break some line-oriented tools.
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// ---- parsing ----

// Problem kinds, in VerifyError.Kind.
const (
	KindEdited    = "edited"
	KindDeleted   = "deleted"
	KindReordered = "reordered"
	KindTruncated = "truncated"
	KindMalformed = "malformed"
)

// LineError says why one line is not a valid entry on its own.
type LineError struct {
	Kind   string
	Reason string
}

func (e *LineError) Error() string { return e.Reason }

var hashSuffixStart = []byte(`,"hash":"` + HashPrefix)

// hashSuffixLen is the length of `,"hash":"sha256:` + 64 hex + `"}`.
var hashSuffixLen = len(hashSuffixStart) + 64 + 2

// ParseLine checks one line (without its newline) and returns the entry it
// holds. It fails unless the line ends with its hash, the hash matches the
// rest of the line, the line is JSON with the entry fields, and it is in
// the canonical form Encode writes. It never returns an entry with an
// error.
func ParseLine(line []byte) (*Entry, error) {
	if len(line) == 0 {
		return nil, &LineError{KindMalformed, "empty line: audit logs have no blank lines, the file was edited"}
	}
	if len(line) > MaxLine {
		return nil, &LineError{KindMalformed, fmt.Sprintf("line is longer than %d bytes: not an audit entry", MaxLine)}
	}
	n := len(line)
	if n < hashSuffixLen+1 || !bytes.Equal(line[n-hashSuffixLen:n-hashSuffixLen+len(hashSuffixStart)], hashSuffixStart) ||
		line[n-2] != '"' || line[n-1] != '}' || !isLowerHex(line[n-66:n-2]) {
		return nil, &LineError{KindTruncated, "the line does not end with its hash: it was cut short (truncated) or edited"}
	}
	body := line[:n-hashSuffixLen]
	sum := sha256.Sum256(body)
	var want [64]byte
	hex.Encode(want[:], sum[:])
	if !bytes.Equal(want[:], line[n-66:n-2]) {
		if !json.Valid(line) {
			// The end of one entry joined to the start of another.
			return nil, &LineError{KindTruncated, "the line is the start of one entry joined to the end of another: part of the file was cut out here (truncated in the middle)"}
		}
		return nil, &LineError{KindEdited, "the line's content does not match its hash: it was edited"}
	}
	var w wireEntry
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return nil, &LineError{KindMalformed, "not a JSON audit entry (" + jsonProblem(err) + "): it was edited"}
	}
	if dec.More() {
		return nil, &LineError{KindMalformed, "data after the entry's JSON object: it was edited"}
	}
	t, err := time.Parse(TimeLayout, w.Time)
	if err != nil {
		return nil, &LineError{KindEdited, fmt.Sprintf("time %q is not in the form %s: it was edited", truncate(w.Time), TimeLayout)}
	}
	e := &Entry{
		Seq: w.Seq, Time: t, NodeID: w.NodeID, Type: w.Type, RequestID: w.RequestID,
		Operation: w.Operation, Caller: w.Caller, Key: w.Key, KeyVersion: w.KeyVersion,
		Outcome: w.Outcome, ErrorCode: w.ErrorCode, HMAC: w.HMAC, Detail: w.Detail,
		PrevHash: w.PrevHash, Hash: w.Hash,
	}
	switch {
	case e.Seq == 0:
		return nil, &LineError{KindEdited, "seq is 0: entries count from 1, it was edited"}
	case e.Type != TypeRequest && e.Type != TypeEvent:
		return nil, &LineError{KindEdited, fmt.Sprintf("type %q is neither request nor event: it was edited", truncate(e.Type))}
	case e.Outcome != OutcomeOK && e.Outcome != OutcomeDenied && e.Outcome != OutcomeError:
		return nil, &LineError{KindEdited, fmt.Sprintf("outcome %q is not ok, denied or error: it was edited", truncate(e.Outcome))}
	case !validHash(e.PrevHash):
		return nil, &LineError{KindEdited, "prev_hash is not a sha256: hash: it was edited"}
	}
	if !bytes.Equal(appendLine(make([]byte, 0, len(line)+1), e), append(line[:n:n], '\n')) {
		return nil, &LineError{KindEdited, "the line is not in the form cofferd writes (fields reordered, reformatted or added): it was edited"}
	}
	return e, nil
}

// wireEntry is the JSON shape ParseLine decodes; time stays a string so
// that its exact form can be checked.
type wireEntry struct {
	Seq        uint64            `json:"seq"`
	Time       string            `json:"time"`
	NodeID     string            `json:"node_id"`
	Type       string            `json:"type"`
	RequestID  string            `json:"request_id"`
	Operation  string            `json:"operation"`
	Caller     *Caller           `json:"caller"`
	Key        string            `json:"key"`
	KeyVersion int               `json:"key_version"`
	Outcome    string            `json:"outcome"`
	ErrorCode  string            `json:"error_code"`
	HMAC       map[string]string `json:"hmac"`
	Detail     map[string]string `json:"detail"`
	PrevHash   string            `json:"prev_hash"`
	Hash       string            `json:"hash"`
}

func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("syntax error at byte %d", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q has the wrong type", typ.Field)
	}
	return truncate(err.Error())
}

func isLowerHex(b []byte) bool {
	for _, c := range b {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func validHash(s string) bool {
	return len(s) == len(HashPrefix)+64 && s[:len(HashPrefix)] == HashPrefix && isLowerHex([]byte(s[len(HashPrefix):]))
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
