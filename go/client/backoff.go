// Exponential backoff with jitter between reconnection attempts of a Stream.

package client

import (
	"math/rand/v2"
	"time"
)

// Backoff is the delay before reconnection attempt n (0-based): min(Max, Base * Factor^n), spread by
// +-Jitter (a fraction) so that many collectors cut off by the same blip do not reconnect in lockstep.
// The zero value means DefaultBackoff.
type Backoff struct {
	Base   time.Duration // delay before the first retry
	Max    time.Duration // the delay grows to at most this (before jitter)
	Factor float64       // growth per attempt, >= 1
	Jitter float64       // the delay is multiplied by a uniform factor in [1-Jitter, 1+Jitter], 0 <= Jitter <= 1
}

// DefaultBackoff follows gRPC's connection backoff (base 1s there; shorter here because a session's stream
// is usually back within a second once the server has noticed the old one is gone).
var DefaultBackoff = Backoff{Base: 100 * time.Millisecond, Max: 5 * time.Second, Factor: 1.6, Jitter: 0.2}

// Delay is the wait before attempt n (n = 0 is the first retry).
func (b Backoff) Delay(n int) time.Duration {
	if b == (Backoff{}) {
		b = DefaultBackoff
	}
	d := float64(b.Base)
	for i := 0; i < n && d < float64(b.Max); i++ {
		d *= b.Factor
	}
	d = min(d, float64(b.Max))
	if b.Jitter > 0 {
		d *= 1 + b.Jitter*(2*rand.Float64()-1)
	}
	return time.Duration(d)
}
