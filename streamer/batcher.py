"""Adaptive batching for the Python client: add metrics one at a time or in small groups, get back the
outliers among your own metrics; the Batcher coalesces what callers add into DetectStream messages, large when
the rate is high, sent at the latest `linger` seconds after their first metric when it is low.

    with Client(addr) as client, client.batcher() as batcher:
        future = batcher.add([("cpu", 0.93)])    # a concurrent.futures.Future
        outliers = future.result()               # [Outlier(index=0, ...)] or []: indices within this add

Thread-safe: any number of threads may add. The stream is private (or continues `session`); its options
(make_options) hold for all of it. See the README's "Adaptive batching" for the defaults and what they cost.
"""
from __future__ import annotations

import collections
import datetime as dt
import struct
import threading
import time
from concurrent.futures import Future
from typing import Sequence

import grpc

from streamer.client import ClientError, Outlier, pb
from streamer.request_bytes import options_field, varint

# The same defaults as the Go client's Batcher (go/client/batcher.go), from the same measurement.
DEFAULT_MAX_METRICS = 10_000
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_LINGER = 0.005

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_DOUBLE = struct.Struct("<d").pack
_ZERO = _DOUBLE(0.0)


class BatcherClosed(RuntimeError):
    """add() after close()."""


def _encode(metric) -> bytes:
    """One Metric as field 1 of an OutliersRequest (tag, length, the Metric as the protobuf library writes it)."""
    if isinstance(metric, pb.Metric):
        body = metric.SerializeToString()
    else:
        name, value = metric[0], float(metric[1])
        encoded = name.encode("utf-8")
        body = b"\x12" + varint(len(encoded)) + encoded if encoded else b""
        v = _DOUBLE(value)
        if v != _ZERO:
            body += b"\x19" + v
        if len(metric) > 2 and metric[2] is not None:
            t = metric[2] if metric[2].tzinfo else metric[2].replace(tzinfo=dt.timezone.utc)
            delta = t - _EPOCH
            seconds, nanos = delta.days * 86400 + delta.seconds, delta.microseconds * 1000
            ts = (b"\x08" + varint(seconds) if seconds else b"") + (b"\x10" + varint(nanos) if nanos else b"")
            body = b"\x0a" + varint(len(ts)) + ts + body
    return b"\x0a" + varint(len(body)) + body


class Batcher:
    """Coalesces add() calls into the messages of one DetectStream on `client` (a streamer.client.Client).

    A message leaves when it holds `max_metrics` metrics, when one more add would take it over `max_bytes`
    (encoded; an add is never split, so one larger than that leaves alone), or `linger` seconds after its
    first metric was added (0: every add leaves at once). At most `max_pending` messages wait to be sent
    (add() blocks meanwhile: backpressure). `timeout`: the deadline of the whole stream (default none).
    """

    def __init__(self, client, *, max_metrics: int = DEFAULT_MAX_METRICS, max_bytes: int = DEFAULT_MAX_BYTES,
                 linger: float = DEFAULT_LINGER, session: str = "", options: pb.DetectOptions | None = None,
                 max_pending: int = 8, timeout: float | None = None):
        if max_metrics < 1 or max_bytes < 1 or linger < 0 or max_pending < 1:
            raise ValueError("max_metrics, max_bytes and max_pending must be >= 1 and linger >= 0")
        self.max_metrics, self.max_bytes, self.linger, self.max_pending = max_metrics, max_bytes, linger, max_pending
        head = options_field(options)
        if session:
            encoded = session.encode("utf-8")
            head += b"\x1a" + varint(len(encoded)) + encoded
        self._head = head  # goes with the first message only
        self._cond = threading.Condition()  # protects everything below; add() and both threads wait on it
        self._parts: list[bytes] = []  # the current message's metrics, encoded
        self._size = 0
        self._pieces: list[tuple[Future, int, int]] = []  # (future, offset, count) of each add in it
        self._deadline = 0.0
        self._sealed: collections.deque[tuple[bytes, list]] = collections.deque()
        self._inflight: collections.deque[list] = collections.deque()  # sent, awaiting their answer, in order
        self._closed = False
        self._error: Exception | None = None
        self.messages = self.metrics = 0  # sent so far
        self._call = client._stream_bytes(self._requests(), timeout=timeout)
        self._receiver = threading.Thread(target=self._receive, name="streamer-batcher", daemon=True)
        self._receiver.start()

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, metrics: Sequence) -> Future:
        """Queue metrics ((name, value[, time]) tuples or pb.Metric) and return a Future of the outliers among
        them: a list of Outlier, index = position in `metrics`, in order; or ClientError if the stream failed.
        Callbacks added to the Future run on the Batcher's receiving thread: they must not call add()."""
        encoded = [_encode(m) for m in metrics]
        size = sum(map(len, encoded))
        future: Future = Future()
        with self._cond:
            while len(self._sealed) >= self.max_pending and not (self._closed or self._error):
                self._cond.wait()
            if self._closed:
                raise BatcherClosed("add() after close()")
            if self._error is not None:
                raise self._error
            if self._parts and (len(self._parts) + len(encoded) > self.max_metrics
                                or self._size + size > self.max_bytes):
                self._seal()
            if not self._parts:
                self._deadline = time.monotonic() + self.linger
                self._cond.notify_all()  # the sender waits for a deadline
            self._pieces.append((future, len(self._parts), len(encoded)))
            self._parts += encoded
            self._size += size
            if len(self._parts) >= self.max_metrics or self._size >= self.max_bytes or self.linger == 0:
                self._seal()
        return future

    def add_one(self, name: str, value: float, time_: dt.datetime | None = None) -> Future:
        """add([(name, value, time_)])."""
        return self.add(((name, value, time_),))

    def flush(self) -> None:
        """Send what has been added without waiting for the linger."""
        with self._cond:
            if self._parts:
                self._seal()

    def close(self) -> None:
        """Send what is left, wait for every answer (every future is done after this), end the stream."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._receiver.join()

    def _seal(self) -> None:  # with the lock held
        data = b"".join(self._parts)
        if self._head is not None:
            data, self._head = self._head + data, None
        self._sealed.append((data, self._pieces))
        self.messages += 1
        self.metrics += len(self._parts)
        self._parts, self._size, self._pieces = [], 0, []
        self._cond.notify_all()

    def _requests(self):
        """The messages, as grpc's thread asks for them: sealed ones, or the current one once it has lingered."""
        while True:
            with self._cond:
                while not self._sealed:
                    if self._error is not None:
                        return
                    if self._parts and (self._closed or time.monotonic() >= self._deadline):
                        self._seal()
                        break
                    if self._closed:
                        return
                    self._cond.wait(self._deadline - time.monotonic() if self._parts else None)
                data, pieces = self._sealed.popleft()
                self._inflight.append(pieces)
                self._cond.notify_all()  # room for add()
            yield data

    def _receive(self) -> None:
        error: Exception | None = None
        try:
            for resp in self._call:
                with self._cond:
                    pieces = self._inflight.popleft()
                _deliver(resp, pieces)
        except grpc.RpcError as exc:
            error = ClientError(exc.code(), exc.details())
        with self._cond:
            self._error = error or ClientError(grpc.StatusCode.CANCELLED, "the stream ended before this was answered")
            left = [p for pieces in self._inflight for p in pieces] + \
                   [p for _, pieces in self._sealed for p in pieces] + self._pieces
            self._inflight.clear()
            self._sealed.clear()
            self._parts, self._pieces = [], []
            self._cond.notify_all()
        for future, _, _ in left:
            future.set_exception(self._error)


def _deliver(resp: pb.OutliersResponse, pieces: list) -> None:
    """Split a message's outliers (ascending indices) among its adds, each index made relative to its add."""
    outliers = resp.outliers
    j = 0
    for future, offset, count in pieces:
        mine = []
        end = offset + count
        while j < len(outliers) and outliers[j].index < end:
            o = outliers[j]
            mine.append(Outlier(o.index - offset, o.name, o.value, o.mean, o.stddev, o.zscore, o.tail_probability,
                                o.rule))
            j += 1
        future.set_result(mine)


__all__ = ["Batcher", "BatcherClosed", "DEFAULT_LINGER", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_METRICS"]
