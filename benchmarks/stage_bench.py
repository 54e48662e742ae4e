"""`python -m benchmarks.stage_bench [--sizes 10000 100000] [--rounds 5]`: where the in-process pipeline's
time goes, per stage, in CPU ns a metric (this thread's CPU time, so time the shared machine gives to other
work is not counted), for both RPCs, with the requests of benchmarks/wire_bench.py (4 series, timestamps).

DetectStream: the whole `StreamDetector.process` (what the server's handler calls per message), the fused
pass's decode (`StreamPass.decode`: wire format, name lengths, hashes), and the stages of the apply step each
on its own (`SeriesTable.intern`, `kernels.welford_update`, `wire.encode_flagged`, as benchmarks/wire_bench.py
runs them); "rest" is the whole minus decode and the three stages (the fused apply's own overhead and the
detector's bookkeeping). Detect: the whole `detector.detect`, then `wire.decode_request`, a fresh
`SeriesTable.intern`, `kernels.detect_batch` and the encode. Each figure: the median (min-max) of --rounds
rounds, each the best of 3 short runs. Writes results/stages.{json,md} and prints the table.

`--series S` (default 2000) sends the collector's layout instead: S series (names of 16-30 bytes, as
go/cmd/collector's) in the same order in every message, each metric with a timestamp; `--series 0` sends
wire_bench's 4 interleaved names.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def cpu_ns_per_metric(step, n: int, seconds: float) -> float:
    best = float("inf")
    for _ in range(3):
        calls, start = 0, time.thread_time()
        while time.thread_time() - start < seconds / 3:
            step()
            calls += 1
        best = min(best, (time.thread_time() - start) / calls / n * 1e9)
    return best


KINDS = ("cpu.user", "cpu.system", "cpu.iowait", "mem.used_bytes", "mem.cached_bytes", "disk.io.read_bytes",
         "disk.io.write_bytes", "net.rx_bytes", "net.tx_bytes", "load.1m")


def collector_request(n: int, series: int, seed: int) -> bytes:
    """n metrics over `series` names in a fixed order (metric i is series i % series), values normal with
    0.5% spikes, each with a time (seconds and nanos), encoded by the protobuf library."""
    from streamer.pb import outliers_pb2 as pb

    rng = np.random.default_rng(seed)
    values = rng.normal(20.0, 3.0, n)
    spikes = rng.random(n) < 0.005
    values[spikes] = rng.uniform(100.0, 1000.0, int(spikes.sum()))
    names = [f"host{s // len(KINDS):04d}.{KINDS[s % len(KINDS)]}" for s in range(series)]
    req = pb.OutliersRequest()
    t0 = 1_700_000_000 + 60 * seed
    for i, x in enumerate(values.tolist()):
        m = req.metrics.add(name=names[i % series], value=x)
        m.time.seconds = t0 + i // series
        m.time.nanos = 1_000_000 * (i % 1000) + 123_456
    return req.SerializeToString()


def measure(n: int, seconds: float, series: int = 0) -> dict:
    from benchmarks.wire_bench import THRESHOLD, NumbaPath, make_request
    from streamer import detector, fused, kernels, wire
    from streamer.series import SeriesTable
    from streamer.state import SessionRegistry

    defaults = detector.Defaults()
    requests = [collector_request(n, series, seed) if series else make_request(n, True, seed) for seed in range(4)]
    out: dict[str, float] = {}
    stream = detector.StreamDetector(defaults, SessionRegistry(60.0, 1, 100_000))  # a private stream
    for r in requests * 3:
        stream.process(r)
    turn = iter(range(1 << 62))
    out["stream: total"] = cpu_ns_per_metric(lambda: stream.process(requests[next(turn) % 4]), n, seconds)
    fast = fused.StreamPass()
    out["stream: decode"] = cpu_ns_per_metric(lambda: fast.decode(requests[0]), n, seconds)
    path = NumbaPath(requests[0])
    for _ in range(3):
        path.step()
    for name, step in path.stages().items():
        if name != "decode":
            out[f"stream: {name}"] = cpu_ns_per_metric(step, n, seconds)
    stages = ("decode", "intern", "welford", "encode")
    out["stream: rest"] = out["stream: total"] - sum(out[f"stream: {s}"] for s in stages)
    out["detect: total"] = cpu_ns_per_metric(lambda: detector.detect(requests[0], defaults), n, seconds)
    out["detect: decode"] = cpu_ns_per_metric(lambda: wire.decode_request(requests[0]), n, seconds)
    cols = wire.decode_request(requests[0])

    def intern():
        table = SeriesTable(defaults.max_series)
        return table, table.intern(cols.buf, cols.name_start, cols.name_len, cols.name_hash)

    out["detect: intern"] = cpu_ns_per_metric(intern, n, seconds)
    table, ids = intern()
    idx = np.empty(n, dtype=np.int32)
    mean, std, z = (np.empty(n, dtype=np.float64) for _ in range(3))
    out["detect: detect_batch"] = cpu_ns_per_metric(
        lambda: kernels.detect_batch(ids, cols.values, len(table), THRESHOLD, idx, mean, std, z), n, seconds)
    k = kernels.detect_batch(ids, cols.values, len(table), THRESHOLD, idx, mean, std, z)
    out["detect: encode"] = cpu_ns_per_metric(
        lambda: wire.encode_flagged(0, idx[:k], ids, cols.values, mean, std, z, table), n, seconds)
    stages = ("decode", "intern", "detect_batch", "encode")
    out["detect: rest"] = out["detect: total"] - sum(out[f"detect: {s}"] for s in stages)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stage_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.6, help="per figure and round")
    parser.add_argument("--series", type=int, default=2000, help="the collector's layout (0: 4 names)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load = os.getloadavg()
    rounds = {n: [] for n in args.sizes}
    for i in range(args.rounds):
        for n in args.sizes:
            rounds[n].append(measure(n, args.seconds, args.series))
            print(f"round {i + 1} {n}: " + ", ".join(f"{k} {v:.1f}" for k, v in rounds[n][-1].items()),
                  file=sys.stderr, flush=True)
    keys = list(rounds[args.sizes[0]][0])
    doc = {"sizes": args.sizes, "series": args.series, "rounds": rounds, "load_average": [load, list(os.getloadavg())]}
    layout = f"{args.series} series in a fixed order" if args.series else "4 interleaved names"
    lines = [f"CPU ns a metric (this thread's CPU time), median (min-max) of {args.rounds} rounds; {layout}, "
             f"timestamps set; load average "
             f"{load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end.", "",
             "| stage | " + " | ".join(f"{n:,} a message" for n in args.sizes) + " |",
             "|---|" + "---:|" * len(args.sizes)]
    for key in keys:
        cells = []
        for n in args.sizes:
            xs = [r[key] for r in rounds[n]]
            cells.append(f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stages.json").write_text(json.dumps(doc, indent=1))
    (args.out / "stages.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
