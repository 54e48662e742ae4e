// Command loadgen drives a streamer server at full speed (or paced, -rate) through Detect or DetectStream and
// reports metrics/s, batches/s and latency percentiles, as text or as one JSON object (fields in go/README.md).
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/streamer-dev/streamer/go/internal/tlsflag"
	"github.com/streamer-dev/streamer/go/pb"
)

var (
	addr       = flag.String("addr", "localhost:9999", "streamer server address host:port")
	mode       = flag.String("mode", "stream", "RPC to drive: detect (unary) or stream (DetectStream)")
	batch      = flag.Int("batch", 1000, "metrics per request")
	series     = flag.Int("series", 100, "distinct metric names, spread round-robin over each batch")
	streams    = flag.Int("streams", 4, "concurrent callers, each with its own connection (and stream, in stream mode)")
	duration   = flag.Duration("duration", 10*time.Second, "measured time")
	warmup     = flag.Duration("warmup", time.Second, "time before the measurement, load on but not counted")
	pipelined  = flag.Bool("pipelined", false, "stream: send without waiting for answers (up to -window in flight)")
	window     = flag.Int("window", 64, "stream -pipelined: most batches in flight per stream")
	timestamps = flag.Bool("timestamps", false, "give every metric a time, as a collector does (larger requests)")
	seed       = flag.Uint64("seed", 1, "random seed of the values")
	timeout    = flag.Duration("timeout", 30*time.Second, "deadline of each Detect call")
	jsonOut    = flag.Bool("json", false, "print one JSON object instead of text")
	rate       = flag.Float64("rate", 0, "stream: metrics per second in all, paced (0: flat out); each stream cycles through its own -series/-streams names")
	sessions   = flag.Bool("sessions", false, "stream -rate: each stream continues its own session loadgen-<n>")
	tlsFlags   = tlsflag.Register(flag.CommandLine)
)

// config is what run needs, taken from the flags (tests build it directly).
type config struct {
	Addr       string
	Mode       string
	Batch      int
	Series     int
	Streams    int
	Duration   time.Duration
	Warmup     time.Duration
	Pipelined  bool
	Window     int
	Timestamps bool
	Seed       uint64
	Timeout    time.Duration
	TLS        *tls.Config // nil: plaintext
	ServerPID  int         // 0: the server's CPU is not read (servercpu.go)
	Rate       float64     // paced.go; 0: flat out
	Sessions   bool
}

// report is the result; its JSON form is the interface of the benchmark harness, documented in go/README.md.
type report struct {
	Mode          string  `json:"mode"`
	Pipelined     bool    `json:"pipelined"`
	Window        int     `json:"window"`
	Addr          string  `json:"addr"`
	Streams       int     `json:"streams"`
	Batch         int     `json:"batch"`
	Series        int     `json:"series"`
	RequestBytes  int     `json:"request_bytes"`
	DurationS     float64 `json:"duration_s"`
	WarmupS       float64 `json:"warmup_s"`
	Batches       int64   `json:"batches"`
	Metrics       int64   `json:"metrics"`
	Outliers      int64   `json:"outliers"`
	BatchesPerS   float64 `json:"batches_per_s"`
	MetricsPerS   float64 `json:"metrics_per_s"`
	P50Ms         float64 `json:"p50_ms"`
	P99Ms         float64 `json:"p99_ms"`
	P999Ms        float64 `json:"p999_ms"`
	Rate          float64 `json:"rate"`
	MeanMs        float64 `json:"mean_ms"`
	MaxMs         float64 `json:"max_ms"`
	ServerCPUS    float64 `json:"server_cpu_s"` // with -server-pid: its CPU seconds over duration_s
	Errors        int     `json:"errors"`
	Error         string  `json:"error"`
	GoVersion     string  `json:"go_version"`
	GrpcGoVersion string  `json:"grpc_go_version"`
}

func main() {
	flag.Parse()
	cfg := config{Addr: *addr, Mode: *mode, Batch: *batch, Series: *series, Streams: *streams, Duration: *duration,
		Warmup: *warmup, Pipelined: *pipelined, Window: *window, Timestamps: *timestamps, Seed: *seed, Timeout: *timeout,
		ServerPID: *serverPID, Rate: *rate, Sessions: *sessions}
	var err error
	if cfg.TLS, err = tlsFlags.Config(); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	if *adaptive { // adaptive.go
		adaptiveMain(cfg)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep := run(ctx, cfg)
	if *jsonOut {
		enc := json.NewEncoder(os.Stdout)
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
	} else {
		printText(os.Stdout, rep)
	}
	if rep.Errors > 0 {
		os.Exit(1)
	}
}

func (c config) validate() error {
	switch {
	case c.Mode != "detect" && c.Mode != "stream":
		return fmt.Errorf("-mode must be detect or stream, got %q", c.Mode)
	case c.Batch < 1 || c.Series < 1 || c.Streams < 1:
		return errors.New("-batch, -series and -streams must be >= 1")
	case c.Duration <= 0 || c.Warmup < 0:
		return errors.New("-duration must be > 0 and -warmup >= 0")
	case (c.Pipelined || c.Rate > 0) && c.Window < 1:
		return errors.New("-window must be >= 1")
	case c.Rate < 0 || (c.Rate > 0 && c.Mode != "stream"):
		return errors.New("-rate must be >= 0, and is for -mode stream")
	}
	return nil
}

// variants is how many different batches are pre-encoded; callers cycle through them so that the server
// does not see the very same values every time, while the load generator does no encoding while measuring.
const variants = 16

// encodeRequests builds and marshals the requests once: series "series-00000".. round-robin, values normal
// around 50 with stddev 10.
func encodeRequests(cfg config) ([][]byte, error) {
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x10ad))
	names := make([]string, cfg.Series)
	for i := range names {
		names[i] = fmt.Sprintf("series-%05d", i)
	}
	now := time.Now()
	out := make([][]byte, variants)
	for v := range out {
		req := &pb.OutliersRequest{Metrics: make([]*pb.Metric, cfg.Batch)}
		for i := range req.Metrics {
			m := &pb.Metric{Name: names[i%cfg.Series], Value: 50 + 10*rng.NormFloat64()}
			if cfg.Timestamps {
				m.Time = timestamppb.New(now.Add(time.Duration(v*cfg.Batch+i) * time.Millisecond))
			}
			req.Metrics[i] = m
		}
		b, err := proto.Marshal(req)
		if err != nil {
			return nil, err
		}
		out[v] = b
	}
	return out, nil
}

// frame is a pre-encoded request; rawCodec sends its bytes as they are.
type frame []byte

// rawCodec sends frames without marshalling and decodes answers into *pb.OutliersResponse (so that every
// answer is checked to be a valid message and its outliers are counted). Its name is "proto": on the wire
// nothing differs from the generated client's calls.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("rawCodec cannot send %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*f)}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*pb.OutliersResponse)
	if !ok {
		return fmt.Errorf("rawCodec cannot decode into %T", v)
	}
	return proto.Unmarshal(data.Materialize(), m)
}

func (rawCodec) Name() string { return "proto" }

// sample is one answered request.
type sample struct {
	sent     time.Time
	latency  time.Duration
	outliers int
}

// worker collects the samples of one caller.
type worker struct {
	samples []sample
	err     error
}

func run(ctx context.Context, cfg config) report {
	rep := report{Mode: cfg.Mode, Pipelined: cfg.Pipelined && cfg.Mode == "stream", Addr: cfg.Addr,
		Streams: cfg.Streams, Batch: cfg.Batch, Series: cfg.Series, WarmupS: cfg.Warmup.Seconds(),
		GoVersion: runtime.Version(), GrpcGoVersion: grpc.Version, Rate: cfg.Rate}
	if rep.Pipelined || cfg.Rate > 0 {
		rep.Window = cfg.Window
	}
	frames, err := encodeRequests(cfg)
	var paced [][][]byte
	if err == nil && cfg.Rate > 0 {
		paced, err = encodePaced(cfg)
	}
	if err != nil {
		rep.Errors, rep.Error = 1, err.Error()
		return rep
	}
	rep.RequestBytes = len(frames[0])
	if paced != nil {
		rep.RequestBytes = len(paced[0][0])
	}

	start := time.Now()
	measureFrom := start.Add(cfg.Warmup)
	stopAt := measureFrom.Add(cfg.Duration)
	runCtx, cancel := context.WithDeadline(ctx, stopAt)
	defer cancel()
	serverCPU := watchServerCPU(cfg.ServerPID, measureFrom, stopAt)

	workers := make([]*worker, cfg.Streams)
	var wg sync.WaitGroup
	for i := range workers {
		w := &worker{}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			if paced != nil {
				w.err = drive(runCtx, cfg, paced[i], i, w)
			} else {
				w.err = drive(runCtx, cfg, frames, i, w)
			}
		}()
	}
	wg.Wait()
	end := time.Now()
	if end.After(stopAt) {
		end = stopAt // answers drained after the end are not counted, nor is the time spent draining
	}

	if rep.ServerCPUS, err = serverCPU.result(); err != nil {
		rep.Errors, rep.Error = rep.Errors+1, fmt.Sprintf("server CPU: %v", err)
	}
	var lat []time.Duration
	var sum time.Duration
	for _, w := range workers {
		if w.err != nil {
			rep.Errors++
			if rep.Error == "" {
				rep.Error = w.err.Error()
			}
		}
		for _, s := range w.samples {
			// Counted: sent after the warm-up and answered before the end.
			if s.sent.Before(measureFrom) || s.sent.Add(s.latency).After(end) {
				continue
			}
			lat = append(lat, s.latency)
			sum += s.latency
			rep.Outliers += int64(s.outliers)
		}
	}
	measured := end.Sub(measureFrom)
	rep.DurationS = measured.Seconds()
	rep.Batches = int64(len(lat))
	rep.Metrics = rep.Batches * int64(cfg.Batch)
	if measured > 0 {
		rep.BatchesPerS = float64(rep.Batches) / measured.Seconds()
		rep.MetricsPerS = float64(rep.Metrics) / measured.Seconds()
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		rep.P50Ms = ms(percentile(lat, 50))
		rep.P99Ms = ms(percentile(lat, 99))
		rep.P999Ms = ms(percentile(lat, 99.9))
		rep.MeanMs = ms(sum / time.Duration(len(lat)))
		rep.MaxMs = ms(lat[len(lat)-1])
	}
	return rep
}

// percentile by the nearest-rank method over sorted latencies.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(float64(len(sorted))*p/100+0.999999999) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// drive runs one caller until ctx ends; an error stops it (ctx ending is not an error).
func drive(ctx context.Context, cfg config, frames [][]byte, id int, w *worker) error {
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
	}
	conn, err := grpc.NewClient(cfg.Addr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}),
			grpc.MaxCallRecvMsgSize(1<<30), grpc.MaxCallSendMsgSize(1<<30)))
	if err != nil {
		return err
	}
	defer conn.Close()
	switch {
	case cfg.Mode == "detect":
		err = driveDetect(ctx, cfg, conn, frames, id, w)
	case cfg.Rate > 0:
		err = drivePaced(ctx, cfg, conn, frames, id, w)
	case cfg.Pipelined:
		err = drivePipelined(ctx, cfg, conn, frames, id, w)
	default:
		err = driveStream(ctx, conn, frames, id, w)
	}
	return err
}

func driveDetect(ctx context.Context, cfg config, conn *grpc.ClientConn, frames [][]byte, id int, w *worker) error {
	for n := id; ctx.Err() == nil; n++ {
		f := frame(frames[n%len(frames)])
		var resp pb.OutliersResponse
		// Not derived from ctx: the call in flight at the end completes (uncounted) instead of being cancelled,
		// which could otherwise come back as the server's DEADLINE_EXCEEDED before ctx itself reports an end.
		callCtx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
		t0 := time.Now()
		err := conn.Invoke(callCtx, pb.Outliers_Detect_FullMethodName, &f, &resp)
		lat := time.Since(t0)
		cancel()
		if err != nil {
			return fmt.Errorf("Detect: %w", err)
		}
		w.samples = append(w.samples, sample{sent: t0, latency: lat, outliers: len(resp.GetIndices())})
	}
	return nil
}

var streamDesc = &grpc.StreamDesc{StreamName: "DetectStream", ServerStreams: true, ClientStreams: true}

// driveStream: one stream, each batch sent after the previous one's answer (latency = one round trip).
func driveStream(ctx context.Context, conn *grpc.ClientConn, frames [][]byte, id int, w *worker) error {
	// Not bound to ctx: at the end the stream is half-closed and ends normally, not cancelled.
	streamCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := conn.NewStream(streamCtx, streamDesc, pb.Outliers_DetectStream_FullMethodName)
	if err != nil {
		return fmt.Errorf("open DetectStream: %w", err)
	}
	for n := id; ctx.Err() == nil; n++ {
		f := frame(frames[n%len(frames)])
		var resp pb.OutliersResponse
		t0 := time.Now()
		if err := st.SendMsg(&f); err != nil {
			_, err = recvErr(st)
			return fmt.Errorf("DetectStream send: %w", err)
		}
		if err := st.RecvMsg(&resp); err != nil {
			return fmt.Errorf("DetectStream receive: %w", err)
		}
		w.samples = append(w.samples, sample{sent: t0, latency: time.Since(t0), outliers: len(resp.GetIndices())})
	}
	_ = st.CloseSend()
	var resp pb.OutliersResponse
	if err := st.RecvMsg(&resp); err != io.EOF {
		return fmt.Errorf("DetectStream after the last answer: %v, want the end of the stream", err)
	}
	return nil
}

// recvErr gets the status behind a Send that returned io.EOF.
func recvErr(st grpc.ClientStream) (*pb.OutliersResponse, error) {
	var resp pb.OutliersResponse
	err := st.RecvMsg(&resp)
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return &resp, err
}

// drivePipelined: a sender keeps up to cfg.Window batches in flight, a receiver matches answers to send times
// in order (DetectStream answers every request, in order).
func drivePipelined(ctx context.Context, cfg config, conn *grpc.ClientConn, frames [][]byte, id int, w *worker) error {
	// The stream is not bound to ctx: when the measurement ends, the sender half-closes and the receiver
	// drains the answers still due instead of cancelling the stream under the server.
	streamCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := conn.NewStream(streamCtx, streamDesc, pb.Outliers_DetectStream_FullMethodName)
	if err != nil {
		return fmt.Errorf("open DetectStream: %w", err)
	}
	sent := make(chan time.Time, cfg.Window) // send times of unanswered batches; its capacity is the window
	sendErr := make(chan error, 1)
	go func() {
		defer close(sent)
		for n := id; ctx.Err() == nil; n++ {
			f := frame(frames[n%len(frames)])
			select {
			case sent <- time.Now():
			case <-ctx.Done():
				continue
			}
			if err := st.SendMsg(&f); err != nil {
				sendErr <- err // io.EOF: the receiver gets the status
				return
			}
		}
		_ = st.CloseSend()
	}()
	for t0 := range sent {
		var resp pb.OutliersResponse
		if err := st.RecvMsg(&resp); err != nil {
			cancel()
			for range sent { // let the sender finish
			}
			return fmt.Errorf("DetectStream receive: %w", err)
		}
		w.samples = append(w.samples, sample{sent: t0, latency: time.Since(t0), outliers: len(resp.GetIndices())})
	}
	select {
	case err := <-sendErr:
		_, err = recvErr(st)
		return fmt.Errorf("DetectStream send: %w", err)
	default:
	}
	var resp pb.OutliersResponse
	if err := st.RecvMsg(&resp); err != io.EOF {
		return fmt.Errorf("DetectStream after the last answer: %v, want the end of the stream", err)
	}
	return nil
}

func printText(out io.Writer, r report) {
	how := r.Mode
	if r.Pipelined {
		how += fmt.Sprintf(" (pipelined, window %d)", r.Window)
	}
	if r.Rate > 0 {
		how += fmt.Sprintf(" (paced at %.0f metrics/s, window %d)", r.Rate, r.Window)
	}
	fmt.Fprintf(out, "loadgen: %s to %s, %d caller(s), %d metrics/batch over %d series, %d-byte requests\n",
		how, r.Addr, r.Streams, r.Batch, r.Series, r.RequestBytes)
	fmt.Fprintf(out, "  measured     %.2f s (after %.2f s warm-up)\n", r.DurationS, r.WarmupS)
	fmt.Fprintf(out, "  batches/s    %.1f\n", r.BatchesPerS)
	fmt.Fprintf(out, "  metrics/s    %.0f\n", r.MetricsPerS)
	fmt.Fprintf(out, "  latency ms   p50 %.3f  p99 %.3f  p99.9 %.3f  mean %.3f  max %.3f\n", r.P50Ms, r.P99Ms,
		r.P999Ms, r.MeanMs, r.MaxMs)
	fmt.Fprintf(out, "  outliers     %d in %d batches\n", r.Outliers, r.Batches)
	if r.Errors > 0 {
		fmt.Fprintf(out, "  errors       %d caller(s) stopped; first: %s\n", r.Errors, r.Error)
	}
}
