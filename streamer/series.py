"""Series table: metric name bytes -> slot numbers, with a limit on how many series are live at once.

An open-addressing hash index (linear probing, int32 entries) over slot arrays, probed in numba; names live in
one byte arena. Interning a batch is all-or-nothing: if the batch would take the table past its limit nothing is
added, and `rollback` takes back the names of a batch that was interned but then not applied. Series can be
removed (`expire`): their slots go on a free list and are reused by the next new names.

The index never stalls a batch to grow: a bigger index is made (its pages untouched until written) and the old
one's entries move over a few per metric interned, lookups probing both meanwhile (incremental rehashing). The
slot arrays are reserved for `reserve` series up front with pages the kernel hands out as they are first written,
so growing to that size copies nothing.

Bytes per live series: 8 to 16 of index (load 1/4 to 1/2), 4 of hash, 4 of name offset, 2 of name length, 4 of
free list at most, and the name's own bytes.
"""
from __future__ import annotations

import itertools
import mmap

import numpy as np
from numba import njit

from streamer import series_index
from streamer.series_index import _find, _migrate, _remove, _same
from streamer.wire.primitives import HASH_SEED, HOT, at, byte_at
from streamer.wire.primitives import name_hash as hash_of_name

_PAD = 8                                # arena bytes past the end, so 8-byte loads of a name's tail stay inside
_MIGRATE = 4                            # old index entries moved per name added (1 more per name looked up)
_MAX_NAME = 0x7FFF                      # lengths are int16
_MAX_ARENA = 2 ** 31 - 1                # offsets are int32
_RESERVE = 1 << 21                      # slots reserved up front at most (more grow by copying)

# the table's scalars, one int64 array (numba takes arrays faster than many scalar arguments and can write them)
(M_COUNT, M_HIGH, M_USED, M_GARBAGE, M_NFREE, M_NBORN, M_BITS, M_OLD_BITS, M_CURSOR, M_LIMIT, M_HASH_MASK,
 M_USED0, M_GARBAGE0, M_NAMES) = range(14)
assert (series_index.M_BITS, series_index.M_OLD_BITS, series_index.M_CURSOR) == (M_BITS, M_OLD_BITS, M_CURSOR)
_M_SIZE = 14  # M_NAMES: raised by every change to the names, slots or their bytes (snapshots copy them if so)

# what _intern stopped for (besides finishing)
_DONE = 0
_GROW_SLOTS = 1
_GROW_ARENA = 2
_GROW_TABLE = 3
_OVER_LIMIT = 4
_BAD_SPAN = 5


class SeriesLimitError(Exception):
    """Interning a batch would exceed the table's series limit."""

    def __init__(self, index: int, limit: int):
        super().__init__(f"metric {index} would be series number {limit + 1}, over the limit of {limit} series")
        self.index = index
        self.limit = limit


_SERIALS = itertools.count(1)


def lazy_zeros(n: int, dtype) -> np.ndarray:
    """np.zeros(n, dtype) whose pages the kernel gives only when first written (an anonymous mapping): reserving
    room for many series costs no memory until they come, and growing into it copies nothing."""
    nbytes = n * np.dtype(dtype).itemsize
    if nbytes < 1 << 16:
        return np.zeros(n, dtype=dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype)


@njit(**HOT)
def _hash_names(b, name_start, name_len, seed, out):
    """out[i] = wire.name_hash of each name span (what decode_request already gives); -1 - i for a span
    outside b, else 0."""
    for i in range(min(len(name_start), len(name_len), len(out))):
        p = at(name_start, i)
        ln = at(name_len, i)
        if p < 0 or ln < 0 or ln > len(b) - p:
            return -1 - i
        out[i] = hash_of_name(b, p, p + ln, seed)
    return 0


@njit(**HOT)
def _intern(b, name_start, name_len, name_hashes, i, ids, m, index, old, hashes, offsets, lengths, arena, free,
            born, seed=0, unhashed=False):
    """Look up (and add) the names of metrics i, i+1, ... (their hashes given) writing their slots to ids.

    What ids holds on entry is tried first, as a guess checked against the name's bytes (any value is safe).
    `unhashed`: name_hashes are not given; a name not found that way is hashed here (with `seed`).

    New names take a free slot (the newest freed first) or the next unused one; each is logged in born
    (3 int64 each: slot, or -1 - slot for an unused one, and the free slot's former offset and length) for
    _rollback. Returns (status, i): _DONE, or where it stopped and why (a full array, or the limit).
    """
    n = min(len(name_start), len(name_len), len(name_hashes), len(ids))
    hash_mask = m[M_HASH_MASK]
    limit = m[M_LIMIT]
    while i < n:
        p = at(name_start, i)
        ln = at(name_len, i)
        if p < 0 or ln < 0 or ln > len(b) - p or ln > _MAX_NAME:  # a span outside b would read out of bounds
            return _BAD_SPAN, i
        # ids[i] as the caller left it: the fused pass's ids hold the last batch's slots, and a collector sends
        # its series in the same order each time. Whatever it holds, a live slot whose name is these bytes is
        # this name's slot (names are unique in the table), so a hit needs no hash or probe.
        slot = at(ids, i)
        if slot >= 0 and slot < m[M_HIGH] and at(lengths, slot) == ln and at(offsets, slot) >= 0 and _same(
                b, p, arena, at(offsets, slot), ln):
            i += 1
            if m[M_OLD_BITS]:
                _migrate(m, index, old, hashes, 1)
            continue
        full = hash_of_name(b, p, p + ln, seed) if unhashed else at(name_hashes, i)
        h = (full & hash_mask) >> 32  # the top 32 bits (the best mixed), as int32
        e, slot = _find(index, m[M_BITS], hashes, offsets, lengths, arena, b, p, ln, h)
        if slot < 0 and m[M_OLD_BITS]:
            _, slot = _find(old, m[M_OLD_BITS], hashes, offsets, lengths, arena, b, p, ln, h)
        if slot < 0:
            count = m[M_COUNT]
            if count >= limit:
                return _OVER_LIMIT, i
            if m[M_NFREE] == 0 and m[M_HIGH] >= len(offsets):
                return _GROW_SLOTS, i
            if 2 * (count + 1) > len(index):  # keep the load factor at most 1/2: short probes
                return _GROW_TABLE, i
            nb = m[M_NBORN]
            if m[M_NFREE]:
                slot = np.int64(at(free, m[M_NFREE] - 1))
                cap = np.int64(at(lengths, slot))
                off = -1 - np.int64(at(offsets, slot))
                if ln > cap and m[M_USED] + ln + _PAD > len(arena):
                    return _GROW_ARENA, i
                m[M_NFREE] -= 1
                born[3 * nb] = slot
                born[3 * nb + 1] = off
                born[3 * nb + 2] = cap
                if ln <= cap:  # the freed name's bytes take the new one
                    m[M_GARBAGE] -= ln
                else:
                    off = m[M_USED]
                    m[M_USED] += ln
            else:
                if m[M_USED] + ln + _PAD > len(arena):
                    return _GROW_ARENA, i
                slot = m[M_HIGH]
                m[M_HIGH] += 1
                born[3 * nb] = -1 - slot
                off = m[M_USED]
                m[M_USED] += ln
            m[M_NBORN] = nb + 1
            for k in range(ln):
                arena[off + k] = byte_at(b, p + k)
            offsets[slot] = off
            lengths[slot] = ln
            hashes[slot] = h
            index[e] = slot + 1
            m[M_COUNT] = count + 1
            m[M_NAMES] += 1
            _migrate(m, index, old, hashes, _MIGRATE)
        ids[i] = slot
        i += 1
        if m[M_OLD_BITS]:
            _migrate(m, index, old, hashes, 1)
    return _DONE, i


@njit(**HOT)
def _rollback(m, index, old, hashes, offsets, lengths, free, born):
    """Undo the new names logged in born since m[M_NBORN] was last zeroed, newest first: each leaves the
    index, a reused slot goes back on the free list with its former name bytes, an unused one is unused again."""
    for k in range(m[M_NBORN] - 1, -1, -1):
        code = born[3 * k]
        slot = code if code >= 0 else -1 - code
        _remove(m, index, old, hashes, slot)
        if code >= 0:
            offsets[slot] = -1 - born[3 * k + 1]
            lengths[slot] = born[3 * k + 2]
            free[m[M_NFREE]] = slot
            m[M_NFREE] += 1
        else:
            offsets[slot] = 0
            lengths[slot] = 0
            m[M_HIGH] -= 1
        m[M_COUNT] -= 1
    m[M_NBORN] = 0
    m[M_USED] = m[M_USED0]
    m[M_GARBAGE] = m[M_GARBAGE0]
    m[M_NAMES] += 1


@njit(**HOT)
def _expire(m, index, old, hashes, offsets, lengths, free, last_seen, cutoff, out):
    """Remove every live series whose last_seen is before cutoff (0: never seen, kept); set its last_seen to
    0, write its slot to out and return how many. A removed name's bytes stay for the next name of that slot."""
    k = 0
    for s in range(m[M_HIGH]):
        ls = last_seen[s]
        if at(offsets, s) >= 0 and ls != 0.0 and ls < cutoff:
            _remove(m, index, old, hashes, s)
            offsets[s] = -1 - offsets[s]
            m[M_GARBAGE] += lengths[s]
            free[m[M_NFREE]] = s
            m[M_NFREE] += 1
            m[M_COUNT] -= 1
            last_seen[s] = 0.0
            out[k] = s
            k += 1
    m[M_NAMES] += k
    return k


@njit(**HOT)
def _compact(m, offsets, lengths, arena, new):
    """Copy the live names into `new` in slot order (freed slots keep no bytes); returns the bytes used."""
    used = 0
    for s in range(m[M_HIGH]):
        off = offsets[s]
        if off >= 0:
            ln = lengths[s]
            for k in range(ln):
                new[used + k] = arena[off + k]
            offsets[s] = used
            used += ln
        else:
            offsets[s] = -1
            lengths[s] = 0
    return used


@njit(**HOT)
def _gather(m, offsets, lengths, arena, names, lens, slots):
    """The live names packed in slot order into names, their lengths into lens and slots into slots;
    returns (series, bytes)."""
    n = 0
    used = 0
    for s in range(m[M_HIGH]):
        off = offsets[s]
        if off >= 0:
            ln = lengths[s]
            for k in range(ln):
                names[used + k] = arena[off + k]
            lens[n] = ln
            slots[n] = s
            used += ln
            n += 1
    return n, used


class SeriesTable:
    """Names of the live series, each with its slot in the state arrays.

    `capacity`: the starting number of index entries (rounded up to a power of 2, at least 4); `reserve`: slots
    reserved up front (default min(limit, 2**21)); `seed` keys the hash (wire.HASH_SEED, random per process, by
    default: then the hashes decode_request gives can be used); `_hash_mask` lets tests force hash collisions
    (0: every name hashes alike). Not thread-safe: one stream (or the session's one open stream) uses a table at
    a time.
    """

    def __init__(self, limit: int, capacity: int = 64, seed: int = HASH_SEED, _hash_mask: int = -1,
                 reserve: int | None = None, name_bytes: int | None = None, lazy: bool = True):
        self.limit = limit
        size = 4
        while size < capacity:
            size *= 2
        slots = max(16, min(max(limit, 0), _RESERVE) if reserve is None else reserve)
        self._m = np.zeros(_M_SIZE, dtype=np.int64)
        self._m[M_BITS] = size.bit_length() - 1
        self._m[M_LIMIT] = limit
        self._m[M_HASH_MASK] = _hash_mask
        # lazy: pages mapped as they are first written (a long-lived table); else np.zeros, whose memory the
        # allocator reuses from call to call without new page faults (a unary Detect's table of one batch)
        zeros = lazy_zeros if lazy else np.zeros
        self._index = zeros(size, np.int32)
        self._old = np.zeros(0, dtype=np.int32)
        self._hashes = zeros(slots, np.int32)
        self._offsets = zeros(slots, np.int32)
        self._lengths = zeros(slots, np.int16)
        self._free = zeros(slots, np.int32)
        # 64 name bytes a slot reserved unless told (a lazy table takes no memory for them until used)
        self._arena = zeros((64 * slots if name_bytes is None else name_bytes) + _PAD, np.uint8)
        self._born = np.zeros(0, dtype=np.int64)
        self._next = self._old  # the next, twice as big index, its pages taken ahead of need (begin)
        self._next_pages = 0
        # plain ints, not numpy scalars: numba takes those ~20x faster as arguments
        self._seed = int(seed)
        self.serial = next(_SERIALS)  # this table's own number (an id() is reused once its object is gone)
        self.removals = 0  # raised whenever series are removed (expire, clear): a slot kept since may name another

    def __len__(self) -> int:
        return int(self._m[M_COUNT])

    @property
    def slots(self) -> int:
        """Slots in use or free (the state arrays need this many)."""
        return int(self._m[M_HIGH])

    @property
    def nbytes(self) -> int:
        """Bytes the table's arrays hold for its slots and names (what is touched of the reserved room)."""
        high = self.slots
        return (len(self._index) * 4 + len(self._old) * 4 + high * (4 + 4 + 2) + int(self._m[M_NFREE]) * 4
                + int(self._m[M_USED]))

    def begin(self, n: int, room: int | None = None) -> None:
        """Start a batch of n metrics: its new names are logged from here for rollback(). `room`: how many new
        series the batch may add at most besides the table's own limit (a server-wide limit's share)."""
        m = self._m
        m[M_LIMIT] = self.limit if room is None else min(self.limit, int(m[M_COUNT]) + room)
        if len(self._born) < 3 * n:
            self._born = np.empty(max(3 * n, 2 * len(self._born)), dtype=np.int64)
        m[M_NBORN] = 0
        garbage, used = int(m[M_GARBAGE]), int(m[M_USED])
        if garbage > 1 << 16 and 2 * garbage > used:  # more freed bytes than live ones: pack them
            new = lazy_zeros(len(self._arena), np.uint8)
            m[M_USED] = _compact(m, self._offsets, self._lengths, self._arena, new)
            self._arena = new
            m[M_GARBAGE] = 0
            m[M_NAMES] += 1
        m[M_USED0], m[M_GARBAGE0] = m[M_USED], m[M_GARBAGE]
        self._prefault(n)

    def _prefault(self, n: int) -> None:
        """Past 3/8 load, make the next index and write a zero to some of its pages each batch, so that by the
        time it is needed (at 1/2) they are all mapped: the kernel's page faults (5-10 us each on a VM) would
        otherwise come at once, in the first batches after the growth (2048 of them for a million series)."""
        size = len(self._index)
        if 8 * int(self._m[M_COUNT]) < 3 * size:
            return
        if len(self._next) != 2 * size:
            self._next, self._next_pages = lazy_zeros(2 * size, np.int32), 0
        per_page = mmap.PAGESIZE // 4
        pages = -(-2 * size // per_page)
        if self._next_pages < pages:
            # the growth comes after size/8 more series: all pages by then, in steps of this batch's share
            k = max(16, -(-pages * max(n, 1) * 8 // size))
            stop = min(pages, self._next_pages + k)
            self._next[self._next_pages * per_page:stop * per_page:per_page] = 0
            self._next_pages = stop

    def intern(self, buf: bytes, name_start: np.ndarray, name_len: np.ndarray,
               name_hash: np.ndarray | None = None, room: int | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
        """Slot of each name span buf[name_start[i]:][:name_len[i]], adding new names in order of first use.

        name_hash: the spans' wire.name_hash with HASH_SEED, as decode_request gives them (Columns.name_hash);
        computed here when absent (or when this table has its own seed). Raise SeriesLimitError and add none
        if the batch would take the table past its limit (or add more than `room` series); ValueError for a span
        outside buf. `out`: int64[n] to write the slots to (and return); what it holds is tried first, checked
        against the names (a reused buffer: a sender's series come in the same order each time).
        """
        b = buf if type(buf) is bytes else bytes(buf)  # one jitted signature
        n = len(name_start)
        if len(name_len) != n or (name_hash is not None and len(name_hash) != n):
            raise ValueError(f"{n} name starts, {len(name_len)} lengths and "
                             f"{'no' if name_hash is None else len(name_hash)} hashes")
        if name_hash is None or self._seed != HASH_SEED:
            name_hash = np.empty(n, dtype=np.int64)
            bad = _hash_names(b, name_start, name_len, self._seed, name_hash)
            if bad:
                i = -1 - bad
                raise ValueError(f"name {i}: span [{name_start[i]}, +{name_len[i]}) is outside the buffer")
        ids = np.empty(n, dtype=np.int64) if out is None or len(out) != n or out.dtype != np.int64 else out
        self.begin(n, room)
        i = 0
        while True:
            status, i = _intern(b, name_start, name_len, name_hash, i, ids, self._m, self._index, self._old,
                                self._hashes, self._offsets, self._lengths, self._arena, self._free, self._born)
            if status == _DONE:
                return ids
            if not self._grow(status, int(name_len[i])):
                self.rollback()
                if status == _BAD_SPAN:
                    raise ValueError(f"name {i}: span [{name_start[i]}, +{name_len[i]}) is outside the buffer "
                                     f"(or over {_MAX_NAME} bytes)")
                raise SeriesLimitError(i, self.limit)

    def clear(self) -> None:
        """Forget every series, keeping the arrays (and their mapped pages) for the next batch: a unary Detect's
        table, reused by its thread's next call instead of new zeroed arrays (their page faults and zeroing cost
        more than the batch's own work). Costs a pass over the index (4 bytes an entry)."""
        m = self._m
        bits, mask, names = int(m[M_BITS]), int(m[M_HASH_MASK]), int(m[M_NAMES])
        self._index[:] = 0
        self._old = self._next = np.zeros(0, dtype=np.int32)
        self._next_pages = 0
        m[:] = 0  # no slots, no free list, no name bytes: slots past M_HIGH are written before they are read
        m[M_BITS], m[M_LIMIT], m[M_HASH_MASK], m[M_NAMES] = bits, self.limit, mask, names + 1
        self.removals += 1

    def _grow(self, status: int, name_len: int) -> bool:
        """Make the room _intern stopped for (`name_len`: the length of the name it was adding); False when it
        stopped for something growing cannot fix (the limit, a bad span). The fused pass calls this too."""
        m = self._m
        if status == _GROW_SLOTS:  # past the reserved slots: this copies (and may stall a batch)
            n = 2 * len(self._offsets)
            self._hashes, self._offsets, self._lengths, self._free = (
                _grown(a, n) for a in (self._hashes, self._offsets, self._lengths, self._free))
        elif status == _GROW_ARENA:
            need = int(m[M_USED]) + name_len + _PAD
            if need > _MAX_ARENA:
                return False
            self._arena = _grown(self._arena, min(max(2 * len(self._arena), need), _MAX_ARENA))
        elif status == _GROW_TABLE:
            if m[M_OLD_BITS]:  # the last growth is not done moving (only after many removals): finish it
                _migrate(m, self._index, self._old, self._hashes, len(self._old))
            self._old = self._index
            m[M_OLD_BITS], m[M_CURSOR] = m[M_BITS], 0
            m[M_BITS] += 1
            if len(self._next) == 2 * len(self._old):
                self._index, self._next = self._next, np.zeros(0, dtype=np.int32)
            else:
                self._index = lazy_zeros(2 * len(self._old), np.int32)
        else:
            return False
        return True

    def settle(self) -> None:
        """Drop the old index once its entries have all moved (after each batch)."""
        if len(self._old) and not self._m[M_OLD_BITS]:
            self._old = np.zeros(0, dtype=np.int32)

    def rollback(self) -> None:
        """Forget the names the last intern (since begin()) added, as if they had never come; the slots they
        took are free (or unused) again, with the bytes they had."""
        _rollback(self._m, self._index, self._old, self._hashes, self._offsets, self._lengths, self._free,
                  self._born)

    def born(self) -> int:
        """New names the last intern added."""
        return int(self._m[M_NBORN])

    def expire(self, last_seen: np.ndarray, cutoff: float) -> np.ndarray:
        """Remove every series whose last_seen[slot] is before cutoff (and not 0: never seen); their slots."""
        out = np.empty(self.slots, dtype=np.int64)
        k = _expire(self._m, self._index, self._old, self._hashes, self._offsets, self._lengths, self._free,
                    last_seen, float(cutoff), out)
        self.settle()
        if k:
            self.removals += 1
        return out[:k]

    def live(self) -> tuple[bytes, np.ndarray, np.ndarray]:
        """(names of the live series packed in slot order, their lengths (int64), their slots (int64))."""
        high = self.slots
        names = np.empty(int(self._m[M_USED]), dtype=np.uint8)
        lens = np.empty(high, dtype=np.int64)
        slots = np.empty(high, dtype=np.int64)
        n, used = _gather(self._m, self._offsets, self._lengths, self._arena, names, lens, slots)
        return names[:used].tobytes(), lens[:n], slots[:n]

    def name(self, slot: int) -> bytes:
        name = self.live_name(slot)
        if name is None:
            raise IndexError(f"series slot {slot} is not live (the table holds {len(self)} series)")
        return name

    def names_of(self, slots: np.ndarray) -> list[bytes]:
        """The names of live `slots` (a batch's flagged rows' slots), as name() gives them one at a time at about
        2 us each (numpy's per-call overhead): here a memoryview's slices."""
        arena = memoryview(self._arena)
        return [arena[o:o + n].tobytes() for o, n in zip(self._offsets[slots].tolist(),
                                                         self._lengths[slots].tolist())]

    def live_name(self, slot: int) -> bytes | None:
        """The name of `slot`, or None when no series holds it (removed, or never used)."""
        if not 0 <= slot < self.slots or self._offsets[slot] < 0:
            return None
        off = int(self._offsets[slot])
        return self._arena[off:off + int(self._lengths[slot])].tobytes()

    def names(self, slots) -> list[bytes]:
        """Names of many slots (for tests and logs; the response encoder reads the arrays directly)."""
        return [self.name(int(s)) for s in slots]

    def name_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(arena, offsets, lengths): live slot s's name is arena[offsets[s]:offsets[s] + lengths[s]]."""
        return self._arena, self._offsets, self._lengths


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    new = lazy_zeros(n, a.dtype)
    new[:len(a)] = a
    return new


def compile_all() -> None:
    """Compile (or load from numba's cache) the table's jitted functions: lookups, growth, removal, rollback."""
    table = SeriesTable(limit=3, capacity=1, reserve=1)
    one = np.ones(3, dtype=np.int64)
    table.intern(b"abc", np.arange(3, dtype=np.int64), one)  # the index, slots and arena grow
    seen = np.zeros(16, dtype=np.float64)
    seen[1] = 1.0
    table.expire(seen, 2.0)  # "b" goes
    try:  # "b" comes back in its free slot, then "d" is over the limit: the batch is rolled back
        table.intern(b"bd", np.arange(2, dtype=np.int64), one[:2])
    except SeriesLimitError:
        pass
    table.live()
    _migrate(table._m, table._index, table._old, table._hashes, 0)  # as _grow calls it
    table._m[M_GARBAGE] = 1 << 20  # and a compaction
    table.begin(1)
