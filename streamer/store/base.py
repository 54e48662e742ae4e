"""The store interface: leases on sessions and columnar snapshots of their state. No numba, no grpc.

A lease has an owner token and an expiry (wall-clock seconds, shared by every process on the store).
Acquiring, renewing, releasing and saving are compare-and-set on the owner, so a stalled or partitioned old
owner can never overwrite the state of the owner that took the session after its lease expired.
"""
from __future__ import annotations

import abc
import dataclasses

import numpy as np

SCHEMA_VERSION = 3  # of every durable backend's layout; a store written by a newer one is refused at start
# 1: the first. 2: a session's applied sequence number and the answers of its last numbered batches.
# 3: the tenant that owns a session (issue 22; "" without tenants).


class StoreError(Exception):
    """The store cannot be opened or used (the message names the store and the reason)."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A session's state between two batches, columnar: a few arrays, not a row per series.

    Series slot i has the name names[offset_i : offset_i + name_lengths[i]] (offsets are the running sum of
    the lengths) and its statistics at arrays[key][i] for every key ("count", "mean", "spread", ...).
    """

    name: str
    mode: int
    options: str                    # the stream options the session was last judged with, for people
    version: int                    # raised by one with every save; a newer version in the store wins
    names: bytes
    name_lengths: np.ndarray        # int64[n]
    arrays: dict[str, np.ndarray]   # each [n]
    last_used: float = 0.0          # wall-clock time of the save
    seq: int = 0                    # the highest client sequence number applied to this state
    answers: bytes = b""            # the session's kept answers (state.py packs them; the store only keeps them)
    tenant: str = ""                # the tenant that made the session (streamer/tenants.py); "" without tenants

    def __len__(self) -> int:
        return len(self.name_lengths)

    @property
    def nbytes(self) -> int:
        return (len(self.names) + self.name_lengths.nbytes + sum(a.nbytes for a in self.arrays.values())
                + len(self.answers))


@dataclasses.dataclass(frozen=True)
class StoredSession:
    """What the admin API lists of a session the store knows: its snapshot's summary and its lease, if any (a
    session leased but not written yet has version 0 and no series)."""

    name: str
    tenant: str = ""
    mode: int = 0
    series: int = 0
    version: int = 0
    last_used: float = 0.0
    lease_owner: str = ""     # "" when no live lease
    lease_expires: float = 0.0


class Store(abc.ABC):
    """Leases and snapshots of named sessions. Methods may be called from any thread; each is atomic."""

    durable = True  # False: nothing outlives the process, so snapshots need not be taken

    @abc.abstractmethod
    def acquire(self, name: str, owner: str, seconds: float, now: float) -> float | None:
        """Take (or keep) the lease on session `name` for `seconds` if it is free, expired or already
        `owner`'s; return None then, else the wall-clock time the holder's lease ends."""

    @abc.abstractmethod
    def renew(self, name: str, owner: str, seconds: float, now: float) -> bool:
        """Extend `owner`'s lease; False if `owner` no longer holds it (it expired and another took it)."""

    @abc.abstractmethod
    def release(self, name: str, owner: str, now: float) -> bool:
        """Give up `owner`'s lease, the session's last use being `now` (its TTL counts from there, not from
        its last save); False if `owner` did not hold it."""

    @abc.abstractmethod
    def version(self, name: str) -> int | None:
        """The version of the stored snapshot of `name`, or None if there is none."""

    @abc.abstractmethod
    def load(self, name: str) -> Snapshot | None:
        """The stored snapshot of `name`, or None."""

    @abc.abstractmethod
    def save(self, snapshot: Snapshot, owner: str) -> bool:
        """Write the snapshot if `owner` holds the session's lease (else write nothing and return False)."""

    @abc.abstractmethod
    def expire(self, idle_before: float, now: float) -> list[str]:
        """Delete the snapshots last used before `idle_before` whose session has no live lease; their names."""

    def tenant(self, name: str) -> str | None:
        """The tenant of the stored session `name`, or None if there is none (backends read only that field)."""
        snap = self.load(name)
        return None if snap is None else snap.tenant

    @abc.abstractmethod
    def sessions(self, now: float) -> list[StoredSession]:
        """Every session with a snapshot or a live lease, sorted by name (the admin API's listing)."""

    @abc.abstractmethod
    def delete(self, name: str, owner: str) -> bool:
        """Delete the snapshot and the lease of `name` if `owner` holds its lease (the admin API takes it
        first); False, deleting nothing, if it does not."""

    def close(self) -> None:
        """Release what the store holds open (files, connections)."""
