"""What a down alert sink costs detection: DetectStream throughput of a server whose --alertmanager refuses every
connection (nothing listens on its port) against one keeping the same episodes with no sink (--episodes on), in
interleaved rounds of one run.

    python -m benchmarks.sink_bench [--rounds 5] [--duration 3] [--out DIR]

Both servers run for the whole run, each in its own process, driven in turn by benchmarks/loadgen.py's pipelined
stream (32 batches in flight, 1 000 metrics a batch over 4 series with k = 1, so values are flagged and episodes
open and resolve all the time: --resolve-after 2). The sink's thread retries with backoff and its bounded queue
drops what does not fit (counted); detection never waits for it. Prints the median metrics/s of each with
min-max, the ratio of the medians, the per-round ratios and the server CPU per batch; writes sink.json and
sink.md to --out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks import loadgen, report
from benchmarks.metrics_bench import fig, free_port
from benchmarks.servers import ROOT, ServerProcess


def run(rounds: int, duration: float, warmup: float) -> dict:
    common = ("--threshold", "1", "--resolve-after", "2")
    servers = {"no sink": ServerProcess("streamer", args=(*common, "--episodes", "on")),
               "down sink": ServerProcess("streamer", args=(*common, "--alertmanager",
                                                            f"http://127.0.0.1:{free_port()}"))}
    generator = loadgen.LoadGenerator()
    figures: dict[str, list[float]] = {name: [] for name in servers}
    cpu_us: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for r in range(rounds):
            for name, server in (list(servers.items()) if r % 2 == 0 else list(reversed(servers.items()))):
                result = generator.run(loadgen.Job(addr=server.addr, rpc="stream", load="pipelined", batch=1000,
                                                   series=4, duration=duration, warmup=warmup,
                                                   server_pid=server.pid))
                if "error" in result:
                    raise RuntimeError(f"{name}: {result['error']}")
                figures[name].append(result["metrics_per_s"])
                cpu_us[name].append(1e6 * result["cpu"]["server_cores"] / result["batches_per_s"])
                print(f"  round {r + 1}/{rounds} {name}: {result['metrics_per_s'] / 1e6:.3f} M metrics/s",
                      file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    paired = [d / n for d, n in zip(figures["down sink"], figures["no sink"])]
    return {"figures": figures, "cpu_us_per_batch": cpu_us, "paired_ratios": paired,
            "down_vs_none": statistics.median(figures["down sink"]) / statistics.median(figures["no sink"])}


def markdown(doc: dict) -> str:
    s, f, p = doc["settings"], doc["figures"], doc["paired_ratios"]
    return "\n".join([
        f"Run `python -m benchmarks.sink_bench --rounds {s['rounds']} --duration {s['duration']:g}`, {doc['started']}; "
        f"{doc['machine']['cores']} cores, load average at start {doc['machine']['load_average_start'][0]:.2f}.", "",
        "| DetectStream pipelined, 1 000/batch, episodes on | no sink | Alertmanager down | down / none (medians) "
        "| per round (median, min-max) | server CPU µs a batch, none / down |",
        "|---|---:|---:|---:|---:|---:|",
        f"| metrics/s (median, min-max) | {fig(f['no sink'])} | {fig(f['down sink'])} | {doc['down_vs_none']:.3f} | "
        f"{statistics.median(p):.3f} ({min(p):.3f}-{max(p):.3f}) | "
        f"{statistics.median(doc['cpu_us_per_batch']['no sink']):.1f} / "
        f"{statistics.median(doc['cpu_us_per_batch']['down sink']):.1f} |"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds a measurement")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of the same load before each measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    doc = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": report.machine(),
           "versions": report.versions(),
           "settings": {"rounds": args.rounds, "duration": args.duration, "warmup": args.warmup}}
    doc.update(run(args.rounds, args.duration, args.warmup))
    md = markdown(doc)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sink.json").write_text(json.dumps(doc, indent=1))
    (args.out / "sink.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
