"""What a soak run reports: the summary figures (RSS at each phase, the slope that tells a leak from a
high-water mark), the text printed at the end and the PNG plot of RSS over time with the phases marked."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _at(samples: list[dict], t: float) -> dict | None:
    """The first sample at or after t."""
    return next((s for s in samples if s["t"] >= t), None)


def _slope(samples: list[dict], key: str = "rss_mib") -> float | None:
    """Least-squares slope of `key` in MiB per minute."""
    if len(samples) < 3:
        return None
    t = np.array([s["t"] for s in samples]) / 60
    return float(np.polyfit(t - t[0], np.array([s[key] for s in samples]), 1)[0])


def summarize(samples: list[dict], phases: dict, probes: list[dict]) -> dict:
    load = [s for s in samples if s["phase"] == "load"]
    idle = [s for s in samples if s["phase"] == "idle"]
    starts = [s for s in samples if s["phase"] == "start"]
    if not load:
        return {"error": "no samples during the load"}
    t_load, t_idle = phases["load"], phases.get("idle", load[-1]["t"])
    half = [s for s in load if s["t"] >= t_load + (t_idle - t_load) / 2]
    one = _at(load, t_load + 60)
    out = {
        "rss_start_mib": (starts or load)[-1]["rss_mib"],
        "rss_after_1min_mib": one["rss_mib"] if one else None,
        "rss_load_end_mib": load[-1]["rss_mib"],
        "rss_idle_end_mib": idle[-1]["rss_mib"] if idle else None,
        "rss_peak_mib": max(s["rss_mib"] for s in samples),
        "load_minutes": round((t_idle - t_load) / 60, 2),
        "idle_minutes": round((idle[-1]["t"] - t_idle) / 60, 2) if idle else 0.0,
        "slope_second_half_mib_per_min": _slope(half),
        "growth_second_half_mib": half[-1]["rss_mib"] - half[0]["rss_mib"] if half else None,
        "anon_slope_second_half_mib_per_min": _slope(half, "anon_mib"),
        "slope_idle_mib_per_min": _slope(idle),
        "threads_start": (starts or load)[-1]["threads"],
        "threads_max": max(s["threads"] for s in samples),
        "threads_end": samples[-1]["threads"],
        "server_cpu_s_load": load[-1]["cpu_s"] - load[0]["cpu_s"],
    }
    trims = [p for p in probes if p["action"] == "malloc_trim"]
    if trims:
        out["rss_before_trim_mib"] = trims[0]["rss_before_mib"]
        out["rss_after_trim_mib"] = trims[0]["rss_after_mib"]
    stats = [p for p in probes if p["action"] == "heap_stats" and "error" not in p["result"]]
    trimmed_at = trims[0]["t"] if trims else float("inf")
    heap = {}
    for name, chosen in (("start", [p for p in stats if p["phase"] == "start"][:1]),
                         ("idle", [p for p in stats if p["phase"] == "idle" and p["t"] < trimmed_at][:1]),
                         ("after_trim", [p for p in stats if p["t"] > trimmed_at][-1:])):
        if chosen:
            heap[name] = chosen[0]["result"]
    if heap:
        out["heap"] = heap
    return out


def format_summary(doc: dict) -> str:
    s, calls = doc["summary"], doc["calls"]
    if "error" in s:
        return f"soak: {s['error']}"

    def mib(x):
        return "-" if x is None else f"{x:.1f}"

    def rate(x):
        return "-" if x is None else f"{x:+.2f}"

    lines = [
        f"soak: {s['load_minutes']:.1f} min of load + {s['idle_minutes']:.1f} min idle, "
        f"seed {doc['settings']['seed']}; {calls['total']} calls, {calls['unexpected']} with an unexpected status; "
        f"server exit status {doc['server']['exit_status']}",
        f"RSS MiB: start {mib(s['rss_start_mib'])} | after 1 min {mib(s['rss_after_1min_mib'])} | end of load "
        f"{mib(s['rss_load_end_mib'])} | end of idle {mib(s['rss_idle_end_mib'])} | peak {mib(s['rss_peak_mib'])}",
        f"slope over the second half of the load: {rate(s['slope_second_half_mib_per_min'])} MiB/min "
        f"({rate(s['growth_second_half_mib'])} MiB); idle tail: {rate(s['slope_idle_mib_per_min'])} MiB/min",
        f"threads: start {s['threads_start']}, max {s['threads_max']}, end {s['threads_end']}",
    ]
    if "rss_after_trim_mib" in s:
        lines.append(f"malloc_trim(0) in the idle tail: RSS {mib(s['rss_before_trim_mib'])} -> "
                     f"{mib(s['rss_after_trim_mib'])} MiB")
    for name, h in s.get("heap", {}).items():
        line = (f"heap {name.replace('_', ' ')}: malloc {mib(h['total_in_use_mib'])} MiB in use of "
                f"{mib(h['total_system_mib'])} held, {h['arenas']} arenas")
        if "pymalloc_arenas" in h:
            line += (f"; pymalloc {mib(h.get('pymalloc_in_use_mib'))} MiB in use, {h['pymalloc_arenas']} arenas "
                     f"of 1 MiB (at most {h.get('pymalloc_arenas_highwater')})")
        lines.append(line)
    for case, c in sorted(calls["cases"].items()):
        if c["unexpected"]:
            lines.append(f"  {case}: {c['unexpected']} of {c['calls']} not {c['expected']}: {c['examples'][0]}")
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, phases, s = doc["samples"], doc["phases"], doc["summary"]
    t = np.array([x["t"] for x in samples]) / 60
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(t, [x["rss_mib"] for x in samples], color="tab:blue", label="RSS (VmRSS)")
    ax.plot(t, [x["anon_mib"] for x in samples], color="tab:blue", alpha=0.4, lw=1, label="anonymous (RssAnon)")
    if doc["maps"]:
        tm = np.array([m["t"] for m in doc["maps"]]) / 60
        for kind, color in (("thread_arenas", "tab:orange"), ("main_heap", "tab:green"),
                            ("other_anon", "tab:purple"), ("file", "tab:gray")):
            ax.plot(tm, [m[kind] for m in doc["maps"]], color=color, lw=1, ls="--", label=f"smaps: {kind}")
    edges = [(name, phases[name] / 60) for name in ("start", "load", "idle") if name in phases]
    end = t[-1] if len(t) else 0
    shades = {"start": "0.9", "load": "tab:blue", "idle": "tab:green"}
    for i, (name, x0) in enumerate(edges):
        x1 = edges[i + 1][1] if i + 1 < len(edges) else end
        for a in (ax, ax2):
            a.axvspan(x0, x1, color=shades[name], alpha=0.07)
        ax.text((x0 + x1) / 2, 0.02, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=9)
    half = [x for x in samples if x["phase"] == "load" and x["t"] >= (phases["load"] + phases["idle"]) / 2] \
        if "idle" in phases else []
    if half and s.get("slope_second_half_mib_per_min") is not None:
        th = np.array([x["t"] for x in half]) / 60
        fit = np.polyfit(th, [x["rss_mib"] for x in half], 1)
        ax.plot(th, np.polyval(fit, th), color="tab:red", lw=2,
                label=f"fit over the second half: {fit[0]:+.2f} MiB/min")
    stats = [p for p in doc["probes"] if p["action"] == "heap_stats" and "error" not in p["result"]]
    if stats:  # the allocators' own figures, where --gdb-probe asked them
        tp = [p["t_done"] / 60 for p in stats]
        ax.plot(tp, [p["result"]["total_system_mib"] for p in stats], "s-", color="tab:brown", ms=4, lw=1,
                label="malloc: held (malloc_stats)")
        ax.plot(tp, [p["result"]["total_in_use_mib"] for p in stats], "o-", color="tab:brown", ms=4, lw=1,
                mfc="white", label="malloc: in use")
        if all("pymalloc_arenas" in p["result"] for p in stats):
            ax.plot(tp, [p["result"]["pymalloc_arenas"] for p in stats], "s-", color="tab:pink", ms=4, lw=1,
                    label="pymalloc: arenas (MiB)")
            ax.plot(tp, [p["result"]["pymalloc_in_use_mib"] for p in stats], "o-", color="tab:pink", ms=4,
                    lw=1, mfc="white", label="pymalloc: in use")
    for p in doc["probes"]:
        if p["action"] == "malloc_trim":
            ax.axvline(p["t_done"] / 60, color="tab:red", ls=":", lw=1)
            ax.annotate(f"malloc_trim(0): {p['rss_before_mib']:.0f} -> {p['rss_after_mib']:.0f} MiB",
                        (p["t_done"] / 60, p["rss_after_mib"]), xytext=(-5, -15), textcoords="offset points",
                        fontsize=8, color="tab:red", ha="right")
    ax.set_ylabel("MiB")
    ax.set_ylim(0, 1.4 * max((x["rss_mib"] for x in samples), default=1))  # room for the legend
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    ax.set_title(f"streamer soak: RSS {s.get('rss_start_mib', 0):.0f} MiB at start, "
                 f"{s.get('rss_load_end_mib', 0):.0f} at the end of the load, "
                 f"{s.get('rss_idle_end_mib') or 0:.0f} at the end of the idle tail", fontsize=10)
    ax2.plot(t, [x["threads"] for x in samples], color="black", lw=1, label="server threads")
    # calls/s between samples at least half a second apart (a phase mark takes two samples at once)
    keep = [0]
    for i in range(1, len(samples)):
        if samples[i]["t"] - samples[keep[-1]]["t"] >= 0.5:
            keep.append(i)
    if len(keep) > 1:
        tk = np.array([samples[i]["t"] for i in keep])
        calls = np.array([samples[i]["calls"] for i in keep], dtype=float)
        ax3 = ax2.twinx()
        ax3.plot(tk[1:] / 60, np.diff(calls) / np.diff(tk), color="tab:olive", lw=0.7)
        ax3.set_ylabel("calls/s", color="tab:olive")
    ax2.set_ylabel("threads")
    ax2.set_xlabel("minutes since the server was ready")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
