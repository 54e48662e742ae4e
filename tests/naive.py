"""Slow, obviously correct loop references for streamer/kernels.py, in plain Python floats and lists.

Slot-based versions mirror the kernels' arguments (minus the out arrays) and return (indices, mean, std, z)
lists; name-based versions (`detect`, `welford_stream`, `ewm_stream`) take a batch of (name, value) pairs.
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
    """MODE_CUMULATIVE, one value at a time (Welford 1962); count/mean/m2 are lists, updated in place."""
    out = ([], [], [], [])
    for i, (s, x) in enumerate(zip(ids, values)):
        s, x = int(s), float(x)
        if not math.isfinite(x):
            continue
        flagged = False
        if count[s] >= max(warmup, 2):
            std = math.sqrt(m2[s] / count[s])
            if abs(x - mean[s]) > threshold * std:
                flagged = True
                _append(out, i, mean[s], std, zscore(x - mean[s], std))
        if flagged and exclude_outliers:
            continue
        count[s] += 1
        delta = x - mean[s]
        mean[s] += delta / count[s]
        m2[s] += delta * (x - mean[s])
    return out


def ewm_update(ids, values, count, mean, var, alpha, threshold, warmup, exclude_outliers):
    """MODE_EXPONENTIAL, one value at a time (Finch 2009); count/mean/var are lists, updated in place."""
    out = ([], [], [], [])
    for i, (s, x) in enumerate(zip(ids, values)):
        s, x = int(s), float(x)
        if not math.isfinite(x):
            continue
        flagged = False
        if count[s] >= max(warmup, 2):
            std = math.sqrt(var[s])
            if abs(x - mean[s]) > threshold * std:
                flagged = True
                _append(out, i, mean[s], std, zscore(x - mean[s], std))
        if flagged and exclude_outliers:
            continue
        count[s] += 1
        if count[s] == 1:
            mean[s], var[s] = x, 0.0
        else:
            diff = x - mean[s]
            incr = alpha * diff
            mean[s] += incr
            var[s] = (1 - alpha) * (var[s] + diff * incr)
    return out


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


def welford_stream(batch, state, *, threshold=2.0, warmup=10, exclude=False, alpha=None):
    """DetectStream MODE_CUMULATIVE on a batch of (name, value) pairs; `state` (a dict) carries over batches.

    `alpha` is accepted and ignored, so callers can pass the same keywords to both modes.
    """
    return _by_name(welford_update, batch, state, (threshold, warmup, exclude))


def ewm_stream(batch, state, *, threshold=2.0, warmup=10, exclude=False, alpha=0.05):
    """DetectStream MODE_EXPONENTIAL on (name, value) pairs; `state` (a dict) carries over batches."""
    return _by_name(ewm_update, batch, state, (alpha, threshold, warmup, exclude))


def _by_name(update, batch, state, params):
    slots = state.setdefault("slots", {})
    count, mean, spread = (state.setdefault(k, []) for k in ("count", "mean", "spread"))
    ids = []
    for name, _ in batch:
        if name not in slots:
            slots[name] = len(slots)
            count.append(0), mean.append(0.0), spread.append(0.0)
        ids.append(slots[name])
    return update(ids, [x for _, x in batch], count, mean, spread, *params)


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
