package audit

// RequestOperations are the operation names of request entries. For an
// endpoint that a policy operation governs it is that operation; for a
// /v1/sys endpoint, its last path element; the others have
// names of their own (each route in daemon/http.go names its operation).
// "rotate" is both a key's rotation (the entry names
// the key) and the keyring's (POST /v1/sys/rotate, no key). A request to
// an endpoint that does not exist is "unknown".
var RequestOperations = []string{
	// Policy operations (api.Operations).
	"wrap", "unwrap", "rewrap", "datakey", "read", "create", "rotate", "update", "delete",
	"secret_read", "secret_write", "secret_delete",
	// GET /v1/secrets (filtered to the names the caller may read).
	"secret-list",
	// A delivery or refusal on the credential socket (systemd LoadCredential=).
	"credential",
	// GET /v1/keys, POST /v1/keys/{name}/restore.
	"list", "restore",
	// /v1/policies.
	"policy-list", "policy-read", "policy-write", "policy-delete",
	// /v1/sys/…: status, health and metrics are counted in metrics only.
	"init", "unseal", "seal", "reseal", "rekey", "audit-hash", "status", "health", "metrics",
	// /v1/sys/raft/…
	"raft-peers", "raft-join", "raft-remove-peer", "raft-snapshot-save", "raft-snapshot-restore",
	"raft-transfer-leadership",
	// /v1/sys/enrol/tokens…
	"enrol-token-create", "enrol-token-list", "enrol-token-revoke",
	// POST /v1/sys/enrol (issue 14).
	"enrol",
	// The Kubernetes KMS v2 plugin socket (daemon/kmsv2): Encrypt, Decrypt.
	"kms_encrypt", "kms_decrypt",
	"unknown",
}

// EventOperations are the operation names of event entries: what the node
// does or notices by itself (requests that change state are recorded as
// requests; see docs/audit.md).
var EventOperations = []string{
	"start", "stop", // cofferd started (its audit log opened) / stopping
	"init",               // the cluster was initialised (also the init request's entry)
	"auto-unseal",        // the seal device unsealed the node
	"break-glass-unseal", // Shamir shares unsealed a node that has a seal device
	"rotate", "purge",    // scheduled key rotation, purge after the deletion window
	"leadership",      // raft leadership changed
	"membership",      // the leader added or removed a member (issue 9)
	"cluster-refused", // a peer was refused at the cluster port (rate-limited)
	"forwarded-write", // the leader committed a write a follower forwarded
	"enrol-answered",  // this node used a node's enrolment token and sent it the root key (issue 14)
	"enrol-refused",   // this node refused a node's enrolment token (issue 14)
	"enrolled",        // this node received the root key and sealed it with its device (issue 14)
	"unusual-access",  // an alert rule fired
	"audit-reopened",  // the log file was reopened (SIGHUP)
	"audit-recovered", // the log is writable again after a failure
	"audit-log-cut",   // the log ended before the recorded head at start
}

// NoRouteOperations are request operations that no /v1 HTTP route carries:
// requests that arrive on the node's other sockets. They are reserved here
// so that the route table, the policy operations and the audit operations
// can be checked against each other (daemon's TestRoutes_OperationsAgree):
// "credential" (the systemd credential socket) and "kms_encrypt",
// "kms_decrypt" (the Kubernetes KMS v2 plugin socket).
var NoRouteOperations = []string{"credential", "kms_encrypt", "kms_decrypt"}
