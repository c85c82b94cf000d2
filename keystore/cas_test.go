package keystore

import (
	"errors"
	"testing"
)

func TestRetryCAS(t *testing.T) {
	other := errors.New("other")
	for _, tc := range []struct {
		name      string
		conflicts int   // attempts that lose the race first
		final     error // what the attempt after them returns
		wantCalls int
		wantErr   error
	}{
		{"first try", 0, nil, 1, nil},
		{"two lost races", 2, nil, 3, nil},
		{"other error is not retried", 0, other, 1, other},
		{"gives up", 100, nil, casRetries + 1, ErrConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := retryCAS(func() error {
				calls++
				if calls <= tc.conflicts {
					return ErrConflict
				}
				return tc.final
			})
			if got, exp := calls, tc.wantCalls; got != exp {
				t.Errorf("calls = %d, want %d", got, exp)
			}
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}
