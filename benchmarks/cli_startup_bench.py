"""Start-up time of the `streamer` command line: wall seconds of client commands (--version, detect --help, an
admin call to a port nothing listens on) and the import time of streamer.cli, for one or more source trees,
in interleaved rounds (the machine is noisy: each round runs every tree once; figures are median (min-max),
and each tree's ratio to the first, round by round).

    python -m benchmarks.cli_startup_bench [--rounds N] [TREE ...]   # default TREE: this checkout

A tree is a directory holding streamer/ (a checkout, or `git archive REV | tar -x -C DIR` of an older one), run
as PYTHONPATH=TREE python -m streamer. Nothing here asserts a speed: tests/test_cli_startup.py checks what is imported.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(port: int) -> dict[str, list[str]]:
    return {"--version": ["--version"], "detect --help": ["detect", "--help"],
            "admin sessions (no server)": ["admin", "sessions", "--addr", f"127.0.0.1:{port}", "--timeout", "2"]}


def _env(tree: Path) -> dict[str, str]:
    """The environment of a run of `tree` (which is also its working directory: -m and -c put that first)."""
    return dict(os.environ, PYTHONPATH=str(tree))


def wall(tree: Path, argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "streamer", *argv], env=_env(tree), cwd=tree, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)
    return time.perf_counter() - start


def import_seconds(tree: Path) -> tuple[float, bool]:
    """streamer.cli's cumulative import time (python -X importtime), and whether numba was loaded."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "import sys, streamer.cli; print('numba' in sys.modules)"], env=_env(tree), cwd=tree,
                          capture_output=True, text=True, timeout=60, check=True)
    line = next(x for x in done.stderr.splitlines() if re.search(r"\|\s*streamer\.cli$", x))
    return int(line.split("|")[1]) / 1e6, done.stdout.strip() == "True"


def _fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", type=Path, default=[ROOT])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import numba  # only for the versions line: the runs themselves are subprocesses
    print(f"python {platform.python_version()}, numba {numba.__version__}, load {os.getloadavg()[0]:.2f}, "
          f"{args.rounds} rounds")
    cmds = commands(_closed_port())
    figures = {(t, c): [] for t in args.trees for c in ["import streamer.cli", *cmds]}
    numba_loaded = {}
    for _ in range(args.rounds):
        for tree in args.trees:
            seconds, numba_loaded[tree] = import_seconds(tree)
            figures[tree, "import streamer.cli"].append(seconds)
            for name, argv in cmds.items():
                figures[tree, name].append(wall(tree, argv))
    for tree in args.trees:
        print(f"\n{tree} (numba loaded by import streamer.cli: {numba_loaded[tree]})")
        for name in ["import streamer.cli", *cmds]:
            print(f"  {name:28s} {_fmt(figures[tree, name])} s")
    for tree in args.trees[1:]:  # ratios round by round: a noisy moment slows both trees of that round
        base = args.trees[0]
        print(f"\n{base} / {tree}, per round")
        for name in ["import streamer.cli", *cmds]:
            ratios = [a / b for a, b in zip(figures[base, name], figures[tree, name])]
            print(f"  {name:28s} {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
