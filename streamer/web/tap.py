"""Taps: the recent values of the series someone views on the page, each with the mean and stddev it was judged
against, in a bounded ring per viewed series (nothing is kept for series nobody views).

The detector calls `Taps.observe` after each applied batch only while `Taps.active` is true (a plain attribute:
some page views a series). The band comes from the stream's own kernel (kernels.welford_update / ewm_update),
run on a one-series copy of the state, so there is no second implementation of the rule: see `judge_series`.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time

import numpy as np

from streamer import kernels
from streamer.state import MODE_EXPONENTIAL

RING = 2000  # values kept per viewed series


class _One:
    """A one-series state and the kernels' out arrays, for judging values one at a time."""

    def __init__(self, count: int = 0, mean: float = 0.0, spread: float = 0.0):
        self.count = np.array([count], dtype=np.int64)
        self.mean = np.array([mean], dtype=np.float64)
        self.spread = np.array([spread], dtype=np.float64)
        self.ids = np.zeros(1, dtype=np.int64)
        self.idx = np.empty(1, dtype=np.int32)
        self.out = [np.empty(1, dtype=np.float64) for _ in range(3)]

    def set(self, count, mean, spread) -> None:
        self.count[0], self.mean[0], self.spread[0] = count, mean, spread

    def _run(self, count, mean, spread, value, params, threshold, exclude) -> int:
        v = np.array([value], dtype=np.float64)
        if params.mode == MODE_EXPONENTIAL:
            return kernels.ewm_update(self.ids, v, count, mean, spread, float(params.alpha), float(threshold),
                                      int(params.warmup), bool(exclude), self.idx, *self.out)
        return kernels.welford_update(self.ids, v, count, mean, spread, float(threshold), int(params.warmup),
                                      bool(exclude), self.idx, *self.out)

    def judge(self, value: float, params) -> tuple[float | None, float | None, bool, float]:
        """(mean, stddev, flagged, zscore) of `value` against this state, then add it as the stream would.

        The band is the kernel's own output: a copy of the state judged with threshold -1 flags every value
        past the warmup (|x - mean| > -stddev) unless stddev and the difference are both 0, when the mean is x.
        mean and stddev are None during the warmup.
        """
        c, m, s = self.count.copy(), self.mean.copy(), self.spread.copy()
        if self._run(c, m, s, value, params, -1.0, False):
            mean, std = float(self.out[0][0]), float(self.out[1][0])
        elif self.count[0] >= max(int(params.warmup), 2) and np.isfinite(value):
            mean, std = float(value), 0.0
        else:
            mean = std = None
        flagged = bool(self._run(self.count, self.mean, self.spread, value, params, params.threshold,
                                 params.exclude_outliers))
        z = float(self.out[2][0]) if flagged else (0.0 if std is None or std == 0 else (value - mean) / std)
        return mean, std, flagged, z


def judge_series(values, params) -> tuple[list, list, list, list]:
    """Judge one series' values in order from an empty state with the stream's kernel: (means, stddevs, flags,
    zscores). For the backtest's chart; the backtest's counts come from the real stream (backtest.py)."""
    one = _One()
    means, stds, flags, zs = [], [], [], []
    for v in values:
        m, s, f, z = one.judge(float(v), params)
        means.append(m)
        stds.append(s)
        flags.append(f)
        zs.append(z)
    return means, stds, flags, zs


class Tap:
    """One viewed series of one session: its ring of judged values and the pages that view it."""

    def __init__(self, session: str, series: str, limit: int = RING):
        self.session = session
        self.series = series
        self.key = series.encode("utf-8")
        self.ring: collections.deque = collections.deque(maxlen=limit)
        self.viewers: set[asyncio.Queue] = set()
        self.slots: dict[int, int] = {}   # id(state) -> the series' slot in that state's table
        self.looked: dict[int, int] = {}  # id(state) -> len(table) when the slot was last looked for in vain
        self.one = _One()
        self.synced: int | None = None    # id(state) whose post-batch state `one` holds

    def slot(self, table) -> int:
        """The series' slot in `table`, or -1 (looked for again only once the table has grown)."""
        key = id(table)
        s = self.slots.get(key)
        if s is not None:
            return s
        n = len(table)
        if self.looked.get(key) == n:
            return -1
        self.looked[key] = n
        s = find_slot(table, self.key)
        if s >= 0:
            self.slots[key] = s
        return s


def find_slot(table, key: bytes) -> int:
    """The slot of the series named `key` in a SeriesTable, or -1: a scan of the table's name bytes."""
    arena, offsets, lengths = table.name_arrays()
    n = len(table)
    if n == 0:
        return -1
    offs = offsets[:n]
    used = int(offs[-1] + lengths[n - 1])
    data = arena[:used].tobytes()
    pos = data.find(key)
    while pos >= 0:
        s = int(np.searchsorted(offs, pos, side="right")) - 1
        if s >= 0 and offs[s] == pos and lengths[s] == len(key):
            return s
        pos = data.find(key, pos + 1)
    return -1


class Taps:
    """Every viewed series of this process. Subscribing happens on the event loop; observe() on whatever thread
    runs the batch (the event loop, or a worker thread for a large batch, under the session's lock)."""

    def __init__(self, limit: int = RING):
        self.limit = limit
        self.active = False  # some page views a series: the detector checks this first
        self._by_session: dict[str, list[Tap]] = {}
        self._taps: dict[tuple[str, str], Tap] = {}
        self._lock = threading.Lock()  # protects the two dicts against observe() on worker threads
        self._loop: asyncio.AbstractEventLoop | None = None

    def view(self, session: str, series: str) -> tuple[Tap, asyncio.Queue]:
        """Start viewing (on the event loop): the tap and a queue that receives lists of new points."""
        self._loop = asyncio.get_running_loop()
        with self._lock:
            tap = self._taps.get((session, series))
            if tap is None:
                tap = self._taps[(session, series)] = Tap(session, series, self.limit)
                self._by_session.setdefault(session, []).append(tap)
            q: asyncio.Queue = asyncio.Queue(maxsize=64)
            tap.viewers.add(q)
            self.active = True
        return tap, q

    def unview(self, tap: Tap, q: asyncio.Queue) -> None:
        with self._lock:
            tap.viewers.discard(q)
            if not tap.viewers:
                self._taps.pop((tap.session, tap.series), None)
                taps = self._by_session.get(tap.session, [])
                if tap in taps:
                    taps.remove(tap)
                if not taps:
                    self._by_session.pop(tap.session, None)
            self.active = bool(self._taps)

    def observe(self, session: str, state, params, ids, values, times) -> None:
        """After a batch was applied to `state`: record the viewed series' values of it."""
        taps = self._by_session.get(session)
        if not taps:
            return
        for tap in list(taps):
            s = tap.slot(state.table)
            if s < 0:
                continue
            rows = np.flatnonzero(ids == s)
            if len(rows) == 0:
                continue
            self._record(tap, state, s, params, values[rows].tolist(), times[rows].tolist())

    def _record(self, tap: Tap, state, s: int, params, vs: list, ts: list) -> None:
        one = tap.one
        if tap.synced != id(state):  # the first batch seen: its values are judged from the state after it
            tap.synced = id(state)
            one.set(state.count[s], state.mean[s], state.spread[s])
            return
        now = time.time_ns()
        points = []
        for v, t in zip(vs, ts):
            mean, std, flagged, z = one.judge(v, params)
            points.append({"t": (t or now) / 1e9, "value": v, "mean": mean, "stddev": std, "flagged": flagged,
                           "zscore": z if np.isfinite(z) else None, "k": params.threshold})
        # the copy follows the real state exactly (same kernel, same order); resynced in case a batch was missed
        one.set(state.count[s], state.mean[s], state.spread[s])
        tap.ring.extend(points)
        if self._loop is not None:
            for q in list(tap.viewers):
                try:
                    self._loop.call_soon_threadsafe(_offer, q, points)
                except RuntimeError:  # the loop has closed
                    pass


def _offer(q: asyncio.Queue, points: list) -> None:
    if not q.full():  # a slow page misses points (it reloads the ring when it reconnects)
        q.put_nowait(points)
