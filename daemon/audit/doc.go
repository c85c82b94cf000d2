// Package audit is Coffer's tamper-evident audit log: the writer cofferd
// appends to (one JSON line per request and per event) and the verifier
// behind `coffer audit verify`.
//
// The package imports only the standard library: the coffer CLI links it
// for the verifier and must stay free of daemon, device and cgo code (a test
// in package cli checks that).
//
// # Entry format
//
// Each line is one JSON object with the fields of docs/audit.md in this
// order, no insignificant whitespace, and a newline:
//
//	{"seq":42,"time":"2026-11-28T18:00:00.123Z","node_id":"node1",
//	 "type":"request","request_id":"…","operation":"wrap",
//	 "caller":{"uid":1001,"gid":1001,"pid":4242,"unit":"billing.service"},
//	 "key":"billing-db","key_version":3,"outcome":"ok","error_code":"",
//	 "hmac":{"aad":"hmac-sha256:…"},"detail":{…},
//	 "prev_hash":"sha256:…","hash":"sha256:…"}
//
// (shown wrapped; a real line is one line). caller is null when the entry has
// no caller (events the node raises by itself). hmac and detail are objects
// of strings with their keys sorted; detail is left out when empty. time is
// UTC with milliseconds.
//
// # Hash chain
//
// A line is P + `,"hash":"sha256:` + H + `"}` where P is everything before
// the hash field (all other fields, prev_hash last) and H is the lowercase
// hex SHA-256 of the bytes of P. prev_hash is the previous line's hash; the
// first entry of a chain (seq 1) has prev_hash "sha256:" followed by 64
// zeros. seq increases by one per entry, across restarts and log rotation:
// a file that starts at seq > 1 continues the file rotated before it.
//
// The verifier also requires every line to be exactly what this package
// would write for the entry it holds (the canonical form), so an edit that
// keeps the JSON valid and recomputes the line's hash still shows, as a
// broken link to the next line. Rewriting the whole chain from some line to
// the end cannot be seen in the file alone: compare the verifier's last seq
// and hash with the node's status (audit_seq, audit_hash).
package audit
