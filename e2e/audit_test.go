package e2e

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/api"
	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/keystore/shamir"
)

// apiID is api plus the response's request id.
func (d *daemon) apiID(method, path, body string) (status int, code, id string, data []byte) {
	d.t.Helper()
	req, _ := http.NewRequest(method, "http://coffer"+path, strings.NewReader(body))
	resp, err := d.http.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ = io.ReadAll(resp.Body)
	var eb api.ErrorBody
	if resp.StatusCode >= 400 {
		json.Unmarshal(data, &eb)
	}
	return resp.StatusCode, eb.Error.Code, resp.Header.Get(api.HeaderRequestID), data
}

// readAudit verifies the log files as one chain and returns the entries.
func readAudit(t *testing.T, paths ...string) (audit.Summary, []*audit.Entry) {
	t.Helper()
	sum, err := audit.VerifyFiles(paths...)
	if err != nil {
		t.Fatalf("audit log does not verify: %v", err)
	}
	var out []*audit.Entry
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, audit.MaxLine+1)
		for sc.Scan() {
			e, err := audit.ParseLine(sc.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
		f.Close()
	}
	return sum, out
}

func hasEntry(es []*audit.Entry, pred func(*audit.Entry) bool) bool {
	for _, e := range es {
		if pred(e) {
			return true
		}
	}
	return false
}

// mountTmpfs mounts a small tmpfs at dir, or skips the test.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("mounting a tmpfs needs root: the disk-full test is skipped")
	}
	os.MkdirAll(dir, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s): the disk-full test needs mount permission", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
}

// fillFS writes path until its file system is full.
func fillFS(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, n := range []int{4096, 1} {
		buf := make([]byte, n)
		for {
			if _, err := f.Write(buf); err != nil {
				break
			}
		}
	}
}

// TestE2E_AuditDiskFull: the audit log on a real 64 KiB tmpfs. When it
// fills up, requests fail closed with 503 audit_unavailable and no
// ciphertext leaves the daemon; status, health and `coffer status` say
// so; once space is freed requests work again without a restart. Every
// acknowledged request is in the log, which verifies. Then log rotation
// with SIGHUP: the chain continues in a new file, and a log cut at its end
// is caught by comparing `coffer audit verify` with status.
func TestE2E_AuditDiskFull(t *testing.T) {
	d := newDaemon(t, "audit {\n  path = \"auditfs/audit.log\"\n  fsync = \"always\"\n}\n")
	fs := filepath.Join(d.dir, "auditfs")
	mountTmpfs(t, fs, "64k")
	d.start()
	d.mustCoffer("", "operator", "init", "--shares", "1", "--threshold", "1")
	d.mustCoffer("", "key", "create", "app")

	var acked, refused []string
	wrap := func(i int) int {
		st, code, id, body := d.apiID("POST", "/v1/keys/app/wrap", `{"plaintext":"`+b64(fmt.Sprintf("disk-full-%d", i))+`"}`)
		switch {
		case st == 200:
			acked = append(acked, id)
		case st == 503 && code == api.CodeAuditUnavailable:
			refused = append(refused, id)
			if bytes.Contains(body, []byte("coffer:v")) {
				t.Errorf("a refused answer carries a ciphertext: %s", body)
			}
		default:
			t.Fatalf("wrap %d: %d %s %s", i, st, code, body)
		}
		return st
	}
	for i := 0; i < 3; i++ {
		if wrap(i) != 200 {
			t.Fatal("wrap before the disk filled up was refused")
		}
	}
	filler := filepath.Join(fs, "filler")
	fillFS(t, filler)
	for i := 3; i < 40; i++ {
		wrap(i)
	}
	if len(refused) == 0 {
		t.Fatal("no request was refused with the audit log's file system full")
	}
	st := d.status()
	if !strings.Contains(st.AuditError, "no space left on device") {
		t.Fatalf("status while full: %+v", st)
	}
	if code, _, _ := d.api("GET", "/v1/sys/health", ""); code != 503 {
		t.Fatalf("health while the audit log fails: %d", code)
	}
	if r := d.coffer("", -1, "status"); !strings.Contains(r.stdout, "Audit error") {
		t.Fatalf("coffer status does not show the audit error:\n%s", r.stdout)
	}
	if !strings.Contains(d.logs(), "the audit log cannot be written") {
		t.Fatal("the daemon did not log the audit failure")
	}

	os.Remove(filler)
	deadline := time.Now().Add(5 * time.Second)
	for i := 40; wrap(i) != 200; i++ {
		if time.Now().After(deadline) {
			t.Fatal("requests were still refused 5s after space was freed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := d.status(); st.AuditError != "" {
		t.Fatalf("status after recovery: %+v", st)
	}
	logPath := filepath.Join(fs, "audit.log")
	_, es := readAudit(t, logPath)
	ids := map[string]bool{}
	for _, e := range es {
		ids[e.RequestID] = true
	}
	for _, id := range acked {
		if !ids[id] {
			t.Errorf("acknowledged request %s is not in the audit log", id)
		}
	}
	if !hasEntry(es, func(e *audit.Entry) bool { return e.Operation == "audit-recovered" && e.Detail["refused_total"] != "0" }) {
		t.Error("no audit-recovered event with the refused count")
	}

	// Rotation: rename, SIGHUP, the chain goes on in a new file.
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(logPath); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new audit log after SIGHUP:\n%s", d.logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
	wrap(100)
	st = d.status()
	out := d.mustCoffer("", "audit", "verify", logPath+".1", logPath)
	if want := fmt.Sprintf("ok: %d entries, last seq %d, last hash %s\n", st.AuditSeq, st.AuditSeq, st.AuditHash); out != want {
		t.Fatalf("verify across rotation: %q, want %q", out, want)
	}
	if r := d.coffer("", -1, "audit", "verify", logPath); r.code != 0 || !strings.Contains(r.stderr, "continues a rotated log") {
		t.Fatalf("verify the new file alone: exit %d %s", r.code, r.stderr)
	}

	// A log cut at its end verifies on its own; status shows the cut.
	data, _ := os.ReadFile(logPath + ".1")
	lines := bytes.SplitAfter(data, []byte("\n"))
	cut := filepath.Join(d.dir, "cut.log")
	os.WriteFile(cut, bytes.Join(lines[:len(lines)-3], nil), 0o600)
	var vr struct {
		OK       bool   `json:"ok"`
		LastSeq  uint64 `json:"last_seq"`
		LastHash string `json:"last_hash"`
	}
	json.Unmarshal([]byte(d.mustCoffer("", "--format", "json", "audit", "verify", cut)), &vr)
	if !vr.OK || vr.LastSeq >= st.AuditSeq || vr.LastHash == st.AuditHash {
		t.Fatalf("a cut log: %+v vs status %d %s", vr, st.AuditSeq, st.AuditHash)
	}
}

// TestE2E_AuditTampering: each kind of tampering with a real log is found
// by `coffer audit verify` at the right line.
func TestE2E_AuditTampering(t *testing.T) {
	d := newDaemon(t, "")
	d.start()
	d.mustCoffer("", "operator", "init", "--shares", "1", "--threshold", "1")
	d.mustCoffer("", "key", "create", "app")
	for i := 0; i < 6; i++ {
		d.mustCoffer("x", "wrap", "--key", "app", "--aad", "ctx")
	}
	path := filepath.Join(d.dir, "data", "audit.log")
	st := d.status()
	if out := d.mustCoffer("", "audit", "verify", path); out != fmt.Sprintf("ok: %d entries, last seq %d, last hash %s\n", st.AuditSeq, st.AuditSeq, st.AuditHash) {
		t.Fatalf("verify: %q (status %d %s)", out, st.AuditSeq, st.AuditHash)
	}
	data, _ := os.ReadFile(path)
	lines := bytes.SplitAfter(data, []byte("\n"))
	lines = lines[:len(lines)-1] // the empty piece after the last newline
	join := func(ls ...[]byte) []byte { return bytes.Join(ls, nil) }
	cat := func(parts ...[][]byte) [][]byte {
		var out [][]byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	l := func(i int) [][]byte { return [][]byte{lines[i-1]} }
	for _, c := range []struct {
		name string
		data []byte
		line int
		word string
	}{
		{"edit a field", join(cat(lines[:4], [][]byte{bytes.Replace(lines[4], []byte(`"outcome":"ok"`), []byte(`"outcome":"error"`), 1)}, lines[5:])...), 5, "edited"},
		{"delete a line", join(cat(lines[:4], lines[5:])...), 5, "missing"},
		{"swap two lines", join(cat(lines[:4], l(6), l(5), lines[6:])...), 5, "reordered"},
		{"truncate the middle", append(append([]byte(nil), data[:len(join(lines[:5]...))+60]...), data[len(join(lines[:7]...))+90:]...), 6, "truncated"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d.t = t
			defer func() { d.t = t }()
			p := filepath.Join(d.dir, "tampered.log")
			os.WriteFile(p, c.data, 0o600)
			r := d.coffer("", -1, "audit", "verify", p)
			if r.code != 1 || !strings.Contains(r.stderr, fmt.Sprintf("%s:%d: ", p, c.line)) || !strings.Contains(r.stderr, c.word) {
				t.Fatalf("exit %d, stderr %q; want line %d, %q", r.code, r.stderr, c.line, c.word)
			}
		})
	}
	d.t = t
}

// TestE2E_LeakSuite runs the scenario (init, unseal, keys, wraps,
// data keys, rotations, seal/unseal, errors, a denied caller, break-glass,
// reseal, restarts) at log_level trace, then searches every byte cofferd
// wrote — its stderr, the audit log, every file under data_dir (raft log,
// snapshots, sealed blob) — and the CLI's outputs other than the intended
// ones (stderr always; stdout of every command but those that print a
// secret on purpose) for every secret the test knows, raw, hex and base64:
// plaintexts, aads, shares (text and bytes), data keys, the root key, every
// keyring term key, every named key version's material and the audit HMAC
// key. The term keys and key material are recovered from data_dir with the
// root key and the documented encodings (keystore package comment), which
// also proves that what is on disk is only ciphertext.
func TestE2E_LeakSuite(t *testing.T) {
	d := newDaemon(t, "dev = true\nseal \"soft\" {\n  key_file = \"dev-seal.key\"\n}\naudit {\n  path = \"log/audit.log\"\n}\n")
	d.start()
	var cliOut, cliErr bytes.Buffer
	// cli runs coffer; intended says that its stdout holds a secret on
	// purpose (shares, plaintexts, data keys), so it is not searched.
	cli := func(stdin string, uid int, intended bool, args ...string) result {
		t.Helper()
		r := d.coffer(stdin, uid, args...)
		fmt.Fprintf(&cliErr, "$ coffer %s\n%s", strings.Join(args, " "), r.stderr)
		if !intended {
			fmt.Fprintf(&cliOut, "$ coffer %s\n%s", strings.Join(args, " "), r.stdout)
		}
		return r
	}
	must := func(stdin string, intended bool, args ...string) string {
		t.Helper()
		r := cli(stdin, -1, intended, args...)
		if r.code != 0 {
			t.Fatalf("coffer %v: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
		}
		return r.stdout
	}
	secrets := map[string][]byte{}
	daemonOnly := map[string][]byte{} // ciphertexts: fine in the CLI's output, never in what cofferd writes

	var ir api.InitResponse
	json.Unmarshal([]byte(must("", true, "--format", "json", "operator", "init", "--shares", "5", "--threshold", "3")), &ir)
	if len(ir.Shares) != 5 {
		t.Fatalf("init: %+v", ir)
	}
	for i, s := range ir.Shares {
		secrets[fmt.Sprintf("share %d", i+1)] = []byte(s)
		raw, err := shamir.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		secrets[fmt.Sprintf("share %d bytes", i+1)] = raw
	}
	root := combineShares(t, ir.Shares[:3])
	secrets["root key"] = root
	st := d.status()

	plain := []string{"leak-PLAINTEXT-alpha-93c1e7", "leak-PLAINTEXT-beta-4f0a2d", "leak-PLAINTEXT-gamma-b7e655", "leak-PLAINTEXT-delta-01ac9f"}
	aads := []string{"leak-AAD-tenant-7731", "leak-AAD-tenant-8842"}
	for i, p := range plain {
		secrets[fmt.Sprintf("plaintext %d", i+1)] = []byte(p)
	}
	for i, a := range aads {
		// aad is stored only as an HMAC; the CLI may show it (its flag).
		daemonOnly[fmt.Sprintf("aad %d", i+1)] = []byte(a)
	}
	must("", false, "key", "create", "app")
	must("", false, "key", "create", "other", "--type", "chacha20-poly1305", "--rotation-period", "720h")
	ct1 := strings.TrimSpace(must(plain[0], false, "wrap", "--key", "app", "--aad", aads[0]))
	if pt := must("", true, "unwrap", "--key", "app", "--aad", aads[0], ct1); pt != plain[0] {
		t.Fatalf("unwrap %q", pt)
	}
	// Raw HTTP: a batch with aads, an unwrap batch, data keys.
	_, _, _, body := d.apiID("POST", "/v1/keys/other/wrap", `{"batch":[{"plaintext":"`+b64(plain[1])+`","aad":"`+b64(aads[1])+`"},{"plaintext":"`+b64(plain[2])+`"}]}`)
	var wb api.WrapBatchResponse
	json.Unmarshal(body, &wb)
	if len(wb.Batch) != 2 {
		t.Fatalf("batch: %s", body)
	}
	_, _, _, body = d.apiID("POST", "/v1/keys/other/unwrap", `{"batch":[{"ciphertext":"`+wb.Batch[0].Ciphertext+`","aad":"`+b64(aads[1])+`"},{"ciphertext":"`+wb.Batch[1].Ciphertext+`"}]}`)
	if !bytes.Contains(body, []byte(b64(plain[2]))) {
		t.Fatalf("unwrap batch: %s", body)
	}
	var dk api.DataKeyResponse
	json.Unmarshal([]byte(must("", true, "--format", "json", "datakey", "--key", "app")), &dk)
	secrets["data key 1"] = dk.Plaintext
	_, _, _, body = d.apiID("POST", "/v1/keys/app/datakey", `{"bytes":48,"aad":"`+b64(aads[0])+`"}`)
	var dk2 api.DataKeyResponse
	json.Unmarshal(body, &dk2)
	secrets["data key 2"] = dk2.Plaintext
	for i, c := range []string{ct1, wb.Batch[0].Ciphertext, wb.Batch[1].Ciphertext, dk.Ciphertext, dk2.Ciphertext} {
		// The ciphertext body (after "coffer:vN:"), which the audit log
		// must not carry either.
		daemonOnly[fmt.Sprintf("ciphertext %d", i+1)] = []byte(c[strings.LastIndexByte(c, ':')+1:])
	}

	// Rotations.
	must("", false, "key", "rotate", "app")
	ct2 := strings.TrimSpace(must(ct1, false, "rewrap", "--key", "app", "--aad", aads[0]))
	daemonOnly["ciphertext rewrapped"] = []byte(ct2[strings.LastIndexByte(ct2, ':')+1:])
	must("", false, "operator", "rotate")
	must("", false, "key", "create", "after-rotation")
	ct3 := strings.TrimSpace(must(plain[3], false, "wrap", "--key", "after-rotation"))
	daemonOnly["ciphertext 6"] = []byte(ct3[strings.LastIndexByte(ct3, ':')+1:])

	// Secrets: values from stdin and a file, read back (intended stdout),
	// a cas conflict, a denied caller, a value sent as bad base64, and a
	// destroyed version. The values must show nowhere cofferd writes, nor
	// in the CLI's stderr.
	secretVals := []string{"leak-SECRET-dbpass-\x00\n-5e1d77", "leak-SECRET-apikey-c0ffee-91b2", "leak-SECRET-rotated-7d2e4a"}
	for i, v := range secretVals {
		secrets[fmt.Sprintf("secret value %d", i+1)] = []byte(v)
	}
	must(secretVals[0], false, "secret", "put", "leak-db")
	secretFile := filepath.Join(t.TempDir(), "v")
	os.WriteFile(secretFile, []byte(secretVals[1]), 0o600)
	must("", false, "secret", "put", "leak-db", secretFile, "--cas", "1")
	cli(secretVals[2], -1, false, "secret", "put", "leak-db", "--cas", "1") // conflict
	if got := must("", true, "secret", "get", "leak-db", "--version", "1"); got != secretVals[0] {
		t.Fatalf("secret get v1 = %q", got)
	}
	must("", true, "--format", "json", "secret", "get", "leak-db")
	d.apiID("PUT", "/v1/secrets/leak-db", `{"value":"`+secretVals[1]+`"}`) // not base64
	must("", false, "secret", "destroy", "leak-db", "--version", "1")
	cli("", -1, false, "secret", "get", "leak-db", "--version", "1")
	if os.Getuid() == 0 {
		cli("", 65534, false, "secret", "get", "leak-db")
		cli(secretVals[2], 65534, false, "secret", "put", "leak-db")
	}
	must(secretVals[2], false, "secret", "put", "leak-db")

	// Errors: tampered, wrong aad, bad input carrying a secret, a
	// mistyped share, a denied caller.
	tampered := []byte(ct2)
	tampered[len(tampered)-5] ^= 1
	cli(string(tampered), -1, false, "unwrap", "--key", "app", "--aad", aads[0])
	cli(ct2, -1, false, "unwrap", "--key", "app", "--aad", "wrong-aad")
	cli(ct2, -1, false, "unwrap", "--key", "other")
	d.apiID("POST", "/v1/keys/app/wrap", `{"plaintext":"`+plain[0]+`"}`) // not base64
	d.apiID("POST", "/v1/keys/app/wrap", `{"plaintext":"`+b64(plain[0])+`","bogus":"`+plain[1]+`"}`)
	d.apiID("POST", "/v1/keys/nope/unwrap", `{"ciphertext":"`+ct2+`"}`)
	if os.Getuid() == 0 {
		if r := cli(plain[0], 65534, false, "wrap", "--key", "app"); r.code != 1 || !strings.Contains(r.stderr, api.CodePermissionDenied) {
			t.Fatalf("nobody wrap: %d %s", r.code, r.stderr)
		}
		cli(ct2, 65534, false, "unwrap", "--key", "app")
	}

	// Seal, a mistyped share, unseal with 3 shares.
	must("", false, "operator", "seal")
	typo := []byte(ir.Shares[1])
	typo[len(typo)-2] ^= 1
	cli(string(typo)+"\n", -1, false, "operator", "unseal")
	must(strings.Join(ir.Shares[1:4], "\n")+"\n", false, "operator", "unseal")
	if d.status().Sealed {
		t.Fatal("still sealed")
	}
	must(aads[0], false, "audit", "hmac")

	// Restart: the soft device unseals. Then break-glass: the device key
	// is gone, shares unseal, reseal enrols a new device key.
	d.stop()
	d.start()
	if d.status().Sealed {
		t.Fatalf("not auto-unsealed after a restart:\n%s", d.logs())
	}
	d.stop()
	os.Remove(filepath.Join(d.dir, "dev-seal.key"))
	d.start()
	if !d.status().Sealed {
		t.Fatal("unsealed without its device key")
	}
	must(strings.Join([]string{ir.Shares[4], ir.Shares[0], ir.Shares[2]}, "\n")+"\n", false, "operator", "unseal")
	must("", false, "operator", "reseal")
	if pt := must("", true, "unwrap", "--key", "app", "--aad", aads[0], ct2); pt != plain[0] {
		t.Fatalf("unwrap after break-glass: %q", pt)
	}
	d.stop()
	d.start()
	if d.status().Sealed {
		t.Fatal("not auto-unsealed after reseal")
	}
	checkLockedMemory(t, d.cmd.Process.Pid)
	d.stop()

	// What the audit log says.
	auditPath := filepath.Join(d.dir, "log", "audit.log")
	_, es := readAudit(t, auditPath)
	for _, want := range []struct{ typ, op string }{
		{audit.TypeRequest, "init"}, {audit.TypeRequest, "unseal"}, {audit.TypeRequest, "seal"}, {audit.TypeRequest, "reseal"},
		{audit.TypeRequest, "rotate"}, {audit.TypeRequest, "create"}, {audit.TypeRequest, "wrap"}, {audit.TypeRequest, "unwrap"},
		{audit.TypeRequest, "rewrap"}, {audit.TypeRequest, "datakey"}, {audit.TypeRequest, "audit-hash"},
		{audit.TypeEvent, "init"}, {audit.TypeEvent, "auto-unseal"}, {audit.TypeEvent, "break-glass-unseal"},
		{audit.TypeEvent, "start"}, {audit.TypeEvent, "stop"},
	} {
		if !hasEntry(es, func(e *audit.Entry) bool { return e.Type == want.typ && e.Operation == want.op }) {
			t.Errorf("no %s %s entry in the audit log", want.typ, want.op)
		}
	}
	if os.Getuid() == 0 && !hasEntry(es, func(e *audit.Entry) bool {
		return e.Outcome == audit.OutcomeDenied && e.Caller != nil && e.Caller.UID == 65534 && e.ErrorCode == api.CodePermissionDenied
	}) {
		t.Error("no denied entry for uid 65534")
	}

	// Key material recovered from data_dir.
	terms, material := recoverKeys(t, filepath.Join(d.dir, "data"), root, st.ClusterID)
	if len(terms) < 2 || len(material) < 4 {
		t.Fatalf("recovered %d term keys and %d key versions from data_dir; want at least 2 and 4", len(terms), len(material))
	}
	for name, k := range terms {
		secrets[name] = k
	}
	for name, k := range material {
		secrets[name] = k
	}
	ak, err := hkdf.Key(sha256.New, terms["term 1 key"], nil, "coffer-audit-hmac-v1", 32)
	if err != nil {
		t.Fatal(err)
	}
	secrets["audit hmac key"] = ak

	auditLog, _ := os.ReadFile(auditPath)
	daemonHay := map[string][]byte{"audit log": auditLog}
	all := map[string][]byte{}
	for k, v := range secrets {
		all[k] = v
	}
	for k, v := range daemonOnly {
		all[k] = v
	}
	checkNoSecrets(t, d, all, daemonHay)
	checkNoSecrets(t, d, secrets, map[string][]byte{"coffer stderr": cliErr.Bytes(), "coffer stdout (not meant to show secrets)": cliOut.Bytes()})
}

// recoverKeys finds every keyring and key record in the files under dir
// (the raft log stores the committed commands' JSON verbatim) and opens
// them with root, following the encodings in the keystore package comment.
// It returns the term keys ("term N key") and key material ("KEY vN").
func recoverKeys(t *testing.T, dir string, root []byte, clusterID string) (terms, material map[string][]byte) {
	t.Helper()
	terms, material = map[string][]byte{}, map[string][]byte{}
	var blobs [][]byte
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			blobs = append(blobs, b)
		}
		return nil
	})
	gcm := func(key []byte) cipher.AEAD {
		b, err := aes.NewCipher(key)
		if err != nil {
			t.Fatal(err)
		}
		g, _ := cipher.NewGCM(b)
		return g
	}
	unpack := func(p []byte) ([]byte, [][]byte) {
		l, n := binary.Uvarint(p)
		if n <= 0 || int(l) > len(p)-n {
			t.Fatal("bad framing")
		}
		rest := p[n+int(l):]
		var keys [][]byte
		for len(rest) >= 32 {
			keys = append(keys, rest[:32])
			rest = rest[32:]
		}
		return p[n : n+int(l)], keys
	}
	keyringRe := regexp.MustCompile(`"keyring":"([A-Za-z0-9+/=]+)"`)
	termKeys := map[uint32][]byte{}
	for _, b := range blobs {
		for _, m := range keyringRe.FindAllSubmatch(b, -1) {
			blob, err := base64.StdEncoding.DecodeString(string(m[1]))
			if err != nil || len(blob) < 12 {
				continue
			}
			plain, err := gcm(root).Open(nil, blob[:12], blob[12:], append([]byte("coffer-keyring-v1\x00"), clusterID...))
			if err != nil {
				continue // another cluster's or a corrupt copy: not ours to check
			}
			meta, keys := unpack(plain)
			var kr struct {
				Terms []struct{ Term uint32 } `json:"terms"`
			}
			json.Unmarshal(meta, &kr)
			for i, tm := range kr.Terms {
				if i < len(keys) {
					termKeys[tm.Term] = keys[i]
					terms[fmt.Sprintf("term %d key", tm.Term)] = keys[i]
				}
			}
		}
	}
	recordRe := regexp.MustCompile(`"path":"(keys/[A-Za-z0-9._-]+)"(?:,"expect":\d+)?,"entry":\{"v":(\d+),"t":(\d+),"d":"([A-Za-z0-9+/=]+)"\}`)
	for _, b := range blobs {
		for _, m := range recordRe.FindAllSubmatch(b, -1) {
			path := string(m[1])
			v, _ := strconv.ParseUint(string(m[2]), 10, 64)
			term, _ := strconv.ParseUint(string(m[3]), 10, 32)
			data, err := base64.StdEncoding.DecodeString(string(m[4]))
			tk := termKeys[uint32(term)]
			if err != nil || tk == nil || len(data) < 12 {
				continue
			}
			aad := append([]byte("coffer-record-v1\x00"), path...)
			aad = append(aad, 0)
			aad = binary.BigEndian.AppendUint64(aad, v)
			aad = binary.BigEndian.AppendUint32(aad, uint32(term))
			plain, err := gcm(tk).Open(nil, data[:12], data[12:], aad)
			if err != nil {
				t.Errorf("record %s v%d from data_dir does not open with its term key", path, v)
				continue
			}
			_, keys := unpack(plain)
			for i, k := range keys {
				material[fmt.Sprintf("%s v%d material", strings.TrimPrefix(path, "keys/"), i+1)] = k
			}
		}
	}
	return terms, material
}

// checkLockedMemory reads /proc/PID/status of an unsealed cofferd: the key
// pages are locked (VmLck > 0) when RLIMIT_MEMLOCK allows it.
func checkLockedMemory(t *testing.T, pid int) {
	t.Helper()
	var lim syscall.Rlimit
	syscall.Getrlimit(8 /* RLIMIT_MEMLOCK */, &lim)
	if os.Getuid() != 0 && lim.Cur < 128<<10 {
		t.Logf("RLIMIT_MEMLOCK is %d bytes and this is not root: not checking VmLck", lim.Cur)
		return
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^VmLck:\s+(\d+) kB`).FindSubmatch(status)
	if m == nil {
		t.Fatalf("no VmLck in /proc/%d/status", pid)
	}
	if kb, _ := strconv.Atoi(string(m[1])); kb == 0 {
		t.Fatalf("VmLck is 0 kB for an unsealed cofferd: key memory is not locked")
	}
}

// TestE2E_MemoryHardening runs cofferd as an unprivileged uid (65534) and
// shows, on the unsealed daemon, that its key memory is locked (VmLck > 0,
// within RLIMIT_MEMLOCK) and that it is not dumpable. /proc/PID/status
// does not show dumpability, so the test uses two consequences of
// PR_SET_DUMPABLE=0 that the kernel documents (proc(5)): the files under
// /proc/PID belong to root instead of the process's uid, and a process of
// the same uid cannot read /proc/PID/environ (a ptrace-mode read check).
// A control process of the same uid, dumpable, passes both, so the check
// is not an artefact of permissions.
func TestE2E_MemoryHardening(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run cofferd and the probes as uid 65534")
	}
	const nobody = 65534
	d := newDaemon(t, "")
	for _, p := range []string{d.dir, d.config} {
		if err := os.Chown(p, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	d.procAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	d.start()
	d.mustCoffer("", "operator", "init", "--shares", "1", "--threshold", "1")
	pid := d.cmd.Process.Pid
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if !regexp.MustCompile(`(?m)^Uid:\s+65534\s`).Match(status) {
		t.Fatalf("cofferd does not run as uid %d:\n%s", nobody, status)
	}
	checkLockedMemory(t, pid)

	control := exec.Command("sleep", "30")
	control.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	if err := control.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { control.Process.Kill(); control.Wait() }()

	owner := func(pid int) uint32 {
		var st syscall.Stat_t
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/environ", pid), &st); err != nil {
			t.Fatal(err)
		}
		return st.Uid
	}
	readAs := func(pid int) error {
		cmd := exec.Command("cat", fmt.Sprintf("/proc/%d/environ", pid))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		cmd.Stdout = io.Discard
		return cmd.Run()
	}
	if got := owner(control.Process.Pid); got != nobody {
		t.Fatalf("control: /proc/PID/environ owned by %d, want %d (the method does not work here)", got, nobody)
	}
	if err := readAs(control.Process.Pid); err != nil {
		t.Fatalf("control: uid %d cannot read its own process's environ (%v): the method does not work here", nobody, err)
	}
	if got := owner(pid); got != 0 {
		t.Errorf("cofferd's /proc/PID/environ is owned by uid %d, want 0: the process is dumpable", got)
	}
	if err := readAs(pid); err == nil {
		t.Error("uid 65534 read cofferd's /proc/PID/environ: the process is dumpable")
	}
}
