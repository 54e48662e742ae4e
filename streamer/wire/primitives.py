"""Byte primitives under the decoder, the encoder and the series table: loads, varints, UTF-8, name hashing.

No protobuf message knowledge here (that is decode.py and encode.py), and nothing imports the series table.

The loads come in three builds of the same source, chosen when this module is imported:
- normal: bare machine loads (numba intrinsics); every caller checks its bounds first;
- checked (STREAMER_WIRE_CHECKED=1): every load checks its bounds and every decoder loop its progress,
  raising WireBug with the load or loop and the position. numba's cache key does not see this switch, so
  the checked build compiles into its own cache directory: checked and normal machine code never mix;
- pure Python (NUMBA_DISABLE_JIT=1): plain-Python twins of the loads, always checked, so coverage tools and
  the fuzzer (tests/fuzz/) see every branch of the decoder.
"""
from __future__ import annotations

import os
import struct

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

JIT = not numba.config.DISABLE_JIT
CHECKED = os.environ.get("STREAMER_WIRE_CHECKED", "") not in ("", "0") or not JIT

if CHECKED and JIT:
    # Before any @njit(cache=True) below or in the modules importing this one is decorated: that is when
    # numba picks the cache directory. Inside the user's NUMBA_CACHE_DIR if set, else beside the sources.
    numba.config.CACHE_DIR = os.path.join(
        numba.config.CACHE_DIR or os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__"),
        "streamer-wire-checked")

# Hot-path functions never allocate (the Python wrappers hand them every array) and are compiled without
# numba's reference counting (_nrt=False, a numba-internal option): with it, each inlined helper taking the
# byte array adds an atomic incref/decref pair per call, which measured 4-5x slower decoding (12 vs 2.3 ns
# per metric to scan a request). The checked build keeps it: raising an exception with the position needs it.
HOT = dict(nogil=True, cache=True) if CHECKED else dict(nogil=True, cache=True, _nrt=False)
INLINE = dict(HOT, inline="always")


class WireBug(IndexError):
    """Checked build only: a load outside its buffer, or a decoder loop that did not consume a byte.

    Never raised by correct code on any input: it marks a bug in this package (see tests/test_wire_checked.py).
    Args: (what, position, size or start).
    """


# --- loads and stores --------------------------------------------------------------------------------
# Unaligned 8-byte loads and stores, little-endian (every platform numba supports is).

def _byte_pointer(context, builder, aryty, ary, pos, posty, target):
    data = context.make_array(aryty)(context, builder, ary).data
    ptr = builder.gep(data, [context.cast(builder, pos, posty, types.intp)])
    return builder.bitcast(ptr, target.as_pointer())


@intrinsic
def _raw_at(typingctx, arr, pos):
    """arr[pos] without numba's negative-index wraparound (3 instructions a load)."""
    sig = arr.dtype(arr, pos)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.load(builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.intp)]))
    return sig, codegen


@intrinsic
def _raw_byte(typingctx, arr, pos):
    """arr[pos] (uint8) as an int64, without numba's negative-index wraparound."""
    sig = types.int64(arr, pos)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.IntType(8))
        return builder.zext(builder.load(ptr), ir.IntType(64))
    return sig, codegen


@intrinsic
def _raw_load_i64(typingctx, arr, pos):
    """The 8 bytes at arr[pos] (uint8 array) as an int64, little-endian, unaligned."""
    sig = types.int64(arr, pos)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.IntType(64))
        return builder.load(ptr, align=1)
    return sig, codegen


@intrinsic
def _raw_load_f64(typingctx, arr, pos):
    sig = types.float64(arr, pos)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.DoubleType())
        return builder.load(ptr, align=1)
    return sig, codegen


@intrinsic
def _raw_store_f64(typingctx, arr, pos, value):
    sig = types.void(arr, pos, types.float64)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.DoubleType())
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _raw_f64_bits(typingctx, x):
    """The bits of float64 x as an int64 (to keep doubles in an int64 array)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return sig, codegen


@intrinsic
def _raw_trailing_zeros(typingctx, x):
    """Count of trailing zero bits of int64 x, which must not be 0 (a single tzcnt/bsf)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))
    return sig, codegen


if not JIT:
    # Plain-Python twins: numba cannot run an @intrinsic as Python. Each checks its bounds (Python's own
    # indexing would wrap a negative position around) and keeps int64 arithmetic: numpy scalars wrap as the
    # compiled code does, but warn when they do (the hash and varint code wraps on purpose). This build is
    # for tests and the fuzzer only, so it may set numpy's process-wide error state.
    np.seterr(over="ignore")

    def _check(what, arr, pos, width):
        if pos < 0 or pos + width > len(arr):
            raise WireBug(what, int(pos), len(arr))

    def at(arr, pos):
        _check("at", arr, pos, 1)
        return arr[pos]

    def byte_at(arr, pos):
        _check("byte_at", arr, pos, 1)
        return np.int64(arr[pos])

    def load_i64(arr, pos):
        _check("load_i64", arr, pos, 8)
        return np.int64(int.from_bytes(bytes(arr[pos:pos + 8]), "little", signed=True))

    def load_f64(arr, pos):
        _check("load_f64", arr, pos, 8)
        return np.float64(struct.unpack("<d", bytes(arr[pos:pos + 8]))[0])

    def store_f64(arr, pos, value):
        _check("store_f64", arr, pos, 8)
        arr[pos:pos + 8] = np.frombuffer(struct.pack("<d", value), dtype=np.uint8)

    def f64_bits(x):
        return np.float64(x).view(np.int64)

    def trailing_zeros(x):
        x = int(x) & 0xFFFFFFFFFFFFFFFF
        return np.int64((x & -x).bit_length() - 1)

elif CHECKED:
    @njit(**INLINE)
    def at(arr, pos):
        if pos < 0 or pos >= len(arr):
            raise WireBug("at", pos, len(arr))
        return _raw_at(arr, pos)

    @njit(**INLINE)
    def byte_at(arr, pos):
        if pos < 0 or pos >= len(arr):
            raise WireBug("byte_at", pos, len(arr))
        return _raw_byte(arr, pos)

    @njit(**INLINE)
    def load_i64(arr, pos):
        if pos < 0 or pos > len(arr) - 8:
            raise WireBug("load_i64", pos, len(arr))
        return _raw_load_i64(arr, pos)

    @njit(**INLINE)
    def load_f64(arr, pos):
        if pos < 0 or pos > len(arr) - 8:
            raise WireBug("load_f64", pos, len(arr))
        return _raw_load_f64(arr, pos)

    @njit(**INLINE)
    def store_f64(arr, pos, value):
        if pos < 0 or pos > len(arr) - 8:
            raise WireBug("store_f64", pos, len(arr))
        _raw_store_f64(arr, pos, value)

    f64_bits = _raw_f64_bits
    trailing_zeros = _raw_trailing_zeros

else:
    at, byte_at, load_i64, load_f64, store_f64 = _raw_at, _raw_byte, _raw_load_i64, _raw_load_f64, _raw_store_f64
    f64_bits, trailing_zeros = _raw_f64_bits, _raw_trailing_zeros


@njit(**INLINE)
def tail_word(b, p, k):
    """The k < 8 bytes at b[p:p+k] as the low bytes of an int64 (the rest zero), never reading past b."""
    if p + 8 <= len(b):
        return load_i64(b, p) & ((np.int64(1) << (8 * k)) - 1)
    w = np.int64(0)
    for j in range(k):
        w |= byte_at(b, p + j) << (8 * j)
    return w


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
    # drop the bytes after the varint and the continuation bits, then close the 1-bit gaps between groups
    x = w & (((np.int64(1) << last) << 1) - 1) & 0x7F7F7F7F7F7F7F7F
    x = (x & 0x007F007F007F007F) | ((x & 0x7F007F007F007F00) >> 1)
    x = (x & 0x00003FFF00003FFF) | ((x & 0x3FFF00003FFF0000) >> 2)
    x = (x & 0x000000000FFFFFFF) | ((x & 0x0FFFFFFF00000000) >> 4)
    return x, size


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
