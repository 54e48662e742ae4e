"""Replay saved fuzz inputs through the compiled decoder, with the protobuf library as the oracle.

    python tests/fuzz/replay.py DIR_OR_FILE ...

The fuzzer runs the decoder as plain Python; this confirms each of its inputs (the corpus it grew, and every
crash-* or timeout-* it saved) against the machine code that serves requests, in whichever build this
process imports (STREAMER_WIRE_CHECKED=1 for the checked one). Exit status 1 names the inputs that disagree.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_TESTS, os.path.dirname(_TESTS)]  # tests/ (oracle.py) and the checkout whose decoder this is

from oracle import ours, reference  # noqa: E402


def inputs(paths) -> list[Path]:
    files = []
    for p in map(Path, paths):
        files += sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    return files


def disagreements(paths) -> list[str]:
    """The inputs under `paths` that the compiled decoder reads otherwise than protobuf does, with both readings."""
    bad = []
    for f in inputs(paths):
        data = f.read_bytes()
        expected, got = reference(data), ours(data)
        if got != expected:
            bad.append(f"{f}: {data.hex()}\n ours:     {got}\n protobuf: {expected}")
    return bad


def main(argv: list[str]) -> int:
    files = inputs(argv)
    bad = disagreements(argv)
    print(f"replayed {len(files)} input(s) through the compiled decoder: {len(bad)} disagreement(s)")
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
