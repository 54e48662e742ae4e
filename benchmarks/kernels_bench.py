"""Kernel micro-benchmarks: updates/s of the numba kernels against plain-Python Welford and numpy recomputation.

Run alone with `python -m benchmarks.kernels_bench [--quick|--tiny] [--json PATH]`; the harness runs it too.
In-process, no grpc: what the state update costs per metric, after JIT warm-up, at 1 to 100 000 series.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from benchmarks.wire_bench import best_seconds
from streamer import kernels

SERIES = (1, 100, 10_000, 100_000)
THRESHOLD = 2.0
WARMUP = 10
ALPHA = 0.05
# name: (what it is, for the table)
METHODS = {
    "welford_update": "numba, Welford 1962 (MODE_CUMULATIVE)",
    "ewm_update": "numba, Finch 2009 (MODE_EXPONENTIAL)",
    "detect_batch": "numba, unary batch statistics",
    "python_welford": "plain Python loop, Welford 1962",
    "numpy_recompute": "numpy, mean/std of the whole history per batch",
}
SETTINGS = {  # min_time: seconds per round; rounds: best of; history: batches numpy_recompute keeps
    "full": {"min_time": 0.3, "rounds": 3, "history": 20, "series": SERIES},
    "quick": {"min_time": 0.1, "rounds": 2, "history": 10, "series": SERIES},
    "tiny": {"min_time": 0.01, "rounds": 1, "history": 3, "series": (1, 100)},
}


def make_batch(n_series: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """int64 series ids and float64 values: uniform [0, 40) with 0.5% spikes, at least one value per series."""
    rng = np.random.default_rng(seed)
    n = max(10_000, n_series)
    ids = rng.integers(0, n_series, n).astype(np.int64)
    values = rng.uniform(0.0, 40.0, n)
    spikes = rng.random(n) < 0.005
    values[spikes] = rng.uniform(100.0, 1000.0, int(spikes.sum()))
    return ids, values


def _numba_steps(ids, values, n_series):
    """Closures running each numba kernel on the batch with fresh state; called once each to warm up the JIT."""
    n = len(values)
    idx = np.empty(n, dtype=np.int32)
    outs = [np.empty(n, dtype=np.float64) for _ in range(3)]
    count = np.zeros(n_series, dtype=np.int64)
    mean = np.zeros(n_series, dtype=np.float64)
    m2 = np.zeros(n_series, dtype=np.float64)
    e_count = np.zeros(n_series, dtype=np.int64)
    e_mean = np.zeros(n_series, dtype=np.float64)
    e_var = np.zeros(n_series, dtype=np.float64)
    steps = {
        "welford_update": lambda: kernels.welford_update(ids, values, count, mean, m2, THRESHOLD, WARMUP, False,
                                                         idx, *outs),
        "ewm_update": lambda: kernels.ewm_update(ids, values, e_count, e_mean, e_var, ALPHA, THRESHOLD, WARMUP,
                                                 False, idx, *outs),
        "detect_batch": lambda: kernels.detect_batch(ids, values, n_series, THRESHOLD, idx, *outs),
    }
    for step in steps.values():
        step()  # compile (or load numba's cache) before anything is timed
    return steps


def _python_welford_step(ids, values, n_series):
    """The loop one would write without numba: lists for the state, one Python iteration per value."""
    ids_list, values_list = ids.tolist(), values.tolist()
    count, mean, m2 = [0] * n_series, [0.0] * n_series, [0.0] * n_series
    need = max(WARMUP, 2)

    def step():
        flagged = []
        for i, (s, x) in enumerate(zip(ids_list, values_list)):
            if not math.isfinite(x):
                continue
            c, mu = count[s], mean[s]
            if c >= need and abs(x - mu) > THRESHOLD * math.sqrt(m2[s] / c):
                flagged.append(i)
            c += 1
            delta = x - mu
            mu += delta / c
            count[s], mean[s] = c, mu
            m2[s] += delta * (x - mu)
        return flagged
    return step


def _numpy_recompute_rate(ids, values, n_series, history: int, rounds: int) -> float:
    """Updates/s when every batch is judged against mean/std recomputed over all values so far (numpy).

    Each round starts from an empty history and takes `history` batches, so the cost per batch grows with
    the history; over a long stream it keeps growing, which is why a running state is kept instead.
    """
    best = 0.0
    for _ in range(rounds):
        hist_ids, hist_values = [], []
        start = time.perf_counter()
        for _ in range(history):
            if hist_ids:
                all_ids, all_values = np.concatenate(hist_ids), np.concatenate(hist_values)
                count = np.bincount(all_ids, minlength=n_series)
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = np.bincount(all_ids, all_values, minlength=n_series) / count
                    dev = all_values - mean[all_ids]
                    std = np.sqrt(np.bincount(all_ids, dev * dev, minlength=n_series) / count)
                ready = count[ids] >= max(WARMUP, 2)
                np.flatnonzero(ready & (np.abs(values - mean[ids]) > THRESHOLD * std[ids]))
            hist_ids.append(ids)
            hist_values.append(values)
        best = max(best, history * len(values) / (time.perf_counter() - start))
    return best


def run(mode: str = "quick", progress=None) -> dict:
    """Measure every method at every series count; `mode` is full, quick or tiny. Returns a JSON-able dict."""
    settings = SETTINGS[mode]
    min_time, rounds = settings["min_time"], settings["rounds"]
    results = []
    for n_series in settings["series"]:
        ids, values = make_batch(n_series)
        n = len(values)
        rates = {name: n / best_seconds(step, min_time, rounds)
                 for name, step in _numba_steps(ids, values, n_series).items()}
        # The Python loop is ~100x slower: one round of at least one batch is enough to rank it.
        rates["python_welford"] = n / best_seconds(_python_welford_step(ids, values, n_series), min_time, 1)
        rates["numpy_recompute"] = _numpy_recompute_rate(ids, values, n_series, settings["history"], rounds)
        for name, rate in rates.items():
            results.append({"series": n_series, "batch": n, "method": name, "updates_per_s": rate})
            if progress:
                progress(f"kernels: {name:<16} {n_series:>7} series  {rate / 1e6:9.2f} M updates/s")
    return {"settings": {**settings, "series": list(settings["series"]), "threshold": THRESHOLD,
                         "warmup": WARMUP, "alpha": ALPHA, "methods": METHODS},
            "results": results}


def format_table(report: dict) -> str:
    """Markdown: one row per series count, M updates/s per method, and welford_update's speedups."""
    by = {(r["series"], r["method"]): r["updates_per_s"] for r in report["results"]}
    series = sorted({r["series"] for r in report["results"]})
    methods = [m for m in METHODS if any((s, m) in by for s in series)]
    lines = ["| series | batch | " + " | ".join(methods) + " | welford vs Python | welford vs numpy |",
             "|---:|---:|" + "---:|" * (len(methods) + 2)]
    batch = {r["series"]: r["batch"] for r in report["results"]}
    for s in series:
        cells = [f"{by[(s, m)] / 1e6:.3g} M" if (s, m) in by else "-" for m in methods]
        welford = by.get((s, "welford_update"))
        ratios = [f"{welford / by[(s, m)]:.0f}x" if welford and (s, m) in by else "-"
                  for m in ("python_welford", "numpy_recompute")]
        lines.append(f"| {s:,} | {batch[s]:,} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    report = run(mode, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(format_table(report))


if __name__ == "__main__":
    main()
