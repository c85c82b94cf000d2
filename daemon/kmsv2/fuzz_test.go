package kmsv2_test

import (
	"bytes"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/coffer-kms/coffer/daemon/kmsv2"
)

// FuzzDecrypt drives the Decrypt path of a real node through its socket with
// arbitrary ciphertexts, key_ids and annotations: the plugin never panics
// (the node runs in this process), never answers Internal, never returns a
// plaintext with an error, and returns one only for the genuine ciphertext.
func FuzzDecrypt(f *testing.F) {
	n := startNode(f, nil, true)
	n.statusOK()
	secret := []byte("fuzz-dek-0123456789abcdef0123456")
	good := n.encrypt("fuzz", secret)
	f.Add(good.Ciphertext, good.KeyId, []byte("1"), "")
	f.Add(good.Ciphertext[:len(good.Ciphertext)-1], good.KeyId, []byte("1"), "")
	f.Add([]byte("coffer:v1:"), "coffer/kubernetes/v1", []byte("1"), "x.example.com")
	f.Add([]byte("coffer:v99999999999:AAAA"), "coffer/kubernetes/v0", []byte{}, "")
	f.Add([]byte{0, 1, 2}, "coffer//v1", []byte("\xff"), "format.kms.coffer-kms.io")
	f.Fuzz(func(t *testing.T, ct []byte, keyID string, format []byte, extra string) {
		if !utf8.ValidString(keyID) || !utf8.ValidString(extra) {
			return // proto3 strings are UTF-8: no client can send these (and the server's decoder refuses them)
		}
		ann := map[string][]byte{kmsv2.AnnotationFormat: format}
		if extra != "" {
			ann[extra] = []byte("v")
		}
		r, err := n.kms.Decrypt(ctx(t), &kmsapi.DecryptRequest{Uid: "fuzz", Ciphertext: ct, KeyId: keyID, Annotations: ann})
		if err != nil {
			if r != nil {
				t.Fatalf("an error and an answer: %v", err)
			}
			switch status.Code(err) {
			case codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.ResourceExhausted, codes.FailedPrecondition:
			default:
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		genuine := bytes.Equal(ct, good.Ciphertext) && keyID == good.KeyId && string(format) == "1" && (extra == "" || extra == kmsv2.AnnotationFormat)
		if !genuine || !bytes.Equal(r.Plaintext, secret) {
			t.Fatalf("Decrypt opened a ciphertext it did not make: %s", short(r.Plaintext))
		}
	})
}
