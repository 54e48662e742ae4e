// Package client is the Go client of streamer: Detect for one batch, OpenStream for a resumable DetectStream.
//
// The wire types are those of github.com/streamer-dev/streamer/go/pb, generated from protos/outliers.proto;
// this package adds deadlines, reconnection with backoff and session resume, not a second data model.
package client

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/streamer-dev/streamer/go/pb"
)

// DefaultTimeout is the deadline of one Detect call when New is not given WithTimeout.
const DefaultTimeout = 30 * time.Second

// Client holds one gRPC connection (a grpc.ClientConn, which reconnects by itself) to a streamer server.
// It is safe for concurrent use; Close it when done.
type Client struct {
	addr    string
	conn    *grpc.ClientConn
	stub    pb.OutliersClient
	timeout time.Duration
}

type settings struct {
	timeout  time.Duration
	creds    credentials.TransportCredentials // nil: plaintext
	dialOpts []grpc.DialOption
}

// Option configures New.
type Option func(*settings)

// WithTimeout sets the deadline of each Detect call (0: only the caller's context limits it).
func WithTimeout(d time.Duration) Option { return func(s *settings) { s.timeout = d } }

// WithMaxMessageBytes raises the largest message the client sends or accepts (gRPC's default is 4 MiB),
// for batches of more than about 100 000 metrics; the server has its own limit (--max-message-mb).
func WithMaxMessageBytes(n int) Option {
	return WithDialOptions(grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(n), grpc.MaxCallRecvMsgSize(n)))
}

// WithDialOptions adds options to grpc.NewClient, after the transport credentials (plaintext, or those of
// WithTLS or WithTransportCredentials).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) { s.dialOpts = append(s.dialOpts, opts...) }
}

// New makes a client of the server at addr ("host:port"). It does not connect yet: the connection is made
// by the first call, and remade by gRPC after it is lost.
func New(addr string, opts ...Option) (*Client, error) {
	s := settings{timeout: DefaultTimeout}
	for _, o := range opts {
		o(&s)
	}
	// Plaintext unless told otherwise (a server without --tls-cert); said explicitly rather than left to a default.
	creds := s.creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	dial := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, s.dialOpts...)
	conn, err := grpc.NewClient(addr, dial...)
	if err != nil {
		return nil, fmt.Errorf("client for %s: %w", addr, err)
	}
	return &Client{addr: addr, conn: conn, stub: pb.NewOutliersClient(conn), timeout: s.timeout}, nil
}

// Close closes the connection; streams still open on it end with codes.Canceled.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection, for other services on the same server (health, reflection).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Detect judges one batch on its own (the unary RPC): per metric name, values more than k population
// standard deviations from that name's mean in this batch are flagged. opts may be nil (server defaults).
// The call's deadline is the client's timeout or ctx's, whichever is earlier.
func (c *Client) Detect(ctx context.Context, metrics []*pb.Metric, opts *pb.DetectOptions) (*pb.OutliersResponse, error) {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	resp, err := c.stub.Detect(ctx, &pb.OutliersRequest{Metrics: metrics, Options: opts})
	if err != nil {
		// %w keeps the status: status.Code(err) still gives the server's code.
		return nil, fmt.Errorf("detect %d metrics on %s: %w", len(metrics), c.addr, err)
	}
	return resp, nil
}

// Metric is a *pb.Metric of one observation; a zero t leaves the time unset.
func Metric(name string, value float64, t time.Time) *pb.Metric {
	m := &pb.Metric{Name: name, Value: value}
	if !t.IsZero() {
		m.Time = timestamppb.New(t)
	}
	return m
}
