package api

import "time"

// Secret error codes (docs/api.md, "Conventions").
const (
	// CodePendingDeletion (409): the value of a secret scheduled for
	// deletion was read, or the secret was written.
	CodePendingDeletion = "pending_deletion"
	// CodeVersionConflict (409): a secret write whose cas is not the
	// secret's latest version.
	CodeVersionConflict = "version_conflict"
	// CodeVersionDestroyed (410): the value of that version was destroyed.
	CodeVersionDestroyed = "version_destroyed"
)

// Secret policy operations (docs/api.md, "Policies"): they apply to the
// policy's "secrets" patterns, never to its "keys".
const (
	OpSecretRead   = "secret_read"
	OpSecretWrite  = "secret_write"
	OpSecretDelete = "secret_delete"
)

// SecretOperations lists the secret policy operations.
var SecretOperations = []string{OpSecretRead, OpSecretWrite, OpSecretDelete}

// OpCredential is the audit operation of a delivery (or refusal) on the
// credential socket.
const OpCredential = "credential"

// Secret limits.
const (
	MaxSecretValue            = 64 << 10
	DefaultSecretMaxVersions  = 10
	MaxSecretMaxVersionsLimit = 100
)

// PutSecretRequest is the body of PUT /v1/secrets/{name}. Cas, when set,
// must be the secret's latest version (0: the secret must not exist).
type PutSecretRequest struct {
	Value []byte `json:"value"`
	Cas   *int   `json:"cas,omitempty"`
}

// SecretWriteResponse is the answer to PUT /v1/secrets/{name}.
type SecretWriteResponse struct {
	Name      string    `json:"name"`
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
}

// SecretList is the answer to GET /v1/secrets.
type SecretList struct {
	Secrets []string `json:"secrets"`
}

// SecretValue is the answer to GET /v1/secrets/{name}.
type SecretValue struct {
	Name      string    `json:"name"`
	Version   int       `json:"version"`
	Value     []byte    `json:"value"`
	CreatedAt time.Time `json:"created_at"`
}

// SecretMetadata describes a secret; it never carries a value.
type SecretMetadata struct {
	Name          string          `json:"name"`
	LatestVersion int             `json:"latest_version"`
	MaxVersions   int             `json:"max_versions"`
	Versions      []SecretVersion `json:"versions"`
	CreatedAt     time.Time       `json:"created_at"`
	UpdatedAt     time.Time       `json:"updated_at"`
	DeletionDate  *time.Time      `json:"deletion_date"`
}

// SecretVersion is one version of a secret.
type SecretVersion struct {
	Version   int       `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	Destroyed bool      `json:"destroyed"`
}

// UpdateSecretMetadataRequest is the body of PATCH /v1/secrets/{name}/metadata.
type UpdateSecretMetadataRequest struct {
	MaxVersions *int `json:"max_versions,omitempty"`
}

// DestroySecretRequest is the body of POST /v1/secrets/{name}/destroy.
type DestroySecretRequest struct {
	Versions []int `json:"versions"`
}
