package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/streamer-dev/streamer/go/client"
	"github.com/streamer-dev/streamer/go/internal/testserver"
	"github.com/streamer-dev/streamer/go/pb"
)

// storedSession is `streamer session --store STORE NAME`: the session as the store holds it.
type storedSession struct {
	Seq    uint64 `json:"seq"`
	Series []struct {
		Name   string  `json:"name"`
		Count  int64   `json:"count"`
		Mean   float64 `json:"mean"`
		Spread float64 `json:"spread"`
	} `json:"series"`
}

func readSession(t *testing.T, store, session string) storedSession {
	t.Helper()
	bin, err := testserver.Binary()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "session", "--store", store, session).Output()
	if err != nil {
		t.Fatalf("streamer session --store %s %s: %v", store, session, err)
	}
	var s storedSession
	if err := json.Unmarshal(out, &s); err != nil { // Python writes floats as repr: they parse back exactly
		t.Fatal(err)
	}
	return s
}

// seededBatches: n batches of 40 metrics over 25 series (noise, a few spikes), the same for every run.
func seededBatches(n int) [][]*pb.Metric {
	rng := rand.New(rand.NewPCG(18, 18))
	out := make([][]*pb.Metric, n)
	for i := range out {
		batch := make([]*pb.Metric, 40)
		for j := range batch {
			v := 100 + 10*rng.NormFloat64()
			if rng.IntN(50) == 0 {
				v += 80
			}
			batch[j] = &pb.Metric{Name: fmt.Sprintf("host-%d.latency", rng.IntN(25)), Value: v}
		}
		out[i] = batch
	}
	return out
}

// streamAll sends batches through a Stream on session, calling between(k) once k answers have arrived for each
// k in at (sorted), and returns the answers by Seq. Each batch must be answered exactly once.
func streamAll(t *testing.T, ctx context.Context, addr, session string, batches [][]*pb.Metric, at []int,
	between func(k int)) ([]*pb.OutliersResponse, *client.Stream) {
	t.Helper()
	c := newClient(t, addr)
	st, _ := resumingStream(ctx, c, session)
	go func() {
		for _, b := range batches {
			if st.Send(ctx, b) != nil {
				return
			}
			time.Sleep(time.Millisecond) // a collector's pace: the kills land among batches in flight
		}
	}()
	var got []*pb.OutliersResponse
	var done atomic.Bool
	answers := make(chan int, len(batches))
	go func() { // the kills run beside the stream, as the answers reach each point
		defer done.Store(true)
		n := 0
		for _, k := range at {
			for n < k {
				n = <-answers
			}
			between(k)
		}
	}()
	for r := range st.Results() {
		if r.Seq != uint64(len(got)) {
			t.Fatalf("answer for batch %d, want batch %d (each answer once, in order)", r.Seq, len(got))
		}
		if r.Response.GetForgotten() {
			t.Errorf("batch %d: answered as forgotten: the server no longer had its first answer", r.Seq)
		}
		got = append(got, r.Response)
		answers <- len(got)
		if len(got) == len(batches) {
			for !done.Load() && ctx.Err() == nil {
				time.Sleep(10 * time.Millisecond)
			}
			st.CloseSend()
		}
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	return got, st
}

// TestExactResumeAcrossCrashes: a stream of seeded batches through the Go client while its server is killed
// (SIGKILL: only what the last snapshot holds survives) or stopped (SIGTERM) five times at random points and
// started again on the same port and store. Afterwards every series' count, mean and M2 equal, bit for bit,
// those of the same batches sent to a server that never stopped, and every batch's answer equals that
// server's answer for it: no batch was lost, none counted twice.
func TestExactResumeAcrossCrashes(t *testing.T) {
	batches := seededBatches(600)
	flags := []string{"--lease-seconds", "2", "--snapshot-seconds", "0.2"}
	refStore := "sqlite:///" + filepath.Join(t.TempDir(), "reference.db")
	ref := testserver.Start(t, append(flags, "--store", refStore)...)
	ctx := testContext(t)
	want, _ := streamAll(t, ctx, ref.Addr, "exact", batches, nil, nil)
	if err := ref.Terminate(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	wantState := readSession(t, refStore, "exact")
	flagged := 0
	for _, r := range want {
		flagged += len(r.GetIndices())
	}
	if flagged < 20 || len(wantState.Series) != 25 || wantState.Seq != uint64(len(batches)) {
		t.Fatalf("reference run: %d outliers, %d series, seq %d: the test data does not exercise the detector",
			flagged, len(wantState.Series), wantState.Seq)
	}

	for i, how := range []string{"SIGKILL", "SIGTERM"} {
		t.Run(how, func(t *testing.T) {
			ctx := testContext(t)
			store := "sqlite:///" + filepath.Join(t.TempDir(), "streamer.db")
			srv := testserver.Start(t, append(flags, "--store", store)...)
			port := srv.Port()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			var at []int
			for len(at) < 5 {
				if k := 20 + rng.IntN(len(batches)-40); !slices.Contains(at, k) {
					at = append(at, k)
				}
			}
			slices.Sort(at)
			restarts := 0
			got, st := streamAll(t, ctx, srv.Addr, "exact", batches, at, func(k int) {
				time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond) // before or after a snapshot
				if how == "SIGKILL" {
					srv.Stop()
				} else if err := srv.Terminate(30 * time.Second); err != nil {
					t.Error(err)
				}
				srv = testserver.Start(t, append(flags, "--store", store, "--port", port)...)
				restarts++
			})
			if err := srv.Terminate(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d restarts at answers %v; %d reconnects", restarts, at, st.Reconnects())
			if restarts != len(at) || st.Reconnects() < len(at) {
				t.Fatalf("%d restarts, %d reconnects: want %d of each", restarts, st.Reconnects(), len(at))
			}
			duplicates := 0
			for i := range want {
				if got[i].GetDuplicate() {
					duplicates++
				}
				if !slices.Equal(got[i].GetIndices(), want[i].GetIndices()) ||
					!outliersEqual(got[i].GetOutliers(), want[i].GetOutliers()) {
					t.Errorf("batch %d: answer %v, want %v (as from the server that never stopped)", i, got[i], want[i])
				}
			}
			t.Logf("%d answers were duplicates (applied before a restart, answered from what the server kept)", duplicates)
			gotState := readSession(t, store, "exact")
			if gotState.Seq != wantState.Seq || len(gotState.Series) != len(wantState.Series) {
				t.Fatalf("stored seq %d with %d series, want %d with %d", gotState.Seq, len(gotState.Series),
					wantState.Seq, len(wantState.Series))
			}
			for i, w := range wantState.Series {
				if g := gotState.Series[i]; g != w { // exact: ==, not close enough
					t.Errorf("series %d: %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

// outliersEqual: the same outliers, bit for bit (the states they were judged against are identical).
func outliersEqual(a, b []*pb.Outlier) bool {
	return slices.EqualFunc(a, b, func(x, y *pb.Outlier) bool { return proto.Equal(x, y) })
}

// TestStreamKeepsAtMostMaxKeptBytes: on a durable store a session's batches are kept until the server reports
// them durable; with a small MaxKeptBytes, Send waits (and asks the server how far its store has come) rather
// than keep more, and the stream still ends with every batch answered once.
func TestStreamKeepsAtMostMaxKeptBytes(t *testing.T) {
	store := "sqlite:///" + filepath.Join(t.TempDir(), "streamer.db")
	srv := testserver.Start(t, "--store", store, "--snapshot-seconds", "0.2", "--lease-seconds", "2")
	ctx := testContext(t)
	batches := seededBatches(60)
	size := proto.Size(&pb.OutliersRequest{Metrics: batches[0]})
	limit := 5 * size
	st := newClient(t, srv.Addr).OpenStream(ctx, client.StreamConfig{Session: sessionName(t), MaxKeptBytes: limit})
	go func() {
		defer st.CloseSend()
		for _, b := range batches {
			if st.Send(ctx, b) != nil {
				return
			}
		}
	}()
	answers, most := 0, 0
	for range st.Results() {
		answers++
		_, kept := st.Kept()
		most = max(most, kept)
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if answers != len(batches) || most > limit+2*size || st.Durable() == 0 {
		t.Fatalf("%d answers, at most %d bytes kept (limit %d, a batch is %d), durable %d", answers, most, limit,
			size, st.Durable())
	}
	t.Logf("at most %d bytes kept (limit %d); durable_seq %d", most, limit, st.Durable())
}

// TestFailoverToAnotherServerOnOneRedis: two servers on one Redis behind a proxy (a load balancer); a stream
// goes to A; A is killed (kill -9) and the proxy moves to B. The Stream reconnects to B, which takes the
// session once A's lease expires, from the last snapshot in Redis; the batches after it are sent again, so
// every answer and the stored state equal, bit for bit, those of a run on a server that never died.
func TestFailoverToAnotherServerOnOneRedis(t *testing.T) {
	redis := testserver.StartRedis(t)
	flags := []string{"--store", redis, "--lease-seconds", "2", "--snapshot-seconds", "0.2"}
	a, b := testserver.Start(t, flags...), testserver.Start(t, flags...)
	ctx := testContext(t)
	batches := seededBatches(300)
	want, _ := streamAll(t, ctx, b.Addr, "reference", batches, nil, nil)

	proxy := testserver.NewProxy(t, a.Addr)
	got, st := streamAll(t, ctx, proxy.Addr, "failover", batches, []int{120}, func(int) {
		a.Stop() // SIGKILL
		proxy.Retarget(b.Addr)
		proxy.Cut(0)
	})
	if st.Reconnects() < 1 || !strings.Contains(b.Log(), "session 'failover': resumed from the store") {
		t.Fatalf("%d reconnects; server B's log:\n%s", st.Reconnects(), b.Log())
	}
	for i := range want {
		if !slices.Equal(got[i].GetIndices(), want[i].GetIndices()) ||
			!outliersEqual(got[i].GetOutliers(), want[i].GetOutliers()) {
			t.Errorf("batch %d: answer %v, want %v", i, got[i], want[i])
		}
	}
	if err := b.Terminate(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	gotState, wantState := readSession(t, redis, "failover"), readSession(t, redis, "reference")
	if gotState.Seq != wantState.Seq || !slices.Equal(gotState.Series, wantState.Series) {
		t.Fatalf("stored state after the failover differs from the reference:\n%+v\n%+v", gotState, wantState)
	}
}
