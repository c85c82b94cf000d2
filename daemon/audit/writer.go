package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coffer-kms/coffer/internal/atomicfile"
)

// Fsync policies (Config.Fsync).
const (
	// FsyncInterval writes each entry with write(2) before Append returns,
	// and fsyncs the file every Config.FsyncInterval.
	FsyncInterval = "interval"
	// FsyncAlways makes Append return only after an fsync that covers the
	// entry; concurrent appends share one fsync (group commit).
	FsyncAlways = "always"
)

// Defaults.
const (
	DefaultFsyncInterval = 100 * time.Millisecond
	DefaultRetryInterval = time.Second
)

// maxUnsynced bounds the bytes written but not yet fsync'd (and so kept in
// memory to be written again if the fsync fails). Past it, an append waits
// for an fsync, as with FsyncAlways: a disk that cannot keep up slows the
// daemon down rather than growing its memory. At 40,000 requests a second
// an interval of 100ms holds about 2 MiB.
const maxUnsynced = 8 << 20

// ErrUnavailable is wrapped by every error that means the audit log cannot
// be written: the daemon must refuse the request.
var ErrUnavailable = errors.New("the audit log cannot be written")

// UnavailableError is why the log cannot be written, and since when.
type UnavailableError struct {
	Path  string
	Since time.Time
	Err   error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("%v (%s: %v, since %s)", ErrUnavailable, e.Path, e.Err, e.Since.UTC().Format(time.RFC3339))
}

func (e *UnavailableError) Unwrap() []error { return []error{ErrUnavailable, e.Err} }

// Logger is what the writer logs through (hclog.Logger satisfies it).
type Logger interface {
	Info(msg string, args ...any)
	Warn(msg string, args ...any)
	Error(msg string, args ...any)
}

// Config configures a Writer.
type Config struct {
	// Path is the audit log file. Its directory is created (0700) if
	// missing; the file is created 0600.
	Path string
	// HeadFile, if set, is where the writer remembers the chain head (seq
	// and hash of the last entry on disk), so that the chain continues
	// across a restart after the log was rotated away, and so that a log
	// cut at its end while the daemon was down is noticed at start.
	HeadFile string
	// NodeID goes into every entry.
	NodeID string
	// Fsync is FsyncInterval (default) or FsyncAlways.
	Fsync string
	// FsyncInterval is how often FsyncInterval syncs (default 100ms).
	FsyncInterval time.Duration
	// RetryInterval is how often a failing log is tried again (default 1s).
	RetryInterval time.Duration
	Logger        Logger
	// Now defaults to time.Now.
	Now func() time.Time
	// OpenFile opens the log (tests inject failures); default os.OpenFile
	// with O_RDWR|O_APPEND|O_CREATE.
	OpenFile func(path string) (File, error)
}

// File is the part of *os.File the writer uses.
type File interface {
	io.Writer
	io.ReaderAt
	Sync() error
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	Close() error
}

// Stats are the writer's counters, for metrics.
type Stats struct {
	Entries     uint64 // entries written
	WriteErrors uint64 // failed writes and fsyncs
	Refused     uint64 // appends refused because the log was failing
	Seq         uint64 // last seq written
}

// Writer appends entries to the audit log. It is safe for concurrent use.
//
// Guarantee: when Append returns nil, the entry has been written to the
// file with write(2) (so it survives a crash of cofferd), and with
// FsyncAlways also fsync'd (so it survives a power loss); with
// FsyncInterval it reaches the disk within FsyncInterval. When a write or
// fsync fails, Append returns an error wrapping ErrUnavailable, and so does
// every Append after it until the log is writable again: the writer retries
// every RetryInterval (and on Reopen), and then writes first the entries it
// could not write before, in order, so the chain has no gap. An entry whose
// write failed may so appear in the log although its request was refused:
// the log may over-report, never under-report.
//
// Concurrent appends share write(2) calls: an appender that finds no write
// in progress writes everything encoded so far (its own entry and those of
// the appenders waiting behind it) in one call; the others wait for it.
// Alone, an appender writes its own entry at once, so this costs nothing
// at low load and saves most system calls at high load.
type Writer struct {
	cfg      Config
	log      Logger
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}

	// syncMu serialises fsyncs (and the recovery, which fsyncs); it is
	// taken before mu.
	syncMu sync.Mutex

	mu sync.Mutex
	// idle is signalled (with mu) when a write finishes: appenders wait
	// on it for their entry, file operations for the file to be free.
	idle     *sync.Cond
	writing  bool   // a write(2) is in progress, without mu
	f        File   // nil while the file cannot be opened
	fileSize int64  // bytes in f known good: synced + len(unsynced)
	pending  []byte // encoded, not yet written
	npending int    // entries in pending

	// writes counts write(2) calls; groupedAt is the last that carried
	// more than one entry (appendLocked).
	writes, groupedAt uint64

	spare    []byte // a recycled buffer for pending
	unsynced []byte // written to f since its last fsync
	retry    []byte // lines not (or no longer) in f, to write first
	seq      uint64 // chain head: last seq assigned
	hash     string // and its hash
	wSeq     uint64 // last entry written to the file
	wHash    string
	// encoded, written and synced count bytes over the writer's life (not
	// file offsets), so that a waiter can tell whether a write or an fsync
	// covered its entry, across reopens.
	encoded, written, synced int64
	syncedSeq                uint64
	syncedHash               string
	headSaved                uint64 // seq last written to HeadFile
	headFailing              bool   // the last HeadFile write failed (logged once)
	failure                  *UnavailableError
	closed                   bool

	failing     atomic.Bool
	entries     atomic.Uint64
	writeErrors atomic.Uint64
	refused     atomic.Uint64
	// headMu guards the head last written, for Head: a lock of its own,
	// so that status never waits behind a write or a recovery, and no
	// allocation per entry (an atomic pointer to the hash was one).
	headMu   sync.Mutex
	headSeq  uint64
	headHash string
}

// Open starts a writer for cfg.Path, continuing the chain found at the end
// of the file (or in cfg.HeadFile). It does not fail when the file cannot
// be opened or its last entry is not valid: the writer then starts failing
// (Err says why), refuses appends, and keeps trying. It returns an error
// only for a bad Config.
func Open(cfg Config) (*Writer, error) {
	if cfg.Path == "" {
		return nil, errors.New("audit: no log path configured")
	}
	switch cfg.Fsync {
	case "":
		cfg.Fsync = FsyncInterval
	case FsyncInterval, FsyncAlways:
	default:
		return nil, fmt.Errorf("audit: fsync %q is not %q or %q", cfg.Fsync, FsyncInterval, FsyncAlways)
	}
	if cfg.FsyncInterval <= 0 {
		cfg.FsyncInterval = DefaultFsyncInterval
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OpenFile == nil {
		cfg.OpenFile = openFile
	}
	w := &Writer{cfg: cfg, log: cfg.Logger, stop: make(chan struct{}), done: make(chan struct{}), hash: GenesisHash}
	w.idle = sync.NewCond(&w.mu)
	if w.log == nil {
		w.log = nopLogger{}
	}
	hseq, hhash, hpath := w.readHeadFile()
	if hseq > 0 {
		w.seq, w.hash = hseq, hhash
	}
	var cut *Entry
	w.mu.Lock()
	if err := w.openLocked(); err != nil {
		w.failLocked(err)
	} else if fseq, fhash, err := w.tailLocked(); err != nil {
		w.failLocked(err)
		w.f.Close()
		w.f = nil
	} else if fseq > 0 || hseq == 0 {
		if hseq > fseq || (hseq > 0 && hseq == fseq && hhash != fhash) {
			// The file ends before the head the daemon recorded last time:
			// it was cut at its end, or replaced, while cofferd was down.
			// Keep the recorded head, so that the next entry's seq and
			// prev_hash show the break, and say so in an event.
			w.log.Error("the audit log ends before the last entry this node recorded: it was cut at its end or replaced while cofferd was stopped", "path", cfg.Path, "file-seq", fseq, "recorded-seq", hseq, "recorded-file", hpath)
			cut = &Entry{Type: TypeEvent, Operation: "audit-log-cut", Outcome: OutcomeError, Detail: map[string]string{
				"file_last_seq": strconv.FormatUint(fseq, 10), "recorded_seq": strconv.FormatUint(hseq, 10), "recorded_hash": hhash, "path": cfg.Path}}
		} else {
			w.seq, w.hash = fseq, fhash
		}
	}
	w.wSeq, w.wHash = w.seq, w.hash
	w.syncedSeq, w.syncedHash = w.seq, w.hash
	w.publishLocked()
	w.mu.Unlock()
	w.saveHead()
	go w.loop()
	if cut != nil {
		w.Append(cut)
	}
	return w, nil
}

func openFile(path string) (File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
}

// openLocked opens cfg.Path into w.f. The caller made sure that nothing
// is left unsynced in the previous file.
func (w *Writer) openLocked() error {
	f, err := w.cfg.OpenFile(w.cfg.Path)
	if err != nil {
		return fmt.Errorf("opening the audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("reading the audit log's size: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("%s is not a regular file", w.cfg.Path)
	}
	w.f, w.fileSize, w.unsynced = f, st.Size(), w.unsynced[:0]
	return nil
}

// tailLocked reads the last entry of w.f, dropping a torn last line (a
// write cut short by a crash: never acknowledged). It returns seq 0 for an
// empty file.
func (w *Writer) tailLocked() (uint64, string, error) {
	size := w.fileSize
	if size == 0 {
		return 0, GenesisHash, nil
	}
	n := min(size, int64(MaxLine)+2)
	buf := make([]byte, n)
	if _, err := w.f.ReadAt(buf, size-n); err != nil && err != io.EOF {
		return 0, "", fmt.Errorf("reading the end of the audit log: %w", err)
	}
	if buf[len(buf)-1] != '\n' {
		i := bytes.LastIndexByte(buf, '\n')
		if i < 0 && n < size {
			return 0, "", fmt.Errorf("the last %d bytes of %s hold no complete line: it is not an audit log; move it aside (keep it for investigation): cofferd resumes within a second", n, w.cfg.Path)
		}
		keep := size - n + int64(i) + 1
		if err := w.f.Truncate(keep); err != nil {
			return 0, "", fmt.Errorf("removing a torn last line from the audit log: %w", err)
		}
		w.log.Warn("removed a torn last line from the audit log (cofferd stopped while writing it; it was never acknowledged)", "path", w.cfg.Path, "bytes", size-keep)
		w.fileSize = keep
		buf = buf[:i+1]
		if keep == 0 {
			return 0, GenesisHash, nil
		}
	}
	body := buf[:len(buf)-1]
	last := body[bytes.LastIndexByte(body, '\n')+1:]
	e, err := ParseLine(last)
	if err != nil {
		return 0, "", fmt.Errorf("the last entry of %s is not valid (%v): check it with `coffer audit verify %s`, then move the file aside (keep it for investigation): cofferd resumes within a second", w.cfg.Path, err, w.cfg.Path)
	}
	return e.Seq, e.Hash, nil
}

// Append assigns e its seq, time (if zero), node id and hashes, writes it,
// and returns once the entry is written as the fsync policy promises (see
// Writer). The error wraps ErrUnavailable when the log cannot be written.
func (w *Writer) Append(e *Entry) error {
	w.mu.Lock()
	if w.failure != nil || w.closed {
		w.refused.Add(1)
		err := w.errLocked()
		w.mu.Unlock()
		return err
	}
	err := w.appendLocked(e)
	target := w.written
	backlog := len(w.unsynced)
	w.mu.Unlock()
	if err != nil {
		return err
	}
	if w.cfg.Fsync != FsyncAlways && backlog <= maxUnsynced {
		return nil
	}
	// fsync = always, or more written since the last fsync than the
	// interval's usual worth: wait for an fsync, so that a disk that does
	// not keep up slows requests down instead of growing memory.
	return w.syncTo(target)
}

// maxGroup bounds the entries an appender waits to share a write with.
const maxGroup = 256

// appendLocked encodes e and returns once it is written (or its write
// failed). Called and returns with mu held.
func (w *Writer) appendLocked(e *Entry) error {
	before := len(w.pending)
	w.pending = w.encodeLocked(w.pending, e)
	w.npending++
	w.encoded += int64(len(w.pending) - before)
	end := w.encoded
	yielded := false
	for w.written < end {
		if w.failure != nil {
			// The write that held this entry failed; the entry waits in
			// the retry buffer.
			return w.errLocked()
		}
		if w.writing {
			w.idle.Wait()
			continue
		}
		if !yielded && w.npending < maxGroup && w.groupedAt > 0 && w.writes-w.groupedAt <= 64 {
			// Appends are concurrent (one of the last 64 writes carried
			// several entries): let the requests that are ready to run
			// append their entries first, so that one write(2) carries
			// them all; most appenders then find their entry written by
			// another (0.14 audit writes per request instead of 0.95 at
			// concurrency 32, docs/benchmarks.md). A lone client's
			// appends never group, so it never waits for a yield.
			yielded = true
			w.mu.Unlock()
			runtime.Gosched()
			w.mu.Lock()
			continue
		}
		w.writeLocked()
	}
	return nil
}

// writeLocked writes everything pending in one write(2), without mu held
// during the call, and wakes the appenders waiting for it.
func (w *Writer) writeLocked() {
	buf, n, seq, hash := w.pending, w.npending, w.seq, w.hash
	w.pending, w.npending, w.spare = w.spare[:0], 0, nil
	w.writing = true
	f := w.f
	w.mu.Unlock()
	_, err := f.Write(buf)
	w.mu.Lock()
	w.writing = false
	if err != nil {
		w.writeErrors.Add(1)
		// Nothing of this batch may stay in the file: cut back to the last
		// complete line, and keep the batch, then what was encoded
		// meanwhile, to write first once it works.
		f.Truncate(w.fileSize)
		w.retry = append(append(w.retry, buf...), w.pending...)
		w.pending, w.npending = w.pending[:0], 0
		w.encoded = w.written
		w.failLocked(fmt.Errorf("writing: %w", err))
	} else {
		w.fileSize += int64(len(buf))
		w.written += int64(len(buf))
		w.unsynced = append(w.unsynced, buf...)
		w.wSeq, w.wHash = seq, hash
		w.entries.Add(uint64(n))
		w.writes++
		if n > 1 {
			w.groupedAt = w.writes
		}
		w.publishLocked()
	}
	w.spare = buf[:0]
	w.idle.Broadcast()
}

// waitIdleLocked waits until no write is in progress, so that the file can
// be truncated, synced or replaced.
func (w *Writer) waitIdleLocked() {
	for w.writing {
		w.idle.Wait()
	}
}

// encodeLocked fills in e's chain fields, appends its line to b and
// advances the head.
func (w *Writer) encodeLocked(b []byte, e *Entry) []byte {
	if e.Time.IsZero() {
		e.Time = w.cfg.Now()
	}
	e.NodeID = w.cfg.NodeID
	e.HMAC = boundMap(e.HMAC)
	e.Detail = boundMap(e.Detail)
	e.Key, e.Operation, e.RequestID = bound(e.Key), bound(e.Operation), bound(e.RequestID)
	if e.Caller != nil && len(e.Caller.Unit) > MaxValue {
		// A copy: the caller's struct may be shared (one per connection).
		c := *e.Caller
		c.Unit = bound(c.Unit)
		e.Caller = &c
	}
	w.seq++
	e.Seq, e.PrevHash = w.seq, w.hash
	b = appendEncoded(b, e)
	w.hash = e.Hash
	return b
}

// bound cuts a value to MaxValue bytes (on a rune boundary).
func bound(s string) string {
	if len(s) <= MaxValue {
		return s
	}
	i := MaxValue
	for i > 0 && s[i]&0xc0 == 0x80 {
		i--
	}
	return s[:i] + "…"
}

// boundMap keeps at most MaxDetail fields with bounded keys and values.
func boundMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, min(len(m), MaxDetail+1))
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	if len(keys) > MaxDetail {
		slices.Sort(keys)
		out["truncated"] = strconv.Itoa(len(keys)-MaxDetail+1) + " fields dropped"
		keys = keys[:MaxDetail-1]
	}
	for _, k := range keys {
		out[bound(k)] = bound(m[k])
	}
	return out
}

// syncTo returns once the bytes up to the life-time offset target are
// fsync'd. Concurrent callers share fsyncs: whoever holds syncMu syncs
// everything written so far, and the callers queued behind it usually find
// their entry covered already.
func (w *Writer) syncTo(target int64) error {
	w.syncMu.Lock()
	defer w.syncMu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	for try := 0; w.synced < target; try++ {
		// A failure in between moved the bytes back to the retry buffer:
		// they are not on disk.
		if w.failure != nil || w.closed || try == 3 {
			return w.errLocked()
		}
		if err := w.syncLocked(); err != nil {
			return err
		}
	}
	return nil
}

// syncLocked fsyncs w.f, with mu held and released around the fsync so that
// appends go on meanwhile. The caller holds syncMu.
func (w *Writer) syncLocked() error {
	if w.f == nil || len(w.unsynced) == 0 {
		return nil
	}
	f, upto, n, seq, hash := w.f, w.written, len(w.unsynced), w.wSeq, w.wHash
	w.mu.Unlock()
	err := f.Sync()
	w.mu.Lock()
	if f != w.f {
		// Reopened meanwhile: Reopen synced the old file itself.
		return nil
	}
	if err != nil {
		w.syncFailedLocked(err)
		return w.errLocked()
	}
	w.synced = upto
	w.syncedSeq, w.syncedHash = seq, hash
	k := copy(w.unsynced, w.unsynced[n:])
	w.unsynced = w.unsynced[:k]
	return nil
}

// syncFileLocked fsyncs w.f without releasing mu (Reopen and Close, which
// stop the writer anyway). The caller holds syncMu.
func (w *Writer) syncFileLocked() {
	w.waitIdleLocked()
	if w.f == nil || len(w.unsynced) == 0 {
		return
	}
	if err := w.f.Sync(); err != nil {
		w.syncFailedLocked(err)
		return
	}
	w.synced = w.written
	w.syncedSeq, w.syncedHash = w.wSeq, w.wHash
	w.unsynced = w.unsynced[:0]
}

// syncFailedLocked handles a failed fsync of w.f. After one the kernel may
// have dropped the dirty pages: what was written since the last good fsync
// may not be on disk. Cut the file back to that point and keep those lines
// to write again, before the ones already waiting.
func (w *Writer) syncFailedLocked(err error) {
	w.waitIdleLocked()
	w.writeErrors.Add(1)
	n := int64(len(w.unsynced))
	w.f.Truncate(w.fileSize - n)
	w.fileSize -= n
	w.written -= n
	w.entries.Add(^uint64(bytes.Count(w.unsynced, []byte{'\n'}) - 1))
	w.retry = append(append(append([]byte(nil), w.unsynced...), w.retry...), w.pending...)
	w.unsynced, w.pending, w.npending = w.unsynced[:0], w.pending[:0], 0
	w.encoded = w.written
	w.wSeq, w.wHash = w.syncedSeq, w.syncedHash
	w.failLocked(fmt.Errorf("fsync: %w", err))
	w.publishLocked()
	w.idle.Broadcast()
}

// failLocked enters (or stays in) the failing state. Entries encoded but
// not written yet join the retry buffer, in order: they are part of the
// chain. No write may be in progress.
func (w *Writer) failLocked(err error) {
	if len(w.pending) > 0 {
		w.retry = append(w.retry, w.pending...)
		w.pending, w.npending = w.pending[:0], 0
	}
	w.encoded = w.written
	if w.failure == nil {
		w.failure = &UnavailableError{Path: w.cfg.Path, Since: w.cfg.Now(), Err: err}
		w.failing.Store(true)
		w.log.Error("the audit log cannot be written: refusing every audited request until it can", "path", w.cfg.Path, "error", err)
		return
	}
	w.failure.Err = err
}

func (w *Writer) errLocked() error {
	if w.failure != nil {
		f := *w.failure
		return &f
	}
	return &UnavailableError{Path: w.cfg.Path, Since: w.cfg.Now(), Err: errors.New("the audit log is closed")}
}

// Err returns why the log cannot be written (an *UnavailableError), or nil.
func (w *Writer) Err() error {
	if !w.failing.Load() {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failure == nil {
		return nil
	}
	return w.errLocked()
}

// Refuse is Err for a request about to be refused because of it: it also
// counts the refusal (reported when the log recovers).
func (w *Writer) Refuse() error {
	err := w.Err()
	if err != nil {
		w.refused.Add(1)
	}
	return err
}

// Head returns the seq and hash of the last entry written to the file (0
// and GenesisHash before the first).
func (w *Writer) Head() (uint64, string) {
	w.headMu.Lock()
	defer w.headMu.Unlock()
	if w.headHash == "" {
		return 0, GenesisHash
	}
	return w.headSeq, w.headHash
}

func (w *Writer) publishLocked() {
	w.headMu.Lock()
	w.headSeq, w.headHash = w.wSeq, w.wHash
	w.headMu.Unlock()
}

// Stats returns the writer's counters.
func (w *Writer) Stats() Stats {
	seq, _ := w.Head()
	return Stats{Entries: w.entries.Load(), WriteErrors: w.writeErrors.Load(), Refused: w.refused.Load(), Seq: seq}
}

// loop fsyncs (FsyncInterval), retries a failing log and saves the head.
func (w *Writer) loop() {
	defer close(w.done)
	tick := w.cfg.FsyncInterval
	if w.cfg.Fsync == FsyncAlways || w.cfg.RetryInterval < tick {
		tick = w.cfg.RetryInterval
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	lastRetry, lastHead := time.Time{}, time.Time{}
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		if w.failing.Load() {
			if now.Sub(lastRetry) >= w.cfg.RetryInterval {
				lastRetry = now
				w.recover()
			}
			continue
		}
		if w.cfg.Fsync == FsyncInterval {
			w.syncMu.Lock()
			w.mu.Lock()
			w.syncLocked()
			w.mu.Unlock()
			w.syncMu.Unlock()
		}
		if now.Sub(lastHead) >= time.Second {
			lastHead = now
			w.saveHead()
		}
	}
}

// recover tries to make a failing log writable again: (re)open the file,
// write what is pending, fsync. On success it records an event saying how
// long the log was unavailable and how many requests were refused.
func (w *Writer) recover() bool {
	w.syncMu.Lock()
	w.mu.Lock()
	w.waitIdleLocked()
	unlock := func() { w.mu.Unlock(); w.syncMu.Unlock() }
	if w.failure == nil || w.closed {
		ok := w.failure == nil
		unlock()
		return ok
	}
	if w.f == nil {
		if err := w.openLocked(); err != nil {
			w.failLocked(err)
			unlock()
			return false
		}
		if err := w.checkTailLocked(); err != nil {
			w.f.Close()
			w.f = nil
			w.failLocked(err)
			unlock()
			return false
		}
	}
	// Drop anything a failed write may have left after the good part.
	good := w.fileSize
	if err := w.f.Truncate(good); err != nil {
		w.failLocked(fmt.Errorf("cutting a partial write: %w", err))
		unlock()
		return false
	}
	if len(w.retry) > 0 {
		if _, err := w.f.Write(w.retry); err != nil {
			w.f.Truncate(good)
			w.failLocked(fmt.Errorf("writing: %w", err))
			unlock()
			return false
		}
	}
	n := bytes.Count(w.retry, []byte{'\n'})
	w.fileSize = good + int64(len(w.retry))
	w.unsynced = append(w.unsynced, w.retry...)
	w.written += int64(len(w.retry))
	w.encoded = w.written
	w.entries.Add(uint64(n))
	w.retry = nil
	w.wSeq, w.wHash = w.seq, w.hash
	if err := w.f.Sync(); err != nil {
		// Whatever was unsynced is suspect too: write it again next time.
		w.syncFailedLocked(err)
		unlock()
		return false
	}
	w.synced = w.written
	w.unsynced = w.unsynced[:0]
	w.syncedSeq, w.syncedHash = w.seq, w.hash
	f := w.failure
	w.failure = nil
	w.failing.Store(false)
	w.publishLocked()
	// The event goes first, before any request that the recovery lets in.
	w.appendLocked(&Entry{Type: TypeEvent, Operation: "audit-recovered", Outcome: OutcomeOK, Detail: map[string]string{
		"since": f.Since.UTC().Format(TimeLayout), "error": f.Err.Error(), "written_late": strconv.Itoa(n),
		"refused_total": strconv.FormatUint(w.refused.Load(), 10)}})
	unlock()
	w.log.Info("the audit log is writable again", "path", w.cfg.Path, "unavailable-for", time.Since(f.Since).Round(time.Millisecond), "written-late", n)
	w.saveHead()
	return true
}

// checkTailLocked compares the end of a newly opened file with the last
// entry written, to warn about a file that was replaced or cut (the chain
// continues from the head regardless: the daemon's own record is the
// truth).
func (w *Writer) checkTailLocked() error {
	fseq, fhash, err := w.tailLocked()
	if err != nil {
		return err
	}
	if fseq != 0 && (fseq != w.wSeq || fhash != w.wHash) {
		w.log.Warn("the audit log file does not end with this node's last entry: it was replaced or edited; the chain continues from the node's own record", "path", w.cfg.Path, "file-seq", fseq, "seq", w.wSeq)
	}
	return nil
}

// Reopen closes the log file and opens cfg.Path again (after log rotation:
// rename the file, then signal cofferd). The chain continues in the new
// file. A failing log is retried at once.
func (w *Writer) Reopen() error {
	w.syncMu.Lock()
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.syncMu.Unlock()
		return w.errLocked()
	}
	if w.f != nil {
		// Whatever the old file cannot keep goes to the new one.
		w.syncFileLocked()
		w.f.Truncate(w.fileSize)
		w.f.Close()
		w.f = nil
	}
	var err error
	if err = w.openLocked(); err == nil {
		if err = w.checkTailLocked(); err != nil {
			w.f.Close()
			w.f = nil
		}
	}
	reopened := &Entry{Type: TypeEvent, Operation: "audit-reopened", Outcome: OutcomeOK, Detail: map[string]string{"path": w.cfg.Path}}
	if err != nil {
		w.failLocked(err)
	}
	if w.failure == nil {
		// The event is the new file's first entry.
		err = w.appendLocked(reopened)
		w.mu.Unlock()
		w.syncMu.Unlock()
		w.log.Info("audit log reopened", "path", w.cfg.Path)
		return err
	}
	w.mu.Unlock()
	w.syncMu.Unlock()
	if !w.recover() {
		return w.Err()
	}
	w.log.Info("audit log reopened", "path", w.cfg.Path)
	return w.Append(reopened)
}

// Close fsyncs and closes the log. Entries that could not be written are
// logged through the Logger at error level (they hold no secret), so they
// are not lost altogether.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.mu.Unlock()
	w.stopOnce.Do(func() { close(w.stop) })
	<-w.done
	if w.failing.Load() {
		w.recover()
	}
	w.syncMu.Lock()
	w.mu.Lock()
	if w.closed { // a concurrent Close won
		w.mu.Unlock()
		w.syncMu.Unlock()
		return nil
	}
	w.syncFileLocked()
	var err error
	w.closed = true
	if len(w.retry) > 0 {
		for _, l := range bytes.SplitAfter(w.retry, []byte{'\n'}) {
			if len(l) > 0 {
				w.log.Error("audit entry that could not be written to the audit log", "path", w.cfg.Path, "entry", string(bytes.TrimSuffix(l, []byte{'\n'})))
			}
		}
		err = w.errLocked()
	}
	if w.f != nil {
		if cerr := w.f.Close(); err == nil {
			err = cerr
		}
		w.f = nil
	}
	w.mu.Unlock()
	w.syncMu.Unlock()
	w.saveHead()
	return err
}

// ---- head file ----

type headFile struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
	Path string `json:"path"`
}

func (w *Writer) readHeadFile() (uint64, string, string) {
	if w.cfg.HeadFile == "" {
		return 0, "", ""
	}
	b, err := os.ReadFile(w.cfg.HeadFile)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			w.log.Warn("cannot read the audit chain head file; continuing from the log alone", "path", w.cfg.HeadFile, "error", err)
		}
		return 0, "", ""
	}
	var h headFile
	if err := json.Unmarshal(b, &h); err != nil || !validHash(h.Hash) {
		w.log.Warn("the audit chain head file is not valid; continuing from the log alone", "path", w.cfg.HeadFile)
		return 0, "", ""
	}
	return h.Seq, h.Hash, h.Path
}

// saveHead records the head of what is on disk (fsync'd), so that a
// restart never finds the head file ahead of the log.
func (w *Writer) saveHead() {
	if w.cfg.HeadFile == "" {
		return
	}
	w.mu.Lock()
	seq, hash := w.syncedSeq, w.syncedHash
	if seq == w.headSaved || seq == 0 {
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	b, _ := json.Marshal(headFile{Seq: seq, Hash: hash, Path: w.cfg.Path})
	err := atomicfile.Write(w.cfg.HeadFile, append(b, '\n'), 0o600)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		// Only a hint for the next start (see Config.HeadFile): worth a
		// warning, not a refusal; once, not every second.
		if !w.headFailing {
			w.log.Warn("cannot save the audit chain head; retrying every second", "path", w.cfg.HeadFile, "error", err)
		}
		w.headFailing = true
		return
	}
	w.headSaved, w.headFailing = seq, false
}

type nopLogger struct{}

func (nopLogger) Info(string, ...any)  {}
func (nopLogger) Warn(string, ...any)  {}
func (nopLogger) Error(string, ...any) {}
