"""`python -m benchmarks.adaptive_bench [--duration 2]`: adaptive batching's latency against throughput.

One streamer server (default options, memory://) and the Go load generator in -adaptive mode: one producer
adding single metrics (with timestamps, 4 series) through client.Batcher, paced at a range of rates and flat
out, with several lingers and message sizes. For each: the metrics/s reached, the mean message, the latency
from Add to the caller's answer (p50, p99; one Add in 64 timed) and the server's CPU per metric (utime +
stime over the window). The rows at the top choose the defaults: the server's CPU a metric against the
message size, flat out; the rest is the curve at the defaults and around them.
Writes results/adaptive.{json,md} and prints the table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import report
from benchmarks.golang import GoLoadGenerator
from benchmarks.servers import ROOT, ServerProcess

RESULTS = ROOT / "benchmarks" / "results"

# (rate per second, 0 = flat out; linger ms; most metrics a message)
POINTS = [(0, 5, 1000), (0, 5, 10000), (0, 5, 100000),
          (1000, 5, 10000), (10000, 5, 10000), (100000, 5, 10000), (300000, 5, 10000),
          (1000, 1, 10000), (100000, 1, 10000), (1000, 20, 10000), (100000, 20, 10000)]


def run(go: GoLoadGenerator, server: ServerProcess, rate: int, linger_ms: float, max_batch: int,
        duration: float) -> dict:
    command = [str(go.binary), "-adaptive", "-addr", server.addr, "-series", "4", "-streams", "1", "-add", "1",
               "-timestamps", "-json", "-duration", f"{duration:g}s", "-warmup", "0.5s", "-add-rate", str(rate),
               "-linger", f"{linger_ms:g}ms", "-max-batch", str(max_batch), "-server-pid", str(server.pid)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
    try:
        raw = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": done.stderr.strip()[-300:] or "no output"}
    raw["server_cpu_ns_per_metric"] = raw["server_cpu_s"] / raw["metrics"] * 1e9 if raw.get("metrics") else None
    return raw


def markdown(doc: dict) -> str:
    lines = [f"Run `{doc['command']}`, {doc['started']}; load average {doc['load_average_start'][0]:.2f} at the "
             f"start, {doc['load_average_end'][0]:.2f} at the end; {doc['cpu_model']}, {doc['cores']} cores shared "
             "by the server and the load generator. One producer adding single metrics; latency from Add to the "
             "caller's answer.", "",
             "| rate asked (metrics/s) | linger | max metrics a message | metrics/s | mean message | p50 ms | p99 ms "
             "| server CPU ns a metric |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["runs"]:
        if r.get("error"):
            lines.append(f"| {r['asked']} | | | error: {r['error'][:80]} | | | | |")
            continue
        cpu = r.get("server_cpu_ns_per_metric")
        rate = f"{r['add_rate']:,.0f}" if r["add_rate"] else "flat out"
        cpu = "-" if cpu is None else f"{cpu:.0f}"
        lines.append(f"| {rate} | {r['linger_ms']:g} ms | {r['max_batch']:,} | {r['metrics_per_s']:,.0f} | "
                     f"{r['mean_batch']:,.0f} | {r['p50_ms']:.3g} | {r['p99_ms']:.3g} | {cpu} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adaptive_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    machine = report.machine()
    doc = {"command": "python -m benchmarks.adaptive_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
           "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "load_average_start": machine["load_average_start"], "cpu_model": machine["cpu_model"],
           "cores": machine["cores"], "runs": []}
    with tempfile.TemporaryDirectory(prefix="streamer-adaptive-") as workdir:
        go = GoLoadGenerator(Path(workdir))
        server = ServerProcess("streamer")
        try:
            for rate, linger, max_batch in POINTS:
                r = run(go, server, rate, linger, max_batch, args.duration)
                r["asked"] = rate
                doc["runs"].append(r)
                what = r.get("error") or f"{r['metrics_per_s']:,.0f}/s, p50 {r['p50_ms']:.3g} ms"
                print(f"rate {rate} linger {linger} ms max {max_batch}: {what}", file=sys.stderr, flush=True)
        finally:
            server.stop()
    doc["load_average_end"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adaptive.json").write_text(json.dumps(doc, indent=1))
    md = markdown(doc)
    (args.out / "adaptive.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
