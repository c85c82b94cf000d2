// Package keystore is Coffer's key hierarchy and the state that Raft
// replicates (DESIGN.md §1):
//
//	root key (32 bytes, from Shamir shares or a seal device)
//	  └─ encrypts the keyring: barrier keys in numbered terms
//	       └─ encrypt every record: named keys (with their versions) and policies
//	            └─ named keys wrap and unwrap callers' data
//
// The package does no I/O of its own. The replicated state (the seal
// configuration, the encrypted keyring and the encrypted records) changes
// only through [Keystore.Apply], which the raft FSM calls with committed
// commands; writes are proposed through the [Proposer] interface (raft in
// package cluster, a direct call in tests). Every command carries only
// encrypted key material, so a sealed node can follow the log and vote.
//
// An unsealed Keystore also keeps a decrypted view of the records in locked
// memory (package internal/lockedmem), updated as commands are applied; that
// view serves wrap, unwrap, rewrap and datakey without touching storage.
// Sealing zeroes it.
//
// # Encodings
//
// Barrier ciphertext (records): AES-256-GCM under the keyring term's key,
// nonce (12) || ciphertext || tag, with AAD
// "coffer-record-v1" 0x00 path 0x00 uint64be(record version) uint32be(term).
// Binding the path and the record version means a record cannot be moved to
// another path or rolled back to an older version of itself without failing
// to open.
//
// Keyring ciphertext: AES-256-GCM under the root key, AAD
// "coffer-keyring-v1" 0x00 cluster-id.
//
// Record and keyring plaintexts are uvarint(len(meta)) || meta JSON || key
// bytes: the JSON carries no key material, so encoding/json's pooled buffers
// never hold a secret; the raw key bytes follow in a buffer this package
// zeroes.
//
// Data ciphertext (what callers see): "coffer:v" N ":" base64std(nonce ||
// ciphertext || tag), N the key version in decimal without leading zeros, the
// AEAD (AES-256-GCM or ChaCha20-Poly1305, both with 12-byte nonces) keyed by
// that version's material, AAD the caller's aad.
package keystore
