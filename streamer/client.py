"""Python client: `Client(addr).detect(metrics)` for one batch, `Client(addr).stream(batches)` for a stream,
`Client(addr).session_stream(batches, session)` for a stream that survives reconnections with exact state,
`Client(addr).batcher()` to add metrics one at a time or in small groups (adaptive batching, streamer.batcher).

Metrics may be given as `pb.Metric` messages, as `(name, value)` or `(name, value, time)` tuples (time a
datetime, or None), or as plain values with one `name=`. A server with --tls-cert takes
`credentials=tls_credentials(ca="ca.pem")` (and a client certificate and key under mTLS).
"""
from __future__ import annotations

import datetime as dt
from typing import AsyncIterable, AsyncIterator, Iterable, Iterator, NamedTuple, Sequence

import grpc

from streamer.ops.tls import channel_credentials as tls_credentials  # noqa: F401 (part of this module's API)
from streamer.pb import outliers_pb2 as pb
from streamer.pb import outliers_pb2_grpc

Mode = pb.Mode


class Outlier(NamedTuple):
    index: int     # position in the batch
    name: str
    value: float
    mean: float    # what the value was judged against
    stddev: float
    zscore: float
    tail_probability: float = 0.0  # SCORE_LIKELIHOOD: what flagged it (the paper's likelihood is 1 minus it)
    rule: str = ""  # the server's config-file rule that judged it ("": none matched, the server's defaults)


class Result(NamedTuple):
    indices: list[int]        # positions of the outliers in the batch, ascending
    outliers: list[Outlier]   # details, in the order of indices
    batch: int                # streams: 0-based number of the request this answers

    @classmethod
    def from_response(cls, resp: pb.OutliersResponse) -> "Result":
        return cls(list(resp.indices),
                   [Outlier(o.index, o.name, o.value, o.mean, o.stddev, o.zscore, o.tail_probability, o.rule)
                    for o in resp.outliers],
                   resp.batch)


class ClientError(Exception):
    """A call failed; `code` is the grpc.StatusCode and the message is the server's."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def to_metrics(metrics=None, *, values: Iterable[float] | None = None, name: str = "value") -> list[pb.Metric]:
    """Messages for `metrics` (Metric or (name, value[, time]) tuples) or for plain `values` of one `name`."""
    if values is not None:
        return [pb.Metric(name=name, value=float(v)) for v in values]
    out = []
    for m in metrics or ():
        if isinstance(m, pb.Metric):
            out.append(m)
            continue
        metric = pb.Metric(name=m[0], value=float(m[1]))
        if len(m) > 2 and m[2] is not None:
            t = m[2]
            metric.time.FromDatetime(t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc))
        out.append(metric)
    return out


def make_options(threshold: float | None = None, warmup: int | None = None, mode: int | None = None,
                 alpha: float | None = None, exclude_outliers: bool = False, *, exclude_limit: int | None = None,
                 cooldown: int | None = None, score: int | None = None, likelihood_short: int | None = None,
                 likelihood_window: int | None = None, likelihood_threshold: float | None = None,
                 likelihood_learning: int | None = None, series_ttl: float | None = None) -> pb.DetectOptions | None:
    """DetectOptions with the given fields (None = the server's default), or None if all are defaults.
    The keyword-only ones are proto3 `optional`: 0 is sent as 0 (cooldown=0 turns a server's cooldown off).
    `series_ttl`: seconds a series may be idle before it is dropped (0: never; None: the server's --series-ttl)."""
    fields = dict(threshold=threshold, warmup=warmup, mode=mode, alpha=alpha,
                  exclude_outliers=exclude_outliers or None, exclude_limit=exclude_limit, cooldown=cooldown,
                  score=score, likelihood_short=likelihood_short, likelihood_window=likelihood_window,
                  likelihood_threshold=likelihood_threshold, likelihood_learning=likelihood_learning,
                  series_ttl_seconds=series_ttl)
    fields = {k: v for k, v in fields.items() if v is not None}
    return pb.DetectOptions(**fields) if fields else None


def _channel_options(max_message_mb: int) -> list[tuple[str, int]]:
    limit = max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


def _detect_request(metrics, values, name, threshold) -> pb.OutliersRequest:
    return pb.OutliersRequest(metrics=to_metrics(metrics, values=values, name=name),
                              options=make_options(threshold=threshold))


def _stream_request(batch, first: bool, session: str, options) -> pb.OutliersRequest:
    """The request for one batch of a stream; the first one carries the session and options."""
    if isinstance(batch, pb.OutliersRequest):
        if not first:
            return batch
        req = pb.OutliersRequest()
        req.CopyFrom(batch)  # the caller's message stays as it was
    else:
        req = pb.OutliersRequest(metrics=to_metrics(batch))
    if first:
        if session:
            req.session = session
        if options is not None:
            req.options.CopyFrom(options)
    return req


class Client:
    """A channel to a streamer server. Use as a context manager, or call close(). `credentials`
    (tls_credentials(...)) makes it a TLS channel; None, plaintext."""

    def __init__(self, addr: str = "localhost:9999", timeout: float | None = 30.0, max_message_mb: int = 64,
                 credentials: grpc.ChannelCredentials | None = None):
        self.timeout = timeout
        options = _channel_options(max_message_mb)
        self._channel = grpc.secure_channel(addr, credentials, options=options) if credentials is not None \
            else grpc.insecure_channel(addr, options=options)
        self._stub = outliers_pb2_grpc.OutliersStub(self._channel)
        # The same methods taking requests already encoded (request_serializer=None sends bytes as they are).
        self._detect_bytes = self._channel.unary_unary(
            "/pb.Outliers/Detect", request_serializer=None, response_deserializer=pb.OutliersResponse.FromString)
        self._stream_bytes = self._channel.stream_stream(
            "/pb.Outliers/DetectStream", request_serializer=None,
            response_deserializer=pb.OutliersResponse.FromString)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def detect(self, metrics=None, *, values: Iterable[float] | None = None, name: str = "value",
               threshold: float | None = None, timeout: float | None = None) -> Result:
        """Judge one batch on its own (unary Detect): per name, values beyond k stddev of the batch mean."""
        request = _detect_request(metrics, values, name, threshold)
        timeout = self.timeout if timeout is None else timeout
        try:
            return Result.from_response(self._stub.Detect(request, timeout=timeout))
        except grpc.RpcError as exc:
            raise ClientError(exc.code(), exc.details()) from None

    def stream(self, batches: Iterable[Sequence], *, session: str = "", options: pb.DetectOptions | None = None,
               timeout: float | None = None) -> Iterator[Result]:
        """DetectStream: send each batch (a sequence of metrics) as it comes, yield each batch's Result.

        Batches are sent from grpc's own thread as fast as the iterator gives them; results arrive in order.
        `session` continues that session's baselines; `options` (see make_options) hold for the whole stream.
        `timeout` is the deadline of the whole stream (default: none).
        """
        def requests() -> Iterator[pb.OutliersRequest]:
            for n, batch in enumerate(batches):
                yield _stream_request(batch, n == 0, session, options)

        yield from _results(self._stub.DetectStream(requests(), timeout=timeout))

    def session_stream(self, batches: Iterable[Sequence], session: str, *, options: pb.DetectOptions | None = None,
                       retries: int = 10, max_in_flight: int = 64, max_kept_bytes: int = 64 << 20,
                       backoff: tuple[float, float] = (0.05, 2.0), timeout: float | None = None) -> Iterator[Result]:
        """DetectStream on `session` that reconnects by itself and applies every batch exactly once.

        Batches are numbered and kept until the server reports them durable (at most `max_kept_bytes` of
        them: the batches iterator is not read further meanwhile); after a lost connection or a restart of the
        server, the stream reopens and sends again only what the session has not applied (see the README's
        "Exact resume"). Each batch's Result is yielded once, in order, its `batch` the batch's position in
        `batches`. UNAVAILABLE, ALREADY_EXISTS (the server still holds the session for the old stream) and
        CANCELLED are retried `retries` times in a row (negative: without limit), `backoff` = (first, longest)
        delay in seconds; anything else raises ClientError. `timeout` is the deadline of each gRPC stream.
        """
        from streamer.session_stream import SessionStream
        stream = SessionStream(self._stream_bytes, batches, session, options, to_metrics, retries=retries,
                               max_in_flight=max_in_flight, max_kept_bytes=max_kept_bytes, backoff=backoff,
                               timeout=timeout)
        return stream.results(lambda resp, n: Result.from_response(resp)._replace(batch=n))

    def watch(self, *, session: str = "", prefix: str = "", kinds: int = pb.WATCH_OUTLIERS,
              timeout: float | None = None) -> "Watch":
        """Subscribe to Watch: every outlier the server finds from now on (any stream, session or OTLP export,
        any worker, and on a shared Redis any replica), filtered by `session` and series-key `prefix`.
        Returns once the subscription is in place; iterate the result for pb.WatchEvent messages (`outlier`,
        or `dropped`: how many this subscriber missed by reading too slowly; with `kinds` pb.WATCH_EPISODES or
        pb.WATCH_ALL, `episode` events too). `timeout`: of the whole call."""
        call = self._stub.Watch(pb.WatchRequest(session=session, prefix=prefix, kinds=kinds), timeout=timeout)
        try:
            call.initial_metadata()  # sent by the server once the subscription is in place
        except grpc.RpcError as exc:
            raise ClientError(exc.code(), exc.details()) from None
        if call.done() and call.code() != grpc.StatusCode.OK:
            raise ClientError(call.code(), call.details())
        return Watch(call)

    def batcher(self, **settings):
        """A Batcher (streamer.batcher) on this channel: add() metrics one at a time or in small groups, each
        add's outliers come back as a Future; settings: max_metrics, max_bytes, linger, session, options, ..."""
        from streamer.batcher import Batcher
        return Batcher(self, **settings)

    def detect_bytes(self, request: bytes, *, timeout: float | None = None) -> Result:
        """Detect with an encoded OutliersRequest (see streamer.request_bytes), e.g. one too big for objects."""
        timeout = self.timeout if timeout is None else timeout
        try:
            return Result.from_response(self._detect_bytes(request, timeout=timeout))
        except grpc.RpcError as exc:
            raise ClientError(exc.code(), exc.details()) from None

    def stream_bytes(self, requests: Iterable[bytes], *, timeout: float | None = None) -> Iterator[Result]:
        """DetectStream with encoded OutliersRequests (the first one carrying any session and options)."""
        yield from _results(self._stream_bytes(iter(requests), timeout=timeout))


class Watch:
    """An open Watch subscription: iterate for pb.WatchEvent; cancel() (or leaving a `with`) ends it."""

    def __init__(self, call):
        self._call = call

    def __iter__(self) -> Iterator[pb.WatchEvent]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise ClientError(exc.code(), exc.details()) from None

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()

    def cancel(self) -> None:
        self._call.cancel()


def _results(call) -> Iterator[Result]:
    """The Results of a DetectStream call as they arrive; failures as ClientError."""
    try:
        for resp in call:
            yield Result.from_response(resp)
    except grpc.RpcError as exc:
        raise ClientError(exc.code(), exc.details()) from None
    finally:
        call.cancel()  # a consumer that stops early ends the stream on the server too


class AsyncClient:
    """The asyncio form of Client: `async with AsyncClient(addr) as c`, `await c.detect(...)`,
    `async for r in c.stream(batches)` where batches may be an iterable or an async iterable."""

    def __init__(self, addr: str = "localhost:9999", timeout: float | None = 30.0, max_message_mb: int = 64,
                 credentials: grpc.ChannelCredentials | None = None):
        self.timeout = timeout
        options = _channel_options(max_message_mb)
        self._channel = grpc.aio.secure_channel(addr, credentials, options=options) if credentials is not None \
            else grpc.aio.insecure_channel(addr, options=options)
        self._stub = outliers_pb2_grpc.OutliersStub(self._channel)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def detect(self, metrics=None, *, values: Iterable[float] | None = None, name: str = "value",
                     threshold: float | None = None, timeout: float | None = None) -> Result:
        """Judge one batch on its own (unary Detect); see Client.detect."""
        request = _detect_request(metrics, values, name, threshold)
        timeout = self.timeout if timeout is None else timeout
        try:
            return Result.from_response(await self._stub.Detect(request, timeout=timeout))
        except grpc.RpcError as exc:
            raise ClientError(exc.code(), exc.details()) from None

    async def stream(self, batches: Iterable[Sequence] | AsyncIterable[Sequence], *, session: str = "",
                     options: pb.DetectOptions | None = None,
                     timeout: float | None = None) -> AsyncIterator[Result]:
        """DetectStream; see Client.stream. Requests are written as the batches come, answers read as they
        arrive, so a fast producer is pipelined."""
        async def requests() -> AsyncIterator[pb.OutliersRequest]:
            n = 0
            if hasattr(batches, "__aiter__"):
                async for batch in batches:
                    yield _stream_request(batch, n == 0, session, options)
                    n += 1
            else:
                for batch in batches:
                    yield _stream_request(batch, n == 0, session, options)
                    n += 1

        call = self._stub.DetectStream(requests(), timeout=timeout)
        try:
            async for resp in call:
                yield Result.from_response(resp)
        except grpc.RpcError as exc:
            raise ClientError(exc.code(), exc.details()) from None
        finally:
            call.cancel()


def __getattr__(name: str):
    """Batcher and BatcherClosed are part of this module's API, from streamer/batcher.py, which imports this module:
    looked up when first asked for, so either module can be imported first."""
    if name in ("Batcher", "BatcherClosed"):
        from streamer import batcher
        return getattr(batcher, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
