"""Slow, obviously correct loop references for streamer/kernels.py, in plain Python floats and lists.

Slot-based versions mirror the kernels' arguments (minus the out arrays) and return (indices, mean, std, z)
lists; name-based versions (`detect`, `stream`) take a batch of (name, value) pairs. `stream_update` and
`stream` hold every DetectStream rule (issue 15); `welford_update` and `ewm_update` the kernels of that name.
"""
from __future__ import annotations

import math
import statistics


def zscore(diff: float, std: float) -> float:
    """(x - mean) / std, with +-inf for std 0 and x != mean, and 0 for x == mean."""
    if std > 0:
        return diff / std
    return math.copysign(math.inf, diff) if diff != 0 else 0.0


def batch_stats(values: list[float]) -> tuple[float, float]:
    """Population mean and stddev of the finite values: exact (statistics uses rationals), then rounded."""
    finite = [x for x in values if math.isfinite(x)]
    if not finite:
        return 0.0, 0.0
    return float(statistics.mean(finite)), float(statistics.pstdev(finite))


def detect_batch(ids, values, n_series, threshold):
    """Unary Detect: per series, flag finite x with |x - mean| > threshold * std over the batch."""
    ids, values = [int(s) for s in ids], [float(x) for x in values]
    stats = [batch_stats([x for s2, x in zip(ids, values) if s2 == s]) for s in range(n_series)]
    out = ([], [], [], [])
    for i, (s, x) in enumerate(zip(ids, values)):
        mean, std = stats[s]
        if math.isfinite(x) and abs(x - mean) > threshold * std:
            _append(out, i, mean, std, zscore(x - mean, std))
    return out


def welford_update(ids, values, count, mean, m2, threshold, warmup, exclude_outliers):
    """MODE_CUMULATIVE, one value at a time (Welford 1962); count/mean/m2 are lists, updated in place.
    With exclude_outliers, a flagged value is not added unless its stddev is 0 (no limit, no cooldown)."""
    out = ([], [], [], [])
    for i, (s, x) in enumerate(zip(ids, values)):
        s, x = int(s), float(x)
        if not math.isfinite(x):
            continue
        flagged = False
        std = 0.0
        if count[s] >= max(warmup, 2):
            std = math.sqrt(m2[s] / count[s])
            if abs(x - mean[s]) > threshold * std:
                flagged = True
                _append(out, i, mean[s], std, zscore(x - mean[s], std))
        if flagged and exclude_outliers and std > 0:
            continue
        count[s] += 1
        delta = x - mean[s]
        mean[s] += delta / count[s]
        m2[s] += delta * (x - mean[s])
    return out


def ewm_update(ids, values, count, mean, var, alpha, threshold, warmup, exclude_outliers):
    """MODE_EXPONENTIAL, one value at a time (Finch 2009), the n-th value taken in with weight max(alpha, 1/n);
    count/mean/var are lists, updated in place. Exclusion as welford_update's."""
    out = ([], [], [], [])
    for i, (s, x) in enumerate(zip(ids, values)):
        s, x = int(s), float(x)
        if not math.isfinite(x):
            continue
        flagged = False
        std = 0.0
        if count[s] >= max(warmup, 2):
            std = math.sqrt(var[s])
            if abs(x - mean[s]) > threshold * std:
                flagged = True
                _append(out, i, mean[s], std, zscore(x - mean[s], std))
        if flagged and exclude_outliers and std > 0:
            continue
        count[s] += 1
        if count[s] == 1:
            mean[s], var[s] = x, 0.0
        else:
            weight = max(alpha, 1 / count[s])
            diff = x - mean[s]
            incr = weight * diff
            mean[s] += incr
            var[s] = (1 - weight) * (var[s] + diff * incr)
    return out


class Series:
    """One series' state for `stream_update`, every rule's, as plain fields."""

    def __init__(self):
        self.n = 0             # values taken in
        self.mean = 0.0
        self.spread = 0.0      # M2 (cumulative) or the variance (exponential)
        self.excluded_run = 0  # excluded values since the last value judged normal
        self.hold = 0          # normal values still needed before the next outlier is reported
        self.raw = []          # likelihood: every raw score so far (the last `short` are averaged)
        self.averages = 0      # likelihood: short averages taken into the long-term mean and variance
        self.long_mean = 0.0
        self.long_var = 0.0
        self.episode = None    # alerts: the open episode, a dict (start, count, peak_z, peak_value, normal), or None


def stream_update(ids, values, series, *, exponential=False, alpha=0.05, threshold=2.0, warmup=10,
                  exclude=False, exclude_limit=0, cooldown=0, likelihood=False, short=10, window=8640,
                  tail_threshold=1e-5, learning=300, min_deviation=0.0, min_relative=0.0, direction="both",
                  resolve_after=0, times=None, episodes=None):
    """Every DetectStream rule of kernels.stream_update, one value at a time; `series` is a list of Series
    (indexed by ids, updated in place). Returns (indices, mean, std, z, tail).

    Alerts (issue 20): a value is an outlier only if also |x - mean| >= min_deviation, >= min_relative * |mean|,
    and on the `direction` ("both", "up": x > mean, "down"); a suppressed value is normal. With resolve_after
    > 0, `episodes` (a list) receives (i, kind, start, count, peak_z, peak_value) as episodes open ("opened" at
    an outlier when none is open), grow ("updated" at each further outlier) and resolve ("resolved" at the
    resolve_after-th normal value in a row); `times` holds each value's time (start is the opening value's)."""
    out = ([], [], [], [], [])
    for i, (s, x) in enumerate(zip(ids, values)):
        x = float(x)
        if not math.isfinite(x):
            continue
        st = series[int(s)]
        judged = st.n >= max(warmup, 2)
        std = 0.0
        if judged:
            std = math.sqrt(st.spread) if exponential else math.sqrt(st.spread / st.n)
        z = zscore(x - st.mean, std) if judged else 0.0
        outlier = judged and abs(x - st.mean) > threshold * std
        tail = 0.0
        if likelihood:
            st.raw.append(math.erf(abs(z) / math.sqrt(2)) if judged else 0.0)
            recent = st.raw[-short:]
            average = sum(recent) / len(recent)
            tail = 1.0
            if st.averages > 0:
                m = max(st.long_mean, 0.03)
                v = max(st.long_var, 0.0003)
                tail = 0.5 * math.erfc((average - m) / math.sqrt(v) / math.sqrt(2))
            st.averages += 1
            if st.averages == 1:
                st.long_mean, st.long_var = average, 0.0
            else:
                weight = max(1 / window, 1 / st.averages)
                diff = average - st.long_mean
                st.long_mean += weight * diff
                st.long_var = (1 - weight) * (st.long_var + diff * weight * diff)
            outlier = st.n >= max(warmup, 2, learning) and tail < tail_threshold
        d = x - st.mean
        if outlier and (abs(d) < min_deviation or abs(d) < min_relative * abs(st.mean)
                        or direction == "up" and not d > 0 or direction == "down" and not d < 0):
            outlier = False
        if resolve_after > 0:
            ep = st.episode
            if outlier and ep is None:
                ep = st.episode = dict(start=times[i], count=1, peak_z=abs(z), peak_value=x, normal=0)
                episodes.append((i, "opened", ep["start"], 1, ep["peak_z"], x))
            elif outlier:
                ep["count"] += 1
                ep["normal"] = 0
                if abs(z) > ep["peak_z"]:
                    ep["peak_z"], ep["peak_value"] = abs(z), x
                episodes.append((i, "updated", ep["start"], ep["count"], ep["peak_z"], ep["peak_value"]))
            elif ep is not None:
                ep["normal"] += 1
                if ep["normal"] >= resolve_after:
                    st.episode = None
                    episodes.append((i, "resolved", ep["start"], ep["count"], ep["peak_z"], ep["peak_value"]))
        report = outlier
        if cooldown > 0:
            if outlier:
                report = st.hold == 0
                st.hold = cooldown
            else:
                st.hold = max(st.hold - 1, 0)
        if report:
            for column, v in zip(out, (i, st.mean, std, z, tail)):
                column.append(v)
        if exclude and outlier and std > 0 and (exclude_limit <= 0 or st.excluded_run < exclude_limit):
            st.excluded_run += 1
            continue
        if not outlier:
            st.excluded_run = 0
        st.n += 1
        if exponential:
            if st.n == 1:
                st.mean, st.spread = x, 0.0
            else:
                weight = max(alpha, 1 / st.n)
                diff = x - st.mean
                st.mean += weight * diff
                st.spread = (1 - weight) * (st.spread + diff * weight * diff)
        else:
            delta = x - st.mean
            st.mean += delta / st.n
            st.spread += delta * (x - st.mean)
    return out


def stream(batch, state, *, threshold=2.0, warmup=10, exclude=False, alpha=0.05, mode="cumulative",
           exclude_limit=None, cooldown=0, score="zscore", short=10, window=8640, tail_threshold=1e-5,
           learning=300):
    """DetectStream on a batch of (name, value) pairs with every option, the server's defaults as defaults
    (exclude_limit None: the warmup, at least 2); `state` (a dict) carries over batches. Returns (indices, mean,
    std, z, tail)."""
    slots = state.setdefault("slots", {})
    series = state.setdefault("series", [])
    ids = []
    for name, _ in batch:
        if name not in slots:
            slots[name] = len(slots)
            series.append(Series())
        ids.append(slots[name])
    return stream_update(ids, [x for _, x in batch], series, exponential=mode == "exponential", alpha=alpha,
                         threshold=threshold, warmup=warmup, exclude=exclude,
                         exclude_limit=max(warmup, 2) if exclude_limit is None else exclude_limit, cooldown=cooldown,
                         likelihood=score == "likelihood", short=short, window=window,
                         tail_threshold=tail_threshold, learning=learning)


def chan_merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Merge two cumulative states element by element (Chan, Golub & LeVeque 1979); returns three lists."""
    count, mean, m2 = [], [], []
    for na, ma, qa, nb, mb, qb in zip(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
        na, nb = int(na), int(nb)
        n = na + nb
        if n == 0:
            count.append(0), mean.append(0.0), m2.append(0.0)
            continue
        delta = mb - ma
        count.append(n)
        mean.append(ma + delta * nb / n)
        m2.append(qa + qb + delta * delta * na * nb / n)
    return count, mean, m2


def detect(batch, threshold=2.0):
    """Unary Detect on a batch of (name, value) pairs; returns (indices, mean, std, z)."""
    slots: dict[str, int] = {}
    ids = [slots.setdefault(name, len(slots)) for name, _ in batch]
    return detect_batch(ids, [x for _, x in batch], len(slots), threshold)


def _append(out, i, mean, std, z):
    for column, v in zip(out, (i, mean, std, z)):
        column.append(v)


def derive(kind, ids, value, count, time, start, last):
    """streamer/rates.derive, point by point: the value each OTLP point is judged by (None: none) and the
    per-series memory `last` (slot -> (value, count, time, start)) after the batch; kinds as rates.py."""
    out = []
    last = dict(last)
    for k, s, x, c, t, st in zip(kind, ids, value, count, time, start):
        if k == 0:  # gauge
            out.append(x)
        elif k == 2:  # delta sum: per second of its interval
            out.append(x / ((t - st) / 1e9) if st > 0 and t > st else None)
        elif k == 3:  # delta histogram: its mean
            out.append(x / c if c > 0 else None)
        else:
            prev = last.get(s)
            judged = None
            if prev is not None and prev[3] == st and t <= prev[2]:
                out.append(None)  # not newer: ignored
                continue
            if prev is not None and prev[3] == st:  # same start: no restart
                if k == 1 and x >= prev[0]:
                    judged = (x - prev[0]) / ((t - prev[2]) / 1e9)
                elif k == 4 and c > prev[1]:
                    judged = (x - prev[0]) / (c - prev[1])
            out.append(judged)
            last[s] = (x, c, t, st)
    return out, last
