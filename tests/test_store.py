"""The store interface, one contract for every backend: leases are compare-and-set on their owner, a stale
owner's write is refused, snapshots round-trip exactly; and the SQLite file's own failure modes."""
from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
import subprocess

import numpy as np
import pytest
from redis_server import RedisServer

from streamer.store import SCHEMA_VERSION, MemoryStore, Snapshot, StoreError, open_store
from streamer.store.redis import RedisStore
from streamer.store.sqlite import SQLiteStore


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(str(tmp_path / "state" / "s.db"))
    else:
        server = request.getfixturevalue("redis_server")
        server.flush()
        s = RedisStore(server.url)
    yield s
    s.close()


def snapshot(name="a", version=1, n=3, last_used=100.0, seed=0) -> Snapshot:
    rng = np.random.default_rng(seed)
    names = [f"series-{i}".encode() for i in range(n)]
    return Snapshot(name, 1, "threshold=2.0", version, b"".join(names),
                    np.array([len(x) for x in names], dtype=np.int64),
                    {"count": rng.integers(0, 100, n), "mean": rng.normal(size=n), "spread": rng.random(n)},
                    last_used, seq=int(rng.integers(0, 2 ** 63)) * 2 + 1, answers=rng.bytes(int(rng.integers(0, 50))))


def same(a: Snapshot, b: Snapshot) -> bool:
    return (a.name, a.mode, a.options, a.version, a.names, a.last_used, a.seq, a.answers) == \
        (b.name, b.mode, b.options, b.version, b.names, b.last_used, b.seq, b.answers) and \
        np.array_equal(a.name_lengths, b.name_lengths) and a.arrays.keys() == b.arrays.keys() and \
        all(np.array_equal(a.arrays[k], b.arrays[k]) and a.arrays[k].dtype == b.arrays[k].dtype for k in a.arrays)


def test_a_lease_is_exclusive_until_released_or_expired(store):
    assert store.acquire("a", "p1", 10, now=0) is None
    assert store.acquire("a", "p1", 10, now=1) is None          # its owner may take it again
    assert store.acquire("a", "p2", 10, now=2) == 11            # another waits for the expiry
    assert store.renew("a", "p1", 10, now=5)
    assert store.acquire("a", "p2", 10, now=12) == 15
    assert not store.release("a", "p2", now=0) and not store.renew("a", "p2", 10, now=12)
    assert store.release("a", "p1", now=0)
    assert store.acquire("a", "p2", 10, now=13) is None
    assert store.acquire("b", "p1", 10, now=13) is None         # leases are per session


def test_an_expired_lease_goes_to_the_next_owner_and_the_stale_owner_cannot_write(store):
    assert store.acquire("a", "old", 2, now=0) is None
    assert store.save(snapshot(version=1), "old")
    assert store.acquire("a", "new", 2, now=3) is None           # old stalled past its lease
    assert store.save(snapshot(version=5, seed=1), "new")
    assert not store.save(snapshot(version=9, seed=2), "old")    # the stalled owner wakes up: refused
    assert not store.renew("a", "old", 2, now=3) and not store.release("a", "old", now=0)
    assert store.version("a") == 5 and same(store.load("a"), snapshot(version=5, seed=1))


def test_a_write_without_a_lease_is_refused(store):
    assert not store.save(snapshot(), "nobody")
    assert store.load("a") is None and store.version("a") is None


def test_snapshots_round_trip_exactly(store):
    store.acquire("a", "p", 10, now=0)
    for n in (0, 1, 1000):
        snap = snapshot(n=n, version=n + 1)
        assert store.save(snap, "p")
        assert same(store.load("a"), snap) and store.version("a") == n + 1


def test_expire_drops_idle_sessions_without_a_live_lease(store):
    for name, used in (("old", 10.0), ("busy", 10.0), ("recent", 90.0)):
        store.acquire(name, "p", 1000, now=0)
        store.save(snapshot(name, last_used=used), "p")
    store.release("old", "p", now=10.0)
    store.release("recent", "p", now=90.0)
    assert store.expire(idle_before=50.0, now=95.0) == ["old"]
    assert store.load("old") is None and store.load("busy") is not None and store.load("recent") is not None


def test_sqlite_state_is_shared_by_two_connections(tmp_path):
    path = str(tmp_path / "s.db")
    a, b = SQLiteStore(path), SQLiteStore(path)
    assert a.acquire("x", "pa", 10, now=0) is None
    assert b.acquire("x", "pb", 10, now=1) == 10
    assert a.save(snapshot("x", version=3), "pa")
    assert b.version("x") == 3 and same(b.load("x"), snapshot("x", version=3))
    a.close()
    b.close()


def test_open_store_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_store("memory://"), MemoryStore)
    s = open_store("sqlite:///state/x.db")  # relative to the working directory
    assert os.path.exists(tmp_path / "state" / "x.db")
    s.close()
    s = open_store(f"sqlite:///{tmp_path}/abs.db")  # sqlite:////abs/path
    s.close()
    assert os.path.exists(tmp_path / "abs.db")
    for bad in ("redis://127.0.0.1:1/0", "sqlite:///", "postgres://db"):  # port 1: refused
        with pytest.raises(StoreError):
            open_store(bad)


def test_a_newer_schema_is_refused_with_a_message(tmp_path):
    path = str(tmp_path / "s.db")
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"newer streamer .*schema {SCHEMA_VERSION + 1}"):
        SQLiteStore(path)


def test_a_schema_1_store_is_migrated_forward_and_keeps_its_sessions(tmp_path):
    """tests/data/store-v1.db.gz was written by the schema-1 code (before sequence numbers): one session,
    three series. Opening it migrates it in place; its session loads as it was, with no sequence number."""
    import gzip
    fixture = os.path.join(os.path.dirname(__file__), "data", "store-v1.db.gz")
    path = tmp_path / "v1.db"
    path.write_bytes(gzip.decompress(open(fixture, "rb").read()))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("1",)
    s = SQLiteStore(str(path))
    snap = s.load("v1-session")
    assert (snap.version, snap.mode, snap.options, snap.names, snap.seq, snap.answers) == \
        (3, 1, "threshold=2.0", b"cpumemdisk.io", 0, b"")
    assert snap.arrays["count"].tolist() == [10, 20, 30] and snap.arrays["mean"].tolist() == [1.5, 2.5, 3.5]
    assert s.acquire("v1-session", "me", 10, now=2000) is None       # its lease was released in 1000
    newer = dataclasses.replace(snap, version=4, seq=7, answers=b"kept")
    assert s.save(newer, "me") and same(s.load("v1-session"), newer)
    s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
    SQLiteStore(str(path)).close()  # and opens again as a current store


def test_a_corrupt_file_and_a_foreign_database_are_refused(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot use it as a store"):
        SQLiteStore(str(junk))
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StoreError, match="not a streamer store"):
        SQLiteStore(str(foreign))


def make_read_only(directory) -> None:
    """A directory nobody may write into, root included (CI runs as root, who ignores permission bits):
    chattr +i where root can, else the permission bits. Undo with writable(directory)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
    else:
        directory.chmod(stat.S_IRUSR | stat.S_IXUSR)


def writable(directory) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(stat.S_IRWXU)


def test_a_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    make_read_only(ro)
    try:
        with pytest.raises(StoreError, match="cannot"):
            SQLiteStore(str(ro / "s.db"))
    finally:
        writable(ro)


def test_the_ttl_counts_from_the_release_not_from_the_last_save(store):
    store.acquire("a", "p", 1000, now=0)
    store.save(snapshot("a", last_used=10.0), "p")  # written at 10, its stream open (and quiet) until 500
    store.release("a", "p", now=500.0)
    assert store.expire(idle_before=400.0, now=520.0) == []
    assert store.load("a").last_used == 500.0


def test_sessions_lists_snapshots_and_live_leases_with_their_tenant_and_holder(store):
    """The admin API's listing (issue 22): a written session with its tenant and summary, a leased one not yet
    written, and a lease that expired is not listed as held."""
    assert store.acquire("a", "p1", 10, now=0) is None
    assert store.save(dataclasses.replace(snapshot("a", version=2), tenant="team-a"), "p1")
    assert store.acquire("b", "p2", 10, now=0) is None       # leased, not written yet
    assert store.acquire("c", "p3", 1, now=0) is None        # leased, then expired
    listed = {s.name: s for s in store.sessions(now=5)}
    assert set(listed) == {"a", "b"}
    a, b = listed["a"], listed["b"]
    assert (a.tenant, a.mode, a.series, a.version, a.lease_owner, a.lease_expires) == ("team-a", 1, 3, 2, "p1", 10)
    assert (b.tenant, b.series, b.version, b.lease_owner) == ("", 0, 0, "p2")
    assert store.load("a").tenant == "team-a"
    store.release("a", "p1", now=6)
    assert store.sessions(now=7)[0].lease_owner == ""


def test_delete_needs_the_lease_and_removes_the_snapshot(store):
    assert store.acquire("a", "p1", 10, now=0) is None
    assert store.save(snapshot("a"), "p1")
    assert not store.delete("a", "p2")                       # not the holder: nothing deleted
    assert store.version("a") == 1
    assert store.delete("a", "p1")
    assert store.version("a") is None and store.load("a") is None
    assert [s.name for s in store.sessions(now=1)] == []
    assert store.acquire("a", "p2", 10, now=1) is None       # the lease went with it


def test_a_schema_2_store_is_migrated_forward_and_its_sessions_have_no_tenant(tmp_path):
    """tests/data/store-v2.db.gz (schema 2, before tenants): opening it adds the tenant column; its session
    loads with tenant "" (the single tenant of a server without [tenants])."""
    import gzip
    fixture = os.path.join(os.path.dirname(__file__), "data", "store-v2.db.gz")
    path = tmp_path / "v2.db"
    path.write_bytes(gzip.decompress(open(fixture, "rb").read()))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("2",)
    s = SQLiteStore(str(path))
    snap = s.load("v2-session")
    assert snap.tenant == "" and len(snap) == 3
    assert [x.name for x in s.sessions(now=0)] == ["v2-session"]
    s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
