"""Series TTL and the series limits: idle series are dropped (data time or arrival time), their slots reused,
gone from snapshots, counted; --max-series bounds live series; --max-total-series bounds a whole server.

In process through StreamDetector for exact counts over many batches (churn), and against a real `streamer serve`
(its own process) for the flags, DetectOptions.series_ttl_seconds, the status codes and the metrics.
"""
from __future__ import annotations

import random

import grpc
import numpy as np
import pytest

from test_exact import Raw
from test_metrics import Scrape, free_port

from streamer.detector import Defaults, StreamDetector
from streamer.errors import ResourceExhausted
from streamer.pb import outliers_pb2 as pb
from streamer.state import SeriesBudget, SessionRegistry

SEED = 20261201
NS = 10 ** 9


def request(names, t=None, values=None, session="", ttl=None, seq=0):
    """An OutliersRequest of `names` with data time t (seconds; None: no Metric.time)."""
    req = pb.OutliersRequest(session=session, seq=seq)
    for i, name in enumerate(names):
        m = req.metrics.add(name=name, value=1.0 if values is None else values[i])
        if t is not None:
            m.time.seconds = int(t)
    if ttl is not None:
        req.options.series_ttl_seconds = ttl
    return req


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def test_churn_keeps_exact_live_counts_and_returning_names_start_fresh():
    """20 000 distinct names over 200 batches (data time, one second a batch), each name live for 5 s: the table
    holds exactly the names seen in the last ttl seconds after each sweep, never grows its slots past the live
    peak, and a name that comes back after its TTL is judged as new (count 1), in the snapshot too."""
    rng = random.Random(SEED)
    budget = SeriesBudget()
    registry = SessionRegistry(60, 10, 1000, clock=Clock(), budget=budget)
    det = StreamDetector(Defaults(max_series=1000, series_ttl=3.0), registry)
    last: dict[str, int] = {}
    returned = gaps = 0
    for step in range(200):
        names = [f"pod-{step * 100 + i}.cpu" for i in range(100)]
        for _ in range(100):  # each name reports now and then for the 5 s after it came
            names.append(f"pod-{rng.randrange(max(0, step - 4) * 100, step * 100 + 100)}.cpu")
        back = f"pod-{rng.randrange(0, (step - 4) * 100)}.cpu" if step > 10 else None
        if back:  # a name of long ago comes back
            names.append(back)
        fresh = back is not None and back in last and step - last[back] > 3
        returned += fresh
        gaps += sum(1 for n in set(names) if n in last and step - last[n] > 3)
        det.process(request(names, t=1_700_000_000 + step, session="churn").SerializeToString())
        for name in names:
            last[name] = step
        state = det.state
        live = {n for n, s in last.items() if step - s <= 3}
        if step % 20 == 19:
            state.sweep(force=True)
            assert len(state.table) == len(live)
            assert budget.held == len(live)
        assert len(state.table) <= 1000
        if fresh:
            slot = state.table.intern(*_spans([back.encode()]))[0]
            assert state.count[slot] == 1, f"{back} came back after expiring: its state starts fresh"
    assert returned > 100
    assert state.table.slots <= 1000  # slots reused: the table never held more than ~5 s of names
    snap = det.session.snapshot(0.0)
    live = {n for n, s in last.items() if step - s <= 3}
    assert len(snap) == len(live) and budget.held == len(live)
    assert set(_names(snap)) == live
    assert snap.arrays["last_seen"].min() >= 1_700_000_000 + step - 3
    assert budget.expired == gaps + len(last) - len(live)  # every life of a name ended, but the live ones
    det.close()


def _names(snap):
    out, p = [], 0
    for n in snap.name_lengths.tolist():
        out.append(snap.names[p:p + n].decode())
        p += n
    return out


def _spans(names):
    lens = np.array([len(n) for n in names], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    return b"".join(names), starts, lens


def test_max_series_bounds_live_series_and_total_series_bound_the_server():
    budget = SeriesBudget(limit=5)
    clock = Clock()
    registry = SessionRegistry(60, 10, 3, clock=clock, budget=budget)
    defaults = Defaults(max_series=3, series_ttl=10.0)
    a = StreamDetector(defaults, registry)
    a.process(request(["a1", "a2", "a3"], session="a").SerializeToString())
    with pytest.raises(ResourceExhausted, match=r"metric 1: the series limit of 3 series \(--max-series\)"):
        a.process(request(["a1", "a4"]).SerializeToString())
    clock.now += 5
    a.process(request(["a1", "a2"]).SerializeToString())
    clock.now += 6  # a3 idle for 11 s > 10: it makes room for a4, once the limit is reached
    a.process(request(["a4", "a1"]).SerializeToString())
    assert len(a.state.table) == 3 and budget.expired == 1
    b = StreamDetector(defaults, registry)
    b.process(request(["b1", "b2"], session="b").SerializeToString())
    assert budget.held == 5
    with pytest.raises(ResourceExhausted, match=r"metric 0: the server's limit of 5 series in all sessions and "
                                                r"streams \(--max-total-series\) is reached: it holds 5"):
        b.process(request(["b3"]).SerializeToString())
    assert len(b.state.table) == 2 and budget.held == 5  # nothing of the batch applied
    b.close()
    registry._writer.submit(lambda: None).result()  # the detach's lease release has run
    clock.now += 100
    registry.sweep()  # session b dropped after its TTL: its series leave the budget
    assert budget.held == 3
    c = StreamDetector(defaults, registry)  # a private stream counts too
    c.process(request(["c1", "c2"]).SerializeToString())
    assert budget.held == 5
    c.close()
    assert budget.held == 3


def test_a_series_ttl_of_zero_keeps_series_and_data_time_counts_over_arrival(cli_server):
    """Against a real server: --series-ttl 2, DetectOptions.series_ttl_seconds overriding it per session (0:
    never), data time deciding expiry, RESOURCE_EXHAUSTED naming --max-total-series and its count, and the
    expired series counted in /metrics."""
    port = free_port()
    server = cli_server("--series-ttl", "2", "--max-series", "3", "--max-total-series", "5",
                        "--metrics-port", str(port))
    t0 = 1_800_000_000
    s = Raw(server.addr)
    s.send(request(["x", "y", "z"], t=t0, values=[1, 1, 1]))
    s.send(request(["x", "y", "z"], t=t0 + 1, values=[3, 3, 3]))
    with pytest.raises(grpc.RpcError) as exc:  # y and z seen 1 s ago: not expired, the table is full
        s.send(request(["x", "w"], t=t0 + 2))
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the series limit of 3 series (--max-series)" in exc.value.details()
    s = Raw(server.addr)
    s.send(request(["x", "y", "z"], t=t0, values=[1, 1, 1], session="p"))
    s.send(request(["x", "y", "z"], t=t0 + 1, values=[3, 3, 3]))
    s.send(request(["x"], t=t0 + 4, values=[5]))  # x, y and z idle for 3 s > 2: x starts fresh, y and z go
    answer = s.send(request(["w", "y", "x"], t=t0 + 4.5, values=[1, 1000, 2]))
    assert list(answer.indices) == []  # y came back fresh: 1000 is its first value, not an outlier
    assert Scrape(port)("streamer_series_expired_total") == 3
    keep = Raw(server.addr)
    keep.send(request(["k1", "k2"], t=t0, ttl=0, session="keep"))
    with pytest.raises(grpc.RpcError) as exc:  # p holds 3, keep 2: the server's 5
        keep.send(request(["k3"], t=t0 + 1000))
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the server's limit of 5 series in all sessions and streams (--max-total-series) is reached: it " \
           "holds 5" in exc.value.details()
    keep = Raw(server.addr)  # the session again (the error ended that stream)
    keep.send(request(["k1", "k2"], t=t0 + 10_000, ttl=0, session="keep"))  # ttl 0: never, 10 000 s later
    assert Scrape(port)("streamer_series_expired_total") == 3
    from streamer.client import make_options
    assert make_options(series_ttl=0.0).HasField("series_ttl_seconds")  # 0 is sent: "never", not the default
    assert make_options() is None
    with pytest.raises(grpc.RpcError) as exc:
        Raw(server.addr).send(request(["q"], ttl=-1.0))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "options.series_ttl_seconds must be a finite number >= 0, got -1.0" in exc.value.details()
