"""Detection quality on labelled synthetic series: detections, misses and false alarms per kind of anomaly for
a few DetectStream option sets (issue 15's evidence), and a PNG of one series of each kind with its flags.

`python -m benchmarks.quality_bench [--quick|--tiny] [--out DIR]` (run by `make bench-quick` and `make bench`):
prints a markdown table, writes quality.json, quality.md and quality.png to DIR (default benchmarks/results).
Seeded: the same run gives the same table. The series go through the server's own option resolution
(detector.resolve, with the server's defaults) and rules.stream_update, the code the fused pass runs; the
tests show that equals answers through a real server.

Scoring: each anomaly has a window (a spike: its value; a level shift: 100 values; a variance change: 200; a
drift: its 800-value ramp and 200 after). An anomaly is detected when a flag falls in its window, missed
otherwise; a flag outside every window is a false alarm. A flat start (constant values, then noise from value
400 on) has no anomaly: the first 20 noisy values are left out of the count, every later flag is false.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamer import kernels, rules  # noqa: E402
from streamer.detector import SCORE_LIKELIHOOD, Defaults, resolve  # noqa: E402
from streamer.state import MODE_EXPONENTIAL, SeriesState  # noqa: E402
from streamer.wire import Options  # noqa: E402

KINDS = ("spike", "spiky noise", "level shift", "variance change", "drift", "flat start")
SIZES = {"full": (40, 4000), "quick": (20, 4000), "tiny": (2, 1500)}  # series per kind, values per series

# name -> DetectOptions as a client sends them (unset fields: the server's defaults)
OPTION_SETS = {
    "defaults (k 2, cumulative)": Options(),
    "k 3, exponential 0.01": Options(threshold=3.0, mode=MODE_EXPONENTIAL, alpha=0.01),
    "k 3, exp 0.01, cooldown 1": Options(threshold=3.0, mode=MODE_EXPONENTIAL, alpha=0.01, cooldown=1),
    "k 3, exp 0.01, exclude, cooldown 1": Options(threshold=3.0, mode=MODE_EXPONENTIAL, alpha=0.01,
                                                  exclude_outliers=True, cooldown=1),
    "k 3, exp 0.01, exclude, no limit": Options(threshold=3.0, mode=MODE_EXPONENTIAL, alpha=0.01,
                                                exclude_outliers=True, exclude_limit=0),
    "k 5, exp 0.01, cooldown 1": Options(threshold=5.0, mode=MODE_EXPONENTIAL, alpha=0.01, cooldown=1),
    "k 5, exp 0.01, exclude, cooldown 1": Options(threshold=5.0, mode=MODE_EXPONENTIAL, alpha=0.01,
                                                  exclude_outliers=True, cooldown=1),
    "likelihood, cooldown 1": Options(score=SCORE_LIKELIHOOD, cooldown=1),
    "likelihood, exp 0.01, cooldown 1": Options(score=SCORE_LIKELIHOOD, mode=MODE_EXPONENTIAL, alpha=0.01,
                                                cooldown=1),
}
PLOTTED = ("defaults (k 2, cumulative)", "k 3, exp 0.01, cooldown 1", "k 5, exp 0.01, cooldown 1",
           "likelihood, cooldown 1")


def make_series(kind: str, n: int, rng: np.random.Generator):
    """(values, anomaly windows [(start, end)], left-out intervals) of one labelled series."""
    base = rng.uniform(-100, 100)
    scale = rng.uniform(0.5, 5)
    noise = rng.normal(0, 1, n)
    windows, ignored = [], []
    lo, hi = max(n // 4, 500), n - 300
    if kind == "spike":
        for t in rng.choice(np.arange(lo, hi), 4, replace=False):
            noise[t] += rng.choice([-1, 1]) * rng.uniform(6, 10)
            windows.append((int(t), int(t) + 1))
    elif kind == "spiky noise":  # heavy tails (Student's t, 3 degrees of freedom) and spikes far above them
        noise = rng.standard_t(3, n) / np.sqrt(3.0)
        for t in rng.choice(np.arange(lo, hi), 4, replace=False):
            noise[t] += rng.choice([-1, 1]) * rng.uniform(15, 25)
            windows.append((int(t), int(t) + 1))
    elif kind == "level shift":
        t = int(rng.integers(lo, hi - 200))
        noise[t:] += rng.choice([-1, 1]) * rng.uniform(4, 8)
        windows.append((t, t + 100))
    elif kind == "variance change":
        t = int(rng.integers(lo, hi - 200))
        noise[t:] *= rng.uniform(3, 5)
        windows.append((t, t + 200))
    elif kind == "drift":
        t = int(rng.integers(lo, max(lo + 1, n - 1200)))
        ramp = np.clip((np.arange(n) - t) / 800.0, 0, 1) * rng.choice([-1, 1]) * 8
        noise += ramp
        windows.append((t, min(n, t + 1000)))
    elif kind == "flat start":
        noise[:400] = 0.0
        ignored.append((400, 420))
    return base + scale * noise, windows, ignored


DEFAULTS = Defaults(episodes=True)  # the server's defaults, episodes kept (as with an alert sink): resolve_after 10


def judge(values: np.ndarray, options: Options) -> tuple[np.ndarray, np.ndarray]:
    """The flagged positions of one series streamed with `options` under the server's default settings, and
    the positions where episodes opened (what an alert sink would have been sent)."""
    params = resolve(options, DEFAULTS, "quality")
    state = SeriesState(params.mode, 1, capacity=1)
    params.use(state)
    r = params.rules()
    n = len(values)
    idx, mean, std, z, tail = np.empty(n, np.int32), np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    ev, ev_n = np.empty((n, 4), np.int64), np.zeros(1, np.int64)
    k = rules.stream_update(np.zeros(n, np.int64), values, state.count, state.mean, state.spread,
                            params.mode == MODE_EXPONENTIAL, params.alpha, params.threshold, params.warmup,
                            params.exclude_outliers, r.exclude_limit, r.cooldown, state.streak,
                            state.hold, r.likelihood, r.window, r.tail_threshold, r.learning,
                            state.lcount, state.lmean, state.lvar, state.ring, idx, mean, std, z, tail,
                            r.suppress_array, r.resolve_after, np.ones(n, np.int64), 1, state.ep_run, state.ep_start,
                            state.ep_count, state.ep_peak_z, state.ep_peak_value, ev, np.empty((n, 5)), ev_n)
    opened = ev[:int(ev_n[0])]
    return idx[:k].copy(), opened[opened[:, 1] == rules.EPISODE_OPENED, 0].copy()


def score(flags: np.ndarray, windows, ignored) -> tuple[int, int, int]:
    """(detected, missed, false alarms) of one series' flags."""
    detected = sum(bool(((flags >= a) & (flags < b)).any()) for a, b in windows)
    inside = np.zeros(len(flags), dtype=bool)
    for a, b in (*windows, *ignored):
        inside |= (flags >= a) & (flags < b)
    return detected, len(windows) - detected, int((~inside).sum())


def run(mode: str = "quick", seed: int = 15) -> dict:
    per_kind, n = SIZES[mode]
    rng = np.random.default_rng(seed)
    series = {kind: [make_series(kind, n, rng) for _ in range(per_kind)] for kind in KINDS}
    results = []
    examples = {}
    for name, options in OPTION_SETS.items():
        for kind in KINDS:
            total = np.zeros(3, dtype=np.int64)
            episodes = np.zeros(3, dtype=np.int64)  # episodes opened: in a window, -, outside every window
            for j, (values, windows, ignored) in enumerate(series[kind]):
                flags, opened = judge(values, options)
                total += score(flags, windows, ignored)
                got = score(opened, windows, ignored)
                episodes += (len(opened) - got[2], 0, got[2])
                if j == 0 and name in PLOTTED:
                    examples.setdefault(kind, {"values": values, "windows": windows, "flags": {}})
                    examples[kind]["flags"][name] = flags
            results.append({"options": name, "kind": kind, "detected": int(total[0]), "missed": int(total[1]),
                            "false_alarms": int(total[2]), "values": per_kind * n,
                            "episodes": int(episodes[0] + episodes[2]), "false_episodes": int(episodes[2])})
    return {"schema": 1, "mode": mode, "seed": seed, "series_per_kind": per_kind, "values_per_series": n,
            "option_sets": {k: _describe(v) for k, v in OPTION_SETS.items()}, "results": results,
            "_examples": examples}


def _describe(o: Options) -> str:
    params = resolve(o, DEFAULTS, "quality")
    return ", ".join(f"{k}={v}" for k, v in vars(params).items())


def format_table(doc: dict) -> str:
    """Markdown: a row per option set, per kind "detected/anomalies (false alarms)"."""
    by = {(r["options"], r["kind"]): r for r in doc["results"]}
    lines = [f"Detection quality: {doc['series_per_kind']} seeded series of {doc['values_per_series']} values per "
             f"kind; each cell: anomalies detected / labelled, then false alarms (flags outside every anomaly's "
             f"window) over all of them; then the episodes they make (resolve_after 10: what an alert sink is "
             f"sent), of which false (opened outside every window).", "",
             "| options | " + " | ".join(KINDS) + " | false alarms, all kinds |",
             "|---|" + "---|" * (len(KINDS) + 1)]
    for name in OPTION_SETS:
        cells, alarms = [], 0
        for kind in KINDS:
            r = by[(name, kind)]
            alarms += r["false_alarms"]
            labelled = r["detected"] + r["missed"]
            ep = f"; {r['episodes']} ep ({r['false_episodes']} false)"
            cells.append((f"{r['detected']}/{labelled}, {r['false_alarms']} fa" if labelled else
                          f"-, {r['false_alarms']} fa") + ep)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {alarms} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    examples = doc["_examples"]
    fig, axes = plt.subplots(len(KINDS), 1, figsize=(11, 2.3 * len(KINDS)), sharex=False)
    markers = dict(zip(PLOTTED, [("x", "tab:red"), ("o", "tab:green"), ("s", "tab:blue"), ("^", "tab:purple")]))
    for ax, kind in zip(axes, KINDS):
        ex = examples[kind]
        values = ex["values"]
        ax.plot(values, lw=0.5, color="0.4")
        for a, b in ex["windows"]:
            ax.axvspan(a, b + 5, color="gold", alpha=0.35, lw=0)
        span = np.ptp(values) or 1.0
        for row, (name, (marker, color)) in enumerate(markers.items()):
            flags = ex["flags"].get(name, np.zeros(0, np.int64))
            y = np.full(len(flags), values.max() + span * (0.08 + 0.07 * row))
            ax.scatter(flags, y, marker=marker, s=12, color=color, label=f"{name}: {len(flags)} flags")
        ax.set_title(kind, fontsize=9, loc="left")
        ax.legend(fontsize=6, loc="lower left", ncol=4)
        ax.tick_params(labelsize=7)
    fig.suptitle("One labelled series of each kind (anomaly windows shaded) and the values each option set flags",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="20 series per kind (the default is 40)")
    size.add_argument("--tiny", action="store_true", help="2 short series per kind, for the harness's test")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    kernels.compile_all()
    rules.compile_all()
    doc = run(mode)
    table = format_table(doc)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(doc, args.out / "quality.png")
    doc.pop("_examples")
    (args.out / "quality.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "quality.md").write_text(table)
    print(f"wrote {args.out / 'quality.json'}, quality.md and quality.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
