"""State that outlives a batch: per-series running statistics, and named sessions that outlive a stream.

Arrays only here; the arithmetic on them lives in kernels.py.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable

import numpy as np

from streamer.series import SeriesTable

MODE_CUMULATIVE = 1
MODE_EXPONENTIAL = 2
MODE_NAMES = {MODE_CUMULATIVE: "MODE_CUMULATIVE", MODE_EXPONENTIAL: "MODE_EXPONENTIAL"}


class SeriesState:
    """Running statistics of every series of one stream or session, indexed by the table's slots.

    `count` is the number of values each series has taken in; `mean` its mean; `spread` is Welford's M2
    (sum of squared deviations) in MODE_CUMULATIVE and the exponentially weighted variance in MODE_EXPONENTIAL.
    """

    def __init__(self, mode: int, max_series: int, capacity: int = 64):
        self.mode = mode
        self.table = SeriesTable(max_series)
        self.count = np.zeros(capacity, dtype=np.int64)
        self.mean = np.zeros(capacity, dtype=np.float64)
        self.spread = np.zeros(capacity, dtype=np.float64)

    def reserve(self, n_series: int) -> None:
        """Grow the arrays (doubling, so appends stay amortised O(1)) to hold `n_series` series."""
        capacity = len(self.count)
        if n_series <= capacity:
            return
        while capacity < n_series:
            capacity *= 2
        for name in ("count", "mean", "spread"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)


@dataclasses.dataclass(eq=False)
class Session:
    """A named SeriesState that a collector can come back to after its stream ends."""

    name: str
    state: SeriesState
    open: bool = False      # a stream is attached right now
    last_used: float = 0.0  # clock() when the last stream detached (or the session was made)


class SessionError(Exception):
    """Why a session cannot be attached; `kind` is "busy", "mode" or "full"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class SessionRegistry:
    """Named sessions kept for `ttl` seconds after their last stream detached.

    One lock guards `_sessions` and each session's `open` flag, so that checking-then-setting `open` is atomic
    and two streams never share a session's arrays. Under grpc.aio every caller runs on the event loop thread,
    but the lock keeps the registry safe for a thread-pool server or a batch offloaded to a worker thread.
    """

    def __init__(self, ttl: float, max_sessions: int, max_series: int,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.max_sessions = max_sessions
        self.max_series = max_series
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def attach(self, name: str, mode: int) -> Session:
        """Open `name` for one stream, making it if new; raise SessionError if it cannot be."""
        with self._lock:
            session = self._sessions.get(name)
            if session is not None and not session.open and self.clock() - session.last_used > self.ttl:
                del self._sessions[name]  # expired, though the sweeper has not come by yet
                session = None
            if session is None:
                if len(self._sessions) >= self.max_sessions:
                    raise SessionError("full", f"session {name!r}: the server holds its limit of "
                                               f"{self.max_sessions} sessions (--max-sessions)")
                session = Session(name, SeriesState(mode, self.max_series))
                self._sessions[name] = session
            elif session.open:
                raise SessionError("busy", f"session {name!r} already has an open stream")
            elif session.state.mode != mode:
                raise SessionError("mode", f"session {name!r} keeps {MODE_NAMES[session.state.mode]} "
                                           f"state; it cannot continue in {MODE_NAMES[mode]}")
            session.open = True
            return session

    def detach(self, session: Session, forget: bool = False) -> None:
        """End the session's stream; `forget` drops the session at once instead of keeping it for the TTL."""
        with self._lock:
            session.open = False
            session.last_used = self.clock()
            if forget and self._sessions.get(session.name) is session:
                del self._sessions[session.name]

    def sweep(self) -> int:
        """Drop sessions idle (no open stream) for longer than the TTL; return how many were dropped."""
        now = self.clock()
        with self._lock:
            expired = [n for n, s in self._sessions.items() if not s.open and now - s.last_used > self.ttl]
            for name in expired:
                del self._sessions[name]
        return len(expired)
