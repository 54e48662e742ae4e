"""Per-series state of one stream or session: the statistics' arrays indexed by the series table's slots, the
process-wide series count they are held against (--max-total-series), and the copy a snapshot takes of them.

Arrays only here; the arithmetic on them lives in kernels.py (the statistics) and expiry.py (the TTL).
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Callable

import numpy as np

from streamer import expiry
from streamer.defaults import MODE_CUMULATIVE, MODE_EXPONENTIAL, MODE_NAMES  # noqa: F401 (a state's modes, re-exported)
from streamer.series import M_COUNT, M_HIGH, M_NAMES, M_USED, SeriesLimitError, SeriesTable, _gather, lazy_zeros
from streamer.store import Snapshot

# Per-series arrays, indexed by slot. _STATS are zeroed for a new series in a reused slot (reset_slots); a
# feature adding per-series state adds its array here (and to _ARRAYS, to be kept in snapshots).
_STATS = ("count", "mean", "spread")
_ARRAYS = _STATS + ("last_seen",)  # what a snapshot keeps of a SeriesState, besides the names
# ...and of the optional rules' state, for the sessions that use them (issue 15): exclude_limit's run of
# excluded values, the cooldown's countdown, the likelihood score's count, long-term mean and variance of the
# short averages, and its ring of the last likelihood_short raw scores (a row per series); and the episodes'
# (issue 20): 0 with none open else 1 + normal values since its last outlier, its start (data time, ns),
# flagged values, peak |z| and the value at it.
_OPTIONAL = {"streak": np.int64, "hold": np.int64, "lcount": np.int64, "lmean": np.float64, "lvar": np.float64,
             "ring": np.float64, "ep_run": np.int64, "ep_start": np.int64, "ep_count": np.int64,
             "ep_peak_z": np.float64, "ep_peak_value": np.float64}
_LIKELIHOOD = ("lcount", "lmean", "lvar", "ring")
_EPISODES = ("ep_run", "ep_start", "ep_count", "ep_peak_z", "ep_peak_value")


class TotalSeriesLimitError(Exception):
    """A batch would take the series held by this process past --max-total-series."""

    def __init__(self, index: int, limit: int, held: int):
        super().__init__(f"metric {index} would take the server past its limit of {limit} series in all "
                         f"sessions and streams (it holds {held})")
        self.index, self.limit, self.held = index, limit, held


class SeriesBudget:
    """Series held in memory by every state of this process, against a limit (0: none), and how many expired.

    A batch is granted room for its new series before it runs and gives back what it did not use, so batches
    of different sessions on worker threads never overshoot the limit together; `_lock` guards the counts.
    """

    def __init__(self, limit: int = 0):
        self.limit = limit
        self.held = 0     # series in live states, plus room granted to batches running now
        self.expired = 0  # series dropped for their TTL, ever
        self._lock = threading.Lock()

    def grant(self, n: int) -> int | None:
        """Room for up to n new series (None: no limit)."""
        with self._lock:
            if not self.limit:
                return None
            room = max(0, min(n, self.limit - self.held))
            self.held += room
            return room

    def settle(self, granted: int | None, used: int) -> None:
        """After a batch: it added `used` new series, having been granted `granted`."""
        with self._lock:
            self.held += used - (granted or 0)

    def release(self, n: int, expired: int = 0) -> None:
        """n series left memory (a state dropped, series swept), `expired` of them for their TTL."""
        with self._lock:
            self.held -= n
            self.expired += expired


class SeriesState:
    """Running statistics of every series of one stream or session, indexed by the table's slots.

    `count` is the number of values each series has taken in; `mean` its mean; `spread` is Welford's M2
    (sum of squared deviations) in MODE_CUMULATIVE and the exponentially weighted variance in MODE_EXPONENTIAL;
    `last_seen` the time of its latest value (expiry.py), seconds. Bytes per series: 32 in these arrays, plus
    the table's 22 to 30 (series.py) and the name's length. The arrays are reserved for the table's reserved
    slots with pages taken only when written, so a session grows to its limit without copying.
    `ttl`: seconds a series may be idle before it is dropped (0: never); `budget`: the process's series count.
    A subclass may keep more arrays per series (otlp.OtlpState): ARRAYS names every one that reserve() grows,
    reset_slots() zeroes and a snapshot keeps. The optional rules' arrays exist (use()) only in states whose
    options need them, and are empty otherwise: exclude_limit 8 bytes, cooldown 8, SCORE_LIKELIHOOD 24 +
    8 * likelihood_short (104 at the default 10), episodes 40.
    """

    ARRAYS = _ARRAYS

    def __init__(self, mode: int, max_series: int, capacity: int | None = None, ttl: float = 0.0,
                 budget: SeriesBudget | None = None):
        self.mode = mode
        self.table = SeriesTable(max_series, capacity=2 * capacity if capacity else 64, reserve=capacity)
        n = len(self.table._offsets)
        self.count = lazy_zeros(n, np.int64)
        self.mean = lazy_zeros(n, np.float64)
        self.spread = lazy_zeros(n, np.float64)
        self.last_seen = lazy_zeros(n, np.float64)
        self.clock = np.zeros(1, dtype=np.float64)  # the latest metric time seen (expiry.py)
        self.ttl = ttl
        self.swept_at = 0.0  # clock[0] at the last sweep
        self.budget = budget if budget is not None else SeriesBudget()
        self._shadow: dict[str, np.ndarray] = {}  # capture()'s buffers, reused from snapshot to snapshot
        self._shadow_names = -1                   # the table's M_NAMES when the names were last copied there
        self._shadow_lock = threading.Lock()      # held from a capture until it is packed
        self.optional: list[str] = []  # the optional arrays in use, as long as count; the others are empty
        for name, dtype in _OPTIONAL.items():
            setattr(self, name, np.zeros((0, 1) if name == "ring" else 0, dtype=dtype))

    @property
    def per_series(self) -> tuple[str, ...]:
        """Every per-series array this state keeps."""
        return (*self.ARRAYS, *self.optional)

    def use(self, exclude_limit: bool, cooldown: bool, likelihood_short: int, episodes: bool = False) -> None:
        """Make the optional rules' arrays a stream's options need (zeros for every series); keep those there.
        A likelihood ring of another length starts the likelihood state again (its layout differs)."""
        capacity = len(self.count)
        wanted = (["streak"] if exclude_limit else []) + (["hold"] if cooldown else [])
        if likelihood_short:
            if "ring" in self.optional and self.ring.shape[1] != likelihood_short:
                self.optional = [k for k in self.optional if k not in _LIKELIHOOD]
            wanted += _LIKELIHOOD
        if episodes:
            wanted += _EPISODES
        for name in wanted:
            if name not in self.optional:
                setattr(self, name, _zeros(name, capacity, likelihood_short))
                self.optional.append(name)

    @property
    def nbytes(self) -> int:
        """Bytes held for the series (the per-series arrays up to the slots in use, and the table)."""
        return self.table.slots * sum(getattr(self, k)[:1].nbytes for k in self.per_series) + self.table.nbytes

    def reserve(self, n_series: int) -> None:
        """Grow the arrays (doubling, so appends stay amortised O(1)) to hold `n_series` slots."""
        capacity = len(self.count)
        if n_series <= capacity:
            return
        while capacity < n_series:
            capacity *= 2
        for name in self.per_series:
            old = getattr(self, name)
            new = _zeros(name, capacity, old.shape[1] if old.ndim == 2 else 0, old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    def reset_slots(self, slots: np.ndarray) -> None:
        """Zero the state of `slots` (a series starting fresh in a reused or expired slot): every per-series
        array but last_seen, which the batch sets."""
        for name in self.per_series:
            if name != "last_seen":
                getattr(self, name)[slots] = 0

    def take(self, slots: np.ndarray) -> tuple:
        """Copies of every per-series array at `slots` and the clock, for put() to restore."""
        return tuple(getattr(self, k)[slots] for k in self.per_series) + (float(self.clock[0]),)

    def put(self, slots: np.ndarray, saved: tuple) -> None:
        """Restore what take() copied (repeated slots restore the same values)."""
        for k, values in zip(self.per_series, saved):
            getattr(self, k)[slots] = values
        self.clock[0] = saved[-1]

    def sweep(self, force: bool = False, clock: float | None = None) -> int:
        """Drop the series idle for more than the TTL at `clock` (default: the state's), freeing their slots;
        unless `force`, only when the clock moved an eighth of the TTL since the last sweep. How many went."""
        c = float(self.clock[0]) if clock is None else clock
        if self.ttl <= 0 or (not force and c - self.swept_at < self.ttl / 8) or not len(self.table):
            return 0
        freed = self.table.expire(self.last_seen, c - self.ttl)
        self.swept_at = c
        if len(freed):
            self.reset_slots(freed)
            self.budget.release(len(freed), len(freed))
        return len(freed)

    def make_room(self, times: np.ndarray, now: float) -> bool:
        """A batch (metric times `times`, arrival `now`) is over a limit: sweep out the series expired by its
        clock; whether any went (then the batch is tried again)."""
        if self.ttl <= 0:
            return False
        return self.sweep(force=True, clock=expiry.batch_clock(times, float(now), float(self.clock[0]))) > 0

    def limit_error(self, index: int, room: int | None) -> Exception:
        """Why metric `index` of a batch (granted `room` by the budget) could not be added."""
        if room is not None and len(self.table) + room < self.table.limit:  # the table rolled the batch back
            return TotalSeriesLimitError(index, self.budget.limit, self.budget.held - room)
        return SeriesLimitError(index, self.table.limit)

    def drop(self) -> None:
        """The state leaves memory: give its series back to the budget."""
        self.budget.release(len(self.table))
        self.table = SeriesTable(0, reserve=0)

    def capture(self) -> tuple[dict[str, np.ndarray], np.ndarray, Callable[[], None]]:
        """Copy the arrays a snapshot needs (between two batches: the caller holds the session's lock) into
        buffers this state keeps for the purpose, so the copy is a memcpy into pages already mapped; the names'
        arrays only if a name changed since the last copy. Returns (copies, the table's scalars, release): call
        release() once the copies are packed (capture_pack); a capture made before that gets new buffers."""
        own = self._shadow_lock.acquire(blocking=False)
        shadow = self._shadow if own else {}
        table = self.table
        high, used = table.slots, int(table._m[M_USED])

        def put(key: str, src: np.ndarray, room: int) -> np.ndarray:
            buf = shadow.get(key)
            if buf is None or len(buf) < len(src):
                buf = shadow[key] = np.empty((max(room, len(src)), *src.shape[1:]), dtype=src.dtype)
            buf[:len(src)] = src
            return buf[:len(src)]
        raw = {k: put(k, getattr(self, k)[:high], len(self.count)) for k in self.per_series}
        names = int(table._m[M_NAMES])
        if own and names == self._shadow_names and "arena" in shadow:
            raw.update(offsets=shadow["offsets"][:high], lengths=shadow["lengths"][:high],
                       arena=shadow["arena"][:used + 8])
        else:
            raw.update(offsets=put("offsets", table._offsets[:high], len(table._offsets)),
                       lengths=put("lengths", table._lengths[:high], len(table._offsets)),
                       arena=put("arena", table._arena[:used + 8], len(table._arena)))
            if own:
                self._shadow_names = names
        return raw, table._m.copy(), self._shadow_lock.release if own else (lambda: None)

    def columns(self) -> tuple[bytes, np.ndarray, dict[str, np.ndarray]]:
        """Copies of (live names in slot order, their lengths, the per-series arrays), for a snapshot."""
        names, lengths, slots = self.table.live()
        return names, lengths, _opaque_rows({k: getattr(self, k)[slots] for k in self.per_series})

    @classmethod
    def from_snapshot(cls, snap: Snapshot, max_series: int, budget: SeriesBudget | None = None) -> SeriesState:
        n = len(snap)
        state = cls(snap.mode, max(max_series, n), capacity=max(n, min(max_series, 1 << 21)), budget=budget)
        offsets = np.zeros(n, dtype=np.int64)
        np.cumsum(snap.name_lengths[:-1], out=offsets[1:])
        ids = state.table.intern(snap.names, offsets, snap.name_lengths)
        state.table.settle()
        if not np.array_equal(ids, np.arange(n)):
            raise ValueError(f"session {snap.name!r}: the snapshot's series names are not distinct")
        for key in cls.ARRAYS:
            if key in snap.arrays:
                getattr(state, key)[:n] = snap.arrays[key]
        # The optional rules' arrays the snapshot has (older ones have none: those rules start from zeros).
        if all(k in snap.arrays for k in _LIKELIHOOD):
            ring = snap.arrays["ring"]
            state.use(False, False, ring.dtype.itemsize // 8)
            state.ring[:n] = np.frombuffer(ring.tobytes(), dtype=np.float64).reshape(n, -1)
            for key in ("lcount", "lmean", "lvar"):
                getattr(state, key)[:n] = snap.arrays[key]
        if all(k in snap.arrays for k in _EPISODES):
            state.use(False, False, 0, episodes=True)
            for key in _EPISODES:
                getattr(state, key)[:n] = snap.arrays[key]
        for key in ("streak", "hold"):
            if key in snap.arrays:
                state.use(key == "streak", key == "hold", 0)
                getattr(state, key)[:n] = snap.arrays[key]
        if "last_seen" not in snap.arrays:  # written before series had a TTL: seen at the save
            state.last_seen[:n] = snap.last_used or 1.0
        state.clock[0] = state.swept_at = float(state.last_seen[:n].max()) if n else 0.0
        state.budget.release(-n)
        return state


@dataclasses.dataclass(eq=False)
class Capture:
    """A session's state copied between two batches (SeriesState.capture), packed into a Snapshot off the event
    loop: the live series gathered in slot order."""

    fields: dict
    raw: dict
    m: np.ndarray
    release: Callable[[], None]

    def __len__(self) -> int:
        return int(self.m[M_COUNT])

    def pack(self) -> Snapshot:
        try:
            raw, high = self.raw, int(self.m[M_HIGH])
            names = np.empty(int(self.m[M_USED]), dtype=np.uint8)
            lens = np.empty(high, dtype=np.int64)
            slots = np.empty(high, dtype=np.int64)
            n, used = _gather(self.m, raw["offsets"], raw["lengths"], raw["arena"], names, lens, slots)
            arrays = _opaque_rows({k: raw[k][slots[:n]] for k in raw if k not in ("offsets", "lengths", "arena")})
            return Snapshot(names=names[:used].tobytes(), name_lengths=lens[:n], arrays=arrays, **self.fields)
        finally:
            self.release()


def _zeros(name: str, n: int, short: int = 0, dtype=None) -> np.ndarray:
    """A per-series array of n zeros (the likelihood ring: n rows of `short`), pages taken when written."""
    dtype = dtype if dtype is not None else _OPTIONAL.get(name, np.float64)
    if name == "ring":
        return lazy_zeros(n * short, dtype).reshape(n, short)
    return lazy_zeros(n, dtype)


def _opaque_rows(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A snapshot's arrays are one item a series: the likelihood ring's rows as opaque items of 8 * short bytes."""
    ring = arrays.get("ring")
    if ring is not None and ring.ndim == 2:
        arrays["ring"] = np.ascontiguousarray(ring).view(f"V{8 * ring.shape[1]}").reshape(len(ring))
    return arrays
