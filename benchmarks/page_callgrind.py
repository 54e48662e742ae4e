"""`python -m benchmarks.page_callgrind [--rounds 3] [--window 30] [--scale 42]`: what an open page costs a
DetectStream server, in instructions of the whole server process counted by valgrind's callgrind: grpc's
transport, the event loop, detection, the taps, the page server and its JSON. Counts are steady on this shared
machine, where CPU time moves by 10-15% from one round to the next (benchmarks/page_bench.py).

One `streamer serve` (memory://, --http-port) runs under callgrind; page_bench's clients, outside valgrind, stream
its batches (1 000 metrics of 100 series, 2 clients, four batches in flight each). Windows of --window seconds
alternate between no page and the page open (page_bench's two reader processes, as a browser holds them); each
window's instructions are callgrind's count between a zero and a dump (`callgrind_control -z`, `-d`), over the
metrics answered meanwhile. Under valgrind the server runs some 50 to 100 times slower than natively, so the page's
clocks (a whole batch recorded every 100 ms, a delivery every 100 ms) would fire that many times as often a batch:
the server runs with both stretched by --scale (a wrapper sets them before `streamer serve` starts), and the
report gives the batches a delivery, against page_bench's native figure (about 250 batches a delivery at 2 500
batches a second), to show the rates are alike. Writes page_callgrind.json and .md to --out (default
benchmarks/results). valgrind must be installed; it takes about 5 + 2 * rounds * window / 60 minutes.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.callgrind_bench import valgrind_env
from benchmarks.page_bench import PATHS, Client, batches, free_port, page_close, page_open
from benchmarks.servers import READY, ROOT
from streamer.web.tap import DELIVER_SECONDS


def serve(scale: float, argv: list[str]) -> int:
    """Under valgrind: `streamer serve argv` with the page's clocks stretched by `scale`."""
    from streamer import cli
    from streamer.web import pageserver, tap
    tap.Taps.__init__.__defaults__ = (tap.RING, tap.SAMPLE_SECONDS * scale, time.monotonic)
    pageserver.DELIVER_SECONDS = tap.DELIVER_SECONDS * scale
    return cli.main(["serve", *argv])


def _control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True, timeout=600)


def _total(path: Path) -> int:
    m = re.search(r"^(?:summary|totals):\s+(\d+)", path.read_text(errors="replace"), re.M)
    return int(m.group(1)) if m else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=30.0, help="seconds a window, under valgrind")
    parser.add_argument("--scale", type=float, default=42.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=list(PATHS), default=["no page", "page open"],
                        help="besides no page and page open (always run; each is compared with no page)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--serve", type=float, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.serve is not None:
        return serve(args.serve, [a for a in rest if a != "--"])
    env = valgrind_env()  # one numba cache for the native warm-up and the run under valgrind
    http_port = free_port()
    serve_args = ["--host", "127.0.0.1", "--port", "0", "--store", "memory://", "--metrics-port", "0",
                  "--otlp-port", "0", "--http-port", str(http_port), "--log-level", "info"]
    inner = [sys.executable, "-m", "benchmarks.page_callgrind", "--serve", str(args.scale), "--", *serve_args]
    # natively first: numba's cache then holds what the server compiles (under valgrind it would take an hour)
    warm = subprocess.Popen(inner, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    for line in warm.stderr:
        if READY.search(line):
            break
    warm.terminate()
    warm.wait(60)
    tmp = Path(tempfile.mkdtemp(prefix="page-callgrind-"))
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", *inner],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    variants = ["no page", "page open"] + [v for v in args.variants if v not in ("no page", "page open")]
    started = time.time()
    per_metric: dict[str, list[float]] = {v: [] for v in variants}
    rates: dict[str, list[float]] = {v: [] for v in variants}
    clients = []
    try:
        deadline = time.monotonic() + 1800
        while not (match := READY.search((tmp / "server.log").read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start under valgrind:\n" + (tmp / "server.log").read_text())
            time.sleep(1)
        addr = f"127.0.0.1:{match.group(2)}"
        clients = [Client(addr, batches(f"bench-{k}", 220, k)) for k in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.ready.wait(600)
        time.sleep(args.window)  # warm: grpc's and the loop's first calls, the taps' first arming
        dump = 0
        for r in range(args.rounds):
            for name in (variants if r % 2 == 0 else variants[::-1]):
                readers = page_open(http_port, PATHS[name])
                time.sleep(args.window / 6)  # the page's opening (its ring, the first deliveries) is not measured
                _control("-z", proc.pid)
                before, t0 = sum(c.answered for c in clients), time.monotonic()
                time.sleep(args.window)
                _control("-d", proc.pid)
                answered = sum(c.answered for c in clients) - before
                elapsed = time.monotonic() - t0
                page_close(readers)
                dump += 1
                path = Path(f"{tmp}/cg.out.{dump}")
                per_metric[name].append(_total(path) / max(answered, 1))
                rates[name].append(answered / 1000 / elapsed)
                print(f"round {r + 1} {name}: {per_metric[name][-1]:.1f} instructions a metric, "
                      f"{rates[name][-1]:.1f} batches/s under valgrind", flush=True)
    finally:
        for c in clients:
            c.stop.set()
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)  # the dumps (a few MB a run) are read as they come
    ratios = [a / b for a, b in zip(per_metric["no page"], per_metric["page open"])]
    batches_a_delivery = statistics.median(rates["page open"]) * args.scale * DELIVER_SECONDS
    result = {"what": "instructions of the whole server process a DetectStream metric answered, page open and not",
              "rounds": args.rounds, "window_seconds": args.window, "scale": args.scale, "clients": args.clients,
              "instructions_per_metric": per_metric, "batches_per_second_under_valgrind": rates,
              "no_page_over_page_open": ratios, "batches_a_delivery": batches_a_delivery,
              "machine": report.machine(), "versions": report.versions(),
              "seconds": round(time.time() - started)}
    md = [f"# The page's cost in instructions of the whole server ({args.clients} clients, 1 000 metrics a batch, "
          f"{args.rounds} rounds of {args.window:g} s under callgrind)", "",
          "| | instructions a metric, median (min-max) | over no page |", "| --- | --- | --- |"]
    for name in variants:
        v = per_metric[name]
        rel = statistics.median(per_metric[name]) / statistics.median(per_metric["no page"])
        md.append(f"| {name} | {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f}) | {rel:.4f} |")
    md += ["", f"Metrics per instruction, page open over no page, per round: "
               f"{', '.join(f'{x:.4f}' for x in ratios)}.",
           f"The clocks stretched {args.scale:g} times; about {batches_a_delivery:.0f} batches a delivery "
           f"(natively about 250).", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "page_callgrind.json").write_text(json.dumps(result, indent=1))
    (args.out / "page_callgrind.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
