"""Where session state outlives a process: one small interface (base.py) and a module per backend.

`open_store(url)`: `memory://` (nothing written: state lives as long as the process) or `sqlite:///PATH`
(relative to the working directory; `sqlite:////abs/path` for an absolute one). Only state.py calls a store.
"""
from __future__ import annotations

from streamer.store.base import SCHEMA_VERSION, Snapshot, Store, StoreError
from streamer.store.memory import MemoryStore


def open_store(url: str) -> Store:
    """The store `url` names, opened (and migrated forward); StoreError says why it cannot be."""
    if url in ("memory://", "memory:"):
        return MemoryStore()
    if url.startswith("sqlite:///"):
        from streamer.store.sqlite import SQLiteStore
        path = url[len("sqlite:///"):]
        if not path:
            raise StoreError(f"{url}: no file path (sqlite:///state/streamer.db, sqlite:////abs/path.db)")
        return SQLiteStore(path)
    raise StoreError(f"{url}: unknown store (use memory:// or sqlite:///PATH)")


__all__ = ["SCHEMA_VERSION", "MemoryStore", "Snapshot", "Store", "StoreError", "open_store"]
