// Synthetic series with injected spikes, for demonstrations and tests without a busy host.

package main

import (
	"math/rand/v2"
	"time"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/pb"
)

type syntheticSeries struct {
	name       string
	base, half float64 // values are uniform in [base-half, base+half)
}

// The noise is uniform, not normal: a uniform value never lies more than sqrt(3) standard deviations from
// its mean, so once a series has settled the default k = 2 flags only the injected spikes.
var syntheticSet = []syntheticSeries{
	{"synthetic.cpu_percent", 35, 5},
	{"synthetic.latency_ms", 120, 15},
	{"synthetic.queue_depth", 40, 4},
}

// spikeHalfWidths puts a spike 6 half-widths (about 10 standard deviations) from the series' mean.
const spikeHalfWidths = 6

// syntheticSource makes one value per series per batch and, every spikeEvery batches, replaces one series'
// value by a spike (series in turn, alternately up and down).
type syntheticSource struct {
	rng        *rand.Rand
	spikeEvery int
	n          int // batches made so far
}

func newSyntheticSource(seed uint64, spikeEvery int) *syntheticSource {
	return &syntheticSource{rng: rand.New(rand.NewPCG(seed, 0x5eed)), spikeEvery: spikeEvery}
}

func (s *syntheticSource) next(now time.Time) (batch []*pb.Metric, injected []int, err error) {
	spike := -1
	up := true
	if s.spikeEvery > 0 && s.n > 0 && s.n%s.spikeEvery == 0 {
		k := s.n / s.spikeEvery
		spike, up = k%len(syntheticSet), k%2 == 1
	}
	for i, ser := range syntheticSet {
		v := ser.base + ser.half*(2*s.rng.Float64()-1)
		if i == spike {
			if up {
				v = ser.base + spikeHalfWidths*ser.half
			} else {
				v = ser.base - spikeHalfWidths*ser.half
			}
			injected = append(injected, i)
		}
		batch = append(batch, client.Metric(ser.name, v, now))
	}
	s.n++
	return batch, injected, nil
}
