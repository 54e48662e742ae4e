"""streamer.series.SeriesTable against a plain dict: slots, growth, forced collisions, the limit and rollback."""
from __future__ import annotations

import random

import numpy as np
import pytest

from streamer import wire
from streamer.pb import outliers_pb2 as pb
from streamer.series import SeriesLimitError, SeriesTable

SEED = 20240611


def spans(names: list[bytes], prefix: bytes = b"") -> tuple[bytes, np.ndarray, np.ndarray]:
    """names laid end to end after `prefix`, as the decoder's (buf, name_start, name_len) columns."""
    lens = np.array([len(x) for x in names], dtype=np.int64)
    starts = np.zeros(len(names), dtype=np.int64)
    if len(names):
        starts[0] = len(prefix)
        np.cumsum(lens[:-1], out=starts[1:])
        starts[1:] += len(prefix)
    return prefix + b"".join(names), starts, lens


class DictTable:
    """The naive reference: a dict, all-or-nothing by building the new names aside."""

    def __init__(self, limit: int):
        self.limit = limit
        self.slots: dict[bytes, int] = {}

    def intern(self, names: list[bytes]) -> list[int]:
        new: dict[bytes, int] = {}
        out = []
        for i, name in enumerate(names):
            slot = self.slots.get(name, new.get(name))
            if slot is None:
                slot = len(self.slots) + len(new)
                if slot >= self.limit:
                    raise SeriesLimitError(i, self.limit)
                new[name] = slot
            out.append(slot)
        self.slots.update(new)
        return out


def random_names(rng: random.Random, pool: list[bytes], n: int, fresh: float) -> list[bytes]:
    """n names, a `fresh` fraction new (any bytes, any length 0-40: long ones cross the 8-byte words)."""
    out = []
    for _ in range(n):
        if not pool or rng.random() < fresh:
            pool.append(bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 3, 7, 8, 9, 15, 16, 17, 40]))))
        out.append(rng.choice(pool))
    return out


# hash_mask 0 makes every name hash alike (only the byte comparison tells them apart); 7 leaves 8 hashes
@pytest.mark.parametrize("hash_mask", [-1, 7, 0])
@pytest.mark.parametrize("capacity", [1, 64])
def test_slots_match_a_dict_through_growth(hash_mask, capacity):
    rng = random.Random(SEED)
    table = SeriesTable(limit=10 ** 6, capacity=capacity, seed=SEED, _hash_mask=hash_mask)
    reference = DictTable(10 ** 6)
    pool: list[bytes] = []
    for _ in range(30):
        names = random_names(rng, pool, rng.randrange(0, 60), fresh=0.3)
        # the names sit at odd offsets of a bigger buffer, as in a request, with bytes after the last one
        buf, starts, lens = spans(names, prefix=bytes(rng.randrange(256) for _ in range(rng.randrange(9))))
        ids = table.intern(buf + b"\xff" * rng.randrange(3), starts, lens)
        assert ids.dtype == np.int64
        assert ids.tolist() == reference.intern(names)
    assert len(table) == len(reference.slots) > 100
    for name, slot in reference.slots.items():
        assert table.name(slot) == name
    assert table.names(list(reference.slots.values())) == list(reference.slots)


def test_names_at_the_very_end_of_the_buffer():
    # no bytes after the name: its tail word must be read byte by byte, not past the buffer
    table = SeriesTable(limit=100, seed=SEED)
    for n in range(0, 20):
        name = bytes(range(65, 65 + n))
        ids = table.intern(name, np.array([0], dtype=np.int64), np.array([n], dtype=np.int64))
        assert table.name(int(ids[0])) == name
        again = table.intern(b"xx" + name, np.array([2], dtype=np.int64), np.array([n], dtype=np.int64))
        assert again.tolist() == ids.tolist()


def test_equal_prefixes_are_different_series():
    table = SeriesTable(limit=100, seed=SEED, _hash_mask=0)
    names = [b"cpu", b"cpu\x00", b"cp", b"cpu.user.host-0001", b"cpu.user.host-0002", b""]
    ids = table.intern(*spans(names))
    assert ids.tolist() == list(range(len(names)))
    assert table.intern(*spans(names[::-1])).tolist() == list(range(len(names)))[::-1]


@pytest.mark.parametrize("hash_mask", [-1, 0])
def test_the_limit_rejects_the_whole_batch(hash_mask):
    rng = random.Random(SEED)
    limit = 50
    table = SeriesTable(limit=limit, capacity=4, seed=SEED, _hash_mask=hash_mask)
    reference = DictTable(limit)
    pool: list[bytes] = []
    rejected = 0
    for _ in range(40):
        names = random_names(rng, pool, rng.randrange(1, 30), fresh=0.25)
        try:
            expected = reference.intern(names)
        except SeriesLimitError as exc:
            rejected += 1
            with pytest.raises(SeriesLimitError) as got:
                table.intern(*spans(names))
            assert (got.value.index, got.value.limit) == (exc.index, limit)
            assert f"over the limit of {limit} series" in str(got.value)
        else:
            assert table.intern(*spans(names)).tolist() == expected
        assert len(table) == len(reference.slots)
        # after a rollback every old name still finds its slot and no new one is there
        known = list(reference.slots)
        assert table.intern(*spans(known)).tolist() == list(range(len(known)))
    assert rejected > 5 and len(table) == limit


def test_rollback_after_growing_within_the_batch():
    table = SeriesTable(limit=100, capacity=4, seed=SEED)
    old = [b"s%d" % i for i in range(3)]
    table.intern(*spans(old))
    too_many = [b"new%d" % i for i in range(200)]  # grows table, slots and arena before hitting the limit
    with pytest.raises(SeriesLimitError) as exc:
        table.intern(*spans(too_many))
    assert exc.value.index == 97
    assert len(table) == 3
    # names of the rejected batch are new again, in the order they now come
    assert table.intern(*spans(old + [b"new50", b"fresh", b"new0"])).tolist() == [0, 1, 2, 3, 4, 5]
    assert table.names([3, 4, 5]) == [b"new50", b"fresh", b"new0"]
    assert len(table) == 6


def test_limit_zero_and_bad_slots():
    table = SeriesTable(limit=0)
    with pytest.raises(SeriesLimitError) as exc:
        table.intern(*spans([b"a"]))
    assert exc.value.index == 0
    assert len(table) == 0
    assert table.intern(*spans([])).tolist() == []
    with pytest.raises(IndexError):
        table.name(0)


def test_a_large_table():
    table = SeriesTable(limit=10 ** 6, seed=SEED)
    names = [b"host-%06d.cpu" % i for i in range(50_000)]
    assert table.intern(*spans(names)).tolist() == list(range(50_000))
    rng = random.Random(SEED)
    sample = rng.sample(range(50_000), 1000)
    assert table.intern(*spans([names[i] for i in sample])).tolist() == sample
    assert table.name(49_999) == b"host-049999.cpu"


def test_spans_outside_the_buffer_are_refused_and_nothing_is_added():
    table = SeriesTable(limit=100, seed=SEED)
    table.intern(*spans([b"old"]))
    for start, length in ((-1, 1), (3, 3), (0, -1), (6, 0)):
        with pytest.raises(ValueError, match="outside the buffer"):
            table.intern(b"newxy", np.array([0, start], dtype=np.int64), np.array([3, length], dtype=np.int64))
        assert len(table) == 1
    with pytest.raises(ValueError):
        table.intern(b"ab", np.array([0, 1], dtype=np.int64), np.array([1], dtype=np.int64))
    assert table.intern(*spans([b"new", b"old"])).tolist() == [1, 0]


@pytest.mark.parametrize("hash_mask", [-1, 0])
def test_hashes_from_the_decoder_give_the_same_slots(hash_mask):
    rng = random.Random(SEED)
    pool: list[bytes] = []
    given = SeriesTable(limit=10 ** 6, capacity=4, _hash_mask=hash_mask)
    computed = SeriesTable(limit=10 ** 6, capacity=4, _hash_mask=hash_mask)
    for _ in range(10):
        names = random_names(rng, pool, 40, fresh=0.3)
        names = [name.decode("utf-8", "replace").encode() for name in names]  # the decoder takes UTF-8 only
        req = pb.OutliersRequest(metrics=[pb.Metric(name=name.decode(), value=1.0) for name in names])
        cols = wire.decode_request(req.SerializeToString())
        ids = given.intern(cols.buf, cols.name_start, cols.name_len, cols.name_hash)
        assert ids.tolist() == computed.intern(cols.buf, cols.name_start, cols.name_len).tolist()
    assert given.names(range(len(given))) == computed.names(range(len(computed)))
    with pytest.raises(ValueError, match="hashes"):
        given.intern(cols.buf, cols.name_start, cols.name_len, cols.name_hash[:-1])


@pytest.mark.parametrize("hash_mask", [-1, 0])
def test_rollback_forgets_the_batchs_new_names(hash_mask):
    rng = random.Random(SEED)
    table = SeriesTable(limit=10 ** 6, capacity=4, seed=SEED, _hash_mask=hash_mask, reserve=16)
    reference = DictTable(10 ** 6)
    pool: list[bytes] = []
    rolled = 0
    for _ in range(40):
        known = len(table)
        names = random_names(rng, pool, rng.randrange(1, 40), fresh=0.3)
        ids = table.intern(*spans(names))  # may grow the index, slots and arena
        if rng.random() < 0.5:  # this batch is not applied: its new names go
            table.rollback()
            rolled += 1
            assert len(table) == known
            pool[:] = [name for name in pool if name in reference.slots]
        else:
            assert ids.tolist() == reference.intern(names)
        known_names = list(reference.slots)
        assert table.intern(*spans(known_names)).tolist() == list(range(len(known_names)))
        assert table.names(range(len(table))) == known_names
    print(f"{len(table)} series kept, {rolled} batches rolled back")
    assert len(table) > 40 and rolled > 10


def test_rollback_of_nothing_and_after_a_lookup_only_batch():
    table = SeriesTable(limit=100, seed=SEED)
    table.intern(*spans([b"a", b"bb", b"ccc"]))
    table.intern(*spans([b"bb"]))
    table.rollback()  # that batch added nothing: a no-op
    assert len(table) == 3 and table.names(range(3)) == [b"a", b"bb", b"ccc"]
    table.intern(*spans([b"dddd", b"bb", b"a"]))
    table.rollback()
    assert len(table) == 3
    assert table.intern(*spans([b"eeeee", b"dddd"])).tolist() == [3, 4]
    assert table.names(range(5)) == [b"a", b"bb", b"ccc", b"eeeee", b"dddd"]


@pytest.mark.parametrize("hash_mask", [-1, 0])
def test_expiry_reuses_slots_through_growth_and_rollback(hash_mask):
    """Churn: names come, some expire (their slots freed and reused), some batches are rolled back, while the
    index grows incrementally; the live names always match a set, each with one slot of its own."""
    rng = random.Random(SEED)
    table = SeriesTable(limit=300, capacity=4, seed=SEED, _hash_mask=hash_mask, reserve=16)
    seen = np.zeros(1024, dtype=np.float64)
    live: dict[bytes, int] = {}  # name -> slot
    clock = 0.0
    for step in range(300):
        clock += 1.0
        names = [b"n%d" % rng.randrange(600 if hash_mask else 2000) for _ in range(rng.randrange(1, 25))]
        try:
            ids = table.intern(*spans(names))
        except SeriesLimitError:
            assert len(table) == len(live)
            continue
        if rng.random() < 0.2:
            table.rollback()
            assert len(table) == len(live)
            continue
        for name, slot in zip(names, ids.tolist()):
            assert live.setdefault(name, slot) == slot
            if slot >= len(seen):
                seen = np.concatenate([seen, np.zeros(len(seen))])
            seen[slot] = clock
        if step % 7 == 0:  # expire what was not seen in the last 20 steps
            gone = table.expire(seen, clock - 20)
            assert sorted(gone.tolist()) == sorted(s for n, s in live.items() if seen[s] < clock - 20)
            live = {n: s for n, s in live.items() if s not in set(gone.tolist())}
            assert (seen[gone] == 0).all()
        assert len(table) == len(live)
        assert len(set(live.values())) == len(live)
    names, lens, slots = table.live()
    packed = np.frombuffer(names, dtype=np.uint8)
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(int)
    got = {packed[o:o + n].tobytes(): int(s) for o, n, s in zip(offs, lens, slots)}
    assert got == live
    slots = np.array(list(live.values()), dtype=np.int64)  # many names at once (Watch's events), as name() gives each
    assert table.names_of(slots) == [table.name(s) for s in slots.tolist()] == list(live)
    assert table.slots <= 300
    print(f"{len(live)} live, {table.slots} slots, index {len(table._index)}")
    assert len(table._index) >= 64  # it grew


def test_a_returning_name_after_expiry_takes_a_slot_again():
    table = SeriesTable(limit=2, seed=SEED)
    seen = np.zeros(16)
    ids = table.intern(*spans([b"a", b"b"]))
    seen[ids] = [1.0, 2.0]
    with pytest.raises(SeriesLimitError):
        table.intern(*spans([b"c"]))
    assert table.expire(seen, 1.5).tolist() == [0]
    assert table.intern(*spans([b"c", b"b"])).tolist() == [0, 1]  # c reuses a's slot (and its bytes)
    assert table.names([0, 1]) == [b"c", b"b"]
    with pytest.raises(IndexError):
        SeriesTable(limit=1).name(0)
    seen[:2] = 3.0
    assert table.expire(seen, 4.0).tolist() == [0, 1]
    assert len(table) == 0 and table.intern(*spans([b"longer name", b"a"])).tolist() == [1, 0]
    assert table.names([0, 1]) == [b"a", b"longer name"]


def test_compaction_keeps_names():
    table = SeriesTable(limit=100_000, seed=SEED)
    seen = np.zeros(1 << 17)
    ids = table.intern(*spans([b"name-%06d-with-some-length" % i for i in range(20_000)]))
    seen[ids] = 1.0
    seen[ids[::4]] = 5.0
    assert len(table.expire(seen, 2.0)) == 15_000
    table.intern(*spans([b"x" * 40 for _ in range(1)]))  # longer than the freed names: appended
    table.begin(0)  # half the arena is freed bytes: packed here
    assert table._m[3] == 0  # M_GARBAGE
    assert table.names(ids[::4][:3]) == [b"name-000000-with-some-length", b"name-000004-with-some-length",
                                         b"name-000008-with-some-length"]
    assert table.intern(*spans([b"name-019996-with-some-length"])).tolist() == [int(ids[-4])]
    assert table.names([int(ids[-1])]) == [b"x" * 40]  # the newest freed slot, reused
