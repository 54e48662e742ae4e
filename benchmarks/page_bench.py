"""What an open page costs DetectStream: metrics per second with the page open on a busy series, against no page,
in interleaved rounds of one run; and the in-process cost per batch of the tap.

    python -m benchmarks.page_bench [--rounds 40] [--duration 2] [--clients 2] [--variants ...] [--out DIR]

One `streamer serve` (memory://, --http-port on a free port) for the whole run. `--clients` threads each stream
pre-encoded batches of 1 000 metrics (100 series, normal values: about 46 flagged a batch, and 5 spikes) on their
own channel and session, four batches in flight. "page open" rounds hold the two connections the page's browser
holds while a series is viewed (the page's EventSources: /api/events, every outlier of every session; /api/tap on
series s0 of the first client's session, ten values a batch), read by a process each, as a browser's are, and
measured from the first message each has read (a page open, not a page opening: the ring sent at opening is a
one-off); "no page" rounds hold none, and "live list only" and "series view only" one of the two, to tell their
costs apart. Rounds alternate the order of the variants; medians with min-max over the rounds, of metrics/s and of
the server's CPU time a metric answered (utime + stime over each round: steadier than metrics/s on a shared
machine). In process (CPU time): StreamDetector.process per batch with no taps, taps nobody views, and a viewed
series. Writes page.json and page.md to --out (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks import report
from benchmarks.loadgen import _cpu_seconds
from benchmarks.servers import ROOT, ServerProcess
from streamer import detector
from streamer.pb import outliers_pb2 as pb
from streamer.state import SessionRegistry

STREAM = "/pb.Outliers/DetectStream"
WINDOW = 4  # batches in flight per client


def batches(session: str, n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n):
        values = rng.normal(100, 1, 1000)
        if b >= 20:
            values[rng.integers(0, 1000, 5)] = 1000.0
        req = pb.OutliersRequest(metrics=[pb.Metric(name=f"s{i % 100}", value=v) for i, v in enumerate(values)])
        if b == 0:
            req.session = session
        out.append(req.SerializeToString())
    return out


class Client(threading.Thread):
    """One DetectStream for the whole run, WINDOW batches in flight; counts metrics answered while `counting`."""

    def __init__(self, addr: str, requests: list[bytes]):
        super().__init__(daemon=True)
        self.addr, self.requests = addr, requests
        self.answered = 0
        self.stop = threading.Event()
        self.ready = threading.Event()
        self._credit = threading.Semaphore(WINDOW)

    def _requests(self):
        i = 0
        while not self.stop.is_set():
            self._credit.acquire()
            yield self.requests[i if i < 20 else 20 + (i - 20) % (len(self.requests) - 20)]
            i += 1

    def run(self) -> None:
        with grpc.insecure_channel(self.addr) as ch:
            call = ch.stream_stream(STREAM)
            for _ in call(self._requests()):
                self.answered += 1000
                self._credit.release()
                self.ready.set()
                if self.stop.is_set():
                    break


# What a browser's EventSource does, in a process of its own (as a browser is, so that reading does not take the load
# generator's GIL) and with nothing imported but http.client (so that starting it costs the machine little): prints
# "open" once a line starting with its third argument has come (for /api/tap, the ring a page gets when it opens: the
# rounds measure the page open, not its opening; for /api/events, the stream's first comment), reads until SIGTERM,
# then prints how many messages it read.
SSE_READER = """
import http.client, signal, sys
count = [0]
def done(*_):
    print(count[0], flush=True)
    raise SystemExit(0)
signal.signal(signal.SIGTERM, done)
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
conn.request("GET", sys.argv[2])
r = conn.getresponse()
first = sys.argv[3].encode()
while True:
    line = r.fp.readline()
    if not line:
        break
    if first and line.startswith(first):
        print("open", flush=True)
        first = b""
    if line.startswith(b"data: "):
        count[0] += 1
done()
"""


EVENTS, TAP = "/api/events?format=f64", "/api/tap?format=f64&session=bench-0&series=s0"  # as the page asks for them
PATHS = {"no page": (), "page open": (EVENTS, TAP), "live list only": (EVENTS,), "series view only": (TAP,)}
FIRST = {EVENTS: ": ", TAP: "data: "}  # the reader's "open": the line each waits for


def page_open(port: int, paths) -> list[subprocess.Popen]:
    """A reader process per path (SSE_READER), each sent its first message before this returns."""
    readers = []
    for path in paths:
        p = subprocess.Popen([sys.executable, "-c", SSE_READER, str(port), path, FIRST[path]], stdout=subprocess.PIPE,
                             text=True)
        if p.stdout.readline().strip() != "open":
            raise RuntimeError(f"the page's {path} did not answer")
        readers.append(p)
    return readers


def page_close(readers: list[subprocess.Popen]) -> int:
    """Stop the readers; the messages they read in all."""
    for p in readers:
        p.terminate()
    return sum(int(p.communicate(timeout=30)[0].strip() or 0) for p in readers)


def in_process(rounds: int = 9, n: int = 300) -> dict:
    """Microseconds a batch of StreamDetector.process: no taps, taps nobody views, one viewed series."""
    from streamer.web.tap import Taps
    reqs = batches("", n + 50, 1)
    idle, viewed = Taps(), Taps()

    tap = viewed.view("", "s0")
    variants = {"no taps": None, "taps, nothing viewed": idle, "one viewed series": viewed}
    dets = {}
    for name, taps in variants.items():
        d = detector.StreamDetector(detector.Defaults(), SessionRegistry(600, 10, 10**6))
        d.taps = taps
        for r in reqs[:50]:
            d.process(r)
        dets[name] = d
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            started = time.process_time()
            for req in reqs[50:]:
                dets[name].process(req)
            times[name].append(1e6 * (time.process_time() - started) / n)
    assert tap.added > 0
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in times.items()}


def median_interval(values: list[float], draws: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of `values` (the rounds' ratios): resampled with replacement, the
    2.5th and 97.5th percentiles of the resamples' medians. The rounds spread by far more than the difference
    measured; this says how far their median may be from the machine's (assuming rounds independent)."""
    rng = np.random.default_rng(seed)
    meds = np.median(rng.choice(np.asarray(values), size=(draws, len(values))), axis=1)
    return float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def measure(clients: list[Client], server: ServerProcess, duration: float) -> tuple[float, float]:
    """One round: (metrics/s, the server's CPU ns a metric answered) over `duration`."""
    before, t0, c0 = sum(c.answered for c in clients), time.monotonic(), _cpu_seconds(server.pid)
    time.sleep(duration)
    answered = sum(c.answered for c in clients) - before
    return answered / (time.monotonic() - t0), 1e9 * (_cpu_seconds(server.pid) - c0) / max(answered, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--variants", nargs="+", choices=list(PATHS), default=list(PATHS),
                        help="which to run besides no page and page open (always run; each is compared with no page)")
    args = parser.parse_args(argv)
    started = time.time()
    local = in_process()
    print(f"in process, us a batch: {json.dumps(local)}", flush=True)
    http_port = free_port()
    server = ServerProcess("streamer", args=("--http-port", str(http_port)))
    clients = []
    variants = ["no page", "page open"] + [v for v in args.variants if v not in ("no page", "page open")]
    runs: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}  # the server's CPU ns a metric answered
    received = []
    try:
        clients = [Client(server.addr, batches(f"bench-{k}", 220, k)) for k in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.ready.wait(60)
        time.sleep(1.0)  # warm
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]
            for name in order:
                readers = page_open(http_port, PATHS[name])
                rate, ns = measure(clients, server, args.duration)
                messages = page_close(readers)
                runs[name].append(rate)
                cpu[name].append(ns)
                if name == "page open":
                    received.append(messages)
            print(f"round {r + 1}: " + ", ".join(f"{n} {runs[n][-1] / 1e3:.1f} k metrics/s, {cpu[n][-1]:.0f} ns CPU"
                                                 for n in runs), flush=True)
    finally:
        for c in clients:
            c.stop.set()
        server.stop()
    ratios = [a / b for a, b in zip(runs["page open"], runs["no page"])]
    parts = {n: [a / b for a, b in zip(runs[n], runs["no page"])] for n in variants if n != "no page"}
    fig = {n: {"median": statistics.median(v), "min": min(v), "max": max(v)} for n, v in runs.items()}
    per_cpu = {n: [a / b for a, b in zip(cpu["no page"], cpu[n])] for n in variants if n != "no page"}
    cpu_fig = {n: {"median": statistics.median(v), "min": min(v), "max": max(v)} for n, v in cpu.items()}
    result = {"what": "DetectStream metrics/s with the page open on a busy series (its /api/events and /api/tap "
                      "connections) and without; interleaved rounds in one run",
              "clients": args.clients, "rounds": args.rounds, "duration_s": args.duration,
              "metrics_per_s": fig,
              "page_over_no_page": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
              "over_no_page": {n: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                               for n, v in parts.items()},
              "server_cpu_ns_per_metric": cpu_fig,
              "per_round": {"metrics_per_s": runs, "server_cpu_ns_per_metric": cpu},
              "per_cpu_second_over_no_page": {n: {"median": statistics.median(v), "min": min(v), "max": max(v),
                                                  "median_95": median_interval(v)} for n, v in per_cpu.items()},
              "sse_messages_per_page_round": received,
              "in_process_us_per_batch": local, "machine": report.machine(), "versions": report.versions(),
              "seconds": round(time.time() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "page.json").write_text(json.dumps(result, indent=2) + "\n")

    def f(v, scale=1e3, unit=" k"):
        return f"{v['median'] / scale:.1f}{unit} ({v['min'] / scale:.1f}-{v['max'] / scale:.1f})"

    def ratio(v):
        lo, hi = v.get("median_95", (None, None))
        interval = f"; median's 95% interval {lo:.3f}-{hi:.3f}" if lo is not None else ""
        return f"{v['median']:.3f} ({v['min']:.3f}-{v['max']:.3f}{interval})"

    r = result["page_over_no_page"]
    md = [f"# The page's cost to DetectStream ({args.clients} clients, 1 000 metrics a batch, {args.rounds} rounds of "
          f"{args.duration:g} s)", "",
          "| | metrics/s, median (min-max) | server CPU ns a metric | metrics per server CPU-s, over no page |",
          "| --- | --- | --- | --- |"]
    md += [f"| {n} | {f(v)} | {f(cpu_fig[n], 1, '')} | " +
           (f"{ratio(result['per_cpu_second_over_no_page'][n])} |" if n != "no page" else "1 |")
           for n, v in fig.items()]
    md += ["", f"page open / no page, per round: {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f}); SSE messages "
           f"the page received per round: {received}", "",
           "Each over no page, per round: " + "; ".join(
               f"{n} {v['median']:.3f} ({v['min']:.3f}-{v['max']:.3f})" for n, v in result["over_no_page"].items()), "",
           "In process, microseconds a batch: " + "; ".join(f"{k} {f(v, 1, '')}" for k, v in local.items()), "",
           f"Machine: {json.dumps(result['machine'])}", "", f"Versions: {json.dumps(result['versions'])}", ""]
    (args.out / "page.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
