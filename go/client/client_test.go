// Go <-> Python tests: the Go client against the real streamer server, expectations computed here in Go.

package client_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/internal/testserver"
	"github.com/streamer-dev/streamer/go/pb"
)

func TestMain(m *testing.M) { testserver.Main(m) }

func newClient(t *testing.T, addr string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// sessionName is unique per test and run: the shared server keeps sessions for --session-ttl.
func sessionName(t *testing.T) string {
	return fmt.Sprintf("go-%s-%d", t.Name(), time.Now().UnixNano())
}

// closeEnough compares z-scores and statistics: the server's kernels may order float operations differently.
func closeEnough(got, want float64) bool {
	if math.IsInf(want, 0) || math.IsNaN(want) {
		return got == want || math.IsNaN(got) && math.IsNaN(want)
	}
	return math.Abs(got-want) <= 1e-9*math.Max(1, math.Abs(want))
}

// TestDetectClassicSample: 1000 "CPU" values uniform in [0, 40) with three spikes -> exactly the spikes, each
// with the batch's population mean and standard deviation (two-pass, computed here).
func TestDetectClassicSample(t *testing.T) {
	srv := testserver.Shared(t)
	seed := uint64(1962)
	rng := rand.New(rand.NewPCG(seed, 0))
	values := make([]float64, 1000)
	for i := range values {
		values[i] = rng.Float64() * 40
	}
	values[7], values[113], values[835] = 97.3, 92.1, 93.2
	now := time.Now()
	metrics := make([]*pb.Metric, len(values))
	for i, v := range values {
		metrics[i] = client.Metric("CPU", v, now.Add(time.Duration(i)*time.Second))
	}

	c := newClient(t, srv.Addr)
	resp, err := c.Detect(testContext(t), metrics, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int32{7, 113, 835}; !slices.Equal(resp.GetIndices(), want) {
		t.Fatalf("seed %d: indices %v, want %v", seed, resp.GetIndices(), want)
	}

	var mean, ss float64
	for _, v := range values {
		mean += v
	}
	mean /= float64(len(values))
	for _, v := range values {
		ss += (v - mean) * (v - mean)
	}
	std := math.Sqrt(ss / float64(len(values)))
	for i, o := range resp.GetOutliers() {
		x := values[resp.Indices[i]]
		if o.GetIndex() != resp.Indices[i] || o.GetName() != "CPU" || o.GetValue() != x ||
			!closeEnough(o.GetMean(), mean) || !closeEnough(o.GetStddev(), std) || !closeEnough(o.GetZscore(), (x-mean)/std) {
			t.Errorf("outlier %d = %v, want index %d value %v mean %v stddev %v z %v",
				i, o, resp.Indices[i], x, mean, std, (x-mean)/std)
		}
	}
}

// series is the naive reference of one series' running state, kept apart from the server's kernels:
// Welford (1962) for MODE_CUMULATIVE, Finch (2009) for MODE_EXPONENTIAL (the n-th value with weight
// max(alpha, 1/n)).
type series struct {
	n           int
	mean, m2    float64 // cumulative: Welford's mean and sum of squared deviations
	emean, var_ float64
	excluded    int // excluded values in a row since the last value judged normal
}

type reference struct {
	threshold   float64
	warmup      int
	exponential bool
	alpha       float64
	exclude     bool
	series      map[string]*series
}

func (r *reference) stats(s *series) (mean, std float64) {
	if r.exponential {
		return s.emean, math.Sqrt(s.var_)
	}
	return s.mean, math.Sqrt(s.m2 / float64(s.n))
}

func (r *reference) add(s *series, x float64) {
	s.n++
	if r.exponential {
		if s.n == 1 {
			s.emean, s.var_ = x, 0
			return
		}
		w := max(r.alpha, 1/float64(s.n))
		diff := x - s.emean
		incr := w * diff
		s.emean += incr
		s.var_ = (1 - w) * (s.var_ + diff*incr)
		return
	}
	d := x - s.mean
	s.mean += d / float64(s.n)
	s.m2 += d * (x - s.mean)
}

// batch scores one request the way issue 3 says: each value against its series before the value is added.
func (r *reference) batch(metrics []*pb.Metric) []*pb.Outlier {
	var out []*pb.Outlier
	for i, m := range metrics {
		x := m.GetValue()
		if math.IsNaN(x) || math.IsInf(x, 0) {
			continue
		}
		s := r.series[m.GetName()]
		if s == nil {
			s = &series{}
			r.series[m.GetName()] = s
		}
		flagged := false
		std := 0.0
		if s.n >= max(r.warmup, 2) {
			var mean float64
			mean, std = r.stats(s)
			dev := x - mean
			if std == 0 {
				flagged = dev != 0
			} else {
				flagged = math.Abs(dev) > r.threshold*std
			}
			if flagged {
				out = append(out, &pb.Outlier{Index: int32(i), Name: m.GetName(), Value: x, Mean: mean, Stddev: std,
					Zscore: dev / std}) // dev / 0 is the signed infinity the contract asks for
			}
		}
		// exclude_outliers: never while the stddev is 0, and not after exclude_limit (the server's default:
		// the warmup) excluded values in a row until a value is judged normal again
		if flagged && r.exclude && std > 0 && s.excluded < max(r.warmup, 2) {
			s.excluded++
			continue
		}
		if !flagged {
			s.excluded = 0
		}
		r.add(s, x)
	}
	return out
}

// spikyBatches: three interleaved series (uniform noise; one on an offset of 1e9; one constant), with
// spikes, NaN and +Inf at fixed batches. Uniform noise never strays more than sqrt(3) stddevs, so once a
// series has settled only the injected values stand out.
func spikyBatches(seed uint64) [][]*pb.Metric {
	rng := rand.New(rand.NewPCG(seed, 7))
	var batches [][]*pb.Metric
	for b := 0; b < 60; b++ {
		var batch []*pb.Metric
		for k := 0; k < 1+b%3; k++ {
			cpu := 10 + 10*rng.Float64()
			mem := 1e9 + rng.Float64()
			switch {
			case b == 30 && k == 0:
				cpu = 95
			case b == 35 && k == 1:
				cpu = math.NaN()
			case b == 36 && k == 0:
				cpu = math.Inf(1)
			case b == 45 && k == 1:
				mem = 1e9 - 40
			}
			batch = append(batch, &pb.Metric{Name: "cpu", Value: cpu}, &pb.Metric{Name: "mem", Value: mem})
		}
		constant := 5.0
		if b == 50 {
			constant = 6
		}
		batch = append(batch, &pb.Metric{Name: "const", Value: constant})
		if b%2 == 1 {
			batch[0], batch[len(batch)-1] = batch[len(batch)-1], batch[0]
		}
		batches = append(batches, batch)
	}
	return batches
}

// runStream sends every batch through a client.Stream and returns the answers in Seq order.
func runStream(t *testing.T, c *client.Client, cfg client.StreamConfig, batches [][]*pb.Metric) []*pb.OutliersResponse {
	t.Helper()
	ctx := testContext(t)
	st := c.OpenStream(ctx, cfg)
	sendErr := make(chan error, 1)
	go func() {
		defer st.CloseSend()
		for _, b := range batches {
			if err := st.Send(ctx, b); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	var got []*pb.OutliersResponse
	for r := range st.Results() {
		if r.Seq != uint64(len(got)) {
			t.Fatalf("answer with seq %d, want %d", r.Seq, len(got))
		}
		got = append(got, r.Response)
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	return got
}

func compareOutliers(t *testing.T, label string, got, want []*pb.Outlier) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d outliers %v, want %d %v", label, len(got), got, len(want), want)
		return
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.GetIndex() != w.Index || g.GetName() != w.Name || g.GetValue() != w.Value ||
			!closeEnough(g.GetMean(), w.Mean) || !closeEnough(g.GetStddev(), w.Stddev) ||
			!closeEnough(g.GetZscore(), w.Zscore) {
			t.Errorf("%s: outlier %d = %v, want %v", label, i, g, w)
		}
	}
}

// TestStreamSpikesMatchReference: flags, statistics and z-scores of a stream equal those of the naive
// reference, in both modes and with exclude_outliers, and every answer is numbered in order.
func TestStreamSpikesMatchReference(t *testing.T) {
	srv := testserver.Shared(t)
	c := newClient(t, srv.Addr)
	const seed = 2009
	cases := []struct {
		name string
		opts *pb.DetectOptions
	}{
		{"cumulative", &pb.DetectOptions{Threshold: 3, Warmup: 5, Mode: pb.Mode_MODE_CUMULATIVE}},
		{"cumulative-exclude", &pb.DetectOptions{Threshold: 3, Warmup: 5, Mode: pb.Mode_MODE_CUMULATIVE, ExcludeOutliers: true}},
		{"exponential", &pb.DetectOptions{Threshold: 3, Warmup: 5, Mode: pb.Mode_MODE_EXPONENTIAL, Alpha: 0.1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			batches := spikyBatches(seed)
			ref := &reference{threshold: tc.opts.Threshold, warmup: int(tc.opts.Warmup), alpha: tc.opts.Alpha,
				exponential: tc.opts.Mode == pb.Mode_MODE_EXPONENTIAL, exclude: tc.opts.ExcludeOutliers,
				series: map[string]*series{}}
			got := runStream(t, c, client.StreamConfig{Options: tc.opts}, batches)
			if len(got) != len(batches) {
				t.Fatalf("%d answers for %d batches", len(got), len(batches))
			}
			flagged := 0
			for b, batch := range batches {
				want := ref.batch(batch)
				flagged += len(want)
				resp := got[b]
				if resp.GetBatch() != uint64(b) {
					t.Errorf("answer %d has batch %d", b, resp.GetBatch())
				}
				wantIdx := make([]int32, len(want))
				for i, o := range want {
					wantIdx[i] = o.Index
				}
				if !slices.Equal(resp.GetIndices(), wantIdx) && !(len(wantIdx) == 0 && len(resp.GetIndices()) == 0) {
					t.Errorf("seed %d batch %d: indices %v, want %v", seed, b, resp.GetIndices(), wantIdx)
					continue
				}
				compareOutliers(t, fmt.Sprintf("seed %d batch %d", seed, b), resp.GetOutliers(), want)
			}
			// The injected spikes must be among the flags, or the comparison above proved little.
			if flagged < 3 {
				t.Errorf("reference flagged only %d values; the injected spikes should be among them", flagged)
			}
		})
	}
}

// noise is n one-value batches of series "x", uniform in [0, 10).
func noise(rng *rand.Rand, n int) [][]*pb.Metric {
	out := make([][]*pb.Metric, n)
	for i := range out {
		out[i] = []*pb.Metric{{Name: "x", Value: 10 * rng.Float64()}}
	}
	return out
}

// sendAndWait sends each batch and waits for its answer, so that the server has applied exactly these.
func sendAndWait(t *testing.T, ctx context.Context, st *client.Stream, batches [][]*pb.Metric) []*pb.OutliersResponse {
	t.Helper()
	var out []*pb.OutliersResponse
	for _, b := range batches {
		if err := st.Send(ctx, b); err != nil {
			t.Fatal(err)
		}
		r, ok := <-st.Results()
		if !ok {
			t.Fatalf("stream ended: %v", st.Err())
		}
		out = append(out, r.Response)
	}
	return out
}

// TestSessionResumeAfterDroppedConnection: a client warms a session up, drops its connection without
// closing the stream, and a new connection continues the session: a spike in its first batch is flagged at
// once, against the baseline of the earlier values; a fresh session given the same batch flags nothing.
func TestSessionResumeAfterDroppedConnection(t *testing.T) {
	srv := testserver.Shared(t)
	ctx := testContext(t)
	session := sessionName(t)
	rng := rand.New(rand.NewPCG(3, 3))
	warm := noise(rng, 20)
	ref := &reference{threshold: 2, warmup: 10, series: map[string]*series{}}
	for _, b := range warm {
		ref.batch(b)
	}

	c1, err := client.New(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	st1 := c1.OpenStream(ctx, client.StreamConfig{Session: session})
	sendAndWait(t, ctx, st1, warm)
	c1.Close() // the connection goes; the stream was never half-closed
	for range st1.Results() {
	}
	if code := status.Code(st1.Err()); code != codes.Canceled {
		t.Fatalf("first stream after Close: %v, want Canceled (and no retry on a closed client)", st1.Err())
	}

	spike := []*pb.Metric{{Name: "x", Value: 100}}
	want := ref.batch(spike)
	if len(want) != 1 {
		t.Fatalf("reference does not flag the spike: %v", want)
	}
	c2 := newClient(t, srv.Addr)
	// The server may still hold the session for the old stream for a moment: the Stream retries
	// ALREADY_EXISTS with backoff.
	st2 := c2.OpenStream(ctx, client.StreamConfig{Session: session, MaxRetries: -1,
		Backoff: client.Backoff{Base: 20 * time.Millisecond, Max: 500 * time.Millisecond, Factor: 2, Jitter: 0.2}})
	got := sendAndWait(t, ctx, st2, [][]*pb.Metric{spike})
	compareOutliers(t, "resumed session, first batch", got[0].GetOutliers(), want)
	st2.CloseSend()
	if err := st2.Err(); err != nil {
		t.Fatal(err)
	}

	fresh := c2.OpenStream(ctx, client.StreamConfig{Session: session + "-fresh"})
	if got := sendAndWait(t, ctx, fresh, [][]*pb.Metric{spike}); len(got[0].GetIndices()) != 0 {
		t.Errorf("a fresh session flagged its first value: %v", got[0])
	}
	fresh.CloseSend()
	if err := fresh.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestStreamReconnectsAfterBlip: the network between client and server fails (the client's connection is
// reset; the server notices only later). The Stream reconnects by itself, retrying ALREADY_EXISTS until the
// server has released the session, and the next spike is judged against the baseline from before the blip.
func TestStreamReconnectsAfterBlip(t *testing.T) {
	srv := testserver.Shared(t)
	proxy := testserver.NewProxy(t, srv.Addr)
	ctx := testContext(t)
	session := sessionName(t)
	rng := rand.New(rand.NewPCG(4, 4))
	warm := noise(rng, 15)
	ref := &reference{threshold: 2, warmup: 10, series: map[string]*series{}}
	for _, b := range warm {
		ref.batch(b)
	}

	c := newClient(t, proxy.Addr)
	st, retries := resumingStream(ctx, c, session)
	sendAndWait(t, ctx, st, warm)
	proxy.Cut(300 * time.Millisecond)

	spikeAfterReconnect(t, ctx, st, ref, []*pb.Metric{{Name: "x", Value: -80}}, "the blip")
	t.Logf("retries after the cut (codes): %v", retries())
}

// spikeAfterReconnect sends spike on st, which must have reconnected since its last answer, checks that it is
// judged as ref (the Go reference of the baselines) says, then closes st and checks it ended cleanly.
func spikeAfterReconnect(t *testing.T, ctx context.Context, st *client.Stream, ref *reference, spike []*pb.Metric,
	after string) {
	t.Helper()
	want := ref.batch(spike)
	if len(want) != 1 {
		t.Fatalf("reference does not flag the spike: %v", want)
	}
	got := sendAndWait(t, ctx, st, [][]*pb.Metric{spike})
	compareOutliers(t, "first batch after "+after, got[0].GetOutliers(), want)
	st.CloseSend()
	for r := range st.Results() {
		t.Errorf("unexpected extra answer %v", r)
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if st.Reconnects() < 1 {
		t.Errorf("no reconnection recorded after %s", after)
	}
}

// resumingStream opens a Stream on session that retries without limit, with a short backoff, and returns it
// with a function that lists the status code of each retry so far.
func resumingStream(ctx context.Context, c *client.Client, session string) (*client.Stream, func() []string) {
	var mu sync.Mutex
	var retries []string
	st := c.OpenStream(ctx, client.StreamConfig{
		Session: session, MaxRetries: -1,
		Backoff: client.Backoff{Base: 20 * time.Millisecond, Max: 500 * time.Millisecond, Factor: 2, Jitter: 0.2},
		OnRetry: func(n int, delay time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			retries = append(retries, status.Code(err).String())
		},
	})
	return st, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(retries)
	}
}

// TestLongNameIsInvalidArgument: a name of 1024 bytes is accepted, 1025 bytes is INVALID_ARGUMENT, in Detect
// and in a stream (which the server then ends; earlier batches were answered).
func TestLongNameIsInvalidArgument(t *testing.T) {
	srv := testserver.Shared(t)
	ctx := testContext(t)
	c := newClient(t, srv.Addr)
	ok := strings.Repeat("é", 512) // 1024 bytes of UTF-8
	long := ok + "x"

	if _, err := c.Detect(ctx, []*pb.Metric{{Name: ok, Value: 1}}, nil); err != nil {
		t.Fatalf("1024-byte name: %v", err)
	}
	_, err := c.Detect(ctx, []*pb.Metric{{Name: "a", Value: 1}, {Name: long, Value: 2}}, nil)
	if code := status.Code(err); code != codes.InvalidArgument {
		t.Fatalf("Detect with a 1025-byte name: %v, want InvalidArgument", err)
	}
	t.Logf("Detect: %v", err)

	st := c.OpenStream(ctx, client.StreamConfig{})
	sendAndWait(t, ctx, st, [][]*pb.Metric{{{Name: ok, Value: 1}}})
	if err := st.Send(ctx, []*pb.Metric{{Name: "a", Value: 1}, {Name: long, Value: 2}}); err != nil {
		t.Fatal(err)
	}
	for r := range st.Results() {
		t.Errorf("answer to a batch with a 1025-byte name: %v", r)
	}
	if code := status.Code(st.Err()); code != codes.InvalidArgument {
		t.Fatalf("stream with a 1025-byte name: %v, want InvalidArgument", st.Err())
	}
	t.Logf("DetectStream: %v", st.Err())
}

// TestSecondStreamOnOpenSessionAlreadyExists: while one stream holds a session, another stream naming it gets
// ALREADY_EXISTS, raw (generated stub) and through client.Stream once its retries are spent.
func TestSecondStreamOnOpenSessionAlreadyExists(t *testing.T) {
	srv := testserver.Shared(t)
	ctx := testContext(t)
	session := sessionName(t)
	c := newClient(t, srv.Addr)
	stub := pb.NewOutliersClient(c.Conn())

	first, err := stub.DetectStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Send(&pb.OutliersRequest{Session: session, Metrics: []*pb.Metric{{Name: "x", Value: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Recv(); err != nil { // answered: the server now holds the session for this stream
		t.Fatal(err)
	}

	second, err := stub.DetectStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = second.Send(&pb.OutliersRequest{Session: session, Metrics: []*pb.Metric{{Name: "x", Value: 2}}})
	_, err = second.Recv()
	if code := status.Code(err); code != codes.AlreadyExists {
		t.Fatalf("second raw stream: %v, want AlreadyExists", err)
	}
	t.Logf("raw: %v", err)

	st := c.OpenStream(ctx, client.StreamConfig{Session: session, MaxRetries: 2,
		Backoff: client.Backoff{Base: time.Millisecond, Max: 5 * time.Millisecond, Factor: 2}})
	if err := st.Send(ctx, []*pb.Metric{{Name: "x", Value: 3}}); err != nil {
		t.Fatal(err)
	}
	for r := range st.Results() {
		t.Errorf("answer on a session held by another stream: %v", r)
	}
	if code := status.Code(st.Err()); code != codes.AlreadyExists || st.Reconnects() != 2 {
		t.Fatalf("client.Stream: %v after %d reconnects, want AlreadyExists after 2", st.Err(), st.Reconnects())
	}

	// The first stream is unaffected and still answers.
	if err := first.Send(&pb.OutliersRequest{Metrics: []*pb.Metric{{Name: "x", Value: 1}}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := first.Recv(); err != nil || resp.GetBatch() != 1 {
		t.Fatalf("first stream after the rejected second: %v, %v", resp, err)
	}
	if err := first.CloseSend(); err != nil {
		t.Fatal(err)
	}
}

// TestDetectDeadline: the client's per-call timeout becomes the call's deadline.
func TestDetectDeadline(t *testing.T) {
	srv := testserver.Shared(t)
	c := newClient(t, srv.Addr, client.WithTimeout(time.Nanosecond))
	_, err := c.Detect(context.Background(), []*pb.Metric{{Name: "x", Value: 1}}, nil)
	if code := status.Code(err); code != codes.DeadlineExceeded {
		t.Fatalf("Detect with a 1 ns timeout: %v, want DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "detect 1 metrics on "+srv.Addr) {
		t.Errorf("error does not say what was being done: %v", err)
	}
}

// TestStreamLikelihoodScoreAndCooldown: the optional DetectOptions fields reach the server from Go (pointers:
// set, even to small values), the likelihood score flags a level shift with its tail probability, and the
// cooldown keeps one flag per run of outliers.
func TestStreamLikelihoodScoreAndCooldown(t *testing.T) {
	srv := testserver.Shared(t)
	c := newClient(t, srv.Addr)
	rng := rand.New(rand.NewPCG(15, 2017))
	var batches [][]*pb.Metric
	for b := 0; b < 10; b++ {
		batch := make([]*pb.Metric, 50)
		for i := range batch {
			x := 10 + rng.NormFloat64()
			if b >= 8 {
				x += 30 // a level shift in the last 100 values
			}
			batch[i] = &pb.Metric{Name: "latency", Value: x}
		}
		batches = append(batches, batch)
	}
	threshold := 1e-3
	score := pb.Score_SCORE_LIKELIHOOD
	cooldown, learning := uint32(1), uint32(50)
	opts := &pb.DetectOptions{Score: &score, Cooldown: &cooldown, LikelihoodLearning: &learning,
		LikelihoodThreshold: &threshold}
	got := runStream(t, c, client.StreamConfig{Options: opts}, batches)
	var flagged []int
	for b, resp := range got {
		for _, o := range resp.GetOutliers() {
			flagged = append(flagged, b*50+int(o.GetIndex()))
			if p := o.GetTailProbability(); !(p > 0 && p < threshold) {
				t.Errorf("batch %d, index %d: tail probability %g, want in (0, %g)", b, o.GetIndex(), p, threshold)
			}
		}
	}
	if len(flagged) == 0 || flagged[0] < 400 {
		t.Fatalf("flagged %v, want the level shift at 400 and nothing before it", flagged)
	}
	for i := 1; i < len(flagged); i++ {
		if flagged[i] == flagged[i-1]+1 {
			t.Errorf("values %d and %d both flagged: cooldown 1 reports one value per run of outliers",
				flagged[i-1], flagged[i])
		}
	}
}
