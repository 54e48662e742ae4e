"""`python -m benchmarks.callgrind_bench [--sizes 10000 100000] [--calls 4] [--series 2000]`: instructions a
metric of the in-process pipeline, counted by valgrind's callgrind (stable on a noisy shared machine, where
CPU time is not), for DetectStream (`StreamDetector.process`) and Detect (`detector.detect`), with the requests
of benchmarks/stage_bench.py (the collector's layout: --series names in a fixed order, timestamps set).

The script runs itself under `valgrind --tool=callgrind --dump-before=getppid`: each measured region (--calls
calls of one RPC at one size, after warm-up) lies between two os.getppid() calls, so it is one of callgrind's
dumps, and its instruction count (Ir) over calls * size is the figure. Prints a table and, with --json, writes
the figures. valgrind must be installed (apt-get install valgrind). It runs the cases natively first, so that
numba's cache holds them (under valgrind they would compile for an hour), and takes 5-15 minutes.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _page_cases(calls: int) -> list:
    """The page's cost (issue 21): DetectStream batches of benchmarks/page_bench.py (1 000 metrics of 100 series,
    5 spikes a batch) with no taps and with one viewed series (its flagged values and its samples recorded).
    The taps' clock advances 100 microseconds a batch, about a batch's native time, so a whole batch is sampled
    as often per batch as at full speed (once in 1 000 at SAMPLE_SECONDS 0.1), not at valgrind's slower pace."""
    from benchmarks.page_bench import batches
    from streamer import detector
    from streamer.state import SessionRegistry
    from streamer.web.tap import Taps

    requests = batches("", 60 + calls, 1)
    cases = []
    for name in ("no page", "one viewed series"):
        d = detector.StreamDetector(detector.Defaults(), SessionRegistry(600, 10, 10**6))
        if name != "no page":
            ticks = iter(range(10**9))
            d.taps = Taps(clock=lambda: next(ticks) * 1e-4)
            d.taps.view("", "s0")
        for r in requests[:60]:  # past the warmup: spikes are flagged from batch 20
            d.process(r)
        cases.append((f"{name} 1000", lambda d=d: [d.process(r) for r in requests[60:]]))
    return cases


def _inner(sizes: list[int], calls: int, series: int, page: bool = False) -> None:
    """Under valgrind: warm up every case, then run each between two getppid() markers."""
    from benchmarks.stage_bench import collector_request
    from streamer import detector
    from streamer.state import SessionRegistry

    defaults = detector.Defaults()
    cases = _page_cases(calls) if page else []
    for n in ([] if page else sizes):
        requests = [collector_request(n, series, seed) for seed in range(2)]
        stream = detector.StreamDetector(defaults, SessionRegistry(60.0, 1, 100_000))
        for r in requests * 2:
            stream.process(r)
            detector.detect(r, defaults)
        cases.append((f"stream {n}", lambda s=stream, rs=requests: [s.process(rs[i % 2]) for i in range(calls)]))
        cases.append((f"detect {n}", lambda rs=requests: [detector.detect(rs[i % 2], defaults)
                                                          for i in range(calls)]))
    print(json.dumps([name for name, _ in cases]), flush=True)
    os.getppid()
    for _, run in cases:
        run()
        os.getppid()


# Instruction sets valgrind (3.19, Debian's) cannot run: code using them dies under it with SIGILL.
NOT_UNDER_VALGRIND = ("avx512", "avx10", "amx")


def valgrind_env() -> dict:
    """The environment for a process run natively and then under valgrind, with one numba cache for both.

    numba's cache is keyed by the CPU name and features, and valgrind's emulated CPU reports others than the
    host's: unless both runs name the same, numba compiles everything again under valgrind (for an hour). They
    name the host's, less the instruction sets valgrind cannot run (AVX-512 on this machine), so the counts are
    of code compiled for the host's CPU without those."""
    import llvmlite.binding as ll

    features = ll.get_host_cpu_features()
    flat = ",".join(("-" if k.startswith(NOT_UNDER_VALGRIND) or not on else "+") + k for k, on in features.items())
    return dict(os.environ, PYTHONHASHSEED="0", PYTHONUNBUFFERED="1", NUMBA_CPU_NAME=ll.get_host_cpu_name(),
                NUMBA_CPU_FEATURES=flat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.callgrind_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--page", action="store_true",
                        help="instead: DetectStream batches with and without a series viewed on the page")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        _inner(args.sizes, args.calls, args.series, args.page)
        return 0
    env = valgrind_env()
    inner = [sys.executable, "-m", "benchmarks.callgrind_bench", "--inner", "--calls", str(args.calls),
             "--series", str(args.series), "--sizes", *map(str, args.sizes)] + (["--page"] if args.page else [])
    subprocess.run(inner, check=True, capture_output=True, env=env, cwd=ROOT)  # compiles into numba's cache
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", "--dump-before=getppid", f"--callgrind-out-file={out}", *inner]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            return proc.returncode
        names = json.loads(proc.stdout.strip().splitlines()[-1])
        dumps = sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
        totals = []
        for path in dumps:
            text = Path(path).read_text(errors="replace")
            m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
            totals.append(int(m.group(1)) if m else 0)
    # dump 1 ends at the first marker (start-up and warm-up); dump k + 1 is case k
    figures = {}
    for k, name in enumerate(names):
        n = int(name.rsplit(" ", 1)[1])
        figures[name] = totals[k + 1] / (args.calls * n)
    lines = ["| case | instructions a metric |", "|---|---:|"]
    lines += [f"| {name} | {ir:.1f} |" for name, ir in figures.items()]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"calls": args.calls, "series": args.series, "ir_per_metric": figures},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
