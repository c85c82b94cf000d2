package client

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/coffer-kms/coffer/api"
)

// Envelope encryption of data of any size (docs/envelope.md has the format,
// testdata/envelope/ its test vectors). A fresh data key from cofferd
// (datakey) encrypts the data locally in authenticated chunks, in the style
// of age's STREAM; only the data key's ciphertext, which cofferd alone can
// unwrap, is stored, in the header.
const (
	// EnvelopeMagic starts every envelope: one text line, so that `head -1`
	// tells what a file is.
	EnvelopeMagic = "coffer-envelope/v1\n"
	// EnvelopeChunkSize is the plaintext size of every chunk but the last.
	EnvelopeChunkSize = 64 << 10
	// EnvelopeAAD is the additional data of the data key's wrapping: a
	// data key made for an envelope cannot be passed off as another
	// application's, nor the other way round.
	EnvelopeAAD = "coffer-envelope/v1"

	envSaltSize   = 16
	envTagSize    = 16
	envEncChunk   = EnvelopeChunkSize + envTagSize
	envMaxWrapped = 1024
	envDataKeyLen = 32
	envInfo       = "coffer-envelope/v1 payload key\x00"
)

// ErrEnvelope is matched (errors.Is) by every error about a malformed,
// truncated, reordered, extended or tampered envelope.
var ErrEnvelope = errors.New("invalid coffer envelope")

func envErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrEnvelope, fmt.Sprintf(format, args...))
}

// EnvelopeHeader is what an envelope says about its data key.
type EnvelopeHeader struct {
	Key        string // the Coffer key that wrapped the data key
	KeyVersion int    // its version at the time
	WrappedKey string // the data key's ciphertext (coffer:v…)
	Salt       [envSaltSize]byte
	raw        []byte // the header's bytes, bound into the payload key
}

func (h *EnvelopeHeader) marshal() ([]byte, error) {
	if !api.ValidName(h.Key) {
		return nil, fmt.Errorf("invalid key name %q", h.Key)
	}
	if h.KeyVersion < 1 || int64(h.KeyVersion) > 1<<32-1 {
		return nil, fmt.Errorf("invalid key version %d", h.KeyVersion)
	}
	if len(h.WrappedKey) == 0 || len(h.WrappedKey) > envMaxWrapped {
		return nil, fmt.Errorf("wrapped data key of %d bytes (want 1–%d)", len(h.WrappedKey), envMaxWrapped)
	}
	b := []byte(EnvelopeMagic)
	b = append(b, byte(len(h.Key)))
	b = append(b, h.Key...)
	b = binary.BigEndian.AppendUint32(b, uint32(h.KeyVersion))
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.WrappedKey)))
	b = append(b, h.WrappedKey...)
	return append(b, h.Salt[:]...), nil
}

// ReadEnvelopeHeader reads and checks an envelope's header from r, leaving r
// at the first chunk. Use it to learn which key an envelope needs.
func ReadEnvelopeHeader(r io.Reader) (*EnvelopeHeader, error) {
	raw := make([]byte, 0, 256)
	read := func(n int, what string) ([]byte, error) {
		start := len(raw)
		raw = append(raw, make([]byte, n)...)
		if _, err := io.ReadFull(r, raw[start:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, envErr("the header is truncated (in its %s)", what)
			}
			return nil, err
		}
		return raw[start:], nil
	}
	magic, err := read(len(EnvelopeMagic), "first line")
	if err != nil {
		if errors.Is(err, ErrEnvelope) {
			return nil, envErr("not a coffer envelope: it is shorter than the %q line that starts one", EnvelopeMagic[:len(EnvelopeMagic)-1])
		}
		return nil, err
	}
	if string(magic) != EnvelopeMagic {
		if bytes.HasPrefix(magic, []byte("coffer-envelope/")) {
			return nil, envErr("unsupported envelope version %q: this coffer reads %q; upgrade coffer", bytes.TrimSpace(magic), EnvelopeMagic[:len(EnvelopeMagic)-1])
		}
		return nil, envErr("not a coffer envelope (it does not start with %q); was it made by `coffer encrypt`?", EnvelopeMagic[:len(EnvelopeMagic)-1])
	}
	h := &EnvelopeHeader{}
	n, err := read(1, "key name")
	if err != nil {
		return nil, err
	}
	name, err := read(int(n[0]), "key name")
	if err != nil {
		return nil, err
	}
	if h.Key = string(name); !api.ValidName(h.Key) {
		return nil, envErr("the header names an invalid key %q", h.Key)
	}
	v, err := read(4, "key version")
	if err != nil {
		return nil, err
	}
	if h.KeyVersion = int(binary.BigEndian.Uint32(v)); h.KeyVersion < 1 {
		return nil, envErr("the header has key version 0")
	}
	wl, err := read(2, "data key")
	if err != nil {
		return nil, err
	}
	m := int(binary.BigEndian.Uint16(wl))
	if m == 0 || m > envMaxWrapped {
		return nil, envErr("the header's wrapped data key has %d bytes (want 1–%d)", m, envMaxWrapped)
	}
	wk, err := read(m, "data key")
	if err != nil {
		return nil, err
	}
	h.WrappedKey = string(wk)
	salt, err := read(envSaltSize, "salt")
	if err != nil {
		return nil, err
	}
	copy(h.Salt[:], salt)
	h.raw = raw
	return h, nil
}

// payloadAEAD derives the payload key from the data key, the salt and the
// whole header (so that any change to the header fails the first chunk),
// and returns AES-256-GCM under it. dataKey is not kept.
func payloadAEAD(dataKey, header []byte, salt []byte) (cipher.AEAD, error) {
	if len(dataKey) != envDataKeyLen {
		return nil, envErr("the data key has %d bytes, want %d", len(dataKey), envDataKeyLen)
	}
	info := append([]byte(envInfo), header...)
	k, err := hkdf.Key(sha256.New, dataKey, salt, string(info), 32)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	// The expanded AES key schedule inside the cipher cannot be zeroed:
	// it lives as long as the writer or reader.
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// chunkNonce is the STREAM nonce: an 11-byte big-endian chunk counter and a
// last-chunk flag byte.
func chunkNonce(n *[12]byte, counter uint64, last bool) {
	clear(n[:])
	binary.BigEndian.PutUint64(n[3:11], counter)
	if last {
		n[11] = 1
	}
}

// maxChunks keeps the counter within 64 of its 88 bits (2^64 chunks of 64
// KiB is beyond any file).
const maxChunks = 1<<64 - 1

// envelopeWriter encrypts into dst; see Client.Encrypt.
type envelopeWriter struct {
	dst     io.Writer
	aead    cipher.AEAD
	buf     []byte // plaintext of the pending chunk
	out     []byte // sealed chunk
	counter uint64
	nonce   [12]byte
	err     error
	closed  bool
}

// Encrypt writes an envelope header to dst and returns a writer that
// encrypts everything written to it into dst, in constant memory, under a
// fresh data key of key (which needs the datakey operation). Close must be
// called: it writes the final chunk, without which the envelope is refused
// as truncated. Close does not close dst.
func (c *Client) Encrypt(ctx context.Context, dst io.Writer, key string) (io.WriteCloser, error) {
	n, yes := envDataKeyLen, true
	dk, err := c.DataKey(ctx, key, api.DataKeyRequest{Bytes: &n, AAD: []byte(EnvelopeAAD), IncludePlaintext: &yes})
	if err != nil {
		return nil, fmt.Errorf("get a data key from key %q: %w", key, err)
	}
	defer clear(dk.Plaintext)
	return newEnvelopeWriter(dst, key, dk.KeyVersion, dk.Ciphertext, dk.Plaintext, nil)
}

// newEnvelopeWriter writes the header and returns the writer. salt nil
// means a random salt (tests pass a fixed one for the test vectors).
func newEnvelopeWriter(dst io.Writer, key string, version int, wrapped string, dataKey, salt []byte) (*envelopeWriter, error) {
	h := &EnvelopeHeader{Key: key, KeyVersion: version, WrappedKey: wrapped}
	if salt == nil {
		if _, err := rand.Read(h.Salt[:]); err != nil {
			return nil, err
		}
	} else {
		copy(h.Salt[:], salt)
	}
	raw, err := h.marshal()
	if err != nil {
		return nil, err
	}
	aead, err := payloadAEAD(dataKey, raw, h.Salt[:])
	if err != nil {
		return nil, err
	}
	if _, err := dst.Write(raw); err != nil {
		return nil, err
	}
	return &envelopeWriter{dst: dst, aead: aead, buf: make([]byte, 0, EnvelopeChunkSize), out: make([]byte, 0, envEncChunk)}, nil
}

func (w *envelopeWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errors.New("write to a closed envelope writer")
	}
	if w.err != nil {
		return 0, w.err
	}
	total := len(p)
	for len(p) > 0 {
		// A full buffer is flushed only when more data comes: the last
		// chunk must be known as last when it is sealed.
		if len(w.buf) == EnvelopeChunkSize {
			if w.err = w.flush(false); w.err != nil {
				return total - len(p), w.err
			}
		}
		n := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+n]
		p = p[n:]
	}
	return total, nil
}

func (w *envelopeWriter) flush(last bool) error {
	if w.counter == maxChunks {
		return errors.New("envelope too large: the chunk counter is exhausted")
	}
	chunkNonce(&w.nonce, w.counter, last)
	w.out = w.aead.Seal(w.out[:0], w.nonce[:], w.buf, nil)
	clear(w.buf)
	w.buf = w.buf[:0]
	w.counter++
	_, err := w.dst.Write(w.out)
	return err
}

// Close seals and writes the final chunk (empty when nothing was written).
func (w *envelopeWriter) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err == nil {
		w.err = w.flush(true)
	}
	clear(w.buf[:cap(w.buf)])
	return w.err
}

// envelopeReader decrypts; see Client.Decrypt.
type envelopeReader struct {
	src     *bufio.Reader
	aead    cipher.AEAD
	enc     []byte // the chunk being read
	plain   []byte // decrypted, not yet returned
	pos     int
	counter uint64
	nonce   [12]byte
	done    bool
	err     error
}

// Decrypt reads an envelope's header from src, unwraps its data key with
// the key the header names (which needs the unwrap operation) and returns
// a reader of the plaintext, in constant memory. Each chunk is returned
// only once it is authenticated, but a truncated envelope is detected only
// at its end: a reader that has returned data and then fails (errors.Is
// ErrEnvelope) has returned a prefix of the plaintext that must be thrown
// away. Write to a temporary file and keep it only after io.EOF, as
// `coffer decrypt --out` does. Call Close to zero the buffers.
func (c *Client) Decrypt(ctx context.Context, src io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(src, envEncChunk+1)
	h, err := ReadEnvelopeHeader(br)
	if err != nil {
		return nil, err
	}
	dataKey, err := c.Unwrap(ctx, h.Key, h.WrappedKey, []byte(EnvelopeAAD))
	if err != nil {
		return nil, fmt.Errorf("unwrap the envelope's data key with key %q (version %d): %w", h.Key, h.KeyVersion, err)
	}
	defer clear(dataKey)
	return newEnvelopeReader(br, h, dataKey)
}

func newEnvelopeReader(br *bufio.Reader, h *EnvelopeHeader, dataKey []byte) (*envelopeReader, error) {
	aead, err := payloadAEAD(dataKey, h.raw, h.Salt[:])
	if err != nil {
		return nil, err
	}
	return &envelopeReader{src: br, aead: aead, enc: make([]byte, envEncChunk), plain: make([]byte, 0, EnvelopeChunkSize)}, nil
}

func (r *envelopeReader) Read(p []byte) (int, error) {
	for r.pos == len(r.plain) {
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			return 0, io.EOF
		}
		r.err = r.next()
	}
	n := copy(p, r.plain[r.pos:])
	r.pos += n
	return n, nil
}

// next reads, authenticates and decrypts one chunk.
func (r *envelopeReader) next() error {
	clear(r.plain)
	r.plain, r.pos = r.plain[:0], 0
	n, err := io.ReadFull(r.src, r.enc)
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		// A short chunk can only be the last one.
	case err != nil:
		return err
	}
	last := n < len(r.enc)
	if !last {
		// A full chunk is the last one when nothing follows it.
		if _, err := r.src.Peek(1); err == io.EOF {
			last = true
		} else if err != nil {
			return err
		}
	}
	if n < envTagSize {
		if r.counter == 0 && n == 0 {
			return envErr("no chunk after the header: the envelope is truncated")
		}
		return envErr("the envelope is truncated: chunk %d has %d bytes, less than its 16-byte tag", r.counter, n)
	}
	if r.counter == maxChunks {
		return envErr("too many chunks")
	}
	chunkNonce(&r.nonce, r.counter, last)
	out, err := r.aead.Open(r.plain[:0], r.nonce[:], r.enc[:n], nil)
	if err != nil {
		// Tell truncation and appending apart from tampering: the chunk
		// may be genuine with the other flag.
		chunkNonce(&r.nonce, r.counter, !last)
		if o, err2 := r.aead.Open(r.plain[:0], r.nonce[:], r.enc[:n], nil); err2 == nil {
			clear(o)
			if last {
				return envErr("the envelope is truncated: it ends after chunk %d, which is not its final chunk", r.counter)
			}
			return envErr("data was appended after the envelope's final chunk (chunk %d)", r.counter)
		}
		if r.counter == 0 {
			return envErr("chunk 0 does not authenticate: the header or the first chunk was changed, or the data key is not this envelope's")
		}
		return envErr("chunk %d does not authenticate: the envelope was cut or changed there, or chunks were reordered, removed or duplicated", r.counter)
	}
	if last && len(out) == 0 && r.counter > 0 {
		// Only an empty plaintext has an empty final chunk: the writer
		// never makes one otherwise.
		return envErr("empty final chunk %d after data", r.counter)
	}
	r.plain = out
	r.counter++
	r.done = last
	return nil
}

// Close zeroes the reader's buffers. It does not close the source.
func (r *envelopeReader) Close() error {
	clear(r.plain[:cap(r.plain)])
	clear(r.enc)
	r.done, r.err = true, errors.New("read from a closed envelope reader")
	return nil
}
