"""Named sessions that outlive a stream and, through a store (streamer/store/), the process: leases say which
process may change a session, snapshots carry its state across restarts. This module is the only caller of the
store; the per-series state itself is series_state.py's.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
import uuid
from typing import Callable

from streamer.answers import Answers
from streamer.series_state import (MODE_CUMULATIVE, MODE_EXPONENTIAL, MODE_NAMES, Capture, SeriesBudget,  # noqa: F401
                                   SeriesState, TotalSeriesLimitError)
from streamer.store import MemoryStore, Snapshot, Store

log = logging.getLogger(__name__)


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
    tenant: str = ""        # the tenant that made it (streamer/tenants.py; "" without tenants); kept in the store
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
                                   last_used=now, seq=self.seq, answers=self.answers.pack(), tenant=self.tenant),
                              raw, m, release)
        finally:
            self.lock.release()
        return capture.pack() if pack else capture


class SessionError(Exception):
    """Why a session cannot be attached; `kind` is "busy", "mode", "full", "store", "tenant" (another tenant's
    session) or "missing" (an admin call on a session nobody holds)."""

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

    def held(self, name: str) -> Session | None:
        """The session `name` as this process holds it in memory, if it does (the admin API)."""
        with self._lock:
            return self._sessions.get(name)

    def tenant_of(self, name: str) -> str | None:
        """The tenant of session `name` (this process's copy, else the store's; None if neither has it)."""
        session = self.held(name)
        if session is not None:
            return session.tenant
        return self.store.tenant(name)

    def held_sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def on_writer(self, job, *args):
        """Run `job(*args)` on the store's writer thread, after what is queued there; its result (blocks)."""
        return self._writer.submit(job, *args).result()

    def attach(self, name: str, mode: int | None, options: str | None = "", state_class: type = SeriesState,
               tenant: str | None = "") -> Session:
        """Open `name` for one stream, making it if new; raise SessionError if it cannot be.

        `tenant`: the caller's; a session another tenant made is refused ("tenant"), and a new one is the
        caller's. None (the admin API): any tenant's, in any mode (`mode` None), and only one that exists here
        or in the store ("missing" otherwise).

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
            if session is not None and tenant is not None and session.tenant != tenant:
                # before "busy": whether another tenant's stream has it open is not the caller's business
                raise SessionError("tenant", f"session {name!r} belongs to another tenant")
            if session is not None and session.open:
                raise SessionError("busy", f"session {name!r} already has an open stream")
            if session is None and len(self._sessions) >= self.max_sessions:
                raise SessionError("full", f"session {name!r}: the server holds its limit of "
                                           f"{self.max_sessions} sessions (--max-sessions)")
            made = session is None
            if made:
                state = state_class(mode or MODE_CUMULATIVE, self.max_series, ttl=self.series_ttl, budget=self.budget)
                session = Session(name, state, last_used=self.clock(), tenant=tenant or "")
                self._sessions[name] = session
            session.open = True  # reserved: the store calls run without the registry's lock
        try:
            loaded = self._writer.submit(self._take, session, tenant).result()
            if made and tenant is None and not loaded:
                raise SessionError("missing", f"no session {name!r}: neither this server process nor the store "
                                              f"holds it")
            if mode is not None and session.state.mode != mode:
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
        if options is not None:  # None (the admin API): the options it was last judged with stay
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
                session.state.drop()
        snap = session.snapshot(self.clock(), pack=False) if session.changed and self.store.durable and not forget \
            else None
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
                durable = session.changed and self.store.durable
                snap = session.snapshot(self.clock(), pack=False) if durable else None
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

    def _take(self, session: Session, tenant: str | None = None) -> bool:
        """The lease, and the stored state if it is newer than ours (refused if another `tenant` made it;
        None: any); whether a state was loaded."""
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
            state = type(session.state).from_snapshot(snap, self.max_series, self.budget) if snap is not None else None
        except Exception as exc:  # unreadable or damaged: go on from what this process has
            self._store_failed(f"session {name!r}: cannot load its snapshot; going on from memory", exc)
            return False
        if snap is not None and tenant is not None and snap.tenant != tenant:
            if state is not None:
                state.drop()
            raise SessionError("tenant", f"session {name!r} belongs to another tenant")
        if stored is None and session.version > 0 and self.store.durable and tenant is None:
            raise SessionError("missing", f"no session {name!r}: it was deleted (or expired) in the store")
        if stored is None and session.version > 0 and self.store.durable:
            # it was written, and the store has it no more: deleted (the admin API, from any process) or
            # expired there; this process's copy must not bring it back
            with session.lock:
                old = session.state
                session.state = type(old)(old.mode, self.max_series, ttl=old.ttl, budget=self.budget)
                old.drop()
                session.version, session.seq, session.durable_seq, session.answers = 0, 0, 0, Answers()
                session.tenant = tenant or ""
            log.info("session %r: gone from the store (deleted or expired there): starting afresh", name)
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
                session.tenant = snap.tenant
                session.seq = session.durable_seq = snap.seq
                session.answers = answers
                session.options = session.options or snap.options
            log.info("session %r: resumed from the store (version %d, seq %d, %d series)", name, snap.version,
                     snap.seq, len(snap))
            return True
        return False

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
