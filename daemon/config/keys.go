package config

import (
	"sort"

	"github.com/hashicorp/hcl/v2"
)

// Keys lists every configuration key the loader accepts, as dotted names:
// "node_id", "listener.path", "seal.pkcs11.library", "audit.alert.window".
// Block labels are written as the label's value where the schema fixes it
// (seal types) and left out where the user picks it (listener "unix", alert
// names). For the reference docs' test: every key must be documented.
func Keys() []string {
	var out []string
	attrs := func(prefix string, s *hcl.BodySchema) {
		for _, a := range s.Attributes {
			out = append(out, prefix+a.Name)
		}
	}
	attrs("", rootSchema)
	for _, b := range rootSchema.Blocks {
		switch b.Type {
		case "listener":
			attrs("listener.", listenerSchema)
		case "admin":
			attrs("admin.", adminSchema)
		case "unseal":
			attrs("unseal.", unsealSchema)
		case "cluster":
			attrs("cluster.", clusterSchema)
		case "seal":
			attrs("seal.pkcs11.", pkcs11Schema)
			attrs("seal.tpm.", tpmSchema)
			attrs("seal.soft.", softSchema)
		case "telemetry":
			attrs("telemetry.", telemetrySchema)
		case "credentials":
			attrs("credentials.", credentialsSchema)
		case "kms_v2":
			attrs("kms_v2.", kmsSchema)
		case "audit":
			attrs("audit.", auditBodySchema)
			attrs("audit.alert.", alertSchema)
		default:
			// A block added to rootSchema without a case here.
			out = append(out, b.Type+".?")
		}
	}
	sort.Strings(out)
	return out
}
