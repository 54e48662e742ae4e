"""Series TTL: when each series was last seen, the session's clock, and which series came back after expiring.

A metric's time is its `Metric.time` when it has one and the batch's arrival time otherwise; the session's
clock is the latest such time it has seen (so data time when the collector sends times, as
shared/DECISIONS.md says). A series not seen for more than the TTL of that clock is expired: if its name comes
back before the table has swept it out, it starts fresh all the same. Arrays and scalars only.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from streamer.wire.primitives import HOT, at

NEVER = 0.0  # last_seen of a slot that holds no series (fresh or freed)


@njit(**HOT)
def batch_clock(times, now, clock):
    """The session clock after a batch whose metric times (ns since the epoch, 0: none) are `times`,
    arrival `now` (seconds), from `clock`."""
    c = clock
    for i in range(len(times)):
        t = at(times, i)
        x = now if t == 0 else t * 1e-9
        if x > c:
            c = x
    return c


@njit(**HOT)
def touch(ids, times, now, ttl, clock, last_seen, reset):
    """Note each metric's time in last_seen[ids[i]] (the latest wins) and advance clock[0] over them; with ttl > 0,
    write the slots whose series had been idle for more than ttl before this batch to `reset` (each once) and
    return how many: their state must be zeroed before they are judged."""
    c = batch_clock(times, now, clock[0])
    clock[0] = c
    cutoff = c - ttl if ttl > 0 else -np.inf
    k = 0
    for i in range(min(len(ids), len(times))):
        s = at(ids, i)
        t = at(times, i)
        x = now if t == 0 else t * 1e-9
        ls = last_seen[s]
        if ls != NEVER and ls < cutoff:
            reset[k] = s
            k += 1
            ls = NEVER
        if ls == NEVER or x > ls:
            last_seen[s] = x
    return k
