"""Prometheus metrics of `streamer serve` (--metrics-port): the conventional gRPC server metrics, from a small
grpc.aio interceptor, and the detector's own.

The gRPC metrics keep py-grpc-prometheus's names and label values (grpc_type UNARY or BIDI_STREAMING, grpc_code
the StatusCode's name such as INVALID_ARGUMENT), which are also the names grpc-ecosystem's Go middleware uses;
py-grpc-prometheus itself has no asyncio support. Every label value comes from a fixed set (the registered
methods, the status codes), never from a request: no metric name or session name becomes a label, so the number
of series a scrape returns is bounded whatever clients send. Counting is per call and per batch, never per
metric.

One process, one registry. With --workers N each worker keeps its own counts and serves them on
--metrics-port + i (streamer/workers.py), rather than prometheus_client's multiprocess mode: nothing is shared
on disk, and a replaced worker starts from zero as a restarted process would.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
# grpc-ecosystem's and prometheus_client's default buckets (seconds)
HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
SNAPSHOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _grpc_type(handler: grpc.RpcMethodHandler) -> str:
    """py-grpc-prometheus's names of the four kinds of RPC."""
    return {(False, False): "UNARY", (False, True): "SERVER_STREAMING", (True, False): "CLIENT_STREAMING",
            (True, True): "BIDI_STREAMING"}[(bool(handler.request_streaming), bool(handler.response_streaming))]


class _Batches:
    """The counts of one RPC's answered batches. Plain integers rather than prometheus_client Counters on this
    path (an inc takes a lock and about 0.6 µs, twice a batch; these about 0.2 µs together), read when scraped.
    The lock is for the worker threads that run large batches."""

    __slots__ = ("judged", "flagged", "_lock")

    def __init__(self) -> None:
        self.judged = self.flagged = 0
        self._lock = threading.Lock()

    def __call__(self, metrics: int, outliers: int) -> None:
        with self._lock:
            self.judged += metrics
            self.flagged += outliers


class Metrics:
    """Every metric streamer exports, in one registry (a new one unless given: tests and benchmarks make their
    own). The counts made per message or per batch are plain integers, exported by collect() when scraped; the
    detector's gauges are read at scrape time from what `watch` is given."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        # each registered method called so far, by its full name, with its message counts (added on the event
        # loop's thread by MetricsInterceptor; the scrape thread copies it)
        self.methods: dict[str, _Method] = {}
        self._batches: dict[str, _Batches] = {}
        self.started = Counter("grpc_server_started_total", "Total number of RPCs started on the server.",
                               GRPC_LABELS, registry=registry)
        self.handled = Counter("grpc_server_handled_total", "Total number of RPCs completed on the server, "
                               "regardless of success or failure.", GRPC_LABELS + ("grpc_code",), registry=registry)
        self.handling = Histogram("grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC "
                                  "that had been application-level handled by the server (a stream: its whole "
                                  "life).", GRPC_LABELS, buckets=HANDLING_BUCKETS, registry=registry)
        self.rejected = Counter("streamer_batches_rejected_total", "Requests (Detect calls, DetectStream batches) "
                                "rejected, by the status code that says why (see the README's Errors table).",
                                ("rpc", "code"), registry=registry)
        self.open_streams = Gauge("streamer_open_streams", "DetectStream calls open now.", registry=registry)
        self.sessions_held = Gauge("streamer_sessions_held", "Named sessions held in memory (open or idle within "
                                   "--session-ttl).", registry=registry)
        self.series_held = Gauge("streamer_series_held", "Series whose state is held in memory: in sessions and in "
                                 "open streams without a session.", registry=registry)
        self.snapshot_seconds = Histogram("streamer_snapshot_seconds", "Time to write one session's snapshot to "
                                          "the store (successful writes).", buckets=SNAPSHOT_BUCKETS,
                                          registry=registry)
        self.snapshot_failures = Counter("streamer_snapshot_failures_total", "Snapshot writes that failed (each is "
                                         "retried at the next round).", registry=registry)

        self._series_expired: Callable[[], int] = lambda: 0
        registry.register(self)  # collect(), below

    def batch_counter(self, rpc: str) -> Callable[[int, int], None]:
        """What the detector calls once per answered batch of `rpc`: (metrics judged, outliers flagged)."""
        return self._batches.setdefault(rpc, _Batches())

    def collect(self):
        """The counters kept as plain integers (prometheus_client calls this at each scrape)."""
        received = CounterMetricFamily("grpc_server_msg_received_total", "Total number of RPC stream messages "
                                       "received on the server.", labels=GRPC_LABELS)
        sent = CounterMetricFamily("grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the "
                                   "server.", labels=GRPC_LABELS)
        for method in list(self.methods.values()):
            received.add_metric(method.labels, method.received)
            sent.add_metric(method.labels, method.sent)
        judged = CounterMetricFamily("streamer_metrics_judged_total", "Metrics judged (scored against their series' "
                                     "state, or their batch for Detect), counted per answered batch.",
                                     labels=("rpc",))
        flagged = CounterMetricFamily("streamer_outliers_flagged_total", "Values flagged as outliers in answered "
                                      "batches.", labels=("rpc",))
        for rpc, batches in sorted(self._batches.items()):
            judged.add_metric((rpc,), batches.judged)
            flagged.add_metric((rpc,), batches.flagged)
        expired = CounterMetricFamily("streamer_series_expired_total", "Series dropped after --series-ttl (or "
                                      "options.series_ttl_seconds) without a value: slot reused, state gone.")
        expired.add_metric((), self._series_expired())
        return [received, sent, judged, flagged, expired]

    def snapshot(self, seconds: float, ok: bool) -> None:
        """What the session registry calls after each snapshot write."""
        if ok:
            self.snapshot_seconds.observe(seconds)
        else:
            self.snapshot_failures.inc()

    def watch(self, open_streams: Callable[[], int], sessions_held: Callable[[], int],
              series_held: Callable[[], int], series_expired: Callable[[], int] = lambda: 0) -> None:
        """Gauges read when scraped (from the HTTP server's thread), so they cost nothing per batch."""
        self._series_expired = series_expired
        self.open_streams.set_function(open_streams)
        self.sessions_held.set_function(sessions_held)
        self.series_held.set_function(series_held)

    def serve(self, host: str, port: int):
        """Start the /metrics HTTP server on a thread of its own; returns it (shutdown() stops it)."""
        name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        server, _thread = start_http_server(port, addr=name, registry=self.registry)
        return server


def _code(context: grpc.aio.ServicerContext) -> str:
    """The status a handler that returned leaves. A call whose deadline passed, or whose client cancelled, while
    its handler waited for the next request sees an end of stream instead (grpc.aio cancels the handler's task
    only later, if at all): a passed deadline is recognised here, but such a cancelled stream counts as the
    handler ended it (usually OK)."""
    code = context.code()
    if code is not None:
        return (grpc.StatusCode(code) if not isinstance(code, grpc.StatusCode) else code).name
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "OK"


def _ended(context: grpc.aio.ServicerContext) -> str:
    """The code of a call whose handler was cancelled: by its deadline, or by the client (or shutdown)."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


class _Counted:
    """A request iterator that counts each message as the handler takes it (on the event loop's thread)."""

    __slots__ = ("_next", "_method")

    def __init__(self, requests, method: _Method):
        self._next = requests.__aiter__().__anext__
        self._method = method

    def __aiter__(self):
        return self

    async def __anext__(self):
        message = await self._next()
        self._method.received += 1
        return message


class _Method:
    """One registered method: its metrics' children, bound once, and its handler wrapped to count."""

    def __init__(self, metrics: Metrics, full_method: str, handler: grpc.RpcMethodHandler):
        _, service, method = full_method.split("/", 2)
        self.labels = labels = (_grpc_type(handler), service, method)
        self.inner = handler
        self.received = self.sent = 0  # messages; exported by Metrics.collect
        self.started = metrics.started.labels(*labels).inc
        self.observe = metrics.handling.labels(*labels).observe
        self._handled = metrics.handled
        self._by_code: dict[str, Callable[[], None]] = {}
        self.handler = self._wrap(handler)

    def handled(self, code: str, started: float) -> None:
        inc = self._by_code.get(code)
        if inc is None:
            inc = self._by_code[code] = self._handled.labels(*self.labels, code).inc
        inc()
        self.observe(time.perf_counter() - started)

    def _wrap(self, h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if h.request_streaming and h.response_streaming:
            inner, make = h.stream_stream, grpc.stream_stream_rpc_method_handler
        elif h.request_streaming:
            inner, make = h.stream_unary, grpc.stream_unary_rpc_method_handler
        elif h.response_streaming:
            inner, make = h.unary_stream, grpc.unary_stream_rpc_method_handler
        else:
            inner, make = h.unary_unary, grpc.unary_unary_rpc_method_handler
        # grpc.aio calls an async generator function's answers from `async for`, and a coroutine function (which
        # may write with context.write, uncounted here) by awaiting it: the wrapper must be of the same kind.
        behavior = self._generator(inner, h.request_streaming) if inspect.isasyncgenfunction(inner) \
            else self._coroutine(inner, h.request_streaming, h.response_streaming)
        return make(behavior, request_deserializer=h.request_deserializer,
                    response_serializer=h.response_serializer)

    def _coroutine(self, inner, request_streaming: bool, response_streaming: bool):
        async def behavior(request, context):
            self.started()
            started = time.perf_counter()
            if request_streaming:
                request = _Counted(request, self)
            else:
                self.received += 1
            code = "UNKNOWN"
            try:
                response = await inner(request, context)
                code = _code(context)
                if code == "OK" and not response_streaming:
                    self.sent += 1
                return response
            except asyncio.CancelledError:
                code = _ended(context)
                raise
            except BaseException:  # an abort sets the code first; anything else is grpc's UNKNOWN
                code = _code(context) if context.code() is not None else "UNKNOWN"
                raise
            finally:
                self.handled(code, started)
        return behavior

    def _generator(self, inner, request_streaming: bool):
        async def behavior(request, context):
            self.started()
            started = time.perf_counter()
            if request_streaming:
                request = _Counted(request, self)
            else:
                self.received += 1
            code = "UNKNOWN"
            responses = inner(request, context)
            try:
                async for response in responses:
                    self.sent += 1
                    yield response
                code = _code(context)
            except (asyncio.CancelledError, GeneratorExit):
                code = _ended(context)
                raise
            except BaseException:
                code = _code(context) if context.code() is not None else "UNKNOWN"
                raise
            finally:
                await responses.aclose()  # at once, not when collected: its finally frees the session
                self.handled(code, started)
        return behavior


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call of a registered method; an unknown method (UNIMPLEMENTED) is not counted, since its name
    comes from the client."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        name = handler_call_details.method
        method = self.metrics.methods.get(name)
        if method is None or method.inner is not handler:  # the first call (grpc keeps the handler objects)
            new = _Method(self.metrics, name, handler)
            if method is not None:
                new.received, new.sent = method.received, method.sent
            method = self.metrics.methods[name] = new
        return method.handler
