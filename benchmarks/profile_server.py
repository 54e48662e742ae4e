"""Where a server's time goes per batch under the Go load generator: `python -m benchmarks.profile_server`.

Three views of each server (streamer and the ceiling by default), same load, in interleaved rounds:
- CPU time per batch of each thread (from /proc/PID/task: the asyncio main thread, grpc's Python poller thread,
  grpc's C++ event_engine threads), user and system, median and min-max over the rounds;
- perf (`perf record -p`, user and kernel as perf_event_paranoid allows): CPU per batch by shared object
  (libpython, cygrpc, numba's [JIT] code, numpy, numba's dispatcher, libc, the kernel);
- py-spy (`py-spy record --nonblocking`, Python stacks): the main thread's non-idle samples by what they are
  in (event loop, the async generator, each pipeline stage), scaled to the main thread's CPU per batch.
Writes benchmarks/results/profile.md and profile.json (or --out). perf and py-spy are optional: a view whose
tool is missing is left out and said so.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import golang, report
from benchmarks.scenarios import Scenario
from benchmarks.servers import ROOT, ServerProcess

TICK = os.sysconf("SC_CLK_TCK")
PY_SPY = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))

# py-spy frames -> what the sample is doing: the first entry found anywhere in a stack names it.
CATEGORIES = (
    ("StreamPass.decode", "pipeline: fused pass, decode (one numba call)"),
    ("StreamPass.apply", "pipeline: fused pass, intern + judge + encode (one numba call)"),
    ("decode_request", "pipeline: decode"),
    ("SeriesTable.intern", "pipeline: intern"),
    ("welford_update", "pipeline: kernel"),
    ("detect_batch", "pipeline: kernel"),
    ("encode_flagged", "pipeline: encode"),
    ("_encoded", "pipeline: encode"),
    ("StreamDetector", "pipeline: Python glue (detector.py)"),
    ("detect ", "pipeline: Python glue (detector.py)"),
    ("_run ", "service: _run"),
    ("OutliersService.", "service: the RPC method (async generator / coroutine)"),
    ("detect_stream ", "service: the RPC method (async generator / coroutine)"),
    ("EpollSelector.select", "idle"),
)
OTHER = "event loop and grpc.aio callbacks (asyncio, cygrpc)"


def thread_cpu(pid: int) -> dict[str, list[int]]:
    """{thread kind: [user ticks, system ticks]} of a process now; kinds: main, python-other, the C threads' names."""
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        kind = "main thread (asyncio loop)" if int(tid) == pid else (
            "other Python threads (grpc poller, store)" if comm == "python" else f"{comm} (grpc C++)")
        out[kind][0] += int(fields[11])
        out[kind][1] += int(fields[12])
    return out


def run_load(go: golang.GoLoadGenerator, server: ServerProcess, scenario: Scenario, seconds: float,
             warmup: float, during=None) -> dict:
    """One Go load-generator run; CPU per batch per thread kind over the measured part; `during(pid)` runs in it."""
    proc = subprocess.Popen(go.command(server.addr, scenario, seconds, warmup), stdout=subprocess.PIPE, text=True)
    time.sleep(warmup)
    before = thread_cpu(server.pid)
    extra = during(server.pid, seconds) if during else None
    if not during:
        time.sleep(seconds)
    after = thread_cpu(server.pid)
    result = golang.normalize(proc.communicate(timeout=seconds + 120)[0])
    if "error" in result:
        raise RuntimeError(result["error"])
    batches = result["batches_per_s"] * seconds
    us = {kind: [(after[kind][i] - before.get(kind, [0, 0])[i]) / TICK / batches * 1e6 for i in (0, 1)]
          for kind in after}
    return {"batches_per_s": result["batches_per_s"], "metrics_per_s": result["metrics_per_s"],
            "us_per_batch": us, "extra": extra}


def perf_view(pid: int, seconds: float, workdir: Path) -> dict[str, int]:
    data = workdir / f"perf-{pid}.data"
    subprocess.run(["perf", "record", "-F", "999", "-p", str(pid), "-o", str(data), "--", "sleep", str(seconds)],
                   capture_output=True, timeout=seconds + 60)
    text = subprocess.run(["perf", "report", "-i", str(data), "--sort", "dso", "-n", "--stdio"],
                          capture_output=True, text=True, timeout=120).stdout
    counts: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and not line.startswith("#"):
            dso = " ".join(parts[2:])
            dso = "[JIT] (numba code)" if dso.startswith("[JIT]") else dso
            counts[dso] = counts.get(dso, 0) + int(parts[1])
    return {"hz": 999, "samples": counts}


def pyspy_view(pid: int, seconds: float, workdir: Path) -> dict[str, int]:
    raw = workdir / f"spy-{pid}.txt"
    subprocess.run([PY_SPY, "record", "--nonblocking", "--threads", "-r", "400", "-d",
                    str(int(seconds)), "-p", str(pid), "-f", "raw", "-o", str(raw)], capture_output=True,
                   timeout=seconds + 60)
    counts: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        if f"({pid})" not in frames[0]:  # the main thread only: its id is the process's
            continue
        for key, name in CATEGORIES:
            if any(f.startswith(key) for f in frames[1:]):
                counts[name] += int(n)
                break
        else:
            counts[OTHER] += int(n)
    return dict(counts)


def _median_range(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def markdown(doc: dict) -> str:
    lines = [f"# Server profile per batch: `{doc['command']}`", "",
             f"{doc['started']}; {doc['machine']['cpu_model']}, {doc['machine']['cores']} cores shared by server "
             f"and load generator, load average {doc['machine']['load_average_start'][0]:.2f} at start. "
             f"{doc['rounds']} interleaved rounds of {doc['seconds']} s per server; median (min-max).", ""]
    for sc in doc["scenarios"]:
        lines += [f"## {sc['label']} (Go load generator)", ""]
        names = list(sc["servers"])
        lines.append("| | " + " | ".join(names) + " |")
        lines.append("|---|" + "---:|" * len(names))
        row = [f"{_fmt(s['batches_per_s'], 0)}" for s in sc["servers"].values()]
        lines.append("| batches/s | " + " | ".join(row) + " |")
        kinds = sorted({k for s in sc["servers"].values() for k in s["cpu_us"]})
        for kind in [k for k in kinds if k != "total"] + ["total"]:
            row = []
            for s in sc["servers"].values():
                v = s["cpu_us"].get(kind)
                row.append(_fmt(v, 0) if v else "-")
            lines.append(f"| CPU us/batch: {kind} | " + " | ".join(row) + " |")
        for view, title in (("perf", "perf: CPU us/batch by shared object"),
                            ("pyspy", "py-spy: main thread's CPU us/batch by Python frame")):
            if not any(view in s for s in sc["servers"].values()):
                continue
            keys = sorted({k for s in sc["servers"].values() for k in s.get(view, {})},
                          key=lambda k: -max(s.get(view, {}).get(k, 0) for s in sc["servers"].values()))
            lines += ["", f"{title} (one round each)", "", "| | " + " | ".join(names) + " |",
                      "|---|" + "---:|" * len(names)]
            for k in keys:
                lines.append(f"| {k} | " + " | ".join(f"{s.get(view, {}).get(k, 0):.1f}"
                                                      for s in sc["servers"].values()) + " |")
        lines.append("")
    return "\n".join(lines + doc["notes"]) + "\n"


def _fmt(v, digits) -> str:
    if isinstance(v, dict):
        return f"{v['median']:.{digits}f} ({v['min']:.{digits}f}-{v['max']:.{digits}f})"
    return f"{v:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", nargs="+", default=["ceiling", "streamer"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[1000])
    parser.add_argument("--detect", action="store_true", help="also unary Detect, lock-step, 100 000 metrics")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    scenarios = [Scenario("stream", "pipelined", b) for b in args.batches]
    if args.detect:
        scenarios.append(Scenario("detect", "lockstep", 100_000))
    doc = {"command": "python -m benchmarks.profile_server " + " ".join(argv or sys.argv[1:]),
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": report.machine(), "versions": report.versions(),
           "rounds": args.rounds, "seconds": args.seconds, "scenarios": [], "notes": []}
    have_perf, have_spy = shutil.which("perf"), PY_SPY
    for tool, have in (("perf", have_perf), ("py-spy", have_spy)):
        if not have:
            doc["notes"].append(f"- {tool} not found: its view is left out.")
    servers = {}
    with tempfile.TemporaryDirectory(prefix="streamer-profile-") as workdir:
        workdir = Path(workdir)
        try:
            go = golang.GoLoadGenerator(workdir)
            for name in args.servers:
                servers[name] = ServerProcess(name)
            for sc in scenarios:
                runs = collections.defaultdict(list)
                for _ in range(args.rounds):
                    for name, server in servers.items():
                        runs[name].append(run_load(go, server, sc, args.seconds, 1.0))
                entry = {"label": sc.label(), "name": sc.name, "servers": {}}
                for name, rs in runs.items():
                    kinds = {k for r in rs for k in r["us_per_batch"]}
                    cpu = {k: _median_range([sum(r["us_per_batch"].get(k, [0, 0])) for r in rs]) for k in kinds}
                    cpu = {k: v for k, v in cpu.items() if v["max"] > 0.5}
                    cpu["total"] = _median_range([sum(sum(v) for v in r["us_per_batch"].values()) for r in rs])
                    s = {"batches_per_s": _median_range([r["batches_per_s"] for r in rs]), "cpu_us": cpu,
                         "rounds": rs}
                    server = servers[name]
                    if have_perf:
                        r = run_load(go, server, sc, args.seconds, 1.0, lambda pid, t: perf_view(pid, t, workdir))
                        batches = r["batches_per_s"] * args.seconds
                        s["perf"] = {k: n / r["extra"]["hz"] / batches * 1e6
                                     for k, n in r["extra"]["samples"].items() if n > 1}
                    if have_spy:
                        r = run_load(go, server, sc, args.seconds, 1.0, lambda pid, t: pyspy_view(pid, t, workdir))
                        main_us = sum(r["us_per_batch"]["main thread (asyncio loop)"])
                        busy = {k: n for k, n in r["extra"].items() if k != "idle"}
                        total = sum(busy.values()) or 1
                        s["pyspy"] = {k: main_us * n / total for k, n in busy.items()}
                    entry["servers"][name] = s
                doc["scenarios"].append(entry)
        finally:
            for server in servers.values():
                server.stop()
    doc["notes"].append("- perf and py-spy slow the server while they sample (py-spy pauses nothing with "
                        "--nonblocking, perf costs a few percent): their rounds give shares, scaled to per-batch "
                        "figures of that round; the /proc rounds above are the unperturbed CPU figures.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps(doc, indent=1))
    text = markdown(doc)
    (args.out / "profile.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
