"""DetectOptions on the wire: the Options the decoder gives (a plain dataclass, defined in streamer/defaults.py),
and the compiled reader of its fields into the decoder's state array (slots 0 .. OPTION_SLOTS - 1). Resolution
against the server's defaults and range checks live in detector.py.

Fields 1-5 keep proto3's zero-means-default; fields 6-17 are proto3 `optional` (explicit presence): a bit
per field in st[_PRESENT] says it was sent, so 0 can mean "off" where the server's default is not 0.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from streamer.defaults import Options
from streamer.wire.primitives import E_TRUNCATED, INLINE, load_i64, varint

# Slots of the decoder's state array (doubles kept as their bits).
_HAS_OPTIONS, _WARMUP, _MODE, _EXCLUDE, _THRESHOLD, _ALPHA = range(6)
_EXCLUDE_LIMIT, _COOLDOWN, _SCORE, _SHORT, _WINDOW, _TAIL_THRESHOLD, _LEARNING, _PRESENT = range(6, 14)
_MIN_DEVIATION, _MIN_RELATIVE, _DIRECTION, _RESOLVE_AFTER, _SERIES_TTL = range(14, 19)
OPTION_SLOTS = 19
_FIRST_OPTIONAL = 6  # field number of exclude_limit; field f sets bit f - 6 of st[_PRESENT]


@njit(**INLINE)
def _int32(x):
    """The low 32 bits of int64 x as a signed int32, as upb keeps an int32 or enum field."""
    return ((x & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000  # branch-free: LLVM makes it one sign extension


@njit(**INLINE)
def _option_field(b, p, end, t, st):
    """The DetectOptions field with tag t whose value starts at b[p], merged into st: (next position or -code,
    known). An unknown tag (or a known field with another wire type) is (p, False): the caller skips it."""
    if t == 0x09 or t == 0x21 or t == 0x59 or t == 0x69 or t == 0x71 or t == 0x79:
        # threshold, alpha, likelihood_threshold, series_ttl_seconds, min_deviation, min_relative_deviation: double
        if end - p < 8:
            return -E_TRUNCATED, True
        slot = (_THRESHOLD if t == 0x09 else _ALPHA if t == 0x21 else _TAIL_THRESHOLD if t == 0x59
                else _SERIES_TTL if t == 0x69 else _MIN_DEVIATION if t == 0x71 else _MIN_RELATIVE)
        st[slot] = load_i64(b, p)
        if t >= 0x59:
            st[_PRESENT] |= 1 << ((t >> 3) - _FIRST_OPTIONAL)
        return p + 8, True
    field = t >> 3
    if (t & 7) != 0 or field < 2 or field > 17 or field == 4 or field == 11 or field == 13 or field == 14 \
            or field == 15:
        return p, False
    x, p = varint(b, p, end)
    if p < 0:
        return p, True
    if field == 2:
        st[_WARMUP] = x & 0xFFFFFFFF  # uint32
    elif field == 3:
        st[_MODE] = _int32(x)  # enum Mode is int32; open, so any value is kept
    elif field == 5:
        st[_EXCLUDE] = 1 if x != 0 else 0  # bool
    else:
        if field == 8:
            st[_SCORE] = _int32(x)  # enum Score, open as Mode
        elif field == 16:
            st[_DIRECTION] = _int32(x)  # enum Direction, open as Mode
        else:  # uint32 fields
            slot = (_EXCLUDE_LIMIT if field == 6 else _COOLDOWN if field == 7 else _SHORT if field == 9
                    else _WINDOW if field == 10 else _LEARNING if field == 12 else _RESOLVE_AFTER)
            st[slot] = x & 0xFFFFFFFF
        st[_PRESENT] |= 1 << (field - _FIRST_OPTIONAL)
    return p, True


def options_of(st: np.ndarray) -> Options:
    """The DetectOptions the decoder read into st."""
    threshold, alpha = st[_THRESHOLD:_ALPHA + 1].view(np.float64).tolist()
    present = int(st[_PRESENT])

    def sent(field: int, value):
        return value if present >> (field - _FIRST_OPTIONAL) & 1 else None

    tail = float(st[_TAIL_THRESHOLD:_TAIL_THRESHOLD + 1].view(np.float64)[0])
    min_dev, min_rel = st[_MIN_DEVIATION:_MIN_RELATIVE + 1].view(np.float64).tolist()
    ttl = float(st[_SERIES_TTL:_SERIES_TTL + 1].view(np.float64)[0])
    return Options(threshold, int(st[_WARMUP]), int(st[_MODE]), alpha, bool(st[_EXCLUDE]),
                   sent(6, int(st[_EXCLUDE_LIMIT])), sent(7, int(st[_COOLDOWN])), sent(8, int(st[_SCORE])),
                   sent(9, int(st[_SHORT])), sent(10, int(st[_WINDOW])), sent(11, tail),
                   sent(12, int(st[_LEARNING])), sent(14, min_dev), sent(15, min_rel),
                   sent(16, int(st[_DIRECTION])), sent(17, int(st[_RESOLVE_AFTER])), sent(13, ttl))
