"""The Outliers servicer: bytes in, pipeline, bytes out, and each failure mapped to one status code.

The methods are registered with raw-bytes (de)serializers (no request_deserializer), not through the generated
`add_OutliersServicer_to_server`: the pipeline decodes the request bytes itself into columns (streamer/wire/),
which is where the time goes; the paths and messages on the wire are exactly those of protos/outliers.proto.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Callable

import grpc

from streamer import detector, otlp, tenants
from streamer.errors import DetectError, InvalidArgument, PermissionDenied, Unavailable
from streamer.ops.metrics import Metrics
from streamer.pb import outliers_pb2 as pb
from streamer.state import SessionRegistry
from streamer.watch import Hub

log = logging.getLogger(__name__)

SERVICE_NAME = "pb.Outliers"

# Requests larger than this are processed on a worker thread (the numba code releases the GIL), so one huge
# batch does not stall every other stream and the health checks on the event loop. Smaller ones run inline:
# a thread hop costs more than their whole pipeline.
OFFLOAD_BYTES = 1 << 20


async def _run(fn: Callable[[bytes], bytes], request: bytes) -> bytes:
    if len(request) <= OFFLOAD_BYTES:
        return fn(request)
    work = asyncio.get_running_loop().run_in_executor(None, fn, request)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        # The call was cancelled, but the thread cannot be: let it finish before the stream's cleanup frees
        # its session, so no other stream ever sees a batch being applied.
        await work
        raise
    finally:
        # A failed future keeps its exception, whose traceback keeps this frame and so the future: a cycle
        # that would hold the request and its decoded arrays until a full garbage collection.
        work = None


def _fail(context: grpc.aio.ServicerContext, exc: DetectError) -> None:
    """Set the call's status from `exc`; grpc sends it when the method returns.

    Not context.abort(): the AbortError it raises is kept on the call's state and its traceback holds this
    method's frame, whose `context` holds that state: a reference cycle that would keep the rejected request,
    its decoded arrays and its series table in memory until Python's next full garbage collection.
    """
    context.set_code(grpc.StatusCode[exc.code])
    context.set_details(str(exc))


class _Stream:
    """What shutdown needs to know of one open DetectStream: its task, and whether it waits for a request; and
    its detector, whose series the metrics count."""

    __slots__ = ("task", "detector", "reading", "ended_by_server", "closed")

    def __init__(self, task: asyncio.Task, detector: detector.StreamDetector):
        self.task = task
        self.detector = detector
        self.reading = False          # parked in the read of the next request (the only place it may be cancelled)
        self.ended_by_server = False  # end_streams() cancelled that read
        self.closed = False           # its detector is closed


SHUTTING_DOWN = ("the server is shutting down; every batch it read from this stream has been answered: resend any "
                 "unanswered batch on a new stream")


class OutliersService:
    """Detect (unary), DetectStream (bidirectional stream) and Watch (server stream) over raw bytes; and the
    OTLP MetricsService/Export (unary) when given `ingest`."""

    def __init__(self, defaults: detector.Defaults, sessions: SessionRegistry, metrics: Metrics | None = None,
                 hub: Hub | None = None, ingest: otlp.OtlpIngest | None = None,
                 on_episodes=detector.unannounced, tenancy: tenants.Tenants | None = None, live=None):
        self.defaults = defaults  # the limits; the detection defaults a reload changes are live's
        self.live = live  # series_rules.Live: the server's current defaults and rules (None: `defaults` always)
        self.tenancy = tenancy  # [tenants] of the config file; None: one tenant, every client in it
        self.sessions = sessions
        self.metrics = metrics
        self.hub = hub if hub is not None else Hub()
        self.ingest = ingest
        self.on_episodes = on_episodes  # each batch's episode changes (the server's throttle, then the sinks)
        self.taps = None  # the page's viewed series (streamer/web/tap.py), when --http-port serves the page
        self._count_detect = metrics.batch_counter("Detect") if metrics else detector.uncounted
        self._count_stream = metrics.batch_counter("DetectStream") if metrics else detector.uncounted
        # The open streams, and whether shutdown has begun; only touched on the event loop's thread (the metrics'
        # scrape thread only copies the set).
        self._streams: set[_Stream] = set()
        self._closing = False

    def caller(self, context: grpc.aio.ServicerContext) -> tenants.Caller:
        """Who makes the call (its client certificate's identity under [tenants]; everyone without)."""
        if self.tenancy is None:
            return tenants.EVERYONE
        return self.tenancy.caller(context.auth_context())

    def _tenant(self, context: grpc.aio.ServicerContext) -> tenants.Caller:
        """The caller, or PermissionDenied when its identity names no tenant."""
        caller = self.caller(context)
        try:
            tenants.check_tenant_access(caller)
        except tenants.Denied as exc:
            raise PermissionDenied(str(exc)) from None
        return caller

    def open_streams(self) -> int:
        return len(self._streams)

    def series_held(self) -> int:
        """Series in the sessions held, and in the open streams that have no session."""
        private = sum(len(d.state.table) for d in [s.detector for s in list(self._streams)]
                      if d.session is None and d.state is not None)
        return self.sessions.series_held() + private

    def _rejected(self, rpc: str, exc: DetectError, context: grpc.aio.ServicerContext, started: float,
                  stream: detector.StreamDetector | None = None) -> None:
        """Every rejected call: its status set, one INFO line (with the fields a JSON log keeps), counted."""
        _fail(context, exc)
        fields = {"method": rpc, "peer": context.peer(), "code": exc.code, "reason": str(exc),
                  "duration_ms": round(1e3 * (time.perf_counter() - started), 3)}
        if stream is not None:
            fields["batch"] = stream.batch
            if stream.session is not None:
                fields["session"] = stream.session.name
        log.info("%s from %s rejected: %s: %s", rpc, fields["peer"], exc.code, exc, extra=fields)
        if self.metrics is not None:
            self.metrics.rejected.labels(rpc, exc.code).inc()

    async def Detect(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        try:
            if self.tenancy is not None:
                self._tenant(context)
            defaults = self.live.current.defaults if self.live is not None else self.defaults
            return await _run(lambda r: detector.detect(r, defaults, self._count_detect), request)
        except DetectError as exc:
            self._rejected("Detect", exc, context, started)
            return b""  # discarded: grpc sends the status set above

    async def DetectStream(self, requests: AsyncIterator[bytes],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        stream = detector.StreamDetector(self.defaults, self.sessions, self._count_stream, self.on_episodes,
                                         live=self.live)
        stream.watch = self.hub
        stream.taps = self.taps
        me = _Stream(asyncio.current_task(), stream)
        self._streams.add(me)
        try:
            if self.tenancy is not None:
                try:
                    stream.tenant = self._tenant(context).tenant
                except DetectError as exc:
                    self._rejected("DetectStream", exc, context, started)
                    return
            next_request = requests.__aiter__().__anext__
            while True:
                if self._closing:
                    break
                me.reading = True
                try:
                    request = await next_request()
                except StopAsyncIteration:
                    await self._end(me)
                    return
                except asyncio.CancelledError:
                    if not me.ended_by_server:
                        raise  # the client cancelled, or its deadline passed
                    if hasattr(me.task, "uncancel"):  # Python 3.11+: this cancellation is handled
                        me.task.uncancel()
                    break
                finally:
                    me.reading = False
                try:
                    response = await _run(stream.process, request)
                except DetectError as exc:
                    self._rejected("DetectStream", exc, context, started, stream)
                    await self._end(me)  # the session is free before grpc sends the status
                    return
                yield response
            # Shutdown: every request read so far has had its answer; the client retries on UNAVAILABLE.
            _fail(context, Unavailable(SHUTTING_DOWN))
        finally:
            # When the client cancels or its deadline passes (the generator is closed with CancelledError), and
            # at shutdown: the session is free for the next stream, its snapshot written behind.
            if not me.closed:
                self._streams.discard(me)
                stream.close()

    async def _end(self, me: _Stream) -> None:
        """End a stream that the client half-closed or that was rejected: the status goes out once the session's
        snapshot is in the store and its lease released, so that whatever the client does next, on any worker
        or replica, sees this stream's state. A store that does not answer within a lease holds it no longer
        (the write goes on behind, as after a cancelled stream)."""
        me.closed = True
        self._streams.discard(me)
        done = me.detector.close()
        if done is not None:
            await asyncio.wait([asyncio.wrap_future(done)], timeout=self.sessions.lease_seconds)

    async def Watch(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        try:
            req = pb.WatchRequest.FromString(request)
        except Exception as exc:  # DecodeError, or invalid UTF-8 in a string field
            self._rejected("Watch", InvalidArgument(f"request: not a WatchRequest ({exc})"), context,
                           started)
            return
        if self._closing:
            _fail(context, Unavailable("the server is shutting down; watch another replica or reconnect"))
            return
        if req.kinds not in (pb.WATCH_OUTLIERS, pb.WATCH_EPISODES, pb.WATCH_ALL):
            self._rejected("Watch", InvalidArgument(f"request: kinds {req.kinds} is not a known WatchKinds"),
                           context, started)
            return
        tenant = None
        if self.tenancy is not None:
            try:
                tenant = self._tenant(context).tenant
                if req.session:
                    owner = await asyncio.to_thread(self.sessions.tenant_of, req.session)
                    if owner is not None and owner != tenant:
                        raise PermissionDenied(f"session {req.session!r} belongs to another tenant")
            except DetectError as exc:
                self._rejected("Watch", exc, context, started)
                return
        sub = self.hub.subscribe(req.session, req.prefix, kinds=req.kinds, tenant=tenant)
        try:
            if self.hub.bus is not None:  # until the other workers or replicas know someone watches here
                await asyncio.sleep(self.hub.bus.settle)
            await context.send_initial_metadata(())  # the subscription is in place: the client may go on
            async for message in sub.messages():
                yield message
            _fail(context, Unavailable("the server is shutting down; reconnect to go on watching (outliers found "
                                       "meanwhile are not sent)"))
        finally:
            self.hub.unsubscribe(sub)

    async def Export(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        try:
            tenant = self._tenant(context).tenant if self.tenancy is not None else ""
            # On a thread: taking the lease and writing the state through wait for the store.
            return await asyncio.to_thread(self.ingest.export, request, tenant)
        except DetectError as exc:
            self._rejected("Export", exc, context, started)
            return b""

    def end_streams(self) -> int:
        """Shutdown: end every open stream with UNAVAILABLE once the requests it has read are answered; new
        streams are refused the same way; Watch streams end once they have sent what they queued. Returns how
        many DetectStreams were open."""
        self._closing = True
        self.hub.close()
        for s in self._streams:
            if s.reading:  # parked in its read: nothing is in progress, so it can be woken at once
                s.ended_by_server = True
                s.task.cancel()
            # else it is running a batch or sending an answer, and sees _closing before its next read
        return len(self._streams)

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        """The generic handlers to register on a server: every method takes and returns raw bytes."""
        outliers = grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Detect": grpc.unary_unary_rpc_method_handler(self.Detect),
            "DetectStream": grpc.stream_stream_rpc_method_handler(self.DetectStream),
            "Watch": grpc.unary_stream_rpc_method_handler(self.Watch),
        })
        if self.ingest is None:
            return (outliers,)
        return outliers, grpc.method_handlers_generic_handler(otlp.SERVICE_NAME, {
            "Export": grpc.unary_unary_rpc_method_handler(self.Export)})
