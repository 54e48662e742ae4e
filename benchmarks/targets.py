"""`python -m benchmarks.targets [--rounds 5] [--duration 2]`: issue 23's targets, per server CPU-second.

Streamer against the tuned grpc-go peer (go/cmd/tunedpeer) on the same shapes, driven by the Go load
generator (go/cmd/loadgen, `-timestamps`, 4 series), in interleaved rounds (each round runs every shape on
every server, the order of the servers alternating from round to round), each figure metrics per server
CPU-second: the metrics answered in the measured window over the server process's utime + stime in that
window (`-server-pid`, /proc/PID/stat), so a server spreading over both cores or starved of one is still
compared fairly. Ratios are taken within a round and reported as median (min-max) over the rounds.

Shapes: DetectStream pipelined at 1 000 and 10 000 metrics a message, unary Detect lock-step at 1 000 and
100 000, and one producer adding single metrics as fast as it can through client.Batcher (defaults: 10 000
metrics, 5 ms). On both DetectStream shapes the ceiling server (grpc.aio answering b"" unparsed) runs too: its
CPU per message is what grpc's Python transport costs, the share of streamer's that no pipeline can remove.
Writes results/targets.{json,md} and prints the table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import report
from benchmarks.golang import GoLoadGenerator
from benchmarks.servers import ROOT, ServerProcess

RESULTS = ROOT / "benchmarks" / "results"

# name, loadgen flags, target ratio (streamer / tuned per server CPU-second), servers
SHAPES = [
    ("stream-b1000", ["-mode", "stream", "-pipelined", "-window", "32", "-batch", "1000"], None,
     ("streamer", "tuned-go", "ceiling")),
    ("stream-b10000", ["-mode", "stream", "-pipelined", "-window", "16", "-batch", "10000"], 1.0,
     ("streamer", "tuned-go", "ceiling")),
    ("detect-b1000", ["-mode", "detect", "-batch", "1000"], None, ("streamer", "tuned-go")),
    ("detect-b100000", ["-mode", "detect", "-batch", "100000"], 1.0, ("streamer", "tuned-go")),
    ("adaptive-add1", ["-adaptive", "-add", "1"], 0.8, ("streamer", "tuned-go")),
]
LABELS = {"stream-b1000": "DetectStream, 1 000 a message", "stream-b10000": "DetectStream, 10 000 a message",
          "detect-b1000": "Detect, 1 000 a message", "detect-b100000": "Detect, 100 000 a message",
          "adaptive-add1": "one producer adding single metrics (Batcher, 10 000 / 5 ms)"}


def measure(go: GoLoadGenerator, server: ServerProcess, flags: list[str], duration: float, warmup: float) -> dict:
    command = [str(go.binary), "-addr", server.addr, "-series", "4", "-streams", "1", "-timestamps", "-json",
               "-duration", f"{duration:g}s", "-warmup", f"{warmup:g}s", "-server-pid", str(server.pid), *flags]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=warmup + duration + 120)
        raw = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return {"error": f"loadgen: {exc}"}
    if raw.get("error"):
        return {"error": raw["error"]}
    cpu = raw.get("server_cpu_s") or 0.0
    out = {"metrics": raw["metrics"], "metrics_per_s": raw["metrics_per_s"], "server_cpu_s": cpu,
           "server_cores": cpu / raw["duration_s"]}
    messages = raw.get("batches", raw.get("messages"))
    if cpu > 0 and raw["metrics"]:
        out["per_cpu_s"] = raw["metrics"] / cpu
        out["cpu_ns_per_metric"] = cpu / raw["metrics"] * 1e9
    if messages:
        out["messages"] = messages
        out["cpu_us_per_message"] = cpu / messages * 1e6 if cpu else None
    if "mean_batch" in raw:
        out["mean_batch"], out["p50_ms"], out["p99_ms"] = raw["mean_batch"], raw["p50_ms"], raw["p99_ms"]
    return out


def rounds(go: GoLoadGenerator, servers: dict[str, ServerProcess], shapes: list[tuple[str, list[str], tuple]],
           n: int, duration: float, warmup: float) -> dict[str, dict[str, list[dict]]]:
    """n interleaved rounds: each runs every (shape, loadgen flags, server names) on each of its servers, their
    order alternating from round to round; shape -> server name -> one measure() a round."""
    runs: dict[str, dict[str, list[dict]]] = {}
    for rnd in range(n):
        for shape, flags, names in shapes:
            for name in (list(names) if rnd % 2 == 0 else list(reversed(names))):
                r = measure(go, servers[name], flags, duration, warmup)
                runs.setdefault(shape, {}).setdefault(name, []).append(r)
                what = r.get("error") or f"{r.get('per_cpu_s', 0) / 1e6:.3g} M/CPU-s, " \
                                         f"{r['metrics_per_s'] / 1e6:.3g} M/s, {r['server_cores']:.2f} cores"
                print(f"round {rnd + 1}/{n} {shape} {name}: {what}", file=sys.stderr, flush=True)
    return runs


def _mid(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)} if xs else {}


def summarize(runs: dict) -> list[dict]:
    rows = []
    for name, _, target, servers in SHAPES:
        by = runs.get(name, {})
        row = {"shape": name, "label": LABELS[name], "target": target}
        for server in servers:
            ok = [r for r in by.get(server, []) if "per_cpu_s" in r]
            row[server] = {"per_cpu_s": _mid([r["per_cpu_s"] for r in ok]),
                           "metrics_per_s": _mid([r["metrics_per_s"] for r in ok]),
                           "cpu_us_per_message": _mid([r["cpu_us_per_message"] for r in ok
                                                       if r.get("cpu_us_per_message")]),
                           "errors": [r["error"] for r in by.get(server, []) if "error" in r]}
            if name.startswith("adaptive"):
                row[server]["mean_batch"] = _mid([r["mean_batch"] for r in ok])
                row[server]["p50_ms"] = _mid([r["p50_ms"] for r in ok])
        pairs = zip(by.get("streamer", []), by.get("tuned-go", []))
        ratios = [s["per_cpu_s"] / t["per_cpu_s"] for s, t in pairs if "per_cpu_s" in s and "per_cpu_s" in t]
        row["ratio"] = _mid(ratios)
        if target is not None and ratios:
            row["met"] = statistics.median(ratios) >= target
        if "ceiling" in servers:
            pairs = zip(by.get("ceiling", []), by.get("streamer", []))
            share = [c["cpu_us_per_message"] / s["cpu_us_per_message"] for c, s in pairs
                     if c.get("cpu_us_per_message") and s.get("cpu_us_per_message")]
            row["transport_share"] = _mid(share)
        rows.append(row)
    return rows


def _fmt(m: dict, scale: float = 1e6, digits: str = ".3g") -> str:
    if not m:
        return "-"
    return f"{m['median'] / scale:{digits}} ({m['min'] / scale:{digits}}-{m['max'] / scale:{digits}})"


def markdown(doc: dict) -> str:
    lines = [f"Run `{doc['command']}`, {doc['started']}, {doc['rounds']} interleaved rounds of {doc['duration']} s "
             f"(after {doc['warmup']} s of warm-up); load average {doc['load_average_start'][0]:.2f} at the start, "
             f"{doc['load_average_end'][0]:.2f} at the end; {doc['cpu_model']}, {doc['cores']} cores shared by the "
             "servers and the Go load generator.", "",
             "| shape | streamer, M metrics per server CPU-s | tuned Go | streamer / tuned, per CPU-s | target | met |",
             "|---|---:|---:|---:|---:|:-:|"]
    for row in doc["rows"]:
        target = "-" if row["target"] is None else f">= {row['target']:.1f}x"
        met = "-" if "met" not in row else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['label']} | {_fmt(row['streamer']['per_cpu_s'])} | {_fmt(row['tuned-go']['per_cpu_s'])} "
                     f"| {_fmt(row['ratio'], 1, '.2f')} | {target} | {met} |")
    lines += ["", "Server CPU per message, µs (median, min-max):", "",
              "| shape | streamer | tuned Go | ceiling (grpc.aio, b\"\" unparsed) | transport's share of streamer's |",
              "|---|---:|---:|---:|---:|"]
    for row in doc["rows"]:
        ceiling = row.get("ceiling", {}).get("cpu_us_per_message", {})
        share = row.get("transport_share")
        lines.append(f"| {row['label']} | {_fmt(row['streamer']['cpu_us_per_message'], 1)} | "
                     f"{_fmt(row['tuned-go']['cpu_us_per_message'], 1)} | {_fmt(ceiling, 1)} | "
                     f"{_fmt(share, 1, '.2f') if share else '-'} |")
    for row in doc["rows"]:
        if row["shape"].startswith("adaptive"):
            s, t = row["streamer"], row["tuned-go"]
            lines += ["", f"Adaptive producer: mean message {_fmt(s.get('mean_batch', {}), 1, '.0f')} metrics against "
                      f"streamer, {_fmt(t.get('mean_batch', {}), 1, '.0f')} against tuned Go; p50 from add to answer "
                      f"{_fmt(s.get('p50_ms', {}), 1)} / {_fmt(t.get('p50_ms', {}), 1)} ms. Metrics/s (the client's "
                      f"limit, not the server's): {_fmt(s['metrics_per_s'])} / {_fmt(t['metrics_per_s'])} M."]
    errors = [f"{row['shape']} {server}: {e}" for row in doc["rows"] for server in ("streamer", "tuned-go", "ceiling")
              if server in row for e in row[server]["errors"]]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {e}" for e in errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.targets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--shapes", nargs="+", choices=[s[0] for s in SHAPES], help="a subset of the shapes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    shapes = [s for s in SHAPES if not args.shapes or s[0] in args.shapes]
    machine = report.machine()
    doc = {"command": "python -m benchmarks.targets " + " ".join(argv if argv is not None else sys.argv[1:]),
           "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "rounds": args.rounds,
           "duration": args.duration, "warmup": args.warmup, "load_average_start": machine["load_average_start"],
           "cpu_model": machine["cpu_model"], "cores": machine["cores"], "versions": report.versions()}
    runs: dict[str, dict[str, list[dict]]] = {}
    servers: dict[str, ServerProcess] = {}
    with tempfile.TemporaryDirectory(prefix="streamer-targets-") as workdir:
        go = GoLoadGenerator(Path(workdir))
        try:
            for name in ("streamer", "tuned-go", "ceiling"):
                if any(name in s[3] for s in shapes):
                    servers[name] = ServerProcess(name)
            runs = rounds(go, servers, [(shape, flags, names) for shape, flags, _, names in shapes], args.rounds,
                          args.duration, args.warmup)
        finally:
            for server in servers.values():
                server.stop()
    doc["load_average_end"] = list(os.getloadavg())
    doc["runs"] = runs
    doc["rows"] = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "targets.json").write_text(json.dumps(doc, indent=1))
    md = markdown(doc)
    (args.out / "targets.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
