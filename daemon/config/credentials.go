package config

// CredentialsConfig is the credential socket: systemd's
// LoadCredential=ID:PATH connects to it at a unit's start (docs/api.md,
// "Credential socket"). It is created mode 0600, owned by the daemon:
// systemd connects as root, and nobody else has any business there.
type CredentialsConfig struct {
	Path string
}

var credentialsSchema = attrSchema("path")

func (c *Config) validateCredentials() error {
	cr := c.Credentials
	if cr == nil {
		return nil
	}
	if cr.Path == "" {
		return c.errAt("credentials.path", "credentials needs path, the unix socket that LoadCredential= names; add path = \"/run/coffer/credentials.sock\"")
	}
	if len(cr.Path) > maxSocketPath {
		return c.errAt("credentials.path", "credentials.path is %d bytes; a unix socket path must be at most %d, choose a shorter one", len(cr.Path), maxSocketPath)
	}
	if cr.Path == c.Listener.Path || (c.KMSv2 != nil && cr.Path == c.KMSv2.Path) {
		return c.errAt("credentials.path", "credentials.path %s is already another socket of cofferd (listener or kms_v2); give the credential socket its own path", cr.Path)
	}
	return nil
}
