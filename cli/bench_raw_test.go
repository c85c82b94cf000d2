package cli

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/api"
)

// rawServer answers each request on a unix socket with the next of
// answers, written as is (so chunked bodies, Connection: close and broken
// answers can be tested), and counts the connections.
func rawServer(t *testing.T, answers ...string) (string, *int) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns := new(int)
	go func() {
		i := 0
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			*conns++
			br := bufio.NewReader(c)
			for i < len(answers) {
				req, err := http.ReadRequest(br)
				if err != nil {
					break
				}
				io.Copy(io.Discard, req.Body)
				a := answers[i]
				i++
				c.Write([]byte(a))
				if strings.Contains(a, "Connection: close") {
					break
				}
			}
			c.Close()
		}
	}()
	return sock, conns
}

func TestBenchRaw_Answers(t *testing.T) {
	okBody := `{"ciphertext":"coffer:v1:Y3Q=","key_version":1}`
	ok := "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(okBody)) + "\r\n\r\n" + okBody
	chunked := "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + "f\r\n{\"ciphertext\":\"\r\n" + "10\r\ncoffer:v1:Y3Q=\"}\r\n" + "0\r\n\r\n"
	closing := "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 29\r\n\r\n" + `{"ciphertext":"coffer:v1:AA"}`
	denied := "HTTP/1.1 403 Forbidden\r\nContent-Length: 54\r\n\r\n" + `{"error":{"code":"permission_denied","message":"no"}}` + "\n"
	wrong := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
	sock, conns := rawServer(t, ok, chunked, closing, ok, denied, wrong)
	cfg := benchConfig{Op: "wrap"}
	w := &benchWorker{raw: newRawConn(sock, "/v1/keys/bench/wrap", []byte(`{"plaintext":"AA=="}`)), cfg: &cfg, errs: map[string]uint64{}}
	defer w.raw.close()
	ctx := context.Background()
	for i, want := range []string{"", "", "", "", api.CodePermissionDenied, "malformed_response"} {
		n, err := w.sendRaw(ctx, true)
		var ae *api.Error
		switch {
		case want == "" && (err != nil || n != 1):
			t.Fatalf("answer %d: %d items, %v", i, n, err)
		case want != "" && (!errors.As(err, &ae) || ae.Code != want):
			t.Fatalf("answer %d: %v, want code %s", i, err, want)
		}
	}
	if *conns != 2 {
		t.Fatalf("%d connections, want 2 (one reconnect after Connection: close)", *conns)
	}
}

func TestBenchRaw_BatchItemErrors(t *testing.T) {
	body := `{"batch":[{"ciphertext":"coffer:v1:AA","key_version":1},{"error":{"code":"decrypt_failed","message":"x"}}]}`
	sock, _ := rawServer(t, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	cfg := benchConfig{Op: "wrap", Batch: 2}
	w := &benchWorker{raw: newRawConn(sock, "/v1/keys/bench/wrap", []byte(`{}`)), cfg: &cfg, errs: map[string]uint64{}}
	defer w.raw.close()
	n, err := w.sendRaw(context.Background(), true)
	if err != nil || n != 1 || w.errs[api.CodeDecryptFailed] != 1 {
		t.Fatalf("%d items, %v, errs %v", n, err, w.errs)
	}
}
