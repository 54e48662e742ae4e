package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"

	"github.com/streamer-dev/streamer/go/pb"
)

// Watch is an open subscription to the server's outliers (the Watch RPC). Recv returns each event as it
// comes: an Outlier, or a Dropped notice of outliers this subscriber missed by reading too slowly. Cancel
// the context given to Watch to end it.
type Watch struct {
	stream grpc.ServerStreamingClient[pb.WatchEvent]
}

// Watch subscribes to every outlier the server finds from now on (any DetectStream, session or OTLP export,
// any worker and, on a shared Redis store, any replica), filtered by session ("" = all) and series-key prefix
// ("" = all). It returns once the subscription is in place on the server, so values sent afterwards are seen.
// The client's timeout does not apply: ctx alone bounds the subscription.
func (c *Client) Watch(ctx context.Context, session, prefix string) (*Watch, error) {
	stream, err := c.stub.Watch(ctx, &pb.WatchRequest{Session: session, Prefix: prefix})
	if err != nil {
		return nil, fmt.Errorf("watch on %s: %w", c.addr, err)
	}
	// The server sends its headers once the subscriber is registered (and known to the other workers).
	if _, err := stream.Header(); err != nil {
		return nil, fmt.Errorf("watch on %s: %w", c.addr, err)
	}
	return &Watch{stream: stream}, nil
}

// Recv waits for the next event; io.EOF when the server ended the stream without an error.
func (w *Watch) Recv() (*pb.WatchEvent, error) {
	ev, err := w.stream.Recv()
	if errors.Is(err, io.EOF) {
		return nil, io.EOF
	}
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	return ev, nil
}
