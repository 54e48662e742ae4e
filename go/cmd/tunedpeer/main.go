// Command tunedpeer is the benchmarks' tuned grpc-go peer: streamer's Detect and DetectStream written the way
// the best Go engineers would write a server for throughput, so that the benchmark can ask what the best
// server one could write instead does on this core (issue 23). Beside go/cmd/peerserver (generated messages,
// a map of Welford accumulators), it differs only in how bytes become answers:
//
//   - a grpc codec that hands over the request's raw bytes (no generated message, no reflection);
//   - a one-pass protowire decoder into reused columns (names as spans of the request, hashed with maphash):
//     no allocation per metric, and validation equal to protobuf-go's (decode_test.go checks it against
//     proto.Unmarshal on truncations and random corruptions, and with a fuzz test);
//   - an open-addressing series table (table.go) and the state in one slice of structs;
//   - answers encoded by hand into buffers from grpc's pool, byte for byte what streamer sends
//     (tuned_test.go checks it against the real server).
//
// Semantics are streamer's defaults (see go/cmd/peerserver): threshold k (default 2), population stddev,
// non-finite values neither scored nor counted, Detect per name over the batch, DetectStream per-name Welford
// scored before the update with warm-up max(warmup, 2) (default 10) and exclude_outliers (never at stddev 0,
// and not after max(warmup, 2) excluded values in a row: streamer's default exclude_limit); names over 1024
// bytes and bad thresholds are INVALID_ARGUMENT, more than 100 000 series RESOURCE_EXHAUSTED, as streamer.
// Sessions, numbered batches and MODE_EXPONENTIAL answer UNIMPLEMENTED (the benchmarks never ask).
//
// Prints "tuned-go ready on HOST:PORT" to stderr once serving; SIGTERM or SIGINT stops it gracefully.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
)

var (
	host         = flag.String("host", "127.0.0.1", "address to listen on")
	port         = flag.Int("port", 0, "port to listen on; 0 picks a free one")
	maxMessageMB = flag.Int("max-message-mb", 64, "largest request and answer, in MiB")
	cpuProfile   = flag.String("cpuprofile", "", "write a pprof CPU profile of the whole run to this file (on SIGTERM)")
)

// call is what the codec decodes into: the request's bytes are processed while grpc still holds them, and
// the answer (or the status refusing the request) waits here for the handler to send it.
type call struct {
	process func(b []byte) (mem.BufferSlice, error)
	scratch []byte // a request that came in several buffers, joined
	answer  mem.BufferSlice
	err     error
}

// codec passes bytes through: Unmarshal runs the call on the request's bytes, Marshal sends the answer.
type codec struct{}

func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	c, ok := v.(*call)
	if !ok {
		return nil, fmt.Errorf("tuned peer codec cannot send %T", v)
	}
	out := c.answer
	c.answer = nil
	return out, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	c, ok := v.(*call)
	if !ok {
		return fmt.Errorf("tuned peer codec cannot decode into %T", v)
	}
	var b []byte
	if len(data) == 1 {
		b = data[0].ReadOnlyData()
	} else { // a large request arrives as one buffer per HTTP/2 frame: join them
		if cap(c.scratch) < data.Len() {
			c.scratch = make([]byte, data.Len())
		}
		b = c.scratch[:data.Len()]
		data.CopyTo(b)
	}
	c.answer, c.err = c.process(b)
	return nil
}

// detectCall is one Detect's reusable buffers.
type detectCall struct {
	call
	req   request
	table *table
	ids   []int32
	stats batchStats
	flags flags
}

var detectCalls = sync.Pool{New: func() any {
	d := &detectCall{table: newTable()}
	d.process = d.detect
	return d
}}

func (d *detectCall) detect(b []byte) (mem.BufferSlice, error) {
	where := place{}
	r := &d.req
	if err := r.decode(b); err != nil {
		return nil, statusInvalid(where, err)
	}
	k, err := threshold(r, where)
	if err != nil {
		return nil, err
	}
	if err := checkNames(r, where); err != nil {
		return nil, err
	}
	defer d.table.truncate(0)
	if d.ids, err = intern(r, b, d.table, d.ids, where); err != nil {
		return nil, err
	}
	d.flags.reset()
	d.stats.detect(d.ids, r.metrics, d.table.len(), k, &d.flags)
	return encode(&d.flags, d.table, 0), nil
}

func detectHandler(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	d := detectCalls.Get().(*detectCall)
	defer detectCalls.Put(d)
	if err := dec(&d.call); err != nil {
		return nil, err
	}
	if d.err != nil {
		return nil, d.err
	}
	// grpc marshals the answer after this returns: hand it a call of its own, not the pooled one
	answer := d.answer
	d.answer = nil
	return &call{answer: answer}, nil
}

func streamHandler(_ any, ss grpc.ServerStream) error {
	s := &stream{}
	c := &call{process: s.process}
	for {
		if err := ss.RecvMsg(c); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if c.err != nil {
			return c.err
		}
		if err := ss.SendMsg(c); err != nil {
			return err
		}
	}
}

// serviceDesc is pb.Outliers with the handlers above (the generated one would decode into pb messages).
var serviceDesc = grpc.ServiceDesc{
	ServiceName: "pb.Outliers",
	HandlerType: (*any)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Detect", Handler: detectHandler}},
	Streams: []grpc.StreamDesc{{StreamName: "DetectStream", Handler: streamHandler, ServerStreams: true,
		ClientStreams: true}},
	Metadata: "outliers.proto",
}

func newServer(limit int) *grpc.Server {
	srv := grpc.NewServer(grpc.ForceServerCodecV2(codec{}), grpc.MaxRecvMsgSize(limit), grpc.MaxSendMsgSize(limit))
	srv.RegisterService(&serviceDesc, struct{}{})
	return srv
}

func main() {
	flag.Parse()
	lis, err := net.Listen("tcp", fmt.Sprintf("%s:%d", *host, *port))
	if err != nil {
		fmt.Fprintf(os.Stderr, "tuned-go peer: listen: %v\n", err)
		os.Exit(1)
	}
	srv := newServer(*maxMessageMB << 20)
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "tuned-go peer: -cpuprofile: %v\n", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		srv.GracefulStop()
	}()
	fmt.Fprintf(os.Stderr, "tuned-go ready on %s\n", lis.Addr())
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintf(os.Stderr, "tuned-go peer: serve: %v\n", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}
