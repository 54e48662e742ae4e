"""A million series on one host (issue 19), in process: memory per series, the worst batch while a session
grows to 1 000 000 series, snapshot and resume of that session on SQLite and Redis, churn (10 000 000 names over
time, 100 000 live) with its RSS curve, and unary Detect with 100 000 distinct names against 100.

    python -m benchmarks.million_bench [--series N] [--churn N] [--out DIR]

Writes million.json, million.md and million-churn.png under --out (default benchmarks/results/). The paced
gRPC load (Go loadgen -rate against --workers 0) is benchmarks/million_load.py.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

from streamer import detector, fused, series
from streamer.state import Session, SeriesState
from streamer.store.sqlite import SQLiteStore

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def versions() -> dict:
    import grpc
    import numba
    return {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "grpcio": grpc.__version__, "cpus": os.cpu_count(), "load": os.getloadavg()}


def request(first: int, n: int, width: int, prefix: bytes = b"h", values: np.ndarray | None = None) -> bytes:
    """An OutliersRequest of n metrics named prefix + the zero-padded numbers first..first+n-1 (width bytes in
    all), built with numpy: every metric record is the same size."""
    digits = width - len(prefix)
    rec = 2 + 2 + width + 9
    out = np.empty((n, rec), dtype=np.uint8)
    out[:, 0] = 0x0A
    out[:, 1] = rec - 2
    out[:, 2] = 0x12
    out[:, 3] = width
    out[:, 4:4 + len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    num = np.arange(first, first + n, dtype=np.int64)
    out[:, 4 + len(prefix):4 + width] = 48
    for d in range(min(digits, 12)):
        out[:, 4 + width - 1 - d] = 48 + (num // 10 ** d) % 10
    out[:, 4 + width] = 0x19
    vals = np.random.default_rng(first).normal(50, 5, n) if values is None else values
    out[:, 5 + width:] = vals.astype("<f8").view(np.uint8).reshape(n, 8)
    return out.tobytes()


def grow(n_series: int, batch: int, width: int = 33) -> dict:
    """One session growing to n_series names in batches of `batch` new names: RSS, bytes per series, the slowest
    batches (intern, judge and encode in the fused pass)."""
    gc.collect()
    before = rss()
    state = SeriesState(1, n_series)
    fast = fused.StreamPass()
    times, growth = [], []
    for first in range(0, n_series, batch):
        buf = request(first, min(batch, n_series - first), width)
        fast.decode(buf)
        size = len(state.table._index)
        t = time.perf_counter()
        fast.apply(state, False, 0.05, 2.0, 10, False, 1, 1000.0)
        times.append(time.perf_counter() - t)
        if len(state.table._index) != size:  # the index grew in this batch: it and the next two
            growth.append(len(times) - 1)
    growth_ms = [round(1e3 * max(times[i:i + 3]), 2) for i in growth]
    del buf
    gc.collect()
    after = rss()
    per = (after - before) / n_series
    times_ms = sorted(1e3 * x for x in times)
    return {"series": n_series, "batch": batch, "name_bytes": width, "rss_before": before, "rss_after": after,
            "bytes_per_series": per, "beyond_name": per - width, "accounted_per_series": state.nbytes / n_series,
            "worst_batch_ms": times_ms[-1], "p99_batch_ms": times_ms[int(0.99 * (len(times_ms) - 1))],
            "median_batch_ms": statistics.median(times_ms), "growth_batches_ms": growth_ms, "state": state}


def snapshot_resume(state: SeriesState, store_name: str, store) -> dict:
    """Copy a big session's state (under its lock, as between batches), save, load and rebuild it."""
    session = Session("million", state)
    rounds = []
    for _ in range(3):
        t0 = time.perf_counter()
        capture = session.snapshot(time.time(), pack=False)  # what a batch waits for: the copy under the lock
        t1 = time.perf_counter()
        snap = capture.pack()  # on the store's writer thread in the server
        assert store.acquire("million", "bench", 60, time.time()) is None
        assert store.save(snap, "bench")
        t2 = time.perf_counter()
        loaded = store.load("million")
        t3 = time.perf_counter()
        back = SeriesState.from_snapshot(loaded, len(loaded))
        t4 = time.perf_counter()
        assert len(back.table) == len(state.table)
        # save: pack and write (in the server, on the store's writer thread)
        rounds.append({"copy_ms": 1e3 * (t1 - t0), "save_ms": 1e3 * (t2 - t1), "load_ms": 1e3 * (t3 - t2),
                       "rebuild_ms": 1e3 * (t4 - t3), "snapshot_ms": 1e3 * (t2 - t0), "resume_ms": 1e3 * (t4 - t2),
                       "bytes": snap.nbytes})
        del back, loaded, snap
        gc.collect()
    return {"store": store_name, **{k: _mmm([r[k] for r in rounds]) for k in rounds[0]}}


def _mmm(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def churn(total: int, live: int, per_step: int, samples: int = 100) -> dict:
    """total distinct names, per_step new ones a second (arrival time), each sent twice in its second and never
    again; TTL = live/per_step - 1 seconds, so exactly `live` series are live at any moment (the table holds up to
    an eighth of a TTL's worth more between sweeps). The session's limit is twice `live`: it bounds live
    series, so it is never reached, though `total` names come."""
    ttl = live // per_step - 1  # idle for more than ttl: the names of the last ttl + 1 seconds are live
    state = SeriesState(1, 2 * live, ttl=float(ttl))
    fast = fused.StreamPass()
    curve, times = [], []
    steps = total // per_step
    gc.collect()
    start = rss()
    for step in range(steps):
        now = 1_000_000.0 + step
        fresh = request(step * per_step, per_step, 16, b"c")
        fast.decode(fresh + fresh)
        t = time.perf_counter()
        fast.apply(state, False, 0.05, 2.0, 10, False, 1, now)
        times.append(time.perf_counter() - t)
        if step % max(1, steps // samples) == 0 or step == steps - 1:
            held = len(state.table)
            state.sweep(force=True)
            curve.append({"names": (step + 1) * per_step, "held": held, "live": len(state.table), "rss": rss(),
                          "slots": state.table.slots})
    fill = len(curve) // 5  # after the first fifth: the live set is full
    rss_vals = [c["rss"] for c in curve[fill:]]
    assert all(c["live"] == live for c in curve[fill:]), [c["live"] for c in curve]
    ms = sorted(1e3 * x for x in times)
    return {"total_names": total, "live_target": live, "per_step": per_step, "ttl_s": ttl,
            "rss_start": start, "rss_min_after_fill": min(rss_vals), "rss_max_after_fill": max(rss_vals),
            "slots": state.table.slots, "expired": state.budget.expired, "worst_batch_ms": ms[-1],
            "p99_batch_ms": ms[int(0.99 * (len(ms) - 1))], "median_batch_ms": statistics.median(ms), "curve": curve}


def unary(rounds: int = 7, n: int = 100_000) -> dict:
    """Detect of n metrics with n distinct names against n metrics of 100 names: ns per metric, interleaved."""
    defaults = detector.Defaults(max_series=n)
    distinct = request(0, n, 20)
    few = np.frombuffer(request(0, n, 20), dtype=np.uint8).reshape(n, -1).copy()
    ids = np.arange(n) % 100
    for d in range(12):
        few[:, 4 + 19 - d] = 48 + (ids // 10 ** d) % 10
    few = few.tobytes()
    detector.detect(distinct, defaults)
    detector.detect(few, defaults)
    a, b = [], []
    for _ in range(rounds):
        for buf, out in ((distinct, a), (few, b)):
            t = time.perf_counter()
            detector.detect(buf, defaults)
            out.append(1e9 * (time.perf_counter() - t) / n)
    ratio = [x / y for x, y in zip(a, b)]
    return {"metrics": n, "distinct_ns_per_metric": _mmm(a), "names100_ns_per_metric": _mmm(b),
            "ratio": _mmm(ratio)}


def unary_grpc(rounds: int = 7, n: int = 100_000) -> dict:
    """The same two Detect calls through a real `streamer serve` (its own process) and a gRPC channel with
    raw bytes in and out: what a client sees per metric, transport included."""
    import grpc

    from benchmarks.servers import ServerProcess
    distinct = request(0, n, 20)
    few = np.frombuffer(request(0, n, 20), dtype=np.uint8).reshape(n, -1).copy()
    ids = np.arange(n) % 100
    for d in range(12):
        few[:, 4 + 19 - d] = 48 + (ids // 10 ** d) % 10
    few = few.tobytes()
    server = ServerProcess("streamer", args=("--max-series", str(n)))
    try:
        with grpc.insecure_channel(server.addr, options=[("grpc.max_receive_message_length", 1 << 28)]) as ch:
            call = ch.unary_unary("/pb.Outliers/Detect", request_serializer=None, response_deserializer=None)
            call(distinct, timeout=60)
            call(few, timeout=60)
            a, b = [], []
            for _ in range(rounds):
                for buf, out in ((distinct, a), (few, b)):
                    t = time.perf_counter()
                    call(buf, timeout=60)
                    out.append(1e9 * (time.perf_counter() - t) / n)
    finally:
        server.stop()
    ratio = [x / y for x, y in zip(a, b)]
    return {"metrics": n, "distinct_ns_per_metric": _mmm(a), "names100_ns_per_metric": _mmm(b),
            "ratio": _mmm(ratio)}


def plot(churn_result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c = churn_result["curve"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([p["names"] / 1e6 for p in c], [p["rss"] / 2**20 for p in c], label="RSS (MiB)")
    ax2 = ax.twinx()
    ax2.plot([p["names"] / 1e6 for p in c], [p["live"] / 1e3 for p in c], color="tab:orange",
             label="live series (thousands)")
    ax2.plot([p["names"] / 1e6 for p in c], [p["held"] / 1e3 for p in c], color="tab:green", linestyle=":",
             label="held before the sweep (thousands)")
    ax.set_xlabel("distinct names seen (millions)")
    ax.set_ylabel("RSS (MiB)")
    ax2.set_ylabel("live series (thousands)")
    ax.set_ylim(0, max(p["rss"] for p in c) / 2**20 * 1.2)
    ax2.set_ylim(0, max(p["held"] for p in c) / 1e3 * 1.2)
    ax.set_title(f"churn: {churn_result['total_names'] / 1e6:g} M names, {churn_result['live_target'] / 1e3:g} k "
                 f"live (TTL {churn_result['ttl_s']} s)")
    fig.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def markdown(r: dict) -> str:
    lines = ["# A million series on one host (benchmarks/million_bench.py)", "",
             f"Versions and machine: {r['versions']}", "", "## Memory per series and the worst batch", "",
             "| series | batch | name bytes | RSS before MiB | RSS after MiB | bytes/series | beyond the name | "
             "accounted/series | worst batch ms | p99 ms | median ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in r["grow"]:
        lines.append(f"| {g['series']} | {g['batch']} | {g['name_bytes']} | {g['rss_before'] / 2**20:.1f} | "
                     f"{g['rss_after'] / 2**20:.1f} | {g['bytes_per_series']:.1f} | {g['beyond_name']:.1f} | "
                     f"{g['accounted_per_series']:.1f} | {g['worst_batch_ms']:.2f} | {g['p99_batch_ms']:.2f} | "
                     f"{g['median_batch_ms']:.2f} |")
    lines += ["", "Slowest of the batch in which the index grew and the next two, ms (series then: 2**k / 2): " +
              "; ".join(f"batches of {g['batch']}: {g['growth_batches_ms']}" for g in r["grow"])]
    lines += ["", "## Snapshot and resume of the 1 M-series session (median (min-max) of 3, ms)", "",
              "| store | copy (under the lock) | pack + save | snapshot = copy + pack + save | load | rebuild | "
              "resume = load + "
              "rebuild | bytes |", "|---|---|---|---|---|---|---|---|"]
    f = lambda m: f"{m['median']:.0f} ({m['min']:.0f}-{m['max']:.0f})"  # noqa: E731
    for s in r["snapshots"]:
        lines.append(f"| {s['store']} | {f(s['copy_ms'])} | {f(s['save_ms'])} | {f(s['snapshot_ms'])} | "
                     f"{f(s['load_ms'])} | {f(s['rebuild_ms'])} | {f(s['resume_ms'])} | {s['bytes']['median']:.0f} |")
    c = r["churn"]
    lines += ["", "## Churn", "", f"{c['total_names']} distinct names, {c['per_step']} new a second (each sent "
              f"twice, then never again), TTL {c['ttl_s']} s: {c['live_target']} live at every sample (exactly). "
              f"RSS at the start {c['rss_start'] / 2**20:.1f} MiB, after the live set filled "
              f"{c['rss_min_after_fill'] / 2**20:.1f}-{c['rss_max_after_fill'] / 2**20:.1f} MiB; slots "
              f"{c['slots']}; {c['expired']} series expired; batches of {2 * c['per_step']} metrics: median "
              f"{c['median_batch_ms']:.1f}, p99 {c['p99_batch_ms']:.1f}, worst {c['worst_batch_ms']:.1f} ms. Plot: "
              "million-churn.png.", "", "## Unary Detect: 100 000 distinct names against 100 names", ""]
    for where, u in (("in process (detector.detect)", r["unary"]),
                     ("through gRPC (a real server)", r["unary_grpc"])):
        lines.append(f"- {where}: ns per metric, median (min-max) of 7 interleaved rounds: distinct "
                     f"{f(u['distinct_ns_per_metric'])}, 100 names {f(u['names100_ns_per_metric'])}, ratio "
                     f"{u['ratio']['median']:.2f} ({u['ratio']['min']:.2f}-{u['ratio']['max']:.2f}).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=1_000_000)
    p.add_argument("--churn", type=int, default=10_000_000, help="distinct names in the churn run")
    p.add_argument("--live", type=int, default=100_000)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--no-redis", action="store_true")
    args = p.parse_args(argv)
    series.compile_all()
    fused.compile_all()
    r = {"versions": versions(), "grow": [], "snapshots": []}
    for batch in (1000, 1000, 1000, 10_000):  # three rounds of the small batches: a worst batch may be noise
        g = grow(args.series, batch)
        state = g.pop("state")
        r["grow"].append(g)
        print(f"grow: {g['series']} series in batches of {batch}: {g['bytes_per_series']:.1f} B/series "
              f"({g['beyond_name']:.1f} beyond the name), worst batch {g['worst_batch_ms']:.2f} ms", file=sys.stderr)
        if batch != 10_000:
            del state
            gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        r["snapshots"].append(snapshot_resume(state, "sqlite", SQLiteStore(os.path.join(tmp, "s.db"))))
    if not args.no_redis:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
        from redis_server import RedisServer

        from streamer.store import open_store
        server = RedisServer()
        try:
            r["snapshots"].append(snapshot_resume(state, "redis", open_store(server.url)))
        finally:
            server.stop()
    for s in r["snapshots"]:
        print(f"{s['store']}: snapshot {s['snapshot_ms']['median']:.0f} ms (copy {s['copy_ms']['median']:.0f}), "
              f"resume {s['resume_ms']['median']:.0f} ms", file=sys.stderr)
    del state
    gc.collect()
    r["unary"] = unary()
    r["unary_grpc"] = unary_grpc()
    print(f"unary: ratio {r['unary']['ratio']}, through gRPC {r['unary_grpc']['ratio']}", file=sys.stderr)
    r["churn"] = churn(args.churn, args.live, args.live // 10)
    print(f"churn: RSS {r['churn']['rss_min_after_fill'] / 2**20:.1f}-{r['churn']['rss_max_after_fill'] / 2**20:.1f}"
          f" MiB", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    plot(r["churn"], os.path.join(args.out, "million-churn.png"))
    with open(os.path.join(args.out, "million.json"), "w") as f:
        json.dump(r, f, indent=1)
    with open(os.path.join(args.out, "million.md"), "w") as f:
        f.write(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
