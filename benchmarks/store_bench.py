"""What durable sessions cost: snapshot time and size in-process, and DetectStream throughput on a session with
the SQLite store against memory://, in interleaved rounds of one run.

    python -m benchmarks.store_bench [--rounds 3] [--duration 6] [--out DIR]

In-process: Session.snapshot() (the copy a stream's batch waits for, taken between batches on the event loop)
and SQLiteStore.save/load (on the store's writer thread) for 1 000 and 100 000 series. End to end: a streamer
server per store, each in its own process, driven by benchmarks/loadgen.py's pipelined stream on a named
session at 1 000 metrics a batch with 100 and 10 000 series; rounds alternate the servers, so the machine's
drift hits both alike. Prints a table and writes store.json to --out.
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
import numpy as np

from benchmarks import loadgen
from benchmarks.servers import ROOT, ServerProcess
from streamer.state import Session, SeriesState
from streamer.store.sqlite import SQLiteStore


def session_of(n: int) -> Session:
    state = SeriesState(1, max(n, 1))
    names = b"".join(f"host-{i:06d}.cpu.user".encode() for i in range(n))
    lengths = np.full(n, len(names) // max(n, 1), dtype=np.int64)
    offsets = np.arange(n, dtype=np.int64) * (lengths[0] if n else 0)
    state.table.intern(names, offsets, lengths)
    state.reserve(n)
    rng = np.random.default_rng(n)
    state.count[:n], state.mean[:n], state.spread[:n] = rng.integers(1, 10**6, n), rng.normal(size=n), rng.random(n)
    return Session("bench", state)


def best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def snapshot_costs(workdir: Path) -> list[dict]:
    out = []
    store = SQLiteStore(str(workdir / "bench.db"))
    store.acquire("bench", "me", 60, time.time())
    for n in (1_000, 100_000):
        session = session_of(n)
        snap = session.snapshot(time.time())
        out.append({"series": n, "bytes": snap.nbytes,
                    "copy_ms": best_ms(lambda: session.snapshot(time.time()), 20),
                    "save_ms": best_ms(lambda: store.save(snap, "me"), 10),
                    "load_ms": best_ms(lambda: store.load("bench"), 10),
                    "restore_ms": best_ms(lambda: SeriesState.from_snapshot(store.load("bench"), n), 5)})
    store.close()
    return out


def with_session(requests: list[bytes], name: str) -> list[bytes]:
    """The requests with `session` on the first (a field appended to a message is merged into it)."""
    tag = name.encode()
    return [requests[0] + b"\x1a" + bytes([len(tag)]) + tag] + requests[1:]


async def measure(addr: str, requests: list[bytes], duration: float, warmup: float) -> float:
    """Metrics per second of one pipelined session stream, after `warmup` seconds of the same load."""
    async with grpc.aio.insecure_channel(addr, options=[("grpc.max_send_message_length", loadgen.MAX_MESSAGE),
                                                        ("grpc.max_receive_message_length", loadgen.MAX_MESSAGE)]) \
            as channel:
        start = time.perf_counter()
        answers = await loadgen._stream_pipelined(channel, requests, start + warmup + duration, 32, [])
    return 0.0 if answers == 0 else answers * 1000 / (time.perf_counter() - start)


def interleaved(servers: dict, series: int, rounds: int, duration: float, prefix: str) -> dict[str, list[float]]:
    """Metrics/s of a pipelined session stream (1 000 metrics a batch over `series` series) on each server, in
    rounds that alternate the servers' order; a fresh session each round and server."""
    base = loadgen.encode_requests(1000, series, seed=1)
    figures = {name: [] for name in servers}
    for r in range(rounds):
        for name, server in (servers.items() if r % 2 == 0 else reversed(servers.items())):
            requests = with_session(base, f"{prefix}-{series}-{r}")
            figures[name].append(asyncio.run(measure(server.addr, requests, duration, 1.0)))
    return figures


def throughput(rounds: int, duration: float, workdir: Path, snapshot_seconds: float) -> list[dict]:
    servers = {
        "memory": ServerProcess("streamer"),
        "sqlite": ServerProcess("streamer", args=["--store", f"sqlite:///{workdir}/e2e.db",
                                                  "--snapshot-seconds", str(snapshot_seconds)]),
    }
    rows = []
    try:
        for series in (100, 10_000):
            figures = interleaved(servers, series, rounds, duration, "bench")
            mem, sql = (statistics.median(figures[k]) for k in ("memory", "sqlite"))
            rows.append({"series": series, "batch": 1000, "snapshot_seconds": snapshot_seconds,
                         "memory": figures["memory"], "sqlite": figures["sqlite"],
                         "sqlite_vs_memory": sql / mem})
    finally:
        for server in servers.values():
            server.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds a measurement, after 1 s of warm-up")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        costs = snapshot_costs(workdir)
        print("| series | snapshot bytes | copy (event loop) ms | save ms | load ms | restore ms |")
        print("|---:|---:|---:|---:|---:|---:|")
        for c in costs:
            print(f"| {c['series']:,} | {c['bytes']:,} | {c['copy_ms']:.2f} | {c['save_ms']:.2f} | "
                  f"{c['load_ms']:.2f} | {c['restore_ms']:.2f} |")
        rows = []
        for snapshot_seconds in (5.0, 1.0):
            rows += throughput(args.rounds, args.duration, workdir, snapshot_seconds)
    print()
    print("| series | snapshot every | memory:// metrics/s (median, min-max) | sqlite metrics/s | sqlite / memory |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        def fig(xs):
            return f"{statistics.median(xs) / 1e6:.2f} M ({min(xs) / 1e6:.2f}-{max(xs) / 1e6:.2f})"
        print(f"| {r['series']:,} | {r['snapshot_seconds']:g} s | {fig(r['memory'])} | {fig(r['sqlite'])} | "
              f"{r['sqlite_vs_memory']:.3f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "store.json").write_text(json.dumps({"snapshots": costs, "throughput": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
