package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/coffer-kms/coffer/api"
)

// table is an aligned two-or-more column writer for the human format.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer) *table {
	return &table{tw: tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)}
}

// row writes one line; cells must not contain tabs or newlines.
func (t *table) row(cells ...string) {
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func printStatus(w io.Writer, st *api.Status) error {
	t := newTable(w)
	t.row("Initialized", yesNo(st.Initialized))
	t.row("Sealed", yesNo(st.Sealed))
	t.row("Seal type", orDash(st.SealType))
	if st.Initialized {
		t.row("Shares", fmt.Sprintf("%d (threshold %d)", st.Shares, st.Threshold))
	}
	if st.Initialized && st.Sealed {
		t.row("Unseal progress", fmt.Sprintf("%d/%d", st.Progress, st.Threshold))
	}
	if st.SealedReason != "" {
		t.row("Sealed reason", oneLine(st.SealedReason))
	}
	t.row("Node", orDash(st.NodeID))
	leader := orDash(st.LeaderID)
	if st.IsLeader {
		leader += " (this node)"
	}
	t.row("Leader", leader)
	t.row("Cluster", orDash(st.ClusterID))
	t.row("Version", orDash(st.Version))
	if st.AuditHash != "" || st.AuditSeq != 0 {
		t.row("Audit", fmt.Sprintf("seq %d, %s", st.AuditSeq, orDash(st.AuditHash)))
	}
	if st.AuditError != "" {
		t.row("Audit error", oneLine(st.AuditError))
	}
	return t.flush()
}

// oneLine keeps a table cell on one line whatever the daemon sends.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func printKey(w io.Writer, k *api.Key) error {
	t := newTable(w)
	t.row("Name", k.Name)
	t.row("Type", orDash(k.Type))
	t.row("Latest version", strconv.Itoa(k.LatestVersion))
	t.row("Min decryption version", strconv.Itoa(k.MinDecryptionVersion))
	period := k.RotationPeriod
	if d, err := time.ParseDuration(period); period == "" || (err == nil && d == 0) {
		period = "none"
	}
	t.row("Rotation period", period)
	t.row("Created", formatTime(k.CreatedAt))
	if k.DeletionDate != nil {
		t.row("Deletion date", formatTime(*k.DeletionDate)+" (pending; cancel with: coffer key restore "+k.Name+")")
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(k.Versions) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t = newTable(w)
	t.row("VERSION", "CREATED")
	for _, v := range k.Versions {
		t.row(strconv.Itoa(v.Version), formatTime(v.CreatedAt))
	}
	return t.flush()
}

// printNames prints a one-column list under a header, or a note when empty.
func printNames(w io.Writer, header, none string, names []string) error {
	if len(names) == 0 {
		_, err := fmt.Fprintln(w, none)
		return err
	}
	t := newTable(w)
	t.row(header)
	for _, n := range names {
		t.row(n)
	}
	return t.flush()
}

func printPolicy(w io.Writer, p *api.Policy) error {
	t := newTable(w)
	t.row("Name", orDash(p.Name))
	t.row("Keys", orDash(strings.Join(p.Keys, ", ")))
	if len(p.Secrets) > 0 {
		t.row("Secrets", strings.Join(p.Secrets, ", "))
	}
	t.row("Operations", orDash(strings.Join(p.Operations, ", ")))
	t.row("UIDs", orDash(joinUints(p.Subjects.UIDs)))
	t.row("GIDs", orDash(joinUints(p.Subjects.GIDs)))
	t.row("Users", orDash(strings.Join(p.Subjects.Users, ", ")))
	t.row("Groups", orDash(strings.Join(p.Subjects.Groups, ", ")))
	t.row("Units", orDash(strings.Join(p.Subjects.Units, ", ")))
	return t.flush()
}

func joinUints(ids []uint32) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatUint(uint64(id), 10)
	}
	return strings.Join(s, ", ")
}

// printProgress prints where an unseal stands.
func printProgress(w io.Writer, st *api.Status) {
	if !st.Sealed {
		fmt.Fprintln(w, "Unsealed.")
		return
	}
	fmt.Fprintf(w, "Unseal progress: %d/%d\n", st.Progress, st.Threshold)
}
