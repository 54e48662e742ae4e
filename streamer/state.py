"""State that outlives a batch: per-series running statistics, and named sessions that outlive a stream and,
through a store (streamer/store/), the process: leases say which process may change a session, snapshots
carry its state across restarts. This module is the only caller of the store.

Arrays only here; the arithmetic on them lives in kernels.py.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
import uuid
from typing import Callable

import numpy as np

from streamer.answers import Answers
from streamer import expiry
from streamer.series import M_COUNT, M_HIGH, M_NAMES, M_USED, SeriesLimitError, SeriesTable, _gather, lazy_zeros
from streamer.store import MemoryStore, Snapshot, Store

MODE_CUMULATIVE = 1
MODE_EXPONENTIAL = 2
MODE_NAMES = {MODE_CUMULATIVE: "MODE_CUMULATIVE", MODE_EXPONENTIAL: "MODE_EXPONENTIAL"}
# Per-series arrays, indexed by slot. _STATS are zeroed for a new series in a reused slot (reset_slots); a
# feature adding per-series state adds its array here (and to _ARRAYS, to be kept in snapshots).
_STATS = ("count", "mean", "spread")
_ARRAYS = _STATS + ("last_seen",)  # what a snapshot keeps of a SeriesState, besides the names

log = logging.getLogger(__name__)


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
    """

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

    @property
    def nbytes(self) -> int:
        """Bytes held for the series (the per-series arrays up to the slots in use, and the table)."""
        return self.table.slots * sum(getattr(self, k).itemsize for k in _ARRAYS) + self.table.nbytes

    def reserve(self, n_series: int) -> None:
        """Grow the arrays (doubling, so appends stay amortised O(1)) to hold `n_series` slots."""
        capacity = len(self.count)
        if n_series <= capacity:
            return
        while capacity < n_series:
            capacity *= 2
        for name in _ARRAYS:
            old = getattr(self, name)
            new = lazy_zeros(capacity, old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    def reset_slots(self, slots: np.ndarray) -> None:
        """Zero the statistics of `slots` (a series starting fresh in a reused or expired slot)."""
        for name in _STATS:
            getattr(self, name)[slots] = 0

    def take(self, slots: np.ndarray) -> tuple:
        """Copies of every per-series array at `slots` and the clock, for put() to restore."""
        return tuple(getattr(self, k)[slots] for k in _ARRAYS) + (float(self.clock[0]),)

    def put(self, slots: np.ndarray, saved: tuple) -> None:
        """Restore what take() copied (repeated slots restore the same values)."""
        for k, values in zip(_ARRAYS, saved):
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
                buf = shadow[key] = np.empty(max(room, len(src)), dtype=src.dtype)
            buf[:len(src)] = src
            return buf[:len(src)]
        raw = {k: put(k, getattr(self, k)[:high], len(self.count)) for k in _ARRAYS}
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
        return names, lengths, {k: getattr(self, k)[slots] for k in _ARRAYS}

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
        for key in _ARRAYS:
            if key in snap.arrays:
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
            arrays = {k: raw[k][slots[:n]] for k in _ARRAYS}
            return Snapshot(names=names[:used].tobytes(), name_lengths=lens[:n], arrays=arrays, **self.fields)
        finally:
            self.release()


@dataclasses.dataclass(eq=False)
class Session:
    """A named SeriesState that a collector can come back to after its stream ends.

    `lock` is held while a batch changes the state and while a snapshot copies it, so a snapshot never holds
    half a batch (a batch may run on a worker thread while the event loop takes a snapshot).
    """

    name: str
    state: SeriesState
    open: bool = False      # a stream is attached right now
    last_used: float = 0.0  # clock() when the last stream detached (or the session was made)
    version: int = 0        # of the last snapshot saved or loaded
    changed: bool = False   # batches were applied since that snapshot
    lost: bool = False      # the store gave the lease to another process: this copy must not be used
    leased: bool = False    # this process holds the session's lease in the store (set on the writer thread)
    pending: set = dataclasses.field(default_factory=set)  # kinds of periodic job queued on the writer
    options: str = ""
    seq: int = 0            # the highest client sequence number applied to the state
    durable_seq: int = 0    # the highest one whose effects are in the store (set on the writer thread)
    answers: Answers = dataclasses.field(default_factory=Answers)  # of the last numbered batches
    snapshot_at: float = 0.0  # clock() of the last snapshot
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def snapshot(self, now: float, blocking: bool = True, pack: bool = True) -> Snapshot | Capture | None:
        """A copy of the state between two batches, with the next version number; marks it unchanged.
        None if not `blocking` and a batch holds the lock. Not `pack`: the Capture, for the writer thread to
        pack (the lock is held only for the copy)."""
        if not self.lock.acquire(blocking):
            return None
        try:
            self.state.sweep(force=True)  # expired series are not written
            raw, m, release = self.state.capture()
            self.version += 1
            self.changed = False
            self.snapshot_at = now
            capture = Capture(dict(name=self.name, mode=self.state.mode, options=self.options, version=self.version,
                                   last_used=now, seq=self.seq, answers=self.answers.pack()), raw, m, release)
        finally:
            self.lock.release()
        return capture.pack() if pack else capture


class SessionError(Exception):
    """Why a session cannot be attached; `kind` is "busy", "mode", "full" or "store"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class SessionRegistry:
    """Named sessions: kept in memory for `ttl` seconds after their last stream detached, and in the store.

    One lock guards `_sessions` and each session's `open` and `leased` flags, so that checking-then-setting
    `open` is atomic and two streams never share a session's arrays. Callers are the event loop's thread, the
    worker threads of large batches, and the store's writer thread.

    With a store, attaching takes the session's lease there (so no other process on the store can attach it)
    and loads its snapshot when the store's is newer than this process's copy; snapshots, renewals and
    releases run on one writer thread, in order, off the event loop. The lease's owner token is this
    registry's: a session it holds can be taken again at once by its next stream here.
    """

    def __init__(self, ttl: float, max_sessions: int, max_series: int,
                 clock: Callable[[], float] = time.time, store: Store | None = None,
                 lease_seconds: float = 10.0, on_store_health: Callable[[bool], None] = lambda ok: None,
                 snapshot_seconds: float = 5.0,
                 on_snapshot: Callable[[float, bool], None] = lambda seconds, ok: None,
                 series_ttl: float = 0.0, budget: SeriesBudget | None = None):
        self.ttl = ttl
        self.series_ttl = series_ttl  # the default of each new session's series TTL (a stream's options set it)
        self.budget = budget if budget is not None else SeriesBudget()
        self.max_sessions = max_sessions
        self.max_series = max_series
        self.clock = clock
        self.store = store if store is not None else MemoryStore()
        self.lease_seconds = lease_seconds
        self.snapshot_seconds = snapshot_seconds
        self.owner = uuid.uuid4().hex
        self._on_store_health = on_store_health
        self._on_snapshot = on_snapshot  # (seconds, written) after each snapshot write: the server's metrics
        self._store_ok = True
        self._health_lock = threading.Lock()  # protects _store_ok and the order of health updates
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="streamer-store")

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def series_held(self) -> int:
        """Series in every session held in memory (the server's metrics)."""
        with self._lock:
            return sum(len(s.state.table) for s in self._sessions.values())

    def attach(self, name: str, mode: int, options: str = "") -> Session:
        """Open `name` for one stream, making it if new; raise SessionError if it cannot be.

        The lease is taken (and a newer stored state loaded) on the store's writer thread, which this waits
        for: every lease change of this process then happens in one order, so a release queued by an earlier
        stream can never undo this stream's lease.
        """
        with self._lock:
            session = self._sessions.get(name)
            if session is not None and not session.open and (
                    self.clock() - session.last_used > self.ttl or session.lost):
                del self._sessions[name]  # expired, though the sweeper has not come by yet
                session.state.drop()
                session = None
            if session is not None and session.open:
                raise SessionError("busy", f"session {name!r} already has an open stream")
            if session is None and len(self._sessions) >= self.max_sessions:
                raise SessionError("full", f"session {name!r}: the server holds its limit of "
                                           f"{self.max_sessions} sessions (--max-sessions)")
            if session is None:
                session = Session(name, SeriesState(mode, self.max_series, ttl=self.series_ttl, budget=self.budget), last_used=self.clock())
                self._sessions[name] = session
            session.open = True  # reserved: the store calls run without the registry's lock
        try:
            self._writer.submit(self._take, session).result()
            if session.state.mode != mode:
                raise SessionError("mode", f"session {name!r} keeps {MODE_NAMES[session.state.mode]} "
                                           f"state; it cannot continue in {MODE_NAMES[mode]}")
        except BaseException:
            with self._lock:
                session.open = False
                if len(session.state.table) == 0 and self._sessions.get(name) is session:
                    del self._sessions[name]
                    session.state.drop()
            if session.leased:
                self._writer.submit(self._release, session)
            raise
        session.options = options
        return session

    def detach(self, session: Session, forget: bool = False) -> None:
        """End the session's stream: snapshot it (if changed) and release its lease, off the event loop.
        `forget` drops the session at once instead of keeping it for the TTL (nothing is written)."""
        with self._lock:
            session.open = False
            session.last_used = self.clock()
            if forget and self._sessions.get(session.name) is session:
                del self._sessions[session.name]
                session.state.drop()
        snap = session.snapshot(self.clock(), pack=False) if session.changed and self.store.durable and not forget \
            else None
        self._writer.submit(self._save_and_release, session, snap)

    def snapshot_open(self) -> int:
        """Snapshot every held session that changed since its last snapshot (open ones, and idle ones whose
        last write failed); returns how many. A session whose batch is running on a worker thread is left to
        the next round rather than waited for: this runs on the event loop."""
        if not self.store.durable:
            return 0
        now = self.clock()
        with self._lock:  # busy sessions are snapshotted by after_batch; this round is for the others
            due = [s for s in self._sessions.values() if s.leased and s.changed and not s.lost
                   and now - s.snapshot_at >= self.snapshot_seconds / 2]
        taken = 0
        for session in due:
            if "save" in session.pending:
                continue  # the writer is behind: one copy a session waits at a time, not a queue of them
            snap = session.snapshot(self.clock(), blocking=False, pack=False)
            if snap is not None:
                self._queue("save", self._save_and_release if not session.open else self._save, session, snap)
                taken += 1
        return taken

    def after_batch(self, session: Session) -> None:
        """After a batch of an open session (its lock released): snapshot it when the last snapshot is
        `snapshot_seconds` old, so that its durable sequence number advances at least that often while its
        stream is busy, whatever the periodic round (which skips a session whose batch holds the lock)."""
        now = self.clock()
        if now - session.snapshot_at < self.snapshot_seconds or not self.store.durable or "save" in session.pending:
            return
        snap = session.snapshot(now, blocking=False, pack=False)
        if snap is not None:
            self._queue("save", self._save, session, snap)

    def renew_leases(self) -> None:
        """Extend every lease this process holds (call every third of the lease)."""
        with self._lock:
            held = [s for s in self._sessions.values() if s.leased and not s.lost]
        for session in held:
            if "renew" not in session.pending:
                self._queue("renew", self._renew, session)

    def sweep(self) -> int:
        """Drop sessions idle (no open stream) for longer than the TTL, here and in the store; return how many
        were dropped here. A session whose last write failed is kept until it is written."""
        now = self.clock()
        with self._lock:
            expired = [n for n, s in self._sessions.items()
                       if not s.open and not (s.leased and s.changed) and now - s.last_used > self.ttl]
            for name in expired:
                self._sessions.pop(name).state.drop()
        self._writer.submit(self._expire, now - self.ttl, now)
        return len(expired)

    def close(self) -> None:
        """Shutdown: write every session that changed and release every lease, then close the store. Streams
        have ended by now (their detach queued most of this)."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            if session.open:
                self.detach(session)
            elif session.leased:  # its last write failed: one more try
                snap = session.snapshot(self.clock(), pack=False) if session.changed and self.store.durable else None
                self._writer.submit(self._save_and_release, session, snap)
        self._writer.shutdown(wait=True)
        self.store.close()

    def _queue(self, kind: str, job, session: Session, *args) -> None:
        """A periodic job for the writer, noted in `session.pending` until it has run (callers skip a kind
        that is still pending, so a writer that falls behind is not given a growing queue)."""
        with self._lock:
            session.pending.add(kind)

        def run():
            try:
                job(session, *args)
            finally:
                with self._lock:
                    session.pending.discard(kind)
        self._writer.submit(run)

    # --- on the writer thread -------------------------------------------------------------------------

    def _take(self, session: Session) -> None:
        """The lease, and the stored state if it is newer than ours."""
        name = session.name
        try:
            holder = self.store.acquire(name, self.owner, self.lease_seconds, self.clock())
        except Exception as exc:
            # Without the lease, attaching could let two processes change one session: refuse, and let the
            # client retry (a store that is down does not stop streams already open, nor private ones).
            self._store_failed(f"session {name!r}: cannot take its lease", exc)
            raise SessionError("store", f"session {name!r}: the store cannot be reached to take its lease "
                                        f"({exc}); retry") from None
        if holder is not None:
            raise SessionError("busy", f"session {name!r} has an open stream on another server process (its "
                                       f"lease ends in {max(holder - self.clock(), 0):.1f} s unless renewed)")
        session.leased = True
        self._store_back()
        try:
            stored = self.store.version(name)
            snap = self.store.load(name) if stored is not None and stored > session.version else None
            state = SeriesState.from_snapshot(snap, self.max_series, self.budget) if snap is not None else None
        except Exception as exc:  # unreadable or damaged: go on from what this process has
            self._store_failed(f"session {name!r}: cannot load its snapshot; going on from memory", exc)
            return
        if state is not None:
            try:
                answers = Answers.unpack(snap.answers)
            except ValueError as exc:  # the state is sound; only answers to batches sent again are lost
                log.error("session %r: %s; batches sent again are answered without their outliers", name, exc)
                answers = Answers()
            state.ttl = session.state.ttl
            with session.lock:
                old, session.state, session.version, session.changed = session.state, state, snap.version, False
                old.drop()
                session.seq = session.durable_seq = snap.seq
                session.answers = answers
            log.info("session %r: resumed from the store (version %d, seq %d, %d series)", name, snap.version,
                     snap.seq, len(snap))

    def _save(self, session: Session, snap: Snapshot | Capture) -> bool:
        started = time.perf_counter()
        try:
            if isinstance(snap, Capture):
                snap = snap.pack()
            saved = self.store.save(snap, self.owner)
            if not saved and self.store.acquire(session.name, self.owner, self.lease_seconds, self.clock()) is None:
                saved = self.store.save(snap, self.owner)  # the lease had lapsed (store outage) and was free
        except Exception as exc:
            self._on_snapshot(time.perf_counter() - started, False)
            session.changed = True  # retried at the next snapshot round, the lease kept meanwhile
            self._store_failed(f"session {session.name!r}: snapshot of {len(snap)} series failed; retrying", exc)
            return False
        self._on_snapshot(time.perf_counter() - started, saved)  # refused (lease lost): a failure too
        self._store_back()
        if saved:
            session.durable_seq = max(session.durable_seq, snap.seq)
        else:
            session.lost = True
            log.warning("session %r: snapshot refused: another server process holds its lease now", session.name)
            return False
        log.debug("session %r: snapshot version %d: %d series, %d values, %d bytes in %.1f ms", session.name,
                  snap.version, len(snap), int(snap.arrays["count"].sum()), snap.nbytes,
                  1e3 * (time.perf_counter() - started))
        return True

    def _save_and_release(self, session: Session, snap: Snapshot | None) -> None:
        if snap is None or self._save(session, snap) or session.lost:
            self._release(session)
        # else the write failed: the lease is kept (and renewed) until a later round writes it

    def _release(self, session: Session) -> None:
        with self._lock:
            if session.open or (self._sessions.get(session.name) not in (None, session)):
                return  # attached again meanwhile (this session or a new one of the name): the lease is theirs
            session.leased = False
        try:
            self.store.release(session.name, self.owner, self.clock())
            self._store_back()
        except Exception as exc:
            self._store_failed(f"session {session.name!r}: cannot release its lease (it expires by itself)", exc)

    def _renew(self, session: Session) -> None:
        try:
            kept = self.store.renew(session.name, self.owner, self.lease_seconds, self.clock())
            if not kept:  # lapsed during a store outage and free again: take it back
                kept = self.store.acquire(session.name, self.owner, self.lease_seconds, self.clock()) is None
        except Exception as exc:
            self._store_failed(f"session {session.name!r}: cannot renew its lease", exc)
            return
        self._store_back()
        if not kept:
            with self._lock:
                session.lost = True
                session.leased = False
            log.warning("session %r: its lease was taken by another server process; its stream ends",
                        session.name)

    def _expire(self, idle_before: float, now: float) -> None:
        try:
            gone = self.store.expire(idle_before, now)
        except Exception as exc:
            self._store_failed("cannot expire idle sessions", exc)
            return
        self._store_back()
        if gone:
            log.info("store: dropped %d idle session(s) after %.0f s", len(gone), self.ttl)

    def _store_failed(self, what: str, exc: Exception) -> None:
        log.error("store: %s: %s", what, exc)
        with self._health_lock:
            if self._store_ok:
                self._store_ok = False
                self._on_store_health(False)

    def _store_back(self) -> None:
        with self._health_lock:
            if not self._store_ok:
                self._store_ok = True
                log.info("store: writing again")
                self._on_store_health(True)
