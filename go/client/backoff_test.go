// Unit tests of the backoff schedule (no server).

package client

import (
	"testing"
	"time"
)

func TestBackoffGrowsToMaxWithinJitter(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: 2 * time.Second, Factor: 2, Jitter: 0.2}
	want := []time.Duration{100, 200, 400, 800, 1600, 2000, 2000, 2000}
	for n, w := range want {
		w *= time.Millisecond
		for range 50 {
			d := b.Delay(n)
			if lo, hi := time.Duration(0.8*float64(w)), time.Duration(1.2*float64(w)); d < lo || d > hi {
				t.Fatalf("Delay(%d) = %v, want within [%v, %v]", n, d, lo, hi)
			}
		}
	}
	if d := b.Delay(1000); d > time.Duration(1.2*float64(b.Max)) {
		t.Fatalf("Delay(1000) = %v overflows past Max %v", d, b.Max)
	}
}

func TestBackoffJitterSpreads(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 20 {
		seen[DefaultBackoff.Delay(3)] = true
	}
	if len(seen) < 2 {
		t.Fatalf("20 delays with jitter %v were all equal: %v", DefaultBackoff.Jitter, seen)
	}
}

func TestZeroBackoffIsDefault(t *testing.T) {
	if d := (Backoff{}).Delay(0); d < 80*time.Millisecond || d > 120*time.Millisecond {
		t.Fatalf("zero Backoff Delay(0) = %v, want DefaultBackoff's 100ms +-20%%", d)
	}
}
