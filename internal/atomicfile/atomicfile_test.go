package atomicfile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

func checkFile(t *testing.T, path string, want []byte, mode os.FileMode) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s holds %q, want %q", path, got, want)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != mode {
		t.Fatalf("%s has mode %v, want %v", path, got, mode)
	}
}

// noLeftovers checks that no temporary file stayed behind in dir.
func noLeftovers(t *testing.T, dir string, want int) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != want {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("%s holds %v, want %d file(s)", dir, names, want)
	}
}

func TestWrite_ReplacesWithMode(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "blob.json")
	if err := Write(path, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, []byte("one"), 0o644) // the umask did not narrow it
	if err := Write(path, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, []byte("two"), 0o600)
	noLeftovers(t, dir, 1)
	if err := Write(filepath.Join(dir, "missing", "x"), []byte("x"), 0o600); err == nil {
		t.Fatal("Write into a missing directory succeeded")
	}
}

func TestWriteNew_NeverReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := WriteNew(path, []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := WriteNew(path, []byte("second"), 0o600)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("WriteNew over an existing file: %v, want fs.ErrExist", err)
	}
	checkFile(t, path, []byte("first"), 0o600)
	noLeftovers(t, dir, 1)
}

// Concurrent WriteNews of one path: exactly one wins, and the file holds
// its data whole.
func TestWriteNew_ConcurrentOneWins(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	var wg sync.WaitGroup
	var mu sync.Mutex
	var won [][]byte
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := bytes.Repeat([]byte{byte('a' + i)}, 4096)
			if err := WriteNew(path, data, 0o600); err == nil {
				mu.Lock()
				won = append(won, data)
				mu.Unlock()
			} else if !errors.Is(err, fs.ErrExist) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if len(won) != 1 {
		t.Fatalf("%d writers won, want 1", len(won))
	}
	checkFile(t, path, won[0], 0o600)
	noLeftovers(t, dir, 1)
}
