"""Request bytes -> columns, in numba: no Python object per metric.

The decoder reads OutliersRequest exactly as the protobuf library (upb) does, which is its test oracle
(tests/test_wire.py, tests/fuzz/): fields in any order; unknown fields of every wire type skipped, groups
included (matched end tags, upb's nesting limit of 100); a known field with the wrong wire type is an unknown
field; a scalar sent twice keeps the last; a sub-message sent twice (`options`, a metric's `time`) is merged;
absent fields are zero. Varints are at most 10 bytes (tags and lengths 5, tags below 2**32); `mode` is
kept as read (open enum), integers are truncated to their declared width as upb does. Names and `session`
must be UTF-8 (every occurrence, as upb checks each). Malformed bytes raise WireError. A metric in the layout
encoders write is read by layout.py's fast path, which accepts only what the reader here would, alike.

Safety on hostile bytes rests on two rules, kept by every loop below and asserted by the checked build
(primitives.py): a reader's error is tested before its value is used, and every loop iteration consumes at least
one byte (primitives.advanced), so positions never move backwards, never pass the end, and a request of n bytes
costs at most n iterations. Every load is checked against the end of its record first.

Deliberate differences from the protobuf library:
- `times` is seconds * 10**9 + nanos in int64, wrapping outside 1678-2262 (used for the series TTL only).
- Messages of 2 GiB or more are not rejected here (grpc's --max-message-mb stops them long before).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit

from streamer.wire.layout import run as _usual_run
from streamer.wire.options import _HAS_OPTIONS, OPTION_SLOTS, Options, _int32, _option_field, options_of  # noqa: F401
from streamer.wire.primitives import (E_DEPTH, E_GROUP, E_NAME_UTF8, E_SESSION_UTF8, E_TAG, E_TRUNCATED,
                                      E_WIRETYPE, ERRORS, HASH_SEED, HOT, INLINE, advanced, byte_at, f64_bits,
                                      hash_utf8, load_f64, name_hash, utf8_valid, varint, varint32)


class WireError(ValueError):
    """The bytes are not a valid OutliersRequest."""


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
    seq: int = 0                         # the request's sequence number (0: not given)

    def __len__(self) -> int:
        return len(self.values)


_MAX_DEPTH, _NS = 100, np.int64(1_000_000_000)  # upb's nesting limit (a level each sub-message and group); ns/s

# The decoder's state, one int64 array: the request's options and session as read so far, where to resume
# when the columns are full, and the stack of open groups.
# Options take slots 0 .. OPTION_SLOTS - 1 (options.py); _HAS_OPTIONS is slot 0.
# _UNHASHED: 1 if the caller hashes names itself (the fused pass, when a name is not found by its position).
# _LONGEST: the longest name the general reader took (the layout's are under 128 bytes, layout.py).
_SESSION_START, _SESSION_LEN, _POS, _COUNT, _BAD_METRIC, _SEED, _SEQ, _UNHASHED, _LONGEST, _STACK = range(
    OPTION_SLOTS, OPTION_SLOTS + 10)
_STATE_SIZE = _STACK + _MAX_DEPTH
_FULL = 1  # _decode's return when the columns are full: grow them and call again


# Readers return (value, next) with next = -code on error; the value is then 0 and is never used.

@njit(**INLINE)
def _tag(b, p, end):
    """(tag, next) of the field tag at b[p]: field number << 3 | wire type."""
    t, q = varint32(b, p, end)
    if q < 0:
        return np.int64(0), q
    if t > 0xFFFFFFFF:
        return np.int64(0), -E_TAG
    return t, q


@njit(**INLINE)
def _length(b, p, end):
    """(length, next) of a length-delimited record's length at b[p], checked against `end`."""
    n, q = varint32(b, p, end)
    if q < 0:
        return np.int64(0), q
    if n > end - q:
        return np.int64(0), -E_TRUNCATED
    return n, q


@njit(**HOT)
def _skip_scalar(b, p, end, wt):
    """Skip the value of wire type 0, 1, 2 or 5 at b[p]; -code for 6 and 7 (3 and 4 are the callers')."""
    if wt == 0:
        _, q = varint(b, p, end)
        return q
    if wt == 1:
        return p + 8 if end - p >= 8 else -E_TRUNCATED
    if wt == 2:
        n, q = _length(b, p, end)
        return q if q < 0 else q + n
    if wt == 5:
        return p + 4 if end - p >= 4 else -E_TRUNCATED
    return -E_WIRETYPE


@njit(**HOT)
def _skip_group(b, p, end, field, depth, st):
    """Skip an unknown group whose start tag (field) precedes b[p]; `depth` = levels left in its message.

    As upb: the group must close with an end tag of its own field number before `end`, groups inside it
    nest with their own tags, field number 0 is tolerated inside (upb does not check it there), and the
    nesting counts against the same limit as sub-messages. The open groups' fields are kept in st[_STACK:]
    (at most depth <= _MAX_DEPTH of them, which st has room for).
    """
    depth -= 1
    if depth < 0:
        return -E_DEPTH
    top = _STACK
    st[top] = field
    while True:
        if p >= end:
            return -E_GROUP
        start = p
        t, p = _tag(b, p, end)
        if p < 0:
            return p
        f = t >> 3
        wt = t & 7
        if wt == 4:
            if f != st[top]:
                return -E_GROUP
            if top == _STACK:
                return p
            top -= 1
            depth += 1
        elif wt == 3:
            depth -= 1
            if depth < 0:
                return -E_DEPTH
            top += 1
            st[top] = f
        else:
            p = _skip_scalar(b, p, end, wt)
        p = advanced(start, p, "_skip_group")
        if p < 0:
            return p


@njit(**HOT)
def _skip(b, p, end, t, depth, st):
    """Skip the value of an unknown field with tag t at b[p]; `depth` = nesting levels left here."""
    field = t >> 3
    wt = t & 7
    if field == 0:
        return -E_TAG  # upb rejects field 0 in a message (though not inside an unknown group)
    if wt == 3:
        return _skip_group(b, p, end, field, depth, st)
    if wt == 4:
        return -E_WIRETYPE  # an end-group tag with no group open (messages here are never groups)
    return _skip_scalar(b, p, end, wt)


@njit(**INLINE)
def _decode_timestamp(b, p, end, seconds, nanos, st):
    """Merge the google.protobuf.Timestamp in b[p:end] into (seconds, nanos); returns (s, n, next)."""
    if end - p >= 2 and byte_at(b, p) == 0x08:
        # the usual encoding, seconds then nanos, each once: read straight through (else the loop decides)
        s, q = varint(b, p + 1, end)
        if 0 <= q < end and byte_at(b, q) == 0x10:
            x, q = varint(b, q + 1, end)
            if q == end:
                return s, _int32(x), q
    return _decode_timestamp_fields(b, p, end, seconds, nanos, st)


@njit(**HOT)
def _decode_timestamp_fields(b, p, end, seconds, nanos, st):
    """_decode_timestamp for any other encoding: field by field (called, not inlined: it is rare)."""
    while p < end:
        start = p
        t, p = _tag(b, p, end)
        if p < 0:
            break
        if t == 0x08:  # seconds: int64
            x, p = varint(b, p, end)
            if p >= 0:
                seconds = x
        elif t == 0x10:  # nanos: int32
            x, p = varint(b, p, end)
            if p >= 0:
                nanos = _int32(x)
        else:
            p = _skip(b, p, end, t, _MAX_DEPTH - 2, st)
        p = advanced(start, p, "_decode_timestamp_fields")
        if p < 0:
            break
    return seconds, nanos, p


@njit(**HOT)
def _decode_options(b, p, end, st):
    """Merge the DetectOptions in b[p:end] into st; returns the next position or -code."""
    while p < end:
        start = p
        t, p = _tag(b, p, end)
        if p < 0:
            return p
        q, known = _option_field(b, p, end, t, st)
        p = q if known else _skip(b, p, end, t, _MAX_DEPTH - 1, st)
        p = advanced(start, p, "_decode_options")
        if p < 0:
            return p
    return p


@njit(**INLINE)
def _decode_metric(b, p, end, st, empty_hash):
    """(name start, name length, name hash, value, seconds, nanos, next) of the Metric in b[p:end];
    next = -code on error."""
    name_start = p
    name_len = np.int64(0)
    name_h = empty_hash  # if no name is sent
    value = 0.0
    seconds = np.int64(0)
    nanos = np.int64(0)
    while p < end:
        start = p
        t, p = _tag(b, p, end)
        if p < 0:
            break
        if t == 0x19:  # value: double
            if end - p < 8:
                p = -E_TRUNCATED
                break
            value = load_f64(b, p)
            p += 8
        elif t == 0x12:  # name: string
            size, p = _length(b, p, end)
            if p < 0:
                break
            h, valid = hash_utf8(b, p, p + size, st[_SEED])  # the words are read once, for both
            if not valid:
                p = -E_NAME_UTF8
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
        else:
            p = _skip(b, p, end, t, _MAX_DEPTH - 1, st)
        p = advanced(start, p, "_decode_metric")
        if p < 0:
            break
    return name_start, name_len, name_h, value, seconds, nanos, p


@njit(**HOT)
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
    seed = st[_SEED]
    hashing = st[_UNHASHED] == 0
    empty_hash = name_hash(b, 0, 0, seed)
    while p < n:
        p, i = _usual_run(b, p, n, cols, i, seed, hashing)  # the metrics as encoders write them (layout.py)
        if p >= n:
            break
        start = p  # else the general reader, a record
        t, p = _tag(b, p, n)
        if p < 0:
            pass
        elif t == 0x0A:  # metrics: repeated Metric
            if i == capacity:
                st[_POS] = start
                st[_COUNT] = i
                return _FULL, i, st[_HAS_OPTIONS], st[_SESSION_LEN]
            size, p = _length(b, p, n)
            if p >= 0:
                ns, nl, h, value, seconds, nanos, p = _decode_metric(b, p, p + size, st, empty_hash)
                if p < 0:
                    st[_BAD_METRIC] = i + 1
                else:
                    cols[0, i] = ns
                    cols[1, i] = nl
                    cols[4, i] = h
                    cols[2, i] = f64_bits(value)
                    cols[3, i] = seconds * _NS + nanos  # wraps outside 1678-2262: see the module docstring
                    i += 1
                    st[_LONGEST] = max(st[_LONGEST], nl)
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
                    p = -E_SESSION_UTF8
        elif t == 0x20:  # seq: uint64 (kept as its int64 bits)
            st[_SEQ], p = varint(b, p, n)
        else:
            p = _skip(b, p, n, t, _MAX_DEPTH, st)
        p = advanced(start, p, "_decode")
        if p < 0:
            st[_POS] = start
            return p, i, 0, 0
    st[_COUNT] = i
    return 0, i, st[_HAS_OPTIONS], st[_SESSION_LEN]


def wire_error(st: np.ndarray, code: int) -> WireError:
    """The WireError for _decode's return `code` < 0, naming the metric and byte st says it stopped at."""
    pos, bad = int(st[_POS]), int(st[_BAD_METRIC])
    where = f"metric {bad - 1} (at byte {pos})" if bad else f"at byte {pos}"
    return WireError(f"request is not a valid OutliersRequest: {where}: {ERRORS[-code]}")


def session_of(buf: bytes, st: np.ndarray) -> str:
    """The session _decode read from `buf` into st ("" when none was sent)."""
    start, size = int(st[_SESSION_START]), int(st[_SESSION_LEN])
    return buf[start:start + size].decode() if size else ""


def seq_of(st: np.ndarray) -> int:
    """The request's seq (uint64; 0 when none was sent) that _decode read into st."""
    return int(st[_SEQ]) & 0xFFFFFFFFFFFFFFFF


def decode_request(buf: bytes) -> Columns:
    """Decode an OutliersRequest; raise WireError on bytes the protobuf library would reject."""
    if type(buf) is not bytes:
        buf = bytes(buf)  # one jitted signature (grpc hands over bytes)
    # Room for every metric of at least 24 bytes (a name of 10 and a value), doubled if smaller ones come:
    # 40 bytes of columns a metric, so 1.7x the request's size for such metrics, and up to about 27x for a
    # request of empty 2-byte metrics (the columns double, and the last doubling copies). --max-message-mb
    # bounds it (the protobuf library parsing such a request takes about as much).
    cols = np.empty((5, len(buf) // 24 + 4), dtype=np.int64)
    st = np.zeros(_STATE_SIZE, dtype=np.int64)
    st[_SEED] = HASH_SEED
    code, n, has_options, has_session = _decode(buf, cols, st)
    while code == _FULL:  # twice the columns, the decoded ones kept
        cols = np.concatenate((cols, np.empty_like(cols)), axis=1)
        code, n, has_options, has_session = _decode(buf, cols, st)
    if code < 0:
        raise wire_error(st, code)
    options = options_of(st) if has_options else None
    return Columns(buf, cols[0, :n], cols[1, :n], cols[2, :n].view(np.float64), cols[3, :n], options,
                   session_of(buf, st), cols[4, :n], seq_of(st))
