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
	"google.golang.org/protobuf/proto"

	"github.com/streamer-dev/streamer/go/pb"
)

// ErrSendClosed is returned by Send after CloseSend.
var ErrSendClosed = errors.New("send on a stream after CloseSend")

// errNoAnswer marks a gRPC stream given up by the answer watchdog; it is retried like a lost connection.
var errNoAnswer = errors.New("no answer within the answer timeout; connection taken as lost")

// StreamConfig says how OpenStream keeps a DetectStream going. The zero value is usable: no session,
// server-default options, DefaultBackoff, 10 retries, 10 s answer timeout, 64 batches in flight, 64 MiB kept.
type StreamConfig struct {
	// Session names the server-side state to continue. With a session, the per-series baselines survive a
	// reconnection and a restart of the server or of the collector (within the server's --session-ttl), and
	// every batch is applied to them exactly once (see Stream); without one, every reconnection starts a
	// fresh private state that has to warm up again.
	Session string
	// Options go with the first message of every gRPC stream this Stream opens (nil: server defaults).
	Options *pb.DetectOptions
	// AnswerTimeout is the deadline of each batch: when the oldest unanswered batch has waited this long
	// (and the answers before it were taken from Results), the connection is taken as dead and the stream is
	// reopened. 0 means 10 s; negative means no deadline.
	AnswerTimeout time.Duration
	// MaxInFlight is how many batches may be sent and not yet answered before Send blocks. 0 means 64; the
	// server keeps the answers of a session's last 1024 batches, so keep it below that.
	MaxInFlight int
	// MaxKeptBytes bounds the batches a session's Stream keeps after their answer, until the server reports
	// them durable (in its store): Send blocks while this many bytes (their encoded size) are kept. A server
	// makes a busy session durable every --snapshot-seconds (5 s by default), so a collector sending R bytes a
	// second keeps about R x (snapshot interval + one store write) bytes. 0 means 64 MiB.
	MaxKeptBytes int
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
	// reconnection, Seq does not. Response.Duplicate says the batch had been applied before a reconnection
	// (its answer was lost with the connection): its outliers are those of that first application, unless
	// Response.Forgotten says the server no longer kept them.
	Response *pb.OutliersResponse
}

// Stream sends batches to DetectStream and delivers the answers on Results, keeping one gRPC stream open
// and opening a new one (same session, same options) when the connection is lost, the server is
// unavailable, or the server still holds the session for the old stream (ALREADY_EXISTS: it has not yet
// noticed that the old stream is gone).
//
// With a session, batches are numbered (OutliersRequest.seq) and kept until the server reports them durable
// (OutliersResponse.durable_seq, bounded by MaxKeptBytes). Every gRPC stream opens with a request without
// metrics that asks where the session stands; then the batches it has not applied are sent again, in order,
// and those it had applied but not answered are sent to fetch their answer (the server does not apply them
// again). So the session's state is exactly that of a run without failures, even after a crash of the server
// (kill -9): nothing that was not reported durable is lost, nothing is counted twice. Each batch's answer is
// delivered on Results once; a batch the server lost in a crash is judged again after it, and gives the
// same answer, which is not delivered twice. A session written meanwhile by another client is outside this
// promise: one session has one writer.
//
// Without a session (or on a server whose store is memory://, OutliersResponse.ephemeral) a batch is
// forgotten once answered: delivery is at least once, as batches sent but not answered when a connection is
// lost are sent again, and may count twice in a private state.
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
	room    chan struct{} // signalled when kept batches are dropped (Send may go on)

	mu        sync.Mutex // protects the fields below (the run goroutine and each gRPC stream's receiver)
	kept      []*sentBatch
	keptBytes int
	nextSeq   uint64 // Seq of the next batch Send accepts
	base      uint64 // the session's applied seq when this Stream first asked: batch Seq n is seq base+n+1
	haveBase  bool

	reconnects atomic.Int64
	applied    atomic.Uint64
	durable    atomic.Uint64
}

// OpenStream starts a Stream that lives until CloseSend has been called and every batch is answered, until
// ctx ends, or until an error that is not worth a retry (a rejected batch, say). The first gRPC stream is
// opened with the first batch.
func (c *Client) OpenStream(ctx context.Context, cfg StreamConfig) *Stream {
	if cfg.AnswerTimeout == 0 {
		cfg.AnswerTimeout = 10 * time.Second
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 64
	}
	if cfg.MaxKeptBytes <= 0 {
		cfg.MaxKeptBytes = 64 << 20
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
		room:    make(chan struct{}, 1),
	}
	go s.run()
	return s
}

// Send queues one batch. It blocks while MaxInFlight batches are unanswered, MaxKeptBytes are kept, or a
// reconnection is under way, and returns an error once the stream has ended, after CloseSend, or when ctx
// ends first. The batch's slice and messages must not be changed afterwards (they may be sent again).
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

// CloseSend says no more batches will be sent; Results is closed once every batch has been answered. The
// server writes the session to its store when the stream ends.
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

// Durable is the session's durable_seq as the server last reported it: batches numbered up to it are in its
// store. AppliedSeq is its applied_seq. Batch Seq n carries the number FirstSeq()+n.
func (s *Stream) Durable() uint64 { return s.durable.Load() }

// AppliedSeq is the session's applied_seq as the server last reported it.
func (s *Stream) AppliedSeq() uint64 { return s.applied.Load() }

// Kept is how many batches, and how many bytes of them, the Stream keeps (unanswered, or not yet durable).
func (s *Stream) Kept() (batches, bytes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.kept), s.keptBytes
}

type sentBatch struct {
	seq      uint64 // among the batches Send accepted
	wire     uint64 // OutliersRequest.seq (session streams; 0 until the session's standing is known)
	metrics  []*pb.Metric
	size     int
	answered bool      // its answer was delivered on Results
	sentAt   time.Time // on the current gRPC stream
	hello    bool      // the request without metrics that opens a session's gRPC stream
	probe    bool      // a request without metrics, sent only to learn durable_seq (see probeInterval)
}

// probeInterval: while MaxKeptBytes holds up Send, a request without metrics is sent this often; its answer
// says how far the store has come (durable_seq), so kept batches can be dropped.
const probeInterval = 100 * time.Millisecond

// run is the Stream's one long-lived goroutine: attempts, and the backoff between them.
func (s *Stream) run() {
	defer close(s.done)
	defer close(s.results)
	failures := 0
	for {
		progressed, err := s.attempt()
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

// take accepts a batch from Send into the kept list.
func (s *Stream) take(m []*pb.Metric) *sentBatch {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := &sentBatch{seq: s.nextSeq, metrics: m, size: proto.Size(&pb.OutliersRequest{Metrics: m})}
	s.nextSeq++
	s.kept = append(s.kept, b)
	s.keptBytes += b.size
	return b
}

// input is s.in while MaxKeptBytes allows another batch, else nil (a select on it then waits for s.room).
func (s *Stream) input() <-chan []*pb.Metric {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.kept) > 0 && s.keptBytes >= s.cfg.MaxKeptBytes {
		return nil
	}
	return s.in
}

// forget drops the kept batches that keep() no longer wants; the caller holds s.mu.
func (s *Stream) forget(keep func(b *sentBatch) bool) {
	before := len(s.kept)
	kept := s.kept[:0]
	for _, b := range s.kept {
		if keep(b) {
			kept = append(kept, b)
		} else {
			s.keptBytes -= b.size
		}
	}
	clear(s.kept[len(kept):])
	s.kept = kept
	if len(kept) < before {
		select {
		case s.room <- struct{}{}:
		default:
		}
	}
}

// standing takes in where the session stands (the answer to a gRPC stream's opening request) and returns
// the kept batches to send on this gRPC stream, in order: those the session has not applied, and those
// it applied but whose answer never arrived (the server answers them from what it kept).
func (s *Stream) standing(resp *pb.OutliersResponse) []*sentBatch {
	s.mu.Lock()
	defer s.mu.Unlock()
	applied, durable := resp.GetAppliedSeq(), resp.GetDurableSeq()
	if !s.haveBase {
		s.base, s.haveBase = applied, true
	}
	s.applied.Store(applied)
	s.durable.Store(durable)
	s.forget(func(b *sentBatch) bool {
		return !b.answered || (!resp.GetEphemeral() && (b.wire == 0 || b.wire > durable))
	})
	var send []*sentBatch
	for _, b := range s.kept {
		if !b.answered || b.wire == 0 || b.wire > applied {
			send = append(send, b)
		}
	}
	return send
}

// unanswered is the kept batches without an answer, in order (what a stream without a session sends again).
func (s *Stream) unanswered() []*sentBatch {
	s.mu.Lock()
	defer s.mu.Unlock()
	var send []*sentBatch
	for _, b := range s.kept {
		if !b.answered {
			send = append(send, b)
		}
	}
	return send
}

// answered records b's answer and reports whether it is to be delivered (not if an earlier gRPC stream
// delivered it already: the batch was sent again because the server had lost it).
func (s *Stream) answered(b *sentBatch, resp *pb.OutliersResponse, numbered bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	deliver := !b.answered
	b.answered = true
	s.progress(resp, numbered)
	return deliver
}

// progress drops the answered batches that resp says are durable (all answered ones when nothing will ever
// be: no session, or a server without a durable store); the caller holds s.mu.
func (s *Stream) progress(resp *pb.OutliersResponse, numbered bool) {
	if !numbered || resp.GetEphemeral() {
		s.forget(func(k *sentBatch) bool { return !k.answered })
		return
	}
	s.applied.Store(resp.GetAppliedSeq())
	if durable := resp.GetDurableSeq(); durable > s.durable.Load() {
		s.durable.Store(durable)
		s.forget(func(k *sentBatch) bool { return !k.answered || k.wire == 0 || k.wire > durable })
	}
}

// attempt runs one gRPC stream: sends the kept batches that need it and then new ones, until input ends and
// everything is answered (nil) or the stream fails (the error; the kept batches stay for the next attempt).
// progressed says whether any answer arrived, which resets the retry budget.
func (s *Stream) attempt() (progressed bool, err error) {
	numbered := s.cfg.Session != ""
	// Open the gRPC stream only once there is a batch to send, or kept batches: unanswered ones, or (with a
	// session) answered ones that the server may have lost since (without one, answered batches are not kept).
	if batches, _ := s.Kept(); batches == 0 {
		select {
		case m := <-s.in:
			s.take(m)
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
		return false, fmt.Errorf("open DetectStream (session %q) on %s: %w", s.cfg.Session, s.client.addr, err)
	}

	var (
		mu         sync.Mutex // protects inflight, answered, lastAnswer, delivering
		inflight   []*sentBatch
		answered   uint64 // answers on this gRPC stream; the server numbers them from 0
		lastAnswer time.Time
		delivering bool // the receiver is waiting for the reader of Results; not the server's delay
		recvErr    error
		gotAnswer  atomic.Bool
		stalled    atomic.Bool
		probing    atomic.Bool
	)
	slots := make(chan struct{}, s.cfg.MaxInFlight)
	recvDone := make(chan struct{})
	ready := make(chan []*sentBatch, 1) // the batches to send again, once the session's standing is known

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
			delivering = !b.hello && !b.probe
			mu.Unlock()
			<-slots
			if b.hello || b.probe {
				if b.hello {
					ready <- s.standing(resp)
				} else {
					s.mu.Lock()
					s.progress(resp, numbered)
					s.mu.Unlock()
					probing.Store(false)
				}
				mu.Lock()
				lastAnswer = time.Now()
				mu.Unlock()
				continue
			}
			gotAnswer.Store(true)
			if s.answered(b, resp, numbered) {
				select {
				case s.results <- Result{Seq: b.seq, Response: resp}:
				case <-s.ctx.Done():
					recvErr = s.ctx.Err()
					return
				}
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

	// fail ends this gRPC stream; the kept batches are the next one's to send.
	fail := func(sendErr error) (bool, error) {
		cancel()
		<-recvDone
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
		if left := s.unanswered(); len(left) > 0 {
			what = fmt.Sprintf("DetectStream, batch %d", left[0].seq)
		}
		return gotAnswer.Load(), fmt.Errorf("%s (session %q) on %s: %w", what, s.cfg.Session, s.client.addr, err)
	}

	// send sends one request on this gRPC stream, once a slot is free; false if the stream failed.
	send := func(b *sentBatch, req *pb.OutliersRequest) (bool, error) {
		select {
		case slots <- struct{}{}:
		case <-recvDone:
			return false, nil
		case <-sctx.Done():
			return false, nil
		}
		b.sentAt = time.Now()
		mu.Lock()
		inflight = append(inflight, b) // before Send: the answer may come back before Send returns
		mu.Unlock()
		if err := stream.Send(req); err != nil {
			return false, err // io.EOF: the stream is over and its status comes from Recv
		}
		return true, nil
	}

	// Session and options are read from the first message of each gRPC stream only. With a session, that
	// message has no metrics: its answer says where the session stands, and so what to send again.
	first := &pb.OutliersRequest{Session: s.cfg.Session, Options: s.cfg.Options}
	var queue []*sentBatch
	if numbered {
		if ok, err := send(&sentBatch{hello: true}, first); !ok {
			return fail(err)
		}
		first = nil
		select {
		case queue = <-ready:
		case <-recvDone:
			return fail(nil)
		case <-sctx.Done():
			return fail(nil)
		}
	} else {
		queue = s.unanswered()
	}

	for {
		if len(queue) == 0 {
			in := s.input()
			var probe <-chan time.Time
			if in == nil && numbered {
				probe = time.After(probeInterval)
			}
			select {
			case m := <-in:
				queue = append(queue, s.take(m))
			case <-probe:
				if probing.CompareAndSwap(false, true) { // one probe in flight at a time
					if ok, err := send(&sentBatch{probe: true}, &pb.OutliersRequest{}); !ok {
						return fail(err)
					}
				}
				continue
			case <-s.room:
				continue // durable batches were dropped: maybe room for another
			case <-s.closing:
				// Every batch is sent: half-close, then the receiver reads answers until the server's io.EOF.
				if err := stream.CloseSend(); err != nil {
					return fail(err)
				}
				<-recvDone
				mu.Lock()
				left := len(inflight)
				mu.Unlock()
				if recvErr == io.EOF && left == 0 && !stalled.Load() {
					return gotAnswer.Load(), nil
				}
				return fail(nil)
			case <-recvDone:
				return fail(nil)
			case <-sctx.Done():
				return fail(nil)
			}
		}
		b := queue[0]
		queue = queue[1:]
		req := &pb.OutliersRequest{Metrics: b.metrics}
		if numbered {
			s.mu.Lock()
			if b.wire == 0 {
				b.wire = s.base + b.seq + 1
			}
			req.Seq = b.wire
			s.mu.Unlock()
		} else if first != nil {
			req.Session, req.Options = first.Session, first.Options
			first = nil
		}
		if ok, err := send(b, req); !ok {
			return fail(err)
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
