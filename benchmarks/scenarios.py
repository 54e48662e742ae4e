"""Scenario matrices of the full, quick and tiny runs, and how long each measurement lasts in each."""
from __future__ import annotations

import dataclasses
import fnmatch


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One load shape, measured against every server with the same load generator."""

    rpc: str           # "stream" (DetectStream) or "detect" (unary Detect)
    load: str          # "pipelined" (throughput) or "lockstep" (latency: one request at a time per stream)
    batch: int         # metrics per request
    series: int = 4    # distinct metric names per stream
    streams: int = 1   # concurrent streams (stream) or concurrent callers (detect)
    window: int = 32   # pipelined: requests in flight per stream (stream) or calls in flight (detect)
    why: str = ""      # what question the scenario answers

    @property
    def name(self) -> str:
        return f"{self.rpc}-{'pipe' if self.load == 'pipelined' else 'lock'}-b{self.batch}-s{self.series}" \
               f"-c{self.streams}"

    def label(self) -> str:
        kind = "DetectStream" if self.rpc == "stream" else "Detect"
        many = f", {self.streams} {'streams' if self.rpc == 'stream' else 'callers'}" if self.streams > 1 else ""
        if self.rpc == "detect" and self.load == "pipelined":
            many += f", {self.window} calls in flight"
        return f"{kind} {self.load}, {self.batch:,}/batch, {self.series:,} series{many}"

    def params(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}


def _stream(load, batch, series=4, streams=1, why=""):
    return Scenario("stream", load, batch, series, streams, why=why)


def _detect(load, batch, streams=1, window=32, why=""):
    return Scenario("detect", load, batch, 4, streams, window, why=why)


# The full cross product (3 batch sizes x 3 series counts x 3 stream counts x 2 loads x 2 rpcs) does not fit
# 10 minutes on 2 cores; each sweep varies one dimension around batch 1000, 4 series, 1 stream.
FULL = (
    _stream("pipelined", 100, why="batch sweep (issue 4)"),
    _stream("pipelined", 1000, why="batch sweep (issue 4)"),
    _stream("pipelined", 10_000, why="batch sweep (issue 4)"),
    _stream("pipelined", 1000, series=1, why="series sweep"),
    _stream("pipelined", 1000, series=100, why="series sweep"),
    _stream("pipelined", 1000, series=10_000, why="series sweep"),
    _stream("pipelined", 1000, series=100, streams=4, why="concurrency sweep"),
    _stream("pipelined", 1000, series=100, streams=16, why="concurrency sweep"),
    _stream("lockstep", 100, why="stream latency"),
    _stream("lockstep", 1000, why="stream latency"),
    _stream("lockstep", 10_000, why="stream latency"),
    _detect("lockstep", 100, why="unary latency"),
    _detect("lockstep", 1000, why="unary latency (issue 4)"),
    _detect("lockstep", 10_000, why="unary latency"),
    _detect("lockstep", 100_000, why="unary latency (issue 4)"),
    _detect("pipelined", 1000, window=8, why="unary throughput, 8 calls in flight"),
)

QUICK = (
    _stream("pipelined", 100, why="batch sweep (issue 4)"),
    _stream("pipelined", 1000, why="batch sweep (issue 4)"),
    _stream("pipelined", 10_000, why="batch sweep (issue 4)"),
    _stream("pipelined", 1000, series=10_000, why="series sweep"),
    _stream("pipelined", 1000, series=100, streams=4, why="concurrency sweep"),
    _stream("lockstep", 1000, why="stream latency"),
    _detect("lockstep", 1000, why="unary latency (issue 4)"),
    _detect("lockstep", 100_000, why="unary latency (issue 4)"),
)

TINY = (
    _stream("pipelined", 100),
    _stream("lockstep", 100),
    _detect("lockstep", 1000),
)

# Scenarios the Go load generator repeats (when it is there): the issue 4 shapes, a concurrency point.
GO_FULL = ("stream-pipe-b100-s4-c1", "stream-pipe-b1000-s4-c1", "stream-pipe-b10000-s4-c1",
           "stream-pipe-b1000-s100-c4", "detect-lock-b1000-s4-c1", "detect-lock-b100000-s4-c1")
GO_QUICK = ("stream-pipe-b1000-s4-c1", "detect-lock-b1000-s4-c1")

# seconds measured, seconds of warm-up before (same load, not counted), repetitions (best one kept)
TIMING = {
    "full": {"duration": 2.5, "warmup": 0.5, "repeats": 2},
    "quick": {"duration": 1.5, "warmup": 0.3, "repeats": 1},
    "tiny": {"duration": 0.25, "warmup": 0.05, "repeats": 1},
}


def matrix(mode: str, patterns: list[str] | None = None) -> tuple[list[Scenario], tuple[str, ...]]:
    """The scenarios of a mode (or, with patterns, every known scenario whose name matches one of them)
    and the names the Go load generator repeats."""
    base = {"full": FULL, "quick": QUICK, "tiny": TINY}[mode]
    go = {"full": GO_FULL, "quick": GO_QUICK, "tiny": ()}[mode]
    if not patterns:
        return list(base), go
    known = {s.name: s for s in (*FULL, *QUICK, *TINY)}
    chosen = [s for name, s in known.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if not chosen:
        raise SystemExit(f"no scenario matches {patterns}; known: {', '.join(sorted(known))}")
    return chosen, tuple(s.name for s in chosen if s.name in GO_FULL)
