"""The decoder's fast path: a Metric in the layout encoders write, read with no loop over its fields.

The protobuf library (upb, protobuf-go, the Go client) writes a Metric as `0A L [0A L2 08 s.. [10 n..]] 12 Ln
name [19 f64]`: time, name, value in field order, zero ones left out, lengths of one byte for metrics under 128
bytes. `metric` reads exactly that and nothing else; for any other bytes (another order, a repeated or unknown
field, a long length, bad UTF-8, a malformed varint, a record running past its end) it answers "not this
layout" and the general decoder (decode.py) reads the metric from its start, errors and all. So the fast path
decides nothing about validity: it only accepts what the general decoder would accept, with the same result.
Every load is checked against the end of the metric first.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from streamer.wire.options import _int32
from streamer.wire.primitives import HOT, INLINE, byte_at, f64_bits, hash_utf8, load_f64, utf8_valid, varint

_NS = np.int64(1_000_000_000)


@njit(**INLINE)
def metric(b, p, n, seed, hashing):
    """(next, name start, name length, name hash, value, time ns) of the metric record (tag 0x0A, field 1)
    at b[p] of a request of n bytes, if it is in the usual layout with a name; next = 0 if it is not.
    The hash is 0 unless `hashing`."""
    if n - p < 2 or byte_at(b, p) != 0x0A:
        return 0, 0, 0, np.int64(0), 0.0, np.int64(0)
    size = byte_at(b, p + 1)
    q = p + 2
    end = q + size
    if size >= 0x80 or end > n or size < 2:
        return 0, 0, 0, np.int64(0), 0.0, np.int64(0)
    t = np.int64(0)
    if byte_at(b, q) == 0x0A:  # time: 08 seconds [10 nanos], exactly
        tsize = byte_at(b, q + 1)
        tend = q + 2 + tsize
        if tsize >= 0x80 or tsize < 2 or tend > end - 2 or byte_at(b, q + 2) != 0x08:
            return 0, 0, 0, np.int64(0), 0.0, np.int64(0)
        s, r = varint(b, q + 3, tend)
        if r < 0:
            return 0, 0, 0, np.int64(0), 0.0, np.int64(0)
        x = np.int64(0)
        if r < tend:
            if byte_at(b, r) != 0x10 or r + 1 == tend:
                return 0, 0, 0, np.int64(0), 0.0, np.int64(0)
            x, r = varint(b, r + 1, tend)
            if r != tend:
                return 0, 0, 0, np.int64(0), 0.0, np.int64(0)
        t = s * _NS + _int32(x)  # wraps outside 1678-2262, as decode.py's
        q = tend
    if byte_at(b, q) != 0x12:  # name, then value or the end
        return 0, 0, 0, np.int64(0), 0.0, np.int64(0)
    ln = byte_at(b, q + 1)
    start = q + 2
    q = start + ln
    if ln >= 0x80 or q > end or ln == 0:
        return 0, 0, 0, np.int64(0), 0.0, np.int64(0)
    value = 0.0
    if q < end:
        if end - q != 9 or byte_at(b, q) != 0x19:
            return 0, 0, 0, np.int64(0), 0.0, np.int64(0)
        value = load_f64(b, q + 1)
    h = np.int64(0)
    if hashing:
        h, valid = hash_utf8(b, start, start + ln, seed)
    else:
        valid = utf8_valid(b, start, start + ln)
    if not valid:
        return 0, 0, 0, np.int64(0), 0.0, np.int64(0)
    return end, start, ln, h, value, t


@njit(**HOT)
def run(b, p, n, cols, i, seed, hashing):
    """Read the metrics in the usual layout from b[p] on into cols (int64[5, capacity], as decode._decode's) from
    column i on, until a record is not one or the columns are full; returns (next position, next column).
    A function of its own, called by the decoder at each record the general reader took: in its own small loop
    the registers hold the positions and column pointers, where inside the whole decoder they were reloaded from
    the stack for each metric."""
    capacity = cols.shape[1]
    while i < capacity:
        q, ns, nl, h, value, tm = metric(b, p, n, seed, hashing)
        if q == 0:
            break
        cols[0, i] = ns
        cols[1, i] = nl
        cols[2, i] = f64_bits(value)
        cols[3, i] = tm
        cols[4, i] = h
        i += 1
        p = q
    return p, i
