// The application, unchanged, exports to a real `streamer serve` on its --otlp-port through the SDK's OTLP
// gRPC exporter (endpoint from OTEL_EXPORTER_OTLP_ENDPOINT); a Watch subscriber gets exactly its two spikes.

package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/internal/testserver"
	"github.com/streamer-dev/streamer/go/pb"
)

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// marker sends a private DetectStream whose last value is flagged: its event follows every earlier one.
func marker(ctx context.Context, c *client.Client) error {
	stream, err := pb.NewOutliersClient(c.Conn()).DetectStream(ctx)
	if err != nil {
		return err
	}
	var metrics []*pb.Metric
	for i := 0; i < 12; i++ {
		metrics = append(metrics, &pb.Metric{Name: "zz.marker", Value: float64(1 + i%2)})
	}
	metrics = append(metrics, &pb.Metric{Name: "zz.marker", Value: 100})
	if err := stream.Send(&pb.OutliersRequest{Metrics: metrics}); err != nil {
		return err
	}
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return stream.CloseSend()
}

func TestTheGoSDKExporterGetsItsSpikesReportedOnWatch(t *testing.T) {
	port := freePort(t)
	srv := testserver.Start(t, "--otlp-port", fmt.Sprint(port), "--otlp-threshold", "6", "--otlp-warmup", "5")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", fmt.Sprintf("http://127.0.0.1:%d", port)) // http: plaintext
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c, err := client.New(srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	watch, err := c.Watch(ctx, "", "")
	if err != nil {
		t.Fatal(err)
	}
	cfg := config{interval: 100 * time.Millisecond, service: "checkout", host: "web-1", spike: 12, collections: 16}
	if err := run(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := marker(ctx, c); err != nil {
		t.Fatal(err)
	}
	got := map[string]*pb.OutlierEvent{}
	for {
		ev, err := watch.Recv()
		if err != nil {
			t.Fatalf("watch: %v (so far %v)", err, got)
		}
		o := ev.GetOutlier()
		if o == nil {
			t.Fatalf("not an outlier: %v", ev)
		}
		if o.Series == "zz.marker" {
			break
		}
		got[o.Series] = o
	}
	depthKey := `queue.depth{host.name="web-1",queue="main",service.name="checkout"}`
	ordersKey := `orders{host.name="web-1",kind="web",service.name="checkout"}`
	if len(got) != 2 || got[depthKey] == nil || got[ordersKey] == nil {
		t.Fatalf("outliers %v, want exactly %s and %s", got, depthKey, ordersKey)
	}
	if d := got[depthKey]; d.Value != 551 || d.Origin != pb.Origin_ORIGIN_OTLP ||
		d.Session != `otlp:{host.name="web-1",service.name="checkout"}` {
		t.Errorf("queue depth outlier %v, want 551 from the resource's OTLP session", d)
	}
	if o := got[ordersKey]; o.Value < 1e6 || o.Mean < 500 || o.Mean > 1500 {
		t.Errorf("orders outlier %v, want a rate over 10^6/s against about 1000/s", o)
	}
	if !strings.Contains(srv.Log(), fmt.Sprintf("also on 127.0.0.1:%d", port)) {
		t.Errorf("the log does not say the OTLP port:\n%s", srv.Log())
	}
}

func TestMain(m *testing.M) { testserver.Main(m) }
