"""What the Prometheus metrics cost: DetectStream throughput of a streamer server with --metrics-port on against
one with it off (--metrics-port 0: no interceptor, no counting), in interleaved rounds of one run.

    python -m benchmarks.metrics_bench [--rounds 7] [--duration 3] [--out DIR]

Both servers run for the whole run, each in its own process, driven in turn by benchmarks/loadgen.py's
pipelined stream (one stream, 32 batches in flight, 4 series) at 100 and 1 000 metrics a batch: the metrics are
counted per call and per batch, so small batches show their cost best. Rounds alternate which server goes first,
so the machine's drift hits both alike; the "on" server is scraped once a round, as Prometheus would. Prints the
median metrics/s of each server with min-max, the ratio of the medians and the median of the per-round ratios,
and the server's CPU time per batch (from /proc: what the metrics add to each batch, less sensitive than
throughput to the other load of a shared machine). On a busy shared machine the end-to-end figures move by more
than the metrics cost, so the run also times, in process and in CPU time, the code the metrics add to each batch
of a stream (the interceptor's wrapping of the request iterator and the answer generator, and the detector's
count), against the same stream handler unwrapped; writes metrics.json and metrics.md to --out.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import grpc

from benchmarks import loadgen, report
from benchmarks.servers import ROOT, ServerProcess
from streamer.ops.metrics import Metrics, _Method

BATCHES = (100, 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def judged(text: str) -> float:
    """streamer_metrics_judged_total{rpc="DetectStream"} from a scrape."""
    for line in text.splitlines():
        if line.startswith('streamer_metrics_judged_total{rpc="DetectStream"}'):
            return float(line.split()[-1])
    return 0.0


def fig(xs: list[float]) -> str:
    return f"{statistics.median(xs) / 1e6:.3f} M ({min(xs) / 1e6:.3f}-{max(xs) / 1e6:.3f})"


class _Context:
    """What the interceptor asks of a call's context, for the in-process timing."""

    def code(self):
        return None

    def time_remaining(self):
        return 60.0


def python_cost(messages: int = 200_000, repeats: int = 5) -> dict:
    """CPU µs a stream message costs through the metrics' wrapping and counting, against the bare handler (best
    of `repeats`): what --metrics-port adds to every DetectStream batch, besides per-call work."""
    count = Metrics().batch_counter("DetectStream")

    async def requests():
        for _ in range(messages):
            yield b"r"

    def stream_handler(on_batch):  # DetectStream's shape: read a request, judge it (count), answer it
        async def handler(reqs, context):
            take = reqs.__aiter__().__anext__
            while True:
                try:
                    await take()
                except StopAsyncIteration:
                    return
                on_batch(100, 1)
                yield b"a"
        return handler

    handler = stream_handler(lambda metrics, outliers: None)  # what the detector calls without --metrics-port
    wrapped = _Method(Metrics(), "/pb.Outliers/DetectStream",
                      grpc.stream_stream_rpc_method_handler(stream_handler(count))).handler.stream_stream

    async def cpu_us(fn) -> float:
        start = time.process_time()
        async for _ in fn(requests(), _Context()):
            pass
        return 1e6 * (time.process_time() - start) / messages

    async def measure() -> dict:
        bare, metered = [], []
        for _ in range(repeats):
            bare.append(await cpu_us(handler))
            metered.append(await cpu_us(wrapped))
        return {"bare_us": min(bare), "metered_us": min(metered), "added_us_per_batch": min(metered) - min(bare)}
    return asyncio.run(measure())


def run(rounds: int, duration: float, warmup: float) -> dict:
    port = free_port()
    servers = {"off": ServerProcess("streamer"), "on": ServerProcess("streamer", args=("--metrics-port", str(port)))}
    generator = loadgen.LoadGenerator()
    rows = []
    try:
        for batch in BATCHES:
            figures: dict[str, list[float]] = {name: [] for name in servers}
            cpu_us: dict[str, list[float]] = {name: [] for name in servers}  # server CPU µs per batch
            for r in range(rounds):
                order = list(servers.items()) if r % 2 == 0 else list(reversed(servers.items()))
                for name, server in order:
                    result = generator.run(loadgen.Job(addr=server.addr, rpc="stream", load="pipelined", batch=batch,
                                                       series=4, duration=duration, warmup=warmup,
                                                       server_pid=server.pid))
                    if "error" in result:
                        raise RuntimeError(f"{name}: {result['error']}")
                    figures[name].append(result["metrics_per_s"])
                    cpu_us[name].append(1e6 * result["cpu"]["server_cores"] / result["batches_per_s"])
                    print(f"  b{batch} round {r + 1}/{rounds} metrics {name}: "
                          f"{result['metrics_per_s'] / 1e6:.3f} M metrics/s, {cpu_us[name][-1]:.1f} µs server CPU a "
                          f"batch", file=sys.stderr, flush=True)
                scrape(port)
            paired = [on / off for on, off in zip(figures["on"], figures["off"])]
            rows.append({"batch": batch, "series": 4, "on": figures["on"], "off": figures["off"],
                         "cpu_us_per_batch": cpu_us,
                         "on_vs_off": statistics.median(figures["on"]) / statistics.median(figures["off"]),
                         "paired_ratios": paired, "paired_median": statistics.median(paired)})
        counted = judged(scrape(port))  # what the "on" server counted, for the record (and a sanity check)
    finally:
        for server in servers.values():
            server.stop()
    if counted <= 0:
        raise RuntimeError("the metrics server counted no judged metrics")
    return {"rows": rows, "judged_counted": counted}


def markdown(doc: dict) -> str:
    s = doc["settings"]
    out = [f"Run `python -m benchmarks.metrics_bench --rounds {s['rounds']} --duration {s['duration']:g}`, "
           f"{doc['started']}; machine: {doc['machine']['cpu_model']}, {doc['machine']['cores']} cores, load average "
           f"at start {doc['machine']['load_average_start'][0]:.2f}.",
           "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v) + ".",
           "",
           "| DetectStream pipelined | metrics off: metrics/s (median, min-max) | metrics on | on / off (medians) "
           "| on / off per round (median, min-max) | server CPU µs a batch, off / on (medians) |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        p = r["paired_ratios"]
        out.append(f"| {r['batch']:,}/batch, {r['series']} series | {fig(r['off'])} | {fig(r['on'])} | "
                   f"{r['on_vs_off']:.3f} | {r['paired_median']:.3f} ({min(p):.3f}-{max(p):.3f}) | "
                   f"{statistics.median(r['cpu_us_per_batch']['off']):.1f} / "
                   f"{statistics.median(r['cpu_us_per_batch']['on']):.1f} |")
    c = doc["python_cost"]
    out += ["", f"In process (CPU time, best of 5, 200 000 messages): a stream message costs {c['bare_us']:.2f} µs "
            f"through the bare handler and {c['metered_us']:.2f} µs with the metrics' wrapping and counting: "
            f"{c['added_us_per_batch']:.2f} µs added a batch, against the server CPU time a batch takes above "
            + ", ".join(f"{100 * c['added_us_per_batch'] / statistics.median(r['cpu_us_per_batch']['off']):.2f}% "
                        f"at {r['batch']:,}/batch" for r in doc["rows"]) + "."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds a measurement")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of the same load before each measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    doc = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": report.machine(),
           "versions": report.versions(),
           "settings": {"rounds": args.rounds, "duration": args.duration, "warmup": args.warmup}}
    print(f"versions: {doc['versions']}", file=sys.stderr)
    doc["python_cost"] = python_cost()
    doc.update(run(args.rounds, args.duration, args.warmup))
    md = markdown(doc)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(doc, indent=1))
    (args.out / "metrics.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
