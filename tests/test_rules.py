"""rules.stream_update's rules (issue 15) against tests/naive.py's loop twin on seeded random series: the
bias-corrected exponential start, exclusion that cannot freeze (stddev 0, exclude_limit), the repeat cooldown
and the anomaly-likelihood score; spikes, level shifts, flat starts, NaN and +-Inf, both modes."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

import naive
from streamer import rules

SEEDS = [5, 23, 99]
N_SERIES = 6


def make_series(seed: int, n: int = 3000):
    """Seeded (ids, values): interleaved noisy series with spikes and a level shift, a series with a flat start
    then noise, a constant one that steps, and NaN/+-Inf sprinkled in."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, N_SERIES, n).astype(np.int64)
    t = np.arange(n)
    values = rng.normal(0.0, 1.0, n) * (1.0 + ids)
    spikes = rng.random(n) < 0.03
    values[spikes] += rng.choice([-1.0, 1.0], spikes.sum()) * rng.uniform(5, 12, spikes.sum()) * (1.0 + ids[spikes])
    values[(ids == 1) & (t > n // 2)] += 40.0                         # a level shift
    flat = (ids == 2) & (t < n // 3)
    values[flat] = 7.0                                                  # a flat start, then noise
    values[ids == 3] = np.where(t[ids == 3] < 0.6 * n, 1.0, 2.0)        # constant, then a step
    values[(ids == 4) & (t > n // 3) & (t < n // 3 + 150)] += 15.0      # a sustained excursion
    bad = rng.random(n)
    values[bad < 0.02] = np.nan
    values[(bad >= 0.02) & (bad < 0.03)] = np.inf
    values[(bad >= 0.03) & (bad < 0.04)] = -np.inf
    return ids, values


class KernelState:
    """The arrays stream_update keeps for N series, for the options given."""

    def __init__(self, n, *, exclude_limit, cooldown, likelihood, short):
        self.count = np.zeros(n, np.int64)
        self.mean, self.spread = np.zeros(n), np.zeros(n)
        self.streak = np.zeros(n if exclude_limit else 0, np.int64)
        self.hold = np.zeros(n if cooldown else 0, np.int64)
        m = n if likelihood else 0
        self.lcount, self.lmean, self.lvar = np.zeros(m, np.int64), np.zeros(m), np.zeros(m)
        self.ring = np.zeros((m, short if likelihood else 1))


def run_kernel(state, ids, values, o):
    n = len(values)
    idx, mean, std, z, tail = (np.full(n, -7, np.int32), *(np.full(n, np.nan) for _ in range(4)))
    k = rules.stream_update(ids, values, state.count, state.mean, state.spread, o["exponential"], o["alpha"],
                            o["threshold"], o["warmup"], o["exclude"], o["exclude_limit"], o["cooldown"],
                            state.streak, state.hold, o["likelihood"], o["window"], o["tail_threshold"],
                            o["learning"], state.lcount, state.lmean, state.lvar, state.ring,
                            idx, mean, std, z, tail, rules.NO_SUPPRESS, 0, *rules.NO_EPISODES)
    return idx[:k].tolist(), mean[:k], std[:k], z[:k], tail[:k]


def options(**kw):
    o = dict(exponential=False, alpha=0.05, threshold=3.0, warmup=10, exclude=False, exclude_limit=0,
             cooldown=0, likelihood=False, short=10, window=8640, tail_threshold=1e-5, learning=300)
    o.update(kw)
    return o


def compare(ids, values, o, parts=5, seed=0):
    """Feed the stream in random batches to the kernel and the naive twin; check every answer and the state."""
    state = KernelState(N_SERIES, exclude_limit=o["exclude_limit"], cooldown=o["cooldown"],
                        likelihood=o["likelihood"], short=o["short"])
    series = [naive.Series() for _ in range(N_SERIES)]
    cuts = np.sort(np.random.default_rng(seed).integers(0, len(values) + 1, parts - 1))
    bounds = [0, *cuts.tolist(), len(values)]
    flagged = []
    for a, b in zip(bounds, bounds[1:]):
        got = run_kernel(state, ids[a:b], values[a:b], o)
        want = naive.stream_update(ids[a:b], values[a:b], series, **{k: v for k, v in o.items()})
        where = f"batch [{a}:{b}]"
        assert got[0] == want[0], where
        for g, w in zip(got[1:] if o["likelihood"] else got[1:4], want[1:]):  # tail: only with the score
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=where)
        flagged += [a + i for i in got[0]]
    assert state.count.tolist() == [s.n for s in series]
    np.testing.assert_allclose(state.mean, [s.mean for s in series], rtol=1e-12)
    np.testing.assert_allclose(state.spread, [s.spread for s in series], rtol=1e-12, atol=1e-300)
    if o["likelihood"]:
        np.testing.assert_allclose(state.lmean, [s.long_mean for s in series], rtol=1e-9)
    return flagged


RULES = [
    dict(), dict(exclude=True), dict(exclude=True, exclude_limit=10), dict(exclude=True, exclude_limit=1),
    dict(cooldown=1), dict(cooldown=5, exclude=True, exclude_limit=10),
    dict(likelihood=True, learning=100, tail_threshold=1e-3), dict(likelihood=True, short=3, window=200,
                                                                   learning=50, tail_threshold=1e-2),
    dict(likelihood=True, cooldown=1, exclude=True, exclude_limit=10, learning=100, tail_threshold=1e-3),
]


@pytest.mark.parametrize("rules", RULES, ids=lambda r: ",".join(f"{k}={v}" for k, v in r.items()) or "defaults")
@pytest.mark.parametrize("exponential,alpha", [(False, 0.05), (True, 0.01), (True, 0.2)])
@pytest.mark.parametrize("seed", SEEDS)
def test_stream_update_matches_the_naive_twin(seed, exponential, alpha, rules):
    print(f"seed={seed}")
    ids, values = make_series(seed)
    flagged = compare(ids, values, options(exponential=exponential, alpha=alpha, **rules), seed=seed)
    assert len(flagged) >= 2, "the series must contain outliers to mean anything"


def test_the_exponential_start_is_welfords_population_statistics_until_one_over_alpha():
    rng = np.random.default_rng(1)
    values = rng.normal(100.0, 3.0, 60)
    ids = np.zeros(60, np.int64)
    alpha = 0.05  # 1/alpha = 20 values judged against the exact cumulative statistics
    o = options(exponential=True, alpha=alpha, threshold=0.0, warmup=2)
    state = KernelState(1, exclude_limit=0, cooldown=0, likelihood=False, short=1)
    idx, mean, std, _, _ = run_kernel(state, ids, values, o)
    assert idx[:5] == [2, 3, 4, 5, 6]  # threshold 0 flags every value that differs from the mean
    for i, m, s in zip(idx, mean, std):
        if i <= 20:
            assert m == pytest.approx(statistics.fmean(values[:i]), rel=1e-13)
            assert s == pytest.approx(statistics.pstdev(values[:i]), rel=1e-11)
    # after 1/alpha values the weight stays alpha: the state is the plain recurrence from there on
    c, mu, var = 20, statistics.fmean(values[:20]), statistics.pvariance(values[:20])
    for x in values[20:]:
        c += 1
        diff = x - mu
        mu += alpha * diff
        var = (1 - alpha) * (var + diff * alpha * diff)
    assert state.mean[0] == pytest.approx(mu, rel=1e-12) and state.spread[0] == pytest.approx(var, rel=1e-9)


def test_early_exponential_zscores_are_not_inflated():
    # the measurement: alpha = 0.001, standard normal noise; median |z| of the first hundred values
    # near 2.5 with the old start (variance from 0), near the later ~0.67 with weight max(alpha, 1/n)
    values = np.random.default_rng(7).normal(0, 1, 100)
    o = options(exponential=True, alpha=0.001, threshold=0.0, warmup=2)
    state = KernelState(1, exclude_limit=0, cooldown=0, likelihood=False, short=1)
    _, _, _, z, _ = run_kernel(state, np.zeros(100, np.int64), values, o)
    assert 0.4 < np.median(np.abs(z)) < 1.0


@pytest.mark.parametrize("exponential", [False, True])
def test_a_flat_start_recovers_with_exclusion(exponential):
    values = np.concatenate([np.full(50, 7.0), np.random.default_rng(3).normal(7.0, 1.0, 2000)])
    o = options(exponential=exponential, exclude=True, exclude_limit=0)  # even without a limit
    state = KernelState(1, exclude_limit=0, cooldown=0, likelihood=False, short=1)
    idx, _, std, z, _ = run_kernel(state, np.zeros(len(values), np.int64), values, o)
    assert idx[0] == 50 and std[0] == 0.0 and math.isinf(z[0])  # the first different value is flagged...
    assert state.count[0] > 2000 - 60  # ...and taken in: the series learns the noise, it does not freeze
    assert sum(i > 200 for i in idx) < 0.03 * 2000  # a few per cent of false alarms, not every value


@pytest.mark.parametrize("exponential,alpha", [(False, 0.05), (True, 0.0005)])
def test_a_level_shift_after_ten_thousand_values_is_learned(exponential, alpha):
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.normal(0.0, 1.0, 10_000), rng.normal(50.0, 1.0, 3_000)])
    ids = np.zeros(len(values), np.int64)
    flags = {}
    for limit in (0, 10):
        o = options(exponential=exponential, alpha=alpha, exclude=True, exclude_limit=limit)
        state = KernelState(1, exclude_limit=limit, cooldown=0, likelihood=False, short=1)
        idx = run_kernel(state, ids, values, o)[0]
        flags[limit] = [i for i in idx if i >= 10_000]
        assert compare(ids, values, o, parts=3) == idx
    assert len(flags[0]) == 3_000  # without the limit the new level is never taken in
    # with it the shift's first 10 values are excluded, the 11th is taken in, and the series re-learns
    assert flags[10][:11] == list(range(10_000, 10_011))
    # (a cumulative mean needs ~1 100 values at the new level to come within 3 of its stddevs: p < 0.1)
    assert len(flags[10]) < (1_500 if not exponential else 300) and flags[10][-1] < 12_000


def test_cooldown_reports_the_first_of_each_run_and_leaves_the_state_alone():
    values = np.array([0.0, 1.0] * 100 + [50.0] * 4 + [0.5] + [50.0] * 2 + [0.5] * 3 + [50.0])
    ids = np.zeros(len(values), np.int64)
    got = {}
    for cooldown in (0, 1, 3):
        state = KernelState(1, exclude_limit=0, cooldown=cooldown, likelihood=False, short=1)
        got[cooldown] = run_kernel(state, ids, values, options(cooldown=cooldown, threshold=2.0))[0]
        got[cooldown, "state"] = (state.count[0], state.mean[0], state.spread[0])
    assert got[0] == [200, 201, 202, 203, 205, 206, 210]
    assert got[1] == [200, 205, 210]   # the first of each run of outliers
    assert got[3] == [200, 210]        # 205 is held back: only one normal value since 203
    assert got[0, "state"] == got[1, "state"] == got[3, "state"]


def test_likelihood_flags_a_sustained_change_and_reports_its_tail_probability():
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(0, 1, 3000), rng.normal(0, 4, 200)])  # a variance change
    ids = np.zeros(len(values), np.int64)
    o = options(likelihood=True, threshold=math.inf)  # the z-score rule off: only the likelihood flags
    state = KernelState(1, exclude_limit=0, cooldown=0, likelihood=True, short=10)
    idx, _, std, z, tail = run_kernel(state, ids, values, o)
    assert idx and all(i >= 3000 for i in idx)
    assert all(0 <= t < 1e-5 for t in tail) and all(s > 0 for s in std) and np.isfinite(z).all()
    assert state.lcount[0] == len(values) and 0.3 < state.lmean[0] < 0.9


def test_stream_update_rejects_missing_state_arrays():
    ids, values = np.zeros(3, np.int64), np.array([1.0, 2.0, 3.0])
    outs = [np.empty(3, np.int32), *(np.empty(3) for _ in range(4))]
    for bad in (dict(exclude=True, exclude_limit=3), dict(cooldown=2), dict(likelihood=True)):
        o = options(**bad)
        state = KernelState(1, exclude_limit=0, cooldown=0, likelihood=False, short=1)
        with pytest.raises(ValueError):
            rules.stream_update(ids, values, state.count, state.mean, state.spread, False, 0.05, 2.0, 2,
                                o["exclude"], o["exclude_limit"], o["cooldown"], state.streak, state.hold,
                                o["likelihood"], 8640, 1e-5, 300, state.lcount, state.lmean, state.lvar,
                                state.ring, *outs, rules.NO_SUPPRESS, 0, *rules.NO_EPISODES)
        assert state.count[0] == 0
