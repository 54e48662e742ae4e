"""Taps: the recent values of the series someone views on the page, each with the mean and stddev it was judged
against, in a bounded ring per viewed series (nothing is kept for series nobody views).

The detector (a stream's batch, an OTLP export) calls `Taps.observe` after each applied batch only while
`Taps.active` is true (a plain attribute: some page views a series). Values are sampled: at most one batch in
SAMPLE_SECONDS is recorded whole, each value with the band it was judged against, and every flagged value of a
viewed series is recorded besides (counted in the fused pass, or one compiled look-up in batches with outliers). The
band is read from the stream's own state, copied for the viewed series just before that batch (`_One`): the series'
first value of the batch is judged against exactly that state. Later values of it in the same batch: without
exclusion every finite value is taken in whatever the rules, so the stream's own kernel (kernels.welford_update /
ewm_update) run on the copy gives their bands exactly; with exclusion, what is taken in depends on every rule
(limit, cooldown, min_deviation, direction, score), so they get the stream's band when flagged and none otherwise
(not a guess). Between samples a batch costs a clock read (observe's fast path: the fused pass copies a viewed
series' flagged rows, `Taps.slots`); a page reads the ring every DELIVER_SECONDS (pageserver.py).
"""
from __future__ import annotations

import base64
import collections
import itertools
import math
import threading
import time

import numba
import numpy as np

from streamer import kernels
from streamer.state import MODE_EXPONENTIAL

RING = 2000  # values kept per viewed series
DELIVER_SECONDS = 0.1  # how often a page is sent its viewed series' new values
SAMPLE_SECONDS = 0.1  # a viewed series' batches are recorded whole at most this often, one a delivery (flagged: all)
TABLES_KEPT = 64  # tables a tap keeps its series' slot for (or that it was not found in), at most


@numba.njit(nogil=True, cache=True)
def _rows_of(ids, idx, k, slot, out):
    """Rows of the batch whose series is `slot` into out, their count: among the k flagged rows idx[:k], or among
    all rows when k < 0. One compiled call: numpy's mask-and-flatnonzero costs several microseconds a batch."""
    n = 0
    if k < 0:
        for i in range(len(ids)):
            if ids[i] == slot:
                out[n] = i
                n += 1
    else:
        for j in range(k):
            if ids[idx[j]] == slot:
                out[n] = j
                n += 1
    return n


def compile_all() -> None:
    """Compile (or load from numba's cache) what observe() calls, in the types the detector passes."""
    ids = np.zeros(2, dtype=np.int64)
    out = np.empty(2, dtype=np.int64)
    _rows_of(ids, np.zeros(1, dtype=np.int32), 1, 0, out)
    _rows_of(ids, np.zeros(1, dtype=np.int32), -1, 0, out)
    one = _One()
    for mode in (1, 2):
        p = _CompileParams(mode)
        one.band(np.array([1.0, 2.0]), p)


class _CompileParams:
    def __init__(self, mode):
        self.mode, self.alpha, self.threshold, self.warmup, self.exclude_outliers = mode, 0.05, 2.0, 2, False


class _One:
    """A copy of one series' running state (count, mean, spread) taken before a batch."""

    def __init__(self, count: int = 0, mean: float = 0.0, spread: float = 0.0):
        self.count = np.array([count], dtype=np.int64)
        self.mean = np.array([mean], dtype=np.float64)
        self.spread = np.array([spread], dtype=np.float64)

    def set(self, count, mean, spread) -> None:
        self.count[0], self.mean[0], self.spread[0] = count, mean, spread

    def state_band(self, params) -> tuple[float | None, float | None]:
        """(mean, stddev) the series' next value is judged against from this state, as rules.stream_update
        reads the state (population stddev), or (None, None) in the warmup."""
        c = int(self.count[0])
        if c < max(int(params.warmup), 2):
            return None, None
        spread = float(self.spread[0])
        return float(self.mean[0]), math.sqrt(spread if params.mode == MODE_EXPONENTIAL else spread / c)

    def band(self, values: np.ndarray, params):
        """(means, stddevs) each of `values` (one series, in order) is judged against from this state, which then
        holds the state after them (NaN: in the warmup, or not finite). Exact only when flagged values update the
        state (not exclude_outliers): _band."""
        means, stds = np.empty(len(values)), np.empty(len(values))
        _band(values, self.count, self.mean, self.spread, params.mode == MODE_EXPONENTIAL, float(params.alpha),
              int(params.warmup), means, stds)
        return means, stds


@numba.njit(nogil=True, cache=True)
def _band(values, count, mean, spread, exponential, alpha, warmup, means, stds):
    """The band of each of `values` from the one-series state (count, mean, spread), updated by them: the whole run
    is one call of the stream's kernel with threshold -1, which flags every value past the warmup (|x - mean| >
    -stddev) with what it was judged against, unless stddev and the difference are both 0, when the mean is x."""
    n = len(values)
    ids = np.zeros(n, dtype=np.int64)
    idx = np.empty(n, dtype=np.int32)
    m_out, s_out, z_out = np.empty(n), np.empty(n), np.empty(n)
    seen = count[0]
    if exponential:
        k = kernels.ewm_update(ids, values, count, mean, spread, alpha, -1.0, warmup, False, idx, m_out, s_out, z_out)
    else:
        k = kernels.welford_update(ids, values, count, mean, spread, -1.0, warmup, False, idx, m_out, s_out, z_out)
    means[:] = np.nan
    stds[:] = np.nan
    for j in range(k):
        means[idx[j]], stds[idx[j]] = m_out[j], s_out[j]
    need = max(warmup, 2)
    for i in range(n):
        if np.isfinite(values[i]):
            if seen >= need and np.isnan(means[i]):  # judged, not flagged: difference and stddev both 0
                means[i], stds[i] = values[i], 0.0
            seen += 1


class Tap:
    """One viewed series of one session: its ring of judged values (tuples t, value, mean, stddev, flagged,
    zscore, k) and how many were ever added (`added`: a page sends the ones it has not sent)."""

    def __init__(self, session: str, series: str, limit: int = RING):
        self.session = session
        self.series = series
        self.key = series.encode("utf-8")
        self.ring: collections.deque = collections.deque(maxlen=limit)
        self.added = 0
        self.viewers = 0
        self.slots: dict[int, tuple[int, int]] = {}   # table.serial -> (the series' slot there, table.removals)
        self.looked: dict[int, tuple[int, int]] = {}  # table.serial -> (len, removals) when last looked for in vain
        self.one = _One()
        self.armed: int | None = None     # id(state) whose state before the next batch `one` holds
        self.next_sample = 0.0
        self.rows = np.empty(64, dtype=np.int64)  # _rows_of's out, grown to the batch

    def slot(self, table) -> int:
        """The series' slot in `table`, or -1 (looked for again only once the table has grown or lost series).
        Once series were removed (expired), a slot kept from before is checked to be live and the series' still:
        its series may have expired, and its slot gone to another."""
        key, removals = table.serial, table.removals
        kept = self.slots.get(key)
        if kept is not None:
            s, seen = kept
            if seen == removals:
                return s
            del self.slots[key]
            if table.live_name(s) == self.key:
                self.slots[key] = (s, removals)
                return s
        looked = (len(table), removals)
        if self.looked.get(key) == looked:
            return -1
        if len(self.looked) >= TABLES_KEPT:  # tables come and go (private streams, sessions): forget the old ones
            self.looked.clear()
        self.looked[key] = looked
        s = find_slot(table, self.key)
        if s >= 0:
            if len(self.slots) >= TABLES_KEPT:
                self.slots.clear()
            self.slots[key] = (s, removals)
        return s

    def add(self, points: list) -> None:
        self.ring.extend(points)
        self.added += len(points)

    def since(self, added: int) -> list:
        """The points added after the first `added` (those still in the ring)."""
        new = min(self.added - added, len(self.ring))
        if new <= 0:
            return []
        points = list(itertools.islice(reversed(self.ring), new))  # from the newest: not a copy of the whole ring
        points.reverse()
        return points


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
    """Every viewed series of this process. Viewing happens on the event loop; observe() on whatever thread runs
    the batch (the event loop, or a worker thread for a large batch, under the session's lock)."""

    def __init__(self, limit: int = RING, sample_seconds: float = SAMPLE_SECONDS,
                 clock=time.monotonic):
        self.limit = limit
        self.sample_seconds = sample_seconds
        self.clock = clock
        self.active = False  # some page views a series: the detector checks this first
        self._by_session: dict[str, list[Tap]] = {}
        self._taps: dict[tuple[str, str], Tap] = {}
        # observe's fast path, which the detector checks before it calls observe: no tap armed (holding the state
        # before its next batch: `armed_taps` counts them), the clock before `due` (the earliest next sample), and
        # nothing viewed flagged
        self.armed_taps = 0
        self.due = 0.0
        self._lock = threading.Lock()  # protects the two dicts' changes (observe() only reads them)
        self.version = 0  # changed whenever a series is viewed or no longer viewed (detectors' slots() caches)

    def view(self, session: str, series: str) -> Tap:
        with self._lock:
            tap = self._taps.get((session, series))
            if tap is None:
                tap = self._taps[(session, series)] = Tap(session, series, self.limit)
                self._by_session = {**self._by_session,
                                    session: [*self._by_session.get(session, []), tap]}
            tap.viewers += 1
            self.version += 1
            self.due = 0.0  # a new tap is due at once
            self.active = True
        return tap

    def unview(self, tap: Tap) -> None:
        with self._lock:
            tap.viewers -= 1
            self.version += 1
            if tap.viewers <= 0:
                if self._taps.pop((tap.session, tap.series), None) is not None and tap.armed is not None:
                    tap.armed = None
                    self.armed_taps -= 1
                rest = [t for t in self._by_session.get(tap.session, []) if t is not tap]
                self._by_session = {k: v for k, v in self._by_session.items() if k != tap.session}
                if rest:
                    self._by_session[tap.session] = rest
            self.active = bool(self._taps)

    def slots(self, session: str, table) -> tuple[np.ndarray, int]:
        """The slots in `table` (a SeriesTable of `session`) of the series a page views that it holds, and how many
        viewed series of the session it does not hold (yet)."""
        taps = self._by_session.get(session, ())
        found = [s for s in (tap.slot(table) for tap in taps) if s >= 0]
        return np.array(found, dtype=np.int64), len(taps) - len(found)

    def observe(self, session: str, state, params, rows, k: int = -1, flagged=None, viewed=None) -> None:
        """After a batch was applied to `state` with `params` (a detector.Params, or with rules a function of a
        slot giving its series' Params): record the viewed series' flagged values of it, and all its values when
        sampled (see the module's docstring); rows() gives the batch's (ids, values, times, idx, mean,
        std, z), idx the k flagged rows (k < 0: unknown until rows() is called) and mean, std, z what they were
        judged against; `viewed`, when given, those of them of a viewed series as the fused pass copies them
        (rows of slot, time, value, mean, stddev, zscore: StreamPass.tapped, for the slots() of the session), else
        flagged(), when given, the buffers (ids, idx) alone, cheaper than rows(). Between samples, a batch with
        nothing of a viewed series flagged costs a clock read (and without `viewed`, a look at their slots when it
        has flagged values); one with, the points of those values."""
        now = self.clock()
        if not self.armed_taps and now < self.due and (not k or viewed is not None and not len(viewed)):
            return  # nearly every batch: nothing of a viewed series flagged, no tap armed and none due to be
        taps = self._by_session.get(session)
        if not taps:
            return
        if not self.armed_taps and now < self.due:
            if viewed is not None:
                self._copied(taps, state.table, viewed, params)
                return
            if flagged is not None and k > 0 and not self._viewed_among(taps, state.table, flagged, k):
                return  # flagged values, none of a viewed series
        ids, values, times, idx, mean, std, z = rows()
        due = False
        for tap in taps:
            s = tap.slot(state.table)
            if s < 0:
                continue
            if len(tap.rows) < len(ids):
                tap.rows = np.empty(2 * len(ids), dtype=np.int64)
            if tap.armed is not None:
                if tap.armed != id(state):
                    continue
                n = _rows_of(ids, idx, -1, s, tap.rows)
                if not n:
                    continue  # its state is as it was: still armed for the next batch
                tap.armed = None
                self.armed_taps -= 1
                tap.next_sample = now + self.sample_seconds
                due = True
                self._whole(tap, tap.rows[:n].copy(), params(s) if callable(params) else params, values, times,
                            idx, mean, std, z, int(state.count[s]))
            elif k:
                n = _rows_of(ids, idx, len(idx), s, tap.rows)  # the series' flagged values: j into idx
                if n:
                    self._flagged(tap, tap.rows[:n], params(s) if callable(params) else params, values, times, idx,
                                  mean, std, z)
            if now >= tap.next_sample:  # the next batch with the series is recorded whole
                tap.one.set(state.count[s], state.mean[s], state.spread[s])
                tap.armed = id(state)
                self.armed_taps += 1
                due = True
        if due:
            self.due = min(t.next_sample for t in taps)

    @staticmethod
    def _viewed_among(taps: list[Tap], table, flagged, k: int) -> bool:
        """Whether one of the k flagged rows is of a viewed series: the buffers and one compiled call a viewed
        series (about 0.5 microseconds); building rows() (about 2) is left to the batches that need it."""
        ids, idx = None, None
        for tap in taps:
            s = tap.slot(table)
            if s < 0:
                continue
            if ids is None:
                ids, idx = flagged()
            if len(tap.rows) < k:
                tap.rows = np.empty(2 * k, dtype=np.int64)
            if _rows_of(ids, idx, k, s, tap.rows):
                return True
        return False

    @staticmethod
    def _copied(taps: list[Tap], table, viewed, params) -> None:
        """Record flagged values of viewed series as the fused pass copied them."""
        wall, k, rows = time.time_ns(), params.threshold, viewed.tolist()
        for tap in taps:
            s = tap.slot(table)
            points = [((t or wall) / 1e9, v, m, d, True, zz, k) for slot, t, v, m, d, zz in rows if slot == s]
            if points:
                tap.add(points)

    @staticmethod
    def _flagged(tap: Tap, js, params, values, times, idx, mean, std, z) -> None:
        """Record the flagged rows idx[js] of the tap's series, with what the stream reported."""
        wall, rs, k = time.time_ns(), idx[js], params.threshold
        tap.add([((t or wall) / 1e9, v, m, d, True, zz, k) for t, v, m, d, zz in
                 zip(times[rs].tolist(), values[rs].tolist(), mean[js].tolist(), std[js].tolist(), z[js].tolist())])

    @staticmethod
    def _whole(tap: Tap, rows, params, values, times, idx, mean, std, z, count_after: int) -> None:
        vs = values[rows]
        before = int(tap.one.count[0])
        # The series started again since `one` was copied (it expired, and came back in a fresh state) when its
        # count fell, or, with every finite value taken in, did not grow by them: its values were judged from
        # nothing, as `one` then is (a count only falls when a series starts again)
        if count_after < before or (not params.exclude_outliers and count_after != before + int(np.isfinite(vs).sum())):
            tap.one.set(0, 0.0, 0.0)
        k = len(idx)
        flagged = {r: (m, d, zz) for r, m, d, zz in zip(idx.tolist(), mean[:k].tolist(), std[:k].tolist(),
                                                        z[:k].tolist())}
        if params.exclude_outliers:
            # Whether a value is taken in depends on every rule (the limit, min_deviation, direction, the score):
            # the series' first value of the batch has the band of the state before the batch (exact, the
            # kernel's own state); a later one the stream's band when it was flagged, else none (not guessed).
            first = tap.one.state_band(params)
            means = [first[0]] + [flagged[r][0] if r in flagged else None for r in rows.tolist()[1:]]
            stds = [first[1]] + [flagged[r][1] if r in flagged else None for r in rows.tolist()[1:]]
        else:  # every finite value is taken in, whatever the rules: the band follows the values alone
            m, d = tap.one.band(vs, params)
            means = [None if x != x else x for x in m.tolist()]
            stds = [None if x != x else x for x in d.tolist()]
        wall = time.time_ns()
        k = params.threshold
        points = []
        for r, v, t, mu, sd in zip(rows.tolist(), vs.tolist(), times[rows].tolist(), means, stds):
            f = flagged.get(r)
            if f is not None:
                mu, sd = f[0], f[1]  # what the stream reported (equal to the band above, by the tests)
            points.append(((t or wall) / 1e9, v, mu, sd, f is not None,
                           f[2] if f is not None else (0.0 if not sd else (v - mu) / sd), k))
        tap.add(points)


def points_json(points: list) -> list[dict]:
    """The ring's tuples as a JSON list of objects (/api/tap's default form, for scripts)."""
    return [{"t": t, "value": v, "mean": m, "stddev": s, "flagged": f, "zscore": z, "k": k}
            for t, v, m, s, f, z, k in points]


def points_f64(points: list) -> bytes:
    """The ring's tuples as the page reads them (/api/tap?format=f64), a JSON object's text: {"n": n, "f64": base64
    of 7 columns of n little-endian float64s: t, value, mean, stddev, flagged (1 or 0), zscore, k}, NaN for none
    (JSON's null stands for NaN and infinities alike: a reader takes any value that is not finite as null). Exact,
    and about a tenth of the JSON form's cost (a float's shortest repr is most of json.dumps' time, and a busy
    series' page gets hundreds of values a second); written without json.dumps, which would scan the base64 text a
    character at a time."""
    cols = np.array(points, dtype=np.float64).reshape(len(points), 7)
    return b'{"n": %d, "f64": "%s"}' % (len(points), base64.b64encode(cols.T.astype("<f8").tobytes()))
