// Short runs of every mode against the real server, and the JSON fields against go/README.md.

package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/internal/testserver"
)

func TestMain(m *testing.M) { testserver.Main(m) }

func TestRunEveryMode(t *testing.T) {
	srv := testserver.Shared(t)
	for _, tc := range []struct {
		mode      string
		pipelined bool
	}{{"detect", false}, {"stream", false}, {"stream", true}} {
		name := tc.mode
		if tc.pipelined {
			name += "-pipelined"
		}
		t.Run(name, func(t *testing.T) {
			cfg := config{Addr: srv.Addr, Mode: tc.mode, Pipelined: tc.pipelined, Window: 8, Batch: 200, Series: 20,
				Streams: 2, Duration: 300 * time.Millisecond, Warmup: 100 * time.Millisecond, Seed: 1, Timeout: 10 * time.Second}
			if err := cfg.validate(); err != nil {
				t.Fatal(err)
			}
			rep := run(context.Background(), cfg)
			if rep.Errors != 0 {
				t.Fatalf("errors: %d, first: %s", rep.Errors, rep.Error)
			}
			if rep.Batches < 1 || rep.Metrics != rep.Batches*int64(cfg.Batch) || rep.BatchesPerS <= 0 ||
				rep.MetricsPerS != rep.BatchesPerS*float64(cfg.Batch) {
				t.Errorf("inconsistent counts: %+v", rep)
			}
			if !(0 < rep.P50Ms && rep.P50Ms <= rep.P99Ms && rep.P99Ms <= rep.MaxMs) {
				t.Errorf("latencies out of order: %+v", rep)
			}
			if rep.Outliers < 1 { // normal values at the default k = 2: about 5% are flagged
				t.Errorf("no outliers in %d batches of normal values", rep.Batches)
			}
			if rep.RequestBytes < cfg.Batch*10 {
				t.Errorf("request_bytes %d too small for %d metrics", rep.RequestBytes, cfg.Batch)
			}
		})
	}
}

func TestUnreachableServerIsAnError(t *testing.T) {
	cfg := config{Addr: "127.0.0.1:1", Mode: "detect", Batch: 1, Series: 1, Streams: 1,
		Duration: 200 * time.Millisecond, Seed: 1, Timeout: time.Second}
	if rep := run(context.Background(), cfg); rep.Errors != 1 || !strings.Contains(rep.Error, "Unavailable") {
		t.Fatalf("run against a closed port: errors %d %q, want 1 Unavailable", rep.Errors, rep.Error)
	}
}

func TestPercentileNearestRank(t *testing.T) {
	lat := make([]time.Duration, 100)
	for i := range lat {
		lat[i] = time.Duration(i + 1)
	}
	if p := percentile(lat, 50); p != 50 {
		t.Errorf("p50 of 1..100 = %d, want 50", p)
	}
	if p := percentile(lat, 99); p != 99 {
		t.Errorf("p99 of 1..100 = %d, want 99", p)
	}
	if p := percentile(lat[:1], 99); p != 1 {
		t.Errorf("p99 of one = %d", p)
	}
}

// TestJSONFieldsDocumented: the benchmark harness reads these fields; go/README.md must list exactly them.
func TestJSONFieldsDocumented(t *testing.T) {
	b, err := json.Marshal(report{})
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	var emitted []string
	for k := range fields {
		emitted = append(emitted, k)
	}
	slices.Sort(emitted)
	if len(emitted) != reflect.TypeOf(report{}).NumField() {
		t.Fatalf("report has fields without a JSON name: %v", emitted)
	}

	root, err := testserver.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "go", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	// Rows of the JSON table: | `field` | type | meaning |
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z0-9_]+)` \\|").FindAllStringSubmatch(string(readme), -1) {
		documented = append(documented, m[1])
	}
	slices.Sort(documented)
	if !slices.Equal(documented, emitted) {
		t.Fatalf("go/README.md documents %v,\nloadgen -json emits %v", documented, emitted)
	}
}

func TestRunOverMutualTLS(t *testing.T) {
	pki := testserver.NewPKI(t)
	srv := testserver.Start(t, pki.ServerArgs(true)...)
	tlsConfig, err := client.TLSConfig(pki.CA, pki.ClientCert, pki.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config{Addr: srv.Addr, Mode: "stream", Pipelined: true, Window: 8, Batch: 100, Series: 4, Streams: 1,
		Duration: 200 * time.Millisecond, Seed: 1, Timeout: 10 * time.Second, TLS: tlsConfig}
	if rep := run(context.Background(), cfg); rep.Errors != 0 || rep.Batches < 1 {
		t.Fatalf("over mTLS: %d batches, %d errors, first: %s", rep.Batches, rep.Errors, rep.Error)
	}
	cfg.TLS = nil
	if rep := run(context.Background(), cfg); rep.Errors == 0 {
		t.Fatal("a plaintext load generator was answered by an mTLS server")
	}
}

// TestPacedNeverExceedsItsRate: -rate spreads each stream's batches over time: the batches answered in the
// measured time are at most what the rate allows (plus one a stream), each over the stream's own names.
func TestPacedNeverExceedsItsRate(t *testing.T) {
	srv := testserver.Shared(t)
	cfg := config{Addr: srv.Addr, Mode: "stream", Rate: 4000, Window: 8, Batch: 100, Series: 1000, Streams: 2,
		Sessions: true, Duration: 500 * time.Millisecond, Warmup: 100 * time.Millisecond, Seed: 1, Timeout: 10 * time.Second}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	rep := run(context.Background(), cfg)
	if rep.Errors != 0 {
		t.Fatalf("errors: %d, first: %s", rep.Errors, rep.Error)
	}
	allowed := int64(cfg.Rate*rep.DurationS)/int64(cfg.Batch) + int64(cfg.Streams)
	if rep.Batches < 1 || rep.Batches > allowed || rep.Rate != cfg.Rate {
		t.Errorf("%d batches in %.2f s at %v metrics/s: want 1..%d", rep.Batches, rep.DurationS, cfg.Rate, allowed)
	}
	if !(0 < rep.P50Ms && rep.P50Ms <= rep.P99Ms && rep.P99Ms <= rep.P999Ms && rep.P999Ms <= rep.MaxMs) {
		t.Errorf("latencies out of order: %+v", rep)
	}
	frames, err := encodePaced(cfg)
	if err != nil || len(frames) != 2 || len(frames[1]) != 5 {
		t.Fatalf("paced frames: %v, %d streams", err, len(frames))
	}
	if bad := (config{Mode: "detect", Rate: 10, Batch: 1, Series: 1, Streams: 1, Duration: time.Second}).validate(); bad == nil {
		t.Error("-rate with -mode detect was accepted")
	}
}
