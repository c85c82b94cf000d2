package api

import "net/url"

// Paths of the API (docs/api.md), shared by the client package and the CLI.
// Names are path-escaped, so that a bad name is refused by cofferd with
// bad_request rather than routed elsewhere.
const (
	PathStatus   = "/v1/sys/status"
	PathHealth   = "/v1/sys/health"
	PathInit     = "/v1/sys/init"
	PathUnseal   = "/v1/sys/unseal"
	PathSeal     = "/v1/sys/seal"
	PathReseal   = "/v1/sys/reseal"
	PathRotate   = "/v1/sys/rotate"
	PathKeys     = "/v1/keys"
	PathPolicies = "/v1/policies"
	PathSecrets  = "/v1/secrets"
)

// KeyPath is the path of key name, with an action appended when given
// (KeyPath("app", "wrap") is "/v1/keys/app/wrap").
func KeyPath(name string, action ...string) string {
	p := PathKeys + "/" + url.PathEscape(name)
	for _, s := range action {
		p += "/" + s
	}
	return p
}

// PolicyPath is the path of policy name.
func PolicyPath(name string) string { return PathPolicies + "/" + url.PathEscape(name) }

// SecretPath is the path of secret name, with an action appended when
// given (SecretPath("db", "metadata") is "/v1/secrets/db/metadata").
func SecretPath(name string, action ...string) string {
	p := PathSecrets + "/" + url.PathEscape(name)
	for _, s := range action {
		p += "/" + s
	}
	return p
}
