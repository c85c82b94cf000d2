package audit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// testLogger collects log lines for assertions.
type testLogger struct {
	mu    sync.Mutex
	lines []string
}

func (l *testLogger) add(level, msg string, args []any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, level+" "+msg+" "+fmt.Sprint(args...))
}

func (l *testLogger) Info(msg string, args ...any)  { l.add("INFO", msg, args) }
func (l *testLogger) Warn(msg string, args ...any)  { l.add("WARN", msg, args) }
func (l *testLogger) Error(msg string, args ...any) { l.add("ERROR", msg, args) }

func (l *testLogger) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

func openTest(t *testing.T, cfg Config) *Writer {
	t.Helper()
	if cfg.NodeID == "" {
		cfg.NodeID = "n1"
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = 5 * time.Millisecond
	}
	w, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func mustAppend(t *testing.T, w *Writer, op string) *Entry {
	t.Helper()
	e := &Entry{Type: TypeRequest, Operation: op, Outcome: OutcomeOK, Caller: &Caller{UID: 1}}
	if err := w.Append(e); err != nil {
		t.Fatalf("append %s: %v", op, err)
	}
	return e
}

// readEntries verifies the files as one chain and returns their entries.
func readEntries(t *testing.T, paths ...string) (Summary, []*Entry) {
	t.Helper()
	s, err := VerifyFiles(paths...)
	if err != nil {
		t.Fatalf("verify %v: %v", paths, err)
	}
	var out []*Entry
	for _, p := range paths {
		data, _ := os.ReadFile(p)
		for _, l := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
			if len(l) == 0 {
				continue
			}
			e, err := ParseLine(l)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
	}
	return s, out
}

func ops(es []*Entry) string {
	var s []string
	for _, e := range es {
		s = append(s, e.Operation)
	}
	return strings.Join(s, ",")
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestWriter_ContinuesAcrossRestart(t *testing.T) {
	for _, fsync := range []string{FsyncInterval, FsyncAlways} {
		t.Run(fsync, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "sub", "audit.log")
			w := openTest(t, Config{Path: path, Fsync: fsync})
			for _, op := range []string{"init", "wrap", "unwrap"} {
				mustAppend(t, w, op)
			}
			if seq, _ := w.Head(); seq != 3 {
				t.Fatalf("head seq %d", seq)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if err := w.Append(&Entry{Type: TypeEvent, Outcome: OutcomeOK}); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("append after close: %v", err)
			}
			if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
				t.Fatalf("mode %v", st.Mode())
			}
			w2 := openTest(t, Config{Path: path, Fsync: fsync})
			if seq, _ := w2.Head(); seq != 3 {
				t.Fatalf("head after restart %d", seq)
			}
			mustAppend(t, w2, "seal")
			w2.Close()
			s, es := readEntries(t, path)
			if s.Entries != 4 || s.LastSeq != 4 || ops(es) != "init,wrap,unwrap,seal" {
				t.Fatalf("summary %+v ops %s", s, ops(es))
			}
			if es[0].NodeID != "n1" || es[0].Time.IsZero() {
				t.Fatalf("entry %+v", es[0])
			}
		})
	}
}

// TestWriter_TornTail: a last line cut short by a crash (never
// acknowledged) is dropped at start, and the chain goes on from the entry
// before it.
func TestWriter_TornTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	lines := chain(1, GenesisHash, 3)
	os.WriteFile(path, append(join(lines), lines[0][:50]...), 0o600)
	log := &testLogger{}
	w := openTest(t, Config{Path: path, Logger: log})
	if err := w.Err(); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, w, "wrap")
	w.Close()
	s, _ := readEntries(t, path)
	if s.Entries != 4 || s.LastSeq != 4 {
		t.Fatalf("summary %+v", s)
	}
	if !log.contains("torn last line") {
		t.Fatalf("no warning about the torn line: %q", log.lines)
	}

	// A file that is one torn line is emptied.
	os.WriteFile(path, lines[0][:30], 0o600)
	w2 := openTest(t, Config{Path: path})
	mustAppend(t, w2, "init")
	w2.Close()
	if s, _ := readEntries(t, path); s.Entries != 1 || s.FirstSeq != 1 {
		t.Fatalf("summary %+v", s)
	}
}

// TestWriter_InvalidTailFailsClosed: a log whose last entry is not valid
// is not appended to (the chain head is unknown); appends are refused
// until the file is moved aside, then the writer resumes by itself.
func TestWriter_InvalidTailFailsClosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	lines := chain(1, GenesisHash, 3)
	lines[2] = bytes.Replace(lines[2], []byte(`"wrap"`), []byte(`"warp"`), 1)
	os.WriteFile(path, join(lines), 0o600)
	w := openTest(t, Config{Path: path})
	err := w.Append(&Entry{Type: TypeRequest, Operation: "wrap", Outcome: OutcomeOK})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "coffer audit verify") {
		t.Fatalf("append to a log with a bad last entry: %v", err)
	}
	if w.Err() == nil || w.Stats().Refused != 1 {
		t.Fatalf("Err %v, stats %+v", w.Err(), w.Stats())
	}
	os.Rename(path, path+".bad")
	waitFor(t, "recovery", func() bool { return w.Err() == nil })
	mustAppend(t, w, "wrap")
	w.Close()
	s, es := readEntries(t, path)
	if s.FirstSeq != 1 || ops(es) != "audit-recovered,wrap" {
		t.Fatalf("summary %+v ops %s", s, ops(es))
	}
}

func TestWriter_ReopenAfterRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	w := openTest(t, Config{Path: path, HeadFile: filepath.Join(dir, "head.json")})
	mustAppend(t, w, "init")
	mustAppend(t, w, "wrap")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, w, "unwrap") // still into the renamed file
	if err := w.Reopen(); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, w, "seal")
	// Reopen without rotation appends to the same file.
	if err := w.Reopen(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	s, es := readEntries(t, path+".1", path)
	if s.Entries != 6 || ops(es) != "init,wrap,unwrap,audit-reopened,seal,audit-reopened" {
		t.Fatalf("summary %+v ops %s", s, ops(es))
	}
	if s, _ := readEntries(t, path); s.FirstSeq != 4 {
		t.Fatalf("new file starts at %d", s.FirstSeq)
	}
}

// TestWriter_HeadFile: with the log rotated away while cofferd is down,
// the chain continues from the head file; with the log cut at its end,
// the writer says so in an event and continues from the recorded head.
func TestWriter_HeadFile(t *testing.T) {
	dir := t.TempDir()
	path, head := filepath.Join(dir, "audit.log"), filepath.Join(dir, "head.json")
	w := openTest(t, Config{Path: path, HeadFile: head})
	for i := 0; i < 5; i++ {
		mustAppend(t, w, "wrap")
	}
	w.Close()
	os.Rename(path, path+".1")

	w = openTest(t, Config{Path: path, HeadFile: head})
	mustAppend(t, w, "unwrap")
	w.Close()
	if s, _ := readEntries(t, path+".1", path); s.LastSeq != 6 {
		t.Fatalf("summary %+v", s)
	}

	// Cut the last line off while stopped.
	data, _ := os.ReadFile(path + ".1")
	lines := bytes.SplitAfter(data, []byte("\n"))
	os.WriteFile(path, join(lines[:2]), 0o600) // a different "current" file ending at seq 2
	log := &testLogger{}
	w = openTest(t, Config{Path: path, HeadFile: head, Logger: log})
	mustAppend(t, w, "wrap")
	w.Close()
	if !log.contains("cut at its end") {
		t.Fatalf("no error about the cut: %q", log.lines)
	}
	_, err := VerifyFiles(path)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Line != 3 || ve.Kind != KindDeleted {
		t.Fatalf("verify after a cut: %v", err)
	}
	data, _ = os.ReadFile(path)
	if !bytes.Contains(data, []byte(`"operation":"audit-log-cut"`)) || !bytes.Contains(data, []byte(`"seq":7,`)) {
		t.Fatalf("no audit-log-cut event at seq 7:\n%s", data)
	}
}

// faultyFile is a real file whose writes and fsyncs fail on demand.
type faultyFile struct {
	*os.File
	w       *faults
	partial bool
}

type faults struct {
	writeErr, syncErr atomic.Pointer[error]
	syncs, writes     atomic.Int64
	writeDelay        time.Duration
	syncDelay         time.Duration
}

func (f *faultyFile) Write(p []byte) (int, error) {
	f.w.writes.Add(1)
	if f.w.writeDelay > 0 {
		time.Sleep(f.w.writeDelay) // a slow disk
	}
	if e := f.w.writeErr.Load(); e != nil {
		// Write half, as a full disk does, then fail.
		n, _ := f.File.Write(p[:len(p)/2])
		return n, *e
	}
	return f.File.Write(p)
}

func (f *faultyFile) Sync() error {
	f.w.syncs.Add(1)
	if f.w.syncDelay > 0 {
		time.Sleep(f.w.syncDelay) // the disk's latency
	}
	if e := f.w.syncErr.Load(); e != nil {
		return *e
	}
	return f.File.Sync()
}

func faultyOpen(fl *faults) func(string) (File, error) {
	return func(p string) (File, error) {
		f, err := openFile(p)
		if err != nil {
			return nil, err
		}
		return &faultyFile{File: f.(*os.File), w: fl}, nil
	}
}

func setErr(p *atomic.Pointer[error], err error) {
	if err == nil {
		p.Store(nil)
		return
	}
	p.Store(&err)
}

func TestWriter_WriteFailure(t *testing.T) {
	for _, fsync := range []string{FsyncInterval, FsyncAlways} {
		t.Run(fsync, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			fl := &faults{}
			log := &testLogger{}
			w := openTest(t, Config{Path: path, Fsync: fsync, OpenFile: faultyOpen(fl), Logger: log, RetryInterval: time.Hour})
			mustAppend(t, w, "init")
			seq, hash := w.Head()

			setErr(&fl.writeErr, syscall.ENOSPC)
			err := w.Append(&Entry{Type: TypeRequest, Operation: "create", Outcome: OutcomeOK})
			if !errors.Is(err, ErrUnavailable) || !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("append on a full disk: %v", err)
			}
			// Refused at once while failing, and the head (status) still
			// names the last entry on disk.
			if err := w.Append(&Entry{Type: TypeRequest, Operation: "wrap", Outcome: OutcomeOK}); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("append while failing: %v", err)
			}
			if s, h := w.Head(); s != seq || h != hash {
				t.Fatalf("head %d %s, want %d %s", s, h, seq, hash)
			}
			if w.Refuse() == nil {
				t.Fatal("Refuse while failing returned nil")
			}
			if st := w.Stats(); st.Refused != 2 || st.WriteErrors != 1 {
				t.Fatalf("stats %+v", st)
			}
			// The half-written line is not left in the file.
			if _, err := VerifyFiles(path); err != nil {
				t.Fatalf("file after a failed write: %v", err)
			}

			setErr(&fl.writeErr, nil)
			if !w.recover() {
				t.Fatalf("recover failed: %v", w.Err())
			}
			mustAppend(t, w, "wrap")
			w.Close()
			_, es := readEntries(t, path)
			// The entry whose write failed is written late, in its place.
			if got := ops(es); got != "init,create,audit-recovered,wrap" {
				t.Fatalf("ops %s", got)
			}
			if d := es[2].Detail; d["refused_total"] != "2" || !strings.Contains(d["error"], "no space left") || d["written_late"] != "1" {
				t.Fatalf("recovery event detail %v", d)
			}
			if !log.contains("cannot be written") || !log.contains("writable again") {
				t.Fatalf("log %q", log.lines)
			}
		})
	}
}

func TestWriter_FsyncFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	fl := &faults{}
	w := openTest(t, Config{Path: path, Fsync: FsyncAlways, OpenFile: faultyOpen(fl), RetryInterval: time.Hour})
	mustAppend(t, w, "init")
	setErr(&fl.syncErr, syscall.EIO)
	if err := w.Append(&Entry{Type: TypeRequest, Operation: "wrap", Outcome: OutcomeOK}); !errors.Is(err, syscall.EIO) {
		t.Fatalf("append with failing fsync: %v", err)
	}
	if s, _ := w.Head(); s != 1 {
		t.Fatalf("head %d after a failed fsync, want 1 (the unsynced entry is not on disk)", s)
	}
	if w.recover() {
		t.Fatal("recovered while fsync still fails")
	}
	setErr(&fl.syncErr, nil)
	if !w.recover() {
		t.Fatal(w.Err())
	}
	w.Close()
	if _, es := readEntries(t, path); ops(es) != "init,wrap,audit-recovered" {
		t.Fatalf("ops %s", ops(es))
	}
}

// TestWriter_IntervalFsyncFailure: with interval fsync, a failed
// background fsync moves the unsynced entries back to be written again,
// and appends are refused until then.
func TestWriter_IntervalFsyncFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	fl := &faults{}
	w := openTest(t, Config{Path: path, FsyncInterval: time.Millisecond, OpenFile: faultyOpen(fl), RetryInterval: time.Hour})
	setErr(&fl.syncErr, syscall.EIO)
	mustAppend(t, w, "init")
	mustAppend(t, w, "wrap")
	waitFor(t, "the background fsync to fail", func() bool { return w.Err() != nil })
	if s, _ := w.Head(); s != 0 {
		t.Fatalf("head %d, want 0", s)
	}
	setErr(&fl.syncErr, nil)
	if !w.recover() {
		t.Fatal(w.Err())
	}
	w.Close()
	if _, es := readEntries(t, path); ops(es) != "init,wrap,audit-recovered" {
		t.Fatalf("ops %s", ops(es))
	}
}

// TestWriter_GroupCommit: with fsync = always, concurrent appends share
// fsyncs, and every one returns only once its entry is synced.
func TestWriter_GroupCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	fl := &faults{syncDelay: 2 * time.Millisecond}
	w := openTest(t, Config{Path: path, Fsync: FsyncAlways, OpenFile: faultyOpen(fl)})
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := &Entry{Type: TypeRequest, Operation: "wrap", Outcome: OutcomeOK}
			if err := w.Append(e); err != nil {
				errs <- err
				return
			}
			w.mu.Lock()
			synced := w.syncedSeq
			w.mu.Unlock()
			if synced < e.Seq {
				errs <- errors.New("append returned before its entry was synced")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := fl.syncs.Load(); got >= n/2 {
		t.Fatalf("%d fsyncs for %d concurrent appends: no group commit", got, n)
	}
	w.Close()
	if s, _ := readEntries(t, path); s.Entries != n {
		t.Fatalf("entries %d", s.Entries)
	}
}

func TestWriter_OpenFailureRecovers(t *testing.T) {
	dir := t.TempDir()
	// The log's directory is a file: opening fails until it is removed.
	os.WriteFile(filepath.Join(dir, "logs"), nil, 0o600)
	path := filepath.Join(dir, "logs", "audit.log")
	w := openTest(t, Config{Path: path})
	if err := w.Append(&Entry{Type: TypeEvent, Operation: "start", Outcome: OutcomeOK}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("append with an unopenable log: %v", err)
	}
	os.Remove(filepath.Join(dir, "logs"))
	waitFor(t, "recovery", func() bool { return w.Err() == nil })
	mustAppend(t, w, "init")
	w.Close()
	if _, es := readEntries(t, path); ops(es) != "audit-recovered,init" {
		t.Fatalf("ops %s", ops(es))
	}
}

func TestWriter_CloseLogsUnwritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	fl := &faults{}
	log := &testLogger{}
	w := openTest(t, Config{Path: path, OpenFile: faultyOpen(fl), Logger: log, RetryInterval: time.Hour})
	setErr(&fl.writeErr, syscall.ENOSPC)
	w.Append(&Entry{Type: TypeRequest, Operation: "create", Key: "k1", Outcome: OutcomeOK})
	if err := w.Close(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("close: %v", err)
	}
	if !log.contains(`"key":"k1"`) {
		t.Fatalf("the unwritten entry is not in the daemon log: %q", log.lines)
	}
}

func TestWriter_BoundsEntries(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w := openTest(t, Config{Path: path})
	d := map[string]string{}
	for i := 0; i < 40; i++ {
		d[string(rune('a'+i%26))+strings.Repeat("k", i)] = strings.Repeat("v", 5000)
	}
	e := &Entry{Type: TypeEvent, Operation: strings.Repeat("o", 2000), Outcome: OutcomeOK, Detail: d}
	if err := w.Append(e); err != nil {
		t.Fatal(err)
	}
	w.Close()
	s, es := readEntries(t, path)
	if s.Entries != 1 || len(es[0].Detail) != MaxDetail || es[0].Detail["truncated"] == "" {
		t.Fatalf("detail %d fields", len(es[0].Detail))
	}
	if st, _ := os.Stat(path); st.Size() > 16<<10 {
		t.Fatalf("entry of %d bytes", st.Size())
	}
}

// TestWriter_DiskFull fills a real, small tmpfs: appends fail closed with
// ENOSPC, nothing half-written stays in the file, and once space is freed
// the writer resumes by itself.
func TestWriter_DiskFull(t *testing.T) {
	dir := mountTmpfs(t, "64k")
	path := filepath.Join(dir, "audit.log")
	w := openTest(t, Config{Path: path, Fsync: FsyncAlways, RetryInterval: 5 * time.Millisecond})
	mustAppend(t, w, "init")
	filler := filepath.Join(dir, "filler")
	fill(t, filler)
	var acked []uint64
	var failed int
	for i := 0; i < 50; i++ {
		e := &Entry{Type: TypeRequest, Operation: "wrap", Outcome: OutcomeOK}
		if err := w.Append(e); err == nil {
			acked = append(acked, e.Seq)
		} else if errors.Is(err, syscall.ENOSPC) {
			failed++
		} else if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("append on a full disk: %v", err)
		}
	}
	if failed == 0 {
		t.Fatal("no append failed on a full file system")
	}
	os.Remove(filler)
	waitFor(t, "recovery", func() bool { return w.Err() == nil })
	mustAppend(t, w, "unwrap")
	w.Close()
	_, es := readEntries(t, path)
	inLog := map[uint64]bool{}
	for _, e := range es {
		inLog[e.Seq] = true
	}
	for _, s := range acked {
		if !inLog[s] {
			t.Errorf("acknowledged entry %d is not in the log", s)
		}
	}
}

// mountTmpfs mounts a tmpfs of the given size in a temp dir, or skips.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s): the disk-full test needs mount permission", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fill writes path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1024)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	// Fill the last partial block too.
	for {
		if _, err := f.Write(buf[:1]); err != nil {
			return
		}
	}
}

// BenchmarkAppend is the audit log's cost per request: encode, hash,
// write(2) (fsync on the interval, or per group with always).
func BenchmarkAppend(b *testing.B) {
	for _, fsync := range []string{FsyncInterval, FsyncAlways} {
		b.Run(fsync, func(b *testing.B) {
			w, err := Open(Config{Path: filepath.Join(b.TempDir(), "audit.log"), NodeID: "n1", Fsync: fsync})
			if err != nil {
				b.Fatal(err)
			}
			defer w.Close()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					e := &Entry{Type: TypeRequest, RequestID: "0a1b2c3d-1f", Operation: "wrap", Caller: &Caller{UID: 1001, GID: 1001, PID: 4242, Unit: "billing.service"},
						Key: "billing-db", KeyVersion: 3, Outcome: OutcomeOK}
					if err := w.Append(e); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// TestWriter_ConcurrentAppends: appends from many goroutines share write
// calls, the chain stays intact through a failure in the middle, and every
// append that returned nil is in the log, in seq order.
func TestWriter_ConcurrentAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	fl := &faults{writeDelay: 200 * time.Microsecond}
	w := openTest(t, Config{Path: path, OpenFile: faultyOpen(fl), RetryInterval: 2 * time.Millisecond})
	const workers, each = 16, 40
	var mu sync.Mutex
	acked := map[uint64]bool{}
	var wg sync.WaitGroup
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if g == 0 && i == each/2 {
					setErr(&fl.writeErr, syscall.ENOSPC)
					time.AfterFunc(5*time.Millisecond, func() { setErr(&fl.writeErr, nil) })
				}
				e := &Entry{Type: TypeRequest, Operation: "wrap", Outcome: OutcomeOK}
				if err := w.Append(e); err == nil {
					mu.Lock()
					acked[e.Seq] = true
					mu.Unlock()
				} else if !errors.Is(err, ErrUnavailable) {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	waitFor(t, "recovery", func() bool { return w.Err() == nil })
	w.Close()
	_, es := readEntries(t, path)
	inLog := map[uint64]bool{}
	for _, e := range es {
		inLog[e.Seq] = true
	}
	for s := range acked {
		if !inLog[s] {
			t.Errorf("acknowledged entry %d is not in the log", s)
		}
	}
	if len(acked) == 0 {
		t.Error("no append succeeded")
	}
	if writes := fl.writes.Load(); writes >= int64(len(es)) {
		t.Errorf("%d writes for %d entries: concurrent appends do not share writes", writes, len(es))
	}
}

// TestWriter_ReopenFailsWithPending: a reopen that cannot open the new file
// keeps the entries encoded before it in the chain, written once the file
// can be opened.
func TestWriter_ReopenFailsWithPending(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "logs", "audit.log")
	w := openTest(t, Config{Path: path, RetryInterval: time.Hour})
	mustAppend(t, w, "init")
	// Stage an entry as encoded-but-unwritten, as a concurrent appender
	// would leave it, then make the reopen fail.
	w.mu.Lock()
	w.pending = w.encodeLocked(w.pending, &Entry{Type: TypeRequest, Operation: "wrap", Outcome: OutcomeOK})
	w.npending++
	w.encoded += int64(len(w.pending))
	w.mu.Unlock()
	os.Rename(filepath.Join(dir, "logs"), filepath.Join(dir, "old"))
	os.WriteFile(filepath.Join(dir, "logs"), nil, 0o600) // a file where the directory was
	if err := w.Reopen(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("reopen into a missing directory: %v", err)
	}
	os.Remove(filepath.Join(dir, "logs"))
	if !w.recover() {
		t.Fatal(w.Err())
	}
	mustAppend(t, w, "unwrap")
	w.Close()
	_, es := readEntries(t, filepath.Join(dir, "old", "audit.log"), path)
	if got := ops(es); got != "init,wrap,audit-recovered,unwrap" {
		t.Fatalf("ops %s", got)
	}
}
