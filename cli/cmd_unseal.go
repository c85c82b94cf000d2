package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/keystore/shamir"
	ucli "github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// Limits on what unseal reads, so that a wrong file on stdin fails fast.
const (
	maxShareLine     = 64 << 10 // one share line
	maxSharesInput   = 1 << 20  // age-armored shares, read whole
	maxIdentityInput = 1 << 20  // an age identity file
)

func (e *env) unsealCommand() *ucli.Command {
	return e.newCmd(&ucli.Command{
		Name:      "unseal",
		Usage:     "submit unseal shares; prints the progress",
		UsageText: "coffer operator unseal [--reset] [--identity AGE_IDENTITY_FILE] [SHARE|-]",
		Description: "Submits Shamir shares to a sealed node until it unseals.\n" +
			"\n" +
			"Without an argument (or with -): on a terminal, prompts for a share without echo\n" +
			"and keeps prompting until the node is unsealed, asking again after a share that\n" +
			"cofferd refuses; otherwise reads one share per line from stdin and submits each,\n" +
			"stopping once the node is unsealed or at the first refused share (exit 1; cofferd\n" +
			"keeps the progress of the shares before it). A SHARE argument works too, but it\n" +
			"is visible in ps and in shell history: prefer the prompt or stdin.\n" +
			"\n" +
			"With --identity, the input holds age-armored shares (as printed by 'coffer operator\n" +
			"init --recipient ...'), and plain share lines; they are decrypted with the age\n" +
			"identities in the file before they are submitted.\n" +
			"\n" +
			"--reset discards the shares submitted so far; with no share given it only resets.",
		Flags: []ucli.Flag{
			&ucli.BoolFlag{Name: "reset", Usage: "discard the shares submitted so far, then submit the given ones (if any)"},
			&ucli.StringFlag{Name: "identity", Usage: "age identity `FILE` to decrypt age-armored shares with"},
		},
	}, `coffer operator unseal                        # prompts: Unseal share (will be hidden):
coffer operator unseal < shares.txt           # one share per line
coffer operator unseal --identity ~/.age/key.txt < share-1.age
coffer operator unseal --reset`, 0, 1, func(x *cmd) error {
		return x.unseal()
	})
}

// unsealOutcome tracks the last answer of a run of submissions.
type unsealOutcome struct {
	st  *api.Status
	raw []byte // the last status body, printed as is with --format json
	n   int    // shares submitted
}

func (x *cmd) unseal() error {
	arg, hasArg := x.c.Args().First(), x.c.NArg() == 1
	fromStdin := !hasArg || arg == "-"
	var o unsealOutcome

	if x.c.Bool("reset") {
		var err error
		if o.st, o.raw, err = x.postUnseal([]byte(`{"reset":true}`)); err != nil {
			return err
		}
		if !hasArg {
			return x.finishUnseal(&o)
		}
		fmt.Fprintln(x.progressOut(), "Unseal progress reset.")
	}

	// Check first, so nobody types a share into a node that cannot use it.
	st, raw, err := x.status()
	if err != nil {
		return err
	}
	if !st.Initialized {
		return errors.New("cofferd is not initialised: run 'coffer operator init' first")
	}
	if !st.Sealed {
		o.st, o.raw = st, raw
		return x.finishUnseal(&o)
	}

	identityFile := x.c.String("identity")
	var identities []byte
	if identityFile != "" {
		identities, err = readFileLimited(identityFile, maxIdentityInput, "the --identity file")
		if err != nil {
			return err
		}
		defer clear(identities)
	}

	var input []byte // the argument, or all of stdin for --identity
	switch {
	case !fromStdin:
		input = []byte(arg)
		if !bytes.Contains(input, []byte("-----BEGIN AGE ENCRYPTED FILE-----")) {
			fmt.Fprintln(x.stderr, "coffer: warning: a share given as an argument is visible in ps and in shell history; prefer the prompt or stdin.")
		}
	case identityFile != "":
		if input, err = x.readArmoredShares(); err != nil {
			return err
		}
	}
	defer clear(input)

	switch {
	case identityFile != "":
		err = x.submitDecrypted(&o, identities, input)
	case input != nil:
		err = x.submitSeq(&o, each([][]byte{input}))
	default:
		if fd, ok := terminalFD(x.stdin); ok {
			err = x.promptShares(&o, fd)
		} else {
			lr := &lineReader{r: x.stdin}
			defer lr.wipe()
			err = x.submitSeq(&o, lr.nextShare)
		}
	}
	if err != nil {
		return err
	}
	if o.n == 0 {
		return usagef("no share given: type it at the prompt, or pipe shares one per line on stdin")
	}
	return x.finishUnseal(&o)
}

// finishUnseal prints the final state: the last status body with --format
// json, the progress otherwise.
func (x *cmd) finishUnseal(o *unsealOutcome) error {
	if x.json {
		return x.printJSON(o.raw)
	}
	if o.n == 0 {
		printProgress(x.stdout, o.st)
	}
	return nil
}

// progressOut is where per-share progress goes: stdout in the table format,
// stderr with --format json (stdout then holds one JSON document).
func (x *cmd) progressOut() io.Writer {
	if x.json {
		return x.stderr
	}
	return x.stdout
}

func (x *cmd) status() (*api.Status, []byte, error) {
	var raw []byte
	resp, err := x.client.Do(x.ctx, http.MethodGet, api.PathStatus, nil, &raw)
	if err != nil {
		return nil, nil, err
	}
	var st api.Status
	if err := decodeAnswer(resp, http.MethodGet, api.PathStatus, raw, &st); err != nil {
		return nil, nil, err
	}
	return &st, raw, nil
}

// postUnseal sends one unseal body (zeroed afterwards by the caller) and
// returns the status it answers with.
func (x *cmd) postUnseal(body []byte) (*api.Status, []byte, error) {
	var raw []byte
	resp, err := x.client.Do(x.ctx, http.MethodPost, api.PathUnseal, body, &raw)
	if err != nil {
		return nil, nil, err
	}
	var st api.Status
	if err := decodeAnswer(resp, http.MethodPost, api.PathUnseal, raw, &st); err != nil {
		return nil, nil, err
	}
	return &st, raw, nil
}

func (x *cmd) submit(o *unsealOutcome, share []byte) error {
	body := api.UnsealBody(share)
	defer clear(body)
	st, raw, err := x.postUnseal(body)
	if err != nil {
		return err
	}
	if prev := o.st; o.n > 0 && attemptReset(prev, st) {
		fmt.Fprintf(x.stderr, "coffer: warning: the unseal progress was reset since your previous share (someone reset the unseal, or sealed or restarted the node): the shares entered before it no longer count; unseal progress now %d/%d\n", st.Progress, st.Threshold)
	}
	o.n++
	o.st, o.raw = st, raw
	printProgress(x.progressOut(), st)
	return nil
}

// attemptReset reports whether the unseal attempt that prev (the answer to
// this command's previous share) was part of has been reset by the time of
// cur: the node is still sealed and its unseal_nonce changed, which cofferd
// does when an attempt is reset or a new one starts. A cofferd that sends no
// nonce never triggers it.
func attemptReset(prev, cur *api.Status) bool {
	return prev != nil && prev.Sealed && prev.Progress > 0 && cur.Sealed &&
		prev.UnsealNonce != "" && cur.UnsealNonce != prev.UnsealNonce
}

// submitSeq submits the shares next returns (io.EOF ends them) until the
// node is unsealed. It stops at the first refused share and says where the
// unseal stands.
func (x *cmd) submitSeq(o *unsealOutcome, next func() ([]byte, error)) error {
	for {
		share, err := next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		err = x.submit(o, share)
		clear(share)
		if err != nil {
			x.explainRefusal(o.n+1, err)
			return err
		}
		if !o.st.Sealed {
			return nil
		}
	}
}

// explainRefusal tells the operator, after share n failed, where the unseal
// stands: cofferd keeps earlier shares, except when the refused share
// completed the threshold with shares that do not open the keyring.
func (x *cmd) explainRefusal(n int, err error) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		return
	}
	st, _, serr := x.status()
	if serr != nil || !st.Sealed {
		return
	}
	fmt.Fprintf(x.stderr, "coffer: share %d was not accepted; cofferd keeps the shares accepted before it (unseal progress now %d/%d). Run 'coffer operator unseal' again with the remaining shares.\n",
		n, st.Progress, st.Threshold)
}

// promptShares asks for shares at the terminal, without echo, until the
// node is unsealed. A refused share (invalid_share) is reported and asked
// for again; any other error ends the command.
func (x *cmd) promptShares(o *unsealOutcome, fd int) error {
	for {
		fmt.Fprint(x.stderr, "Unseal share (will be hidden): ")
		share, err := readHidden(x.ctx, fd)
		fmt.Fprintln(x.stderr)
		if err != nil {
			clear(share)
			if errors.Is(err, io.EOF) {
				if o.st != nil && o.st.Sealed {
					return fmt.Errorf("unseal stopped at progress %d/%d; cofferd keeps the shares accepted so far", o.st.Progress, o.st.Threshold)
				}
				return errors.New("unseal stopped: no share given")
			}
			return err
		}
		trimmed := bytes.TrimSpace(share)
		if len(trimmed) == 0 {
			clear(share)
			continue
		}
		err = x.submit(o, trimmed)
		clear(share)
		switch {
		case isCode(err, api.CodeInvalidShare):
			var ae *api.Error
			errors.As(err, &ae)
			fmt.Fprintf(x.stderr, "coffer: share refused: %s; try again.\n", ae.Message)
			if st, _, serr := x.status(); serr == nil {
				o.st = st
				printProgress(x.stderr, st)
			}
			continue
		case err != nil:
			return err
		case !o.st.Sealed:
			return nil
		}
	}
}

// readArmoredShares reads the whole input for --identity: age armor spans
// lines, so the shares cannot be taken one line at a time.
func (x *cmd) readArmoredShares() ([]byte, error) {
	if _, ok := terminalFD(x.stdin); ok {
		fmt.Fprintln(x.stderr, "Paste the age-encrypted share(s), then press Ctrl-D:")
	}
	data, err := readAllSecret(x.stdin, 0, maxSharesInput)
	if err != nil {
		return nil, fmt.Errorf("read the shares from stdin: %w", err)
	}
	return data, nil
}

// submitDecrypted decrypts age-armored (and passes plain) shares with the
// identities and submits them in order.
func (x *cmd) submitDecrypted(o *unsealOutcome, identities, input []byte) error {
	ids, err := shamir.ParseIdentities(identities)
	if err != nil {
		return fmt.Errorf("read the --identity file: %w", err)
	}
	shares, err := shamir.DecryptShares(input, ids)
	if err != nil {
		return fmt.Errorf("decrypt the shares with the --identity file: %w", err)
	}
	list := make([][]byte, len(shares))
	for i, s := range shares {
		list[i] = []byte(s)
	}
	defer func() {
		for _, b := range list { // those left over once the node unsealed
			clear(b)
		}
	}()
	return x.submitSeq(o, each(list))
}

// each returns the shares in list one by one, then io.EOF.
func each(list [][]byte) func() ([]byte, error) {
	return func() ([]byte, error) {
		if len(list) == 0 {
			return nil, io.EOF
		}
		s := list[0]
		list = list[1:]
		return s, nil
	}
}

// terminalFD returns stdin's descriptor when it is a terminal.
func terminalFD(r io.Reader) (int, bool) {
	f, ok := r.(*os.File)
	if !ok {
		return 0, false
	}
	fd := int(f.Fd())
	return fd, term.IsTerminal(fd)
}

// lineReader reads lines into a buffer of its own, so that every copy of a
// share it reads can be zeroed (bufio keeps copies in a buffer it does not
// expose). A returned line is valid until the next call.
type lineReader struct {
	r          io.Reader
	buf        []byte
	start, end int // unread input is buf[start:end]
	eof        bool
}

// nextShare returns the next non-blank line, trimmed, or io.EOF.
func (l *lineReader) nextShare() ([]byte, error) {
	for {
		line, err := l.next()
		if err != nil {
			return nil, err
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
			return t, nil
		}
	}
}

func (l *lineReader) next() ([]byte, error) {
	for {
		if i := bytes.IndexByte(l.buf[l.start:l.end], '\n'); i >= 0 {
			line := l.buf[l.start : l.start+i]
			l.start += i + 1
			return line, nil
		}
		if l.eof {
			if l.start < l.end {
				line := l.buf[l.start:l.end]
				l.start = l.end
				return line, nil
			}
			return nil, io.EOF
		}
		if l.start > 0 { // move the partial line to the front
			n := copy(l.buf, l.buf[l.start:l.end])
			clear(l.buf[n:l.end])
			l.start, l.end = 0, n
		}
		if l.end == len(l.buf) {
			if len(l.buf) >= maxShareLine {
				return nil, fmt.Errorf("a line on stdin is longer than %d bytes: not a share; give one share per line", maxShareLine)
			}
			nb := make([]byte, max(2*len(l.buf), 512))
			copy(nb, l.buf[:l.end])
			clear(l.buf)
			l.buf = nb
		}
		n, err := l.r.Read(l.buf[l.end:])
		l.end += n
		if err == io.EOF {
			l.eof = true
		} else if err != nil {
			return nil, fmt.Errorf("read shares from stdin: %w", err)
		}
	}
}

func (l *lineReader) wipe() { clear(l.buf) }
