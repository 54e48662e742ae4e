"""Series table: metric name bytes -> dense slot numbers (0, 1, 2, ...), with a limit on how many.

An open-addressing hash table (linear probing) over numpy arrays, probed in numba; names live in one byte
arena. Interning a batch is all-or-nothing: if the batch would take the table past its limit, nothing is added;
`truncate` takes back the names of a batch that was interned but then not applied.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from streamer.wire.primitives import HASH_SEED, HOT, INLINE, at, byte_at, load_i64, tail_word
from streamer.wire.primitives import name_hash as hash_of_name

_EMPTY = -1                             # a free table entry's slot
_PAD = 8                                # arena bytes past the end, so 8-byte loads of a name's tail stay inside

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


@njit(**INLINE)
def _same(b, p, arena, q, n):
    """Whether b[p:p+n] == arena[q:q+n]; the arena is padded, so its tail word is always loadable."""
    k = 0
    while n - k >= 8:
        if load_i64(b, p + k) != load_i64(arena, q + k):
            return False
        k += 8
    if n > k:
        mask = (np.int64(1) << (8 * (n - k))) - 1
        return tail_word(b, p + k, n - k) == load_i64(arena, q + k) & mask
    return True


@njit(**INLINE)
def _home(h, shift):
    """The table entry a hash starts probing at: its top bits (the best mixed ones after a multiply)."""
    return (h >> shift) & ((np.int64(1) << (64 - shift)) - 1)


@njit(**HOT)
def _intern(b, name_start, name_len, name_hashes, i, ids, table, shift, hashes, offsets, lengths, arena, count,
            used, limit, hash_mask):
    """Look up (and add) the names of metrics i, i+1, ... (their hashes given) writing their slots to ids.

    table: int64[2 * size] of (hash, slot) pairs, slot -1 when free, size = 2**(64 - shift).
    Returns (status, i, count, used): _DONE, or where it stopped and why (a full array, or the limit).
    """
    n = min(len(name_start), len(name_len), len(name_hashes), len(ids))
    mask = (len(table) >> 1) - 1
    while i < n:
        p = at(name_start, i)
        ln = at(name_len, i)
        if p < 0 or ln < 0 or ln > len(b) - p:  # a span outside the buffer would read out of bounds
            return _BAD_SPAN, i, count, used
        h = at(name_hashes, i) & hash_mask
        e = _home(h, shift)
        while True:
            slot = at(table, 2 * e + 1)
            if slot == _EMPTY:
                break
            if at(table, 2 * e) == h and at(lengths, slot) == ln and _same(b, p, arena, at(offsets, slot), ln):
                break
            e = (e + 1) & mask
        if slot == _EMPTY:
            if count >= limit:
                return _OVER_LIMIT, i, count, used
            if count >= len(offsets):
                return _GROW_SLOTS, i, count, used
            if used + ln + _PAD > len(arena):
                return _GROW_ARENA, i, count, used
            if 2 * (count + 1) > mask + 1:  # keep the load factor at most 1/2: short probes
                return _GROW_TABLE, i, count, used
            slot = count
            for k in range(ln):
                arena[used + k] = byte_at(b, p + k)
            offsets[slot] = used
            lengths[slot] = ln
            hashes[slot] = h
            table[2 * e] = h
            table[2 * e + 1] = slot
            used += ln
            count += 1
        ids[i] = slot
        i += 1
    return _DONE, i, count, used


@njit(**HOT)
def _rehash(table, shift, hashes, count):
    """Fill an empty table with slots 0..count-1, in slot order (which _forget relies on)."""
    mask = (len(table) >> 1) - 1
    for slot in range(count):
        h = hashes[slot]
        e = _home(h, shift)
        while table[2 * e + 1] != _EMPTY:
            e = (e + 1) & mask
        table[2 * e] = h
        table[2 * e + 1] = slot


@njit(**HOT)
def _forget(table, shift, hashes, first, count):
    """Remove slots count-1 down to `first` from the table, newest first.

    With linear probing, clearing the newest entry cannot cut another entry's probe path: every entry still
    present was inserted before it (rehashing inserts in slot order too), when its position was free.
    """
    mask = (len(table) >> 1) - 1
    for slot in range(count - 1, first - 1, -1):
        e = _home(hashes[slot], shift)
        while table[2 * e + 1] != slot:
            e = (e + 1) & mask
        table[2 * e] = 0
        table[2 * e + 1] = _EMPTY


class SeriesTable:
    """Names of the series seen so far, each with its slot in the state arrays.

    `capacity` is the starting number of table entries (rounded up to a power of 2, at least 4); `seed`
    keys the hash (wire.HASH_SEED, random per process, by default: then the hashes decode_request gives can
    be used); `_hash_mask` lets tests force hash collisions (0: every name hashes alike).
    Not thread-safe: one stream (or the session's one open stream) uses a table at a time.
    """

    def __init__(self, limit: int, capacity: int = 64, seed: int = HASH_SEED, _hash_mask: int = -1):
        self.limit = limit
        size = 4
        while size < capacity:
            size *= 2
        self._shift = 64 - size.bit_length() + 1
        self._table = np.zeros(2 * size, dtype=np.int64)
        self._table[1::2] = _EMPTY
        self._hashes = np.zeros(size // 2, dtype=np.int64)
        self._offsets = np.zeros(size // 2, dtype=np.int64)
        self._lengths = np.zeros(size // 2, dtype=np.int64)
        self._arena = np.zeros(16 * size + _PAD, dtype=np.uint8)
        self._count = 0
        self._used = 0
        # plain ints, not numpy scalars: numba takes those ~20x faster as arguments
        self._seed = int(seed)
        self._hash_mask = int(_hash_mask)

    def __len__(self) -> int:
        return self._count

    def intern(self, buf: bytes, name_start: np.ndarray, name_len: np.ndarray,
               name_hash: np.ndarray | None = None) -> np.ndarray:
        """Slot of each name span buf[name_start[i]:][:name_len[i]], adding new names in order of first use.

        name_hash: the spans' wire.name_hash with HASH_SEED, as decode_request gives them (Columns.name_hash);
        computed here when absent (or when this table has its own seed). Raise SeriesLimitError and add none
        if the batch would take the table past its limit; ValueError for a span outside buf.
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
        ids = np.empty(n, dtype=np.int64)
        first = self._count
        i = 0
        while True:
            status, i, self._count, self._used = _intern(
                b, name_start, name_len, name_hash, i, ids, self._table, self._shift, self._hashes,
                self._offsets, self._lengths, self._arena, self._count, self._used, self.limit, self._hash_mask)
            if status == _DONE:
                return ids
            if not self._grow(status, int(name_len[i])):
                self.truncate(first)
                if status == _BAD_SPAN:
                    raise ValueError(f"name {i}: span [{name_start[i]}, +{name_len[i]}) is outside the buffer")
                raise SeriesLimitError(i, self.limit)

    def _grow(self, status: int, name_len: int) -> bool:
        """Make the room _intern stopped for (`name_len`: the length of the name it was adding); False when it
        stopped for something growing cannot fix (the limit, a bad span). The fused pass calls this too."""
        if status == _GROW_SLOTS:
            n = 2 * len(self._offsets)
            self._hashes, self._offsets, self._lengths = (_grown(a, n) for a in
                                                          (self._hashes, self._offsets, self._lengths))
        elif status == _GROW_ARENA:
            need = self._used + name_len + _PAD
            self._arena = _grown(self._arena, max(2 * len(self._arena), need))
        elif status == _GROW_TABLE:
            self._shift -= 1  # twice the entries, each a (hash, slot) pair of int64s
            self._table = np.zeros(2 * len(self._table), dtype=np.int64)
            self._table[1::2] = _EMPTY
            _rehash(self._table, self._shift, self._hashes, self._count)
        else:
            return False
        return True

    def truncate(self, count: int) -> None:
        """Forget every series after the first `count`, as if their names had never been interned.

        Undoes the new names of a batch that cannot be applied (pass len(table) from before its intern).
        The arrays keep their grown sizes; the forgotten names' arena bytes are reused by the next new names.
        """
        if not 0 <= count <= self._count:
            raise ValueError(f"cannot truncate a table of {self._count} series to {count}")
        if count == self._count:
            return
        _forget(self._table, self._shift, self._hashes, count, self._count)
        self._used = int(self._offsets[count])  # names are laid in the arena in slot order
        self._count = count

    def name(self, slot: int) -> bytes:
        if not 0 <= slot < self._count:
            raise IndexError(f"series slot {slot} out of range (table holds {self._count})")
        off = int(self._offsets[slot])
        return self._arena[off:off + int(self._lengths[slot])].tobytes()

    def names(self, slots) -> list[bytes]:
        """Names of many slots (for tests and logs; the response encoder reads the arrays directly)."""
        return [self.name(int(s)) for s in slots]

    def name_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(arena, offsets, lengths): slot s's name is arena[offsets[s]:offsets[s] + lengths[s]]."""
        return self._arena, self._offsets, self._lengths


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    new = np.zeros(n, dtype=a.dtype)
    new[:len(a)] = a
    return new


def compile_all() -> None:
    """Compile (or load from numba's cache) the table's jitted functions: lookups, growth and rollback."""
    table = SeriesTable(limit=3, capacity=1)
    one = np.ones(3, dtype=np.int64)
    table.intern(b"abc", np.arange(3, dtype=np.int64), one)  # the table grows
    table.truncate(2)
    try:  # "c" is added again, then "d" is over the limit: the batch is rolled back (_forget)
        table.intern(b"cd", np.arange(2, dtype=np.int64), one[:2])
    except SeriesLimitError:
        pass
