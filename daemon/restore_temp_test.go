package daemon

import (
	"os"
	"path/filepath"
	"testing"
)

// A restore streams its upload through temporary files in the data dir; a
// crash mid-restore would leave them (they hold a snapshot: encrypted
// records, sealed keyrings). The next start removes them, and nothing
// else of the data dir.
func TestServer_RemovesRestoreTempsAtStart(t *testing.T) {
	dir := t.TempDir()
	left := filepath.Join(dir, ".restore-123.tmp")
	keep := filepath.Join(dir, "restore-notes.txt")
	for _, p := range []string{left, keep} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	startNode(t, dir, nil)
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Fatalf("a crashed restore's file is still there (%v)", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("another file was removed: %v", err)
	}
}
