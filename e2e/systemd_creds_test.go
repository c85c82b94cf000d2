package e2e

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
)

// TestE2E_SystemdCredentials: LoadCredential= against cofferd's credential
// socket on a real systemd 252 (Debian 12 in systemd-nspawn, as
// TestE2E_Systemd). A unit with a policy starts and finds the exact bytes
// (a NUL and newlines); a unit without one fails to start; a new version
// and a restart deliver the new value; a sealed node makes the start fail;
// the audit log names the units, the credential IDs and the connecting
// process. A stand-in socket (testdata/credprobe) shows what systemd does
// with the two possible refusals (no byte; more than 1 MiB of zeros) and
// who connects.
func TestE2E_SystemdCredentials(t *testing.T) {
	requireTestbed(t)
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	tb := &testbed{t: t, script: filepath.Join(repo, "systemd", "testbed", "sdboot.sh"), name: fmt.Sprintf("coffer-cred-%d", os.Getpid())}
	out, errOut, code := runCmd(t, exec.Command("bash", tb.script, "rootfs"), "")
	if code != 0 {
		t.Fatalf("building the container's root file system: exit %d\n%s%s", code, out, errOut)
	}
	rootfs := strings.TrimSpace(out[strings.LastIndexByte(strings.TrimSpace(out), '\n')+1:])

	stage := t.TempDir()
	install := exec.Command("make", "--no-print-directory", "-C", repo, "install", "DESTDIR="+stage, "PREFIX=/usr")
	install.Env = cleanMakeEnv()
	if out, errOut, code := runCmd(t, install, ""); code != 0 {
		t.Fatalf("make install: exit %d\n%s%s", code, out, errOut)
	}
	probe := exec.Command("go", "build", "-o", filepath.Join(stage, "usr/local/bin/credprobe"), "./testdata/credprobe")
	if out, errOut, code := runCmd(t, probe, ""); code != 0 {
		t.Fatalf("building credprobe: %d\n%s%s", code, out, errOut)
	}
	writeStaged(t, stage, "etc/coffer/cofferd.hcl", 0o640, `node_id   = "node1"
data_dir  = "/var/lib/coffer"
log_level = "info"

listener "unix" {
  path  = "/run/coffer/coffer.sock"
  mode  = "0660"
  group = "coffer"
}

credentials {
  path = "/run/coffer/credentials.sock"
}

audit {
  path = "/var/log/coffer/audit.log"
}
`)
	// Two services that only copy their credential out (as hex, so that a
	// NUL or a newline shows), one with a policy and one without.
	for _, u := range []string{"billing", "intruder"} {
		writeStaged(t, stage, "etc/systemd/system/"+u+".service", 0o644, `[Service]
Type=oneshot
RemainAfterExit=yes
LoadCredential=db-password:/run/coffer/credentials.sock
ExecStart=/bin/sh -c 'od -An -v -tx1 "$CREDENTIALS_DIRECTORY/db-password" | tr -d " \\n" > /run/`+u+`.hex'
`)
	}
	// The refusal experiment: the same unit shape against credprobe.
	for _, m := range []string{"close", "oversize", "value"} {
		writeStaged(t, stage, "etc/systemd/system/probe-"+m+".service", 0o644, `[Service]
Type=oneshot
RemainAfterExit=yes
LoadCredential=x:/run/probe-`+m+`.sock
ExecStart=/bin/sh -c 'wc -c < "$CREDENTIALS_DIRECTORY/x" > /run/probe-`+m+`.size'
`)
	}

	if out, errOut, code := runCmd(t, exec.Command("bash", tb.script, "up", rootfs, tb.name), ""); code != 0 {
		t.Fatalf("booting the container: exit %d\n%s%s", code, out, errOut)
	}
	t.Cleanup(func() { runCmd(t, exec.Command("bash", tb.script, "down", tb.name), "") })
	tar := exec.Command("tar", "-C", stage, "-cf", "-", "usr", "etc")
	var tarball bytes.Buffer
	tar.Stdout = &tarball
	if err := tar.Run(); err != nil {
		t.Fatal(err)
	}
	tb.must(tarball.String(), "tar", "-xf", "-", "-C", "/", "--no-overwrite-dir", "--no-same-owner")
	tb.sh(`systemd-sysusers
systemd-tmpfiles --create coffer.conf
chgrp coffer /etc/coffer/cofferd.hcl
systemctl daemon-reload`)
	t.Logf("systemd in the container: %s", strings.SplitN(tb.must("", "systemctl", "--version"), "\n", 2)[0])

	t.Run("what systemd does with each answer", func(t *testing.T) {
		tb := tb.with(t)
		for _, m := range []string{"close", "oversize", "value"} {
			tb.must("", "systemd-run", "--unit=credprobe-"+m, "/usr/local/bin/credprobe", "-socket", "/run/probe-"+m+".sock", "-mode", m, "-log", "/run/probe-"+m+".log")
		}
		for _, m := range []string{"close", "oversize", "value"} {
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, _, c := tb.ct("", "test", "-S", "/run/probe-"+m+".sock"); c == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("credprobe %s never listened", m)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		results := map[string]string{}
		for _, m := range []string{"close", "oversize", "value"} {
			_, _, c := tb.ct("", "systemctl", "start", "probe-"+m)
			size, _, _ := tb.ct("", "cat", "/run/probe-"+m+".size")
			results[m] = fmt.Sprintf("start exit %d, Result=%s, credential size %q", c, tb.show("probe-"+m, "Result"), strings.TrimSpace(size))
			t.Logf("credprobe -mode %s: %s", m, results[m])
			log := tb.must("", "cat", "/run/probe-"+m+".log")
			t.Logf("credprobe -mode %s saw: %s", m, strings.TrimSpace(log))
			var rec struct {
				UID     uint32 `json:"uid"`
				PID     int    `json:"pid"`
				Comm    string `json:"comm"`
				Cgroup  string `json:"cgroup"`
				Address string `json:"address"`
			}
			if err := json.Unmarshal([]byte(strings.SplitN(log, "\n", 2)[0]), &rec); err != nil {
				t.Fatalf("credprobe log: %v", err)
			}
			// The process that connects is the unit's own forked child, in
			// the unit's cgroup, as root, not the manager (PID 1).
			if rec.UID != 0 || rec.PID == 1 || !strings.Contains(rec.Cgroup, "/system.slice/probe-"+m+".service") ||
				!strings.HasPrefix(rec.Address, "@") || !strings.HasSuffix(rec.Address, "/unit/probe-"+m+".service/x") {
				t.Errorf("peer of probe-%s: %+v", m, rec)
			}
		}
		// No byte: systemd takes an empty credential and starts the unit.
		// More than 1 MiB: its read fails and the start fails. That is why
		// cofferd refuses with the latter (credentials.go).
		if !strings.HasPrefix(results["close"], "start exit 0,") || !strings.HasSuffix(results["close"], `size "0"`) {
			t.Errorf("a plain close: %s; expected the unit to start with an empty credential", results["close"])
		}
		if strings.HasPrefix(results["oversize"], "start exit 0,") {
			t.Errorf("more than 1 MiB of zeros: %s; expected the start to fail", results["oversize"])
		}
		if !strings.HasPrefix(results["value"], "start exit 0,") || !strings.HasSuffix(results["value"], `size "11"`) {
			t.Errorf("a value: %s", results["value"])
		}
	})

	value1 := "pa\x00ss\nword-1\n"
	value2 := "second\x00value\n"
	t.Run("delivery by unit identity", func(t *testing.T) {
		tb := tb.with(t)
		tb.must("", "systemctl", "start", "cofferd")
		tb.must("", "coffer", "operator", "init", "--shares", "1", "--threshold", "1")
		tb.must(value1, "coffer", "secret", "put", "db-password")
		tb.must(`{"subjects": {"units": ["billing.service"]}, "secrets": ["db-password"], "operations": ["secret_read"]}`,
			"sh", "-c", "cat > /tmp/billing.json && coffer policy write billing /tmp/billing.json")
		if out := tb.must("", "stat", "-c", "%a %U %F", "/run/coffer/credentials.sock"); out != "600 coffer socket\n" {
			t.Errorf("credential socket: %s", out)
		}

		tb.must("", "systemctl", "start", "billing")
		if got := tb.must("", "cat", "/run/billing.hex"); got != hex.EncodeToString([]byte(value1)) {
			t.Fatalf("billing.service got %s, want %s", got, hex.EncodeToString([]byte(value1)))
		}
		if _, _, code := tb.ct("", "systemctl", "start", "intruder"); code == 0 {
			t.Error("intruder.service (no policy) started")
		}
		if r := tb.show("intruder", "Result"); r == "success" {
			t.Errorf("intruder.service Result=%s", r)
		}
		if _, _, code := tb.ct("", "test", "-e", "/run/intruder.hex"); code == 0 {
			t.Error("intruder.service ran its command")
		}

		// Rotation: a new version, a restart.
		tb.must(value2, "coffer", "secret", "put", "db-password")
		tb.must("", "systemctl", "restart", "billing")
		if got := tb.must("", "cat", "/run/billing.hex"); got != hex.EncodeToString([]byte(value2)) {
			t.Fatalf("after put and restart billing.service got %s", got)
		}

		// Sealed: the start fails.
		tb.must("", "coffer", "operator", "seal")
		if _, _, code := tb.ct("", "systemctl", "restart", "billing"); code == 0 {
			t.Error("billing.service started while cofferd is sealed")
		}
		j := tb.must("", "journalctl", "--no-pager", "-o", "cat", "-u", "billing", "-u", "intruder")
		t.Logf("journal of the failed starts:\n%s", lastLines(j, 12))

		// The audit log.
		log := tb.must("", "cat", "/var/log/coffer/audit.log")
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
			e, err := audit.ParseLine([]byte(l))
			if err != nil {
				t.Fatal(err)
			}
			if e.Operation != api.OpCredential {
				continue
			}
			unit := ""
			if e.Caller != nil {
				unit = e.Caller.Unit
				if e.Caller.UID != 0 || e.Caller.PID <= 1 {
					t.Errorf("credential entry with caller %+v", e.Caller)
				}
			}
			got = append(got, fmt.Sprintf("%s %s %s v%d %s", e.Outcome, unit, e.Detail["credential_id"], e.KeyVersion, e.ErrorCode))
			t.Logf("audit: %s reason=%q comm=%q", got[len(got)-1], e.Detail["reason"], e.Detail["comm"])
		}
		want := []string{
			"ok billing.service db-password v1 ",
			"denied intruder.service db-password v0 " + api.CodePermissionDenied,
			"ok billing.service db-password v2 ",
			"error billing.service db-password v0 " + api.CodeSealed,
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("credential audit entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		// The values never reach the journal.
		jAll := tb.must("", "journalctl", "--no-pager", "-o", "cat")
		if strings.Contains(jAll, "word-1") || strings.Contains(jAll, "second\x00value") {
			t.Error("a secret value is in the journal")
		}
	})
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
