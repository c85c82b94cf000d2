// Command go-service is a minimal service that keeps a secret encrypted at
// rest with Coffer, through the public client package:
//
//   - at start, it unwraps its stored database password (wrapping it first
//     if it has none yet) and keeps it only as long as needed;
//   - it encrypts a report of any size with envelope encryption, streamed;
//   - it handles Coffer's errors by code.
//
// Run it against a dev node:
//
//	cofferd --dev --socket /tmp/coffer.sock &
//	COFFER_SOCKET=/tmp/coffer.sock go run ./examples/go-service -key dev -state /tmp/svc
//
// In production its unit's user needs a policy granting wrap, unwrap and
// datakey on the key (docs/api.md, "Policies").
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/coffer-kms/coffer/client"
)

func main() {
	key := flag.String("key", "dev", "the Coffer key of this service")
	state := flag.String("state", ".", "directory of the service's encrypted files")
	flag.Parse()

	// The deadline bounds every call, retries included: a node that is
	// sealed or electing a leader is retried until then.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := client.NewFromEnv() // $COFFER_SOCKET, else /run/coffer/coffer.sock
	defer c.Close()

	if err := run(ctx, c, *key, *state); err != nil {
		var ae *client.APIError
		switch {
		case errors.Is(err, client.ErrPermissionDenied):
			log.Fatalf("this service's user may not use key %q: ask for a policy (%v)", *key, err)
		case errors.Is(err, client.ErrSealed):
			log.Fatalf("Coffer stayed sealed until the deadline: %v", err)
		case errors.As(err, &ae):
			log.Fatalf("Coffer refused: %s (request %s)", ae.Code, ae.RequestID)
		default:
			log.Fatal(err)
		}
	}
}

func run(ctx context.Context, c *client.Client, key, state string) error {
	// 1. A small secret, wrapped at rest.
	stored := filepath.Join(state, "db-password.coffer")
	ct, err := os.ReadFile(stored)
	if errors.Is(err, os.ErrNotExist) {
		w, err := c.Wrap(ctx, key, []byte("s3cret-db-password"), []byte("go-service/db"))
		if err != nil {
			return fmt.Errorf("wrap the password: %w", err)
		}
		ct = []byte(w.Ciphertext)
		if err := os.WriteFile(stored, ct, 0o600); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	password, err := c.Unwrap(ctx, key, strings.TrimSpace(string(ct)), []byte("go-service/db"))
	if err != nil {
		return fmt.Errorf("unwrap the password: %w", err)
	}
	fmt.Printf("database password: %d bytes\n", len(password))
	clear(password) // done with it: the client kept no copy

	// 2. A large report, envelope-encrypted as it is produced.
	report := bytes.Repeat([]byte("line of the nightly report\n"), 100000) // 2.7 MB
	path := filepath.Join(state, "report.cfe")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	enc, err := c.Encrypt(ctx, f, key)
	if err != nil {
		f.Close()
		return err
	}
	if _, err := enc.Write(report); err != nil {
		f.Close()
		return err
	}
	if err := enc.Close(); err != nil { // writes the final chunk
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}

	// 3. Read it back, streamed; keep the result only after io.EOF.
	f, err = os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	dec, err := c.Decrypt(ctx, f)
	if err != nil {
		return err
	}
	defer dec.Close()
	n, err := io.Copy(io.Discard, dec)
	if err != nil {
		return fmt.Errorf("the report does not decrypt: %w", err)
	}
	fmt.Printf("report: %d bytes encrypted and verified\n", n)
	return nil
}
