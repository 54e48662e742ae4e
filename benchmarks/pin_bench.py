"""`python -m benchmarks.pin_bench [--rounds 5] [--duration 2]`: what `streamer serve --pin-cpus` does per core.

Streamer as `make serve` runs it and with --pin-cpus (every thread of the process on one CPU), and the tuned
grpc-go peer unpinned and pinned the way a Go engineer deploying one process a core would (GOMAXPROCS=1, every
thread on the same CPU as streamer's), under the Go load generator (not pinned; the scheduler gives it the other
core) on issue 23's DetectStream and Detect shapes. Interleaved rounds, the order of the variants alternating;
each figure metrics per server CPU-second and metrics per second, median (min-max). Writes results/pin.{json,md}
and prints the table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks import report
from benchmarks.golang import GoLoadGenerator
from benchmarks.servers import ServerProcess
from benchmarks.targets import LABELS, RESULTS, SHAPES, _fmt, _mid, rounds
from streamer.workers import pin_threads

# name, server, its extra arguments, its environment, whether the harness pins it after start
VARIANTS = [("streamer", "streamer", (), None, False),
            ("streamer --pin-cpus", "streamer", ("--pin-cpus",), None, False),
            ("tuned Go", "tuned-go", (), None, False),
            ("tuned Go, pinned", "tuned-go", (), {"GOMAXPROCS": "1"}, True)]
SHAPE_NAMES = ("stream-b10000", "detect-b100000")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pin_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    shapes = [s for s in SHAPES if s[0] in SHAPE_NAMES]
    machine = report.machine()
    servers: dict[str, ServerProcess] = {}
    cpu = sorted(os.sched_getaffinity(0))[0]  # the CPU --pin-cpus gives a single process
    with tempfile.TemporaryDirectory(prefix="streamer-pin-") as workdir:
        go = GoLoadGenerator(Path(workdir))
        try:
            for name, server, extra, env, pin in VARIANTS:
                servers[name] = ServerProcess(server, args=extra, env=env)
                if pin:
                    pin_threads(servers[name].pid, cpu)
            runs = rounds(go, servers, [(shape, flags, list(servers)) for shape, flags, _, _ in shapes],
                          args.rounds, args.duration, args.warmup)
        finally:
            for server in servers.values():
                server.stop()
    lines = [f"Run `python -m benchmarks.pin_bench`, {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, "
             f"{args.rounds} interleaved rounds of {args.duration:g} s; load average "
             f"{machine['load_average_start'][0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
             f"{machine['cpu_model']}, {machine['cores']} cores; pinned variants on CPU {cpu}, the Go load generator "
             "unpinned.", "",
             "| shape | server | M metrics per server CPU-s | M metrics/s | server cores |", "|---|---|---:|---:|---:|"]
    rows = []
    for shape, _, _, _ in shapes:
        for name in servers:
            ok = [r for r in runs[shape][name] if "per_cpu_s" in r]
            row = {"shape": shape, "server": name, "per_cpu_s": _mid([r["per_cpu_s"] for r in ok]),
                   "metrics_per_s": _mid([r["metrics_per_s"] for r in ok]),
                   "server_cores": _mid([r["server_cores"] for r in ok]),
                   "errors": [r["error"] for r in runs[shape][name] if "error" in r]}
            rows.append(row)
            lines.append(f"| {LABELS[shape]} | {name} | {_fmt(row['per_cpu_s'])} | {_fmt(row['metrics_per_s'])} | "
                         f"{_fmt(row['server_cores'], 1, '.2f')} |")
    errors = [f"{r['shape']} {r['server']}: {e}" for r in rows for e in r["errors"]]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {e}" for e in errors]
    md = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pin.json").write_text(json.dumps({"rows": rows, "runs": runs, "versions": report.versions()},
                                                  indent=1))
    (args.out / "pin.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
