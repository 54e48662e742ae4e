"""In-process wire path: ns per metric from request bytes to response bytes, numba columns vs protobuf objects.

Run alone with `python -m benchmarks.wire_bench [--quick] [--json PATH]`; the harness runs `run(quick)` too.
No grpc: one stream's batches, each decoded, interned, scored by kernels.welford_update and encoded, after JIT
warm-up, against parse-then-attributes (FromString, m.name / m.value into lists, a dict, numpy, same kernel,
the response built from protobuf objects), in the same run.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import metadata

import numpy as np

from streamer import kernels, series, wire
from streamer.pb import outliers_pb2 as pb
from streamer.series import SeriesTable

NAMES = ("cpu.user", "cpu.system", "mem.used_bytes", "disk.io.read")  # 4 series, interleaved
THRESHOLD = 2.0
WARMUP = 10
SETTINGS = {  # min_time: seconds per round; rounds: best of (the machine is shared: the best is the figure)
    "full": {"min_time": 0.5, "rounds": 5, "sizes": (1000, 100_000), "time": (True, False)},
    "quick": {"min_time": 0.15, "rounds": 3, "sizes": (1000, 100_000), "time": (True, False)},
}
METHODS = {
    "numba": "wire.decode_request + SeriesTable.intern + kernels.welford_update + wire.encode_flagged",
    "protobuf": "FromString, [m.name], [m.value], dict ids, np.array, kernels.welford_update, "
                "OutliersResponse(...).SerializeToString()",
}
STAGES = ("decode", "intern", "welford", "encode")  # the numba path, one stage at a time


def make_request(n: int, with_time: bool, seed: int = 7) -> bytes:
    """n metrics over NAMES in turn: values uniform in [0, 40) with 0.5% spikes in [100, 1000)."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 40.0, n)
    spikes = rng.random(n) < 0.005
    values[spikes] = rng.uniform(100.0, 1000.0, int(spikes.sum()))
    req = pb.OutliersRequest()
    for i, x in enumerate(values.tolist()):
        m = req.metrics.add(name=NAMES[i % len(NAMES)], value=x)
        if with_time:
            m.time.seconds = 1_700_000_000 + i // 1000
            m.time.nanos = (i % 1000) * 1_000_000 + 123
    return req.SerializeToString()


class NumbaPath:
    """One stream's state and buffers; step() answers the request once and returns the response bytes."""

    def __init__(self, buf: bytes):
        self.buf = buf
        self.table = SeriesTable(limit=100_000)
        n = len(wire.decode_request(buf))
        slots = max(64, n)  # room for as many series as metrics (stage_bench sends thousands)
        self.count = np.zeros(slots, dtype=np.int64)
        self.mean = np.zeros(slots, dtype=np.float64)
        self.m2 = np.zeros(slots, dtype=np.float64)
        self.idx = np.empty(n, dtype=np.int32)
        self.mean_out, self.std_out, self.z_out = (np.empty(n, dtype=np.float64) for _ in range(3))
        self.batch = 0
        self.k = 0

    def step(self) -> bytes:
        cols = wire.decode_request(self.buf)
        ids = self.table.intern(cols.buf, cols.name_start, cols.name_len, cols.name_hash)
        k = kernels.welford_update(ids, cols.values, self.count, self.mean, self.m2, THRESHOLD, WARMUP, False,
                                   self.idx, self.mean_out, self.std_out, self.z_out)
        out = wire.encode_flagged(self.batch, self.idx[:k], ids, cols.values, self.mean_out, self.std_out,
                                  self.z_out, self.table)
        self.batch += 1
        self.k = k
        return out

    def stages(self) -> dict:
        """Each stage alone, on the inputs the previous stage made (a closure per stage)."""
        cols = wire.decode_request(self.buf)
        ids = self.table.intern(cols.buf, cols.name_start, cols.name_len, cols.name_hash)
        k = kernels.welford_update(ids, cols.values, self.count, self.mean, self.m2, THRESHOLD, WARMUP, False,
                                   self.idx, self.mean_out, self.std_out, self.z_out)
        return {
            "decode": lambda: wire.decode_request(self.buf),
            "intern": lambda: self.table.intern(cols.buf, cols.name_start, cols.name_len, cols.name_hash),
            "welford": lambda: kernels.welford_update(ids, cols.values, self.count, self.mean, self.m2, THRESHOLD,
                                                      WARMUP, False, self.idx, self.mean_out, self.std_out,
                                                      self.z_out),
            "encode": lambda: wire.encode_flagged(1, self.idx[:k], ids, cols.values, self.mean_out, self.std_out,
                                                  self.z_out, self.table),
        }


class ProtobufPath:
    """The same work through protobuf objects: what a servicer without the wire path would do."""

    def __init__(self, buf: bytes):
        self.buf = buf
        self.slots: dict[str, int] = {}
        n = len(pb.OutliersRequest.FromString(buf).metrics)
        self.count = np.zeros(64, dtype=np.int64)
        self.mean = np.zeros(64, dtype=np.float64)
        self.m2 = np.zeros(64, dtype=np.float64)
        self.idx = np.empty(n, dtype=np.int32)
        self.mean_out, self.std_out, self.z_out = (np.empty(n, dtype=np.float64) for _ in range(3))
        self.batch = 0

    def step(self) -> bytes:
        req = pb.OutliersRequest.FromString(self.buf)
        metrics = req.metrics
        names = [m.name for m in metrics]
        values = np.array([m.value for m in metrics], dtype=np.float64)
        slots = self.slots
        ids = np.array([slots.setdefault(name, len(slots)) for name in names], dtype=np.int64)
        k = kernels.welford_update(ids, values, self.count, self.mean, self.m2, THRESHOLD, WARMUP, False,
                                   self.idx, self.mean_out, self.std_out, self.z_out)
        index = self.idx[:k].tolist()
        resp = pb.OutliersResponse(batch=self.batch, indices=index, outliers=[
            pb.Outlier(index=i, name=names[i], value=values[i], mean=m, stddev=s, zscore=z)
            for i, m, s, z in zip(index, self.mean_out[:k].tolist(), self.std_out[:k].tolist(),
                                  self.z_out[:k].tolist())])
        self.batch += 1
        return resp.SerializeToString()


def best_seconds(step, min_time: float, rounds: int) -> float:
    """Seconds per call of step(): the best of `rounds` rounds, each of at least min_time."""
    best = float("inf")
    for _ in range(rounds):
        calls = 0
        start = time.perf_counter()
        while True:
            step()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = min(best, elapsed / calls)
    return best


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("numpy", "numba", "grpcio", "protobuf"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def run(quick: bool = False, progress=None) -> dict:
    """Measure both paths (and the numba path's stages) at each size; returns a JSON-able dict."""
    settings = SETTINGS["quick" if quick else "full"]
    min_time, rounds = settings["min_time"], settings["rounds"]
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    start = time.perf_counter()
    wire.compile_all()
    series.compile_all()
    kernels.compile_all()
    compile_s = time.perf_counter() - start
    results = []
    for with_time in settings["time"]:
        for n in settings["sizes"]:
            buf = make_request(n, with_time)
            fast, slow = NumbaPath(buf), ProtobufPath(buf)
            for _ in range(WARMUP + 2):  # warm the JIT and the series state; both paths give the same answer
                a, b = fast.step(), slow.step()
            if pb.OutliersResponse.FromString(a) != pb.OutliersResponse.FromString(b):
                raise AssertionError(f"the two paths disagree at {n} metrics")
            row = {"metrics": n, "time": with_time, "bytes_per_metric": round(len(buf) / n, 1),
                   "outliers_per_batch": fast.k}
            for method, path in (("numba", fast), ("protobuf", slow)):
                row[method] = best_seconds(path.step, min_time, rounds) / n * 1e9
            row["speedup"] = row["protobuf"] / row["numba"]
            row["stages"] = {stage: best_seconds(step, min_time / 2, rounds) / n * 1e9
                             for stage, step in fast.stages().items()}
            results.append(row)
            say(f"wire: {n:>7} metrics {'with' if with_time else 'without'} time: numba {row['numba']:6.1f} "
                f"ns/metric, protobuf {row['protobuf']:6.1f} ns/metric, {row['speedup']:4.1f}x")
    return {"settings": {**settings, "sizes": list(settings["sizes"]), "time": list(settings["time"]),
                         "names": list(NAMES), "threshold": THRESHOLD, "warmup": WARMUP, "methods": METHODS,
                         "compile_all_s": round(compile_s, 2)},
            "versions": versions(), "results": results}


def format_table(report: dict) -> str:
    """Markdown: ns per metric of each path and the numba path's stages, and the speedup."""
    lines = ["| metrics | time | B/metric | numba ns/metric | protobuf ns/metric | speedup | "
             + " | ".join(STAGES) + " |",
             "|---:|:---:|---:|---:|---:|---:|" + "---:|" * len(STAGES)]
    for r in report["results"]:
        stages = " | ".join(f"{r['stages'][s]:.1f}" for s in STAGES)
        lines.append(f"| {r['metrics']:,} | {'yes' if r['time'] else 'no'} | {r['bytes_per_metric']} | "
                     f"{r['numba']:.1f} | {r['protobuf']:.1f} | {r['speedup']:.1f}x | {stages} |")
    v = report["versions"]
    lines.append("")
    lines.append(", ".join(f"{k} {v[k]}" for k in v) + f"; compile_all {report['settings']['compile_all_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    report = run(quick=args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(format_table(report))


if __name__ == "__main__":
    main()
