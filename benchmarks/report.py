"""What a run writes: machine and versions, ratios, the text/markdown table, the JSON and the PNG plot."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

from benchmarks.servers import ROOT

SERVERS = ("ceiling", "baseline", "river", "grpc-go", "tuned-go", "streamer")
COLORS = {"ceiling": "tab:gray", "baseline": "tab:red", "river": "tab:green", "grpc-go": "tab:cyan",
          "tuned-go": "tab:purple",
          "streamer": "tab:blue"}
# the ratios each result gets: to the transport's ceiling, to the original approach, to the Go engineer's peer
REFERENCES = ("ceiling", "baseline", "grpc-go")
# and per server CPU-second (metrics/s over the server's CPU seconds per second): fair when a server spreads
# over both cores or is starved of one; against the tuned Go peer (issue 23)
CPU_REFERENCES = ("tuned-go",)


def machine() -> dict:
    """CPU model and core count from /proc/cpuinfo and the OS, memory, kernel, and the load right now."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu_model": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "load_average_start": list(os.getloadavg())}
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    try:
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name, dist in (("numpy", "numpy"), ("numba", "numba"), ("grpcio", "grpcio"), ("protobuf", "protobuf"),
                       ("matplotlib", "matplotlib"), ("streamer", "streamer")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def add_ratios(results: list[dict]) -> None:
    """ratio_to_<reference> of metrics/s for each of REFERENCES that ran, per scenario and load generator."""
    rate = {(r["scenario"]["name"], r["loadgen"], r["server"]): r["metrics_per_s"]
            for r in results if "metrics_per_s" in r}
    for r in results:
        cores = r.get("cpu", {}).get("server_cores")
        if "metrics_per_s" in r and cores:
            r["metrics_per_server_cpu_s"] = r["metrics_per_s"] / cores
    per_cpu = {(r["scenario"]["name"], r["loadgen"], r["server"]): r["metrics_per_server_cpu_s"]
               for r in results if "metrics_per_server_cpu_s" in r}
    for r in results:
        if "metrics_per_s" not in r:
            continue
        for other in REFERENCES:
            base = rate.get((r["scenario"]["name"], r["loadgen"], other))
            if base:
                r[f"ratio_to_{other}"] = r["metrics_per_s"] / base
        for other in CPU_REFERENCES:
            base = per_cpu.get((r["scenario"]["name"], r["loadgen"], other))
            if base and "metrics_per_server_cpu_s" in r:
                r[f"cpu_ratio_to_{other}"] = r["metrics_per_server_cpu_s"] / base


def _si(x: float) -> str:
    for scale, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if x >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _ms(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _cores(cpu: dict) -> str:
    if "server_cores" not in cpu:
        return "-"
    if "client_cores" not in cpu:  # the Go load generator reports the server's CPU only
        return f"{cpu['server_cores']:.2f} / -"
    return f"{cpu['server_cores']:.2f} / {cpu['client_cores']:.2f}"


def _per_cpu(x) -> str:
    return "-" if x is None else _si(x)


def table(results: list[dict]) -> str:
    """Markdown table, one row per scenario, server and load generator, in run order."""
    lines = ["| scenario | server | client | metrics/s | batches/s | p50 ms | p99 ms | vs ceiling | vs baseline "
             "| vs grpc-go | metrics per server CPU-s | vs tuned Go, per CPU-s | CPU server/client |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {name: i for i, name in enumerate(SERVERS)}
    seen = []
    for r in results:
        key = (r["scenario"]["name"], r["loadgen"])
        if key not in seen:
            seen.append(key)
    for name, loadgen in seen:
        rows = sorted((r for r in results if (r["scenario"]["name"], r["loadgen"]) == (name, loadgen)),
                      key=lambda r: order.get(r["server"], 9))
        for n, r in enumerate(rows):
            label = r["scenario"]["label"] if n == 0 else ""
            if "error" in r:
                lines.append(f"| {label} | {r['server']} | {loadgen} | error: {r['error'][:80]} | | | | | | | | | |")
                continue
            lat = r.get("latency_ms", {})
            lines.append(f"| {label} | {r['server']} | {loadgen} | {_si(r['metrics_per_s'])} | "
                         f"{_si(r['batches_per_s'])} | {_ms(lat.get('p50'))} | {_ms(lat.get('p99'))} | "
                         f"{_ratio(r.get('ratio_to_ceiling'))} | {_ratio(r.get('ratio_to_baseline'))} | "
                         f"{_ratio(r.get('ratio_to_grpc-go'))} | {_per_cpu(r.get('metrics_per_server_cpu_s'))} | "
                         f"{_ratio(r.get('cpu_ratio_to_tuned-go'))} | {_cores(r.get('cpu', {}))} |")
    return "\n".join(lines)


def flat_table(title: str, obj) -> str:
    """Every numeric leaf of a nested dict as `| figure | value |` (for results whose shape is not ours)."""
    rows = []

    def walk(o, path):
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")
        elif isinstance(o, (int, float)) and not isinstance(o, bool):
            rows.append(f"| {path} | {o:.4g} |")
    walk(obj, "")
    return "\n".join([f"| {title} | value |", "|---|---:|", *rows])


def markdown(report: dict, kernels_table: str | None, wire_table: str | None = None) -> str:
    m, v = report["machine"], report["versions"]
    head = [f"Run `{report['command']}` ({report['mode']}), {report['started']}, "
            f"{report['elapsed_s']:.0f} s.",
            f"Machine: {m['cpu_model']}, {m['cores']} cores; load average at start "
            f"{m['load_average_start'][0]:.2f}. Server and load generator share these cores.",
            "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
            f"Each figure: {report['settings']['duration']} s measured after {report['settings']['warmup']} s of "
            f"warm-up, best of {report['settings']['repeats']}. p50/p99: lock-step rows only."]
    parts = ["\n".join(head), "### End to end\n\n" + table(report["results"])]
    if kernels_table:
        parts.append("### Kernels (in-process, updates/s)\n\n" + kernels_table)
    if report.get("wire"):
        wire = wire_table or flat_table("figure", report["wire"])
        parts.append("### Wire path (in-process, benchmarks/wire_bench.py)\n\n" + wire)
    if report.get("notes"):
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in report["notes"]))
    return "\n\n".join(parts) + "\n"


def plot(report: dict, path) -> None:
    """2x2 PNG: throughput vs batch size; latency vs batch size; latency distribution; kernel updates/s."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in report["results"] if "metrics_per_s" in r and r["loadgen"] == "python"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    (a_thr, a_lat), (a_cdf, a_ker) = axes

    def sweep(rpc, load):
        pts = {}
        for r in results:
            s = r["scenario"]
            if (s["rpc"], s["load"], s["series"], s["streams"]) == (rpc, load, 4, 1):
                pts.setdefault(r["server"], []).append((s["batch"], r))
        return {k: sorted(v, key=lambda p: p[0]) for k, v in pts.items()}

    for (rpc, load, style) in (("stream", "pipelined", "-o"), ("detect", "lockstep", "--s"),
                               ("stream", "lockstep", ":^")):
        for server, pts in sweep(rpc, load).items():
            a_thr.plot([b for b, _ in pts], [r["metrics_per_s"] for _, r in pts], style,
                       color=COLORS.get(server), label=f"{server}, {rpc} {load}")
    a_thr.set(xscale="log", yscale="log", xlabel="metrics per request (batch size)", ylabel="metrics/s",
              title="Throughput vs batch size (4 series, 1 stream)")
    a_thr.grid(True, which="both", alpha=0.3)
    a_thr.legend(fontsize=7)

    for (rpc, style) in (("stream", "-o"), ("detect", "--s")):
        for server, pts in sweep(rpc, "lockstep").items():
            batches = [b for b, _ in pts]
            p50 = [r["latency_ms"]["p50"] for _, r in pts]
            p99 = [r["latency_ms"]["p99"] for _, r in pts]
            a_lat.errorbar(batches, p50, yerr=[[0.0] * len(p50), [b - a for a, b in zip(p50, p99)]], fmt=style,
                           color=COLORS.get(server), capsize=3, label=f"{server}, {rpc}")
    a_lat.set(xscale="log", yscale="log", xlabel="metrics per request", ylabel="latency (ms)",
              title="Lock-step latency: p50 (marker), bar up to p99")
    a_lat.grid(True, which="both", alpha=0.3)
    a_lat.legend(fontsize=7)

    # The distribution at the most common shape measured lock-step (batch 1000 if there is one).
    lock = [r for r in results if "latency_quantiles_ms" in r]
    if lock:
        batch = min({r["scenario"]["batch"] for r in lock}, key=lambda b: abs(b - 1000))
        quantiles = list(range(0, 101, 5))
        for r in lock:
            if r["scenario"]["batch"] == batch:
                style = "-" if r["scenario"]["rpc"] == "stream" else "--"
                a_cdf.plot(r["latency_quantiles_ms"], quantiles, style, color=COLORS.get(r["server"]),
                           label=f"{r['server']}, {r['scenario']['rpc']}")
        a_cdf.set(xscale="log", xlabel="latency (ms)", ylabel="percentile",
                  title=f"Latency distribution, lock-step, {batch:,} metrics per request")
        a_cdf.grid(True, which="both", alpha=0.3)
        a_cdf.legend(fontsize=7)

    kern = (report.get("kernels") or {}).get("results", [])
    for method in dict.fromkeys(k["method"] for k in kern):
        pts = sorted((k["series"], k["updates_per_s"]) for k in kern if k["method"] == method)
        numba = method.endswith("_update") or method == "detect_batch"  # the others are the references
        a_ker.plot([p[0] for p in pts], [p[1] for p in pts], "-o" if numba else "--s", label=method)
    a_ker.set(xscale="log", yscale="log", xlabel="series", ylabel="updates/s",
              title="Kernels, in-process (after JIT warm-up)")
    a_ker.grid(True, which="both", alpha=0.3)
    if kern:
        a_ker.legend(fontsize=7)

    m = report["machine"]
    fig.suptitle(f"streamer benchmarks ({report['mode']}, {report['started']}): {m['cpu_model']}, "
                 f"{m['cores']} cores shared by server and client", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
