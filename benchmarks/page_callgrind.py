"""Instructions per DetectStream batch with and without a page viewing a series (the tap), counted by callgrind
(stable on a shared, noisy machine where timings are not).

    python -m benchmarks.page_callgrind [--batches 200]

Runs this module's `--child` under `valgrind --tool=callgrind --dump-before=getppid` twice: no taps, and one viewed
series (the busy series s0, ten values a batch); each processes a warm-up, calls os.getppid(), processes `--batches`
batches of 1 000 metrics (100 series, 5 flagged), and calls os.getppid() again: the second dump holds exactly those
batches' instructions (start-up and warm-up are in the first).
Prints and writes page_callgrind.json to --out (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
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
    os.getppid()  # callgrind dumps here: start-up and warm-up
    for r in reqs[50:]:
        d.process(r)
    os.getppid()  # and here: the measured batches


def count(variant: str, n: int) -> int:
    """Instructions of the measured batches (the dump made at the second getppid)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["valgrind", "--tool=callgrind", "--dump-before=getppid", f"--callgrind-out-file={tmp}/cg.out",
                        sys.executable, "-m", "benchmarks.page_callgrind", "--child", variant, str(n)],
                       cwd=ROOT, capture_output=True, text=True, check=True)
        dumps = sorted(Path(tmp).glob("cg.out*"), key=lambda p: int(p.name.split(".")[-1]) if p.name[-1].isdigit()
                       else 10**9)
        text = dumps[1].read_text(errors="replace")
    return int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))


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
        result[variant] = count(variant, n) / n
        print(f"{variant}: {result[variant]:.0f} instructions a batch", flush=True)
    result["viewed_over_none"] = result["viewed"] / result["none"]
    print(json.dumps(result))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "page_callgrind.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
