package client_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/coffer-kms/coffer/client"
)

// TestConcurrentUse: one Client shared by many goroutines against the real
// dev node; run with -race.
func TestConcurrentUse(t *testing.T) {
	c := client.NewFromEnv()
	defer c.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				want := fmt.Appendf(nil, "g%d-i%d", g, i)
				w, err := c.Wrap(ctx, "dev", want, nil)
				if err != nil {
					errs <- err
					return
				}
				got, err := c.Unwrap(ctx, "dev", w.Ciphertext, nil)
				if err != nil || !bytes.Equal(got, want) {
					errs <- fmt.Errorf("unwrap %q: %q %v", want, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
