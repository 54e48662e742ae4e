"""`memory://`: leases and snapshots in this process's memory; nothing outlives it (benchmarks, tests)."""
from __future__ import annotations

import dataclasses
import threading

from streamer.store.base import Snapshot, Store, StoredSession


class MemoryStore(Store):
    """The store interface over two dicts, under one lock (what it protects: both dicts)."""

    durable = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (owner, expires)
        self._snapshots: dict[str, Snapshot] = {}

    def acquire(self, name: str, owner: str, seconds: float, now: float) -> float | None:
        with self._lock:
            held = self._leases.get(name)
            if held is not None and held[0] != owner and held[1] > now:
                return held[1]
            self._leases[name] = (owner, now + seconds)
            return None

    def renew(self, name: str, owner: str, seconds: float, now: float) -> bool:
        with self._lock:
            held = self._leases.get(name)
            if held is None or held[0] != owner:
                return False
            self._leases[name] = (owner, now + seconds)
            return True

    def release(self, name: str, owner: str, now: float) -> bool:
        with self._lock:
            held = self._leases.get(name)
            if held is None or held[0] != owner:
                return False
            del self._leases[name]
            if name in self._snapshots:
                self._snapshots[name] = dataclasses.replace(self._snapshots[name], last_used=now)
            return True

    def version(self, name: str) -> int | None:
        with self._lock:
            snap = self._snapshots.get(name)
            return None if snap is None else snap.version

    def load(self, name: str) -> Snapshot | None:
        with self._lock:
            return self._snapshots.get(name)

    def save(self, snapshot: Snapshot, owner: str) -> bool:
        with self._lock:
            held = self._leases.get(snapshot.name)
            if held is None or held[0] != owner:
                return False
            self._snapshots[snapshot.name] = snapshot
            return True

    def expire(self, idle_before: float, now: float) -> list[str]:
        with self._lock:
            gone = [n for n, s in self._snapshots.items() if s.last_used < idle_before
                    and not (n in self._leases and self._leases[n][1] > now)]
            for n in gone:
                del self._snapshots[n]
            return gone

    def sessions(self, now: float) -> list[StoredSession]:
        with self._lock:
            names = sorted(set(self._snapshots) | {n for n, (_, e) in self._leases.items() if e > now})
            out = []
            for n in names:
                s, (owner, expires) = self._snapshots.get(n), self._leases.get(n, ("", 0.0))
                live = expires > now
                out.append(StoredSession(n, s.tenant if s else "", s.mode if s else 0, len(s) if s else 0,
                                         s.version if s else 0, s.last_used if s else 0.0,
                                         owner if live else "", expires if live else 0.0))
            return out

    def delete(self, name: str, owner: str) -> bool:
        with self._lock:
            held = self._leases.get(name)
            if held is None or held[0] != owner:
                return False
            del self._leases[name]
            self._snapshots.pop(name, None)
            return True
