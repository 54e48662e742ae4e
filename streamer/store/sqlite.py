"""`sqlite:///PATH`: the embedded default. One file in WAL mode, shared safely by every process on the machine.

Layout (schema 3): `meta` (the schema version), `sessions` (a row per session: mode, options, version, the
series names as one blob and their lengths as another, the applied sequence number, the kept answers and the
owning tenant),
`arrays` (a blob per session and statistic:
count, mean, spread, ...) and `leases` (owner, expiry). A snapshot is a few blobs, never a row per series.
Every change is one transaction: BEGIN IMMEDIATE takes the file's write lock first, so the compare-and-set
on the lease owner and the write it guards cannot interleave with another process's.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading

import numpy as np

from streamer.store.base import SCHEMA_VERSION, Snapshot, Store, StoredSession, StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    name TEXT PRIMARY KEY,
    mode INTEGER NOT NULL,
    options TEXT NOT NULL,
    version INTEGER NOT NULL,
    series INTEGER NOT NULL,
    names BLOB NOT NULL,          -- the series names, concatenated in slot order
    name_lengths BLOB NOT NULL,   -- int64 little-endian, one per series
    last_used REAL NOT NULL,      -- wall-clock seconds of the last save
    seq INTEGER NOT NULL DEFAULT 0,       -- the highest client sequence number applied (schema 2)
    answers BLOB NOT NULL DEFAULT x'',    -- the answers of the last numbered batches (schema 2)
    tenant TEXT NOT NULL DEFAULT ''       -- the tenant that made it (schema 3)
);
CREATE TABLE IF NOT EXISTS arrays (
    session TEXT NOT NULL,
    key TEXT NOT NULL,            -- count, mean, spread, ...
    dtype TEXT NOT NULL,          -- numpy dtype string, e.g. <f8
    data BLOB NOT NULL,
    PRIMARY KEY (session, key)
);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
"""

# _MIGRATIONS[v]: the statements that take a file from schema v to v + 1.
_MIGRATIONS = {
    1: ["ALTER TABLE sessions ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE sessions ADD COLUMN answers BLOB NOT NULL DEFAULT x''"],
    2: ["ALTER TABLE sessions ADD COLUMN tenant TEXT NOT NULL DEFAULT ''"],
}

_U64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A uint64 as the int64 SQLite keeps (loads take it back with & _U64)."""
    return x - (1 << 64) if x >= 1 << 63 else x


class SQLiteStore(Store):
    """The store interface over one SQLite file; one connection, used under a lock (it protects the
    connection: calls come from the event loop's thread and the snapshot writer's)."""

    def __init__(self, path: str, busy_timeout_ms: int = 5000):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=busy_timeout_ms / 1000)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"sqlite:///{path}: cannot open: {exc}") from None
        self._lock = threading.Lock()
        try:
            # 64 KiB pages (set before the first table; a file keeps the size it was made with): a snapshot is a
            # few large blobs, and with 4 KiB pages a 100 000-series save took 58-73 ms, with 64 KiB 13 ms
            # (benchmarks/store_bench.py).
            self._db.execute("PRAGMA page_size=65536")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at each checkpoint, never corrupt
            self._db.execute("PRAGMA journal_size_limit=67108864")  # the WAL file shrinks back to 64 MiB
            with self._transaction() as db:
                found = self._schema_version(db)
                if found is None:
                    for statement in filter(str.strip, _SCHEMA.split(";")):  # not executescript: it commits
                        db.execute(statement)
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif found > SCHEMA_VERSION:
                    raise StoreError(f"sqlite:///{path}: written by a newer streamer (store schema {found}; this "
                                     f"one reads up to {SCHEMA_VERSION}); upgrade streamer or use another file")
                else:
                    for step in range(found, SCHEMA_VERSION):  # one step per version, each tested on a fixture
                        for statement in _MIGRATIONS[step]:
                            db.execute(statement)
                    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"sqlite:///{path}: cannot use it as a store: {exc}") from None
        except StoreError:
            self._db.close()
            raise

    @staticmethod
    def _schema_version(db) -> int | None:
        if db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is None:
            if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError("the file holds tables but no streamer schema: not a streamer store")
            return None
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise StoreError("the file's meta table has no schema_version: not a streamer store")
        return int(row[0])

    @contextlib.contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), under the connection's lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _holder(self, db, name: str):
        return db.execute("SELECT owner, expires FROM leases WHERE name=?", (name,)).fetchone()

    def acquire(self, name: str, owner: str, seconds: float, now: float) -> float | None:
        with self._transaction() as db:
            held = self._holder(db, name)
            if held is not None and held[0] != owner and held[1] > now:
                return held[1]
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (name, owner, now + seconds))
            return None

    def renew(self, name: str, owner: str, seconds: float, now: float) -> bool:
        with self._transaction() as db:
            return db.execute("UPDATE leases SET expires=? WHERE name=? AND owner=?",
                              (now + seconds, name, owner)).rowcount == 1

    def release(self, name: str, owner: str, now: float) -> bool:
        with self._transaction() as db:
            if db.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, owner)).rowcount != 1:
                return False
            db.execute("UPDATE sessions SET last_used=? WHERE name=?", (now, name))
            return True

    def version(self, name: str) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT version FROM sessions WHERE name=?", (name,)).fetchone()
        return None if row is None else row[0]

    def load(self, name: str) -> Snapshot | None:
        with self._lock:  # one read transaction: the session row and its arrays agree
            self._db.execute("BEGIN")
            try:
                row = self._db.execute("SELECT mode, options, version, series, names, name_lengths, last_used, "
                                       "seq, answers, tenant FROM sessions WHERE name=?", (name,)).fetchone()
                arrays = self._db.execute("SELECT key, dtype, data FROM arrays WHERE session=?", (name,)).fetchall()
            finally:
                self._db.execute("COMMIT")
        if row is None:
            return None
        mode, options, version, series, names, lengths, last_used, seq, answers, tenant = row
        lengths = np.frombuffer(lengths, dtype="<i8").astype(np.int64)
        loaded = {key: np.frombuffer(data, dtype=dtype).copy() for key, dtype, data in arrays}
        if len(lengths) != series or int(lengths.sum()) != len(names) or any(len(a) != series for a in loaded.values()):
            raise StoreError(f"sqlite:///{self.path}: session {name!r} is damaged ({series} series, "
                             f"{len(lengths)} name lengths, arrays {[len(a) for a in loaded.values()]})")
        return Snapshot(name, mode, options, version, bytes(names), lengths, loaded, last_used,
                        seq & _U64, bytes(answers), tenant)

    def save(self, snapshot: Snapshot, owner: str) -> bool:
        s = snapshot
        with self._transaction() as db:
            held = self._holder(db, s.name)
            if held is None or held[0] != owner:
                return False  # another process took the session: its state wins
            db.execute("INSERT OR REPLACE INTO sessions (name, mode, options, version, series, names, name_lengths, "
                       "last_used, seq, answers, tenant) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (s.name, s.mode, s.options, s.version, len(s), s.names,
                        s.name_lengths.astype("<i8").tobytes(), s.last_used, _signed(s.seq), s.answers, s.tenant))
            db.execute("DELETE FROM arrays WHERE session=?", (s.name,))
            db.executemany("INSERT INTO arrays VALUES (?, ?, ?, ?)",
                           [(s.name, key, a.dtype.str, a.tobytes()) for key, a in s.arrays.items()])
            return True

    def expire(self, idle_before: float, now: float) -> list[str]:
        with self._transaction() as db:
            gone = [r[0] for r in db.execute(
                "SELECT name FROM sessions WHERE last_used < ? AND name NOT IN "
                "(SELECT name FROM leases WHERE expires > ?)", (idle_before, now))]
            for name in gone:
                db.execute("DELETE FROM arrays WHERE session=?", (name,))
                db.execute("DELETE FROM sessions WHERE name=?", (name,))
                db.execute("DELETE FROM leases WHERE name=?", (name,))
            return gone

    def tenant(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT tenant FROM sessions WHERE name=?", (name,)).fetchone()
        return None if row is None else row[0]

    def sessions(self, now: float) -> list[StoredSession]:
        with self._lock:
            rows = self._db.execute(
                "SELECT n.name, s.tenant, s.mode, s.series, s.version, s.last_used, l.owner, l.expires FROM "
                "(SELECT name FROM sessions UNION SELECT name FROM leases WHERE expires > ?) n "
                "LEFT JOIN sessions s ON s.name = n.name LEFT JOIN leases l ON l.name = n.name AND l.expires > ? "
                "ORDER BY n.name", (now, now)).fetchall()
        return [StoredSession(name, tenant or "", mode or 0, series or 0, version or 0, last_used or 0.0,
                              owner or "", expires or 0.0)
                for name, tenant, mode, series, version, last_used, owner, expires in rows]

    def delete(self, name: str, owner: str) -> bool:
        with self._transaction() as db:
            held = self._holder(db, name)
            if held is None or held[0] != owner:
                return False
            db.execute("DELETE FROM arrays WHERE session=?", (name,))
            db.execute("DELETE FROM sessions WHERE name=?", (name,))
            db.execute("DELETE FROM leases WHERE name=?", (name,))
            return True

    def close(self) -> None:
        with self._lock:
            self._db.close()
