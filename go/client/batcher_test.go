// The Batcher against the real server: each caller gets exactly its own outliers, indices translated, and a
// metric added at a low rate is sent by the linger, not held back for a full message.

package client_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/internal/testserver"
	"github.com/streamer-dev/streamer/go/pb"
)

// callerMetrics is caller c's sequence: its own series, normal values with spikes.
func callerMetrics(c, n int) []*pb.Metric {
	rng := rand.New(rand.NewPCG(uint64(c), 23))
	out := make([]*pb.Metric, n)
	for i := range out {
		x := 50 + 5*rng.NormFloat64()
		if rng.IntN(40) == 0 {
			x += 60
		}
		out[i] = &pb.Metric{Name: fmt.Sprintf("caller-%d/series-%d", c, rng.IntN(3)), Value: x}
	}
	return out
}

func TestBatcherGivesEachCallerItsOwnOutliers(t *testing.T) {
	srv := testserver.Shared(t)
	ctx := testContext(t)
	c := newClient(t, srv.Addr)
	const callers, each = 6, 600
	// What each caller's metrics give on a stream of their own: a series' state depends only on the order of
	// its own values, which the Batcher keeps (a caller's Adds stay in order), so coalescing changes nothing.
	want := make([]*pb.OutliersResponse, callers)
	for k := range callers {
		st := c.OpenStream(ctx, client.StreamConfig{})
		if err := st.Send(ctx, callerMetrics(k, each)); err != nil {
			t.Fatal(err)
		}
		st.CloseSend()
		want[k] = (<-st.Results()).Response
		if err := st.Err(); err != nil {
			t.Fatal(err)
		}
		if len(want[k].Outliers) == 0 {
			t.Fatalf("caller %d: nothing flagged, the test shows nothing", k)
		}
	}

	// MaxMetrics 64 and a long linger: messages fill up with several callers' pieces of 1-5 metrics.
	b := c.NewBatcher(ctx, client.BatcherConfig{MaxMetrics: 64, Linger: time.Second})
	got := make([][]*pb.Outlier, callers)
	var wg sync.WaitGroup
	for k := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			metrics := callerMetrics(k, each)
			rng := rand.New(rand.NewPCG(uint64(k), 1))
			var pending []*client.Pending
			var starts, sizes []int
			for i := 0; i < len(metrics); {
				n := min(1+rng.IntN(5), len(metrics)-i)
				p, err := b.Add(metrics[i : i+n]...)
				if err != nil {
					t.Error(err)
					return
				}
				pending, starts, sizes = append(pending, p), append(starts, i), append(sizes, n)
				i += n
			}
			for j, p := range pending {
				outliers, err := p.Wait(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				for _, o := range outliers {
					if int(o.Index) >= sizes[j] || o.Value != metrics[starts[j]+int(o.Index)].Value {
						t.Errorf("caller %d, add %d: outlier %v is not among its metrics", k, j, o)
						return
					}
					o := proto.Clone(o).(*pb.Outlier)
					o.Index += int32(starts[j]) // back to the position in the caller's whole sequence
					got[k] = append(got[k], o)
				}
			}
		}()
	}
	wg.Wait()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	messages, metrics := b.Sent()
	if metrics != callers*each || messages < callers*each/64 {
		t.Fatalf("sent %d metrics in %d messages, want %d in at least %d", metrics, messages, callers*each,
			callers*each/64)
	}
	for k := range callers {
		if len(got[k]) != len(want[k].Outliers) {
			t.Fatalf("caller %d: %d outliers through the batcher, %d alone", k, len(got[k]), len(want[k].Outliers))
		}
		for i, w := range want[k].Outliers {
			if g := got[k][i]; !proto.Equal(g, w) {
				t.Fatalf("caller %d, outlier %d: %v through the batcher, %v alone", k, i, g, w)
			}
		}
	}
}

func TestBatcherLingerSendsALoneMetric(t *testing.T) {
	srv := testserver.Shared(t)
	ctx := testContext(t)
	c := newClient(t, srv.Addr)
	// A message of 10 000 would never fill: only the linger can send these. Each Add waits for its answer,
	// so every metric leaves alone; the deadline is generous (what is asserted is that it comes at all).
	b := c.NewBatcher(ctx, client.BatcherConfig{Linger: 20 * time.Millisecond})
	defer b.Close()
	for i := range 3 {
		p, err := b.Add(&pb.Metric{Name: "lone", Value: float64(i)})
		if err != nil {
			t.Fatal(err)
		}
		wait, cancel := context.WithTimeout(ctx, 30*time.Second)
		outliers, err := p.Wait(wait)
		cancel()
		if err != nil {
			t.Fatalf("metric %d: %v (the linger did not send it)", i, err)
		}
		if len(outliers) != 0 {
			t.Fatalf("metric %d: outliers %v during the warm-up", i, outliers)
		}
		if messages, _ := b.Sent(); messages != int64(i+1) {
			t.Fatalf("after %d lone metrics, %d messages", i+1, messages)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Add(&pb.Metric{Name: "late"}); err != client.ErrBatcherClosed {
		t.Fatalf("Add after Close: %v, want ErrBatcherClosed", err)
	}
}

func TestBatcherRefusedBatchFailsItsCallers(t *testing.T) {
	srv := testserver.Shared(t)
	ctx := testContext(t)
	c := newClient(t, srv.Addr)
	b := c.NewBatcher(ctx, client.BatcherConfig{Stream: client.StreamConfig{Options: &pb.DetectOptions{Threshold: -1}}})
	p, err := b.Add(&pb.Metric{Name: "x", Value: 1})
	if err != nil {
		t.Fatal(err)
	}
	b.Flush()
	if _, err := p.Wait(ctx); err == nil {
		t.Fatal("a batch with threshold -1 was answered")
	}
	if err := b.Close(); err == nil {
		t.Fatal("Close after a refused batch: no error")
	}
}
