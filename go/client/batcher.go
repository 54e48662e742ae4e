// Adaptive batching: callers add metrics one at a time or in small groups; the Batcher coalesces them into
// DetectStream messages that are large when the rate is high and leave after at most a linger time when it
// is low, and hands each caller the outliers among its own metrics.

package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/streamer-dev/streamer/go/pb"
)

// Batcher defaults, chosen by measurement (go/README.md, "Adaptive batching"): at 10 000 metrics a message
// the server's cost per metric is within a few percent of its cost at 100 000, and 5 ms of linger keeps a
// metric's wait at low rates well under a typical scrape or flush interval.
const (
	DefaultBatchMetrics = 10_000
	DefaultBatchBytes   = 1 << 20
	DefaultLinger       = 5 * time.Millisecond
)

// ErrBatcherClosed is returned by Add after Close.
var ErrBatcherClosed = errors.New("client: batcher closed")

// BatcherConfig says how a Batcher coalesces. The zero value is usable: the defaults above, a Stream
// without a session and with server-default options.
type BatcherConfig struct {
	// MaxMetrics: a message is sent as soon as it holds this many metrics (0: DefaultBatchMetrics).
	MaxMetrics int
	// MaxBytes: ... or when the metrics' encoded size reaches this many bytes (an estimate from the name
	// lengths, values and times, within a few bytes a metric; 0: DefaultBatchBytes). Keep it under the
	// server's --max-message-mb.
	MaxBytes int
	// Linger: a message is sent at the latest this long after its first metric was added (0: DefaultLinger;
	// negative: no linger, every Add is sent at once).
	Linger time.Duration
	// Stream configures the DetectStream the messages go through (session, options, retries, in flight).
	Stream StreamConfig
}

// piece is one Add's metrics in a message: the message's positions [offset, offset+n).
type piece struct {
	offset, n int
	done      func(outliers []*pb.Outlier, err error)
}

type message struct {
	metrics []*pb.Metric
	pieces  []piece
	bytes   int
	gen     uint64 // which message this is, for the linger timer
}

// Batcher coalesces Add calls into messages of one Stream. Safe for concurrent use; Close it when done.
type Batcher struct {
	cfg    BatcherConfig
	stream *Stream
	sealed chan *message // to the sender goroutine, in order

	mu      sync.Mutex // protects cur, gen, closed and timer
	cur     *message
	gen     uint64
	closed  bool
	timer   *time.Timer
	flushed chan struct{} // closed when the sender and the receiver have finished

	qmu      sync.Mutex // protects inflight: messages sent, awaiting their answer, in Seq order
	inflight []*message
	failed   error

	messages, metrics atomic.Int64 // sent so far
}

// NewBatcher opens a Stream (OpenStream) and starts coalescing into it.
func (c *Client) NewBatcher(ctx context.Context, cfg BatcherConfig) *Batcher {
	if cfg.MaxMetrics <= 0 {
		cfg.MaxMetrics = DefaultBatchMetrics
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultBatchBytes
	}
	if cfg.Linger == 0 {
		cfg.Linger = DefaultLinger
	}
	b := &Batcher{cfg: cfg, stream: c.OpenStream(ctx, cfg.Stream), sealed: make(chan *message, 1),
		flushed: make(chan struct{})}
	b.cur = b.fresh()
	sent := make(chan struct{})
	go b.send(ctx, sent)
	go b.receive(sent)
	return b
}

func (b *Batcher) fresh() *message {
	b.gen++
	return &message{gen: b.gen, metrics: make([]*pb.Metric, 0, min(b.cfg.MaxMetrics, 1024))}
}

// metricBytes estimates a Metric's encoded size in a request: name, value, time, the tags and lengths.
func metricBytes(m *pb.Metric) int {
	n := 4 + len(m.GetName()) + 9
	if m.GetTime() != nil {
		n += 14
	}
	return n
}

// AddFunc queues metrics (one or a few; the slice and messages must not be changed afterwards) and calls
// done once with the outliers among them, in order, each Outlier.Index its position in metrics; or with the
// error that ended the stream. done runs on the Batcher's receiving goroutine: it should be quick, and must
// not call Add or AddFunc (while the window is full, Add waits for that goroutine). AddFunc
// blocks while the Stream's in-flight window is full, and returns an error once the Batcher is closed.
func (b *Batcher) AddFunc(metrics []*pb.Metric, done func(outliers []*pb.Outlier, err error)) error {
	size := 0
	for _, m := range metrics {
		size += metricBytes(m)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrBatcherClosed
	}
	m := b.cur
	if len(m.metrics) > 0 && (len(m.metrics)+len(metrics) > b.cfg.MaxMetrics || m.bytes+size > b.cfg.MaxBytes) {
		b.sealLocked() // this Add does not fit: the message leaves without it (a piece is never split)
		m = b.cur
	}
	if len(m.metrics) == 0 && b.cfg.Linger > 0 {
		gen := m.gen
		if b.timer == nil {
			b.timer = time.AfterFunc(b.cfg.Linger, func() { b.lingered(gen) })
		} else {
			b.timer.Stop()
			b.timer = time.AfterFunc(b.cfg.Linger, func() { b.lingered(gen) })
		}
	}
	m.pieces = append(m.pieces, piece{offset: len(m.metrics), n: len(metrics), done: done})
	m.metrics = append(m.metrics, metrics...)
	m.bytes += size
	if len(m.metrics) >= b.cfg.MaxMetrics || m.bytes >= b.cfg.MaxBytes || b.cfg.Linger < 0 {
		b.sealLocked()
	}
	return nil
}

// Pending is the answer to one Add.
type Pending struct {
	done     chan struct{}
	outliers []*pb.Outlier
	err      error
}

// Add queues metrics like AddFunc and returns their Pending answer.
func (b *Batcher) Add(metrics ...*pb.Metric) (*Pending, error) {
	p := &Pending{done: make(chan struct{})}
	err := b.AddFunc(metrics, func(o []*pb.Outlier, err error) {
		p.outliers, p.err = o, err
		close(p.done)
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Done is closed once the answer is in.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Wait returns the outliers among the Add's metrics (Index: the position among them), or why there are none.
func (p *Pending) Wait(ctx context.Context) ([]*pb.Outlier, error) {
	select {
	case <-p.done:
		return p.outliers, p.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for outliers: %w", ctx.Err())
	}
}

// Sent is how many messages, and metrics in them, the Batcher has handed to its Stream so far.
func (b *Batcher) Sent() (messages, metrics int64) { return b.messages.Load(), b.metrics.Load() }

// Flush sends what has been added so far without waiting for the linger.
func (b *Batcher) Flush() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed && len(b.cur.metrics) > 0 {
		b.sealLocked()
	}
}

// Close sends what is left, waits for every answer (each Add's done is called), and closes the Stream.
func (b *Batcher) Close() error {
	b.mu.Lock()
	if !b.closed {
		if len(b.cur.metrics) > 0 {
			b.sealLocked()
		}
		b.closed = true
		if b.timer != nil {
			b.timer.Stop()
		}
		close(b.sealed)
	}
	b.mu.Unlock()
	<-b.flushed
	return b.stream.Err()
}

func (b *Batcher) lingered(gen uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed && b.cur.gen == gen && len(b.cur.metrics) > 0 {
		b.sealLocked()
	}
}

// sealLocked hands the current message to the sender (blocking while the sender is busy: backpressure).
func (b *Batcher) sealLocked() {
	m := b.cur
	b.cur = b.fresh()
	b.sealed <- m
}

// send passes sealed messages to the Stream in order, after noting each as awaiting its answer.
func (b *Batcher) send(ctx context.Context, sent chan<- struct{}) {
	defer close(sent)
	defer b.stream.CloseSend()
	for m := range b.sealed {
		b.qmu.Lock()
		failed := b.failed
		if failed == nil {
			b.inflight = append(b.inflight, m)
		}
		b.qmu.Unlock()
		if failed != nil {
			m.fail(failed)
			continue
		}
		if err := b.stream.Send(ctx, m.metrics); err != nil {
			b.fail(fmt.Errorf("batcher: %w", err))
			continue
		}
		b.messages.Add(1)
		b.metrics.Add(int64(len(m.metrics)))
	}
}

// receive matches the Stream's answers (in Seq order, one per message sent) to their messages.
func (b *Batcher) receive(sent <-chan struct{}) {
	defer close(b.flushed)
	for r := range b.stream.Results() {
		b.qmu.Lock()
		if len(b.inflight) == 0 {
			b.qmu.Unlock()
			b.fail(fmt.Errorf("batcher: an answer (batch %d) for no message", r.Seq))
			break
		}
		m := b.inflight[0]
		b.inflight[0] = nil
		b.inflight = b.inflight[1:]
		b.qmu.Unlock()
		m.deliver(r.Response)
	}
	for range b.stream.Results() { // after a failure: let the Stream finish
	}
	// The Stream has ended: on an error, or after CloseSend with every message answered (nothing is left).
	err := b.stream.Err()
	if err == nil {
		err = errors.New("the stream ended before this message was answered")
	}
	b.fail(fmt.Errorf("batcher: %w", err)) // the sender fails the messages sealed from now on
	<-sent
}

// fail ends every message awaiting its answer, and those sent later, with err.
func (b *Batcher) fail(err error) {
	b.qmu.Lock()
	if b.failed == nil {
		b.failed = err
	}
	pending := b.inflight
	b.inflight = nil
	b.qmu.Unlock()
	for _, m := range pending {
		m.fail(err)
	}
}

func (m *message) fail(err error) {
	for _, p := range m.pieces {
		p.done(nil, err)
	}
}

// deliver splits a message's outliers among its pieces: indices are ascending, so one walk does it.
func (m *message) deliver(resp *pb.OutliersResponse) {
	outliers := resp.GetOutliers()
	j := 0
	for _, p := range m.pieces {
		start := j
		for j < len(outliers) && int(outliers[j].GetIndex()) < p.offset+p.n {
			outliers[j].Index -= int32(p.offset)
			j++
		}
		var mine []*pb.Outlier
		if j > start {
			mine = outliers[start:j:j]
		}
		p.done(mine, nil)
	}
}
