"""Which grpc server kind to run streamer on: a sync thread-pool server vs grpc.aio, same pipeline.

Both run streamer.detector's StreamDetector on raw request bytes (as streamer's service does), each in its
own spawned process; one asyncio client process drives pipelined DetectStream calls (1 and 16 concurrent
streams, 4 series). Rounds alternate sync/aio so a noisy neighbour hits both. `python -m benchmarks.sync_vs_aio`
"""
from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent import futures

import grpc
import numpy as np

from streamer import detector
from streamer.pb import outliers_pb2 as pb
from streamer.service import OutliersService
from streamer.state import SessionRegistry


def _request_bytes(n: int) -> bytes:
    values = np.random.default_rng(0).normal(0, 1, n)
    return pb.OutliersRequest(metrics=[pb.Metric(name=f"s{i % 4}", value=v)
                                       for i, v in enumerate(values.tolist())]).SerializeToString()


def _run_sync(queue) -> None:
    defaults, sessions = detector.Defaults(), SessionRegistry(600, 1000, 100_000)

    def detect_stream(requests, context):
        stream = detector.StreamDetector(defaults, sessions)
        try:
            for request in requests:
                yield stream.process(request)
        finally:
            stream.close()

    server = grpc.server(futures.ThreadPoolExecutor(32))  # one thread per open stream
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("pb.Outliers", {
        "DetectStream": grpc.stream_stream_rpc_method_handler(detect_stream)}),))
    queue.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    server.wait_for_termination()


def _run_aio(queue) -> None:
    async def main():
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (OutliersService(detector.Defaults(), SessionRegistry(600, 1000, 100_000)).handlers()))
        queue.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()
    asyncio.run(main())


async def _stream(port: int, payload: bytes, batches: int) -> float:
    """Pipelined: the writer does not wait for answers. Returns metrics per second."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream("/pb.Outliers/DetectStream")()

        async def send():
            for _ in range(batches):
                await call.write(payload)
            await call.done_writing()

        start = time.perf_counter()
        writer = asyncio.create_task(send())
        async for _ in call:
            pass
        await writer
        return batches * len(payload) / (time.perf_counter() - start)


async def _measure(port: int) -> dict:
    out = {}
    for size in (100, 1000):
        payload = _request_bytes(size)
        rate = await _stream(port, payload, 120_000 // size * 10) / len(payload) * size
        out[f"{size}x1"] = rate
    payload = _request_bytes(1000)
    rates = await asyncio.gather(*[_stream(port, payload, 200) for _ in range(16)])
    out["1000x16"] = sum(rates) / len(payload) * 1000
    return out


def main(rounds: int = 2) -> None:
    ctx = multiprocessing.get_context("spawn")  # no fork after grpc objects exist in this process
    results: dict = {}
    for _ in range(rounds):
        for kind, target in (("sync", _run_sync), ("aio", _run_aio)):
            queue = ctx.Queue()
            proc = ctx.Process(target=target, args=(queue,), daemon=True)
            proc.start()
            try:
                for key, rate in asyncio.run(_measure(queue.get(timeout=120))).items():
                    results.setdefault((kind, key), []).append(rate)
            finally:
                proc.kill()
                proc.join()
    print(f"{'server':<6} {'metrics x streams':<18} metrics/s per round")
    for (kind, key), rates in sorted(results.items()):
        print(f"{kind:<6} {key:<18} " + "  ".join(f"{r / 1e6:.2f} M" for r in rates))


if __name__ == "__main__":
    main()
