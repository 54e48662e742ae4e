"""streamer/kernels.py against the loop references in tests/naive.py and numpy two-pass references."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

import naive
from streamer import kernels

SEEDS = [3, 17, 2024]   # fixed seeds: a failure names its seed in the test id
OFFSET = 1e9            # large offset with unit noise: E[x^2] - E[x]^2 would lose every digit here
N_SERIES = 7            # interleaved series; the last two are constant and step-constant


def make_stream(seed: int, n: int = 1500, offset: float = 0.0):
    """Seeded (ids, values): interleaved series with unit-scale noise, spikes, NaN/+-Inf, a constant series
    and a series that is constant and then steps to another constant (stddev 0 with x != mean)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, N_SERIES, n).astype(np.int64)
    scale = 1.0 + ids
    values = offset + rng.normal(0.0, 1.0, n) * scale
    spikes = rng.random(n) < 0.04
    values[spikes] += rng.choice([-1.0, 1.0], spikes.sum()) * rng.uniform(4, 10, spikes.sum()) * scale[spikes]
    values[ids == N_SERIES - 1] = offset + 3.0
    step = ids == N_SERIES - 2
    values[step] = offset + np.where(np.arange(n)[step] < 0.6 * n, 1.0, 2.0)
    bad = rng.random(n)
    values[bad < 0.02] = np.nan
    values[(bad >= 0.02) & (bad < 0.03)] = np.inf
    values[(bad >= 0.03) & (bad < 0.04)] = -np.inf
    return ids, values


def split(n: int, seed: int, parts: int = 5) -> list[slice]:
    """Random batch boundaries (some batches may be empty) for feeding one stream in several batches."""
    cuts = np.sort(np.random.default_rng(seed).integers(0, n + 1, parts - 1))
    bounds = [0, *cuts.tolist(), n]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def outs(n: int):
    """Out arrays for a batch of n, filled with junk so unwritten positions cannot pass for results."""
    return (np.full(n, -7, dtype=np.int32), np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan))


def call(kernel, ids, values, *args):
    """Run a kernel with fresh out arrays; return (indices, mean, std, z) trimmed to the k it reports."""
    idx, mean, std, z = outs(len(values))
    k = kernel(ids, values, *args, idx, mean, std, z)
    return idx[:k].tolist(), mean[:k], std[:k], z[:k]


def assert_same(got, want, *, where: str, rtol: float = 1e-12, mean_atol: float = 0.0):
    """Flags exactly; std to rtol; mean and z to rtol plus the absolute error `mean_atol` of a mean (which
    carries into z = (x - mean) / std)."""
    idx, mean, std, z = got
    assert idx == want[0], where
    np.testing.assert_allclose(mean, want[1], rtol=rtol, atol=mean_atol, err_msg=where)
    np.testing.assert_allclose(std, want[2], rtol=rtol, atol=0, err_msg=where)
    z_atol = mean_atol / min((s for s in want[2] if s > 0), default=1.0)  # z is +-inf where std is 0
    np.testing.assert_allclose(z, want[3], rtol=rtol, atol=z_atol, err_msg=where)


# --- unary Detect -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detect_batch_classic_sample(seed):
    values = np.random.default_rng(seed).uniform(0, 40, 1000)
    values[[7, 113, 835]] = [97.3, 92.1, 93.2]
    ids = np.zeros(1000, dtype=np.int64)
    got = call(kernels.detect_batch, ids, values, 1, 2.0)
    assert got[0] == [7, 113, 835]
    np.testing.assert_allclose(got[1], values.mean(), rtol=1e-14)
    np.testing.assert_allclose(got[2], values.std(), rtol=1e-14)
    np.testing.assert_allclose(got[3], (values[[7, 113, 835]] - values.mean()) / values.std(), rtol=1e-12)
    assert_same(got, naive.detect_batch(ids, values, 1, 2.0), where=f"seed {seed}")


def numpy_two_pass_flags(ids, values, n_series, threshold):
    """Flags from numpy's float64 two-pass mean and std (np.mean, np.std) per series of finite values."""
    flags = []
    stats = {}
    for s in range(n_series):
        x = values[(ids == s) & np.isfinite(values)]
        stats[s] = (x.mean(), x.std()) if len(x) else (0.0, 0.0)
    for i, (s, x) in enumerate(zip(ids.tolist(), values.tolist())):
        mean, std = stats[s]
        if math.isfinite(x) and abs(x - mean) > threshold * std:
            flags.append(i)
    return flags


@pytest.mark.parametrize("offset", [0.0, OFFSET])
@pytest.mark.parametrize("threshold", [1.0, 2.0, 3.5])
@pytest.mark.parametrize("seed", SEEDS)
def test_detect_batch_matches_naive(seed, threshold, offset):
    print(f"seed={seed}")
    ids, values = make_stream(seed, n=800, offset=offset)
    got = call(kernels.detect_batch, ids, values, N_SERIES, threshold)
    want = naive.detect_batch(ids, values, N_SERIES, threshold)
    assert 5 < len(want[0]) < 400, "the batch should contain some outliers and many inliers"
    # A batch mean is exact only to rounding: a few ulps of the data's scale (values up to ~100 around the
    # offset), plus the last bit of the offset itself (1e9 has an ulp of 1.2e-7).
    mean_atol = 1e-12 * 100 + 4 * np.spacing(offset)
    assert_same(got, want, where=f"seed {seed}", mean_atol=mean_atol)
    assert got[0] == numpy_two_pass_flags(ids, values, N_SERIES, threshold)


def test_detect_batch_constant_series_has_std_zero_and_no_flags():
    # 0.1 * 3 / 3 != 0.1 in floats: a mean computed as sum / n would give a constant series a tiny stddev.
    values = np.array([0.1, 0.1, 0.1, 7.0, 7.0])
    ids = np.array([0, 0, 0, 1, 1], dtype=np.int64)
    for threshold in (0.0, 2.0):
        assert call(kernels.detect_batch, ids, values, 2, threshold)[0] == []
    values[2] = 0.2
    idx, mean, std, z = call(kernels.detect_batch, ids, values, 2, 0.0)
    assert idx == [0, 1, 2]
    assert std[0] > 0


def test_detect_batch_empty_and_non_finite():
    empty = np.empty(0)
    assert call(kernels.detect_batch, np.empty(0, dtype=np.int64), empty, 0, 2.0)[0] == []
    assert call(kernels.detect_batch, np.empty(0, dtype=np.int64), empty, 3, 2.0)[0] == []
    nan = np.array([np.nan, np.inf, -np.inf, np.nan])
    ids = np.array([0, 0, 1, 1], dtype=np.int64)
    assert call(kernels.detect_batch, ids, nan, 2, 0.0)[0] == []
    # non-finite values neither count towards the statistics nor get flagged; slot 2 has no values at all
    values = np.array([1.0, np.nan, 3.0, np.inf, -np.inf, 100.0, 2.0])
    ids = np.zeros(len(values), dtype=np.int64)
    got = call(kernels.detect_batch, ids, values, 3, 1.0)
    want = naive.detect_batch(ids, values, 3, 1.0)
    assert got[0] == want[0] == [5]
    np.testing.assert_allclose(got[1], [26.5], rtol=1e-15)
    assert_same(got, want, where="mixed")


def test_detect_batch_single_value_is_not_flagged():
    got = call(kernels.detect_batch, np.zeros(1, dtype=np.int64), np.array([5.0]), 1, 0.0)
    assert got[0] == []


# --- DetectStream -----------------------------------------------------------------------------------------

def run_stream(mode, ids, values, slices, *, threshold, warmup, exclude, alpha):
    """Feed one stream through the kernel and the naive loop batch by batch, checking both after each."""
    count, mean, spread = np.zeros(N_SERIES, np.int64), np.zeros(N_SERIES), np.zeros(N_SERIES)
    n_count, n_mean, n_spread = [0] * N_SERIES, [0.0] * N_SERIES, [0.0] * N_SERIES
    flagged, flat = [], []
    for b, sl in enumerate(slices):
        if mode == "cumulative":
            got = call(kernels.welford_update, ids[sl], values[sl], count, mean, spread,
                       threshold, warmup, exclude)
            want = naive.welford_update(ids[sl], values[sl], n_count, n_mean, n_spread,
                                        threshold, warmup, exclude)
        else:
            got = call(kernels.ewm_update, ids[sl], values[sl], count, mean, spread,
                       alpha, threshold, warmup, exclude)
            want = naive.ewm_update(ids[sl], values[sl], n_count, n_mean, n_spread,
                                    alpha, threshold, warmup, exclude)
        assert_same(got, want, where=f"batch {b}")
        assert count.tolist() == n_count, f"batch {b}"
        np.testing.assert_allclose(mean, n_mean, rtol=1e-12, atol=0, err_msg=f"batch {b}")
        np.testing.assert_allclose(spread, n_spread, rtol=1e-12, atol=1e-300, err_msg=f"batch {b}")
        flagged += [sl.start + i for i in got[0]]
        flat += [sl.start + i for i, sd in zip(got[0], got[2]) if sd == 0]
    run_stream.flat = flat  # flagged at stddev 0: taken in even with exclude
    return flagged, (count, mean, spread)


STREAM_CASES = [("cumulative", None)] + [("exponential", a) for a in (0.05, 0.3, 1.0)]


@pytest.mark.parametrize("mode,alpha", STREAM_CASES)
@pytest.mark.parametrize("warmup", [0, 2, 5])
@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("offset", [0.0, OFFSET])
@pytest.mark.parametrize("seed", SEEDS)
def test_stream_kernels_match_naive(seed, offset, exclude, warmup, mode, alpha):
    print(f"seed={seed}")
    ids, values = make_stream(seed, offset=offset)
    flagged, (count, _, _) = run_stream(mode, ids, values, split(len(values), seed), threshold=2.0,
                                        warmup=warmup, exclude=exclude, alpha=alpha)
    finite = np.isfinite(values)
    assert len(flagged) > 10 and finite.sum() - len(flagged) > 100, "want some outliers and many inliers"
    added = np.bincount(ids[finite], minlength=N_SERIES)
    if exclude:
        assert count.sum() == finite.sum() - len(flagged) + len(run_stream.flat)
    else:
        assert count.tolist() == added.tolist()


def two_pass_stream_flags(mode, ids, values, *, threshold, warmup, exclude, alpha):
    """Stream flags from a float64 two-pass over each series' values so far: numpy's mean and std for
    MODE_CUMULATIVE; for MODE_EXPONENTIAL the weighted mean and variance with Finch's weights: the j-th value
    (1-based) enters with a_j = max(alpha, 1/j) and ends with a_j times the product of (1 - a_i) for i > j,
    which his recurrence equals."""
    seen = [[] for _ in range(N_SERIES)]
    flags = []
    for i, (s, x) in enumerate(zip(ids.tolist(), values.tolist())):
        if not math.isfinite(x):
            continue
        past = np.array(seen[s])
        flagged = False
        if len(past) >= max(warmup, 2):
            if mode == "cumulative":
                mean, std = past.mean(), past.std()
            else:
                a = np.maximum(alpha, 1.0 / np.arange(1, len(past) + 1))
                keep = np.append(np.cumprod((1 - a[1:])[::-1])[::-1], 1.0)  # prod over i > j of (1 - a_i)
                w = a * keep
                mean = past[0] + np.dot(w, past - past[0])
                std = math.sqrt(np.dot(w, (past - mean) ** 2))
            flagged = abs(x - mean) > threshold * std
            if flagged:
                flags.append(i)
        if not (flagged and exclude and std > 0):
            seen[s].append(x)
    return flags


@pytest.mark.parametrize("mode,alpha", [("cumulative", None), ("exponential", 0.1)])
@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_stream_on_large_offset_flags_like_a_two_pass_reference(seed, exclude, mode, alpha):
    print(f"seed={seed}")
    ids, values = make_stream(seed, n=600, offset=OFFSET)
    params = dict(threshold=2.0, warmup=3, exclude=exclude, alpha=alpha)
    flagged, _ = run_stream(mode, ids, values, split(len(values), seed), **params)
    assert flagged == two_pass_stream_flags(mode, ids, values, **params)
    # the data is hard enough to matter: the same rule with var = E[x^2] - E[x]^2 flags differently
    if mode == "cumulative":
        sums = [[0, 0.0, 0.0] for _ in range(N_SERIES)]
        textbook = []
        for i, (s, x) in enumerate(zip(ids.tolist(), values.tolist())):
            if math.isfinite(x):
                n, s1, s2 = sums[s]
                if n >= 3:
                    var = max(s2 / n - (s1 / n) ** 2, 0.0)
                    if abs(x - s1 / n) > 2.0 * math.sqrt(var):
                        textbook.append(i)
                        if exclude and var > 0:
                            continue
                sums[s] = [n + 1, s1 + x, s2 + x * x]
        assert textbook != flagged


@pytest.mark.parametrize("mode,alpha", [("cumulative", None), ("exponential", 0.2)])
def test_stream_constant_series_flags_any_change_with_infinite_z(mode, alpha):
    values = np.array([5.0] * 6 + [5.0, 6.0, 4.0, 5.0])
    ids = np.zeros(len(values), dtype=np.int64)
    for exclude in (False, True):
        count, mean, spread = np.zeros(1, np.int64), np.zeros(1), np.zeros(1)
        args = (alpha, 2.0, 2, exclude) if mode == "exponential" else (2.0, 2, exclude)
        kernel = kernels.ewm_update if mode == "exponential" else kernels.welford_update
        idx, mu, std, z = call(kernel, ids, values, count, mean, spread, *args)
        # with exclude too: a value is never excluded while the stddev is 0, so a flat start cannot freeze
        assert idx[0] == 7 and z[0] == math.inf and std[0] == 0.0 and mu[0] == 5.0
        assert count[0] == (9 if exclude else 10) and spread[0] > 0  # 4.0 then excluded (stddev > 0)


@pytest.mark.parametrize("threshold", [0.0, -1.0, math.inf])
def test_stream_value_equal_to_a_zero_stddev_mean_is_never_flagged(threshold):
    # |x - mean| = 0 is not > threshold * 0 for any threshold (inf * 0 is NaN, and NaN compares false), so
    # the kernels never produce the 0 / 0 z-score; a negative threshold (rejected by the service) flags only
    # the values that differ from the mean.
    values = np.array([5.0, 5.0, 5.0, 6.0, 5.0])
    ids = np.zeros(len(values), dtype=np.int64)
    state = np.zeros(1, np.int64), np.zeros(1), np.zeros(1)
    idx, mean, std, z = call(kernels.welford_update, ids, values, *state, threshold, 0, True)
    # 6.0 is taken in (stddev 0: never excluded), so the 5.0 after it differs from the mean
    assert idx == ([] if threshold == math.inf else [3, 4])
    assert not np.isnan(z).any()


@pytest.mark.parametrize("mode", ["cumulative", "exponential"])
def test_stream_non_finite_values_are_never_flagged_and_never_added(mode):
    kernel = kernels.ewm_update if mode == "exponential" else kernels.welford_update
    extra = (0.3,) if mode == "exponential" else ()
    mixed = np.array([1.0, np.nan, 2.0, np.inf, 3.0, -np.inf, 2.5, np.nan, 1e6])
    clean = mixed[np.isfinite(mixed)]
    states = []
    for values in (mixed, clean):
        state = np.zeros(1, np.int64), np.zeros(1), np.zeros(1)
        idx, *_ = call(kernel, np.zeros(len(values), np.int64), values, *state, *extra, 0.0, 0, False)
        assert all(math.isfinite(values[i]) for i in idx)
        states.append(state)
        if values is mixed:
            assert idx[-1] == len(mixed) - 1   # the 1e6 after them is still judged on 1, 2, 3, 2.5
    assert [a.tolist() for a in states[0]] == [a.tolist() for a in states[1]]
    state = np.zeros(2, np.int64), np.zeros(2), np.zeros(2)
    only_bad = np.array([np.nan, np.inf, -np.inf] * 3)
    assert call(kernel, np.zeros(9, np.int64), only_bad, *state, *extra, 0.0, 0, False)[0] == []
    assert [a.tolist() for a in state] == [[0, 0], [0.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("mode", ["cumulative", "exponential"])
@pytest.mark.parametrize("warmup,first_judged", [(0, 2), (1, 2), (2, 2), (5, 5)])
def test_stream_warmup(mode, warmup, first_judged):
    # each value dwarfs all before it: every one from position `first_judged` on is an outlier
    values = np.array([0.0, 1.0, 1e2, 1e4, 1e8, 1e16, 1e32, 1e64, 1e128])
    kernel = kernels.ewm_update if mode == "exponential" else kernels.welford_update
    extra = (0.5,) if mode == "exponential" else ()
    state = np.zeros(1, np.int64), np.zeros(1), np.zeros(1)
    idx, *_ = call(kernel, np.zeros(len(values), np.int64), values, *state, *extra, 2.0, warmup, True)
    assert idx == list(range(first_judged, len(values)))


@pytest.mark.parametrize("kernel", ["welford_update", "ewm_update"])
def test_stream_kernels_reject_bad_arguments_before_touching_state(kernel):
    fn = getattr(kernels, kernel)
    extra = (0.1,) if kernel == "ewm_update" else ()
    values = np.array([1.0, 2.0, 3.0])
    state = np.zeros(2, np.int64), np.zeros(2), np.zeros(2)
    for ids in (np.array([0, 1, 2]), np.array([0, -1, 0])):
        with pytest.raises(ValueError):
            fn(ids, values, *state, *extra, 2.0, 0, False, *outs(3))
        assert state[0].tolist() == [0, 0]
    with pytest.raises(ValueError):
        fn(np.zeros(3, np.int64), values, *state, *extra, 2.0, 0, False, *outs(2))
    with pytest.raises(ValueError):
        fn(np.zeros(4, np.int64), values, *state, *extra, 2.0, 0, False, *outs(4))
    with pytest.raises(ValueError):
        kernels.detect_batch(np.array([0, 1, 2]), values, 2, 2.0, *outs(3))


# --- Chan et al. merge ------------------------------------------------------------------------------------

def welford_state(values_by_series):
    """MODE_CUMULATIVE state of each series' values, through the kernel (threshold inf: nothing flagged)."""
    ids = np.concatenate([np.full(len(v), s, np.int64) for s, v in enumerate(values_by_series)])
    values = np.concatenate(values_by_series)
    n = len(values_by_series)
    state = np.zeros(n, np.int64), np.zeros(n), np.zeros(n)
    assert call(kernels.welford_update, ids, values, *state, math.inf, 0, False)[0] == []
    return state


@pytest.mark.parametrize("offset", [0.0, OFFSET])
@pytest.mark.parametrize("seed", SEEDS)
def test_chan_merge_equals_the_state_of_the_concatenation(seed, offset):
    print(f"seed={seed}")
    rng = np.random.default_rng(seed)
    series = [offset + rng.normal(rng.uniform(-5, 5), rng.uniform(0.1, 3), rng.integers(0, 300))
              for _ in range(12)]
    series += [np.empty(0), offset + np.ones(4), offset + rng.normal(0, 1, 1)]
    cuts = [int(rng.integers(0, len(v) + 1)) for v in series]
    cuts[0], cuts[1] = 0, len(series[1])   # empty left side, empty right side
    a = welford_state([v[:c] for v, c in zip(series, cuts)])
    b = welford_state([v[c:] for v, c in zip(series, cuts)])
    count, mean, m2 = kernels.chan_merge(*a, *b)
    whole = welford_state(series)
    # Welford's running mean near 1e9 is rounded to its ulp (1.2e-7) at every step, so on unit noise its mean
    # is good to a few ulps and M2 to ~1e-7 relative; at offset 0 both are good to rounding.
    mean_atol = 16 * np.spacing(offset) + 1e-13
    m2_rtol = 1e-6 if offset else 1e-12
    assert count.tolist() == whole[0].tolist() == [len(v) for v in series]
    np.testing.assert_allclose(mean, whole[1], rtol=0, atol=mean_atol)
    np.testing.assert_allclose(m2, whole[2], rtol=m2_rtol, atol=0)
    # and against exact statistics of the concatenation
    exact_mean = [float(statistics.mean(v)) if len(v) else 0.0 for v in series]
    exact_m2 = [float(statistics.pvariance(v)) * len(v) if len(v) else 0.0 for v in series]
    np.testing.assert_allclose(mean, exact_mean, rtol=0, atol=mean_atol)
    np.testing.assert_allclose(m2, exact_m2, rtol=m2_rtol, atol=0)
    want = naive.chan_merge(*(x.tolist() for x in (*a, *b)))
    assert count.tolist() == want[0]
    np.testing.assert_allclose(mean, want[1], rtol=1e-15, atol=0)
    np.testing.assert_allclose(m2, want[2], rtol=1e-12, atol=0)
    # an empty side gives back the other side bit for bit
    assert mean[0] == b[1][0] and m2[0] == b[2][0] and mean[1] == a[1][1] and m2[1] == a[2][1]


def test_chan_merge_of_empty_states_and_bad_lengths():
    zeros = np.zeros(3, np.int64), np.zeros(3), np.zeros(3)
    count, mean, m2 = kernels.chan_merge(*zeros, *zeros)
    assert count.tolist() == [0, 0, 0] and mean.tolist() == [0.0] * 3 and m2.tolist() == [0.0] * 3
    empty = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    assert [len(x) for x in kernels.chan_merge(*empty, *empty)] == [0, 0, 0]
    with pytest.raises(ValueError):
        kernels.chan_merge(*zeros, *empty)


def test_compile_all_compiles_every_kernel():
    kernels.compile_all()
    for name in ("detect_batch", "welford_update", "ewm_update", "chan_merge"):
        assert getattr(kernels, name).signatures, name


def _boundary_cases(seed: int):
    """Series states (count, mean, spread) and one value each, many of them at or next to the threshold of the
    z-score, over the whole range of doubles: the division-free test must judge each as the square root does."""
    rng = np.random.default_rng(seed)
    counts, means, spreads, values = [], [], [], []
    for scale in (1e-300, 1e-200, 1e-155, 1e-140, 1e-20, 1.0, 1e20, 1e140, 1e150, 1e155, 1e200, 1e300):
        for _ in range(40):
            c = int(rng.integers(2, 10**6))
            mu = float(rng.normal(0.0, scale))
            spread = float(rng.uniform(0.0, 4.0) * scale * scale * c)  # may under- or overflow: both are cases
            counts.append(c)
            means.append(mu)
            spreads.append(spread)
            values.append(mu + float(rng.normal(0.0, 3.0 * scale)))
    for std in (3e-160, 1e-159, 7e-158, 1e-155):  # mean 0: d^2 and the spread are subnormal, precision lost
        for c in (2, 3, 4, 7, 1000):
            counts.append(c)
            means.append(0.0)
            spreads.append(std * std * c)
            values.append(std)
    return counts, means, spreads, values


@pytest.mark.parametrize("threshold", [-1.0, 0.0, 1e-300, 0.5, 2.0, 3.0, 1e160])
@pytest.mark.parametrize("mode", ["cumulative", "exponential"])
def test_stream_kernels_judge_every_value_as_the_square_root_does(mode, threshold):
    counts, means, spreads, values = _boundary_cases(7)
    ids, xs = [], []
    for s, (c, mu, spread) in enumerate(zip(counts, means, spreads)):
        std = math.sqrt(spread / c if mode == "cumulative" else spread)
        edge = threshold * std
        for x in (values[s], mu + edge, mu - edge, mu + math.nextafter(edge, math.inf),
                  mu - math.nextafter(edge, math.inf), mu + math.nextafter(edge, 0.0), mu + 1e-9 * edge + edge):
            if math.isfinite(x):
                ids.append(s)
                xs.append(x)
    judged = []
    for s, x in zip(ids, xs):  # the exact rule, in Python, on the state before the value (one value a call)
        c, mu, spread = counts[s], means[s], spreads[s]
        std = math.sqrt(spread / c if mode == "cumulative" else spread)
        judged.append(abs(x - mu) > threshold * std)
    for j, (s, x) in enumerate(zip(ids, xs)):
        count = np.array(counts, dtype=np.int64)
        mean, spread = np.array(means), np.array(spreads)
        idx, *out = outs(1)
        if mode == "cumulative":
            k = kernels.welford_update(np.array([s]), np.array([x]), count, mean, spread, threshold, 2, False,
                                       idx, *out)
        else:
            k = kernels.ewm_update(np.array([s]), np.array([x]), count, mean, spread, 0.05, threshold, 2, False,
                                   idx, *out)
        assert bool(k) == judged[j], (j, s, x, counts[s], means[s], spreads[s])
    assert 0 < sum(judged) < len(judged)  # both judgements occur
