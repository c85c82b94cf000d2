package config

import (
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

// TestManPageCoversSchema: cofferd.hcl(5) documents every block and
// attribute the decoder accepts, so that the reference cannot fall behind.
func TestManPageCoversSchema(t *testing.T) {
	data, err := os.ReadFile("../../docs/man/cofferd.hcl.5.md")
	if err != nil {
		t.Fatal(err)
	}
	page := strings.ReplaceAll(string(data), `\_`, "_")
	check := func(where string, s *hcl.BodySchema) {
		for _, a := range s.Attributes {
			if a.Name == "pin" {
				continue // in the schema only to be refused (documented as such)
			}
			if !strings.Contains(page, "**"+a.Name+"**") {
				t.Errorf("cofferd.hcl.5.md does not document %s%s", where, a.Name)
			}
		}
		for _, b := range s.Blocks {
			if !strings.Contains(page, "# "+b.Type) && !strings.Contains(page, "**"+b.Type) {
				t.Errorf("cofferd.hcl.5.md does not document block %s%s", where, b.Type)
			}
		}
	}
	check("", rootSchema)
	for name, s := range map[string]*hcl.BodySchema{
		"listener.": listenerSchema, "admin.": adminSchema, "cluster.": clusterSchema,
		"seal pkcs11.": pkcs11Schema, "seal tpm.": tpmSchema, "seal soft.": softSchema,
		"kms_v2.": kmsSchema, "audit.": auditBodySchema, "audit.alert.": alertSchema,
	} {
		check(name, s)
	}
}
