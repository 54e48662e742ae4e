package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/pb"
)

// The adaptive mode: producers add metrics one at a time (or -add at a time) through client.Batcher, which
// coalesces them into DetectStream messages; the fixed-batch modes above stay for comparisons.
var (
	adaptive = flag.Bool("adaptive", false, "producers Add metrics through client.Batcher (adaptive batching) "+
		"instead of sending fixed batches; -streams is the number of producers, sharing one Batcher")
	addSize   = flag.Int("add", 1, "-adaptive: metrics per Add")
	addRate   = flag.Float64("add-rate", 0, "-adaptive: metrics per second over all producers (0: as fast as they can)")
	linger    = flag.Duration("linger", client.DefaultLinger, "-adaptive: the Batcher's linger")
	maxBatch  = flag.Int("max-batch", client.DefaultBatchMetrics, "-adaptive: the Batcher's most metrics a message")
	sampleOne = flag.Int("sample", 64, "-adaptive: time one Add in this many (latency from Add to its answer)")
)

// adaptiveReport is the adaptive mode's JSON object (its fields are listed in go/README.md).
type adaptiveReport struct {
	Mode          string  `json:"mode"` // "adaptive"
	Addr          string  `json:"addr"`
	Producers     int     `json:"producers"`
	Add           int     `json:"add"`
	AddRate       float64 `json:"add_rate"`
	LingerMs      float64 `json:"linger_ms"`
	MaxBatch      int     `json:"max_batch"`
	Series        int     `json:"series"`
	DurationS     float64 `json:"duration_s"`
	WarmupS       float64 `json:"warmup_s"`
	Metrics       int64   `json:"metrics"`
	Outliers      int64   `json:"outliers"`
	MetricsPerS   float64 `json:"metrics_per_s"`
	Messages      int64   `json:"messages"`
	MeanBatch     float64 `json:"mean_batch"`
	P50Ms         float64 `json:"p50_ms"`
	P99Ms         float64 `json:"p99_ms"`
	MaxMs         float64 `json:"max_ms"`
	ServerCPUS    float64 `json:"server_cpu_s"`
	Error         string  `json:"error"`
	GoVersion     string  `json:"go_version"`
	GrpcGoVersion string  `json:"grpc_go_version"`
}

func adaptiveMain(cfg config) {
	rep := runAdaptive(cfg, *addSize, *addRate, *linger, *maxBatch, *sampleOne)
	if *jsonOut {
		if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
	} else {
		printAdaptive(os.Stdout, rep)
	}
	if rep.Error != "" {
		os.Exit(1)
	}
}

func runAdaptive(cfg config, add int, rate float64, lingerFor time.Duration, maxMetrics, sampleEvery int) adaptiveReport {
	rep := adaptiveReport{Mode: "adaptive", Addr: cfg.Addr, Producers: cfg.Streams, Add: add, AddRate: rate,
		LingerMs: float64(lingerFor) / float64(time.Millisecond), MaxBatch: maxMetrics, Series: cfg.Series,
		WarmupS: cfg.Warmup.Seconds(), GoVersion: runtime.Version(), GrpcGoVersion: grpc.Version}
	opts := []client.Option{client.WithMaxMessageBytes(1 << 30)}
	if cfg.TLS != nil {
		opts = append(opts, client.WithTransportCredentials(credentials.NewTLS(cfg.TLS)))
	}
	c, err := client.New(cfg.Addr, opts...)
	if err != nil {
		rep.Error = err.Error()
		return rep
	}
	defer c.Close()
	// the metrics, built once: series round robin, values normal around 50, a time on each with -timestamps
	rng := rand.New(rand.NewPCG(cfg.Seed, 0xada))
	metrics := make([]*pb.Metric, 16*max(cfg.Series, add))
	now := time.Now()
	for i := range metrics {
		var t time.Time
		if cfg.Timestamps {
			t = now.Add(time.Duration(i) * time.Millisecond)
		}
		metrics[i] = client.Metric(fmt.Sprintf("series-%05d", i%cfg.Series), 50+10*rng.NormFloat64(), t)
	}

	start := time.Now()
	measureFrom := start.Add(cfg.Warmup)
	stopAt := measureFrom.Add(cfg.Duration)
	serverCPU := watchServerCPU(cfg.ServerPID, measureFrom, stopAt)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Warmup+cfg.Duration+time.Minute)
	defer cancel()
	b := c.NewBatcher(ctx, client.BatcherConfig{MaxMetrics: maxMetrics, Linger: lingerFor})

	var counted, outliers atomic.Int64
	var failed atomic.Pointer[error]
	var mu sync.Mutex // protects lat
	var lat []time.Duration
	inWindow := func(t time.Time) bool { return !t.Before(measureFrom) && !t.After(stopAt) }
	plain := func(o []*pb.Outlier, err error) { // most Adds: counted, not timed
		if err != nil {
			failed.CompareAndSwap(nil, &err)
			return
		}
		if inWindow(time.Now()) {
			counted.Add(int64(add))
			outliers.Add(int64(len(o)))
		}
	}
	var wg sync.WaitGroup
	for p := range cfg.Streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			perProducer := rate / float64(cfg.Streams)
			for n := 0; ; n++ {
				t0 := time.Now()
				if !t0.Before(stopAt) || failed.Load() != nil {
					return
				}
				if perProducer > 0 { // paced: the n-th Add of this producer at start + n*add/rate
					if due := start.Add(time.Duration(float64(n*add) / perProducer * float64(time.Second))); due.After(t0) {
						time.Sleep(due.Sub(t0))
						t0 = time.Now()
					}
				}
				i := ((n*cfg.Streams + p) * add) % (len(metrics) - add + 1)
				done := plain
				if n%sampleEvery == 0 {
					sent := t0
					done = func(o []*pb.Outlier, err error) {
						plain(o, err)
						if end := time.Now(); err == nil && inWindow(sent) && !end.After(stopAt) {
							mu.Lock()
							lat = append(lat, end.Sub(sent))
							mu.Unlock()
						}
					}
				}
				if err := b.AddFunc(metrics[i:i+add], done); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	closeErr := b.Close()
	rep.ServerCPUS, err = serverCPU.result()
	if err != nil {
		rep.Error = fmt.Sprintf("server CPU: %v", err)
	}
	if e := failed.Load(); e != nil {
		rep.Error = (*e).Error()
	} else if closeErr != nil {
		rep.Error = closeErr.Error()
	}
	rep.DurationS = cfg.Duration.Seconds()
	rep.Metrics, rep.Outliers = counted.Load(), outliers.Load()
	rep.MetricsPerS = float64(rep.Metrics) / rep.DurationS
	var sent int64
	rep.Messages, sent = b.Sent()
	if rep.Messages > 0 {
		rep.MeanBatch = float64(sent) / float64(rep.Messages)
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		rep.P50Ms, rep.P99Ms, rep.MaxMs = ms(percentile(lat, 50)), ms(percentile(lat, 99)), ms(lat[len(lat)-1])
	}
	return rep
}

func printAdaptive(out io.Writer, r adaptiveReport) {
	fmt.Fprintf(out, "loadgen: adaptive to %s, %d producer(s) adding %d metric(s) at a time (rate %v/s, 0: "+
		"as fast as they can), linger %.3g ms, at most %d a message\n", r.Addr, r.Producers, r.Add, r.AddRate,
		r.LingerMs, r.MaxBatch)
	fmt.Fprintf(out, "  measured     %.2f s (after %.2f s warm-up)\n", r.DurationS, r.WarmupS)
	fmt.Fprintf(out, "  metrics/s    %.0f in %d messages (%.0f metrics each on average)\n", r.MetricsPerS,
		r.Messages, r.MeanBatch)
	fmt.Fprintf(out, "  latency ms   p50 %.3f  p99 %.3f  max %.3f (from Add to its answer)\n", r.P50Ms, r.P99Ms, r.MaxMs)
	if r.Error != "" {
		fmt.Fprintf(out, "  error        %s\n", r.Error)
	}
}
