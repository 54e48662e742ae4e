"""The series table's hash index: open addressing with linear probing over int32 entries (slot + 1; 0 free, -1 an
entry removed from an index being emptied), growth by incremental rehashing (an old index drained into one twice
its size a few entries at a time) and deletion by backward shift. Arrays and scalars only; series.py holds the
table these work on (its scalars in the int64 array m, indexed by the M_* constants there).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from streamer.wire.primitives import HOT, INLINE, at, load_i64, tail_word

M_BITS, M_OLD_BITS, M_CURSOR = 6, 7, 8  # series.py's M_BITS, M_OLD_BITS, M_CURSOR (checked there)


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
def _home(h, bits):
    """The index entry a 32-bit hash starts probing at: its top `bits` bits."""
    return (np.int64(h) & 0xFFFFFFFF) >> (32 - bits)


@njit(**INLINE)
def _find(index, bits, hashes, offsets, lengths, arena, b, p, ln, h):
    """(entry, slot) of the name b[p:p+ln] with hash h in `index` (2**bits int32 entries: slot + 1, 0 free,
    -1 a removed entry of an index being emptied); slot -1 when absent, entry then the free one it would take."""
    mask = len(index) - 1
    e = _home(h, bits)
    while True:
        v = at(index, e)
        if v == 0:
            return e, -1
        if v > 0:
            s = v - 1
            if at(hashes, s) == h and at(lengths, s) == ln and _same(b, p, arena, at(offsets, s), ln):
                return e, s
        e = (e + 1) & mask


@njit(**INLINE)
def _place(index, bits, h, slot):
    """Put slot (with hash h) in the first free entry of its probe path."""
    mask = len(index) - 1
    e = _home(h, bits)
    while at(index, e) != 0:
        e = (e + 1) & mask
    index[e] = slot + 1


@njit(**HOT)
def _migrate(m, index, old, hashes, steps):
    """Move the next `steps` entries of the old index into the new one; the old one is done when
    m[M_CURSOR] reaches its end (m[M_OLD_BITS] is then 0)."""
    if m[M_OLD_BITS] == 0:
        return
    c = m[M_CURSOR]
    end = min(len(old), c + steps)
    bits = m[M_BITS]
    while c < end:
        v = at(old, c)
        if v > 0:
            _place(index, bits, at(hashes, v - 1), v - 1)
        c += 1
    m[M_CURSOR] = c
    if c >= len(old):
        m[M_OLD_BITS] = 0


@njit(**HOT)
def _remove(m, index, old, hashes, slot):
    """Take slot out of the index (backward-shift deletion: no tombstones, probe paths stay whole; Knuth,
    TAOCP vol. 3, 6.4, Algorithm R) and mark it removed in the old index if that is still being emptied."""
    bits = m[M_BITS]
    mask = len(index) - 1
    h = at(hashes, slot)
    e = _home(h, bits)
    while True:
        v = at(index, e)
        if v == 0:
            break  # not moved over yet: only in the old index
        if v == slot + 1:
            i = e
            j = e
            while True:
                j = (j + 1) & mask
                w = at(index, j)
                if w == 0:
                    break
                k = _home(at(hashes, w - 1), bits)
                # w stays if its home lies cyclically in (i, j]: moving it to i would put it before its home
                if (k > i and k <= j) if i <= j else (k > i or k <= j):
                    continue
                index[i] = w
                i = j
            index[i] = 0
            break
        e = (e + 1) & mask
    ob = m[M_OLD_BITS]
    if ob:
        omask = len(old) - 1
        e = _home(h, ob)
        while True:
            v = at(old, e)
            if v == 0:
                break
            if v == slot + 1:
                old[e] = -1
                break
            e = (e + 1) & omask
