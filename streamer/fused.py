"""The fused pass: one batch of a stream from request bytes to response bytes in two compiled calls.

decode() runs the decoder (wire/decode.py) into the stream's reused columns and checks names; apply()
interns (series.py), judges (kernels.py) and encodes (wire/encode.py) in one numba function. Between the two
the stream's bookkeeping (detector.py) reads the request's options and session, which must be checked before
any state is written. benchmarks/results/profile-before.md shows why it is fused: at 1 000 metrics a batch
the stages' Python wrappers, numba dispatch and numpy allocations cost about as much as the compiled code.
This module stands above the wire package and the series table, which know nothing of it.

Atomic as the separate stages are: the wire format and name lengths are checked by decode(), options and
session by the caller, and the series limit by apply() before it writes state (new names are taken back
from the table). When a function needs room (more columns, a bigger table or state, a longer answer) it
returns, Python grows the arrays, and the call resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import functools
import threading

import numpy as np
from numba import njit

from streamer import expiry, rules
from streamer.series import M_HIGH, SeriesTable, _hash_names, _intern
from streamer.wire import Columns, Options, decode
from streamer.wire.encode import _encode
from streamer.wire.primitives import HASH_SEED

MAX_NAME_BYTES = 1024  # detector.MAX_NAME_BYTES is this one

# Slots of the pass's state array after the decoder's own (decode._STATE_SIZE of them).
_PHASE, _N, _I, _K, _SIZE, _WHY, _TAPPED = range(decode._STATE_SIZE, decode._STATE_SIZE + 7)
_STATE_SIZE = decode._STATE_SIZE + 7

# What the compiled functions return: done; or where they stopped (Python grows an array, zeroes the state of
# series that come back after expiring, and calls again, or maps an error); negative: the decoder's error code.
DONE, FULL, NAME_TOO_LONG, TABLE, STATE, OUT, RESET = range(7)
_INTERN, _TOUCH, _JUDGE, _ENCODE = range(4)


@njit(nogil=True, cache=True)
def _decode_pass(b, cols, st, resume, seed, unhashed):
    """The request in b into cols (int64[5, capacity], as decode._decode) and st (int64[_STATE_SIZE]); set up
    st when not `resume` (seed: HASH_SEED; unhashed: leave the names' hashes to _apply_pass). Returns DONE with
    st[_N] metrics, FULL, NAME_TOO_LONG (metric st[_I]) or the decoder's -code."""
    if not resume:
        st[:] = 0
        st[decode._SEED] = seed  # an argument: numba's cache would keep a global's value from another process
        st[decode._UNHASHED] = unhashed
    code, n, _, _ = decode._decode(b, cols, st)
    if code != 0:
        return FULL if code == decode._FULL else code
    if st[decode._LONGEST] > MAX_NAME_BYTES:  # only the general reader takes names that long
        for i in range(n):
            if cols[1, i] > MAX_NAME_BYTES:
                st[_I] = i
                return NAME_TOO_LONG
    st[_N] = n  # and st[_PHASE] is _INTERN (0)
    return DONE


@njit(nogil=True, cache=True)
def _apply_pass(b, cols, st, ids, m, index, old, hashes, offsets, lengths, arena, free, born,
                count, mean, spread, last_seen, clock, now, ttl, reset, exponential, alpha, threshold, warmup,
                exclude, exclude_limit, cooldown, streak, hold, likelihood, window, tail_threshold, learning,
                lcount, lmean, lvar, ring, idx, mean_out, std_out, z_out, tail_out, suppress, resolve_after,
                ep_run, ep_start, ep_count, ep_peak_z, ep_peak_value, ev, ev_stats, ev_n, batch, tapped, tap_out,
                out):
    """Intern, note times, judge and encode the batch _decode_pass left in cols and st, from phase st[_PHASE] on.

    ids, reset, idx, mean_out, std_out, z_out: at least st[_N] long (tail_out too with the likelihood score, else
    empty); the rules' arguments and arrays are rules.stream_update's (episodes take `now`, seconds, for metrics
    without a time). m ... born are a SeriesTable's (keyed with HASH_SEED, begun for this batch); count ... clock
    the series state, updated in place; tapped: the slots of the series the page views (streamer/web/tap.py), whose
    flagged rows are copied into tap_out (float64[st[_N], 6] when tapped is not empty; st[_TAPPED] of them);
    out receives the answer (st[_SIZE] bytes). Returns DONE, TABLE (st[_WHY]:
    why _intern stopped, at metric st[_I]), STATE (the state arrays need m[M_HIGH] slots), RESET (zero the state
    of reset[:st[_WHY]], then call again) or OUT.
    """
    n = st[_N]
    if st[_PHASE] == _INTERN:
        why, i = _intern(b, cols[0, :n], cols[1, :n], cols[4, :n], st[_I], ids, m, index, old, hashes, offsets,
                         lengths, arena, free, born, st[decode._SEED], st[decode._UNHASHED] != 0)
        st[_I] = i
        if why != 0:
            st[_WHY] = why
            return TABLE
        st[_PHASE] = _TOUCH
    values = cols[2, :n].view(np.float64)
    if st[_PHASE] == _TOUCH:
        if m[M_HIGH] > min(len(count), len(mean), len(spread), len(last_seen)):
            return STATE
        k = expiry.touch(ids[:n], cols[3, :n], now, ttl, clock, last_seen, reset)
        st[_PHASE] = _JUDGE
        if k:
            st[_WHY] = k
            return RESET
    if st[_PHASE] == _JUDGE:
        k = rules.stream_update(ids[:n], values, count, mean, spread, exponential, alpha, threshold, warmup,
                                exclude, exclude_limit, cooldown, streak, hold, likelihood, window,
                                tail_threshold, learning, lcount, lmean, lvar, ring,
                                idx, mean_out, std_out, z_out, tail_out, suppress, resolve_after, cols[3, :n],
                                np.int64(now * 1e9), ep_run, ep_start, ep_count, ep_peak_z, ep_peak_value, ev,
                                ev_stats, ev_n)
        st[_K] = k
        st[_TAPPED] = _copy_tapped(ids, values, cols[3, :n], idx, mean_out, std_out, z_out, k, tapped, tap_out)
        st[_PHASE] = _ENCODE
    k = st[_K]
    size = _encode(out, batch, idx[:k], idx[:k], ids, values, mean_out, std_out, z_out, tail_out, arena, offsets,
                   lengths)
    st[_SIZE] = size
    if size < 0:
        raise AssertionError("the fused pass flagged a row outside its batch")  # a bug: encode checked it
    return OUT if size > len(out) else DONE


@njit(nogil=True, cache=True)
def _copy_tapped(ids, values, times, idx, mean_out, std_out, z_out, k, tapped, out):
    """Copy the flagged rows idx[:k] of a slot in `tapped` (a few slots, often none) into out, each as (slot, time
    in ns or 0, value, mean, stddev, zscore); their count."""
    h = 0
    if len(tapped):
        for j in range(k):
            r = idx[j]
            s = ids[r]
            for t in range(len(tapped)):
                if s == tapped[t]:
                    out[h, 0], out[h, 1], out[h, 2] = s, times[r], values[r]
                    out[h, 3], out[h, 4], out[h, 5] = mean_out[j], std_out[j], z_out[j]
                    h += 1
                    break
    return h


_NO_TAIL = np.zeros(0, dtype=np.float64)
NO_TAPS = np.zeros(0, dtype=np.int64)  # apply()'s `tapped` when the page views no series of the stream
_NO_TAP_OUT = np.zeros((0, 6), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Rules:
    """The stream rules beyond mode, alpha, threshold, warmup and exclude (kernels.stream_update's), with the
    values that turn each off."""

    exclude_limit: int = 0
    cooldown: int = 0
    likelihood: bool = False
    window: int = 8640
    tail_threshold: float = 1e-5
    learning: int = 300
    suppress: tuple[float, float, float] = (0.0, 0.0, 0.0)  # min_deviation, min_relative_deviation, direction
    resolve_after: int = 0                                     # episodes: 0 = not kept

    @functools.cached_property
    def suppress_array(self) -> np.ndarray:
        """`suppress` as the kernel takes it (made once per Rules: a stream keeps its Rules)."""
        return np.array(self.suppress, dtype=np.float64)


class NameTooLong(ValueError):
    """A metric's name is over MAX_NAME_BYTES."""

    def __init__(self, index: int, length: int):
        super().__init__(f"metric {index}: name is {length} bytes, over the limit of {MAX_NAME_BYTES} bytes")
        self.index = index
        self.length = length


@dataclasses.dataclass(frozen=True)
class Head:
    """What the stream's bookkeeping reads of a decoded request before it is applied."""

    metrics: int
    options: Options | None  # None when the request carries no options field
    session: str
    seq: int = 0             # the request's sequence number (0: not given)

    def __len__(self) -> int:
        return self.metrics


class StreamPass:
    """One stream's buffers for the fused pass (columns, slots, flagged rows, the answer), grown as batches
    grow and reused across its batches: decode() a request, then apply() it or take columns() for the stages.
    Not thread-safe: one stream's batches run one at a time.

    `hashed`: whether decode() hashes every name. A stream's pass does not: apply() finds most names by the slot
    their position had in the last batch, and hashes only the others (columns() hashes them all)."""

    def __init__(self, hashed: bool = False) -> None:
        self._hashed = hashed
        self._st = np.zeros(_STATE_SIZE, dtype=np.int64)
        self._out = np.empty(4096, dtype=np.uint8)
        self._tap_out = _NO_TAP_OUT  # apply()'s tapped rows, grown when a page views a series of the stream
        self._size(0)
        self._buf = b""

    def _size(self, n: int) -> None:
        self._cols = np.empty((5, n), dtype=np.int64)
        self._ids = np.empty(n, dtype=np.int64)
        self._reset = np.empty(n, dtype=np.int64)
        self._idx = np.empty(n, dtype=np.int32)
        self._mean, self._std, self._z, self._tail = (np.empty(n, dtype=np.float64) for _ in range(4))
        self._ev = np.empty((n, 4), dtype=np.int64)  # episode changes: (metric, kind, start, count), rules.py
        self._ev_stats = np.empty((n, 5), dtype=np.float64)
        self._ev_n = np.zeros(1, dtype=np.int64)

    def decode(self, buf: bytes) -> Head:
        """Decode and check the request (the wire format, name lengths); raise WireError or NameTooLong."""
        b = buf if type(buf) is bytes else bytes(buf)  # one jitted signature (grpc hands over bytes)
        if self._cols.shape[1] < len(b) // 24 + 4:  # room for metrics of 24 bytes or more, as decode_request
            self._size(max(len(b) // 24 + 4, 2 * self._cols.shape[1]))
        st = self._st
        self._buf = b
        why = _decode_pass(b, self._cols, st, False, HASH_SEED, not self._hashed)
        while why == FULL:  # smaller metrics than room was made for: twice the columns, the decoded ones kept
            cols = self._cols
            self._size(2 * cols.shape[1])
            self._cols[:, :cols.shape[1]] = cols
            why = _decode_pass(b, self._cols, st, True, HASH_SEED, not self._hashed)
        if why == NAME_TOO_LONG:
            i = int(st[_I])
            raise NameTooLong(i, int(self._cols[1, i]))
        if why < 0:
            raise decode.wire_error(st, why)
        return Head(int(st[_N]), decode.options_of(st) if st[decode._HAS_OPTIONS] else None,
                    decode.session_of(b, st), decode.seq_of(st))

    def columns(self) -> Columns:
        """The decoded metrics as decode_request gives them (views of this pass's buffers, valid until the next
        decode(); options and session are the Head's)."""
        n, cols = int(self._st[_N]), self._cols
        if self._st[decode._UNHASHED]:
            _hash_names(self._buf, cols[0, :n], cols[1, :n], HASH_SEED, cols[4, :n])  # spans the decoder checked
            self._st[decode._UNHASHED] = 0
        return Columns(self._buf, cols[0, :n], cols[1, :n], cols[2, :n].view(np.float64), cols[3, :n], None, "",
                       cols[4, :n])

    def flagged(self) -> int:
        """How many metrics the last apply() flagged."""
        return int(self._st[_K])

    def slots(self) -> np.ndarray:
        """The series slot of each metric of the last apply() (a view valid until the next decode())."""
        return self._ids[:int(self._st[_N])]

    def episodes(self) -> tuple[np.ndarray, np.ndarray]:
        """The episode changes of the last apply() (rules.stream_update's ev and ev_stats rows), views valid
        until the next decode()."""
        e = int(self._ev_n[0])
        return self._ev[:e], self._ev_stats[:e]

    def flagged_rows(self) -> tuple:
        """(ids, values, times, idx, mean, std, z) of the last apply(): the batch's slots, values and times
        (ns, 0: none) and, for the flagged rows idx, what they were judged against (Watch's events)."""
        n, k, cols = int(self._st[_N]), int(self._st[_K]), self._cols
        return (self._ids[:n], cols[2, :n].view(np.float64), cols[3, :n], self._idx[:k], self._mean[:k],
                self._std[:k], self._z[:k])

    def tapped(self) -> np.ndarray:
        """The metrics the last apply() flagged of the series its `tapped` named, rows of (slot, time in ns or 0,
        value, mean, stddev, zscore): a view valid until the next apply()."""
        return self._tap_out[:int(self._st[_TAPPED])]

    def tapped_count(self) -> int:
        """len(tapped()), without making the view."""
        return int(self._st[_TAPPED])

    def apply(self, state, exponential: bool, alpha: float, threshold: float, warmup: int, exclude: bool,
              batch: int, rules: Rules = Rules(), now: float = 0.0, tapped: np.ndarray = NO_TAPS) -> bytes:
        """Apply the decoded request to `state` (a SeriesState, whose table is keyed with HASH_SEED, with the
        arrays `rules` need: SeriesState.use; `now`: the arrival time, seconds; `tapped`: slots whose flagged rows
        tapped() gives) and return its answer; raise
        SeriesLimitError or TotalSeriesLimitError with state and table untouched (besides expired series swept
        out)."""
        table, st, b = state.table, self._st, self._buf
        n = int(st[_N])
        if not len(tapped):
            tap_out = _NO_TAP_OUT
        elif len(self._tap_out) >= n:
            tap_out = self._tap_out
        else:  # only streams a page views have this buffer
            tap_out = self._tap_out = np.empty((max(n, 2 * len(self._tap_out)), 6), dtype=np.float64)
        state.sweep()
        room = state.budget.grant(n)
        added, swept = 0, False
        try:
            table.begin(n, room)
            st[_PHASE], st[_I] = _INTERN, 0
            while True:
                why = _apply_pass(b, self._cols, st, self._ids, table._m, table._index, table._old, table._hashes,
                                  table._offsets, table._lengths, table._arena, table._free, table._born,
                                  state.count, state.mean, state.spread, state.last_seen, state.clock, now,
                                  state.ttl, self._reset, exponential, alpha, threshold, warmup, exclude,
                                  rules.exclude_limit, rules.cooldown, state.streak, state.hold, rules.likelihood,
                                  rules.window, rules.tail_threshold, rules.learning, state.lcount, state.lmean,
                                  state.lvar, state.ring, self._idx, self._mean, self._std, self._z,
                                  self._tail if rules.likelihood else _NO_TAIL, rules.suppress_array,
                                  rules.resolve_after, state.ep_run, state.ep_start, state.ep_count,
                                  state.ep_peak_z, state.ep_peak_value, self._ev, self._ev_stats, self._ev_n,
                                  batch, tapped, tap_out, self._out)
                if why == DONE:
                    added = table.born()
                    table.settle()
                    return self._out[:int(st[_SIZE])].tobytes()
                if why == TABLE:
                    i = int(st[_I])
                    if not table._grow(int(st[_WHY]), int(self._cols[1, i])):
                        table.rollback()
                        if swept or not state.make_room(self._cols[3, :n], now):
                            raise state.limit_error(i, room)  # _intern checks spans: only a limit
                        swept = True  # expired series made room: once more from the first metric
                        state.budget.settle(room, 0)
                        room = state.budget.grant(n)
                        table.begin(n, room)
                        st[_PHASE], st[_I] = _INTERN, 0
                elif why == STATE:
                    state.reserve(table.slots)
                elif why == RESET:
                    state.reset_slots(self._reset[:int(st[_WHY])])
                    state.budget.release(0, int(st[_WHY]))
                else:  # OUT
                    self._out = np.empty(2 * int(st[_SIZE]), dtype=np.uint8)
        finally:
            state.budget.settle(room, added)


# A unary Detect's buffers, one set a thread (grpc runs Detect on executor threads): new ones each call would cost
# more than the batch's own work (zeroed arrays, page faults: 1 000-1 500 a call of 100 000 metrics, measured).
_LOCAL = threading.local()
KEEP_BYTES = 16 << 20   # requests up to this size use their thread's kept buffers; bigger ones get their own
KEEP_SERIES = 1 << 17   # a kept table that took more series than this is let go after its call


def detect_pass(size: int) -> StreamPass:
    """A StreamPass to decode a unary Detect's request of `size` bytes: this thread's, unless it is big."""
    if size > KEEP_BYTES:
        return StreamPass(hashed=True)
    kept = getattr(_LOCAL, "detect", None)
    if kept is None:
        kept = _LOCAL.detect = StreamPass(hashed=True)
    return kept


def detect_table(limit: int, metrics: int, size: int) -> SeriesTable:
    """An empty SeriesTable (keyed with HASH_SEED) for the names of a unary Detect's request of `metrics` metrics
    and `size` bytes: this thread's, cleared, unless the request is big."""
    if size > KEEP_BYTES:  # the names are spans of the request: its size is room for them all
        return SeriesTable(limit, capacity=2 * metrics, reserve=metrics, name_bytes=size, lazy=False)
    kept = getattr(_LOCAL, "table", None)
    if kept is None or kept.limit != limit or kept.slots > KEEP_SERIES:
        kept = _LOCAL.table = SeriesTable(limit, capacity=1024, reserve=KEEP_SERIES)
    else:
        kept.clear()
    return kept


def compile_all() -> None:
    """Compile (or load from numba's cache) the fused pass in the argument types the detector gives it."""
    from streamer.state import SeriesState  # what apply() is given; only needed here, so it stays duck-typed

    metric = b"\x0a\x04\x08\x01\x10\x02\x12\x01a\x19" + bytes(8)
    request = (b"\x0a" + bytes([len(metric)]) + metric) * 3
    for exponential in (False, True):
        state = SeriesState(2 if exponential else 1, 10, capacity=1, ttl=5.0)  # it grows: every path compiles
        fast = StreamPass()
        fast.decode(request)
        fast.apply(state, exponential, 0.05, 2.0, 2, False, 1, Rules(), 100.0)
        fast.apply(state, exponential, 0.05, 2.0, 2, False, 2, Rules(), 110.0)  # "a" came back after expiring
        state.use(True, True, 10)
        fast.decode(request)
        fast.apply(state, exponential, 0.05, 2.0, 2, True, 1, Rules(10, 1, True), 120.0)
        state.use(False, False, 0, episodes=True)
        fast.decode(request)
        fast.apply(state, exponential, 0.05, 2.0, 2, True, 1, Rules(10, 1, True, resolve_after=10), 130.0)
