package client_test

import (
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/streamer-dev/streamer/go/internal/testserver"
	"github.com/streamer-dev/streamer/go/pb"
)

// TestStreamRidesThroughServerRestart: the server is stopped (SIGTERM: open streams end with UNAVAILABLE,
// sessions are written to the store; or SIGKILL: nothing is, beyond the last snapshot) and started again on
// the same port and store. The client's Stream reconnects by itself (connection refused while the server is
// down, ALREADY_EXISTS until a killed server's lease expires) and the next spike is judged against the
// baseline from before the restart, exactly as the Go reference computes it.
func TestStreamRidesThroughServerRestart(t *testing.T) {
	for _, how := range []string{"SIGTERM", "SIGKILL"} {
		t.Run(how, func(t *testing.T) {
			store := "sqlite:///" + filepath.Join(t.TempDir(), "streamer.db")
			flags := []string{"--store", store, "--lease-seconds", "2", "--snapshot-seconds", "0.2"}
			first := testserver.Start(t, flags...)
			ctx := testContext(t)
			session := sessionName(t)
			rng := rand.New(rand.NewPCG(5, 5))
			warm := noise(rng, 20)
			ref := &reference{threshold: 2, warmup: 10, series: map[string]*series{}}
			for _, b := range warm {
				ref.batch(b)
			}

			c := newClient(t, first.Addr)
			st, retries := resumingStream(ctx, c, session)
			sendAndWait(t, ctx, st, warm)
			if how == "SIGTERM" {
				if err := first.Terminate(30 * time.Second); err != nil {
					t.Fatal(err)
				}
			} else {
				time.Sleep(time.Second) // past a snapshot interval: the warm-up batches are in the store
				first.Stop()
			}
			testserver.Start(t, append(flags, "--port", first.Port())...)

			spikeAfterReconnect(t, ctx, st, ref, []*pb.Metric{{Name: "x", Value: 90}}, "the restart")
			t.Logf("retries across the restart (codes): %v", retries())
		})
	}
}
