"""The values OTLP data points are judged by: gauges as they are, sums as rates, histograms by their mean.

One kernel over a batch's points, in order, with the per-series memory of the last cumulative point (its
value, count, time and start time). Arrays and scalars only; the slow twin is tests/naive.py:derive.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from streamer import jit_cache  # noqa: F401  (sets numba's cache directory, before the first @njit below)

# What a point is (the `kind` column).
GAUGE = 0      # a Gauge, or a non-monotonic Sum: the value itself
CUMULATIVE = 1  # a monotonic cumulative Sum: (value - last value) / (time - last time), per second
DELTA = 2       # a delta Sum: value / (time - start time), per second
HIST_DELTA = 3  # a delta Histogram: sum / count
HIST_CUMULATIVE = 4  # a cumulative Histogram: (sum - last sum) / (count - last count)


@numba.njit(nogil=True, cache=True)
def derive(kind, ids, value, count, time, start, last_value, last_count, last_time, last_start, out):
    """out[i]: the value point i is judged by, NaN when it has none (a series' first cumulative point, a
    counter reset or a new start time, which start over without a flag; no new observations in a cumulative
    histogram; a point not newer than the series' last).

    value: the point's value (for histograms, its sum); count: a histogram's count; time, start: the point's
    time and start time in ns. last_*: per series, updated in place for cumulative points (last_time 0: no
    point yet). Returns the number of points that started their series over (reset or new start time).
    """
    resets = 0
    for i in range(len(ids)):
        k = kind[i]
        x = value[i]
        if k == GAUGE:
            out[i] = x
            continue
        if k == DELTA:
            dt = time[i] - start[i]
            out[i] = x / (dt * 1e-9) if start[i] > 0 and dt > 0 else math.nan
            continue
        if k == HIST_DELTA:
            out[i] = x / count[i] if count[i] > 0 else math.nan
            continue
        s = ids[i]
        out[i] = math.nan
        if last_time[s] != 0 and time[i] <= last_time[s] and start[i] == last_start[s]:
            continue  # not newer than what the series has seen: a repeat, nothing to judge or remember
        if last_time[s] != 0 and start[i] == last_start[s]:
            if k == CUMULATIVE:
                if x >= last_value[s]:
                    out[i] = (x - last_value[s]) / ((time[i] - last_time[s]) * 1e-9)
                else:
                    resets += 1
            else:
                dc = count[i] - last_count[s]
                if dc > 0:
                    out[i] = (x - last_value[s]) / dc
                elif dc < 0:
                    resets += 1
        elif last_time[s] != 0:
            resets += 1
        last_value[s] = x
        last_count[s] = count[i]
        last_time[s] = time[i]
        last_start[s] = start[i]
    return resets


def compile_all() -> None:
    """Compile (or load from numba's cache) derive in the types otlp.py gives it."""
    n = 5
    f, i = np.zeros(n), np.zeros(n, dtype=np.int64)
    derive(np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64), f, f.copy(), i + 1, i.copy(),
           f.copy(), f.copy(), i.copy(), i.copy(), f.copy())
