// Package hsmtest is the conformance suite of the hsm.Device contract. Every
// device package runs it against a real device (SoftHSM2 for pkcs11, swtpm
// for tpm, a key file for soft), so that a new device gets the contract's
// tests for free:
//
//	func TestConformance(t *testing.T) {
//		hsmtest.Run(t, hsmtest.Config{Open: func(t *testing.T) hsm.Device { … }})
//	}
//
// The suite checks what every device must do (round trip, fresh
// randomness, refusals wrapping hsm.ErrUnsealFailed and nothing returned
// with them, concurrency, Close, context cancellation); device packages keep
// only the tests of their own behaviour (blob layout, PINs, PCRs, …).
//
// It imports only hsm and the standard library, and is imported only by
// tests.
package hsmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/coffer-kms/coffer/hsm"
)

// Config describes the device under test.
type Config struct {
	// Open opens a device with its own key (the suite may call it several
	// times; each call must give an independent device or at least one that
	// may be closed without affecting the others). The suite closes what
	// it opens; Close is idempotent, so the opener may also close it in a
	// t.Cleanup.
	Open func(t *testing.T) hsm.Device
	// Other opens a device of the same kind with another key, for the
	// "another device's blob" refusal; nil skips that check.
	Other func(t *testing.T) hsm.Device
	// Goroutines and Rounds size the concurrency test (default 8 and 10).
	Goroutines, Rounds int
	// AfterConcurrent, if set, checks the device after the concurrency
	// test (e.g. that its session pool stayed bounded).
	AfterConcurrent func(t *testing.T, d hsm.Device)
}

// Refusal is a blob (and aad) that a device must refuse; WantErr, if set,
// is a part of the message the device's own tests expect.
type Refusal struct {
	Name    string
	Blob    hsm.Blob
	AAD     []byte
	WantErr string
}

// CheckRefusals unseals each refusal's blob with d and checks that it is
// refused as the contract says: an error wrapping hsm.ErrUnsealFailed and
// not hsm.ErrDeviceUnavailable, containing WantErr, with no data.
func CheckRefusals(t *testing.T, d hsm.Device, cases []Refusal) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			got, err := d.Unseal(context.Background(), tc.Blob, tc.AAD)
			if err == nil {
				clear(got)
				t.Fatal("Unseal accepted the blob")
			}
			if got != nil {
				t.Error("Unseal returned data alongside an error")
			}
			if !errors.Is(err, hsm.ErrUnsealFailed) || errors.Is(err, hsm.ErrDeviceUnavailable) {
				t.Errorf("error %q: want hsm.ErrUnsealFailed only", err)
			}
			if !strings.Contains(err.Error(), tc.WantErr) {
				t.Errorf("error %q, want it to contain %q", err, tc.WantErr)
			}
		})
	}
}

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, cfg Config) {
	if cfg.Goroutines == 0 {
		cfg.Goroutines = 8
	}
	if cfg.Rounds == 0 {
		cfg.Rounds = 10
	}
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, cfg) })
	t.Run("Refuses", func(t *testing.T) { testRefuses(t, cfg) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, cfg) })
	t.Run("Closed", func(t *testing.T) { testClosed(t, cfg) })
	t.Run("Context", func(t *testing.T) { testContext(t, cfg) })
}

// RandomBytes returns n random bytes or fails the test.
func RandomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// MustSeal seals secret with d or fails the test.
func MustSeal(t testing.TB, d hsm.Device, secret, aad []byte) hsm.Blob {
	t.Helper()
	b, err := d.Seal(context.Background(), secret, aad)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return b
}

// MustUnseal unseals b with d and checks that it gives want, or fails the
// test; it zeroes what it unsealed.
func MustUnseal(t testing.TB, d hsm.Device, b hsm.Blob, aad, want []byte) {
	t.Helper()
	got, err := d.Unseal(context.Background(), b, aad)
	if err != nil {
		t.Fatalf("Unseal: %v", err)
	}
	defer clear(got)
	if !bytes.Equal(got, want) {
		t.Fatal("Unseal returned another secret")
	}
}

// testRoundTrip: a sealed secret unseals with the same aad; the blob
// records the device's kind, does not hold the secret in clear, and two
// seals of one secret differ; Seal keeps no reference to its input.
func testRoundTrip(t *testing.T, cfg Config) {
	d := cfg.Open(t)
	defer d.Close()
	for _, tc := range []struct {
		name        string
		secret, aad []byte
	}{
		{"root key", RandomBytes(t, 32), hsm.SealAAD("cluster-1", "node1")},
		{"no aad", RandomBytes(t, 32), nil},
		{"one byte", []byte{7}, []byte("a")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := bytes.Clone(tc.secret)
			b := MustSeal(t, d, tc.secret, tc.aad)
			if b.Kind != d.Kind() {
				t.Errorf("blob kind %q, want the device's %q", b.Kind, d.Kind())
			}
			if len(tc.secret) >= 16 && bytes.Contains(b.Data, tc.secret) {
				t.Error("the blob holds the secret in clear")
			}
			// The caller zeroes its secret after Seal: the blob must not
			// depend on it.
			clear(tc.secret)
			MustUnseal(t, d, b, tc.aad, want)
			b2 := MustSeal(t, d, want, tc.aad)
			if bytes.Equal(b.Data, b2.Data) {
				t.Error("two seals of the same secret gave the same blob: Seal must use fresh randomness")
			}
		})
	}
}

// testRefuses: blobs that are not this device's, or not for this aad, are
// refused with an error wrapping hsm.ErrUnsealFailed (and not
// hsm.ErrDeviceUnavailable), with no data; the device keeps working.
func testRefuses(t *testing.T, cfg Config) {
	d := cfg.Open(t)
	defer d.Close()
	secret, aad := RandomBytes(t, 32), hsm.SealAAD("cluster-1", "node1")
	b := MustSeal(t, d, secret, aad)
	with := func(f func(*hsm.Blob)) hsm.Blob {
		c := b
		c.Data = bytes.Clone(b.Data)
		if b.Meta != nil {
			c.Meta = make(map[string]string, len(b.Meta))
			for k, v := range b.Meta {
				c.Meta[k] = v
			}
		}
		f(&c)
		return c
	}
	cases := []Refusal{
		{Name: "other node's aad", Blob: b, AAD: hsm.SealAAD("cluster-1", "node2")},
		{Name: "other cluster's aad", Blob: b, AAD: hsm.SealAAD("cluster-2", "node1")},
		{Name: "nil aad", Blob: b},
		{Name: "last byte flipped", Blob: with(func(c *hsm.Blob) { c.Data[len(c.Data)-1] ^= 1 }), AAD: aad},
		{Name: "truncated", Blob: with(func(c *hsm.Blob) { c.Data = c.Data[:len(c.Data)/2] }), AAD: aad},
		{Name: "empty data", Blob: with(func(c *hsm.Blob) { c.Data = nil }), AAD: aad},
		{Name: "other kind", Blob: with(func(c *hsm.Blob) { c.Kind = "other-kind" }), AAD: aad},
	}
	if cfg.Other != nil {
		o := cfg.Other(t)
		defer o.Close()
		cases = append(cases, Refusal{Name: "another device's blob", Blob: MustSeal(t, o, secret, aad), AAD: aad})
	}
	CheckRefusals(t, d, cases)
	// None of the refusals broke the device.
	MustUnseal(t, d, b, aad, secret)
	if err := d.Health(context.Background()); err != nil {
		t.Errorf("Health after refusals: %v", err)
	}
}

// testConcurrent: Seal, Unseal and Health from many goroutines at once.
func testConcurrent(t *testing.T, cfg Config) {
	d := cfg.Open(t)
	defer d.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, cfg.Goroutines)
	for g := range cfg.Goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			aad := hsm.SealAAD("c", fmt.Sprint("node", g))
			for i := range cfg.Rounds {
				secret := []byte(fmt.Sprintf("secret %d/%d", g, i))
				b, err := d.Seal(ctx, secret, aad)
				if err != nil {
					errs <- err
					return
				}
				got, err := d.Unseal(ctx, b, aad)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, secret) {
					errs <- fmt.Errorf("goroutine %d round %d: unsealed another secret", g, i)
					return
				}
				if i%3 == 0 {
					if err := d.Health(ctx); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if cfg.AfterConcurrent != nil {
		cfg.AfterConcurrent(t, d)
	}
}

// testClosed: after Close every method (and Reopen, for an hsm.Reopener)
// returns an error wrapping hsm.ErrDeviceUnavailable; Close again is fine.
func testClosed(t *testing.T, cfg Config) {
	d := cfg.Open(t)
	ctx := context.Background()
	b := MustSeal(t, d, []byte("root key"), nil)
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ops := map[string]func() error{
		"Seal":   func() error { _, err := d.Seal(ctx, []byte("s"), nil); return err },
		"Unseal": func() error { got, err := d.Unseal(ctx, b, nil); clear(got); return err },
		"Health": func() error { return d.Health(ctx) },
	}
	if r, ok := d.(hsm.Reopener); ok {
		ops["Reopen"] = func() error { return r.Reopen(ctx) }
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, hsm.ErrDeviceUnavailable) {
			t.Errorf("%s after Close: %v, want hsm.ErrDeviceUnavailable", name, err)
		}
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// testContext: a cancelled context fails Seal, Unseal and Health with
// context.Canceled, and the device still works with a live one.
func testContext(t *testing.T, cfg Config) {
	d := cfg.Open(t)
	defer d.Close()
	b := MustSeal(t, d, []byte("root key"), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.Seal(ctx, []byte("s"), nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Seal: %v, want context.Canceled", err)
	}
	got, err := d.Unseal(ctx, b, nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Unseal: %v, want context.Canceled", err)
	}
	if got != nil {
		clear(got)
		t.Error("Unseal returned data with a cancelled context")
	}
	if err := d.Health(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Health: %v, want context.Canceled", err)
	}
	MustUnseal(t, d, b, nil, []byte("root key"))
}
