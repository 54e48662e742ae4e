"""`python -m benchmarks [--quick|--tiny] [--scenarios PATTERN ...] [--out DIR]`: measure, print, write results.

Runs the kernel micro-benchmarks (and benchmarks/wire_bench.py when it exists) in-process, the detection quality
script (benchmarks/quality_bench.py: quality.json, quality.md, quality.png), then starts the
ceiling, baseline, peer (river, grpc-go, tuned-go) and streamer servers and drives every scenario against each with
the Python load generator (and the Go one when go/cmd/loadgen exists). Progress goes to stderr; the table
to stdout; latest.json, latest.md and latest.png (plus a timestamped JSON) to the output directory.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import golang, report, scenarios
from benchmarks.servers import DESCRIPTIONS, GO_PEERS, ROOT, ServerProcess

RESULTS = ROOT / "benchmarks" / "results"
OVERHEAD_S = 0.5  # per measurement, on top of warm-up + duration: channel setup, process start (Go)


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Progress:
    """`[ n/total  elapsed  ~left]` lines on stderr; the estimate learns from the measurements so far."""

    def __init__(self, total: int, per_job: float):
        self.total, self.done, self.per_job = total, 0, per_job
        self.start = self.jobs_start = time.monotonic()

    def begin_jobs(self) -> None:
        self.jobs_start = time.monotonic()

    def step(self, text: str) -> None:
        self.done += 1
        now = time.monotonic()
        per_job = (now - self.jobs_start) / self.done
        left = per_job * (self.total - self.done)
        log(f"[{self.done:3d}/{self.total} {_clock(now - self.start)} ~{_clock(left)} left] {text}")


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class PythonWorker:
    """benchmarks.loadgen --jobs in its own process: one JSON job line in, one JSON result line out."""

    def __init__(self, workdir: Path):
        self.stderr_path = Path(workdir) / "loadgen.log"
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.loadgen", "--jobs"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, start_new_session=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")  # EOF: the worker died

    def run(self, job: dict, timeout: float) -> dict:
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self._lines.get(timeout=timeout)
        except (BrokenPipeError, queue.Empty):
            line = ""
        if not line:
            tail = self.stderr_path.read_text()[-1500:]
            raise RuntimeError(f"the Python load generator stopped answering:\n{tail}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._stderr.close()


def run_kernels(mode: str, workdir: Path) -> dict:
    path = Path(workdir) / "kernels.json"
    command = [sys.executable, "-m", "benchmarks.kernels_bench", "--json", str(path)]
    if mode != "full":
        command.append(f"--{mode}")
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=600)
    if done.returncode != 0:
        return {"error": f"benchmarks.kernels_bench exited {done.returncode}"}
    return json.loads(path.read_text())


def run_wire(quick: bool, workdir: Path) -> tuple[dict, str | None]:
    """benchmarks/wire_bench.py's run(quick) in its own process (its JIT and imports stay out of ours), and its
    format_table(report) when it has one."""
    path, table = Path(workdir) / "wire.json", Path(workdir) / "wire.md"
    code = ("import json, sys; from benchmarks import wire_bench; r = wire_bench.run(quick=sys.argv[3] == '1'); "
            "json.dump(r, open(sys.argv[1], 'w')); f = getattr(wire_bench, 'format_table', None); "
            "f and open(sys.argv[2], 'w').write(f(r))")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path), str(table), "1" if quick else "0"],
                              cwd=ROOT, stdout=sys.stderr, timeout=900)
    except subprocess.TimeoutExpired:
        return {"error": "benchmarks/wire_bench.py did not finish in 15 minutes"}, None
    if done.returncode != 0:
        return {"error": f"benchmarks/wire_bench.py exited {done.returncode}"}, None
    return json.loads(path.read_text()), table.read_text() if table.exists() else None


def run_quality(mode: str, out: Path) -> tuple[dict, str | None]:
    """benchmarks/quality_bench.py in its own process: detections, misses and false alarms per kind of anomaly
    and option set (quality.json, quality.md, quality.png in `out`), and its table."""
    command = [sys.executable, "-m", "benchmarks.quality_bench", "--out", str(out)]
    if mode != "full":
        command.append(f"--{mode}")
    try:
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, timeout=600)
    except subprocess.TimeoutExpired:
        return {"error": "benchmarks/quality_bench.py did not finish in 10 minutes"}, None
    if done.returncode != 0:
        return {"error": f"benchmarks/quality_bench.py exited {done.returncode}"}, None
    return json.loads((out / "quality.json").read_text()), (out / "quality.md").read_text()


def best_of(runs: list[dict]) -> dict:
    """The run with the most metrics/s (what the server can do when the shared machine lets it)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"]}
    best = max(ok, key=lambda r: r["metrics_per_s"])
    return {k: v for k, v in best.items() if k != "raw"}


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the short run (about 75 s; the full one, about 7 minutes)")
    size.add_argument("--tiny", action="store_true", help="a few seconds, for the test: shapes, not figures")
    parser.add_argument("--scenarios", nargs="+", metavar="PATTERN",
                        help="run only the scenarios whose name matches (glob, e.g. 'stream-pipe-*'); "
                             "--list shows the names")
    parser.add_argument("--servers", nargs="+", choices=report.SERVERS, default=list(report.SERVERS))
    parser.add_argument("--out", type=Path,
                        help="output directory (default benchmarks/results, benchmarks/results/tiny for --tiny)")
    parser.add_argument("--go", choices=["auto", "on", "off"], default="auto",
                        help="the Go load generator: auto = when go/cmd/loadgen and go exist (not with --tiny)")
    parser.add_argument("--no-kernels", action="store_true", help="skip the kernel micro-benchmarks")
    parser.add_argument("--no-wire", action="store_true", help="skip benchmarks/wire_bench.py")
    parser.add_argument("--duration", type=float, help="seconds per measurement (overrides the mode's)")
    parser.add_argument("--repeats", type=int, help="measurements per figure, best kept (overrides the mode's)")
    parser.add_argument("--list", action="store_true", help="print the mode's scenarios and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    chosen, go_names = scenarios.matrix(mode, args.scenarios)
    if args.list:
        for s in chosen:
            print(f"{s.name:28s} {s.label()}  [{s.why}]")
        return 0
    timing = dict(scenarios.TIMING[mode])
    timing.update({k: v for k, v in (("duration", args.duration), ("repeats", args.repeats)) if v})
    out = args.out or (RESULTS / "tiny" if mode == "tiny" else RESULTS)
    out.mkdir(parents=True, exist_ok=True)

    started = dt.datetime.now(dt.timezone.utc)
    doc = {"schema": 1, "mode": mode,
           "command": "python -m benchmarks " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "started": started.isoformat(timespec="seconds"), "machine": report.machine(),
           "versions": report.versions(), "settings": timing,
           "scenarios": [{**s.params(), "label": s.label()} for s in chosen],
           "servers": {name: {"description": DESCRIPTIONS[name]} for name in args.servers},
           "results": [], "notes": [
               "Servers and load generators run on the same machine and compete for its cores; "
               "see cpu.server_cores / cpu.client_cores (CPU seconds per wall second) in each result."]}
    log(f"benchmarks ({mode}): {len(chosen)} scenarios x {len(args.servers)} servers x {timing['repeats']}, "
        f"{timing['duration']} s each; {doc['machine']['cpu_model']}, {doc['machine']['cores']} cores, "
        f"load average {doc['machine']['load_average_start'][0]:.2f}")

    go_reason = golang.unavailable()
    use_go = args.go == "on" or (args.go == "auto" and mode != "tiny")
    if use_go and go_reason:
        log(f"note: skipping the Go load generator: {go_reason}")
        doc["notes"].append(f"Go load generator skipped: {go_reason}.")
        use_go = False
    elif not use_go:
        doc["notes"].append("Go load generator not run (" + ("--go off" if args.go == "off" else "--tiny") + ").")
    go_chosen = [s for s in chosen if s.name in go_names or (args.go == "on" and not go_names)] if use_go else []

    per_job = timing["warmup"] + timing["duration"] + OVERHEAD_S
    # The Go client measures once per scenario (not best of N): it is the cross-check, and time is short.
    n_jobs = (len(chosen) * timing["repeats"] + len(go_chosen)) * len(args.servers)
    log(f"{n_jobs} measurements, about {_clock(n_jobs * per_job)} plus in-process benchmarks and startup")
    progress = Progress(n_jobs, per_job)
    runs: dict[tuple[str, str, str], list[dict]] = {}
    servers: dict[str, ServerProcess] = {}
    worker = None
    wire_md = quality_md = None
    errors = 0
    with tempfile.TemporaryDirectory(prefix="streamer-bench-") as workdir:
        workdir = Path(workdir)
        try:
            if not args.no_kernels:
                log("kernel micro-benchmarks (in-process) ...")
                doc["kernels"] = run_kernels(mode, workdir)
            wire_path = ROOT / "benchmarks" / "wire_bench.py"
            if wire_path.exists() and not args.no_wire:
                log("wire micro-benchmarks (benchmarks/wire_bench.py) ...")
                doc["wire"], wire_md = run_wire(mode != "full", workdir)
            elif not wire_path.exists():
                doc["notes"].append("benchmarks/wire_bench.py not present: no in-process wire figures.")
            log("detection quality (benchmarks/quality_bench.py) ...")
            doc["quality"], quality_md = run_quality(mode, out)

            for name in args.servers:
                log(f"starting {name} server ...")
                try:
                    servers[name] = ServerProcess(name)
                except RuntimeError as exc:
                    if name not in GO_PEERS:  # the only servers that need more than this Python (the Go toolchain)
                        raise
                    log(f"note: skipping the {name} peer: {exc}")
                    doc["notes"].append(f"{name} peer skipped: {str(exc).splitlines()[0]}")
                    progress.total -= n_jobs // len(args.servers)
                    continue
                doc["servers"][name].update(command=" ".join(servers[name].command), addr=servers[name].addr)
                log(f"  {name} ready on {servers[name].addr} (pid {servers[name].pid})")
            worker = PythonWorker(workdir)
            go = None
            if go_chosen:
                log("building go/cmd/loadgen ...")
                try:
                    go = golang.GoLoadGenerator(workdir)
                    doc["versions"]["go"] = go.version
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    log(f"note: skipping the Go load generator: {exc}")
                    doc["notes"].append(f"Go load generator skipped: {str(exc).splitlines()[0]}")
                    progress.total -= len(go_chosen) * len(args.servers)
                    go_chosen = []

            progress.begin_jobs()
            # Repetitions outermost and servers innermost: a burst of load from elsewhere on the machine
            # lands on all three servers of a scenario alike, not on one.
            for rep in range(timing["repeats"]):
                plan = [(s, "python") for s in chosen] + [(s, "go") for s in go_chosen if rep == 0]
                for scenario, loadgen in plan:
                    for name, server in servers.items():
                        if not server.alive():
                            result = {"error": f"{name} server exited: {server.log_tail(5)}"}
                        elif loadgen == "python":
                            job = {"addr": server.addr, "rpc": scenario.rpc, "load": scenario.load,
                                   "batch": scenario.batch, "series": scenario.series,
                                   "streams": scenario.streams, "window": scenario.window,
                                   "duration": timing["duration"], "warmup": timing["warmup"],
                                   "server_pid": server.pid}
                            result = worker.run(job, timeout=per_job + 300)
                        else:
                            result = go.run(server.addr, scenario, timing["duration"], timing["warmup"],
                                            server_pid=server.pid)
                        runs.setdefault((scenario.name, name, loadgen), []).append(result)
                        if "error" in result:
                            text = f"ERROR {result['error'][:200]}"
                        else:
                            text = f"{report._si(result['metrics_per_s'])} metrics/s"
                            if "latency_ms" in result:
                                text += f", p50 {result['latency_ms']['p50']:.3g} ms"
                        progress.step(f"{scenario.name} {name}/{loadgen}: {text}")
        except KeyboardInterrupt:
            log("interrupted: writing what was measured")
            doc["notes"].append("Interrupted before the end: some figures are missing.")
        finally:
            if worker:
                worker.close()
            for server in servers.values():
                server.stop()

    by_name = {s.name: s for s in chosen}
    for (scenario_name, server, loadgen), measured in runs.items():
        s = by_name[scenario_name]
        entry = {"scenario": {**s.params(), "label": s.label()}, "server": server, "loadgen": loadgen,
                 **best_of(measured), "runs": [{k: v for k, v in r.items() if k != "latency_quantiles_ms"}
                                               for r in measured]}
        errors += "error" in entry
        doc["results"].append(entry)
    report.add_ratios(doc["results"])
    finished = dt.datetime.now(dt.timezone.utc)
    doc["finished"] = finished.isoformat(timespec="seconds")
    doc["elapsed_s"] = (finished - started).total_seconds()
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    kernels_md = None
    if "results" in doc.get("kernels", {}):
        from benchmarks.kernels_bench import format_table
        kernels_md = format_table(doc["kernels"])

    text = json.dumps(doc, indent=1)
    (out / "latest.json").write_text(text)
    (out / f"bench-{started:%Y%m%d-%H%M%S}-{mode}.json").write_text(text)
    md = report.markdown(doc, kernels_md, wire_md)
    (out / "latest.md").write_text(md)
    try:
        report.plot(doc, out / "latest.png")
    except ImportError as exc:
        log(f"no plot: {exc} (pip install -e '.[bench]')")
    print(md)
    if quality_md:
        print(quality_md)
    log(f"wrote {out / 'latest.json'}, {out / 'latest.md'}, {out / 'latest.png'} in {_clock(doc['elapsed_s'])}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
