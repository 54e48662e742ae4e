// Package testserver starts the real Python streamer server for Go tests, and a TCP proxy that can cut
// connections; no part of it is a mock of gRPC.
package testserver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// StartupTimeout bounds the wait for "ready on HOST:PORT" (the server compiles or loads its numba kernels first).
const StartupTimeout = 3 * time.Minute

var ready = regexp.MustCompile(`ready on (\S+):(\d+)`)

// Server is one `streamer serve` process on a free loopback port.
type Server struct {
	Addr   string // "127.0.0.1:PORT"
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has ended and its stderr is read
	mu     sync.Mutex
	log    strings.Builder // everything the server wrote to stderr
}

// Log is what the server has written to stderr so far.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// Binary is the server executable: $STREAMER_BIN, else <repo>/.venv/bin/streamer.
func Binary() (string, error) {
	if bin := os.Getenv("STREAMER_BIN"); bin != "" {
		return bin, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".venv", "bin", "streamer"), nil
}

// RepoRoot is the directory above the Go module (the one holding go.mod), found from the working directory
// that `go test` gives each package (its own directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Dir(dir), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Start runs `streamer serve --host 127.0.0.1 --port 0 ARGS...` and waits for it to be ready; the process is
// killed when the test ends. Without the binary the test is skipped, or fails when $CI is set: in CI a
// missing server must not turn the cross-language tests into a silent pass.
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	bin := requireBinary(t)
	s, err := start(bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("server log:\n%s", s.Log())
		}
	})
	return s
}

var shared struct {
	once sync.Once
	s    *Server
	err  error
}

// Shared is one server with default settings for every test of the package that asks (starting one takes
// seconds); TestMain (testserver.Main) stops it after m.Run. A failing test gets the server's log.
func Shared(t testing.TB) *Server {
	t.Helper()
	bin := requireBinary(t)
	shared.once.Do(func() { shared.s, shared.err = start(bin) })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", shared.s.Log())
		}
	})
	return shared.s
}

// StopShared kills the shared server, if one was started.
func StopShared() {
	if shared.s != nil {
		shared.s.Stop()
	}
}

// Main is a package's TestMain: run the tests, then stop the shared server (if a test started it).
func Main(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}

func requireBinary(t testing.TB) string {
	t.Helper()
	bin, err := Binary()
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("streamer server binary: %v (set STREAMER_BIN or run `make`)", err)
		}
		t.Skipf("streamer server binary: %v (set STREAMER_BIN or run `make`); skipped outside CI", err)
	}
	return bin
}

func start(bin string, args ...string) (*Server, error) {
	s := &Server{}
	addr := make(chan string, 1)
	// An in-memory store and no metrics port unless the test names them (a later flag wins): no test shares or
	// leaves state, or needs a fixed port.
	s.cmd = exec.Command(bin, append([]string{"serve", "--host", "127.0.0.1", "--port", "0", "--store", "memory://",
		"--metrics-port", "0", "--otlp-port", "0", "--http-port", "0"}, args...)...)
	s.cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1")
	// exec copies stderr into the writer until the process ends, so the server never blocks on a full pipe.
	s.cmd.Stderr = &logWriter{s: s, ready: addr}
	s.cmd.WaitDelay = 5 * time.Second // should a child of the server keep stderr open, Wait still returns
	// If the test binary dies without cleanup, the kernel ends the server too.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = s.cmd.Wait()
		close(exited)
	}()
	s.exited = exited
	select {
	case a := <-addr:
		s.Addr = a
		return s, nil
	case <-exited:
		return nil, fmt.Errorf("%s serve exited before it was ready (%v):\n%s", bin, s.cmd.ProcessState, s.Log())
	case <-time.After(StartupTimeout):
		s.Stop()
		return nil, fmt.Errorf("%s serve not ready after %v:\n%s", bin, StartupTimeout, s.Log())
	}
}

// logWriter keeps the server's stderr and sends the address of its first "ready on HOST:PORT" line.
type logWriter struct {
	s       *Server
	ready   chan<- string
	partial []byte // an unfinished last line
	found   bool
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	w.s.log.Write(p)
	w.s.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := w.partial[:i]
		w.partial = w.partial[i+1:]
		if m := ready.FindSubmatch(line); m != nil && !w.found {
			w.found = true
			w.ready <- net.JoinHostPort(string(m[1]), string(m[2]))
		}
	}
	return len(p), nil
}

// Stop kills the server (SIGKILL: no shutdown at all) and waits for it.
func (s *Server) Stop() {
	_ = s.cmd.Process.Kill() // an error only says it has already exited
	<-s.exited
}

// Terminate sends SIGTERM (the server's graceful shutdown) and waits up to timeout for it to exit; the
// error says how it exited if that was not with status 0.
func (s *Server) Terminate(timeout time.Duration) error {
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-s.exited:
		if code := s.cmd.ProcessState.ExitCode(); code != 0 {
			return fmt.Errorf("streamer serve exited with status %d", code)
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("streamer serve did not exit within %v of SIGTERM", timeout)
	}
}

// Port is the port the server listens on (for a restart on the same address).
func (s *Server) Port() string {
	_, port, _ := net.SplitHostPort(s.Addr)
	return port
}

// Proxy forwards TCP connections from its own loopback port to a target, and can cut them: a network blip
// as the client sees it (its connection reset at once), with the server side closed only later, as a server
// that has not yet noticed the loss.
type Proxy struct {
	Addr   string
	target string // guarded by mu
	ln     net.Listener
	mu     sync.Mutex
	pairs  map[*pair]struct{} // open forwarded connections, removed by Cut
	closed bool
}

// pair is one forwarded connection: client is the accepted side, server the dialled one.
type pair struct {
	client, server net.Conn
	cut            atomic.Bool // set by Cut: the server side is closed by Cut's timer, not by the copiers
}

// NewProxy listens on a free loopback port and forwards to target; it is closed when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, pairs: map[*pair]struct{}{}}
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		u, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		pr := &pair{client: c, server: u}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			u.Close()
			return
		}
		p.pairs[pr] = struct{}{}
		p.mu.Unlock()
		go p.copy(pr, u, c)
		go p.copy(pr, c, u)
	}
}

func (p *Proxy) copy(pr *pair, dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	pr.client.Close()
	if !pr.cut.Load() {
		pr.server.Close()
	}
	p.mu.Lock()
	delete(p.pairs, pr)
	p.mu.Unlock()
}

// Cut resets every client connection now and closes the server side of each after serverDelay; new
// connections are still accepted.
func (p *Proxy) Cut(serverDelay time.Duration) {
	p.mu.Lock()
	cut := make([]*pair, 0, len(p.pairs))
	for pr := range p.pairs {
		cut = append(cut, pr)
		delete(p.pairs, pr)
	}
	p.mu.Unlock()
	for _, pr := range cut {
		pr.cut.Store(true)
		if tc, ok := pr.client.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not FIN: an abrupt loss, as a real blip looks to the client
		}
		pr.client.Close()
		server := pr.server
		time.AfterFunc(serverDelay, func() { server.Close() })
	}
}

// Retarget sends the connections accepted from now on to target (a load balancer moving to another server).
func (p *Proxy) Retarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// Close stops accepting and closes every connection at once.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.Cut(0)
}

// Pid is the server's process id (its CPU time is in /proc/PID/stat).
func (s *Server) Pid() int { return s.cmd.Process.Pid }
