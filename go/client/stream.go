// The resumable DetectStream sender: batches out, answers in, reconnection with backoff under one session.

package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/streamer-dev/streamer/go/pb"
)

// ErrSendClosed is returned by Send after CloseSend.
var ErrSendClosed = errors.New("send on a stream after CloseSend")

// errNoAnswer marks a gRPC stream given up by the answer watchdog; it is retried like a lost connection.
var errNoAnswer = errors.New("no answer within the answer timeout; connection taken as lost")

// StreamConfig says how OpenStream keeps a DetectStream going. The zero value is usable: no session,
// server-default options, DefaultBackoff, 10 retries, 10 s answer timeout, 64 batches in flight.
type StreamConfig struct {
	// Session names the server-side state to continue. With a session, the per-series baselines survive a
	// reconnection (and a restart of the collector, within the server's --session-ttl); without one, every
	// reconnection starts a fresh private state that has to warm up again.
	Session string
	// Options go with the first message of every gRPC stream this Stream opens (nil: server defaults).
	Options *pb.DetectOptions
	// AnswerTimeout is the deadline of each batch: when the oldest unanswered batch has waited this long
	// (and the answers before it were taken from Results), the connection is taken as dead and the stream is
	// reopened. 0 means 10 s; negative means no deadline.
	AnswerTimeout time.Duration
	// MaxInFlight is how many batches may be sent and not yet answered before Send blocks. 0 means 64.
	MaxInFlight int
	// MaxRetries is how many reconnection attempts in a row (without an answer in between) are made before
	// the Stream gives up. 0 means 10; negative means retry until ctx ends.
	MaxRetries int
	// Backoff spaces the attempts; the zero value is DefaultBackoff.
	Backoff Backoff
	// OnRetry, if set, is called before waiting for reconnection attempt n (from 0) with the error that ended
	// the previous gRPC stream; collectors log it.
	OnRetry func(n int, delay time.Duration, err error)
}

// Result is the answer to one batch.
type Result struct {
	// Seq is the batch's number among the batches Send accepted, from 0, across reconnections.
	Seq uint64
	// Response is the server's answer; Response.Batch counts within one gRPC stream and restarts at 0 after a
	// reconnection, Seq does not.
	Response *pb.OutliersResponse
}

// Stream sends batches to DetectStream and delivers the answers on Results, keeping one gRPC stream open
// and opening a new one (same session, same options) when the connection is lost, the server is
// unavailable, or the server still holds the session for the old stream (ALREADY_EXISTS: it has not yet
// noticed that the old stream is gone).
//
// Delivery is at least once: batches sent but not answered when a connection is lost are sent again on
// the next gRPC stream, in order. If the server had applied such a batch before the connection went, its
// values count twice in the baselines; a lost batch would instead be a gap in which no spike is seen.
//
// Send may be called from several goroutines; Results must be read until it is closed (answers are not
// dropped, so a reader that stops holds up the stream), then Err says why it ended.
type Stream struct {
	client  *Client
	cfg     StreamConfig
	ctx     context.Context
	in      chan []*pb.Metric // batches from Send to the run goroutine, unbuffered: Send returns once taken
	closing chan struct{}     // closed by CloseSend
	once    sync.Once
	results chan Result
	done    chan struct{} // closed when the run goroutine has finished and Results is closed
	err     error         // why the stream ended; written before done is closed

	reconnects atomic.Int64
}

// OpenStream starts a Stream that lives until CloseSend has been called and every batch is answered, until
// ctx ends, or until an error that is not worth a retry (a rejected batch, say). The first gRPC stream is
// opened with the first batch, because the session travels in that batch's message.
func (c *Client) OpenStream(ctx context.Context, cfg StreamConfig) *Stream {
	if cfg.AnswerTimeout == 0 {
		cfg.AnswerTimeout = 10 * time.Second
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 64
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = 10
	}
	s := &Stream{
		client:  c,
		cfg:     cfg,
		ctx:     ctx,
		in:      make(chan []*pb.Metric),
		closing: make(chan struct{}),
		results: make(chan Result, cfg.MaxInFlight),
		done:    make(chan struct{}),
	}
	go s.run()
	return s
}

// Send queues one batch. It blocks while MaxInFlight batches are unanswered or a reconnection is under way,
// and returns an error once the stream has ended, after CloseSend, or when ctx ends first. The batch's
// slice and messages must not be changed afterwards (they may be sent again after a reconnection).
func (s *Stream) Send(ctx context.Context, metrics []*pb.Metric) error {
	select {
	case s.in <- metrics:
		return nil
	case <-s.closing:
		return ErrSendClosed
	case <-s.done:
		if s.err != nil {
			return s.err
		}
		return ErrSendClosed
	case <-ctx.Done():
		return fmt.Errorf("send batch to DetectStream: %w", ctx.Err())
	}
}

// CloseSend says no more batches will be sent; Results is closed once every batch has been answered.
func (s *Stream) CloseSend() { s.once.Do(func() { close(s.closing) }) }

// Results delivers the answer of every batch, in Seq order, and is closed when the stream ends.
func (s *Stream) Results() <-chan Result { return s.results }

// Err waits for the stream to end and says why: nil after CloseSend with every batch answered.
func (s *Stream) Err() error {
	<-s.done
	return s.err
}

// Reconnects is how many times a new gRPC stream was opened after one was lost.
func (s *Stream) Reconnects() int { return int(s.reconnects.Load()) }

type sentBatch struct {
	seq     uint64
	metrics []*pb.Metric
	sentAt  time.Time
}

// run is the Stream's one long-lived goroutine: attempts, and the backoff between them.
func (s *Stream) run() {
	defer close(s.done)
	defer close(s.results)
	var carry []sentBatch // unanswered batches of a lost gRPC stream, to be sent first on the next one
	var nextSeq uint64
	failures := 0
	for {
		progressed, err := s.attempt(&carry, &nextSeq)
		if err == nil {
			return
		}
		if s.ctx.Err() != nil {
			s.err = fmt.Errorf("DetectStream (session %q): %w", s.cfg.Session, s.ctx.Err())
			return
		}
		if progressed {
			failures = 0
		}
		if !s.retryable(err) || (s.cfg.MaxRetries > 0 && failures >= s.cfg.MaxRetries) {
			s.err = err
			return
		}
		delay := s.cfg.Backoff.Delay(failures)
		if s.cfg.OnRetry != nil {
			s.cfg.OnRetry(failures, delay, err)
		}
		failures++
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-s.ctx.Done():
			timer.Stop()
			s.err = fmt.Errorf("DetectStream (session %q): %w", s.cfg.Session, s.ctx.Err())
			return
		}
		s.reconnects.Add(1)
	}
}

// retryable: the connection or the server went away, or the server has not yet released the session of
// the previous gRPC stream. Anything else (a rejected batch, a bad option, our own Close) would fail again.
func (s *Stream) retryable(err error) bool {
	if s.client.conn.GetState() == connectivity.Shutdown {
		return false
	}
	if errors.Is(err, errNoAnswer) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.AlreadyExists:
		return true
	case codes.Canceled:
		// Neither our context (run checked it first) nor our connection: the server cancelled the call,
		// as it does at the end of its shutdown grace period.
		return true
	}
	return false
}

// attempt runs one gRPC stream: sends carry and then new batches, until input ends and everything is
// answered (nil) or the stream fails (the error; carry then holds every batch that still needs an answer).
// progressed says whether any answer arrived, which resets the retry budget.
func (s *Stream) attempt(carry *[]sentBatch, nextSeq *uint64) (progressed bool, err error) {
	queue := *carry
	*carry = nil
	// Open the gRPC stream only once there is a batch to send: the session goes in its message.
	if len(queue) == 0 {
		select {
		case m := <-s.in:
			queue = append(queue, sentBatch{seq: *nextSeq, metrics: m})
			*nextSeq++
		case <-s.closing:
			return false, nil
		case <-s.ctx.Done():
			return false, s.ctx.Err()
		}
	}

	sctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	stream, err := s.client.stub.DetectStream(sctx)
	if err != nil {
		*carry = queue
		return false, fmt.Errorf("open DetectStream (session %q) on %s: %w", s.cfg.Session, s.client.addr, err)
	}

	var (
		mu         sync.Mutex // protects inflight, answered, lastAnswer, delivering
		inflight   []sentBatch
		answered   uint64 // answers on this gRPC stream; the server numbers them from 0
		lastAnswer time.Time
		delivering bool // the receiver is waiting for the reader of Results; not the server's delay
		recvErr    error
		gotAnswer  atomic.Bool
		stalled    atomic.Bool
	)
	slots := make(chan struct{}, s.cfg.MaxInFlight)
	recvDone := make(chan struct{})

	// Receive goroutine: answers arrive while the sender keeps sending (flow control would otherwise let a
	// full response window block the server and, through it, our Send).
	go func() {
		defer close(recvDone)
		for {
			resp, err := stream.Recv()
			if err != nil {
				recvErr = err
				return
			}
			mu.Lock()
			if len(inflight) == 0 || resp.GetBatch() != answered {
				mu.Unlock()
				recvErr = status.Errorf(codes.Internal, "answer numbered %d, expected %d with %d batch(es) unanswered",
					resp.GetBatch(), answered, len(inflight))
				cancel()
				return
			}
			b := inflight[0]
			inflight = inflight[1:]
			answered++
			delivering = true
			mu.Unlock()
			<-slots
			gotAnswer.Store(true)
			select {
			case s.results <- Result{Seq: b.seq, Response: resp}:
			case <-s.ctx.Done():
				recvErr = s.ctx.Err()
				return
			}
			mu.Lock()
			delivering, lastAnswer = false, time.Now()
			mu.Unlock()
		}
	}()

	// Answer watchdog: a connection that silently died (no RST, no GOAWAY) shows up as answers that never come.
	if s.cfg.AnswerTimeout > 0 {
		go func() {
			tick := time.NewTicker(max(s.cfg.AnswerTimeout/4, time.Millisecond))
			defer tick.Stop()
			for {
				select {
				case <-tick.C:
				case <-recvDone:
					return
				}
				mu.Lock()
				waiting := len(inflight) > 0 && !delivering &&
					time.Since(later(inflight[0].sentAt, lastAnswer)) > s.cfg.AnswerTimeout
				mu.Unlock()
				if waiting {
					stalled.Store(true)
					cancel()
					return
				}
			}
		}()
	}

	// fail ends this gRPC stream and hands every unanswered batch (in order) to the next one.
	fail := func(sendErr error, unsent []sentBatch) (bool, error) {
		cancel()
		<-recvDone
		mu.Lock()
		*carry = append(append([]sentBatch(nil), inflight...), unsent...)
		mu.Unlock()
		// Which error ended the stream: the watchdog's, else a local Send failure (the receiver then only saw
		// our cancel), else the status the receiver got (Send reports a failed stream as a bare io.EOF).
		err := recvErr
		switch {
		case stalled.Load():
			err = errNoAnswer
		case sendErr != nil && sendErr != io.EOF:
			err = sendErr
		case err == nil || err == io.EOF:
			err = status.Error(codes.Internal, "the server ended the stream with batches unanswered")
		}
		what := "DetectStream"
		if len(*carry) > 0 {
			what = fmt.Sprintf("DetectStream, batch %d", (*carry)[0].seq)
		}
		return gotAnswer.Load(), fmt.Errorf("%s (session %q) on %s: %w", what, s.cfg.Session, s.client.addr, err)
	}

	first := true
	for {
		if len(queue) == 0 {
			select {
			case m := <-s.in:
				queue = append(queue, sentBatch{seq: *nextSeq, metrics: m})
				*nextSeq++
			case <-s.closing:
				// Every batch is sent: half-close, then the receiver reads answers until the server's io.EOF.
				if err := stream.CloseSend(); err != nil {
					return fail(err, nil)
				}
				<-recvDone
				mu.Lock()
				left := len(inflight)
				mu.Unlock()
				if recvErr == io.EOF && left == 0 && !stalled.Load() {
					return gotAnswer.Load(), nil
				}
				return fail(nil, nil)
			case <-recvDone:
				return fail(nil, nil)
			case <-sctx.Done():
				return fail(nil, nil)
			}
		}
		b := queue[0]
		select {
		case slots <- struct{}{}:
		case <-recvDone:
			return fail(nil, queue)
		case <-sctx.Done():
			return fail(nil, queue)
		}
		queue = queue[1:]
		req := &pb.OutliersRequest{Metrics: b.metrics}
		if first {
			// Session and options are read from the first message of each gRPC stream only.
			req.Session, req.Options = s.cfg.Session, s.cfg.Options
			first = false
		}
		b.sentAt = time.Now()
		mu.Lock()
		inflight = append(inflight, b) // before Send: the answer may come back before Send returns
		mu.Unlock()
		if err := stream.Send(req); err != nil {
			// io.EOF: the stream is over and its status comes from Recv.
			return fail(err, queue)
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
