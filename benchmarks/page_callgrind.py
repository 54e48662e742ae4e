"""Instructions per DetectStream batch with and without a page viewing a series (the tap), counted by callgrind
(stable on a shared, noisy machine where timings are not).

    python -m benchmarks.page_callgrind [--batches 200]

Runs this module's `--child` under `valgrind --tool=callgrind` four times: no taps and one viewed series, each with
`--batches` and twice as many batches of 1 000 metrics (100 series, 5 flagged) after the same warm-up; the
difference of the two counts over `--batches` is the instructions a batch, start-up and warm-up cancelled out.
Prints and writes page_callgrind.json to --out (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH_SECONDS = 35e-6  # a batch of 1 000 metrics at native speed (benchmarks/page_bench.py's in-process figure)


def child(variant: str, n: int) -> None:
    from benchmarks.page_bench import batches
    from streamer import detector
    from streamer.state import SessionRegistry
    from streamer.web.tap import Taps, compile_all
    compile_all()
    reqs = batches("", n + 50, 1)
    d = detector.StreamDetector(detector.Defaults(), SessionRegistry(600, 10, 10**6))
    if variant == "viewed":
        # the taps sample by time: a clock that advances BATCH_SECONDS a reading (one a batch) keeps the
        # sampling rate what it is at native speed, not what it would be 50 times slower under valgrind
        ticks = iter(range(10**9))
        d.taps = Taps(clock=lambda: next(ticks) * BATCH_SECONDS)
        d.taps.view("", "s0")
    for r in reqs[:50]:
        d.process(r)
    for r in reqs[50:]:
        d.process(r)


def count(variant: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                              sys.executable, "-m", "benchmarks.page_callgrind", "--child", variant, str(n)],
                             cwd=ROOT, capture_output=True, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", out.stderr).group(1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], int(args.child[1]))
    n = args.batches
    result = {}
    for variant in ("none", "viewed"):
        small, large = count(variant, n), count(variant, 2 * n)
        result[variant] = (large - small) / n
        print(f"{variant}: {result[variant]:.0f} instructions a batch", flush=True)
    result["viewed_over_none"] = result["viewed"] / result["none"]
    print(json.dumps(result))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "page_callgrind.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
