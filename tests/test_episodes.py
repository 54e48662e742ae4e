"""Issue 20's rules in rules.stream_update against tests/naive.py's twin: min_deviation, min_relative_deviation
and direction (suppressed values are normal and taken in as normal), and episodes (open at an outlier, grow,
resolve after resolve_after normal values), on the seeded series of test_rules, with every other rule."""
from __future__ import annotations

import numpy as np
import pytest

import naive
from streamer import rules
from test_rules import N_SERIES, KernelState, make_series, options

DIRECTIONS = {"both": 0.0, "up": 1.0, "down": 2.0}
KINDS = {rules.EPISODE_OPENED: "opened", rules.EPISODE_UPDATED: "updated", rules.EPISODE_RESOLVED: "resolved"}
NOW = 5_000_000_000_000


class Episodes:
    def __init__(self, n):
        self.run, self.start, self.count = (np.zeros(n, np.int64) for _ in range(3))
        self.peak_z, self.peak_value = np.zeros(n), np.zeros(n)


def run(state, eps, ids, values, times, o):
    n = len(values)
    idx, mean, std, z, tail = (np.full(n, -7, np.int32), *(np.full(n, np.nan) for _ in range(4)))
    ev, stats, ev_n = np.full((n, 4), -9, np.int64), np.full((n, 5), np.nan), np.zeros(1, np.int64)
    suppress = np.array([o["min_deviation"], o["min_relative"], DIRECTIONS[o["direction"]]])
    if o["resolve_after"]:
        episodes = (times, NOW, eps.run, eps.start, eps.count, eps.peak_z, eps.peak_value, ev, stats, ev_n)
    else:
        episodes = rules.NO_EPISODES
    k = rules.stream_update(ids, values, state.count, state.mean, state.spread, o["exponential"], o["alpha"],
                            o["threshold"], o["warmup"], o["exclude"], o["exclude_limit"], o["cooldown"],
                            state.streak, state.hold, o["likelihood"], o["window"], o["tail_threshold"],
                            o["learning"], state.lcount, state.lmean, state.lvar, state.ring,
                            idx, mean, std, z, tail, suppress, o["resolve_after"], *episodes)
    e = int(ev_n[0]) if o["resolve_after"] else 0
    got = [(int(r[0]), KINDS[int(r[1])], int(r[2]), int(r[3]), float(p[0]), float(p[1]))
           for r, p in zip(ev[:e], stats[:e])]
    return idx[:k].tolist(), z[:k], got, stats[:e]


def compare(ids, values, times, o, parts=4, seed=0):
    state = KernelState(N_SERIES, exclude_limit=o["exclude_limit"], cooldown=o["cooldown"],
                        likelihood=o["likelihood"], short=o["short"])
    eps = Episodes(N_SERIES)
    series = [naive.Series() for _ in range(N_SERIES)]
    cuts = np.sort(np.random.default_rng(seed).integers(0, len(values) + 1, parts - 1))
    bounds = [0, *cuts.tolist(), len(values)]
    flagged, events = [], []
    for a, b in zip(bounds, bounds[1:]):
        got_idx, got_z, got_events, stats = run(state, eps, ids[a:b], values[a:b], times[a:b], o)
        want_events = []
        naive_times = [t if t else NOW for t in times[a:b].tolist()]
        want = naive.stream_update(ids[a:b], values[a:b], series, times=naive_times, episodes=want_events,
                                   **{k: v for k, v in o.items() if k != "min_relative"},
                                   min_relative=o["min_relative"])
        where = f"batch [{a}:{b}]"
        assert got_idx == want[0], where
        np.testing.assert_allclose(got_z, want[3], rtol=1e-9, err_msg=where)
        assert [g[:4] for g in got_events] == [w[:4] for w in want_events], where
        np.testing.assert_allclose([g[4:] for g in got_events], [w[4:] for w in want_events], rtol=1e-9,
                                   err_msg=where)
        flagged += [a + i for i in got_idx]
        events += [(a + g[0], *g[1:]) for g in got_events]
    np.testing.assert_allclose(state.mean, [s.mean for s in series], rtol=1e-12)
    return flagged, events


CASES = [
    dict(resolve_after=10), dict(resolve_after=1), dict(resolve_after=3, cooldown=1),
    dict(min_deviation=4.0), dict(min_relative=0.5), dict(direction="up"), dict(direction="down", resolve_after=5),
    dict(min_deviation=3.0, direction="up", exclude=True, exclude_limit=10, resolve_after=10),
    dict(likelihood=True, learning=100, tail_threshold=1e-3, resolve_after=10, min_deviation=1.0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda r: ",".join(f"{k}={v}" for k, v in r.items()))
@pytest.mark.parametrize("exponential,alpha", [(False, 0.05), (True, 0.01)])
@pytest.mark.parametrize("seed", [5, 23])
def test_suppression_and_episodes_match_the_naive_twin(seed, exponential, alpha, case):
    print(f"seed={seed}")
    ids, values = make_series(seed)
    times = np.arange(len(values), dtype=np.int64) * 1_000_000_000 + 1
    times[np.random.default_rng(seed).random(len(values)) < 0.05] = 0  # no time: the time it was judged
    o = options(exponential=exponential, alpha=alpha, min_deviation=0.0, min_relative=0.0, direction="both",
                resolve_after=0)
    o.update(case)
    flagged, events = compare(ids, values, times, o, seed=seed)
    assert flagged, "the series must contain outliers to mean anything"
    if o["resolve_after"]:
        kinds = [e[1] for e in events]
        assert "opened" in kinds and "resolved" in kinds


def test_a_level_shift_is_one_episode_and_a_spike_is_its_own():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(10, 1, 2000), rng.normal(30, 1, 600), rng.normal(10, 1, 300)])
    values[2800] = 80.0  # a spike after the shift has gone
    ids = np.zeros(len(values), np.int64)
    times = np.arange(len(values), dtype=np.int64) * 1_000_000_000 + 1
    o = options(threshold=3.0, min_deviation=0.0, min_relative=0.0, direction="both", resolve_after=10)
    flagged, events = compare(ids, values, times, o)
    events = [e for e in events if e[2] >= times[2000]]  # (the noise of the first 2000 may open one or two)
    opened = [e for e in events if e[1] == "opened"]
    resolved = [e for e in events if e[1] == "resolved"]
    shift = [i for i in flagged if 2000 <= i < 2600]
    # hundreds of flags in the shift are one episode, opened at its first value; the spike is a second
    assert len(shift) > 200 and [e[0] for e in opened] == [2000, 2800] and len(resolved) == 2, events[:3]
    assert resolved[0][3] == len(shift) and opened[0][2] == times[2000]
    assert resolved[1][3] == 1 and resolved[1][5] == 80.0  # the spike: one value, its peak


def test_suppressed_values_still_update_the_state_as_without_the_option():
    ids, values = make_series(11)
    times = np.ones(len(values), np.int64)
    base = options(min_deviation=0.0, min_relative=0.0, direction="both", resolve_after=0)
    plain = KernelState(N_SERIES, exclude_limit=0, cooldown=0, likelihood=False, short=1)
    quiet = KernelState(N_SERIES, exclude_limit=0, cooldown=0, likelihood=False, short=1)
    a, _, _, _ = run(plain, Episodes(N_SERIES), ids, values, times, base)
    b, _, _, _ = run(quiet, Episodes(N_SERIES), ids, values, times, {**base, "min_deviation": 1e9})
    assert a and b == [] and np.array_equal(plain.mean, quiet.mean) and np.array_equal(plain.spread, quiet.spread)
