"""Byte primitives under the decoder, the encoder and the series table: loads, varints, UTF-8, name hashing.

No protobuf message knowledge here (that is decode.py and encode.py), and nothing imports the series table.
The loads and the three builds (normal, checked, pure Python) are in loads.py, re-exported here: every other
module imports its primitives from this one.
"""
from __future__ import annotations

import os

import numpy as np
from numba import njit

from streamer.wire.loads import (CHECKED, HOT, INLINE, JIT, PEXT, WireBug, at, byte_at, f64_bits,  # noqa: F401
                                 load_f64, load_i64, pext, store_f64, store_i64, tail_word, trailing_zeros)


# --- errors and progress -----------------------------------------------------------------------------
# Readers return (value, next position) or (0, -code) on error; every caller checks `next < 0` before it
# looks at the value. Codes index ERRORS.

E_TRUNCATED = 1
E_VARINT = 2
E_TAG = 3
E_WIRETYPE = 4
E_GROUP = 5
E_DEPTH = 6
E_NAME_UTF8 = 7
E_SESSION_UTF8 = 8
E_STALLED = 9
ERRORS = {
    E_TRUNCATED: "a record runs past the end of its message (truncated input or a bad length)",
    E_VARINT: "a varint is too long (over 10 bytes; tags and lengths over 5)",
    E_TAG: "a field number is 0 or a tag is over 32 bits",
    E_WIRETYPE: "wire type 6 or 7, or an end-group tag with no open group",
    E_GROUP: "a group is not closed by its own end-group tag",
    E_DEPTH: "groups are nested deeper than 100 levels",
    E_NAME_UTF8: "name is not valid UTF-8",
    E_SESSION_UTF8: "session is not valid UTF-8",
    E_STALLED: "the decoder did not advance (a bug in streamer; please report the request bytes)",
}


@njit(**INLINE)
def advanced(start, p, loop):
    """p, if it is an error or lies past `start`: every iteration of every decoder loop consumes a byte.

    This is the decoder's work bound: positions only move forward and never past the end, so a request of n
    bytes takes at most n loop iterations in all, whatever its contents. A loop that did not advance would
    be a bug: the checked build raises WireBug naming the loop; the normal one rejects the request.
    """
    if p >= 0 and p <= start:
        if CHECKED:
            raise WireBug(loop, start, p)
        return -E_STALLED
    return p


# --- varints -----------------------------------------------------------------------------------------

HIGH_BITS = np.int64(-0x7F7F7F7F7F7F7F80)  # 0x8080808080808080: the top bit of each byte
LOW_BITS = np.int64(0x7F7F7F7F7F7F7F7F)     # the other seven


@njit(**INLINE)
def _varint_word(b, p, end, most):
    """(value, bytes) of a varint of at most `most` <= 8 bytes in b[p:end], read as one word; bytes 0 if
    it is longer or runs past `end`, or if b has fewer than 8 bytes from p (the byte loop then decides)."""
    if len(b) - p < 8:
        return np.int64(0), 0
    w = load_i64(b, p)
    stop = ~w & HIGH_BITS  # the high bit of the varint's last byte is clear
    if stop == 0:
        return np.int64(0), 0
    last = trailing_zeros(stop)  # 8 * (bytes - 1) + 7
    size = (last >> 3) + 1
    if size > most or size > end - p:
        return np.int64(0), 0
    return _groups(w & (((np.int64(1) << last) << 1) - 1)), size  # the bytes after the varint dropped


if PEXT:
    @njit(**INLINE)
    def _groups(x):
        """The 7-bit groups of the varint bytes in word x, packed: one instruction."""
        return pext(x, LOW_BITS)
else:
    @njit(**INLINE)
    def _groups(x):
        """The 7-bit groups of the varint bytes in word x, packed: drop the continuation bits, then close the
        1-bit gaps between groups, the 2-bit gaps between pairs, the 4-bit gap between quads."""
        x &= LOW_BITS
        x = (x & 0x007F007F007F007F) | ((x & 0x7F007F007F007F00) >> 1)
        x = (x & 0x00003FFF00003FFF) | ((x & 0x3FFF00003FFF0000) >> 2)
        return (x & 0x000000000FFFFFFF) | ((x & 0x0FFFFFFF00000000) >> 4)


@njit(**HOT)
def _varint_bytes(b, p, end, most):
    """(value, next) of a varint of at most `most` bytes at b[p], a byte at a time: the slow, exact path
    (near the end of the buffer, 9- and 10-byte varints, and every malformed one); (0, -code) on error."""
    x = np.int64(0)
    shift = 0
    while shift < 7 * most:
        if p >= end:
            return np.int64(0), -E_TRUNCATED
        c = byte_at(b, p)
        p += 1
        x |= (c & 0x7F) << shift
        if c < 0x80:
            return x, p
        shift += 7
    return np.int64(0), -E_VARINT


@njit(**INLINE)
def varint(b, p, end):
    """(value, next) of the varint at b[p] (p < end), as int64 bits; at most 10 bytes, excess high bits
    dropped; (0, -code) if malformed."""
    if p < end and byte_at(b, p) < 0x80:
        return byte_at(b, p), p + 1
    x, size = _varint_word(b, p, end, 8)
    if size:
        return x, p + size
    return _varint_bytes(b, p, end, 10)


@njit(**INLINE)
def varint32(b, p, end):
    """(value, next) of a tag or length varint at b[p]: upb reads these as at most 5 bytes."""
    if p < end and byte_at(b, p) < 0x80:
        return byte_at(b, p), p + 1
    x, size = _varint_word(b, p, end, 5)
    if size:
        return x, p + size
    return _varint_bytes(b, p, end, 5)


# --- UTF-8 and the name hash -------------------------------------------------------------------------

@njit(**HOT)
def _utf8_bytes(b, p, end):
    """utf8_valid's exact path, a character at a time, for text that is not all ASCII."""
    while p < end:
        c = byte_at(b, p)
        if c < 0x80:
            p += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            if end - p < 2 or byte_at(b, p + 1) & 0xC0 != 0x80:
                return False
            p += 2
            continue
        if c < 0xF0:
            if end - p < 3:
                return False
            c1 = byte_at(b, p + 1)
            lo = 0xA0 if c == 0xE0 else 0x80  # no overlong 3-byte forms
            hi = 0x9F if c == 0xED else 0xBF  # no surrogates
            if c1 < lo or c1 > hi or byte_at(b, p + 2) & 0xC0 != 0x80:
                return False
            p += 3
            continue
        if end - p < 4:
            return False
        c1 = byte_at(b, p + 1)
        lo = 0x90 if c == 0xF0 else 0x80  # no overlong 4-byte forms
        hi = 0x8F if c == 0xF4 else 0xBF  # nothing over U+10FFFF
        if c1 < lo or c1 > hi or byte_at(b, p + 2) & 0xC0 != 0x80 or byte_at(b, p + 3) & 0xC0 != 0x80:
            return False
        p += 4
    return True


@njit(**INLINE)
def utf8_valid(b, p, end):
    """Whether b[p:end] is well-formed UTF-8 (no overlongs, surrogates or code points over U+10FFFF)."""
    q = p
    while end - q >= 8 and (load_i64(b, q) & HIGH_BITS) == 0:  # ASCII (names mostly are), a word at a time
        q += 8
    if q == end or (end - q < 8 and (tail_word(b, q, end - q) & HIGH_BITS) == 0):
        return True
    return _utf8_bytes(b, p, end)


# Keys the name hash for this process, so a client cannot aim names at one probe chain of a series table
# (as Python randomizes str hashes). An argument, never a jit-time constant: numba's cache would keep it.
HASH_SEED = int.from_bytes(os.urandom(8), "little", signed=True)
_MUL = np.int64(-0x61C8864680B583EB)  # 0x9E3779B97F4A7C15, 2**64 / golden ratio (Knuth's multiplicative hash)


@njit(**INLINE)
def _hash_word(h, w):
    h = (h ^ w) * _MUL
    return h ^ ((h >> 29) & 0x7FFFFFFFF)  # fold the high half down (a logical shift right by 29)


@njit(**INLINE)
def hash_utf8(b, p, end, seed):
    """(name_hash(b, p, end, seed), whether b[p:end] is UTF-8): one pass over the words for both."""
    h = seed ^ ((end - p) * _MUL)
    seen = np.int64(0)  # the OR of all words: no high bit set means all ASCII
    q = p
    while end - q >= 8:
        w = load_i64(b, q)
        seen |= w
        h = _hash_word(h, w)
        q += 8
    if end > q:
        w = tail_word(b, q, end - q)
        seen |= w
        h = _hash_word(h, w)
    return h * _MUL, (seen & HIGH_BITS) == 0 or _utf8_bytes(b, p, end)


@njit(**INLINE)
def name_hash(b, p, end, seed):
    """64-bit hash of the name b[p:end], a word at a time (as hash_utf8, without the UTF-8 check)."""
    h = seed ^ ((end - p) * _MUL)
    q = p
    while end - q >= 8:
        h = _hash_word(h, load_i64(b, q))
        q += 8
    if end > q:
        h = _hash_word(h, tail_word(b, q, end - q))
    return h * _MUL
