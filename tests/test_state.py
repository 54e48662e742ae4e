"""SessionRegistry alone, on a fake clock: attach/detach, busy/mode/full refusals, TTL expiry and sweeping."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from streamer.state import MODE_CUMULATIVE, MODE_EXPONENTIAL, SeriesState, SessionError, SessionRegistry
from streamer.store.sqlite import SQLiteStore

TTL = 60.0


@pytest.fixture
def registry(fake_clock):
    return SessionRegistry(TTL, max_sessions=3, max_series=100, clock=fake_clock)


def _fill(session, value=7.0):
    """Give the session's state one series with one value, as a stream's first batch would."""
    session.state.table.intern(b"cpu", np.array([0], dtype=np.int64), np.array([3], dtype=np.int64))
    session.state.count[0] = 1
    session.state.mean[0] = value


def test_attach_makes_then_detach_keeps_the_same_state(registry, fake_clock):
    a = registry.attach("a", MODE_CUMULATIVE)
    assert a.open and a.name == "a" and len(registry) == 1
    assert isinstance(a.state, SeriesState) and a.state.mode == MODE_CUMULATIVE
    _fill(a)
    fake_clock.advance(5)
    registry.detach(a)
    assert not a.open and a.last_used == fake_clock() and len(registry) == 1
    again = registry.attach("a", MODE_CUMULATIVE)
    assert again is a and again.open
    assert len(again.state.table) == 1 and again.state.mean[0] == 7.0


def test_sessions_are_kept_apart(registry):
    a, b = registry.attach("a", MODE_CUMULATIVE), registry.attach("b", MODE_EXPONENTIAL)
    assert a is not b and a.state is not b.state and len(registry) == 2


def test_second_attach_while_open_is_busy(registry):
    a = registry.attach("a", MODE_CUMULATIVE)
    with pytest.raises(SessionError) as err:
        registry.attach("a", MODE_CUMULATIVE)
    assert err.value.kind == "busy" and "'a'" in str(err.value)
    assert a.open  # the refused attach does not touch the holder
    registry.detach(a)
    assert registry.attach("a", MODE_CUMULATIVE) is a


def test_busy_even_past_the_ttl(registry, fake_clock):
    """An open session never expires: its stream may just be quiet."""
    a = registry.attach("a", MODE_CUMULATIVE)
    fake_clock.advance(10 * TTL)
    assert registry.sweep() == 0
    with pytest.raises(SessionError) as err:
        registry.attach("a", MODE_CUMULATIVE)
    assert err.value.kind == "busy" and a.open and len(registry) == 1


def test_other_mode_is_refused(registry):
    a = registry.attach("a", MODE_CUMULATIVE)
    _fill(a)
    registry.detach(a)
    with pytest.raises(SessionError) as err:
        registry.attach("a", MODE_EXPONENTIAL)
    assert err.value.kind == "mode"
    assert "MODE_CUMULATIVE" in str(err.value) and "MODE_EXPONENTIAL" in str(err.value)
    assert not a.open  # still free, and still there
    assert registry.attach("a", MODE_CUMULATIVE) is a


def test_full_registry_refuses_a_new_name_only(registry):
    held = [registry.attach(n, MODE_CUMULATIVE) for n in "abc"]
    registry.detach(held[0])
    with pytest.raises(SessionError) as err:
        registry.attach("d", MODE_CUMULATIVE)
    assert err.value.kind == "full" and "3" in str(err.value) and len(registry) == 3
    assert registry.attach("a", MODE_CUMULATIVE) is held[0]  # an existing name still attaches
    registry.detach(held[1], forget=True)
    assert registry.attach("d", MODE_CUMULATIVE).name == "d"  # room again


def test_full_registry_makes_room_by_dropping_the_expired_one_it_is_asked_for(registry, fake_clock):
    held = [registry.attach(n, MODE_CUMULATIVE) for n in "abc"]
    registry.detach(held[0])
    fake_clock.advance(TTL + 1)
    fresh = registry.attach("a", MODE_CUMULATIVE)
    assert fresh is not held[0] and len(registry) == 3


def test_sweep_drops_only_idle_expired_sessions(registry, fake_clock):
    old, recent, busy = (registry.attach(n, MODE_CUMULATIVE) for n in ("old", "recent", "busy"))
    registry.detach(old)
    fake_clock.advance(TTL / 2)
    registry.detach(recent)
    assert registry.sweep() == 0 and len(registry) == 3
    fake_clock.advance(TTL / 2)  # old has been idle exactly TTL: not yet "longer than the TTL"
    assert registry.sweep() == 0 and len(registry) == 3
    fake_clock.advance(1)
    assert registry.sweep() == 1 and len(registry) == 2  # old only: recent is within its TTL, busy is open
    assert registry.attach("recent", MODE_CUMULATIVE) is recent
    assert registry.attach("old", MODE_CUMULATIVE) is not old
    fake_clock.advance(10 * TTL)
    assert registry.sweep() == 0 and busy.open  # all three are open now


def test_attach_after_the_ttl_gives_a_fresh_state_without_a_sweep(registry, fake_clock):
    a = registry.attach("a", MODE_CUMULATIVE)
    _fill(a)
    registry.detach(a)
    fake_clock.advance(TTL + 0.5)
    fresh = registry.attach("a", MODE_EXPONENTIAL)  # the old mode no longer binds either
    assert fresh is not a and fresh.open and len(registry) == 1
    assert len(fresh.state.table) == 0 and fresh.state.mode == MODE_EXPONENTIAL
    assert not fresh.state.count.any()


def test_attach_within_the_ttl_keeps_the_state(registry, fake_clock):
    a = registry.attach("a", MODE_CUMULATIVE)
    _fill(a)
    registry.detach(a)
    fake_clock.advance(TTL - 0.5)
    assert registry.attach("a", MODE_CUMULATIVE) is a and len(a.state.table) == 1


def test_the_ttl_counts_from_the_last_detach(registry, fake_clock):
    a = registry.attach("a", MODE_CUMULATIVE)
    fake_clock.advance(TTL * 5)  # open all this time
    registry.detach(a)
    fake_clock.advance(TTL - 1)
    assert registry.sweep() == 0
    assert registry.attach("a", MODE_CUMULATIVE) is a


def test_detach_forget_drops_the_session_at_once(registry):
    a = registry.attach("a", MODE_CUMULATIVE)
    b = registry.attach("b", MODE_CUMULATIVE)
    registry.detach(a, forget=True)
    assert not a.open and len(registry) == 1
    assert registry.attach("a", MODE_CUMULATIVE) is not a
    registry.detach(b)
    assert registry.attach("b", MODE_CUMULATIVE) is b


def test_forget_of_a_stale_session_leaves_its_successor(registry, fake_clock):
    """A stream that outlived its session's replacement must not drop the new one when it forgets."""
    a = registry.attach("a", MODE_CUMULATIVE)
    registry.detach(a)
    fake_clock.advance(TTL + 1)
    b = registry.attach("a", MODE_CUMULATIVE)
    registry.detach(a, forget=True)
    assert len(registry) == 1 and b.open
    with pytest.raises(SessionError):
        registry.attach("a", MODE_CUMULATIVE)


def test_reserve_grows_and_keeps_values():
    state = SeriesState(MODE_CUMULATIVE, max_series=1000, capacity=64)  # slots reserved: the table's 64
    assert len(state.count) == 64
    assert len(SeriesState(MODE_CUMULATIVE, max_series=1000).count) == 1000  # default: up to the limit
    state.count[:64] = np.arange(64)
    state.mean[:64] = np.arange(64) * 0.5
    state.reserve(300)
    assert len(state.count) == len(state.mean) == len(state.spread) == len(state.last_seen) == 512
    assert (state.count[:64] == np.arange(64)).all() and not state.count[64:].any()
    assert (state.mean[:64] == np.arange(64) * 0.5).all()


# --- with a durable store: leases and snapshots go through the registry's writer thread ------------------

class FlakyStore(SQLiteStore):
    """A real SQLite store whose next `fail_saves` saves, or every call while `down`, raise as a full disk."""

    def __init__(self, path):
        super().__init__(path)
        self.fail_saves = 0
        self.down = False

    def save(self, snapshot, owner):
        if self.fail_saves:
            self.fail_saves -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().save(snapshot, owner)

    def acquire(self, name, owner, seconds, now):
        if self.down:
            raise sqlite3.OperationalError("disk I/O error")
        return super().acquire(name, owner, seconds, now)


@pytest.fixture
def durable(tmp_path, fake_clock):
    store = FlakyStore(str(tmp_path / "s.db"))
    registry = SessionRegistry(TTL, max_sessions=3, max_series=100, clock=fake_clock, store=store, lease_seconds=10)
    yield registry, store
    registry.close()


def drain(registry):
    registry._writer.submit(lambda: None).result(10)  # the writer thread is FIFO


def test_a_release_queued_by_the_last_stream_never_undoes_the_next_streams_lease(durable, fake_clock):
    registry, store = durable
    a = registry.attach("a", MODE_CUMULATIVE)
    _fill(a)
    a.changed = True
    registry.detach(a)                      # queues the snapshot and the release
    again = registry.attach("a", MODE_CUMULATIVE)  # at once, before or after the writer has run them
    drain(registry)
    assert again is a and again.leased and not again.lost
    assert store.acquire("a", "another process", 10, fake_clock()) is not None  # still ours
    assert store.version("a") == 1


def test_a_snapshot_that_failed_at_detach_keeps_the_lease_and_is_written_later(durable, fake_clock):
    registry, store = durable
    a = registry.attach("a", MODE_CUMULATIVE)
    _fill(a, 3.5)
    a.changed = True
    store.fail_saves = 1
    registry.detach(a)
    drain(registry)
    assert store.load("a") is None and a.leased and a.changed  # not written, lease kept
    assert store.acquire("a", "another process", 10, fake_clock()) is not None
    fake_clock.advance(TTL + 1)
    assert registry.sweep() == 0 and len(registry) == 1  # not dropped before it is written
    assert registry.snapshot_open() == 1
    drain(registry)
    assert store.load("a").arrays["mean"][0] == 3.5 and not a.leased
    assert store.acquire("a", "another process", 10, fake_clock()) is None  # released once written


def test_attaching_while_the_store_is_down_is_refused_not_done_without_a_lease(durable):
    registry, store = durable
    store.down = True
    with pytest.raises(SessionError) as err:
        registry.attach("a", MODE_CUMULATIVE)
    assert err.value.kind == "store" and len(registry) == 0
    store.down = False
    assert registry.attach("a", MODE_CUMULATIVE).leased


def test_snapshot_copies_into_reused_buffers_and_packs_what_was_live():
    """The copy under the lock goes into buffers kept from the last snapshot (names only when they changed);
    a second capture before the first is packed gets buffers of its own; each packs the state of its moment."""
    from streamer.state import Session
    state = SeriesState(MODE_CUMULATIVE, max_series=100, ttl=5.0)
    session = Session("s", state)

    def feed(names, t):
        lens = np.array([len(n) for n in names], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        ids = state.table.intern(b"".join(names), starts, lens)
        state.reserve(state.table.slots)
        state.count[ids] += 1
        state.last_seen[ids] = t
        state.clock[0] = max(state.clock[0], t)

    def contents(snap):
        names, p = [], 0
        for n in snap.name_lengths.tolist():
            names.append(snap.names[p:p + n])
            p += n
        return dict(zip(names, snap.arrays["count"].tolist()))

    feed([b"a", b"bb", b"ccc"], 1.0)
    first = session.snapshot(1.0)
    assert contents(first) == {b"a": 1, b"bb": 1, b"ccc": 1}
    feed([b"a"], 2.0)  # same names: the names' buffers are reused as they are
    held = session.snapshot(2.0, pack=False)
    feed([b"dddd", b"a"], 7.0)  # bb and ccc idle for 6 s > 5: swept out of the next snapshot
    other = session.snapshot(7.0, pack=False)  # the first capture is not packed yet: buffers of its own
    assert contents(held.pack()) == {b"a": 2, b"bb": 1, b"ccc": 1}
    assert contents(other.pack()) == {b"a": 3, b"dddd": 1}
    feed([b"eeeee"], 7.5)  # reuses a freed slot: the names are copied again
    assert contents(session.snapshot(8.0)) == {b"a": 3, b"dddd": 1, b"eeeee": 1}
    assert session.version == 4
