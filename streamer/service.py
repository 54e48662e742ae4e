"""The Outliers servicer: bytes in, pipeline, bytes out, and each failure mapped to one status code.

The methods are registered with raw-bytes (de)serializers (no request_deserializer), not through the generated
`add_OutliersServicer_to_server`: the pipeline decodes the request bytes itself into columns (streamer/wire/),
which is where the time goes; the paths and messages on the wire are exactly those of protos/outliers.proto.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable

import grpc

from streamer import detector
from streamer.errors import DetectError, Unavailable
from streamer.state import SessionRegistry

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
    """What shutdown needs to know of one open DetectStream: its task, and whether it waits for a request."""

    __slots__ = ("task", "reading", "ended_by_server")

    def __init__(self, task: asyncio.Task):
        self.task = task
        self.reading = False          # parked in the read of the next request (the only place it may be cancelled)
        self.ended_by_server = False  # end_streams() cancelled that read


SHUTTING_DOWN = ("the server is shutting down; every batch it read from this stream has been answered: resend any "
                 "unanswered batch on a new stream")


class OutliersService:
    """Detect (unary) and DetectStream (bidirectional stream) over raw request bytes."""

    def __init__(self, defaults: detector.Defaults, sessions: SessionRegistry):
        self.defaults = defaults
        self.sessions = sessions
        # The open streams, and whether shutdown has begun; only touched on the event loop's thread.
        self._streams: set[_Stream] = set()
        self._closing = False

    async def Detect(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await _run(lambda r: detector.detect(r, self.defaults), request)
        except DetectError as exc:
            _fail(context, exc)
            return b""  # discarded: grpc sends the status set above

    async def DetectStream(self, requests: AsyncIterator[bytes],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        stream = detector.StreamDetector(self.defaults, self.sessions)
        me = _Stream(asyncio.current_task())
        self._streams.add(me)
        try:
            next_request = requests.__aiter__().__anext__
            while True:
                if self._closing:
                    break
                me.reading = True
                try:
                    request = await next_request()
                except StopAsyncIteration:
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
                    log.info("DetectStream from %s ended: %s: %s", context.peer(), exc.code, exc)
                    _fail(context, exc)
                    return  # the finally below frees the session before grpc sends the status
                yield response
            # Shutdown: every request read so far has had its answer; the client retries on UNAVAILABLE.
            _fail(context, Unavailable(SHUTTING_DOWN))
        finally:
            # Runs on normal end, after a rejected batch, and when the client cancels or its deadline passes
            # (the generator is closed with CancelledError): the session is free for the next stream.
            self._streams.discard(me)
            stream.close()

    def end_streams(self) -> int:
        """Shutdown: end every open stream with UNAVAILABLE once the requests it has read are answered; new
        streams are refused the same way. Returns how many streams were open."""
        self._closing = True
        for s in self._streams:
            if s.reading:  # parked in its read: nothing is in progress, so it can be woken at once
                s.ended_by_server = True
                s.task.cancel()
            # else it is running a batch or sending an answer, and sees _closing before its next read
        return len(self._streams)

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to register on a server: both methods take and return raw bytes."""
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Detect": grpc.unary_unary_rpc_method_handler(self.Detect),
            "DetectStream": grpc.stream_stream_rpc_method_handler(self.DetectStream),
        })
