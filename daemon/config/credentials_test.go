package config

import (
	"strings"
	"testing"
)

func TestParseConfig_Credentials(t *testing.T) {
	c, err := ParseConfig([]byte("node_id = \"n1\"\ncredentials {\n  path = \"creds.sock\"\n}\n"), "/etc/coffer/c.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if c.Credentials == nil || c.Credentials.Path != "/etc/coffer/creds.sock" {
		t.Fatalf("credentials = %+v (a relative path is relative to the config file)", c.Credentials)
	}
	for _, tt := range []struct{ src, want string }{
		{"credentials {\n}\n", "c.hcl:2: credentials needs path"},
		{"credentials {\n  path = \"/x\"\n  mode = \"0666\"\n}\n", "c.hcl:4"},
		{"listener \"unix\" {\n  path = \"/s.sock\"\n}\ncredentials {\n  path = \"/s.sock\"\n}\n", "c.hcl:6: credentials.path /s.sock is already another socket"},
		{"credentials {\n  path = \"/" + strings.Repeat("a", 110) + "\"\n}\n", "c.hcl:3: credentials.path is 111 bytes"},
	} {
		_, err := ParseConfig([]byte("node_id = \"n1\"\n"+tt.src), "c.hcl")
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want %q", tt.src, err, tt.want)
		}
	}
}
