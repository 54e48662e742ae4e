"""Python load generator: grpc.aio with pre-encoded request bytes, pipelined streams and lock-step calls.

One job from flags (`python -m benchmarks.loadgen --addr HOST:PORT --rpc stream ...`, prints one JSON object),
or a worker (`--jobs`) that reads one JSON job per line on stdin and answers one JSON line each on stdout; the
harness keeps one worker for a run so requests are encoded once, not once per server.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import sys
import time

import grpc
import numpy as np

from streamer.pb import outliers_pb2 as pb

PATHS = {"detect": "/pb.Outliers/Detect", "stream": "/pb.Outliers/DetectStream"}
MAX_MESSAGE = 64 * 1024 * 1024
EPOCH = 1_700_000_000  # seconds; the timestamps the requests carry (carried by servers, not scored)
SPIKE_RATE = 0.005     # share of values that are spikes (the outliers a server should flag)
QUANTILES = tuple(range(0, 101, 5))  # latency quantiles kept for the distribution plot
CALL_SLACK = 60.0      # seconds a call may run past the measurement before it counts as hung (deadline)


@dataclasses.dataclass(frozen=True)
class Job:
    """One measurement: which call, how big, how many at once, for how long."""

    addr: str
    rpc: str = "stream"          # "stream" (DetectStream) or "detect" (unary Detect)
    load: str = "pipelined"      # "pipelined": send without waiting for answers; "lockstep": one at a time
    batch: int = 1000            # metrics per request
    series: int = 4              # distinct metric names the requests cycle through (per stream)
    streams: int = 1             # concurrent streams (stream) or concurrent callers (detect)
    duration: float = 2.0        # seconds of measurement
    warmup: float = 0.5          # seconds of the same load before it, not counted
    window: int = 32             # pipelined: requests a stream may have unanswered (bounds client memory)
    seed: int = 1
    server_pid: int = 0          # when set, the server's CPU time over the measurement is reported


def encode_requests(batch: int, series: int, seed: int) -> list[bytes]:
    """Serialized OutliersRequests that together cycle through `series` names, round robin.

    Values are uniform in [0, 40) with SPIKE_RATE of them spikes in [100, 1000): like the classic sample, the
    uniform part never leaves 2 standard deviations, so what is flagged is (close to) the spikes. Every metric
    carries a timestamp, as collectors send them. Built with the protobuf library: slow, but once per shape.
    """
    rng = np.random.default_rng(seed)
    n_requests = max(math.ceil(series / batch), 2 if batch >= 100_000 else 8)
    names = [f"metric-{j}" for j in range(series)]
    out = []
    for i in range(n_requests):
        values = rng.uniform(0.0, 40.0, batch)
        spikes = rng.random(batch) < SPIKE_RATE
        values[spikes] = rng.uniform(100.0, 1000.0, int(spikes.sum()))
        first = i * batch
        request = pb.OutliersRequest()
        for k, value in enumerate(values.tolist()):
            m = request.metrics.add(name=names[(first + k) % series], value=value)
            m.time.seconds = EPOCH + (first + k) // 1000
            m.time.nanos = ((first + k) % 1000) * 1_000_000
        out.append(request.SerializeToString())
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux); 0 when unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def _stream_pipelined(channel, requests, deadline, window, latencies) -> int:
    """One stream: write requests until the deadline with at most `window` unanswered; returns answers read."""
    call = channel.stream_stream(PATHS["stream"])(timeout=deadline - time.perf_counter() + CALL_SLACK)
    free = asyncio.Semaphore(window)

    async def send() -> None:
        i = 0
        while time.perf_counter() < deadline:
            await free.acquire()
            await call.write(requests[i % len(requests)])
            i += 1
        await call.done_writing()

    sender = asyncio.create_task(send())
    answers = 0
    try:
        while await call.read() is not grpc.aio.EOF:
            answers += 1
            free.release()
        await sender
    finally:
        sender.cancel()
    return answers


async def _stream_lockstep(channel, requests, deadline, window, latencies) -> int:
    """One stream: write a request, wait for its answer, repeat until the deadline."""
    call = channel.stream_stream(PATHS["stream"])(timeout=deadline - time.perf_counter() + CALL_SLACK)
    answers = 0
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        await call.write(requests[answers % len(requests)])
        if await call.read() is grpc.aio.EOF:
            raise RuntimeError("the server ended the stream early")
        latencies.append(time.perf_counter() - start)
        answers += 1
    await call.done_writing()
    if await call.read() is not grpc.aio.EOF:
        raise RuntimeError("the server answered more than once per request")
    return answers


async def _detect_lockstep(channel, requests, deadline, window, latencies) -> int:
    """One caller: a unary Detect, wait for its answer, repeat until the deadline."""
    detect = channel.unary_unary(PATHS["detect"])
    answers = 0
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        await detect(requests[answers % len(requests)], timeout=CALL_SLACK)
        latencies.append(time.perf_counter() - start)
        answers += 1
    return answers


async def _detect_pipelined(channel, requests, deadline, window, latencies) -> int:
    """`window` unary Detects in flight from one caller, a new one as each answers, until the deadline."""
    detect = channel.unary_unary(PATHS["detect"])
    answers = 0

    async def one_caller(offset: int) -> None:
        nonlocal answers
        i = offset
        while time.perf_counter() < deadline:
            await detect(requests[i % len(requests)], timeout=CALL_SLACK)
            answers += 1
            i += window
    await asyncio.gather(*(one_caller(k) for k in range(window)))
    return answers


RUNNERS = {("stream", "pipelined"): _stream_pipelined, ("stream", "lockstep"): _stream_lockstep,
           ("detect", "pipelined"): _detect_pipelined, ("detect", "lockstep"): _detect_lockstep}


async def _measure(job: Job, requests: list[bytes], duration: float) -> dict:
    runner = RUNNERS[(job.rpc, job.load)]
    options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
    async with grpc.aio.insecure_channel(job.addr, options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        latencies: list[float] = []
        server_cpu, client_cpu = _cpu_seconds(job.server_pid) if job.server_pid else 0.0, time.process_time()
        start = time.perf_counter()
        # Every stream's own offset into the requests, so concurrent streams do not send identical bytes.
        counts = await asyncio.gather(*(
            runner(channel, requests[k % len(requests):] + requests[:k % len(requests)], start + duration,
                   job.window, latencies)
            for k in range(job.streams)))
        elapsed = time.perf_counter() - start
        server_cpu = _cpu_seconds(job.server_pid) - server_cpu if job.server_pid else None
        client_cpu = time.process_time() - client_cpu
    batches = sum(counts)
    result = {"batches": batches, "metrics": batches * job.batch, "elapsed_s": elapsed,
              "metrics_per_s": batches * job.batch / elapsed, "batches_per_s": batches / elapsed,
              "request_bytes": sum(map(len, requests)) / len(requests),
              "cpu": {"client_cores": client_cpu / elapsed}}
    if server_cpu is not None:
        result["cpu"]["server_cores"] = server_cpu / elapsed
    if latencies:
        ms = np.asarray(latencies) * 1e3
        result["latency_ms"] = {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                                "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()),
                                "max": float(ms.max()), "samples": int(ms.size)}
        result["latency_quantiles_ms"] = [float(q) for q in np.percentile(ms, QUANTILES)]
    return result


class LoadGenerator:
    """Runs jobs; keeps the encoded requests of each (batch, series, seed) for the next job of that shape."""

    def __init__(self):
        self._requests: dict[tuple[int, int, int], list[bytes]] = {}

    def run(self, job: Job) -> dict:
        key = (job.batch, job.series, job.seed)
        if key not in self._requests:
            self._requests[key] = encode_requests(*key)
        requests = self._requests[key]
        try:
            if job.warmup > 0:
                asyncio.run(_measure(job, requests, job.warmup))
            return asyncio.run(_measure(job, requests, job.duration))
        except grpc.RpcError as exc:
            return {"error": f"{exc.code().name}: {exc.details()}"}
        except (RuntimeError, asyncio.TimeoutError, OSError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}


def _serve_jobs() -> None:
    generator = LoadGenerator()
    for line in sys.stdin:
        if line.strip():
            result = generator.run(Job(**json.loads(line)))
            print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--jobs", action="store_true", help="worker: JSON jobs on stdin, JSON results on stdout")
    defaults = Job(addr="")
    parser.add_argument("--addr", default="127.0.0.1:9999")
    parser.add_argument("--rpc", choices=["stream", "detect"], default=defaults.rpc)
    parser.add_argument("--load", choices=["pipelined", "lockstep"], default=defaults.load)
    for field in ("batch", "series", "streams", "window", "seed", "server_pid"):
        parser.add_argument("--" + field.replace("_", "-"), type=int, default=getattr(defaults, field))
    for field in ("duration", "warmup"):
        parser.add_argument("--" + field, type=float, default=getattr(defaults, field))
    args = vars(parser.parse_args(argv))
    if args.pop("jobs"):
        _serve_jobs()
        return
    print(json.dumps(LoadGenerator().run(Job(**args)), indent=2))


if __name__ == "__main__":
    main()
