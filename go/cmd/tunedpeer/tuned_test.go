// The tuned peer is honest: on seeded streams and batches its answers are streamer's, byte for byte, and it
// refuses what streamer refuses with the same status code.

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/streamer-dev/streamer/go/internal/testserver"
	"github.com/streamer-dev/streamer/go/pb"
)

func TestMain(m *testing.M) { testserver.Main(m) }

// rawBytes is a client codec that sends and receives the messages' bytes as they are.
type rawBytes struct{}

func (rawBytes) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}
func (rawBytes) Unmarshal(d mem.BufferSlice, v any) error { *v.(*[]byte) = d.Materialize(); return nil }
func (rawBytes) Name() string                             { return "proto" }

func startTuned(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(64 << 20)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func dialRaw(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawBytes{}), grpc.MaxCallRecvMsgSize(64<<20),
			grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatalf("connecting to %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// batches are seeded: normal values around a per-name level, spikes, NaN and Inf, -0.0 and 0 (omitted on the
// wire), an empty name, non-ASCII names, timestamps on most metrics, names in any order.
func batches(seed uint64, n, size, names int) [][]byte {
	rng := rand.New(rand.NewPCG(seed, 23))
	out := make([][]byte, n)
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
				x = math.Inf(1 - 2*rng.IntN(2))
			case r < 0.016:
				x = math.Copysign(0, float64(1-2*rng.IntN(2)))
			}
			name := fmt.Sprintf("séries-%d", j)
			if j == 0 {
				name = ""
			}
			m := &pb.Metric{Name: name, Value: x}
			if rng.IntN(10) > 0 {
				m.Time = timestamppb.New(time.Unix(1_700_000_000+int64(b*size), int64(rng.IntN(1e9))))
			}
			req.Metrics = append(req.Metrics, m)
		}
		frame, err := proto.Marshal(req)
		if err != nil {
			panic(err)
		}
		out[b] = frame
	}
	return out
}

func withOptions(frame []byte, o *pb.DetectOptions) []byte {
	if o == nil {
		return frame
	}
	opts, err := proto.Marshal(&pb.OutliersRequest{Options: o})
	if err != nil {
		panic(err)
	}
	return append(append([]byte{}, frame...), opts...) // fields may come in any order: options after metrics
}

var streamDesc = &grpc.StreamDesc{StreamName: "DetectStream", ServerStreams: true, ClientStreams: true}

func streamAll(t *testing.T, conn *grpc.ClientConn, reqs [][]byte) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := conn.NewStream(ctx, streamDesc, pb.Outliers_DetectStream_FullMethodName)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, r := range reqs {
		if err := st.SendMsg(&r); err != nil {
			t.Fatal(err)
		}
		var resp []byte
		if err := st.RecvMsg(&resp); err != nil {
			t.Fatal(err)
		}
		out = append(out, resp)
	}
	st.CloseSend()
	var resp []byte
	if err := st.RecvMsg(&resp); err != io.EOF {
		t.Fatalf("after CloseSend: %v", err)
	}
	return out
}

func flaggedIn(t *testing.T, answer []byte) int {
	t.Helper()
	var resp pb.OutliersResponse
	if err := proto.Unmarshal(answer, &resp); err != nil {
		t.Fatalf("the answer is not an OutliersResponse: %v", err)
	}
	return len(resp.Indices)
}

func TestAnswersAreStreamersByteForByte(t *testing.T) {
	streamer := dialRaw(t, testserver.Shared(t).Addr)
	tuned := dialRaw(t, startTuned(t))
	for _, opts := range []*pb.DetectOptions{nil, {Threshold: 3, Warmup: 5}, {ExcludeOutliers: true, Warmup: 2},
		{Mode: pb.Mode_MODE_CUMULATIVE, Threshold: 1.5}} {
		t.Run(fmt.Sprintf("stream %v", opts), func(t *testing.T) {
			reqs := batches(1, 12, 700, 9)
			reqs[0] = withOptions(reqs[0], opts)
			reqs = append(reqs, nil) // an empty request: answered with its batch number only
			want, got := streamAll(t, streamer, reqs), streamAll(t, tuned, reqs)
			flagged := 0
			for b := range want {
				if !bytes.Equal(want[b], got[b]) {
					t.Fatalf("batch %d: streamer answered %x,\nthe tuned peer %x", b, want[b], got[b])
				}
				flagged += flaggedIn(t, want[b])
			}
			if flagged == 0 {
				t.Fatal("nothing flagged: the comparison shows nothing")
			}
		})
	}
	t.Run("detect", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		flagged := 0
		// 3 000 metrics (over 100 KB: the request reaches the peer in several buffers) and small ones
		for i, req := range append(batches(2, 4, 3000, 5), batches(3, 4, 40, 3)...) {
			if i%2 == 1 {
				req = withOptions(req, &pb.DetectOptions{Threshold: 1.5})
			}
			var want, got []byte
			if err := streamer.Invoke(ctx, pb.Outliers_Detect_FullMethodName, &req, &want); err != nil {
				t.Fatal(err)
			}
			if err := tuned.Invoke(ctx, pb.Outliers_Detect_FullMethodName, &req, &got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(want, got) {
				t.Fatalf("request %d: streamer answered %x,\nthe tuned peer %x", i, want, got)
			}
			flagged += flaggedIn(t, want)
		}
		if flagged == 0 {
			t.Fatal("nothing flagged")
		}
	})
}

func TestRefusesWhatStreamerRefuses(t *testing.T) {
	streamer := dialRaw(t, testserver.Shared(t).Addr)
	tuned := dialRaw(t, startTuned(t))
	good := batches(4, 1, 10, 3)[0]
	long, err := proto.Marshal(&pb.OutliersRequest{Metrics: []*pb.Metric{{Name: strings.Repeat("x", 1025), Value: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	many := &pb.OutliersRequest{}
	for i := range maxSeries + 1 {
		many.Metrics = append(many.Metrics, &pb.Metric{Name: fmt.Sprint(i), Value: 1})
	}
	tooMany, err := proto.Marshal(many)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		req  []byte
		code codes.Code
	}{
		{"truncated", good[:len(good)-3], codes.InvalidArgument},
		{"bad UTF-8 name", []byte{0x0a, 0x04, 0x12, 0x02, 0xc3, 0x28}, codes.InvalidArgument},
		{"name over 1024 bytes", long, codes.InvalidArgument},
		{"threshold -1", withOptions(good, &pb.DetectOptions{Threshold: -1}), codes.InvalidArgument},
		{"threshold NaN", withOptions(good, &pb.DetectOptions{Threshold: math.NaN()}), codes.InvalidArgument},
		{"100 001 series", tooMany, codes.ResourceExhausted},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, c := range cases {
		for _, rpc := range []string{"detect", "stream"} {
			codeOf := func(conn *grpc.ClientConn) codes.Code {
				var resp []byte
				if rpc == "detect" {
					return status.Code(conn.Invoke(ctx, pb.Outliers_Detect_FullMethodName, &c.req, &resp))
				}
				st, err := conn.NewStream(ctx, streamDesc, pb.Outliers_DetectStream_FullMethodName)
				if err != nil {
					t.Fatal(err)
				}
				first := good
				if err := st.SendMsg(&first); err != nil {
					t.Fatal(err)
				}
				if err := st.RecvMsg(&resp); err != nil {
					t.Fatalf("%s: the good first batch: %v", c.name, err)
				}
				st.SendMsg(&c.req)
				st.CloseSend()
				return status.Code(st.RecvMsg(&resp))
			}
			if rpc == "stream" && strings.HasPrefix(c.name, "threshold") {
				continue // a stream reads options from its first message only (the detect case covers them)
			}
			want := c.code
			if got := codeOf(streamer); got != want {
				t.Fatalf("%s %s: streamer answered %v, the test expects %v", rpc, c.name, got, want)
			}
			if got := codeOf(tuned); got != want {
				t.Fatalf("%s %s: the tuned peer answered %v, streamer %v", rpc, c.name, got, want)
			}
		}
	}
}

// cpuNs is this process's user + system CPU time: the benchmarks report CPU ns a metric, which time the
// shared machine gives to other work does not inflate.
func cpuNs() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func report(b *testing.B, start int64, size int) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(size), "ns/metric")
	b.ReportMetric(float64(cpuNs()-start)/float64(b.N)/float64(size), "cpu-ns/metric")
}

// BenchmarkStreamBatch is the tuned peer's own work per batch (decode, intern, judge, encode), without the
// transport, at the batch sizes of the targets; with timestamps, 4 series, as the load generator.
func BenchmarkStreamBatch(b *testing.B) {
	for _, size := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			frame := loadgenFrame(size, 4)
			s := &stream{}
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			start := cpuNs()
			for b.Loop() {
				out, err := s.process(frame)
				if err != nil {
					b.Fatal(err)
				}
				out.Free()
			}
			report(b, start, size)
		})
	}
}

// BenchmarkDecode is the decoder alone (validation, columns, hashes): StreamBatch's first stage.
func BenchmarkDecode(b *testing.B) {
	for _, size := range []int{10000, 100000} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			frame := loadgenFrame(size, 4)
			var r request
			start := cpuNs()
			for b.Loop() {
				if err := r.decode(frame); err != nil {
					b.Fatal(err)
				}
			}
			report(b, start, size)
		})
	}
}

func BenchmarkDetect(b *testing.B) {
	for _, size := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			frame := loadgenFrame(size, 4)
			b.SetBytes(int64(len(frame)))
			b.ReportAllocs()
			start := cpuNs()
			for b.Loop() {
				d := detectCalls.Get().(*detectCall)
				out, err := d.detect(frame)
				if err != nil {
					b.Fatal(err)
				}
				out.Free()
				detectCalls.Put(d)
			}
			report(b, start, size)
		})
	}
}

// loadgenFrame is a request as go/cmd/loadgen -timestamps sends it.
func loadgenFrame(size, series int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	req := &pb.OutliersRequest{}
	for i := range size {
		req.Metrics = append(req.Metrics, &pb.Metric{Name: fmt.Sprintf("series-%05d", i%series),
			Value: 50 + 10*rng.NormFloat64(), Time: timestamppb.New(time.Unix(1_700_000_000, int64(i)*1_000_000))})
	}
	frame, err := proto.Marshal(req)
	if err != nil {
		panic(err)
	}
	return frame
}
