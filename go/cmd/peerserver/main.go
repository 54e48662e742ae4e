// Command peerserver is the benchmarks' grpc-go peer: Detect and DetectStream with streamer's rules, written
// the way a Go engineer would write them (generated messages, a map from name to a Welford accumulator), so
// the benchmark table can say what plain Go on the same contract gives.
//
// Semantics are streamer's defaults (streamer/detector.py, streamer/kernels.py): threshold k (default 2),
// population standard deviation, non-finite values neither scored nor counted. Detect judges each value
// against its name's mean and stddev over the batch. DetectStream keeps a Welford count, mean and M2 per name
// for the stream, scores each value before adding it, flags only once the name has taken in max(warmup, 2)
// values (warmup default 10), and with exclude_outliers does not add a flagged value unless its stddev is 0 or
// the series had max(warmup, 2) excluded values in a row since its last normal one (the server's default
// exclude_limit). Not implemented (the benchmarks never ask): sessions, MODE_EXPONENTIAL, the series limit and
// DetectOptions fields 6-17 (cooldown, score, series_ttl_seconds, min_deviation, ...); they are refused with
// UNIMPLEMENTED.
//
// Prints "grpc-go ready on HOST:PORT" to stderr once serving; SIGTERM or SIGINT stops it gracefully.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/streamer-dev/streamer/go/pb"
)

var (
	host         = flag.String("host", "127.0.0.1", "address to listen on")
	port         = flag.Int("port", 0, "port to listen on; 0 picks a free one")
	maxMessageMB = flag.Int("max-message-mb", 64, "largest request and answer, in MiB")
)

const (
	defaultThreshold = 2.0
	defaultWarmup    = 10
)

type server struct {
	pb.UnimplementedOutliersServer
}

// threshold is options.threshold, or the default when it is 0; an error for a negative or non-finite one.
func threshold(o *pb.DetectOptions) (float64, error) {
	k := o.GetThreshold()
	if math.IsNaN(k) || math.IsInf(k, 0) || k < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "options.threshold must be a finite number >= 0, got %v", k)
	}
	if k == 0 {
		k = defaultThreshold
	}
	return k, nil
}

// zscore is (x - mean) / std, +-Inf when std is 0 (a flagged value always differs from the mean).
func zscore(diff, std float64) float64 {
	if std > 0 {
		return diff / std
	}
	return math.Inf(int(math.Copysign(1, diff)))
}

func outlier(i int, m *pb.Metric, mean, std float64) *pb.Outlier {
	return &pb.Outlier{Index: int32(i), Name: m.Name, Value: m.Value, Mean: mean, Stddev: std,
		Zscore: zscore(m.Value-mean, std)}
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// Detect judges one batch: per name, the mean and population stddev of its finite values in this batch.
func (server) Detect(_ context.Context, req *pb.OutliersRequest) (*pb.OutliersResponse, error) {
	k, err := threshold(req.Options)
	if err != nil {
		return nil, err
	}
	type sums struct{ n, mean, sq float64 }
	stats := map[string]*sums{}
	for _, m := range req.Metrics { // the mean first, then the squared deviations from it: two passes
		if !finite(m.Value) {
			continue
		}
		s := stats[m.Name]
		if s == nil {
			s = &sums{}
			stats[m.Name] = s
		}
		s.n++
		s.mean += m.Value
	}
	for _, s := range stats {
		s.mean /= s.n
	}
	for _, m := range req.Metrics {
		if finite(m.Value) {
			s := stats[m.Name]
			d := m.Value - s.mean
			s.sq += d * d
		}
	}
	resp := &pb.OutliersResponse{}
	for i, m := range req.Metrics {
		if !finite(m.Value) {
			continue
		}
		s := stats[m.Name]
		std := math.Sqrt(s.sq / s.n)
		if math.Abs(m.Value-s.mean) > k*std {
			resp.Indices = append(resp.Indices, int32(i))
			resp.Outliers = append(resp.Outliers, outlier(i, m, s.mean, std))
		}
	}
	return resp, nil
}

// welford is one series' running count, mean and sum of squared deviations (Welford 1962).
type welford struct {
	n        int64
	mean, m2 float64
	excluded int64 // excluded values in a row since the last value judged normal
}

func (w *welford) add(x float64) {
	w.n++
	d := x - w.mean
	w.mean += d / float64(w.n)
	w.m2 += d * (x - w.mean)
}

// stream is one DetectStream call's rule and the Welford state of each series it has seen.
type stream struct {
	series  map[string]*welford
	k       float64
	need    int64
	exclude bool
}

func newStream(o *pb.DetectOptions) (*stream, error) {
	k, err := threshold(o)
	if err != nil {
		return nil, err
	}
	need := max(int64(o.GetWarmup()), 2)
	if o.GetWarmup() == 0 {
		need = defaultWarmup
	}
	return &stream{series: map[string]*welford{}, k: k, need: need, exclude: o.GetExcludeOutliers()}, nil
}

// judge answers one request: each finite value scored against its series' state before it is added.
func (s *stream) judge(req *pb.OutliersRequest, batch uint64) *pb.OutliersResponse {
	resp := &pb.OutliersResponse{Batch: batch}
	for i, m := range req.Metrics {
		x := m.Value
		if !finite(x) {
			continue
		}
		w := s.series[m.Name]
		if w == nil {
			w = &welford{}
			s.series[m.Name] = w
		}
		flagged := false
		std := 0.0
		if w.n >= s.need {
			std = math.Sqrt(w.m2 / float64(w.n))
			if math.Abs(x-w.mean) > s.k*std {
				flagged = true
				resp.Indices = append(resp.Indices, int32(i))
				resp.Outliers = append(resp.Outliers, outlier(i, m, w.mean, std))
			}
		}
		if flagged && s.exclude && std > 0 && w.excluded < s.need {
			w.excluded++
			continue
		}
		if !flagged {
			w.excluded = 0
		}
		w.add(x)
	}
	return resp
}

// DetectStream judges every batch against each name's history in this stream, in order.
func (server) DetectStream(st pb.Outliers_DetectStreamServer) error {
	var s *stream
	for batch := uint64(0); ; batch++ {
		req, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if batch == 0 {
			if req.Session != "" || req.Options.GetMode() == pb.Mode_MODE_EXPONENTIAL {
				return status.Error(codes.Unimplemented, "the grpc-go peer keeps no sessions and only MODE_CUMULATIVE")
			}
			if o := req.Options; o != nil && (o.ExcludeLimit != nil || o.Cooldown != nil || o.Score != nil ||
				o.LikelihoodShort != nil || o.LikelihoodWindow != nil || o.LikelihoodThreshold != nil ||
				o.LikelihoodLearning != nil || o.SeriesTtlSeconds != nil || o.MinDeviation != nil ||
				o.MinRelativeDeviation != nil || o.Direction != nil || o.ResolveAfter != nil) {
				return status.Error(codes.Unimplemented, "the grpc-go peer has no options past exclude_outliers")
			}
			if s, err = newStream(req.Options); err != nil {
				return err
			}
		}
		if err := st.Send(s.judge(req, batch)); err != nil {
			return err
		}
	}
}

func main() {
	flag.Parse()
	lis, err := net.Listen("tcp", fmt.Sprintf("%s:%d", *host, *port))
	if err != nil {
		fmt.Fprintf(os.Stderr, "grpc-go peer: listen: %v\n", err)
		os.Exit(1)
	}
	limit := *maxMessageMB << 20
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(limit), grpc.MaxSendMsgSize(limit))
	pb.RegisterOutliersServer(srv, server{})
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		srv.GracefulStop()
	}()
	fmt.Fprintf(os.Stderr, "grpc-go ready on %s\n", lis.Addr())
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintf(os.Stderr, "grpc-go peer: serve: %v\n", err)
		os.Exit(1)
	}
}
