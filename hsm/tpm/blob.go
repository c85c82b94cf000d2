package tpm

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// Blob.Data layout, version 1:
//
//	"CTPM" | 0x01 | TPM2B_PUBLIC | TPM2B_PRIVATE
//
// Each TPM2B is the TPM wire encoding (tpm2.Marshal): a 2-byte big-endian
// size and that many bytes, exactly what `tpm2_create -u/-r` write. The
// magic and version let a future layout be told apart from this one.
var blobMagic = []byte("CTPM")

const blobVersion = 1

// Meta keys of a TPM blob. Both are informational copies of what the sealed
// object itself enforces; tampering with them can only make Unseal fail or
// its error message less precise.
const (
	// metaPCRs lists the SHA-256 PCRs the object's policy covers, ascending
	// and comma-separated ("7,16"). Unseal replays PolicyPCR over them.
	metaPCRs = "pcrs"
	// metaPCRValues holds the hex SHA-256 PCR values at seal time, in the
	// order of metaPCRs, so that a policy failure can name the PCRs that
	// changed. PCR values are measurements, not secrets.
	metaPCRValues = "pcr_sha256"
)

// maxPCR is the highest PCR index: PC Client TPMs have 24 PCRs.
const maxPCR = 23

func encodeBlob(pub tpm2.TPM2BPublic, priv tpm2.TPM2BPrivate) []byte {
	var b bytes.Buffer
	b.Write(blobMagic)
	b.WriteByte(blobVersion)
	b.Write(tpm2.Marshal(pub))
	b.Write(tpm2.Marshal(priv))
	return b.Bytes()
}

// errBlobFormat is returned (wrapped) for any malformed blob data.
var errBlobFormat = errors.New("not a Coffer TPM blob")

func decodeBlob(data []byte) (*tpm2.TPM2BPublic, *tpm2.TPM2BPrivate, error) {
	if len(data) < len(blobMagic)+1 || !bytes.Equal(data[:len(blobMagic)], blobMagic) {
		return nil, nil, fmt.Errorf("%w (bad magic)", errBlobFormat)
	}
	if v := data[len(blobMagic)]; v != blobVersion {
		return nil, nil, fmt.Errorf("%w: layout version %d, this build reads version %d", errBlobFormat, v, blobVersion)
	}
	rest := data[len(blobMagic)+1:]
	pubB, rest, err := next2B(rest, "public area")
	if err != nil {
		return nil, nil, err
	}
	privB, rest, err := next2B(rest, "private area")
	if err != nil {
		return nil, nil, err
	}
	if len(rest) != 0 {
		return nil, nil, fmt.Errorf("%w: %d trailing bytes", errBlobFormat, len(rest))
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pubB)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: public area: %v", errBlobFormat, err)
	}
	if _, err := pub.Contents(); err != nil {
		return nil, nil, fmt.Errorf("%w: public area: %v", errBlobFormat, err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](privB)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: private area: %v", errBlobFormat, err)
	}
	return pub, priv, nil
}

// next2B splits one size-prefixed TPM2B (prefix included) off the front of b.
func next2B(b []byte, what string) (field, rest []byte, err error) {
	if len(b) < 2 {
		return nil, nil, fmt.Errorf("%w: %s truncated", errBlobFormat, what)
	}
	n := int(binary.BigEndian.Uint16(b))
	if n == 0 || len(b) < 2+n {
		return nil, nil, fmt.Errorf("%w: %s truncated", errBlobFormat, what)
	}
	return b[:2+n], b[2+n:], nil
}

// normalisePCRs validates a PCR list and returns it sorted.
func normalisePCRs(pcrs []int) ([]int, error) {
	out := slices.Clone(pcrs)
	slices.Sort(out)
	for i, p := range out {
		if p < 0 || p > maxPCR {
			return nil, fmt.Errorf("PCR %d is out of range (0-%d)", p, maxPCR)
		}
		if i > 0 && out[i-1] == p {
			return nil, fmt.Errorf("PCR %d is listed twice", p)
		}
	}
	return out, nil
}

func formatPCRs(pcrs []int) string {
	s := make([]string, len(pcrs))
	for i, p := range pcrs {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}

func parsePCRs(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var pcrs []int
	for _, f := range strings.Split(s, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%w: meta %q is not a PCR list", errBlobFormat, metaPCRs)
		}
		pcrs = append(pcrs, p)
	}
	norm, err := normalisePCRs(pcrs)
	if err != nil {
		return nil, fmt.Errorf("%w: meta %q: %v", errBlobFormat, metaPCRs, err)
	}
	return norm, nil
}

func formatPCRValues(values [][]byte) string {
	s := make([]string, len(values))
	for i, v := range values {
		s[i] = hex.EncodeToString(v)
	}
	return strings.Join(s, ",")
}

// parsePCRValues returns nil when s is absent or does not match pcrs: the
// values only improve an error message, so a bad copy is ignored.
func parsePCRValues(s string, n int) [][]byte {
	if s == "" {
		return nil
	}
	fields := strings.Split(s, ",")
	if len(fields) != n {
		return nil
	}
	out := make([][]byte, n)
	for i, f := range fields {
		v, err := hex.DecodeString(f)
		if err != nil {
			return nil
		}
		out[i] = v
	}
	return out
}
