"""The oracle of the decoder's tests and fuzz target: what the protobuf library (upb) reads from some bytes,
against what streamer.wire.decode_request reads, reduced to comparable values."""
from __future__ import annotations

import struct

import numpy as np
from google.protobuf.message import DecodeError

from streamer import wire
from streamer.pb import outliers_pb2 as pb

INT64 = 2 ** 64
# DetectOptions' proto3 `optional` integer fields (explicit presence), besides likelihood_threshold (a double)
OPTIONAL_INTS = ("exclude_limit", "cooldown", "score", "likelihood_short", "likelihood_window", "likelihood_learning")


def bits(x: float) -> int:
    """A double's bit pattern: compares NaN payloads and -0.0 exactly."""
    return struct.unpack("<q", struct.pack("<d", x))[0]


def wrap64(x: int) -> int:
    return (x + 2 ** 63) % INT64 - 2 ** 63


def reference(buf: bytes):
    """What the protobuf library reads from buf, or None when it rejects it."""
    try:
        req = pb.OutliersRequest.FromString(buf)
    except DecodeError:
        return None
    options = None
    if req.HasField("options"):
        o = req.options
        options = (bits(o.threshold), o.warmup, o.mode, bits(o.alpha), o.exclude_outliers,
                   *(getattr(o, f) if o.HasField(f) else None for f in OPTIONAL_INTS),
                   bits(o.likelihood_threshold) if o.HasField("likelihood_threshold") else None)
    return {
        "names": [m.name.encode() for m in req.metrics],
        "values": [bits(m.value) for m in req.metrics],
        "times": [wrap64(m.time.seconds * 10 ** 9 + m.time.nanos) for m in req.metrics],
        "options": options,
        "session": req.session,
        "seq": req.seq,
    }


def ours(buf: bytes):
    """What wire.decode_request reads from buf, or None when it raises WireError."""
    try:
        cols = wire.decode_request(buf)
    except wire.WireError:
        return None
    assert cols.name_start.dtype == cols.name_len.dtype == cols.times.dtype == np.int64
    assert cols.values.dtype == np.float64
    assert len(cols.name_start) == len(cols.name_len) == len(cols.values) == len(cols.times) == len(cols)
    for i, (s, n) in enumerate(zip(cols.name_start.tolist(), cols.name_len.tolist())):  # two paths hash names
        assert cols.name_hash[i] == wire.name_hash(cols.buf, s, s + n, wire.HASH_SEED), (i, s, n)
    options = None
    if cols.options is not None:
        o = cols.options
        options = (bits(o.threshold), o.warmup, o.mode, bits(o.alpha), o.exclude_outliers,
                   *(getattr(o, f) for f in OPTIONAL_INTS),
                   bits(o.likelihood_threshold) if o.likelihood_threshold is not None else None)
    return {
        "names": [cols.buf[s:s + n] for s, n in zip(cols.name_start.tolist(), cols.name_len.tolist())],
        "values": [bits(v) for v in cols.values.tolist()],
        "times": cols.times.tolist(),
        "options": options,
        "session": cols.session,
        "seq": cols.seq,
    }


def same_as_protobuf(buf: bytes) -> bool:
    """Assert the decoder agrees with the library on buf; return whether the library accepted it."""
    expected = reference(buf)
    assert ours(buf) == expected, buf.hex()
    return expected is not None
