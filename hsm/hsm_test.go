package hsm

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestSealAAD_Encoding(t *testing.T) {
	got := SealAAD("c1", "n")
	exp := []byte("\x00\x00\x00\x15coffer-device-seal-v1\x00\x00\x00\x02c1\x00\x00\x00\x01n")
	if !bytes.Equal(got, exp) {
		t.Fatalf("SealAAD(c1, n) = %q, want %q", got, exp)
	}
}

func TestSealAAD_Unambiguous(t *testing.T) {
	pairs := []struct{ cluster, node string }{
		{"", ""},
		{"a", ""},
		{"", "a"},
		{"ab", "c"},
		{"a", "bc"},
		{"a\x00\x00\x00\x01b", ""},
		{"a", "b"},
		{"cluster-1", "node1"},
		{"cluster-1", "node2"},
	}
	seen := map[string]int{}
	for i, p := range pairs {
		k := string(SealAAD(p.cluster, p.node))
		if j, ok := seen[k]; ok {
			t.Errorf("pairs %d %q and %d %q encode the same", j, pairs[j], i, p)
		}
		seen[k] = i
	}
	if !bytes.Equal(SealAAD("x", "y"), SealAAD("x", "y")) {
		t.Error("SealAAD is not deterministic")
	}
}

func TestBlob_JSON(t *testing.T) {
	b := Blob{Kind: "soft", KeyID: "k1", Data: []byte{0, 1, 2, 255}, Meta: map[string]string{"pcrs": "7"}}
	raw, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if got, exp := string(raw), `{"kind":"soft","key_id":"k1","data":"AAEC/w==","meta":{"pcrs":"7"}}`; got != exp {
		t.Fatalf("json = %s, want %s", got, exp)
	}
	var back Blob
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if back.Kind != b.Kind || back.KeyID != b.KeyID || !bytes.Equal(back.Data, b.Data) || back.Meta["pcrs"] != "7" {
		t.Fatalf("round trip = %+v, want %+v", back, b)
	}
	raw, _ = json.Marshal(Blob{Kind: "tpm", Data: []byte{1}})
	if got, exp := string(raw), `{"kind":"tpm","data":"AQ=="}`; got != exp {
		t.Fatalf("json without optional fields = %s, want %s", got, exp)
	}
}
