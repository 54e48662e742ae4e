"""OTLP ingest: Export data points per second end to end, against the raw-bytes ceiling of the same method path
with the same client, and the in-process cost per data point.

    python -m benchmarks.otlp_bench [--rounds 5] [--duration 3] [--points 1000] [--clients 4] [--out DIR]

Two servers run for the whole run, each in its own process: `streamer serve` (memory://) and
benchmarks/ceiling_server.py, whose /opentelemetry.proto.collector.metrics.v1.MetricsService/Export answers b""
without reading the request: what grpc.aio and this client allow on that path, so no OTLP server on this stack
can beat it. The client is the same for both: `--clients` threads, each its own channel and resource (its own
session), sending pre-encoded ExportMetricsServiceRequests of `--points` data points (half gauges, half
monotonic cumulative counters, with times moving on) one after another. Rounds alternate which server goes
first; the figures are medians with min-max over the rounds. In process (CPU time): OtlpIngest.export on the same
bytes, and its parts (protobuf parse; parse and series keys; the whole export), in microseconds per data point;
and what Watch adds to a DetectStream batch (no hub, a hub nobody watches, one subscriber).
Writes otlp.json and otlp.md to --out (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as svc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from benchmarks import report
from benchmarks.servers import ROOT, ServerProcess
from streamer import detector, otlp
from streamer.state import SessionRegistry

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
T0 = 1_800_000_000 * 10**9


def export_request(service: str, points: int, i: int) -> bytes:
    """The i-th export of one resource: points / 2 gauges and points / 2 cumulative counters."""
    req = svc.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    for k, v in (("service.name", service), ("host.name", "bench-host"), ("process.pid", "4242")):
        rm.resource.attributes.add(key=k, value=common_pb2.AnyValue(string_value=v))
    sm = rm.scope_metrics.add()
    t = T0 + i * 10**9
    gauge = sm.metrics.add(name="system.cpu.utilization")
    total = sm.metrics.add(name="http.server.requests")
    total.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    total.sum.is_monotonic = True
    for j in range(points // 2):
        p = gauge.gauge.data_points.add(as_double=0.5 + 0.01 * ((i + j) % 7), time_unix_nano=t)
        p.attributes.add(key="cpu", value=common_pb2.AnyValue(int_value=j))
        q = total.sum.data_points.add(as_int=i * (100 + j % 5), start_time_unix_nano=T0, time_unix_nano=t)
        q.attributes.add(key="route", value=common_pb2.AnyValue(string_value=f"/api/{j}"))
    return req.SerializeToString()


def drive(addr: str, requests: list[list[bytes]], duration: float, offset: list[int]) -> float:
    """Exports per second: len(requests) threads, each on its own channel sending its own list in a loop for
    `duration` seconds (after one call to connect)."""
    calls = [0] * len(requests)
    elapsed = [0.0] * len(requests)
    barrier = threading.Barrier(len(requests))

    def client(k: int) -> None:
        with grpc.insecure_channel(addr) as ch:
            call = ch.unary_unary(EXPORT)  # bytes in, bytes out: the same for both servers
            call(requests[k][offset[k] % len(requests[k])], timeout=60)  # connect first
            offset[k] += 1
            barrier.wait()
            started = time.monotonic()
            stop = started + duration
            n = 0
            while time.monotonic() < stop:
                call(requests[k][offset[k] % len(requests[k])], timeout=60)
                offset[k] += 1
                n += 1
            calls[k], elapsed[k] = n, time.monotonic() - started

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(c / e for c, e in zip(calls, elapsed))


def in_process(points: int, repeats: int) -> dict:
    """Microseconds per data point of OtlpIngest.export and its parts, on a memory:// registry."""
    sessions = SessionRegistry(600, 1000, 1_000_000)
    ingest = otlp.OtlpIngest(sessions, detector.resolve(None, detector.Defaults(), "bench"), 1_000_000)
    bodies = [export_request("inproc", points, i) for i in range(repeats + 20)]
    for b in bodies[:20]:
        ingest.export(b)  # warm: the JIT, the series interned
    out = {}

    def per_point(fn) -> float:
        started = time.process_time()  # CPU time: less moved by the other load of a shared machine
        for b in bodies[20:]:
            fn(b)
        return 1e6 * (time.process_time() - started) / (repeats * points)

    out["parse_us"] = per_point(svc.ExportMetricsServiceRequest.FromString)

    def keys(b):
        ingest._columns(svc.ExportMetricsServiceRequest.FromString(b), otlp._Rejected())

    out["parse_and_keys_us"] = per_point(keys)
    # fresh times for the whole export (the counters must move on)
    bodies = [export_request("inproc", points, i) for i in range(40, 40 + repeats + 20)]
    out["export_us"] = per_point(ingest.export)
    sessions.close()
    return out


def watch_cost(rounds: int = 9, batches: int = 300) -> dict:
    """What Watch adds to a DetectStream batch (1 000 metrics, 100 series, 5 flagged): microseconds a batch of
    StreamDetector.process without a hub (as before Watch), with a hub nobody watches, and with one subscriber
    (events built and queued); interleaved rounds, medians with min-max."""
    import asyncio

    import numpy as np

    from streamer import watch
    from streamer.pb import outliers_pb2 as pb
    rng = np.random.default_rng(0)
    requests = []
    for b in range(batches + 50):
        values = rng.normal(100, 1, 1000)
        if b >= 50:
            values[rng.integers(0, 1000, 5)] = 1000.0  # flagged
        requests.append(pb.OutliersRequest(metrics=[pb.Metric(name=f"s{i % 100}", value=v)
                                                    for i, v in enumerate(values)]).SerializeToString())
    loop = asyncio.new_event_loop()
    idle, watched = watch.Hub(), watch.Hub()
    idle.start(loop)
    watched.start(loop)  # started on this thread: publish delivers at once
    sub = watched.subscribe(limit=10**9)
    variants = {"no hub": None, "hub, nobody watching": idle, "hub, one subscriber": watched}
    detectors = {}
    for name, hub in variants.items():
        d = detector.StreamDetector(detector.Defaults(), SessionRegistry(600, 10, 10**6))
        d.watch = hub
        for r in requests[:50]:
            d.process(r)
        detectors[name] = d
    times: dict[str, list[float]] = {n: [] for n in variants}
    for r in range(rounds):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            d = detectors[name]
            started = time.process_time()  # CPU time, as in_process
            for req in requests[50:]:
                d.process(req)
            times[name].append(1e6 * (time.process_time() - started) / batches)
            sub.queue.clear()
    loop.close()
    return {n: {"median": statistics.median(v), "min": min(v), "max": max(v)} for n, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--points", type=int, default=1000, help="data points per export (even)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    started = time.time()
    local = in_process(args.points, 50)
    print(f"in process, us per data point: {json.dumps({k: round(v, 3) for k, v in local.items()})}", flush=True)
    watching = watch_cost()
    print(f"DetectStream batch, us: {json.dumps(watching)}", flush=True)
    servers = {"streamer": ServerProcess("streamer"), "ceiling": ServerProcess("ceiling")}
    try:
        requests = [[export_request(f"bench-{k}", args.points, i) for i in range(1, 401)]
                    for k in range(args.clients)]
        offsets = {name: [0] * args.clients for name in servers}
        runs: dict[str, list[float]] = {name: [] for name in servers}
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                calls = drive(servers[name].addr, requests, args.duration, offsets[name])
                runs[name].append(calls * args.points)
            print(f"round {r + 1}: " + ", ".join(f"{n} {runs[n][-1] / 1e3:.1f} k points/s" for n in servers),
                  flush=True)
    finally:
        for s in servers.values():
            s.stop()
    ratios = [a / b for a, b in zip(runs["streamer"], runs["ceiling"])]
    result = {
        "what": "OTLP Export, data points per second end to end; the ceiling answers the same path unparsed",
        "points_per_export": args.points, "clients": args.clients, "rounds": args.rounds,
        "duration_s": args.duration,
        "points_per_s": {n: {"median": statistics.median(v), "min": min(v), "max": max(v)} for n, v in runs.items()},
        "streamer_over_ceiling": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "in_process_us_per_point": local,
        "detectstream_batch_us_by_watch": watching,
        "machine": report.machine(), "versions": report.versions(),
        "seconds": round(time.time() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "otlp.json").write_text(json.dumps(result, indent=2) + "\n")

    def fig(v: dict, scale: float = 1e3, unit: str = "k") -> str:
        return f"{v['median'] / scale:.1f} {unit} ({v['min'] / scale:.1f}-{v['max'] / scale:.1f})"

    md = [f"# OTLP Export ({args.points} data points an export, {args.clients} clients, {args.rounds} rounds of "
          f"{args.duration:g} s)", "",
          "| server | data points/s, median (min-max) |", "| --- | --- |"]
    md += [f"| {n} | {fig(v)} |" for n, v in result["points_per_s"].items()]
    r = result["streamer_over_ceiling"]
    md += ["", f"streamer / ceiling, per round: {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})", "",
           "In process, microseconds per data point: " + ", ".join(f"{k} {v:.3f}" for k, v in local.items()), "",
           "A DetectStream batch of 1 000 metrics (5 flagged), microseconds: "
           + "; ".join(f"{k} {fig(v, 1, '')}" for k, v in watching.items()), "",
           f"Machine: {json.dumps(result['machine'])}", "", f"Versions: {json.dumps(result['versions'])}", ""]
    (args.out / "otlp.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
