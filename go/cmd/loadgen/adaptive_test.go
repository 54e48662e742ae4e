// The adaptive mode against the real server: producers of single metrics and of small groups, as fast as
// they can and paced; every metric answered, coalesced into messages; the server's CPU read from /proc.

package main

import (
	"testing"
	"time"

	"github.com/streamer-dev/streamer/go/internal/testserver"
)

func TestAdaptiveMode(t *testing.T) {
	srv := testserver.Shared(t)
	pid := srv.Pid()
	for _, tc := range []struct {
		name      string
		add       int
		rate      float64
		producers int
	}{{"single metrics, flat out", 1, 0, 2}, {"groups of 5, paced", 5, 2000, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config{Addr: srv.Addr, Series: 10, Streams: tc.producers, Duration: 400 * time.Millisecond,
				Warmup: 100 * time.Millisecond, Seed: 1, Timestamps: true, ServerPID: pid}
			rep := runAdaptive(cfg, tc.add, tc.rate, 5*time.Millisecond, 1000, 8)
			if rep.Error != "" {
				t.Fatal(rep.Error)
			}
			if rep.Metrics == 0 || rep.Messages == 0 || rep.MeanBatch < 1 || rep.P99Ms < rep.P50Ms || rep.P50Ms <= 0 {
				t.Fatalf("report %+v", rep)
			}
			if rep.MeanBatch > 1000 {
				t.Fatalf("mean batch %v over -max-batch 1000", rep.MeanBatch)
			}
			if tc.rate == 0 && rep.MeanBatch <= float64(tc.add) {
				t.Fatalf("flat out, %v metrics a message: nothing coalesced", rep.MeanBatch)
			}
		})
	}
	if cpu, err := cpuSeconds(pid); err != nil || cpu <= 0 {
		t.Fatalf("the server's CPU seconds: %v, %v", cpu, err)
	}
}
