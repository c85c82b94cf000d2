// Package cli is the coffer command: the client of cofferd's unix-socket
// HTTP/JSON API (docs/api.md), with the commands of docs/cli.md.
//
// [Main] runs one command line and returns its exit status, so that
// cmd/coffer stays a one-liner and tests drive the whole command in process.
// [Client] is the API client underneath; it is exported for end-to-end tests
// and other tools, and `coffer bench` uses it too.
//
// # Design notes
//
//   - urfave/cli v2 takes app-level flags only before the command and, like
//     package flag, stops at the first positional argument. Main reorders the
//     command line first (normalizeArgs), so --socket and --format work
//     anywhere and flags may follow arguments.
//   - urfave's --help flag and help command are package globals that it
//     mutates while running; every command gets its own help flag instead,
//     so Main can run concurrently.
//   - Secrets (shares, plaintexts, data keys) are read into buffers the code
//     owns and zeroes after use: request bodies are built by hand or
//     marshalled into a buffer that is cleared, answers are read without
//     io.ReadAll's unzeroed intermediate buffers, and share lines are read
//     without bufio. Zeroing is best effort: strings (the shares of an init
//     answer, decrypted age shares) and encoding/json's internal buffers
//     cannot be cleared.
//   - Shares are never flags; an argument is accepted (docs/cli.md) with a
//     warning. The hidden prompt is implemented on termios directly because
//     term.ReadPassword spins on Ctrl-D and cannot be interrupted.
//   - The CLI imports none of the daemon, keystore (but keystore/shamir, for
//     age-encrypted shares) or hsm packages, and nothing that needs cgo; a
//     test checks it with go list.
package cli
