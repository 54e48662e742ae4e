"""Hostile requests shared by the tests and the fuzz corpus: overlong tags and varints whose low bits are
known field numbers, in every message the decoder reads. Each is a case the protobuf library must agree on.
"""
from __future__ import annotations

import itertools

# The requests that froze the server (issue 17): a tag of five continuation bytes whose low 7 bits are a
# known top-level tag, then a terminator: session (0x1a), options (0x12) and metrics (0x0a).
FROZE_THE_SERVER = [
    bytes.fromhex("9a8080808000"),
    bytes.fromhex("928080808080" "00"),
    bytes.fromhex("8a8080808080" "00"),
]

# Known tags of each message, as written on the wire (field << 3 | wire type).
TOP_TAGS = [0x0A, 0x12, 0x1A]
METRIC_TAGS = [0x0A, 0x12, 0x19]
OPTIONS_TAGS = [0x09, 0x10, 0x18, 0x21, 0x28, 0x30, 0x38, 0x40, 0x48, 0x50, 0x59, 0x60]
TIMESTAMP_TAGS = [0x08, 0x10]


def length_prefixed(tag: int, payload: bytes) -> bytes:
    assert len(payload) < 0x80
    return bytes([tag, len(payload)]) + payload


def overlong(tag: int, continuations: int, terminated: bool) -> bytes:
    """`tag` with its low 7 bits in the first byte, then `continuations` - 1 more 0x80 bytes, then a 0x00
    if terminated: 2-5 bytes in all is a valid (overlong) encoding of the tag, 6 or more is too long."""
    return bytes([tag | 0x80]) + b"\x80" * (continuations - 1) + (b"\x00" if terminated else b"")


def overlong_variants() -> list[bytes]:
    """Every known tag of every message, overlong by 1-6 bytes, terminated or not, with a tail after it."""
    out = list(FROZE_THE_SERVER)
    tails = [b"", b"\x00", b"\x01", b"\x80\x00", b"\x01\x02\x03\x04\x05\x06\x07\x08\x09"]
    for k, terminated, tail in itertools.product(range(1, 7), (True, False), tails):
        for t in TOP_TAGS:
            out.append(overlong(t, k, terminated) + tail)
        for t in METRIC_TAGS:  # inside a metric, with the record's length covering the tail or not
            body = overlong(t, k, terminated) + tail
            out.append(length_prefixed(0x0A, body))
            out.append(length_prefixed(0x0A, body) + b"\x0a\x00")
        for t in OPTIONS_TAGS:
            out.append(length_prefixed(0x12, overlong(t, k, terminated) + tail))
        for t in TIMESTAMP_TAGS:  # a metric's time
            out.append(length_prefixed(0x0A, length_prefixed(0x0A, overlong(t, k, terminated) + tail)))
        # inside an unknown group (field 9, start 0x4b, end 0x4c) and as an overlong end-group tag
        out.append(b"\x4b" + overlong(0x08, k, terminated) + tail + b"\x4c")
        out.append(b"\x4b" + overlong(0x4c, k, terminated) + tail)
        # overlong varint values and lengths whose low bits look like tags
        out.append(b"\x12\x02\x10" + overlong(0x0A, k, terminated) + tail)
        out.append(b"\x0a" + overlong(0x02, k, terminated) + b"\x19" + tail)
    return list(dict.fromkeys(out))
