package testserver

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// StartRedis runs a real redis-server on a free loopback port, in a temporary directory, without persistence,
// and returns its URL (redis://127.0.0.1:PORT/0); it is killed when the test ends. Without redis-server the test
// is skipped, or fails when $CI is set (`make test` installs it).
func StartRedis(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server: %v (make test installs it)", err)
		}
		t.Skipf("redis-server: %v (make test installs it); skipped outside CI", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--dir", t.TempDir(),
		"--save", "", "--appendonly", "no")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			continue
		}
		_, _ = c.Write([]byte("PING\r\n"))
		buf := make([]byte, 5)
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := c.Read(buf)
		c.Close()
		if string(buf[:n]) == "+PONG" {
			return "redis://" + addr + "/0"
		}
	}
	t.Fatalf("redis-server did not answer on %s", addr)
	return ""
}
