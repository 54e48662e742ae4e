"""The transport ceiling: grpc.aio with the Outliers method paths (and OTLP's MetricsService/Export) taking raw
bytes and answering b"" unparsed.

Run as `python -m benchmarks.ceiling_server --port 0`; prints `ceiling ready on HOST:PORT` to stderr.
Whatever a server does with a request costs on top of this; no server on the same stack can beat it.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import AsyncIterator

import grpc

SERVICE_NAME = "pb.Outliers"
OTLP_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"


async def detect(request: bytes, context) -> bytes:
    return b""


async def detect_stream(requests: AsyncIterator[bytes], context) -> AsyncIterator[bytes]:
    # One (empty) answer per request, as streamer gives, so the load generator counts the same way.
    async for _ in requests:
        yield b""


def handlers() -> tuple[grpc.GenericRpcHandler, ...]:
    # No request_deserializer / response_serializer: grpc hands over and sends the bytes as they are. An empty
    # ExportMetricsServiceResponse is b"" too (full success).
    return (grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "Detect": grpc.unary_unary_rpc_method_handler(detect),
        "DetectStream": grpc.stream_stream_rpc_method_handler(detect_stream),
    }), grpc.method_handlers_generic_handler(OTLP_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(detect)}))


async def serve(host: str, port: int, max_message_mb: int) -> None:
    limit = max_message_mb * 1024 * 1024
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit)])
    server.add_generic_rpc_handlers(handlers())
    port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ceiling ready on {host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--max-message-mb", type=int, default=64)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.max_message_mb))


if __name__ == "__main__":
    main()
