package daemon

import (
	"net/http"
	"strconv"
	"unicode/utf8"
)

// Answers that carry secrets (unwrap plaintexts, data keys, unseal shares)
// are encoded by hand into buffers that Coffer owns and zeroes once
// net/http has taken the bytes, instead of through encoding/json, whose
// pooled encode buffers would keep a copy for the next caller to reuse
// (and the garbage collector to drop without zeroing). What net/http
// itself keeps (its pooled connection buffers) is out of Coffer's reach:
// docs/threat-model.md, "Known residual exposure", lists it.

// writeShares answers init and rekey: {"shares": [...], "encrypted": b}.
func writeShares(w http.ResponseWriter, shares []string, encrypted bool) {
	n := 40
	for _, s := range shares {
		n += len(s)*2 + 3 // worst case: every byte escaped as \uXXXX is 6, but shares are ASCII (armor: \n → 2)
	}
	buf := make([]byte, 0, n)
	defer func() { clear(buf[:cap(buf)]) }()
	buf = append(buf, `{"shares":[`...)
	for i, s := range shares {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendJSONString(buf, s)
	}
	buf = append(buf, `],"encrypted":`...)
	buf = strconv.AppendBool(buf, encrypted)
	buf = append(buf, "}\n"...)
	writeRaw(w, http.StatusOK, buf)
}

// appendJSONString appends s as a JSON string. It escapes what JSON
// requires (quote, backslash, control characters) and, like encoding/json,
// <, > and & and invalid UTF-8; an append that outgrows buf's capacity
// leaves a copy behind, so callers size buf for the common case.
func appendJSONString(buf []byte, s string) []byte {
	const hex = "0123456789abcdef"
	buf = append(buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				buf = append(buf, '\\', c)
			case c == '\n':
				buf = append(buf, '\\', 'n')
			case c == '\r':
				buf = append(buf, '\\', 'r')
			case c == '\t':
				buf = append(buf, '\\', 't')
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				buf = append(buf, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				buf = append(buf, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, `\ufffd`...)
		} else {
			buf = append(buf, s[i:i+size]...)
		}
		i += size
	}
	return append(buf, '"')
}
