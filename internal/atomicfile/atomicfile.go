// Package atomicfile writes small files so that a crash leaves either the
// old content or the new, never a mix, and the new content is durable once
// the call returns: the data goes to a temporary file in the same directory
// (created 0600, so a secret is never readable by others even for a
// moment), which gets its mode, is fsynced and closed, then renamed (Write)
// or hard-linked (WriteNew) to its name, and the directory is fsynced.
//
// Every writer of a durable file in Coffer uses it: the device-sealed root
// key, the soft device's key, the audit chain head and the TLS files.
package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces path with data, with file mode mode.
func Write(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := writeSync(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// WriteNew writes data to path, with file mode mode, but never replaces an
// existing file: if path exists it returns an error wrapping fs.ErrExist
// and leaves it untouched. link(2) makes the check race-free; on a
// filesystem without hard links it falls back to an O_EXCL create of path
// itself.
func WriteNew(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := writeSync(tmp, data, mode); err != nil {
		return err
	}
	switch err := os.Link(tmp.Name(), path); {
	case err == nil:
	case errors.Is(err, fs.ErrExist):
		return err
	default:
		f, ferr := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if ferr != nil {
			return ferr
		}
		if werr := writeSync(f, data, mode); werr != nil {
			os.Remove(path)
			return werr
		}
	}
	syncDir(dir)
	return nil
}

// writeSync writes data to f, sets its mode, fsyncs and closes it.
func writeSync(f *os.File, data []byte, mode os.FileMode) error {
	_, err := f.Write(data)
	if err == nil {
		// Chmod, not the create mode: the umask must not widen or narrow
		// the mode asked for.
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncDir makes a new directory entry durable; best effort, since some
// filesystems cannot open or fsync a directory.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
