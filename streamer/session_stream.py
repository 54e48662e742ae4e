"""A DetectStream on a session that survives lost connections and server restarts with exact state.

`Client.session_stream(batches, session)`. Batches are numbered (OutliersRequest.seq) and kept until the server
reports them durable (OutliersResponse.durable_seq); each gRPC stream opens with a request without metrics
whose answer says where the session stands, and then sends again what the session has not applied (or applied
without the answer arriving: the server answers it from what it kept, without applying it again). The same
protocol as the Go client's Stream (go/client/stream.go); see the README's "Exact resume".
"""
from __future__ import annotations

import random
import threading
import time
from typing import Iterable, Iterator, Sequence

import grpc

from streamer.pb import outliers_pb2 as pb

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.CANCELLED)
PROBE_SECONDS = 0.1  # while max_kept_bytes holds up the batches, ask this often how far the store has come
_OPENING, _PROBE = "opening", "probe"  # in-flight requests without metrics


class _Kept:
    __slots__ = ("ordinal", "seq", "request", "answered")

    def __init__(self, ordinal: int, seq: int, request: bytes):
        self.ordinal = ordinal    # among the caller's batches, from 0
        self.seq = seq            # OutliersRequest.seq
        self.request = request    # the encoded request, sent again as it is
        self.answered = False     # its Result was yielded


class _Attempt:
    """One gRPC stream: what it has sent and awaits, and whether it has ended."""

    def __init__(self) -> None:
        self.inflight: list = []  # _Kept, or _OPENING / _PROBE
        self.probing = False
        self.resend: list[_Kept] | None = None   # set once the session's standing is known
        self.ended = False


class SessionStream:
    """The state of one session_stream call, shared by grpc's request thread and the caller's thread."""

    def __init__(self, stub_bytes, batches: Iterable[Sequence], session: str, options, to_metrics, *,
                 retries: int, max_in_flight: int, max_kept_bytes: int, backoff: tuple[float, float],
                 timeout: float | None):
        if not session:
            raise ValueError("session_stream needs a session name (Client.stream serves private streams)")
        self._call = stub_bytes
        self._source = iter(batches)
        self._session, self._options, self._to_metrics = session, options, to_metrics
        self._retries, self._max_in_flight, self._max_kept = retries, max_in_flight, max_kept_bytes
        self._backoff, self._timeout = backoff, timeout
        self._cv = threading.Condition()  # guards everything below
        self._kept: list[_Kept] = []
        self._kept_bytes = 0
        self._base: int | None = None     # the session's applied seq when first asked
        self._ordinal = 0
        self._pending: list = []          # the next batch from the caller, as metrics (at most one)
        self._source_done = False
        self._exhausted = False           # every batch is kept, and the last gRPC stream half-closed
        self._closed = False
        self.durable_seq = 0
        self.reconnects = 0

    # --- the feeder thread, and grpc's request thread -----------------------------------------------

    def _feed(self) -> None:
        """Pull the caller's batches (which may wait for data) one at a time into _pending."""
        try:
            for batch in self._source:
                metrics = self._to_metrics(batch)
                with self._cv:
                    self._cv.wait_for(lambda: not self._pending or self._closed)
                    if self._closed:
                        return
                    self._pending.append(metrics)
                    self._cv.notify_all()
        finally:
            with self._cv:
                self._source_done = True
                self._cv.notify_all()

    def _requests(self, attempt: _Attempt) -> Iterator[bytes]:
        opening = pb.OutliersRequest(session=self._session)
        if self._options is not None:
            opening.options.CopyFrom(self._options)
        with self._cv:
            attempt.inflight.append(_OPENING)
        yield opening.SerializeToString()
        with self._cv:
            self._cv.wait_for(lambda: attempt.resend is not None or attempt.ended)
            queue = list(attempt.resend or ())

        def ready() -> bool:
            if attempt.ended:
                return True
            if len(attempt.inflight) >= self._max_in_flight:
                return False
            room = not self._kept or self._kept_bytes < self._max_kept
            return bool(queue) or (room and bool(self._pending)) or (self._source_done and not self._pending)

        probe = b""  # a request without metrics or number: its answer says only how far the store has come
        while True:
            with self._cv:  # one step at a time under the lock: a new batch is kept and in flight at once
                if not self._cv.wait_for(ready, PROBE_SECONDS) and self._pending and not attempt.probing \
                        and len(attempt.inflight) < self._max_in_flight:
                    attempt.probing = True  # held up by max_kept_bytes: the answers bring durable_seq
                    attempt.inflight.append(_PROBE)
                    request = probe
                elif not ready():
                    continue
                elif attempt.ended:
                    return
                elif queue:
                    kept = queue.pop(0)
                    request = kept.request
                    attempt.inflight.append(kept)
                elif self._pending:
                    seq = self._base + self._ordinal + 1
                    request = pb.OutliersRequest(metrics=self._pending.pop(0), seq=seq).SerializeToString()
                    kept = _Kept(self._ordinal, seq, request)
                    self._ordinal += 1
                    self._kept.append(kept)
                    self._kept_bytes += len(request)
                    attempt.inflight.append(kept)
                    self._cv.notify_all()  # the feeder may pull the next batch
                else:
                    self._exhausted = True
                    return  # half-close: every batch is sent
            yield request

    # --- the caller's thread ------------------------------------------------------------------------

    def _forget(self, keep) -> None:
        kept = [k for k in self._kept if keep(k)]
        self._kept_bytes -= sum(len(k.request) for k in self._kept if not keep(k))
        self._kept = kept
        self._cv.notify_all()

    def _standing(self, attempt: _Attempt, resp: pb.OutliersResponse) -> None:
        with self._cv:
            if self._base is None:
                self._base = resp.applied_seq
            self.durable_seq = resp.durable_seq
            self._forget(lambda k: not k.answered or (not resp.ephemeral and k.seq > resp.durable_seq))
            attempt.resend = [k for k in self._kept if not k.answered or k.seq > resp.applied_seq]
            self._cv.notify_all()

    def _answered(self, kept: _Kept, resp: pb.OutliersResponse) -> bool:
        with self._cv:
            deliver = not kept.answered
            kept.answered = True
        self._durable(resp)
        return deliver

    def _durable(self, resp: pb.OutliersResponse) -> None:
        """Forget the answered batches that resp says are durable (all answered ones if nothing ever is)."""
        with self._cv:
            if resp.ephemeral:
                self._forget(lambda k: not k.answered)
            elif resp.durable_seq > self.durable_seq:
                self.durable_seq = resp.durable_seq
                self._forget(lambda k: not k.answered or k.seq > resp.durable_seq)

    def results(self, result_of) -> Iterator:
        """The caller's answers, one per batch in order; ClientError once retries are spent or on a
        rejection. Runs in the caller's thread; grpc's thread writes the requests."""
        threading.Thread(target=self._feed, name="streamer-session-feeder", daemon=True).start()
        try:
            yield from self._attempts(result_of)
        finally:
            with self._cv:
                self._closed = True
                self._cv.notify_all()

    def _attempts(self, result_of) -> Iterator:
        failures = 0
        while True:
            attempt = _Attempt()
            call = self._call(self._requests(attempt), timeout=self._timeout)
            progressed = False
            try:
                for resp in call:
                    with self._cv:
                        kept = attempt.inflight.pop(0)
                        self._cv.notify_all()
                    if kept is _OPENING:
                        self._standing(attempt, resp)
                    elif kept is _PROBE:
                        self._durable(resp)
                        attempt.probing = False
                    elif self._answered(kept, resp):
                        progressed = True
                        yield result_of(resp, kept.ordinal)
                with self._cv:
                    if self._exhausted and all(k.answered for k in self._kept):
                        return
                raise_code = grpc.StatusCode.INTERNAL
                details = "the server ended the stream with batches unanswered"
            except grpc.RpcError as exc:
                raise_code, details = exc.code(), exc.details()
            finally:
                with self._cv:
                    attempt.ended = True
                    self._cv.notify_all()
                call.cancel()
            if progressed:
                failures = 0
            if raise_code not in RETRYABLE or (self._retries >= 0 and failures >= self._retries):
                from streamer.client import ClientError
                raise ClientError(raise_code, details)
            base, most = self._backoff
            time.sleep(min(most, base * 2 ** failures) * random.uniform(0.8, 1.2))
            failures += 1
            self.reconnects += 1
