"""A million series at 1 Hz (issue 19): the Go load generator paced (-rate) over 1 000 000 series in several
streams and sessions against `streamer serve --workers 0`, rates raised until p99 passes 100 ms or the rate is
not held; the highest rate held and that per core.

    python -m benchmarks.million_load [--series N] [--streams N] [--duration S] [--out DIR]

Writes million-load.json and million-load.md under --out (default benchmarks/results/). The same command runs
unchanged on a bigger machine: --workers 0 is one worker per core, and the rates keep doubling until one fails.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import golang
from benchmarks.million_bench import versions
from benchmarks.servers import ServerProcess

P99_LIMIT_MS = 100.0
HELD = 0.95  # a rate is held when the answered metrics/s reach this share of the target


def loadgen(binary: Path, addr: str, rate: float, args, duration: float, warmup: float) -> dict:
    import subprocess
    time.sleep(3)  # the last run's streams have detached: their sessions' leases are released (or its writes done)
    command = [str(binary), "-addr", addr, "-mode", "stream", "-rate", f"{rate:g}", "-series", str(args.series),
               "-streams", str(args.streams), "-batch", str(args.batch), "-window", str(args.window), "-sessions",
               "-duration", f"{duration:g}s", "-warmup", f"{warmup:g}s", "-json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + warmup + 300)
    try:
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"rate": rate, "error": f"loadgen exited {done.returncode}: {done.stderr.strip()[-300:]}"}
    out["held"] = out["metrics_per_s"] >= HELD * rate and not out["errors"]
    out["ok"] = out["held"] and out["p99_ms"] < P99_LIMIT_MS
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=1_000_000)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--start", type=float, default=50_000, help="first rate, metrics/s (then doubled, then halved back)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    reason = golang.unavailable()
    if reason:
        print(f"million_load: skipped: {reason}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="streamer-million-") as tmp:
        binary = golang.GoLoadGenerator(Path(tmp)).binary
        server = ServerProcess("streamer", args=("--workers", "0", "--store", f"sqlite:///{tmp}/state.db",
                                                 "--max-series", str(args.series)))
        runs = []
        try:
            # every series interned (and in a session) before anything is measured: one pass flat out
            t0 = time.monotonic()
            fill = loadgen(binary, server.addr, 50e6, args, max(10.0, args.series / 100_000), 0)
            print(f"fill: {fill.get('metrics_per_s', 0):.0f} metrics/s flat out over {args.series} series "
                  f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)
            rate, best = args.start, None
            while True:
                r = loadgen(binary, server.addr, rate, args, args.duration, 2.0)
                runs.append(r)
                print(f"rate {rate:.0f}: achieved {r.get('metrics_per_s', 0):.0f}/s, p50 {r.get('p50_ms', 0):.1f} "
                      f"p99 {r.get('p99_ms', 0):.1f} p99.9 {r.get('p999_ms', 0):.1f} ms -> "
                      f"{'held' if r.get('ok') else 'not held'} {r.get('error', '')}", file=sys.stderr)
                if not r.get("ok"):
                    break
                best = r
                rate *= 2
            lo = best["rate"] if best else 0.0
            for _ in range(2):  # two bisection steps between the last rate held and the first one not
                mid = (lo + rate) / 2 if lo else rate / 2
                r = loadgen(binary, server.addr, mid, args, args.duration, 2.0)
                runs.append(r)
                print(f"rate {mid:.0f}: achieved {r.get('metrics_per_s', 0):.0f}/s, p99 {r.get('p99_ms', 0):.1f} ms "
                      f"-> {'held' if r.get('ok') else 'not held'}", file=sys.stderr)
                if r.get("ok"):
                    lo, best = mid, r if not best or mid > best["rate"] else best
                else:
                    rate = mid
        finally:
            server.stop()
    cores = os.cpu_count() or 1
    held = best["metrics_per_s"] if best else 0.0
    result = {"versions": versions(), "series": args.series, "streams": args.streams, "batch": args.batch,
              "workers": "0 (one per core)", "cores": cores, "fill": fill, "runs": runs,
              "highest_rate_held": held, "per_core": held / cores, "p99_limit_ms": P99_LIMIT_MS,
              "note": "the load generator runs on the same cores as the server"}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "million-load.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = ["# A million series, paced (benchmarks/million_load.py)", "",
             f"{args.series} series over {args.streams} streams, each its own session, batches of {args.batch}, "
             f"`streamer serve --workers 0` ({cores} cores; the Go load generator on the same cores). "
             f"Versions: {result['versions']}", "",
             "| target metrics/s | achieved | p50 ms | p99 ms | p99.9 ms | max ms | held (p99 < 100 ms) |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['rate']:.0f} | {r.get('metrics_per_s', 0):.0f} | {r.get('p50_ms', 0):.1f} | "
                     f"{r.get('p99_ms', 0):.1f} | {r.get('p999_ms', 0):.1f} | {r.get('max_ms', 0):.1f} | "
                     f"{'yes' if r.get('ok') else 'no'} |")
    lines += ["", f"Highest rate held: {held:.0f} metrics/s, {held / cores:.0f} per core."]
    with open(os.path.join(args.out, "million-load.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
