// Tests of the /proc parsers (fixtures and the live host) and of a synthetic run against the real server.

package main

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/internal/testserver"
	"github.com/streamer-dev/streamer/go/pb"
)

func TestMain(m *testing.M) { testserver.Main(m) }

func TestParseCPU(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice: guest is inside user, not added again.
	prev, err := parseCPU(strings.NewReader("cpu  100 0 50 800 50 0 0 0 30 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"))
	if err != nil {
		t.Fatal(err)
	}
	if prev != (cpuTimes{busy: 150, total: 1000}) {
		t.Fatalf("parseCPU = %+v, want busy 150 total 1000", prev)
	}
	cur, err := parseCPU(strings.NewReader("cpu  160 0 70 900 70 0 0 0 40 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if u, ok := utilisation(prev, cur); !ok || u != 40 { // (80 busy) / (200 elapsed)
		t.Fatalf("utilisation = %v %v, want 40 true", u, ok)
	}
	if _, ok := utilisation(cur, prev); ok {
		t.Fatal("utilisation of counters that went backwards is reported")
	}
	for _, bad := range []string{"", "intr 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\n", "cpu 1 2 3\n"} {
		if _, err := parseCPU(strings.NewReader(bad)); err == nil {
			t.Errorf("parseCPU(%q) gave no error", bad)
		}
	}
}

func TestParseMemUsed(t *testing.T) {
	meminfo := "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\nBuffers: 1 kB\n"
	used, err := parseMemUsed(strings.NewReader(meminfo))
	if err != nil {
		t.Fatal(err)
	}
	if want := float64(4000000 * 1024); used != want {
		t.Fatalf("parseMemUsed = %v, want %v", used, want)
	}
	if _, err := parseMemUsed(strings.NewReader("MemTotal: 1 kB\nMemFree: 1 kB\n")); err == nil {
		t.Fatal("parseMemUsed without MemAvailable gave no error")
	}
}

func TestParseLoad1(t *testing.T) {
	load, err := parseLoad1(strings.NewReader("0.52 0.58 0.59 1/467 12345\n"))
	if err != nil || load != 0.52 {
		t.Fatalf("parseLoad1 = %v %v, want 0.52", load, err)
	}
	if _, err := parseLoad1(strings.NewReader("")); err == nil {
		t.Fatal("parseLoad1 of nothing gave no error")
	}
}

// TestProcSourceOnThisHost reads the real /proc twice: the second batch has all three series, in range.
func TestProcSourceOnThisHost(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc metrics are Linux-only")
	}
	src := &procSource{root: "/proc"}
	first, _, err := src.next(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 2 || first[0].GetName() != memSeries || first[1].GetName() != loadSeries {
		t.Fatalf("first batch %v, want memory and load only (CPU needs two samples)", first)
	}
	time.Sleep(50 * time.Millisecond) // at least a few jiffies, so the CPU counters move
	second, _, err := src.next(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]float64{}
	for _, m := range second {
		byName[m.GetName()] = m.GetValue()
		if m.GetTime() == nil {
			t.Errorf("%s has no time", m.GetName())
		}
	}
	if u, ok := byName[cpuSeries]; !ok || u < 0 || u > 100 {
		t.Errorf("%s = %v (present %v), want within [0, 100]", cpuSeries, u, ok)
	}
	if m := byName[memSeries]; m <= 0 {
		t.Errorf("%s = %v, want > 0", memSeries, m)
	}
	if l, ok := byName[loadSeries]; !ok || l < 0 {
		t.Errorf("%s = %v, want >= 0", loadSeries, l)
	}
}

func TestSyntheticSpikes(t *testing.T) {
	src := newSyntheticSource(1, 4)
	for n := 0; n < 13; n++ {
		batch, injected, _ := src.next(time.Now())
		if len(batch) != len(syntheticSet) {
			t.Fatalf("batch %d has %d values", n, len(batch))
		}
		wantSpike := n > 0 && n%4 == 0
		if wantSpike != (len(injected) == 1) {
			t.Fatalf("batch %d: injected %v", n, injected)
		}
		for i, m := range batch {
			ser := syntheticSet[i]
			far := m.GetValue() > ser.base+ser.half || m.GetValue() < ser.base-ser.half
			if far != (len(injected) == 1 && injected[0] == i) {
				t.Errorf("batch %d series %s value %v: outside the noise band %v, injected %v", n, ser.name, m.GetValue(), far, injected)
			}
		}
	}
}

// TestSyntheticRunFlagsEveryInjectedSpike runs the collector against the real server: each injected spike is
// printed as an outlier, and the run ends cleanly after -count batches.
func TestSyntheticRunFlagsEveryInjectedSpike(t *testing.T) {
	srv := testserver.Shared(t)
	cfg := config{addr: srv.Addr, session: fmt.Sprintf("collector-test-%d", time.Now().UnixNano()),
		interval: 2 * time.Millisecond, synthetic: true, seed: 7, spikeEvery: 20, count: 100,
		options: &pb.DetectOptions{}, answer: 10 * time.Second, drain: time.Second}
	var out, logs bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, cfg, &out, &logs); err != nil {
		t.Fatalf("run: %v\nlog:\n%s", err, logs.String())
	}
	t.Logf("output:\n%s", out.String())
	for _, seq := range []int{20, 40, 60, 80} {
		want := fmt.Sprintf(" batch %d  ", seq)
		found := false
		for _, line := range strings.Split(out.String(), "\n") {
			if strings.Contains(line, want) && strings.HasSuffix(line, "[injected spike]") {
				found = true
			}
		}
		if !found {
			t.Errorf("the spike injected in batch %d was not printed as an outlier", seq)
		}
	}
}

// TestSyntheticRunOverMutualTLS: the collector's -tls-ca/-tls-cert/-tls-key path against an mTLS server.
func TestSyntheticRunOverMutualTLS(t *testing.T) {
	pki := testserver.NewPKI(t)
	srv := testserver.Start(t, pki.ServerArgs(true)...)
	tlsConfig, err := client.TLSConfig(pki.CA, pki.ClientCert, pki.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config{addr: srv.Addr, session: "collector-tls", interval: 2 * time.Millisecond, synthetic: true, seed: 7,
		spikeEvery: 20, count: 30, options: &pb.DetectOptions{}, answer: 10 * time.Second, drain: time.Second,
		tls: tlsConfig}
	var out, logs bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, cfg, &out, &logs); err != nil {
		t.Fatalf("run: %v\nlog:\n%s", err, logs.String())
	}
	if !strings.Contains(out.String(), " batch 20  ") {
		t.Errorf("the spike injected in batch 20 was not printed over mTLS:\n%s", out.String())
	}
}
