"""DetectStream's rules beyond the plain running statistics, in numba: the exclusion limit, the repeat cooldown
and the anomaly-likelihood score (Ahmad et al. 2017), in one per-value loop, stream_update, which runs the plain
Welford and Finch loops of kernels.py for today's options. Arrays and scalars only, as kernels.py.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from streamer.kernels import _check_batch, _zscore, ewm_update, welford_update

# The likelihood score's floors on the long-term mean and variance of the short averages, as the reference
# implementation has them (numenta/nupic, anomaly_likelihood.py, estimateNormal's lower-bound check).
LIKELIHOOD_MEAN_FLOOR = 0.03
LIKELIHOOD_VAR_FLOOR = 0.0003
_SQRT2 = math.sqrt(2.0)
EPISODE_OPENED, EPISODE_UPDATED, EPISODE_RESOLVED = 0, 1, 2  # the kinds of episode change in ev[:, 1]
NO_SUPPRESS = np.zeros(3, dtype=np.float64)  # min_deviation, min_relative_deviation, direction: all off
_I0, _F0 = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
# stream_update's episode arguments from `times` on, when episodes are off (resolve_after 0)
NO_EPISODES = (_I0, 0, _I0, _I0, _I0, _F0, _F0, np.zeros((0, 4), dtype=np.int64), np.zeros((0, 5)),
               np.zeros(1, dtype=np.int64))


@numba.njit(nogil=True, cache=True)
def _stream(ids, values, count, mean, spread, exponential, alpha, threshold, warmup, exclude, exclude_limit,
            cooldown, streak, hold, likelihood, window, tail_threshold, learning, lcount, lmean, lvar, ring,
            idx_out, mean_out, std_out, z_out, tail_out, suppress, resolve_after, times, now_ns,
            ep_run, ep_start, ep_count, ep_peak_z, ep_peak_value, ev, ev_stats, ev_n):
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
    if len(suppress) != 3:
        raise ValueError("suppress is (min_deviation, min_relative_deviation, direction)")
    min_deviation, min_relative, direction = suppress[0], suppress[1], suppress[2]
    if resolve_after > 0:
        if (len(ep_run) < n_series or len(ep_start) < n_series or len(ep_count) < n_series
                or len(ep_peak_z) < n_series or len(ep_peak_value) < n_series):
            raise ValueError("episodes need ep_run, ep_start, ep_count, ep_peak_z and ep_peak_value as long as the "
                             "state")
        if (len(times) < len(values) or ev.shape[0] < len(values) or ev.shape[1] < 4
                or ev_stats.shape[0] < len(values) or ev_stats.shape[1] < 5 or len(ev_n) < 1):
            raise ValueError("episodes need times, ev (n x 4), ev_stats (n x 5) and ev_n")
    e = 0
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
        if outlier and (min_deviation > 0.0 or min_relative > 0.0 or direction != 0.0):
            # what does not matter is normal (and is taken in as normal): too small a deviation, absolute or
            # relative to the mean, or on the other side than `direction` (1: up, 2: down)
            dev = x - mu
            if (abs(dev) < min_deviation or abs(dev) < min_relative * abs(mu)
                    or direction == 1.0 and not dev > 0.0 or direction == 2.0 and not dev < 0.0):
                outlier = False
        if resolve_after > 0:
            # Episodes: one opens at an outlier of a series with none open, grows with each further outlier and
            # resolves at the resolve_after-th normal value in a row. ep_run[s] is 0 with none open, else 1 +
            # the normal values since its last outlier. Each change is a row of ev: (metric, kind, start, count)
            # and of ev_stats: (peak |z|, the value at it, and the metric's mean, stddev and z).
            run = ep_run[s]
            kind = -1
            if outlier:
                az = abs(_zscore(d, std))
                if run == 0:
                    kind = EPISODE_OPENED
                    ep_start[s] = times[i] if times[i] != 0 else now_ns
                    ep_count[s] = 1
                    ep_peak_z[s] = az
                    ep_peak_value[s] = x
                else:
                    kind = EPISODE_UPDATED
                    ep_count[s] += 1
                    if az > ep_peak_z[s]:
                        ep_peak_z[s] = az
                        ep_peak_value[s] = x
                ep_run[s] = 1
            elif run > 0:
                if run >= resolve_after:  # this is the resolve_after-th normal value since the last outlier
                    kind = EPISODE_RESOLVED
                    ep_run[s] = 0
                else:
                    ep_run[s] = run + 1
            if kind >= 0:
                ev[e, 0] = i
                ev[e, 1] = kind
                ev[e, 2] = ep_start[s]
                ev[e, 3] = ep_count[s]
                ev_stats[e, 0] = ep_peak_z[s]
                ev_stats[e, 1] = ep_peak_value[s]
                ev_stats[e, 2] = mu
                ev_stats[e, 3] = std
                ev_stats[e, 4] = _zscore(d, std) if c >= need else 0.0
                e += 1
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
    ev_n[0] = e
    return k


@numba.njit(nogil=True, cache=True)
def stream_update(ids, values, count, mean, spread, exponential, alpha, threshold, warmup, exclude, exclude_limit,
                  cooldown, streak, hold, likelihood, window, tail_threshold, learning, lcount, lmean, lvar, ring,
                  idx_out, mean_out, std_out, z_out, tail_out, suppress, resolve_after, times, now_ns,
                  ep_run, ep_start, ep_count, ep_peak_z, ep_peak_value, ev, ev_stats, ev_n):
    """DetectStream: judge each value against its series' running state, then take it in; every rule.

    In order, per metric (non-finite values are skipped: neither judged nor taken in):
    - z-score: once the series has taken in >= max(warmup, 2) values, z = (x - mean) / stddev (population),
      and x is an outlier when |x - mean| > threshold * stddev.
    - likelihood (SCORE_LIKELIHOOD; Ahmad et al. 2017): the raw score erf(|z| / sqrt 2) (0 in the warmup)
      enters the series' ring of the last `short` = ring.shape[1] raw scores; their average is judged against
      the mean and variance of the earlier averages (Finch 2009 with weight max(1/window, 1/n), floored at
      0.03 and 0.0003): tail = Q((average - mean) / stddev). Then x is an outlier instead when the series has
      taken in >= max(warmup, 2, learning) values and tail < tail_threshold. tail_out[j] is the tail.
    - suppress = (min_deviation, min_relative_deviation, direction): an outlier is judged normal instead when
      |x - mean| < min_deviation, or < min_relative_deviation * |mean|, or direction is 1 (up) and x <= mean or
      2 (down) and x >= mean (0: both sides). Everything below sees that judgement.
    - episodes (resolve_after > 0): per series, an episode opens at an outlier when none is open, counts each
      further outlier (and its peak |z|), and resolves at the resolve_after-th normal value in a row; state in
      ep_run (0: none open, else 1 + normal values since the last outlier), ep_start (the opening value's time,
      times[i], or now_ns when that is 0), ep_count, ep_peak_z, ep_peak_value. Each change is a row of ev
      (metric, kind EPISODE_*, start, count) and ev_stats (peak |z|, its value, and the metric's mean, stddev
      and z); ev_n[0] says how many rows.
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
    if (not likelihood and cooldown <= 0 and (not exclude or exclude_limit <= 0) and resolve_after <= 0
            and suppress[0] <= 0.0 and suppress[1] <= 0.0 and suppress[2] == 0.0):
        ev_n[0] = 0
        if exponential:
            return ewm_update(ids, values, count, mean, spread, alpha, threshold, warmup, exclude,
                              idx_out, mean_out, std_out, z_out)
        return welford_update(ids, values, count, mean, spread, threshold, warmup, exclude,
                              idx_out, mean_out, std_out, z_out)
    return _stream(ids, values, count, mean, spread, exponential, alpha, threshold, warmup, exclude,
                   exclude_limit, cooldown, streak, hold, likelihood, window, tail_threshold, learning,
                   lcount, lmean, lvar, ring, idx_out, mean_out, std_out, z_out, tail_out, suppress, resolve_after,
                   times, now_ns, ep_run, ep_start, ep_count, ep_peak_z, ep_peak_value, ev, ev_stats, ev_n)


def compile_all() -> None:
    """Compile (or load numba's cache of) stream_update in the argument types the service passes, every path."""
    ids = np.zeros(2, dtype=np.int64)
    values = np.array([1.0, 2.0])
    idx = np.empty(2, dtype=np.int32)
    out = [np.empty(2, dtype=np.float64) for _ in range(3)]
    episodes = (ids, 1, *(np.zeros(1, dtype=np.int64) for _ in range(3)), np.zeros(1), np.zeros(1),
                np.zeros((2, 4), dtype=np.int64), np.zeros((2, 5)), np.zeros(1, dtype=np.int64))
    for exponential in (False, True):
        for likelihood in (False, True):
            for resolve_after, eps in ((0, NO_EPISODES), (10, episodes)):
                count, ints = np.zeros(1, dtype=np.int64), [np.zeros(1, dtype=np.int64) for _ in range(3)]
                floats = [np.zeros(1, dtype=np.float64) for _ in range(4)]
                stream_update(ids, values, count, floats[0], floats[1], exponential, 0.05, 2.0, 2, True, 10, 1,
                              ints[0], ints[1], likelihood, 8640, 1e-5, 300, ints[2], floats[2], floats[3],
                              np.zeros((1, 10)), idx, *out, np.empty(2), NO_SUPPRESS, resolve_after, *eps)


__all__ = ["stream_update", "compile_all", "LIKELIHOOD_MEAN_FLOOR", "LIKELIHOOD_VAR_FLOOR", "NO_SUPPRESS",
           "NO_EPISODES", "EPISODE_OPENED", "EPISODE_UPDATED", "EPISODE_RESOLVED"]
