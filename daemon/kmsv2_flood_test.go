package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/coffer-kms/coffer/daemon/audit"
	"github.com/coffer-kms/coffer/daemon/config"
	"github.com/coffer-kms/coffer/daemon/kmsv2"
)

// TestKMSv2_DeniedFloodAudit is the audit-flood attack on the KMS v2
// socket: uid 65534, which can open the socket (mode 0666 here; in a real
// deployment any member of kms_v2.group) but has no policy, sends 2,500
// denied Decrypts and 2,500 malformed ones (empty ciphertext) on one
// connection. As on the API socket, every call must be accounted for in
// the audit log (individually or in a coalesced entry's count), but the
// log must grow by less than 500 KB (one entry each wrote about 450 bytes:
// 2.2 MB), and the WARN lines must be rate-limited.
func TestKMSv2_DeniedFloodAudit(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to connect as another uid")
	}
	kdir, err := os.MkdirTemp("", "coffer-kms")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(kdir) })
	os.Chmod(kdir, 0o755)
	sock := filepath.Join(kdir, "kms.sock")
	n := startNode(t, t.TempDir(), func(c *config.Config) {
		c.KMSv2 = &config.KMSv2Config{Path: sock, Mode: 0o666, Key: "k8s"}
	})
	n.init(1, 1)
	st0, err := os.Stat(n.cfg.AuditPath())
	if err != nil {
		t.Fatal(err)
	}
	warn0 := strings.Count(n.logString(), "KMS v2 call denied")
	exe := copyTestBinary(t)
	const each = 2500
	cmd := exec.Command(exe, "-test.run=^TestHelperKMSFlood$", "-test.count=1")
	cmd.Env = append(os.Environ(), "COFFER_TEST_KMS_SOCK="+sock, "COFFER_TEST_KMS_N="+strconv.Itoa(each))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("flood helper: %v\n%s", err, out)
	}
	if want := fmt.Sprintf("RESULT %d %d\n", each, each); !strings.Contains(string(out), want) {
		t.Fatalf("flood helper: %s, want %q (denied, invalid)", out, want)
	}
	var entries []*audit.Entry
	waitFor(t, "every refused call accounted for", 10*time.Second, func() bool {
		_, entries = auditLog(t, n)
		return accounted(entries, 65534) == 2*each
	})
	st1, _ := os.Stat(n.cfg.AuditPath())
	grew := st1.Size() - st0.Size()
	warns := strings.Count(n.logString(), "KMS v2 call denied") - warn0
	t.Logf("%d denied and %d malformed KMS v2 Decrypts from uid 65534: audit grew %d KB, %d WARN lines", each, each, grew/1000, warns)
	if grew >= 500_000 {
		t.Fatalf("a %d-call refused KMS v2 flood wrote %d bytes of audit, want < 500 KB", 2*each, grew)
	}
	if warns > 500 {
		t.Errorf("%d WARN lines for the flood, want them rate-limited", warns)
	}
	if findOp(entries, audit.TypeEvent, "unusual-access") == nil {
		t.Error("no unusual-access event for the flood")
	}
}

// TestHelperKMSFlood is not a test: run by TestKMSv2_DeniedFloodAudit as
// another uid, it sends COFFER_TEST_KMS_N denied Decrypts (a well-formed
// key_id of a key it has no grant on) and as many malformed ones (empty
// ciphertext) on one gRPC connection, and prints how many were answered
// PermissionDenied and InvalidArgument.
func TestHelperKMSFlood(t *testing.T) {
	sock := os.Getenv("COFFER_TEST_KMS_SOCK")
	if sock == "" {
		t.Skip("helper process for TestKMSv2_DeniedFloodAudit")
	}
	n, _ := strconv.Atoi(os.Getenv("COFFER_TEST_KMS_N"))
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("RESULT dial-error")
		return
	}
	defer conn.Close()
	c := kmsapi.NewKeyManagementServiceClient(conn)
	ctx := context.Background()
	denied, invalid := 0, 0
	for i := 0; i < n; i++ {
		_, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "u" + strconv.Itoa(i), KeyId: "coffer/k8s/v1", Ciphertext: []byte("x"),
			Annotations: map[string][]byte{kmsv2.AnnotationFormat: []byte("1")}})
		if status.Code(err) == codes.PermissionDenied {
			denied++
		}
		_, err = c.Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "v" + strconv.Itoa(i), KeyId: "coffer/k8s/v1"})
		if status.Code(err) == codes.InvalidArgument {
			invalid++
		}
	}
	fmt.Printf("RESULT %d %d\n", denied, invalid)
}
