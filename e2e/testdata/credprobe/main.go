// Command credprobe is a stand-in credential socket for the systemd
// end-to-end test: it records who connects for LoadCredential= (uid, pid,
// command name, cgroup, its bound address) and answers in a chosen way, so
// that the test can show what systemd does with each answer.
package main

import (
	"encoding/json"
	"flag"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	sock := flag.String("socket", "", "unix socket to listen on")
	mode := flag.String("mode", "close", "close (no byte) | oversize (1 MiB + 64 KiB of zero bytes) | value")
	value := flag.String("value", "probe-value", "the value for -mode value")
	logFile := flag.String("log", "", "JSON lines, one per connection")
	flag.Parse()
	os.Remove(*sock)
	ln, err := net.Listen("unix", *sock)
	if err != nil {
		panic(err)
	}
	lf, err := os.OpenFile(*logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		panic(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			panic(err)
		}
		rec := map[string]any{}
		raw, _ := c.(*net.UnixConn).SyscallConn()
		raw.Control(func(fd uintptr) {
			if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
				rec["uid"], rec["pid"] = cred.Uid, cred.Pid
				p := "/proc/" + strconv.Itoa(int(cred.Pid))
				comm, _ := os.ReadFile(p + "/comm")
				cg, _ := os.ReadFile(p + "/cgroup")
				rec["comm"] = strings.TrimSpace(string(comm))
				rec["cgroup"] = strings.TrimSpace(string(cg))
			}
			if sa, err := unix.Getpeername(int(fd)); err == nil {
				if su, ok := sa.(*unix.SockaddrUnix); ok {
					rec["address"] = su.Name
				}
			}
		})
		b, _ := json.Marshal(rec)
		lf.Write(append(b, '\n'))
		switch *mode {
		case "oversize":
			zero := make([]byte, 64<<10)
			for i := 0; i < 17; i++ {
				if _, err := c.Write(zero); err != nil {
					break
				}
			}
		case "value":
			c.Write([]byte(*value))
		}
		c.Close()
	}
}
