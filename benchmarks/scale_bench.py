"""Scale-out figures: throughput with --workers 1 against --workers N under the Go load generator (several
connections), and a session stream's throughput on each store (memory://, SQLite, Redis), in interleaved
rounds of one run.

    python -m benchmarks.scale_bench [--workers 1,2] [--rounds 3] [--duration 4] [--out DIR]

Workers: one server per worker count, each its own process on the SQLite store, driven in turn by
go/cmd/loadgen with 4 connections (DetectStream pipelined, and unary Detect in lock step, 1 000 metrics a
batch, 100 series); on a machine of C cores `--workers 1,0` compares one worker with one per core. The load
generator shares the machine: on 2 cores it takes about one of them, so read the ratio as "what a second core
gives when the client has the other". Stores: benchmarks/store_bench.py's session stream (Python, pipelined)
against memory://, sqlite:/// and redis:// (a redis-server started here, without persistence). Prints two
tables and writes scale.json to --out.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import golang
from benchmarks.scenarios import Scenario
from benchmarks.servers import ROOT, ServerProcess
from benchmarks.store_bench import interleaved

SCENARIOS = (Scenario("stream", "pipelined", 1000, 100, 4, 32), Scenario("detect", "lockstep", 1000, 100, 4))


def fig(xs, scale=1e6, unit=" M", digits=2) -> str:
    lo, hi = min(xs) / scale, max(xs) / scale
    return f"{statistics.median(xs) / scale:.{digits}f}{unit} ({lo:.{digits}f}-{hi:.{digits}f})"


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (make redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def workers(counts: list[int], rounds: int, duration: float, workdir: Path) -> list[dict]:
    why = golang.unavailable()
    if why:
        raise SystemExit(f"the Go load generator is needed: {why}")
    gen = golang.GoLoadGenerator(workdir)
    servers = {n: ServerProcess("streamer", args=("--workers", str(n), "--store", f"sqlite:///{workdir}/w{n}.db"))
               for n in counts}
    rows = []
    try:
        for scenario in SCENARIOS:
            figures = {n: [] for n in counts}
            for r in range(rounds):
                for n in (counts if r % 2 == 0 else counts[::-1]):
                    result = gen.run(servers[n].addr, scenario, duration, 1.0)
                    if "error" in result:
                        raise SystemExit(f"--workers {n}, {scenario.label()}: {result['error']}")
                    figures[n].append(result["metrics_per_s"])
            rows.append({"scenario": scenario.label(), "metrics_per_s": {str(n): v for n, v in figures.items()},
                         "ratio": statistics.median(figures[counts[-1]]) / statistics.median(figures[counts[0]])})
    finally:
        for s in servers.values():
            s.stop()
    return rows


def stores(rounds: int, duration: float, workdir: Path) -> list[dict]:
    redis, url = start_redis(workdir)
    servers = {"memory": ServerProcess("streamer"),
               "sqlite": ServerProcess("streamer", args=("--store", f"sqlite:///{workdir}/stores.db")),
               "redis": ServerProcess("streamer", args=("--store", url))}
    rows = []
    try:
        for series in (100, 10_000):
            rows.append({"series": series, "metrics_per_s": interleaved(servers, series, rounds, duration, "scale")})
    finally:
        for s in servers.values():
            s.stop()
        redis.kill()
        redis.wait()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, comma-separated (0: per core)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds a measurement, after 1 s of warm-up")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        scale = workers(counts, args.rounds, args.duration, Path(tmp))
        store = stores(args.rounds, args.duration, Path(tmp))
    print("| load (Go loadgen, 4 connections) | " + " | ".join(f"--workers {n} metrics/s" for n in counts)
          + f" | {counts[-1]} / {counts[0]} |")
    print("|---|" + "---:|" * (len(counts) + 1))
    for row in scale:
        print(f"| {row['scenario']} | " + " | ".join(fig(row["metrics_per_s"][str(n)]) for n in counts)
              + f" | {row['ratio']:.2f} |")
    print()
    print("| session stream (Python, pipelined, 1,000/batch) | memory:// | sqlite | redis | redis / sqlite |")
    print("|---|---:|---:|---:|---:|")
    for row in store:
        m = row["metrics_per_s"]
        print(f"| {row['series']:,} series | {fig(m['memory'])} | {fig(m['sqlite'])} | {fig(m['redis'])} | "
              f"{statistics.median(m['redis']) / statistics.median(m['sqlite']):.2f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps({"workers": scale, "stores": store}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
