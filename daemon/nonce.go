package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/internal/atomicfile"
	"github.com/coffer-kms/coffer/keystore"
)

// The daemon's part of the nonce budget (keystore/nonce.go): it persists
// this node's encryption counts in data_dir, reports them into the keys'
// replicated records, and, on the leader, rotates a version whose
// reported sum reached the budget.
//
// Persistence reserves ahead: the file holds the count plus a reservation
// (budget/64), rewritten once half of it is used, so that after a crash the
// node resumes from an upper bound. A clean stop writes the exact counts.
// Counting never under-reports, so the error only ever rotates early.

const nonceCountsFile = "nonce-counts.json"

type nonceFile struct {
	Counts []keystore.EncryptionCount `json:"counts"`
}

type nonceState struct {
	persisted map[string]uint64 // key/version → count in the file
	reported  map[string]uint64 // key/version → count reported
}

func nonceID(c keystore.EncryptionCount) string {
	return c.Key + "/" + strconv.Itoa(c.Version)
}

// nonceStep is how far a count moves between reports, and the reservation
// of the file: 1/64 of the budget (2^26 ≈ 67M encryptions by default,
// about a minute at 1M encryptions a second).
func (s *Server) nonceStep() uint64 {
	return max(1, s.ks.NonceBudget()/64)
}

// loadNonceCounts restores the persisted counts at start.
func (s *Server) loadNonceCounts() error {
	s.nonce = nonceState{persisted: map[string]uint64{}, reported: map[string]uint64{}}
	data, err := os.ReadFile(filepath.Join(s.cfg.DataDir, nonceCountsFile))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the nonce counts: %w", err)
	}
	var f nonceFile
	if err := json.Unmarshal(data, &f); err != nil {
		// Losing the counts would restart the budget from zero: refuse to
		// guess; the operator can rotate the keys and remove the file.
		return fmt.Errorf("the nonce counts in %s do not decode (%v): rotate every aes256-gcm and chacha20-poly1305 key (`coffer key rotate`), then remove the file", filepath.Join(s.cfg.DataDir, nonceCountsFile), err)
	}
	s.ks.RestoreEncryptionCounts(f.Counts)
	for _, c := range f.Counts {
		s.nonce.persisted[nonceID(c)] = c.Count
	}
	return nil
}

// saveNonceCounts writes the counts, each plus reserve, atomically.
func (s *Server) saveNonceCounts(cs []keystore.EncryptionCount, reserve uint64) error {
	f := nonceFile{Counts: make([]keystore.EncryptionCount, len(cs))}
	for i, c := range cs {
		c.Count += reserve
		f.Counts[i] = c
	}
	data, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(s.cfg.DataDir, nonceCountsFile), data, 0o600); err != nil {
		return err
	}
	persisted := make(map[string]uint64, len(f.Counts))
	for _, c := range f.Counts {
		persisted[nonceID(c)] = c.Count
	}
	s.nonce.persisted = persisted
	return nil
}

// nonceTick runs with the scheduler: persist, report, and on the leader
// rotate what reached the budget.
func (s *Server) nonceTick() {
	s.nonceMu.Lock()
	defer s.nonceMu.Unlock()
	cs := s.ks.EncryptionCounts()
	step := s.nonceStep()
	persist := false
	for _, c := range cs {
		if c.Count+step/2 > s.nonce.persisted[nonceID(c)] {
			persist = true
		}
	}
	if persist {
		if err := s.saveNonceCounts(cs, step); err != nil {
			s.log.Error("cannot persist the nonce counts", "error", err)
		}
	}
	if s.ks.Sealed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range cs {
		id := nonceID(c)
		if c.Count < s.nonce.reported[id]+step {
			continue
		}
		if err := s.ks.ReportEncryptions(ctx, s.cfg.NodeID, c.Key, c.Version, c.Count); err != nil {
			s.log.Warn("cannot report encryption counts to the cluster; retrying", "key", c.Key, "version", c.Version, "error", err)
			continue
		}
		s.nonce.reported[id] = c.Count
	}
	if !s.node.IsLeader() {
		return
	}
	for _, name := range s.ks.NonceBudgetDue() {
		ok, n, err := s.ks.RotateIfNonceBudget(ctx, name)
		if err != nil {
			s.log.Error("rotation for the nonce budget failed", "key", name, "error", err)
			continue
		}
		if !ok {
			continue
		}
		s.log.Info("rotated key: its latest version reached the nonce budget", "key", name, "encryptions", n, "budget", s.ks.NonceBudget())
		e := &audit.Entry{Operation: "rotate", Key: name, Detail: map[string]string{
			"reason": "nonce_budget", "encryptions": strconv.FormatUint(n, 10), "budget": strconv.FormatUint(s.ks.NonceBudget(), 10)}}
		if k, err := s.ks.GetKey(name); err == nil {
			e.KeyVersion = k.LatestVersion
		}
		s.auditEvent(e)
	}
}

// saveExactNonceCounts writes the counts without reservation (clean stop).
func (s *Server) saveExactNonceCounts() {
	s.nonceMu.Lock()
	defer s.nonceMu.Unlock()
	if err := s.saveNonceCounts(s.ks.EncryptionCounts(), 0); err != nil {
		s.log.Error("cannot persist the nonce counts", "error", err)
	}
}
