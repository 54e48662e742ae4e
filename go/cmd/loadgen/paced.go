// Paced load (-rate): each stream sends its share of a target rate of metrics per second on a fixed
// schedule, over its own slice of -series names and (with -sessions) its own session, and the report says
// the rate achieved and the latency percentiles from sending a batch to its answer.

package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/streamer-dev/streamer/go/pb"
)

// encodePaced builds, per stream, the requests that cycle once through that stream's names: stream id owns
// names series-<id*per>.. series-<(id+1)*per - 1>, where per = Series / Streams, in batches of Batch. With
// Sessions each request names the stream's session (a later request may repeat it).
func encodePaced(cfg config) ([][][]byte, error) {
	per := cfg.Series / cfg.Streams
	if per < 1 {
		return nil, fmt.Errorf("-series %d is fewer than -streams %d", cfg.Series, cfg.Streams)
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x9ace))
	out := make([][][]byte, cfg.Streams)
	for s := range out {
		frames := (per + cfg.Batch - 1) / cfg.Batch
		out[s] = make([][]byte, frames)
		for f := range frames {
			req := &pb.OutliersRequest{Metrics: make([]*pb.Metric, cfg.Batch)}
			if cfg.Sessions {
				req.Session = fmt.Sprintf("loadgen-%d", s)
			}
			for i := range req.Metrics {
				name := fmt.Sprintf("series-%07d", s*per+(f*cfg.Batch+i)%per)
				req.Metrics[i] = &pb.Metric{Name: name, Value: 50 + 10*rng.NormFloat64()}
			}
			b, err := proto.Marshal(req)
			if err != nil {
				return nil, err
			}
			out[s][f] = b
		}
	}
	return out, nil
}

// drivePaced sends one stream's batches every Batch*Streams/Rate seconds (up to -window in flight; when the
// window is full the sender waits, so a server that cannot keep up shows as an achieved rate below the
// target), while the receiver matches answers to send times in order.
func drivePaced(ctx context.Context, cfg config, conn *grpc.ClientConn, frames [][]byte, id int, w *worker) error {
	streamCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := conn.NewStream(streamCtx, streamDesc, pb.Outliers_DetectStream_FullMethodName)
	if err != nil {
		return fmt.Errorf("open DetectStream: %w", err)
	}
	interval := time.Duration(float64(time.Second) * float64(cfg.Batch*cfg.Streams) / cfg.Rate)
	sent := make(chan time.Time, cfg.Window)
	sendErr := make(chan error, 1)
	go func() {
		defer close(sent)
		// streams start spread over one interval, so that their batches do not all arrive at once
		next := time.Now().Add(interval * time.Duration(id) / time.Duration(cfg.Streams))
		for n := 0; ctx.Err() == nil; n++ {
			if d := time.Until(next); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
					continue
				}
			}
			next = next.Add(interval)
			f := frame(frames[n%len(frames)])
			select {
			case sent <- time.Now():
			case <-ctx.Done():
				continue
			}
			if err := st.SendMsg(&f); err != nil {
				sendErr <- err
				return
			}
		}
		_ = st.CloseSend()
	}()
	for t0 := range sent {
		var resp pb.OutliersResponse
		if err := st.RecvMsg(&resp); err != nil {
			cancel()
			for range sent {
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
	return nil
}
