package client_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"testing"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/internal/devnode"
)

// TestMain runs the examples (and the concurrency test) against a real
// `cofferd --dev` node: initialised, unsealed, with a key "dev", its
// socket in $COFFER_SOCKET as a service's unit would set it.
func TestMain(m *testing.M) {
	flag.Parse()
	// Fuzzing (make fuzz-smoke) runs only the fuzz target, in worker
	// processes that each run TestMain: no node for them.
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		os.Exit(m.Run())
	}
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		os.Exit(m.Run())
	}
	bin, err := devnode.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	node, err := devnode.Start(bin)
	if err != nil {
		os.RemoveAll(bin)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv(client.EnvSocket, node.Socket)
	code := m.Run()
	node.Stop()
	os.RemoveAll(bin)
	os.Exit(code)
}

// Wrap a small secret (at most 64 KiB) under a named key and get it back.
func Example() {
	ctx := context.Background()
	c := client.NewFromEnv() // $COFFER_SOCKET, else /run/coffer/coffer.sock
	defer c.Close()

	wrapped, err := c.Wrap(ctx, "dev", []byte("db password"), []byte("billing"))
	if err != nil {
		log.Fatal(err)
	}
	// Store wrapped.Ciphertext (a string) next to your data.

	plaintext, err := c.Unwrap(ctx, "dev", wrapped.Ciphertext, []byte("billing"))
	if err != nil {
		log.Fatal(err)
	}
	defer clear(plaintext) // the client keeps no copy: zero it when done
	fmt.Printf("%s (key version %d)\n", plaintext, wrapped.KeyVersion)
	// Output: db password (key version 1)
}

// A data key for encrypting data locally: keep only its ciphertext, unwrap
// it when needed.
func ExampleClient_DataKey() {
	ctx := context.Background()
	c := client.NewFromEnv()
	defer c.Close()

	dk, err := c.DataKey(ctx, "dev", api.DataKeyRequest{})
	if err != nil {
		log.Fatal(err)
	}
	defer clear(dk.Plaintext)
	again, err := c.Unwrap(ctx, "dev", dk.Ciphertext, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer clear(again)
	fmt.Println(len(dk.Plaintext), string(again) == string(dk.Plaintext))
	// Output: 32 true
}

// Wrap many values with as few requests as the API's limits allow.
func ExampleClient_WrapAll() {
	ctx := context.Background()
	c := client.NewFromEnv()
	defer c.Close()

	items := make([]api.WrapItem, 25000) // more than one batch (10000)
	for i := range items {
		items[i].Plaintext = fmt.Appendf(nil, "row %d", i)
	}
	res, err := c.WrapAll(ctx, "dev", items)
	if err != nil {
		log.Fatal(err)
	}
	failed := 0
	for _, r := range res {
		if client.ItemError(r.Error) != nil {
			failed++
		}
	}
	fmt.Println(len(res), "wrapped,", failed, "failed")
	// Output: 25000 wrapped, 0 failed
}

// Errors carry the API's code: test them with errors.Is.
func Example_errors() {
	ctx := context.Background()
	c := client.NewFromEnv()
	defer c.Close()

	_, err := c.GetKey(ctx, "no-such-key")
	switch {
	case errors.Is(err, client.ErrNotFound):
		fmt.Println("no such key")
	case errors.Is(err, client.ErrOutcomeUnknown):
		// A write that may or may not have been applied: read, then
		// decide. The client never retries it.
	case err != nil:
		var ae *client.APIError
		if errors.As(err, &ae) {
			log.Fatalf("%s (request %s)", ae.Code, ae.RequestID)
		}
		log.Fatal(err)
	}
	// Output: no such key
}

// Envelope-encrypt data of any size in constant memory, and read it back.
// Encrypting needs datakey on the key; decrypting only unwrap.
func ExampleClient_Encrypt() {
	ctx := context.Background()
	c := client.NewFromEnv()
	defer c.Close()

	var sealed bytes.Buffer // a file, a pipe, an object store upload…
	w, err := c.Encrypt(ctx, &sealed, "dev")
	if err != nil {
		log.Fatal(err)
	}
	for i := range 1000 {
		fmt.Fprintf(w, "backup line %d\n", i)
	}
	if err := w.Close(); err != nil { // writes the final chunk
		log.Fatal(err)
	}

	r, err := c.Decrypt(ctx, &sealed)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	plain, err := io.ReadAll(r)
	if err != nil {
		// errors.Is(err, client.ErrEnvelope): truncated, reordered or
		// tampered; throw away what was read.
		log.Fatal(err)
	}
	fmt.Println(bytes.Count(plain, []byte("\n")), "lines")
	// Output: 1000 lines
}
