// The peer is honest: on seeded streams and batches it gives streamer's answers (same indices, names and
// values; statistics equal to rounding), so the benchmark compares like with like.

package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/streamer-dev/streamer/go/internal/testserver"
	"github.com/streamer-dev/streamer/go/pb"
)

func TestMain(m *testing.M) { testserver.Main(m) }

// startPeer serves the peer on a free loopback port for the test's duration.
func startPeer(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterOutliersServer(srv, server{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func dial(t *testing.T, addr string) pb.OutliersClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("connecting to %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewOutliersClient(conn)
}

// batches are seeded: normal values around a per-name level, spikes, a few NaN and Inf, names in any order.
func batches(seed uint64, n, size, names int) []*pb.OutliersRequest {
	rng := rand.New(rand.NewPCG(seed, 7))
	out := make([]*pb.OutliersRequest, n)
	for b := range out {
		req := &pb.OutliersRequest{}
		for range size {
			j := rng.IntN(names)
			x := float64(10*j) + rng.NormFloat64()
			switch r := rng.Float64(); {
			case r < 0.01:
				x += 20 * rng.NormFloat64()
			case r < 0.012:
				x = math.NaN()
			case r < 0.013:
				x = math.Inf(1)
			}
			req.Metrics = append(req.Metrics, &pb.Metric{Name: fmt.Sprintf("series-%d", j), Value: x})
		}
		out[b] = req
	}
	return out
}

func streamAll(t *testing.T, c pb.OutliersClient, reqs []*pb.OutliersRequest) []*pb.OutliersResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := c.DetectStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*pb.OutliersResponse
	for _, r := range reqs {
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, resp)
	}
	st.CloseSend()
	if _, err := st.Recv(); err != io.EOF {
		t.Fatalf("after CloseSend: %v", err)
	}
	return out
}

func near(a, b float64) bool {
	if math.IsInf(a, 0) || math.IsInf(b, 0) {
		return a == b
	}
	return math.Abs(a-b) <= 1e-9*math.Max(1, math.Max(math.Abs(a), math.Abs(b)))
}

func same(t *testing.T, what string, want, got *pb.OutliersResponse) int {
	t.Helper()
	if len(want.Indices) != len(got.Indices) || want.Batch != got.Batch {
		t.Fatalf("%s: streamer flags %v (batch %d), the peer %v (batch %d)", what, want.Indices, want.Batch,
			got.Indices, got.Batch)
	}
	for i, w := range want.Outliers {
		g := got.Outliers[i]
		if want.Indices[i] != got.Indices[i] || w.Index != g.Index || w.Name != g.Name || w.Value != g.Value ||
			!near(w.Mean, g.Mean) || !near(w.Stddev, g.Stddev) || !near(w.Zscore, g.Zscore) {
			t.Fatalf("%s, outlier %d: streamer %v, the peer %v", what, i, w, g)
		}
	}
	return len(want.Indices)
}

func TestThePeerAnswersAsStreamer(t *testing.T) {
	streamer := dial(t, testserver.Shared(t).Addr)
	peer := dial(t, startPeer(t))
	for _, opts := range []*pb.DetectOptions{nil, {Threshold: 3, Warmup: 5}, {ExcludeOutliers: true, Warmup: 2}} {
		t.Run(fmt.Sprintf("stream %v", opts), func(t *testing.T) {
			reqs := batches(1, 20, 500, 7)
			reqs[0].Options = opts
			want, got := streamAll(t, streamer, reqs), streamAll(t, peer, reqs)
			flagged := 0
			for b := range want {
				flagged += same(t, fmt.Sprintf("batch %d", b), want[b], got[b])
			}
			if flagged == 0 {
				t.Fatal("nothing flagged: the comparison shows nothing")
			}
		})
	}
	t.Run("detect", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		flagged := 0
		for i, req := range batches(2, 5, 2000, 5) {
			if i%2 == 1 {
				req.Options = &pb.DetectOptions{Threshold: 1.5}
			}
			want, err := streamer.Detect(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			got, err := peer.Detect(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			flagged += same(t, fmt.Sprintf("request %d", i), want, got)
		}
		if flagged == 0 {
			t.Fatal("nothing flagged")
		}
	})
}

// BenchmarkStreamBatch is the peer's own work per batch of 1 000 metrics with timestamps (what the Go load
// generator sends), without the transport: unmarshal the request, judge it, marshal the answer.
func BenchmarkStreamBatch(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	req := &pb.OutliersRequest{}
	for i := range 1000 {
		req.Metrics = append(req.Metrics, &pb.Metric{Name: fmt.Sprintf("series-%05d", i%4), Value: 50 + 10*rng.NormFloat64(),
			Time: timestamppb.New(time.Unix(1_700_000_000, int64(i)*1_000_000))})
	}
	frame, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	s, _ := newStream(nil)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		var r pb.OutliersRequest
		if err := proto.Unmarshal(frame, &r); err != nil {
			b.Fatal(err)
		}
		if _, err := proto.Marshal(s.judge(&r, uint64(i))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/metric")
}
