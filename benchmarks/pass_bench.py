"""In-process cost of one batch as the server pays it: ns per metric of StreamDetector.process and detect().

`python -m benchmarks.pass_bench [--json PATH]` measures this tree; `--ab OTHER_TREE` alternates rounds between
this tree and another checkout (each round its own process, so each imports its own streamer), and reports
the median and min-max of each side over the rounds and the ratio of medians. No grpc: request bytes in,
response bytes out, after JIT warm-up, with the requests of benchmarks/wire_bench.py (4 series, timestamps).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = (1000, 100_000)
ROOT = Path(__file__).resolve().parent.parent


def measure(seconds: float) -> dict:
    """{"stream/1000": ns per metric, ...} of this process's streamer, best of 3 short runs per figure."""
    from benchmarks.wire_bench import make_request
    from streamer import detector
    from streamer.state import SessionRegistry

    out = {}
    defaults = detector.Defaults()
    try:  # a tree with config-file rules (issue 22): also a stream whose series fall under two rules and none
        from streamer import series_rules
        rules = series_rules.RuleSet((series_rules.Rule("cpu", prefix="cpu.", values=(("threshold", 3.0),)),
                                      series_rules.Rule("mem", match="mem.*", values=(("cooldown", 2),))))
        ruled = series_rules.Live(series_rules.Settings(0, defaults, rules))
    except ImportError:
        ruled = None
    for n in SIZES:
        requests = [make_request(n, True, seed) for seed in range(4)]
        stream = detector.StreamDetector(defaults, SessionRegistry(60.0, 1, 100_000))  # a private stream
        steps = [("stream", stream.process), ("detect", lambda r: detector.detect(r, defaults))]
        if ruled is not None:
            with_rules = detector.StreamDetector(defaults, SessionRegistry(60.0, 1, 100_000), live=ruled)
            steps.append(("stream-rules", with_rules.process))
            for r in requests * 3:
                with_rules.process(r)
        for r in requests * 3:
            stream.process(r)
        for name, step in steps:
            step(requests[0])
            best = float("inf")
            for _ in range(3):
                calls, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds / 3:
                    for r in requests:
                        step(r)
                    calls += len(requests)
                best = min(best, (time.perf_counter() - start) / calls / n * 1e9)
            out[f"{name}/{n}"] = best
    return out


def _round(tree: Path, seconds: float) -> dict:
    # This file run by path, with only `tree` on the path: that tree's streamer (and its wire_bench requests).
    done = subprocess.run([sys.executable, __file__, "--measure", str(seconds)], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ab", type=Path, help="another checkout to alternate rounds with (A = it, B = this tree)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5, help="per figure and round")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", type=float, help=argparse.SUPPRESS)  # one round, in the tree on the path
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    trees = {"A": args.ab.resolve(), "B": ROOT} if args.ab else {"B": ROOT}
    rounds = {side: [] for side in trees}
    for i in range(args.rounds):
        for side, tree in trees.items():
            rounds[side].append(_round(tree, args.seconds))
            print(f"round {i + 1} {side}: " + ", ".join(f"{k} {v:.1f}" for k, v in rounds[side][-1].items()),
                  file=sys.stderr, flush=True)
    doc = {"trees": {k: str(v) for k, v in trees.items()}, "rounds": rounds, "ns_per_metric": {}}
    print("| figure | " + " | ".join(f"{s} ({trees[s].name}) ns/metric, median (min-max)" for s in trees)
          + (" | B / A |" if args.ab else " |"))
    print("|---|" + "---:|" * (len(trees) + bool(args.ab)))
    for key in rounds["B"][0]:
        cells, medians = [], {}
        for side in trees:
            xs = [r[key] for r in rounds[side] if key in r]
            if not xs:  # a figure the other tree cannot measure
                cells.append("-")
                continue
            medians[side] = statistics.median(xs)
            cells.append(f"{medians[side]:.1f} ({min(xs):.1f}-{max(xs):.1f})")
            doc["ns_per_metric"].setdefault(key, {})[side] = {"median": medians[side], "min": min(xs), "max": max(xs)}
        ratio = f" | {medians['B'] / medians['A']:.2f} |" if len(medians) == 2 else " | - |" if args.ab else " |"
        print(f"| {key} | " + " | ".join(cells) + ratio)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
