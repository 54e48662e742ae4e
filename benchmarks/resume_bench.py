"""What exact resume costs: DetectStream throughput on a session in the SQLite store with numbered requests
(the sequence check, the kept answers, the durable acknowledgements) against the same requests unnumbered,
in interleaved rounds of one run, on one server.

    python -m benchmarks.resume_bench [--rounds 6] [--duration 4] [--out DIR]

Both variants append two to four bytes to each pre-encoded request as it is written (seq = n, or seq = 0, which
means "not given"), so the load generator does the same work for both; the server's answers to numbered
requests carry applied_seq and durable_seq. Pipelined, 32 requests in flight, 1 000 metrics a batch, 100 and
10 000 series, a fresh session each round. Prints a table and writes resume.json to --out.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from benchmarks import loadgen
from benchmarks.servers import ROOT, ServerProcess
from benchmarks.store_bench import with_session


def _varint(x: int) -> bytes:
    out = bytearray()
    while x >= 0x80:
        out.append(x & 0x7F | 0x80)
        x >>= 7
    out.append(x)
    return bytes(out)


async def measure(addr: str, requests: list[bytes], numbered: bool, duration: float, warmup: float) -> float:
    """Metrics per second of one pipelined session stream over the measured `duration` (after `warmup`)."""
    options = [("grpc.max_send_message_length", loadgen.MAX_MESSAGE),
               ("grpc.max_receive_message_length", loadgen.MAX_MESSAGE)]
    async with grpc.aio.insecure_channel(addr, options=options) as channel:
        start = time.perf_counter()
        measured_from, deadline = start + warmup, start + warmup + duration
        call = channel.stream_stream(loadgen.PATHS["stream"])(timeout=warmup + duration + 30)
        free = asyncio.Semaphore(32)

        async def send() -> None:
            n = 0
            while time.perf_counter() < deadline:
                await free.acquire()
                n += 1
                await call.write(requests[(n - 1) % len(requests)] + b"\x20" + _varint(n if numbered else 0))
            await call.done_writing()

        sender = asyncio.create_task(send())
        counted, last = 0, b""
        while (answer := await call.read()) is not grpc.aio.EOF:
            free.release()
            last = answer
            if time.perf_counter() >= measured_from:
                counted += 1
        await sender
        if numbered and b"\x30" not in last[-12:]:  # durable_seq: the store has acknowledged something
            raise SystemExit("numbered requests got no durable_seq: the server does not make them durable")
    return counted * 1000 / (time.perf_counter() - measured_from)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds a measurement, after 1 s of warm-up")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess("streamer", args=["--store", f"sqlite:///{tmp}/resume.db"])
        try:
            for series in (100, 10_000):
                base = loadgen.encode_requests(1000, series, seed=1)
                figures = {"unnumbered": [], "numbered": []}
                for r in range(args.rounds):
                    order = ("unnumbered", "numbered") if r % 2 == 0 else ("numbered", "unnumbered")
                    for variant in order:
                        requests = with_session(base, f"resume-{series}-{variant}-{r}")
                        figures[variant].append(asyncio.run(
                            measure(server.addr, requests, variant == "numbered", args.duration, 1.0)))
                ratios = [n / u for n, u in zip(figures["numbered"], figures["unnumbered"])]
                rows.append({"series": series, "batch": 1000, **figures, "numbered_vs_unnumbered": ratios})
        finally:
            server.stop()
    print("| series | unnumbered metrics/s (median, min-max) | numbered metrics/s | numbered / unnumbered "
          "(median of rounds, min-max) |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        def fig(xs, scale=1e6, unit=" M", digits=2):
            return f"{statistics.median(xs) / scale:.{digits}f}{unit} ({min(xs) / scale:.{digits}f}-" \
                   f"{max(xs) / scale:.{digits}f})"
        print(f"| {r['series']:,} | {fig(r['unnumbered'])} | {fig(r['numbered'])} | "
              f"{fig(r['numbered_vs_unnumbered'], 1, '', 3)} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "resume.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
