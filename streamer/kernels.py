"""Numba kernels: per-series batch statistics; DetectStream's rules (Welford and bias-corrected exponentially
weighted running state, exclusion, cooldown, the anomaly-likelihood score); Chan merge.

Arrays and scalars in, arrays and counts out: no grpc, no protobuf, no logging, no per-metric Python objects.
"""
from __future__ import annotations

import math

import numba
import numpy as np

# Every kernel writes its flagged metrics compactly: positions 0..k-1 of idx_out (int32 metric positions,
# ascending), mean_out / std_out (the statistics the value was judged against) and z_out (signed z-score),
# and returns k. The out arrays must be at least as long as `values`.


@numba.njit(nogil=True, cache=True, inline="always")
def _zscore(diff, std):
    # (x - mean) / std, with std 0 meaning "any difference is infinitely far": +-inf, and 0 (not NaN) for
    # x == mean. Explicit because numba's default error model raises ZeroDivisionError on x / 0.0.
    if std > 0.0:
        return diff / std
    if diff > 0.0:
        return math.inf
    if diff < 0.0:
        return -math.inf
    return 0.0


@numba.njit(nogil=True, cache=True)
def _check_batch(ids, values, n_series, idx_out, mean_out, std_out, z_out):
    # Checked up front, before any state is written: numba does no bounds checking, so an id outside the
    # state arrays would silently corrupt memory, and raising half way through would leave a batch half
    # applied. One pass over the ids: well under 1 ns per metric (measured), next to ~7 ns for the update.
    n = len(values)
    if len(ids) != n:
        raise ValueError("ids and values must have the same length")
    if len(idx_out) < n or len(mean_out) < n or len(std_out) < n or len(z_out) < n:
        raise ValueError("the out arrays must be at least as long as values")
    if n > 0:
        lo = hi = ids[0]
        for i in range(1, n):  # a branch-free min/max, which LLVM vectorizes
            lo = min(lo, ids[i])
            hi = max(hi, ids[i])
        if lo < 0 or hi >= n_series:
            raise ValueError("a series id is outside the state arrays")


@numba.njit(nogil=True, cache=True)
def detect_batch(ids, values, n_series, threshold, idx_out, mean_out, std_out, z_out):
    """Unary Detect: flag finite x with |x - mean| > threshold * std, mean and std per series over the batch.

    Population statistics over each series' finite values only (NaN and +-Inf neither count nor get
    flagged). Two passes: the mean, then the sum of squared deviations from it (no E[x^2] - E[x]^2). The first
    pass sums x - (the series' first finite value) rather than x, so a series on a large offset (1e9 with
    unit noise) keeps its digits, and a constant series gets exactly mean = x, std = 0.
    Returns the number flagged; see the module comment for the out arrays.
    """
    _check_batch(ids, values, n_series, idx_out, mean_out, std_out, z_out)
    n = len(values)
    count = np.zeros(n_series, dtype=np.int64)
    shift = np.zeros(n_series, dtype=np.float64)
    total = np.zeros(n_series, dtype=np.float64)
    for i in range(n):
        x = values[i]
        if not math.isfinite(x):
            continue
        s = ids[i]
        if count[s] == 0:
            shift[s] = x
        count[s] += 1
        total[s] += x - shift[s]
    mean = np.empty(n_series, dtype=np.float64)
    for s in range(n_series):
        mean[s] = shift[s] + total[s] / count[s] if count[s] > 0 else 0.0
    sq = np.zeros(n_series, dtype=np.float64)
    for i in range(n):
        x = values[i]
        if not math.isfinite(x):
            continue
        d = x - mean[ids[i]]
        sq[ids[i]] += d * d
    std = np.empty(n_series, dtype=np.float64)
    for s in range(n_series):
        std[s] = math.sqrt(sq[s] / count[s]) if count[s] > 0 else 0.0
    k = 0
    for i in range(n):
        x = values[i]
        if not math.isfinite(x):
            continue
        s = ids[i]
        d = x - mean[s]
        if abs(d) > threshold * std[s]:
            idx_out[k] = i
            mean_out[k] = mean[s]
            std_out[k] = std[s]
            z_out[k] = _zscore(d, std[s])
            k += 1
    return k


# The likelihood score's floors on the long-term mean and variance of the short averages, as the reference
# implementation has them (numenta/nupic, anomaly_likelihood.py, estimateNormal's lower-bound check).
LIKELIHOOD_MEAN_FLOOR = 0.03
LIKELIHOOD_VAR_FLOOR = 0.0003
_SQRT2 = math.sqrt(2.0)


@numba.njit(nogil=True, cache=True)
def _stream(ids, values, count, mean, spread, exponential, alpha, threshold, warmup, exclude, exclude_limit,
            cooldown, streak, hold, likelihood, window, tail_threshold, learning, lcount, lmean, lvar, ring,
            idx_out, mean_out, std_out, z_out, tail_out):
    # Every DetectStream rule, one value at a time; stream_update's docstring says what each does (and runs the
    # plain loops below for today's options).
    n_series = min(len(count), len(mean), len(spread))
    _check_batch(ids, values, n_series, idx_out, mean_out, std_out, z_out)
    if exclude and exclude_limit > 0 and len(streak) < n_series:
        raise ValueError("exclude_limit needs a streak array as long as the state")
    if cooldown > 0 and len(hold) < n_series:
        raise ValueError("cooldown needs a hold array as long as the state")
    if likelihood:
        if len(lcount) < n_series or len(lmean) < n_series or len(lvar) < n_series or ring.shape[0] < n_series:
            raise ValueError("the likelihood score needs lcount, lmean, lvar and ring as long as the state")
        if ring.shape[1] < 1 or window < 1:
            raise ValueError("likelihood_short and likelihood_window must be at least 1")
        if len(tail_out) < len(values):
            raise ValueError("tail_out must be at least as long as values")
    short = ring.shape[1]
    need = max(warmup, 2)
    judged_from = max(need, learning)
    k = 0
    for i in range(len(values)):
        x = values[i]
        if not math.isfinite(x):
            continue
        s = ids[i]
        c = count[s]
        mu = mean[s]
        std = 0.0
        d = 0.0
        outlier = False
        if c >= need:
            std = math.sqrt(spread[s]) if exponential else math.sqrt(spread[s] / c)
            d = x - mu
            outlier = abs(d) > threshold * std
        tail = 0.0
        if likelihood:
            # Ahmad, Lavin, Purdy & Agha 2017: the raw score erf(|z| / sqrt 2) (0 in the warmup), its average
            # over the last `short` values, and the tail probability of that average under a normal fitted
            # (exponentially weighted, bias-corrected start) to the earlier averages, floored.
            n = lcount[s]
            ring[s, n % short] = math.erf(abs(_zscore(d, std)) / _SQRT2) if c >= need else 0.0
            m = min(n + 1, short)
            total = 0.0
            for j in range(m):
                total += ring[s, j]
            avg = total / m
            tail = 1.0
            if n > 0:
                lm = max(lmean[s], LIKELIHOOD_MEAN_FLOOR)
                lv = max(lvar[s], LIKELIHOOD_VAR_FLOOR)
                tail = 0.5 * math.erfc((avg - lm) / math.sqrt(lv) / _SQRT2)
            n += 1
            lcount[s] = n
            if n == 1:
                lmean[s] = avg
                lvar[s] = 0.0
            else:
                w = max(1.0 / window, 1.0 / n)
                diff = avg - lmean[s]
                incr = w * diff
                lmean[s] += incr
                lvar[s] = (1.0 - w) * (lvar[s] + diff * incr)
            outlier = c >= judged_from and tail < tail_threshold
        report = outlier
        if cooldown > 0:  # values held back are judged and update the state as without the cooldown
            if outlier:
                report = hold[s] == 0
                hold[s] = cooldown
            elif hold[s] > 0:
                hold[s] -= 1
        if report:
            idx_out[k] = i
            mean_out[k] = mu
            std_out[k] = std
            z_out[k] = _zscore(d, std)
            if likelihood:
                tail_out[k] = tail
            k += 1
        if exclude:
            # Never while the stddev is 0 (a flat start would freeze); with a limit, not after exclude_limit
            # excluded values in a row until a value is judged normal again (a new level is learned).
            if outlier and std > 0.0:
                if exclude_limit <= 0:
                    continue
                if streak[s] < exclude_limit:
                    streak[s] += 1
                    continue
            elif not outlier and exclude_limit > 0:
                streak[s] = 0
        if exponential:
            count[s] = c + 1
            if c == 0:
                mean[s] = x
                spread[s] = 0.0
            else:
                # Finch 2009, "Incremental calculation of weighted mean and variance", section 9, from deviations
                # (never E[x^2] - E[x]^2), with the n-th value's weight max(alpha, 1/n): Welford's population
                # mean and variance exactly until 1/n falls below alpha, so the start is not biased to 0.
                w = alpha
                if c * alpha < 1.0:
                    w = max(alpha, 1.0 / (c + 1))
                diff = x - mu
                incr = w * diff
                mean[s] = mu + incr
                spread[s] = (1.0 - w) * (spread[s] + diff * incr)
        else:
            # Welford's update: M2 grows by delta * (x - new mean), a sum of products of small deviations, so a
            # series on a large offset loses no digits (unlike sum(x^2) - n * mean^2).
            c += 1
            delta = x - mu
            mu += delta / c
            count[s] = c
            mean[s] = mu
            spread[s] += delta * (x - mu)
    return k


@numba.njit(nogil=True, cache=True)
def stream_update(ids, values, count, mean, spread, exponential, alpha, threshold, warmup, exclude, exclude_limit,
                  cooldown, streak, hold, likelihood, window, tail_threshold, learning, lcount, lmean, lvar, ring,
                  idx_out, mean_out, std_out, z_out, tail_out):
    """DetectStream: judge each value against its series' running state, then take it in; every rule.

    In order, per metric (non-finite values are skipped: neither judged nor taken in):
    - z-score: once the series has taken in >= max(warmup, 2) values, z = (x - mean) / stddev (population),
      and x is an outlier when |x - mean| > threshold * stddev.
    - likelihood (SCORE_LIKELIHOOD; Ahmad et al. 2017): the raw score erf(|z| / sqrt 2) (0 in the warmup)
      enters the series' ring of the last `short` = ring.shape[1] raw scores; their average is judged against
      the mean and variance of the earlier averages (Finch 2009 with weight max(1/window, 1/n), floored at
      0.03 and 0.0003): tail = Q((average - mean) / stddev). Then x is an outlier instead when the series has
      taken in >= max(warmup, 2, learning) values and tail < tail_threshold. tail_out[j] is the tail.
    - cooldown (> 0): an outlier is reported only when the series' previous outlier is followed by at least
      `cooldown` values judged normal (hold[s] counts them down); held-back outliers still update the state.
    - exclude: an outlier is not taken in, unless its stddev is 0, or (exclude_limit > 0) the series has had
      exclude_limit excluded values in a row since its last normal value (streak[s]).
    - update: MODE_CUMULATIVE (not exponential) Welford 1962, spread = M2; MODE_EXPONENTIAL Finch 2009 with
      weight max(alpha, 1/n) for the n-th value taken in, spread = the variance.
    State arrays are updated in place; those of rules that are off may be empty. Returns the number of
    reported outliers, written to idx_out, mean_out, std_out, z_out (and tail_out) as the module comment says.
    """
    # The rules of today's options (the z-score, no cooldown, exclusion without a limit) run the plain Welford
    # and Finch loops: their per-value cost stays what it was (benchmarks/kernels_bench.py --against main).
    if not likelihood and cooldown <= 0 and (not exclude or exclude_limit <= 0):
        if exponential:
            return ewm_update(ids, values, count, mean, spread, alpha, threshold, warmup, exclude,
                              idx_out, mean_out, std_out, z_out)
        return welford_update(ids, values, count, mean, spread, threshold, warmup, exclude,
                              idx_out, mean_out, std_out, z_out)
    return _stream(ids, values, count, mean, spread, exponential, alpha, threshold, warmup, exclude,
                   exclude_limit, cooldown, streak, hold, likelihood, window, tail_threshold, learning,
                   lcount, lmean, lvar, ring, idx_out, mean_out, std_out, z_out, tail_out)


@numba.njit(nogil=True, cache=True)
def welford_update(ids, values, count, mean, m2, threshold, warmup, exclude_outliers,
                   idx_out, mean_out, std_out, z_out):
    """MODE_CUMULATIVE with the z-score, no cooldown and no exclusion limit: stream_update's rules in a loop of
    their own (the fused pass's call for today's options). count (int64), mean and m2 (Welford's M2) are the
    state, updated in place. Returns the number flagged; see the module comment for the out arrays."""
    _check_batch(ids, values, min(len(count), len(mean), len(m2)), idx_out, mean_out, std_out, z_out)
    need = max(warmup, 2)
    k = 0
    for i in range(len(values)):
        x = values[i]
        if not math.isfinite(x):
            continue
        s = ids[i]
        c = count[s]
        mu = mean[s]
        if c >= need:
            std = math.sqrt(m2[s] / c)
            d = x - mu
            if abs(d) > threshold * std:
                idx_out[k] = i
                mean_out[k] = mu
                std_out[k] = std
                z_out[k] = _zscore(d, std)
                k += 1
                if exclude_outliers and std > 0.0:  # never while the stddev is 0: a flat start would freeze
                    continue
        # Welford's update: M2 grows by delta * (x - new mean), a sum of products of small deviations, so a
        # series on a large offset loses no digits (unlike sum(x^2) - n * mean^2).
        c += 1
        delta = x - mu
        mu += delta / c
        count[s] = c
        mean[s] = mu
        m2[s] += delta * (x - mu)
    return k


@numba.njit(nogil=True, cache=True)
def ewm_update(ids, values, count, mean, var, alpha, threshold, warmup, exclude_outliers,
               idx_out, mean_out, std_out, z_out):
    """MODE_EXPONENTIAL with the z-score, no cooldown and no exclusion limit, as welford_update: count (int64:
    values taken in), mean and var are the state; the n-th value taken in has weight max(alpha, 1/n)
    (0 < alpha <= 1). Returns the number flagged."""
    _check_batch(ids, values, min(len(count), len(mean), len(var)), idx_out, mean_out, std_out, z_out)
    need = max(warmup, 2)
    # From the start_count-th value on 1/n < alpha by far more than rounding: the weight is alpha, and the
    # hot loop keeps one integer compare (no division) for the bias correction.
    start_count = int(math.ceil(1.0 / alpha)) + 1
    keep = 1.0 - alpha
    k = 0
    for i in range(len(values)):
        x = values[i]
        if not math.isfinite(x):
            continue
        s = ids[i]
        c = count[s]
        mu = mean[s]
        if c >= need:
            std = math.sqrt(var[s])
            d = x - mu
            if abs(d) > threshold * std:
                idx_out[k] = i
                mean_out[k] = mu
                std_out[k] = std
                z_out[k] = _zscore(d, std)
                k += 1
                if exclude_outliers and std > 0.0:
                    continue
        count[s] = c + 1
        if c == 0:
            mean[s] = x
            var[s] = 0.0
        else:
            # Finch 2009 section 9 with the bias-corrected weight, as stream_update
            w, w_keep = alpha, keep
            if c < start_count:
                w = max(alpha, 1.0 / (c + 1))
                w_keep = 1.0 - w
            diff = x - mu
            incr = w * diff
            mean[s] = mu + incr
            var[s] = w_keep * (var[s] + diff * incr)
    return k


@numba.njit(nogil=True, cache=True)
def chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Elementwise merge of two MODE_CUMULATIVE states into the state of both inputs' values together.

    Chan, Golub & LeVeque 1979 ("Updating formulae and a pairwise algorithm for computing sample
    variances"): n = na + nb; delta = mean_b - mean_a; mean = mean_a + delta * nb / n;
    M2 = M2_a + M2_b + delta^2 * na * nb / n. An empty side returns the other unchanged. Returns new arrays
    (count, mean, m2). Exponentially weighted states have no such merge: their weights depend on order.
    """
    n = len(count_a)
    if len(mean_a) != n or len(m2_a) != n or len(count_b) != n or len(mean_b) != n or len(m2_b) != n:
        raise ValueError("chan_merge: all six arrays must have the same length")
    count = np.empty(n, dtype=np.int64)
    mean = np.empty(n, dtype=np.float64)
    m2 = np.empty(n, dtype=np.float64)
    for s in range(n):
        na = count_a[s]
        nb = count_b[s]
        if nb == 0:
            count[s] = na
            mean[s] = mean_a[s]
            m2[s] = m2_a[s]
        elif na == 0:
            count[s] = nb
            mean[s] = mean_b[s]
            m2[s] = m2_b[s]
        else:
            c = na + nb
            delta = mean_b[s] - mean_a[s]
            count[s] = c
            mean[s] = mean_a[s] + delta * (nb / c)
            m2[s] = m2_a[s] + m2_b[s] + delta * delta * (na * (nb / c))
    return count, mean, m2


def compile_all() -> None:
    """Run every kernel once on tiny arrays, so JIT compilation (or loading numba's cache) happens now.

    Uses the argument types the service passes: int64 ids, float64 values, a Python float threshold and
    alpha, a Python int warmup and a Python bool exclude_outliers. Other types would compile again on
    first use, so callers should keep to these.
    """
    ids = np.zeros(2, dtype=np.int64)
    values = np.array([1.0, 2.0])
    idx = np.empty(2, dtype=np.int32)
    out = [np.empty(2, dtype=np.float64) for _ in range(3)]
    count = np.zeros(1, dtype=np.int64)
    mean = np.zeros(1, dtype=np.float64)
    spread = np.zeros(1, dtype=np.float64)
    detect_batch(ids, values, 1, 2.0, idx, *out)
    welford_update(ids, values, count, mean, spread, 2.0, 2, False, idx, *out)
    count[:] = 0
    ewm_update(ids, values, count, mean, spread, 0.05, 2.0, 2, False, idx, *out)
    for exponential in (False, True):
        count[:] = 0
        ints = [np.zeros(1, dtype=np.int64) for _ in range(3)]
        floats = [np.zeros(1, dtype=np.float64) for _ in range(2)]
        stream_update(ids, values, count, mean, spread, exponential, 0.05, 2.0, 2, True, 10, 1, ints[0], ints[1],
                      True, 8640, 1e-5, 300, ints[2], *floats, np.zeros((1, 10)), idx, *out, np.empty(2))
    chan_merge(count, mean, spread, count, mean, spread)


__all__ = ["detect_batch", "stream_update", "welford_update", "ewm_update", "chan_merge", "compile_all",
           "LIKELIHOOD_MEAN_FLOOR", "LIKELIHOOD_VAR_FLOOR"]
