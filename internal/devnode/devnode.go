// Package devnode builds the real binaries and runs a real `cofferd --dev`
// node for tests outside e2e/ (the client package's examples, examples/,
// the CLI's large-file tests): a real process on a real unix socket,
// initialised, unsealed, with a key "dev".
package devnode

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Build builds cofferd and coffer into a new temporary directory and returns
// it. The caller removes it.
func Build() (string, error) {
	dir, err := os.MkdirTemp("", "coffer-devnode-bin")
	if err != nil {
		return "", err
	}
	for _, c := range []string{"cofferd", "coffer"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, c), "github.com/coffer-kms/coffer/cmd/"+c)
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("building %s: %v\n%s", c, err, out)
		}
	}
	return dir, nil
}

// Node is a running dev node.
type Node struct {
	Dir    string // state directory (removed by Stop)
	Socket string
	cmd    *exec.Cmd
	mu     sync.Mutex
	log    bytes.Buffer
	done   chan struct{}
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Start runs binDir/cofferd --dev in a new directory and waits (up to a
// minute: the machine may be loaded) until it answers unsealed with its key.
func Start(binDir string) (*Node, error) {
	// Short path: sun_path holds 108 bytes.
	dir, err := os.MkdirTemp("", "cdev")
	if err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o755)
	n := &Node{Dir: dir, Socket: filepath.Join(dir, "coffer.sock"), done: make(chan struct{})}
	n.cmd = exec.Command(filepath.Join(binDir, "cofferd"), "--dev", "--data-dir", filepath.Join(dir, "data"), "--socket", n.Socket)
	n.cmd.Stdout = lockedBuffer{&n.mu, &n.log}
	n.cmd.Stderr = lockedBuffer{&n.mu, &n.log}
	if err := n.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	go func() { n.cmd.Wait(); close(n.done) }()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", n.Socket)
	}}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case <-n.done:
			err := fmt.Errorf("cofferd --dev exited: %s", n.Log())
			os.RemoveAll(dir)
			return nil, err
		default:
		}
		if resp, err := hc.Get("http://coffer/v1/keys/dev"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return n, nil
			}
		}
		if time.Now().After(deadline) {
			n.Stop()
			return nil, fmt.Errorf("cofferd --dev did not serve key dev within a minute: %s", n.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Log returns what cofferd wrote so far.
func (n *Node) Log() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return strings.TrimSpace(n.log.String())
}

// Stop terminates the node and removes its directory.
func (n *Node) Stop() {
	n.cmd.Process.Signal(os.Interrupt)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
	}
	os.RemoveAll(n.Dir)
}
