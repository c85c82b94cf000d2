// Package seal owns a node's seal lifecycle (sealed ⇄ unsealed): the seal
// device (the factory that opens the configured hsm.Device, its health and
// reopen), the node-local device-sealed root key file, init and the Shamir
// split, unseal share collection and its nonce, auto-unseal at start and its
// retry, operator seal and reseal, and the reseal after a rekey. Its Manager
// returns sentinel errors (ErrInvalidRequest, ErrInvalidShare, ErrNoDevice,
// ErrDeviceUnavailable, and keystore's) that the HTTP layer maps to codes;
// it knows nothing of HTTP or of callers, who are authorised before they
// reach it.
//
// Imports: keystore (the state it seals and unseals), hsm and the device
// packages (this and daemon/config are the only daemon packages that name
// them), daemon/config, internal/atomicfile. Never a device's own library
// (internal/layering checks it).
package seal
