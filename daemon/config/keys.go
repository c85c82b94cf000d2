package config

import (
	"slices"

	"github.com/hashicorp/hcl/v2"
)

// Keys lists every setting the loader accepts, as dotted names:
// "node_id", "listener.mode", "seal.pkcs11.library", "audit.alert.window".
// It is built from the decoding schemas themselves, so a setting added to a
// schema appears here; a block whose schema Keys does not know appears as
// "BLOCK.*". The test TestKeys_NoneIgnored (daemon/config) walks this list
// and shows that each setting changes the Config (or is refused) and that
// the daemon reads what it changes.
func Keys() []string {
	var out []string
	for _, a := range rootSchema.Attributes {
		out = append(out, a.Name)
	}
	blockSchemas := map[string]map[string][]string{
		"listener": {"": names(listenerSchema.Attributes)},
		"admin":    {"": names(adminSchema.Attributes)},
		"cluster":  {"": names(clusterSchema.Attributes)},
		"seal": {
			SealPKCS11: names(pkcs11Schema.Attributes),
			SealTPM:    names(tpmSchema.Attributes),
			SealSoft:   names(softSchema.Attributes),
		},
		"kms_v2": {"": names(kmsSchema.Attributes)},
		"audit": {
			"":      names(auditBodySchema.Attributes),
			"alert": names(alertSchema.Attributes),
		},
	}
	for _, b := range rootSchema.Blocks {
		subs, ok := blockSchemas[b.Type]
		if !ok {
			out = append(out, b.Type+".*")
			continue
		}
		for sub, attrs := range subs {
			prefix := b.Type + "."
			if sub != "" {
				prefix += sub + "."
			}
			for _, a := range attrs {
				out = append(out, prefix+a)
			}
		}
	}
	for _, b := range auditBodySchema.Blocks {
		if b.Type != "alert" {
			out = append(out, "audit."+b.Type+".*")
		}
	}
	slices.Sort(out)
	return out
}

func names(attrs []hcl.AttributeSchema) []string {
	out := make([]string, len(attrs))
	for i, a := range attrs {
		out[i] = a.Name
	}
	return out
}
