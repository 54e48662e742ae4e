// Command stream is the Go example of go/README.md: one Detect call, then a DetectStream in a session.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/pb"
)

func main() {
	addr := flag.String("addr", "localhost:9999", "streamer server address")
	session := flag.String("session", "example", "session whose baselines the stream continues")
	flag.Parse()
	if err := run(context.Background(), *addr, *session, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, addr, session string, out io.Writer) error {
	c, err := client.New(addr, client.WithTimeout(5*time.Second)) // deadline of each Detect call
	if err != nil {
		return err
	}
	defer c.Close()

	// Detect: one batch judged on its own.
	var batch []*pb.Metric
	for i := 0; i < 20; i++ {
		batch = append(batch, client.Metric("cpu", float64(40+i%5), time.Now()))
	}
	batch = append(batch, client.Metric("cpu", 97.3, time.Now()))
	resp, err := c.Detect(ctx, batch, nil)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "Detect flagged", resp.GetIndices())

	// DetectStream: each batch judged against everything its series has shown before. A Stream reconnects
	// with backoff by itself, and the session keeps the baselines across reconnections.
	st := c.OpenStream(ctx, client.StreamConfig{Session: session, Options: &pb.DetectOptions{Warmup: 5}})
	go func() {
		defer st.CloseSend() // no more batches: Results closes after the last answer
		for _, v := range []float64{10, 11, 9, 10, 12, 11, 10, 50, 10} {
			if err := st.Send(ctx, []*pb.Metric{client.Metric("latency_ms", v, time.Now())}); err != nil {
				return // the stream ended; st.Err() says why
			}
		}
	}()
	for r := range st.Results() {
		for _, o := range r.Response.GetOutliers() {
			fmt.Fprintf(out, "batch %d: %s = %g is %.1f stddevs from its mean %.2f\n",
				r.Seq, o.GetName(), o.GetValue(), o.GetZscore(), o.GetMean())
		}
	}
	return st.Err()
}
