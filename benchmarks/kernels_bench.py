"""Kernel micro-benchmarks: updates/s of the numba kernels against plain-Python Welford and numpy recomputation.

Run alone with `python -m benchmarks.kernels_bench [--quick|--tiny] [--json PATH] [--against REF]`; the
harness runs it too. In-process, no grpc: what the state update costs per metric, after JIT warm-up, at 1 to
100 000 series; stream_update (what the fused pass calls) for every mode and score, its rules given at run
time as the server gives them. With --against REF (e.g. main), the kernels of that git revision are loaded
beside this tree's and measured in interleaved rounds against the fused pass's call with SCORE_ZSCORE and
cooldown 0: the ratio of each round, median (min-max).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.wire_bench import best_seconds
from streamer import kernels, rules

SERIES = (1, 100, 10_000, 100_000)
THRESHOLD = 2.0
WARMUP = 10
ALPHA = 0.05
# name: (what it is, for the table)
METHODS = {
    "welford_update": "numba, Welford 1962 (MODE_CUMULATIVE)",
    "ewm_update": "numba, Finch 2009 (MODE_EXPONENTIAL)",
    "stream_cumulative": "numba, stream_update: MODE_CUMULATIVE, SCORE_ZSCORE, cooldown 0 (the fused pass's call)",
    "stream_exponential": "numba, stream_update: MODE_EXPONENTIAL, SCORE_ZSCORE, cooldown 0",
    "stream_cooldown": "numba, stream_update: MODE_CUMULATIVE, SCORE_ZSCORE, cooldown 1, exclude_outliers",
    "stream_likelihood": "numba, stream_update: MODE_CUMULATIVE, SCORE_LIKELIHOOD (short 10), cooldown 1",
    "stream_likelihood_exp": "numba, stream_update: MODE_EXPONENTIAL, SCORE_LIKELIHOOD (short 10)",
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
    for name, (exponential, cooldown, likelihood) in STREAM_VARIANTS.items():
        steps[name] = _stream_step(ids, values, n_series, exponential, cooldown, likelihood, idx, outs)
    for step in steps.values():
        step()  # compile (or load numba's cache) before anything is timed
    return steps


# stream_update variants: (exponential, cooldown, likelihood)
STREAM_VARIANTS = {"stream_cumulative": (False, 0, False), "stream_exponential": (True, 0, False),
                   "stream_cooldown": (False, 1, False), "stream_likelihood": (False, 1, True),
                   "stream_likelihood_exp": (True, 0, True)}


def _stream_step(ids, values, n_series, exponential, cooldown, likelihood, idx, outs, module=rules):
    """stream_update on fresh state with the arrays a SeriesState would keep for these rules."""
    exclude = cooldown > 0
    count, mean, spread = np.zeros(n_series, np.int64), np.zeros(n_series), np.zeros(n_series)
    streak = np.zeros(n_series if exclude else 0, np.int64)
    hold = np.zeros(n_series if cooldown else 0, np.int64)
    m = n_series if likelihood else 0
    lcount, lmean, lvar = np.zeros(m, np.int64), np.zeros(m), np.zeros(m)
    ring = np.zeros((m, 10 if likelihood else 1))
    tail = np.empty(len(values) if likelihood else 0)
    # run-time Python values, as the fused pass passes them (nothing is constant-folded)
    args = (bool(exponential), float(ALPHA), float(THRESHOLD), int(WARMUP), bool(exclude),
            int(WARMUP if exclude else 0), int(cooldown))
    # the alert rules' arguments (off), for the revisions that have them
    extra = (module.NO_SUPPRESS, 0, *module.NO_EPISODES) if hasattr(module, "NO_EPISODES") else ()
    return lambda: module.stream_update(ids, values, count, mean, spread, *args, streak, hold, bool(likelihood), 8640,
                                        1e-5, 300, lcount, lmean, lvar, ring, idx, *outs, tail, *extra)


def _load_kernels(ref: str):
    """streamer/kernels.py as of git revision `ref`, imported as its own module from a temporary copy (so
    numba's cache for it stays out of the source tree)."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{ref}:streamer/kernels.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="kernels-")) / f"kernels_{ref.replace('/', '_')}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fastest_call(step, min_time: float) -> float:
    """Seconds of the fastest single call of step() in about min_time of calls."""
    best, end = float("inf"), time.perf_counter() + min_time
    while True:
        start = time.perf_counter()
        step()
        now = time.perf_counter()
        best = min(best, now - start)
        if now >= end:
            return best


def against(ref: str, mode: str, progress=None) -> dict:
    """Interleaved rounds: `ref`'s welford_update / ewm_update (the fused pass's call there) against this tree's
    stream_update with SCORE_ZSCORE and cooldown 0 given at run time (the fused pass's call here)."""
    settings = SETTINGS[mode]
    old = _load_kernels(ref)
    rounds = {"full": 21, "quick": 11, "tiny": 3}[mode]
    out = []
    for n_series in (100, 10_000):
        ids, values = make_batch(n_series)
        n = len(values)
        idx = np.empty(n, dtype=np.int32)
        outs = [np.empty(n, dtype=np.float64) for _ in range(3)]
        for exponential in (False, True):
            state = [np.zeros(n_series, np.int64), np.zeros(n_series), np.zeros(n_series)]
            if exponential:
                base = (lambda: old.ewm_update(ids, values, *state, ALPHA, THRESHOLD, WARMUP, False, idx, *outs))
            else:
                base = (lambda: old.welford_update(ids, values, *state, THRESHOLD, WARMUP, False, idx, *outs))
            new = _stream_step(ids, values, n_series, exponential, 0, False, idx, outs)
            base(), new()
            ratios, rates = [], {"base": [], "new": []}
            for r in range(rounds):
                pair = [("base", base), ("new", new)] if r % 2 == 0 else [("new", new), ("base", base)]
                # the fastest of many single calls (a batch each): preemption on a shared machine only adds
                seconds = {name: _fastest_call(step, settings["min_time"]) for name, step in pair}
                ratios.append(seconds["base"] / seconds["new"])  # > 1: this tree is faster
                for name in seconds:
                    rates[name].append(n / seconds[name])
            row = {"series": n_series, "mode": "exponential" if exponential else "cumulative", "rounds": rounds,
                   "ref": ref, "new_over_ref": {"median": statistics.median(ratios), "min": min(ratios),
                                                "max": max(ratios)},
                   "ref_updates_per_s": statistics.median(rates["base"]),
                   "new_updates_per_s": statistics.median(rates["new"])}
            out.append(row)
            if progress:
                q = row["new_over_ref"]
                progress(f"kernels vs {ref}: {row['mode']:<11} {n_series:>6} series  speed ratio "
                         f"{q['median']:.3f} ({q['min']:.3f}-{q['max']:.3f})")
    return {"ref": ref, "rows": out}


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


def format_against(doc: dict) -> str:
    """Markdown: this tree's stream_update (SCORE_ZSCORE, cooldown 0) against REF's kernels, interleaved."""
    lines = [f"| mode | series | {doc['ref']} M updates/s | this tree M updates/s | speed ratio, median (min-max) |",
             "|---|---:|---:|---:|---|"]
    for r in doc["rows"]:
        q = r["new_over_ref"]
        lines.append(f"| {r['mode']} | {r['series']:,} | {r['ref_updates_per_s'] / 1e6:.3g} | "
                     f"{r['new_updates_per_s'] / 1e6:.3g} | {q['median']:.3f} ({q['min']:.3f}-{q['max']:.3f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true")
    group.add_argument("--tiny", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--against", metavar="REF",
                        help="also measure the fused pass's zscore call against the kernels of git revision REF "
                             "(e.g. main), interleaved")
    args = parser.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    report = run(mode, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.against:
        def say(line):
            print(line, file=sys.stderr, flush=True)
        report["against"] = against(args.against, mode, progress=say)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(format_table(report))
    if "against" in report:
        print(format_against(report["against"]))


if __name__ == "__main__":
    main()
