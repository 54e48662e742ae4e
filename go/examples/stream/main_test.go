// The README's Go example: it runs against the real server, and the README shows this file verbatim.

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/streamer-dev/streamer/go/internal/testserver"
)

func TestExampleRuns(t *testing.T) {
	srv := testserver.Start(t)
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	session := fmt.Sprintf("example-test-%d", time.Now().UnixNano())
	if err := run(ctx, srv.Addr, session, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || lines[0] != "Detect flagged [20]" ||
		!strings.HasPrefix(lines[1], "batch 7: latency_ms = 50 is ") {
		t.Fatalf("example printed:\n%s\nwant Detect flagged [20] and batch 7's latency_ms = 50 only", out.String())
	}
}

func TestReadmeShowsThisExample(t *testing.T) {
	root, err := testserver.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "go", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("main.go")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```go\n"+string(src)+"```\n") {
		t.Fatal("go/README.md does not show go/examples/stream/main.go verbatim in a ```go block; copy it over")
	}
}
