package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// Summary is what a verification that passed found.
type Summary struct {
	// Entries is the number of lines checked.
	Entries int
	// FirstSeq is the first entry's seq (0 with no entries). A value above 1
	// means the first file continues one rotated before it.
	FirstSeq uint64
	// LastSeq and LastHash are the last entry's; compare them with the
	// node's status (audit_seq, audit_hash) to catch a log cut at its end.
	// With no entries they are 0 and GenesisHash.
	LastSeq  uint64
	LastHash string
}

// VerifyError is the first bad line a verification found.
type VerifyError struct {
	File   string // "" when the input had no name
	Line   int    // 1-based, within File
	Kind   string // KindEdited, KindDeleted, KindReordered, KindTruncated or KindMalformed
	Reason string
}

func (e *VerifyError) Error() string {
	if e.File != "" {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Reason)
	}
	return fmt.Sprintf("line %d: %s", e.Line, e.Reason)
}

// Verifier checks one chain, possibly spread over several files given in
// order (a rotated file first). The zero value is ready to use; it is not
// safe for concurrent use.
type Verifier struct {
	started  bool
	entries  int
	firstSeq uint64
	prevSeq  uint64
	prevHash string
	prevLine int
	prevFile string
}

// Summary returns what has been verified so far.
func (v *Verifier) Summary() Summary {
	s := Summary{Entries: v.entries, FirstSeq: v.firstSeq, LastSeq: v.prevSeq, LastHash: v.prevHash}
	if !v.started {
		s.LastHash = GenesisHash
	}
	return s
}

// Verify checks the lines read from r, named name in errors, continuing the
// chain of the files verified before. It stops at the first bad line and
// returns a *VerifyError for it; other errors are read errors.
func (v *Verifier) Verify(name string, r io.Reader) error {
	lr := &lineReader{r: bufio.NewReaderSize(r, 64<<10)}
	for {
		l, err := lr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		bad := func(kind, format string, args ...any) error {
			return &VerifyError{File: name, Line: l.no, Kind: kind, Reason: fmt.Sprintf(format, args...)}
		}
		if l.tooLong {
			return bad(KindMalformed, "line is longer than %d bytes: not an audit entry", MaxLine)
		}
		if !l.newline {
			return bad(KindTruncated, "the last line has no newline: the file was cut (truncated), or cofferd was still writing it")
		}
		e, perr := ParseLine(l.text)
		if perr != nil {
			var le *LineError
			if errors.As(perr, &le) {
				return bad(le.Kind, "%s", le.Reason)
			}
			return bad(KindMalformed, "%v", perr)
		}
		if !v.started {
			if e.Seq == 1 && e.PrevHash != GenesisHash {
				return bad(KindEdited, "seq 1 must start the chain with prev_hash %s: it was edited", GenesisHash)
			}
			v.started, v.firstSeq = true, e.Seq
		} else if err := v.link(e, l.no, lr, bad); err != nil {
			return err
		}
		v.entries++
		v.prevSeq, v.prevHash, v.prevLine, v.prevFile = e.Seq, e.Hash, l.no, name
	}
}

// link checks that e follows the previous entry and, when it does not,
// says why as precisely as the next line allows.
func (v *Verifier) link(e *Entry, no int, lr *lineReader, bad func(kind, format string, args ...any) error) error {
	prev := fmt.Sprintf("line %d", v.prevLine)
	if no == 1 && v.prevFile != "" {
		prev = fmt.Sprintf("the last line of %s", v.prevFile)
	}
	want := v.prevSeq + 1
	switch {
	case e.Seq == want && e.PrevHash == v.prevHash:
		return nil
	case e.Seq == want:
		return bad(KindEdited, "prev_hash does not match the hash of %s: that line was edited and its hash recomputed (or this line's prev_hash was edited)", prev)
	case e.Seq < want:
		return bad(KindReordered, "seq %d comes after seq %d on %s: lines were reordered or duplicated", e.Seq, v.prevSeq, prev)
	}
	// A gap. If the missing entry is on the next line, two lines were
	// swapped; otherwise entries were removed.
	if nl, err := lr.peek(); err == nil && nl.newline && !nl.tooLong {
		if ne, err := ParseLine(nl.text); err == nil && ne.Seq == want {
			return bad(KindReordered, "seq %d is on this line but seq %d follows on line %d: lines were reordered", e.Seq, want, nl.no)
		}
	}
	missing := e.Seq - want
	what := fmt.Sprintf("%d entries (seq %d to %d) are", missing, want, e.Seq-1)
	if missing == 1 {
		what = fmt.Sprintf("1 entry (seq %d) is", want)
	}
	return bad(KindDeleted, "%s missing between %s and this line: lines were deleted, or the file was cut in the middle", what, prev)
}

// VerifyFiles verifies one chain spread over paths, in order (the oldest
// rotated file first).
func VerifyFiles(paths ...string) (Summary, error) {
	var v Verifier
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return v.Summary(), err
		}
		err = v.Verify(p, f)
		f.Close()
		if err != nil {
			return v.Summary(), err
		}
	}
	return v.Summary(), nil
}

// line is one line of input.
type line struct {
	no      int
	text    []byte // without the newline
	newline bool   // the line ended with '\n' (false only for the last)
	tooLong bool
}

// lineReader yields lines with one line of lookahead.
type lineReader struct {
	r      *bufio.Reader
	no     int
	peeked *line
	err    error
}

func (lr *lineReader) read() (*line, error) {
	if lr.err != nil {
		return nil, lr.err
	}
	lr.no++
	l := &line{no: lr.no}
	var buf bytes.Buffer
	for {
		chunk, err := lr.r.ReadSlice('\n')
		if buf.Len()+len(chunk) <= MaxLine+1 {
			buf.Write(chunk)
		} else {
			l.tooLong = true
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			if buf.Len() == 0 && !l.tooLong {
				lr.err = io.EOF
				return nil, io.EOF
			}
			lr.err = io.EOF
			l.text = buf.Bytes()
			return l, nil
		}
		if err != nil {
			lr.err = err
			return nil, err
		}
		l.newline = true
		l.text = bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
		if len(l.text) > MaxLine {
			l.tooLong = true
		}
		return l, nil
	}
}

func (lr *lineReader) next() (*line, error) {
	if lr.peeked != nil {
		l := lr.peeked
		lr.peeked = nil
		return l, nil
	}
	return lr.read()
}

func (lr *lineReader) peek() (*line, error) {
	if lr.peeked == nil {
		l, err := lr.read()
		if err != nil {
			return nil, err
		}
		lr.peeked = l
	}
	return lr.peeked, nil
}
