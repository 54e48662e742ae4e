"""The Outliers servicer: bytes in, pipeline, bytes out, and each failure mapped to one status code.

The methods are registered with raw-bytes (de)serializers (no request_deserializer), not through the generated
`add_OutliersServicer_to_server`: the pipeline decodes the request bytes itself into columns (wire.py), which is
where the time goes; the paths and messages on the wire are exactly those of protos/outliers.proto.
"""
from __future__ import annotations

import logging
from typing import AsyncIterator

import grpc

from streamer import detector
from streamer.errors import DetectError
from streamer.state import SessionRegistry

log = logging.getLogger(__name__)

SERVICE_NAME = "pb.Outliers"


class OutliersService:
    """Detect (unary) and DetectStream (bidirectional stream) over raw request bytes."""

    def __init__(self, defaults: detector.Defaults, sessions: SessionRegistry):
        self.defaults = defaults
        self.sessions = sessions

    async def Detect(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return detector.detect(request, self.defaults)
        except DetectError as exc:
            await context.abort(grpc.StatusCode[exc.code], str(exc))

    async def DetectStream(self, requests: AsyncIterator[bytes],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        stream = detector.StreamDetector(self.defaults, self.sessions)
        try:
            async for request in requests:
                try:
                    response = stream.process(request)
                except DetectError as exc:
                    log.info("DetectStream from %s ended: %s: %s", context.peer(), exc.code, exc)
                    await context.abort(grpc.StatusCode[exc.code], str(exc))
                yield response
        finally:
            # Runs on normal end, on abort, and when the client cancels or its deadline passes
            # (the generator is closed with CancelledError): the session is free for the next stream.
            stream.close()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to register on a server: both methods take and return raw bytes."""
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Detect": grpc.unary_unary_rpc_method_handler(self.Detect),
            "DetectStream": grpc.stream_stream_rpc_method_handler(self.DetectStream),
        })
