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
from streamer.series import SeriesTable
from streamer.store import MemoryStore, Snapshot, Store

MODE_CUMULATIVE = 1
MODE_EXPONENTIAL = 2
MODE_NAMES = {MODE_CUMULATIVE: "MODE_CUMULATIVE", MODE_EXPONENTIAL: "MODE_EXPONENTIAL"}
_ARRAYS = ("count", "mean", "spread")  # what a snapshot keeps of a SeriesState, besides the names
# ...and of the optional rules' state, for the sessions that use them (issue 15): exclude_limit's run of
# excluded values, the cooldown's countdown, the likelihood score's count, long-term mean and variance of the
# short averages, and its ring of the last likelihood_short raw scores (a row per series).
_OPTIONAL = {"streak": np.int64, "hold": np.int64, "lcount": np.int64, "lmean": np.float64, "lvar": np.float64,
             "ring": np.float64, "ep_run": np.int64, "ep_start": np.int64, "ep_count": np.int64,
             "ep_peak_z": np.float64, "ep_peak_value": np.float64}
_LIKELIHOOD = ("lcount", "lmean", "lvar", "ring")
# ...and the episodes' (issue 20): 0 with none open else 1 + normal values since its last outlier, its start
# (data time, ns), flagged values, peak |z| and the value at it
_EPISODES = ("ep_run", "ep_start", "ep_count", "ep_peak_z", "ep_peak_value")

log = logging.getLogger(__name__)


class SeriesState:
    """Running statistics of every series of one stream or session, indexed by the table's slots.

    `count` is the number of values each series has taken in; `mean` its mean; `spread` is Welford's M2
    (sum of squared deviations) in MODE_CUMULATIVE and the exponentially weighted variance in MODE_EXPONENTIAL.
    Bytes per series: 24 in these arrays, plus the table's 32 and the name's length. A subclass may keep more
    arrays per series (otlp.OtlpState): ARRAYS names every one that reserve() grows and a snapshot keeps. The
    optional rules' arrays exist (use()) only in states whose options need them, and are empty otherwise:
    exclude_limit 8 bytes, cooldown 8, SCORE_LIKELIHOOD 24 + 8 * likelihood_short (104 at the default 10),
    episodes 40.
    """

    ARRAYS = _ARRAYS

    def __init__(self, mode: int, max_series: int, capacity: int = 64):
        self.mode = mode
        self.table = SeriesTable(max_series)
        self.count = np.zeros(capacity, dtype=np.int64)
        self.mean = np.zeros(capacity, dtype=np.float64)
        self.spread = np.zeros(capacity, dtype=np.float64)
        self.optional: list[str] = []  # the optional arrays in use, as long as count; the others are empty
        for name, dtype in _OPTIONAL.items():
            setattr(self, name, np.zeros((0, 1) if name == "ring" else 0, dtype=dtype))

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
                shape = (capacity, likelihood_short) if name == "ring" else capacity
                setattr(self, name, np.zeros(shape, dtype=_OPTIONAL[name]))
                self.optional.append(name)

    def reserve(self, n_series: int) -> None:
        """Grow the arrays (doubling, so appends stay amortised O(1)) to hold `n_series` series."""
        capacity = len(self.count)
        if n_series <= capacity:
            return
        while capacity < n_series:
            capacity *= 2
        for name in (*self.ARRAYS, *self.optional):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    def columns(self) -> tuple[bytes, np.ndarray, dict[str, np.ndarray]]:
        """Copies of (names in slot order, their lengths, the statistics' arrays), for a snapshot."""
        n = len(self.table)
        arena, offsets, lengths = self.table.name_arrays()
        lengths = lengths[:n].copy()
        if n and not np.array_equal(offsets[1:n], np.cumsum(lengths)[:-1]):
            raise AssertionError("series names are not packed in slot order")  # SeriesTable appends them
        used = int(offsets[n - 1] + lengths[n - 1]) if n else 0
        arrays = {k: getattr(self, k)[:n].copy() for k in (*self.ARRAYS, *self.optional)}
        if "ring" in arrays:  # one row per series: each row one opaque item of 8 * likelihood_short bytes
            arrays["ring"] = arrays["ring"].view(f"V{8 * self.ring.shape[1]}").reshape(n)
        return arena[:used].tobytes(), lengths, arrays

    @classmethod
    def from_snapshot(cls, snap: Snapshot, max_series: int) -> SeriesState:
        n = len(snap)
        state = cls(snap.mode, max(max_series, n), capacity=max(64, n))
        offsets = np.zeros(n, dtype=np.int64)
        np.cumsum(snap.name_lengths[:-1], out=offsets[1:])
        ids = state.table.intern(snap.names, offsets, snap.name_lengths)
        if not np.array_equal(ids, np.arange(n)):
            raise ValueError(f"session {snap.name!r}: the snapshot's series names are not distinct")
        for key in cls.ARRAYS:
            getattr(state, key)[:n] = snap.arrays[key]
        # The optional rules' arrays the snapshot has (older ones have none: those rules start from zeros).
        if "ring" in snap.arrays and all(k in snap.arrays for k in _LIKELIHOOD):
            ring = snap.arrays["ring"]
            state.use(False, False, ring.dtype.itemsize // 8)
            state.ring[:n] = np.frombuffer(ring.tobytes(), dtype=np.float64).reshape(n, -1)
        if all(k in snap.arrays for k in _EPISODES):
            state.use(False, False, 0, episodes=True)
        for key in ("streak", "hold", "lcount", "lmean", "lvar", *_EPISODES):
            if key in snap.arrays and (key not in _LIKELIHOOD or "ring" in state.optional) and (
                    key not in _EPISODES or "ep_run" in state.optional):
                state.use(key == "streak", key == "hold", 0)
                getattr(state, key)[:n] = snap.arrays[key]
        return state


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

    def snapshot(self, now: float, blocking: bool = True) -> Snapshot | None:
        """A copy of the state between two batches, with the next version number; marks it unchanged.
        None if not `blocking` and a batch holds the lock."""
        if not self.lock.acquire(blocking):
            return None
        try:
            names, lengths, arrays = self.state.columns()
            self.version += 1
            self.changed = False
            self.snapshot_at = now
            return Snapshot(self.name, self.state.mode, self.options, self.version, names, lengths, arrays, now,
                            self.seq, self.answers.pack())
        finally:
            self.lock.release()


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
                 on_snapshot: Callable[[float, bool], None] = lambda seconds, ok: None):
        self.ttl = ttl
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

    def attach(self, name: str, mode: int, options: str = "", state_class: type = SeriesState) -> Session:
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
                session = None
            if session is not None and session.open:
                raise SessionError("busy", f"session {name!r} already has an open stream")
            if session is None and len(self._sessions) >= self.max_sessions:
                raise SessionError("full", f"session {name!r}: the server holds its limit of "
                                           f"{self.max_sessions} sessions (--max-sessions)")
            if session is None:
                session = Session(name, state_class(mode, self.max_series), last_used=self.clock())
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
            if session.leased:
                self._writer.submit(self._release, session)
            raise
        session.options = options
        return session

    def detach(self, session: Session, forget: bool = False) -> concurrent.futures.Future:
        """End the session's stream: snapshot it (if changed) and release its lease, off the event loop.
        `forget` drops the session at once instead of keeping it for the TTL (nothing is written). The future
        is done once the snapshot is written and the lease released (an OTLP export waits for it)."""
        with self._lock:
            session.open = False
            session.last_used = self.clock()
            if forget and self._sessions.get(session.name) is session:
                del self._sessions[session.name]
        snap = session.snapshot(self.clock()) if session.changed and self.store.durable and not forget else None
        return self._writer.submit(self._save_and_release, session, snap)

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
            snap = session.snapshot(self.clock(), blocking=False)
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
        snap = session.snapshot(now, blocking=False)
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
                del self._sessions[name]
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
                snap = session.snapshot(self.clock()) if session.changed and self.store.durable else None
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
            state = type(session.state).from_snapshot(snap, self.max_series) if snap is not None else None
        except Exception as exc:  # unreadable or damaged: go on from what this process has
            self._store_failed(f"session {name!r}: cannot load its snapshot; going on from memory", exc)
            return
        if state is not None:
            try:
                answers = Answers.unpack(snap.answers)
            except ValueError as exc:  # the state is sound; only answers to batches sent again are lost
                log.error("session %r: %s; batches sent again are answered without their outliers", name, exc)
                answers = Answers()
            with session.lock:
                session.state, session.version, session.changed = state, snap.version, False
                session.seq = session.durable_seq = snap.seq
                session.answers = answers
            log.info("session %r: resumed from the store (version %d, seq %d, %d series)", name, snap.version,
                     snap.seq, len(snap))

    def _save(self, session: Session, snap: Snapshot) -> bool:
        started = time.perf_counter()
        try:
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
