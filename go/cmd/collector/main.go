// Command collector streams this host's metrics from /proc (or synthetic series with injected spikes) to
// streamer's DetectStream and prints every outlier the server flags.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/internal/tlsflag"
	"github.com/streamer-dev/streamer/go/pb"
)

var (
	addr          = flag.String("addr", "localhost:9999", "streamer server address host:port")
	session       = flag.String("session", "", "session whose baselines survive reconnections and restarts (default collector-HOSTNAME, or synthetic-HOSTNAME)")
	interval      = flag.Duration("interval", 0, "time between batches (default 1s from /proc, 100ms with -synthetic)")
	synthetic     = flag.Bool("synthetic", false, "send synthetic series with injected spikes instead of /proc metrics")
	seed          = flag.Uint64("seed", 1, "synthetic: random seed")
	spikeEvery    = flag.Int("spike-every", 25, "synthetic: inject a spike into one series every N batches (0: never)")
	count         = flag.Int("count", 0, "stop after this many batches (0: until SIGINT/SIGTERM)")
	procRoot      = flag.String("proc", "/proc", "where procfs is mounted (a container may see the host's elsewhere)")
	threshold     = flag.Float64("threshold", 0, "k: flag |x - mean| > k * stddev (0: the server's default)")
	warmup        = flag.Uint("warmup", 0, "values a series must have seen before it can be flagged (0: the server's default)")
	mode          = flag.String("mode", "", "running statistics: cumulative or exponential (empty: the server's default)")
	alpha         = flag.Float64("alpha", 0, "exponential mode: weight of the newest value (0: the server's default)")
	exclude       = flag.Bool("exclude-outliers", false, "flagged values do not update their series' baseline")
	answerTimeout = flag.Duration("answer-timeout", 10*time.Second, "a batch not answered within this is taken as a lost connection")
	drain         = flag.Duration("drain", 5*time.Second, "on SIGINT/SIGTERM, how long to wait for the answers still due")
	tlsFlags      = tlsflag.Register(flag.CommandLine)
)

// config is what run needs, taken from the flags (tests build it directly).
type config struct {
	addr       string
	session    string
	interval   time.Duration
	synthetic  bool
	seed       uint64
	spikeEvery int
	count      int
	procRoot   string
	options    *pb.DetectOptions
	answer     time.Duration
	drain      time.Duration
	tls        *tls.Config // nil: plaintext
}

func main() {
	flag.Parse()
	cfg, err := configFromFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "collector:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "collector:", err)
		os.Exit(1)
	}
}

func configFromFlags() (config, error) {
	cfg := config{addr: *addr, session: *session, interval: *interval, synthetic: *synthetic, seed: *seed,
		spikeEvery: *spikeEvery, count: *count, procRoot: *procRoot, answer: *answerTimeout, drain: *drain}
	if cfg.interval == 0 {
		cfg.interval = time.Second
		if cfg.synthetic {
			cfg.interval = 100 * time.Millisecond
		}
	}
	if cfg.interval < 0 {
		return cfg, fmt.Errorf("-interval must be > 0, got %v", cfg.interval)
	}
	if cfg.session == "" {
		host, _ := os.Hostname()
		prefix := "collector-"
		if cfg.synthetic {
			prefix = "synthetic-"
		}
		cfg.session = prefix + host
	}
	opts := &pb.DetectOptions{Threshold: *threshold, Warmup: uint32(*warmup), Alpha: *alpha, ExcludeOutliers: *exclude}
	switch strings.ToLower(*mode) {
	case "":
	case "cumulative":
		opts.Mode = pb.Mode_MODE_CUMULATIVE
	case "exponential":
		opts.Mode = pb.Mode_MODE_EXPONENTIAL
	default:
		return cfg, fmt.Errorf("-mode must be cumulative or exponential, got %q", *mode)
	}
	cfg.options = opts
	tlsConfig, err := tlsFlags.Config()
	if err != nil {
		return cfg, err
	}
	cfg.tls = tlsConfig
	return cfg, nil
}

// source makes the next batch; injected lists the positions of values known to be spikes (synthetic only).
type source interface {
	next(now time.Time) (batch []*pb.Metric, injected []int, err error)
}

// run streams batches every cfg.interval until ctx ends or cfg.count batches are sent, and prints each
// outlier to out as it is answered; reconnections and warnings go to logw.
func run(ctx context.Context, cfg config, out, logw io.Writer) error {
	var src source = &procSource{root: cfg.procRoot}
	what := "/proc metrics"
	if cfg.synthetic {
		src = newSyntheticSource(cfg.seed, cfg.spikeEvery)
		what = fmt.Sprintf("synthetic series (seed %d, a spike every %d batches)", cfg.seed, cfg.spikeEvery)
	}
	var opts []client.Option
	if cfg.tls != nil {
		opts = append(opts, client.WithTLS(cfg.tls))
	}
	c, err := client.New(cfg.addr, opts...)
	if err != nil {
		return err
	}
	defer c.Close()

	// The stream outlives ctx by up to cfg.drain, so that answers already due are still printed.
	streamCtx, cancelStream := context.WithCancel(context.Background())
	defer cancelStream()
	// Each sample of the source is one Add: the Batcher sends it after its linger, together with any other
	// samples added meanwhile, and hands back the outliers among its own metrics (indices within the sample).
	b := c.NewBatcher(streamCtx, client.BatcherConfig{Stream: client.StreamConfig{
		Session: cfg.session, Options: cfg.options, AnswerTimeout: cfg.answer, MaxRetries: -1,
		OnRetry: func(n int, delay time.Duration, err error) {
			fmt.Fprintf(logw, "collector: reconnecting in %v (attempt %d): %v\n", delay.Round(time.Millisecond), n+1, err)
		},
	}})
	fmt.Fprintf(logw, "collector: streaming %s to %s every %v as session %q\n", what, cfg.addr, cfg.interval, cfg.session)
	print := func(seq uint64, spikes []int) func([]*pb.Outlier, error) {
		return func(outliers []*pb.Outlier, err error) { // on the Batcher's goroutine, in the order of the Adds
			for _, o := range outliers {
				note := ""
				for _, i := range spikes {
					if int32(i) == o.GetIndex() {
						note = "  [injected spike]"
					}
				}
				fmt.Fprintf(out, "%s batch %d  %-26s value=%-12.6g mean=%-12.6g stddev=%-10.4g z=%+.2f%s\n",
					time.Now().Format(time.RFC3339), seq, o.GetName(), o.GetValue(), o.GetMean(), o.GetStddev(),
					o.GetZscore(), note)
			}
		}
	}
	stopDrain := context.AfterFunc(ctx, func() { time.AfterFunc(cfg.drain, cancelStream) })
	defer stopDrain()
	sendErr := produce(ctx, cfg, src, b, print)
	err = b.Close() // every sample added is answered (or the drain time runs out)
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil // interrupted, and the drain time ran out: not a failure
	}
	if sendErr != nil && err == nil {
		err = sendErr
	}
	return err
}

// produce adds a sample from src every cfg.interval until ctx ends (not an error) or cfg.count samples are
// added; print(seq, spikes) is what is done with sample seq's outliers (spikes: its injected ones).
func produce(ctx context.Context, cfg config, src source, b *client.Batcher,
	print func(seq uint64, spikes []int) func([]*pb.Outlier, error)) error {
	tick := time.NewTicker(cfg.interval)
	defer tick.Stop()
	for seq := uint64(0); cfg.count == 0 || seq < uint64(cfg.count); seq++ {
		batch, spikes, err := src.next(time.Now())
		if err != nil {
			return err
		}
		if err := b.AddFunc(batch, print(seq, spikes)); err != nil {
			return err
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}
