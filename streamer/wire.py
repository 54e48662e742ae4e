"""Request bytes -> columns, and flagged rows -> response bytes, in numba: no Python object per metric.

The decoder reads OutliersRequest exactly as the protobuf library (upb) does, which is its test oracle
(tests/test_wire.py): fields in any order; unknown fields of every wire type skipped, groups included
(matched end tags, upb's nesting limit of 100); a known field with the wrong wire type is an unknown field;
a scalar sent twice keeps the last; a sub-message sent twice (`options`, a metric's `time`) is merged;
absent fields are zero. Varints are at most 10 bytes (tags and lengths 5, tags below 2**32); `mode` is
kept as read (open enum), integers are truncated to their declared width as upb does. Names and `session`
must be UTF-8 (every occurrence, as upb checks each). Malformed bytes raise WireError; nothing reads out
of bounds (every read is checked against the end of its record first).

Deliberate differences from the protobuf library:
- `times` is seconds * 10**9 + nanos in int64, wrapping outside the years 1678-2262 (the library keeps
  the two fields; `time` is carried, not scored).
- Messages of 2 GiB or more are not rejected here (grpc's --max-message-mb stops them long before).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# Hot-path functions never allocate (the Python wrappers hand them every array) and are compiled without
# numba's reference counting (_nrt=False, a numba-internal option; the tests compile every function with
# it): with it, each inlined helper taking the byte array adds an atomic incref/decref pair per call, which
# measured 4-5x slower decoding (12 vs 2.3 ns per metric to scan a request).
_HOT = dict(nogil=True, cache=True, _nrt=False)
_INLINE = dict(_HOT, inline="always")


class WireError(ValueError):
    """The bytes are not a valid OutliersRequest."""


@dataclasses.dataclass(frozen=True)
class Options:
    """DetectOptions as sent; zero fields mean "the server's default" (resolved in detector.py)."""

    threshold: float = 0.0
    warmup: int = 0
    mode: int = 0
    alpha: float = 0.0
    exclude_outliers: bool = False


@dataclasses.dataclass
class Columns:
    """One decoded OutliersRequest."""

    buf: bytes               # the request's bytes, which name_start / name_len point into
    name_start: np.ndarray   # int64[n]
    name_len: np.ndarray     # int64[n], bytes (the pipeline checks the 1024-byte limit on it)
    values: np.ndarray       # float64[n]
    times: np.ndarray        # int64[n], nanoseconds since the epoch (0 when absent)
    options: Options | None  # None when the request carries no options field
    session: str
    name_hash: np.ndarray | None = None  # int64[n], name_hash() of each name with HASH_SEED, for SeriesTable

    def __len__(self) -> int:
        return len(self.values)


# --- byte access -------------------------------------------------------------------------------------
# Unaligned 8-byte loads and stores, little-endian (every platform numba supports is). The callers check
# bounds: an intrinsic is a bare machine load.

def _byte_pointer(context, builder, aryty, ary, pos, posty, target):
    data = context.make_array(aryty)(context, builder, ary).data
    ptr = builder.gep(data, [context.cast(builder, pos, posty, types.intp)])
    return builder.bitcast(ptr, target.as_pointer())


@intrinsic
def at(typingctx, arr, pos):
    """arr[pos] without numba's negative-index wraparound (3 instructions a load): the caller has checked pos."""
    sig = arr.dtype(arr, pos)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.load(builder.gep(data, [context.cast(builder, args[1], sig.args[1], types.intp)]))
    return sig, codegen


@intrinsic
def _byte(typingctx, arr, pos):
    """arr[pos] (uint8) as an int64, without numba's negative-index wraparound: the caller has checked pos."""
    sig = types.int64(arr, pos)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.IntType(8))
        return builder.zext(builder.load(ptr), ir.IntType(64))
    return sig, codegen


@intrinsic
def load_i64(typingctx, arr, pos):
    """The 8 bytes at arr[pos] (uint8 array) as an int64, little-endian, unaligned."""
    sig = types.int64(arr, pos)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.IntType(64))
        return builder.load(ptr, align=1)
    return sig, codegen


@intrinsic
def _load_f64(typingctx, arr, pos):
    sig = types.float64(arr, pos)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.DoubleType())
        return builder.load(ptr, align=1)
    return sig, codegen


@intrinsic
def _f64_bits(typingctx, x):
    """The bits of float64 x as an int64 (to keep doubles in an int64 array)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return sig, codegen


@intrinsic
def _store_f64(typingctx, arr, pos, value):
    sig = types.void(arr, pos, types.float64)

    def codegen(context, builder, sig, args):
        ptr = _byte_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], ir.DoubleType())
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _trailing_zeros(typingctx, x):
    """Count of trailing zero bits of int64 x, which must not be 0 (a single tzcnt/bsf)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))
    return sig, codegen


@njit(**_INLINE)
def tail_word(b, p, k):
    """The k < 8 bytes at b[p:p+k] as the low bytes of an int64 (the rest zero), never reading past b."""
    if p + 8 <= len(b):
        return load_i64(b, p) & ((np.int64(1) << (8 * k)) - 1)
    w = np.int64(0)
    for j in range(k):
        w |= np.int64(b[p + j]) << (8 * j)
    return w


# --- decoding ----------------------------------------------------------------------------------------
# Helpers return the next position, or -code on error. Codes index _ERRORS.

_E_TRUNCATED = 1
_E_VARINT = 2
_E_TAG = 3
_E_WIRETYPE = 4
_E_GROUP = 5
_E_DEPTH = 6
_E_NAME_UTF8 = 7
_E_SESSION_UTF8 = 8
_ERRORS = {
    _E_TRUNCATED: "a record runs past the end of its message (truncated input or a bad length)",
    _E_VARINT: "a varint is too long (over 10 bytes; tags and lengths over 5)",
    _E_TAG: "a field number is 0 or a tag is over 32 bits",
    _E_WIRETYPE: "wire type 6 or 7, or an end-group tag with no open group",
    _E_GROUP: "a group is not closed by its own end-group tag",
    _E_DEPTH: "groups are nested deeper than 100 levels",
    _E_NAME_UTF8: "name is not valid UTF-8",
    _E_SESSION_UTF8: "session is not valid UTF-8",
}
_MAX_DEPTH = 100          # upb's default nesting limit; each sub-message and each group takes one level
_HIGH_BITS = np.int64(-0x7F7F7F7F7F7F7F80)  # 0x8080808080808080: the top bit of each byte
_NS = np.int64(1_000_000_000)


@njit(**_INLINE)
def _varint_word(b, p, end, most):
    """(value, bytes) of a varint of at most `most` <= 8 bytes in b[p:end], read as one word; bytes 0 if
    it is longer or runs past `end`, or if b has fewer than 8 bytes from p (the byte loop then decides)."""
    if len(b) - p < 8:
        return np.int64(0), 0
    w = load_i64(b, p)
    stop = ~w & _HIGH_BITS  # the high bit of the varint's last byte is clear
    if stop == 0:
        return np.int64(0), 0
    last = _trailing_zeros(stop)  # 8 * (bytes - 1) + 7
    size = (last >> 3) + 1
    if size > most or size > end - p:
        return np.int64(0), 0
    # drop the bytes after the varint and the continuation bits, then close the 1-bit gaps between groups
    x = w & (((np.int64(1) << last) << 1) - 1) & 0x7F7F7F7F7F7F7F7F
    x = (x & 0x007F007F007F007F) | ((x & 0x7F007F007F007F00) >> 1)
    x = (x & 0x00003FFF00003FFF) | ((x & 0x3FFF00003FFF0000) >> 2)
    x = (x & 0x000000000FFFFFFF) | ((x & 0x0FFFFFFF00000000) >> 4)
    return x, size


@njit(**_HOT)
def _varint_bytes(b, p, end, most):
    """(value, next) of a varint of at most `most` bytes at b[p], a byte at a time: the slow, exact path
    (near the end of the buffer, 9- and 10-byte varints, and every malformed one)."""
    x = np.int64(0)
    shift = 0
    while shift < 7 * most:
        if p >= end:
            return x, -_E_TRUNCATED
        c = np.int64(b[p])
        p += 1
        x |= (c & 0x7F) << shift
        if c < 0x80:
            return x, p
        shift += 7
    return x, -_E_VARINT


@njit(**_INLINE)
def _varint(b, p, end):
    """(value, next) of the varint at b[p], as int64 bits; at most 10 bytes, excess high bits dropped."""
    if p < end and _byte(b, p) < 0x80:
        return _byte(b, p), p + 1
    x, size = _varint_word(b, p, end, 8)
    if size:
        return x, p + size
    return _varint_bytes(b, p, end, 10)


@njit(**_INLINE)
def _varint32(b, p, end):
    """(value, next) of a tag or length varint at b[p]: upb reads these as at most 5 bytes."""
    if p < end and _byte(b, p) < 0x80:
        return _byte(b, p), p + 1
    x, size = _varint_word(b, p, end, 5)
    if size:
        return x, p + size
    return _varint_bytes(b, p, end, 5)


@njit(**_INLINE)
def _tag(b, p, end):
    """(tag, next) of the field tag at b[p]: field number << 3 | wire type; next = -code if malformed."""
    t, p = _varint32(b, p, end)
    if p >= 0 and t > 0xFFFFFFFF:
        p = -_E_TAG
    return t, p


@njit(**_INLINE)
def _length(b, p, end):
    """(length, next) of a length-delimited record's length at b[p], checked against `end`."""
    n, p = _varint32(b, p, end)
    if p >= 0 and n > end - p:
        p = -_E_TRUNCATED
    return n, p


@njit(**_HOT)
def _skip_scalar(b, p, end, wt):
    """Skip the value of wire type 0, 1, 2 or 5 at b[p]; -code for 6 and 7 (3 and 4 are the callers')."""
    if wt == 0:
        _, p = _varint(b, p, end)
        return p
    if wt == 1:
        return p + 8 if end - p >= 8 else -_E_TRUNCATED
    if wt == 2:
        n, p = _length(b, p, end)
        return p + n if p >= 0 else p
    if wt == 5:
        return p + 4 if end - p >= 4 else -_E_TRUNCATED
    return -_E_WIRETYPE


@njit(**_HOT)
def _utf8_bytes(b, p, end):
    """utf8_valid's exact path, a character at a time, for text that is not all ASCII."""
    while p < end:
        c = b[p]
        if c < 0x80:
            p += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            if end - p < 2 or b[p + 1] & 0xC0 != 0x80:
                return False
            p += 2
            continue
        if c < 0xF0:
            if end - p < 3:
                return False
            c1 = b[p + 1]
            lo = 0xA0 if c == 0xE0 else 0x80  # no overlong 3-byte forms
            hi = 0x9F if c == 0xED else 0xBF  # no surrogates
            if c1 < lo or c1 > hi or b[p + 2] & 0xC0 != 0x80:
                return False
            p += 3
            continue
        if end - p < 4:
            return False
        c1 = b[p + 1]
        lo = 0x90 if c == 0xF0 else 0x80  # no overlong 4-byte forms
        hi = 0x8F if c == 0xF4 else 0xBF  # nothing over U+10FFFF
        if c1 < lo or c1 > hi or b[p + 2] & 0xC0 != 0x80 or b[p + 3] & 0xC0 != 0x80:
            return False
        p += 4
    return True


# Keys the name hash for this process, so a client cannot aim names at one probe chain of a series table
# (as Python randomizes str hashes). An argument, never a jit-time constant: numba's cache would keep it.
HASH_SEED = int.from_bytes(os.urandom(8), "little", signed=True)
_MUL = np.int64(-0x61C8864680B583EB)  # 0x9E3779B97F4A7C15, 2**64 / golden ratio (Knuth's multiplicative hash)


@njit(**_INLINE)
def _hash_word(h, w):
    h = (h ^ w) * _MUL
    return h ^ ((h >> 29) & 0x7FFFFFFFF)  # fold the high half down (a logical shift right by 29)


@njit(**_INLINE)
def _hash_utf8(b, p, end, seed):
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
    return h * _MUL, (seen & _HIGH_BITS) == 0 or _utf8_bytes(b, p, end)


@njit(**_INLINE)
def name_hash(b, p, end, seed):
    """64-bit hash of the name b[p:end], a word at a time (as _hash_utf8, without the UTF-8 check)."""
    h = seed ^ ((end - p) * _MUL)
    q = p
    while end - q >= 8:
        h = _hash_word(h, load_i64(b, q))
        q += 8
    if end > q:
        h = _hash_word(h, tail_word(b, q, end - q))
    return h * _MUL


@njit(**_INLINE)
def utf8_valid(b, p, end):
    """Whether b[p:end] is well-formed UTF-8 (no overlongs, surrogates or code points over U+10FFFF)."""
    q = p
    while end - q >= 8 and (load_i64(b, q) & _HIGH_BITS) == 0:  # ASCII (names mostly are), a word at a time
        q += 8
    if q == end or (end - q < 8 and (tail_word(b, q, end - q) & _HIGH_BITS) == 0):
        return True
    return _utf8_bytes(b, p, end)


# The decoder's state, one int64 array: the request's options and session as read so far, where to resume
# when the columns are full, and the stack of open groups.
_HAS_OPTIONS, _WARMUP, _MODE, _EXCLUDE, _THRESHOLD, _ALPHA = 0, 1, 2, 3, 4, 5  # doubles kept as their bits
_SESSION_START, _SESSION_LEN, _POS, _COUNT, _BAD_METRIC, _SEED, _STACK = 6, 7, 8, 9, 10, 11, 12
_STATE_SIZE = _STACK + _MAX_DEPTH
_FULL = 1  # _decode's return when the columns are full: grow them and call again


@njit(**_HOT)
def _skip_group(b, p, end, field, depth, st):
    """Skip an unknown group whose start tag (field) precedes b[p]; `depth` = levels left in its message.

    As upb: the group must close with an end tag of its own field number before `end`, groups inside it
    nest with their own tags, field number 0 is tolerated inside (upb does not check it there), and the
    nesting counts against the same limit as sub-messages. The open groups' fields are kept in st[_STACK:].
    """
    depth -= 1
    if depth < 0:
        return -_E_DEPTH
    top = _STACK
    st[top] = field
    while True:
        if p >= end:
            return -_E_GROUP
        t, p = _tag(b, p, end)
        if p < 0:
            return p
        f = t >> 3
        wt = t & 7
        if wt == 4:
            if f != st[top]:
                return -_E_GROUP
            if top == _STACK:
                return p
            top -= 1
            depth += 1
        elif wt == 3:
            depth -= 1
            if depth < 0:
                return -_E_DEPTH
            top += 1
            st[top] = f
        else:
            p = _skip_scalar(b, p, end, wt)
            if p < 0:
                return p


@njit(**_HOT)
def _skip(b, p, end, t, depth, st):
    """Skip the value of an unknown field with tag t at b[p]; `depth` = nesting levels left here."""
    field = t >> 3
    wt = t & 7
    if field == 0:
        return -_E_TAG  # upb rejects field 0 in a message (though not inside an unknown group)
    if wt == 3:
        return _skip_group(b, p, end, field, depth, st)
    if wt == 4:
        return -_E_WIRETYPE  # an end-group tag with no group open (messages here are never groups)
    return _skip_scalar(b, p, end, wt)


@njit(**_INLINE)
def _decode_timestamp(b, p, end, seconds, nanos, st):
    """Merge the google.protobuf.Timestamp in b[p:end] into (seconds, nanos); returns (s, n, next)."""
    if end - p >= 2 and _byte(b, p) == 0x08:
        # the usual encoding, seconds then nanos, each once: read straight through (else the loop decides)
        s, q = _varint(b, p + 1, end)
        if 0 <= q < end and _byte(b, q) == 0x10:
            x, q = _varint(b, q + 1, end)
            if q == end:
                x &= 0xFFFFFFFF
                return s, x - 0x100000000 if x >= 0x80000000 else x, q
    return _decode_timestamp_fields(b, p, end, seconds, nanos, st)


@njit(**_HOT)
def _decode_timestamp_fields(b, p, end, seconds, nanos, st):
    """_decode_timestamp for any other encoding: field by field (called, not inlined: it is rare)."""
    while p < end:
        t, p = _tag(b, p, end)
        if t == 0x08:  # seconds: int64
            seconds, p = _varint(b, p, end)
        elif t == 0x10:  # nanos: int32, of which upb keeps the low 32 bits
            x, p = _varint(b, p, end)
            x &= 0xFFFFFFFF
            nanos = x - 0x100000000 if x >= 0x80000000 else x
        elif p >= 0:
            p = _skip(b, p, end, t, _MAX_DEPTH - 2, st)
        if p < 0:
            break
    return seconds, nanos, p


@njit(**_HOT)
def _decode_options(b, p, end, st):
    """Merge the DetectOptions in b[p:end] into st; returns the next position or -code."""
    while p < end:
        t, p = _tag(b, p, end)
        if t == 0x09 or t == 0x21:  # threshold, alpha: double
            if end - p < 8:
                return -_E_TRUNCATED
            st[_THRESHOLD if t == 0x09 else _ALPHA] = load_i64(b, p)
            p += 8
        elif t == 0x10 or t == 0x18 or t == 0x28:
            x, p = _varint(b, p, end)
            if t == 0x10:
                st[_WARMUP] = x & 0xFFFFFFFF  # uint32
            elif t == 0x18:
                x &= 0xFFFFFFFF  # enum Mode is int32; open, so any value is kept
                st[_MODE] = x - 0x100000000 if x >= 0x80000000 else x
            else:
                st[_EXCLUDE] = 1 if x != 0 else 0  # bool
        elif p >= 0:
            p = _skip(b, p, end, t, _MAX_DEPTH - 1, st)
        if p < 0:
            break
    return p


@njit(**_INLINE)
def _decode_metric(b, p, end, st, empty_hash):
    """(name start, name length, name hash, value, seconds, nanos, next) of the Metric in b[p:end];
    next = -code on error."""
    name_start = p
    name_len = 0
    name_h = empty_hash  # if no name is sent
    value = 0.0
    seconds = np.int64(0)
    nanos = np.int64(0)
    while p < end:
        t, p = _tag(b, p, end)
        if t == 0x19:  # value: double
            if end - p < 8:
                p = -_E_TRUNCATED
                break
            value = _load_f64(b, p)
            p += 8
        elif t == 0x12:  # name: string
            size, p = _length(b, p, end)
            if p < 0:
                break
            h, valid = _hash_utf8(b, p, p + size, st[_SEED])  # the words are read once, for both
            if not valid:
                p = -_E_NAME_UTF8
                break
            name_start = p
            name_len = size
            name_h = h
            p += size
        elif t == 0x0A:  # time: Timestamp, merged when sent in parts
            size, p = _length(b, p, end)
            if p < 0:
                break
            seconds, nanos, p = _decode_timestamp(b, p, p + size, seconds, nanos, st)
        elif p >= 0:
            p = _skip(b, p, end, t, _MAX_DEPTH - 1, st)
        if p < 0:
            break
    return name_start, name_len, name_h, value, seconds, nanos, p


@njit(**_HOT)
def _decode(b, cols, st):
    """Decode the OutliersRequest in b into cols (int64[5, capacity]: name start, name length, value bits,
    time, name hash) and st, from byte st[_POS] and metric st[_COUNT] on.

    Returns (status, metrics decoded, has options, has session); status is 0 when done, _FULL when cols has
    no room for the next metric (st says where to resume), or -code on malformed input (st[_POS] = the
    top-level record's position, st[_BAD_METRIC] = 1 + its metric's number if it is one).
    """
    n = len(b)
    p = st[_POS]
    i = st[_COUNT]
    capacity = cols.shape[1]
    empty_hash = name_hash(b, 0, 0, st[_SEED])
    while p < n:
        start = p
        t, p = _tag(b, p, n)
        if t == 0x0A:  # metrics: repeated Metric
            if i == capacity:
                st[_POS] = start
                st[_COUNT] = i
                return _FULL, i, st[_HAS_OPTIONS], st[_SESSION_LEN]
            size, p = _length(b, p, n)
            if p >= 0:
                ns, nl, h, value, seconds, nanos, p = _decode_metric(b, p, p + size, st, empty_hash)
                cols[0, i] = ns
                cols[1, i] = nl
                cols[4, i] = h
                cols[2, i] = _f64_bits(value)
                cols[3, i] = seconds * _NS + nanos  # wraps outside 1678-2262: see the module docstring
                if p < 0:
                    st[_BAD_METRIC] = i + 1
                i += 1
        elif t == 0x12:  # options: DetectOptions, merged when sent in parts
            size, p = _length(b, p, n)
            if p >= 0:
                st[_HAS_OPTIONS] = 1
                p = _decode_options(b, p, p + size, st)
        elif t == 0x1A:  # session: string
            size, p = _length(b, p, n)
            if p >= 0:
                if utf8_valid(b, p, p + size):
                    st[_SESSION_START] = p
                    st[_SESSION_LEN] = size
                    p += size
                else:
                    p = -_E_SESSION_UTF8
        elif p >= 0:
            p = _skip(b, p, n, t, _MAX_DEPTH, st)
        if p < 0:
            st[_POS] = start
            return p, i, 0, 0
    st[_COUNT] = i
    return 0, i, st[_HAS_OPTIONS], st[_SESSION_LEN]


def decode_request(buf: bytes) -> Columns:
    """Decode an OutliersRequest; raise WireError on bytes the protobuf library would reject."""
    if type(buf) is not bytes:
        buf = bytes(buf)  # one jitted signature (grpc hands over bytes)
    # Room for every metric of at least 24 bytes (a name of 10 and a value), doubled if smaller ones come:
    # the columns take at most 1.7x the request's size. Per-call Python work is kept small on purpose: at
    # 1000 metrics a batch, each microsecond is 1 ns a metric.
    cols = np.empty((5, len(buf) // 24 + 4), dtype=np.int64)
    st = np.zeros(_STATE_SIZE, dtype=np.int64)
    st[_SEED] = HASH_SEED
    code, n, has_options, has_session = _decode(buf, cols, st)
    while code == _FULL:
        grown = np.empty((5, 2 * cols.shape[1]), dtype=np.int64)
        grown[:, :cols.shape[1]] = cols
        cols = grown
        code, n, has_options, has_session = _decode(buf, cols, st)
    if code < 0:
        pos, bad = int(st[_POS]), int(st[_BAD_METRIC])
        where = f"metric {bad - 1} (at byte {pos})" if bad else f"at byte {pos}"
        raise WireError(f"request is not a valid OutliersRequest: {where}: {_ERRORS[-code]}")
    options = None
    if has_options:
        threshold, alpha = st[_THRESHOLD:_ALPHA + 1].view(np.float64).tolist()
        options = Options(threshold, int(st[_WARMUP]), int(st[_MODE]), alpha, bool(st[_EXCLUDE]))
    session = ""
    if has_session:
        start = int(st[_SESSION_START])
        session = buf[start:start + int(st[_SESSION_LEN])].decode()
    return Columns(buf, cols[0, :n], cols[1, :n], cols[2, :n].view(np.float64), cols[3, :n], options, session,
                   cols[4, :n])


# --- encoding ----------------------------------------------------------------------------------------
# OutliersResponse as upb serializes it: fields in number order, zero scalars omitted (a double is zero
# only when all its bits are: -0.0 is written), indices packed.

@njit(**_INLINE)
def _varint_size(x):
    if x < 0:
        return 10
    size = 1
    while x >= 0x80:
        x >>= 7
        size += 1
    return size


@njit(**_INLINE)
def _put_varint(out, p, x):
    """Write int64 x as a varint (negative ones as 10 bytes, as int32/int64 fields are) at out[p]."""
    for _ in range(10):
        low = x & 0x7F
        x = (x >> 7) & 0x01FFFFFFFFFFFFFF  # logical shift
        if x == 0:
            out[p] = low
            return p + 1
        out[p] = low | 0x80
        p += 1
    return p


@njit(**_INLINE)
def _double_size(x):
    return 0 if x == 0.0 and not np.signbit(x) else 9


@njit(**_INLINE)
def _put_double(out, p, tag, x):
    if x == 0.0 and not np.signbit(x):
        return p
    out[p] = tag
    _store_f64(out, p + 1, x)
    return p + 9


@njit(**_INLINE)
def _outlier_size(index, name_len, value, mean, std, z):
    size = 0
    if index != 0:
        size += 1 + _varint_size(index)
    if name_len:
        size += 1 + _varint_size(name_len) + name_len
    return size + _double_size(value) + _double_size(mean) + _double_size(std) + _double_size(z)


@njit(**_HOT)
def _encode(out, batch, index, rows, ids, values, mean, std, z, arena, name_off, name_len):
    """Write the OutliersResponse for flagged batch positions `index` (int32[k], ascending) into `out`.

    Outlier j has series s = ids[rows[j]] and value values[rows[j]], name arena[name_off[s]:][:name_len[s]],
    and mean[j], std[j], z[j]. Returns the response's size; writes nothing if `out` is shorter than that.
    Returns -1 (writing nothing) if a row, series or name lies outside its array: no unchecked reads.
    """
    k = len(index)
    if len(rows) < k or len(mean) < k or len(std) < k or len(z) < k:
        return -1
    for j in range(k):
        r = rows[j]
        if r < 0 or r >= len(ids) or r >= len(values):
            return -1
        s = ids[r]
        if s < 0 or s >= len(name_len) or s >= len(name_off):
            return -1
        if name_len[s] < 0 or name_off[s] < 0 or name_off[s] + name_len[s] > len(arena):
            return -1
    packed = 0
    for j in range(k):
        packed += _varint_size(np.int64(index[j]))
    size = 0
    if k:
        size += 1 + _varint_size(packed) + packed
    for j in range(k):
        r = rows[j]
        sub = _outlier_size(np.int64(index[j]), name_len[ids[r]], values[r], mean[j], std[j], z[j])
        size += 1 + _varint_size(sub) + sub
    if batch != 0:
        size += 1 + _varint_size(batch)
    if len(out) < size:
        return size
    p = 0
    if k:
        out[0] = 0x0A  # field 1, length-delimited: packed indices
        p = _put_varint(out, 1, packed)
        for j in range(k):
            p = _put_varint(out, p, np.int64(index[j]))
    for j in range(k):
        i = np.int64(index[j])
        r = rows[j]
        s = ids[r]
        nl = name_len[s]
        out[p] = 0x12  # field 2: an Outlier
        p = _put_varint(out, p + 1, _outlier_size(i, nl, values[r], mean[j], std[j], z[j]))
        if i != 0:
            out[p] = 0x08
            p = _put_varint(out, p + 1, i)
        if nl:
            out[p] = 0x12
            p = _put_varint(out, p + 1, nl)
            off = name_off[s]
            for c in range(nl):
                out[p + c] = arena[off + c]
            p += nl
        p = _put_double(out, p, 0x19, values[r])
        p = _put_double(out, p, 0x21, mean[j])
        p = _put_double(out, p, 0x29, std[j])
        p = _put_double(out, p, 0x31, z[j])
    if batch != 0:
        out[p] = 0x18
        p = _put_varint(out, p + 1, batch)
    return size


def _batch_only(batch: int) -> bytes:
    """The response of a batch with no outliers: just its number (none at all for batch 0)."""
    if batch == 0:
        return b""
    out = bytearray(b"\x18")
    while batch >= 0x80:
        out.append(batch & 0x7F | 0x80)
        batch >>= 7
    out.append(batch)
    return bytes(out)


def _encoded(batch, index, rows, ids, values, mean, std, z, arena, name_off, name_len) -> bytes:
    # room for outliers with names up to ~40 bytes; asked again with the exact size if that is short
    out = np.empty(16 + 96 * len(index), dtype=np.uint8)
    size = _encode(out, batch, index, rows, ids, values, mean, std, z, arena, name_off, name_len)
    if size < 0:
        raise ValueError("encode: an index, series slot or name is outside its array, or mean/std/z are short")
    if size > len(out):
        out = np.empty(size, dtype=np.uint8)
        _encode(out, batch, index, rows, ids, values, mean, std, z, arena, name_off, name_len)
    return out[:size].tobytes()


def encode_flagged(batch: int, index: np.ndarray, ids: np.ndarray, values: np.ndarray, mean: np.ndarray,
                   std: np.ndarray, z: np.ndarray, table) -> bytes:
    """Encode an OutliersResponse for flagged positions `index` of a batch whose columns are ids and values.

    index: int32[k] ascending positions in the batch; ids: int64[n] series slots in `table` (a SeriesTable);
    values: float64[n]; mean, std, z: float64, aligned with index (only the first k are read).
    """
    k = len(index)
    if k == 0:  # most batches of a stream
        return _batch_only(int(batch))
    arena, name_off, name_len = table.name_arrays()
    # mean/std/z need no slicing: _encode reads the first k (slices cost 0.15 us each, 0.15 ns a metric at 1000)
    return _encoded(int(batch), index, index, ids, values, mean, std, z, arena, name_off, name_len)


def encode_response(batch: int, index: np.ndarray, names: list[bytes], values: np.ndarray,
                    mean: np.ndarray, std: np.ndarray, z: np.ndarray) -> bytes:
    """Encode an OutliersResponse: `index` ascending, the other columns aligned with it."""
    k = len(index)
    if k == 0:
        return _batch_only(int(batch))
    name_len = np.fromiter(map(len, names), dtype=np.int64, count=k)
    name_off = np.zeros(k, dtype=np.int64)
    np.cumsum(name_len[:-1], out=name_off[1:])
    arena = np.frombuffer(bytearray(b"".join(names)), dtype=np.uint8)  # writable, as a table's: one signature
    rows = np.arange(k, dtype=np.int64)
    return _encoded(int(batch), np.asarray(index, dtype=np.int32), rows, rows,
                    np.asarray(values, dtype=np.float64), np.asarray(mean, dtype=np.float64),
                    np.asarray(std, dtype=np.float64), np.asarray(z, dtype=np.float64),
                    arena, name_off, name_len)


def compile_all() -> None:
    """Compile (or load from numba's cache) every jitted function of the wire path, series table included.

    Call once at server start, before reporting SERVING: the first request then pays no compile time.
    """
    from streamer.series import SeriesLimitError, SeriesTable  # series imports this module's byte helpers

    metric = b"\x0a\x04\x08\x01\x10\x02\x12\x01a\x19" + bytes(8)
    request = (b"\x0a" + bytes([len(metric)]) + metric + b"\x12\x02\x28\x01\x1a\x01s"
               + b"\x4b\x08\x01\x4c")  # a metric with a time, options, session, an unknown group
    cols = decode_request(request)
    for bad in (request[:-3], b"\x00"):
        try:
            decode_request(bad)
        except WireError:
            pass
    table = SeriesTable(limit=3, capacity=1)
    ids = table.intern(cols.buf, cols.name_start, cols.name_len)
    one = np.ones(3, dtype=np.int64)
    table.intern(b"abc", np.arange(3, dtype=np.int64), one)  # the table grows
    try:
        table.intern(b"d", one[:1] - 1, one[:1])  # over the limit: rolled back
    except SeriesLimitError:
        pass
    flags = np.zeros(1, dtype=np.float64)
    encode_flagged(1, np.zeros(1, dtype=np.int32), ids, cols.values, flags, flags, flags, table)
    encode_response(1, np.zeros(1, dtype=np.int32), [b"a"], flags, flags, flags, flags)
