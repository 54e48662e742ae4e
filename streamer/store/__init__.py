"""Where session state outlives a process: one small interface (base.py) and a module per backend.

`open_store(url)`: `memory://` (nothing written: state lives as long as the process), `sqlite:///PATH`
(relative to the working directory; `sqlite:////abs/path` for an absolute one), or `redis://HOST:PORT/DB`
(`rediss://` for TLS) shared by a fleet. Only state.py calls a store.
"""
from __future__ import annotations

from streamer.store.base import SCHEMA_VERSION, Snapshot, Store, StoreError
from streamer.store.memory import MemoryStore


def open_store(url: str, session_ttl: float | None = None) -> Store:
    """The store `url` names, opened (and migrated forward); StoreError says why it cannot be. A store that
    can expire idle sessions by itself (Redis) does so `session_ttl` seconds after their release."""
    if url in ("memory://", "memory:"):
        return MemoryStore()
    if url.startswith("sqlite:///"):
        from streamer.store.sqlite import SQLiteStore
        path = url[len("sqlite:///"):]
        if not path:
            raise StoreError(f"{url}: no file path (sqlite:///state/streamer.db, sqlite:////abs/path.db)")
        return SQLiteStore(path)
    if url.startswith(("redis://", "rediss://")):
        from streamer.store.redis import RedisStore
        return RedisStore(url, session_ttl)
    raise StoreError(f"{url}: unknown store (use memory://, sqlite:///PATH or redis://HOST:PORT/DB)")


__all__ = ["SCHEMA_VERSION", "MemoryStore", "Snapshot", "Store", "StoreError", "open_store"]
