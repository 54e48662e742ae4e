"""OutliersRequest bytes built a Metric at a time: a request of millions of rows without an object per row.

The concatenation of encoded fields is itself an encoded message, so each Metric is appended as field 1 of
OutliersRequest (tag, length, bytes) and the options as field 2. Each Metric is written by hand, as the protobuf
library would write it (fields in number order, zero values left out); tests/test_request_bytes.py checks the
bytes against the library's on random rows. The options, written once, are the library's.
"""
from __future__ import annotations

import io
import struct

from streamer.pb import outliers_pb2 as pb

_DOUBLE = struct.Struct("<d").pack
_ZERO = _DOUBLE(0.0)
_MASK64 = (1 << 64) - 1
_SMALL = [bytes([n]) for n in range(128)]  # one-byte varints
_NAME_CACHE = 4096  # distinct names whose encoded field is kept (a file usually has a few series)


def varint(n: int) -> bytes:
    """Base-128 varint of an unsigned 64-bit value (a negative int64 as its two's complement, 10 bytes)."""
    if n < 128:
        if n >= 0:
            return _SMALL[n]
        n &= _MASK64
    out = bytearray()
    while n > 127:
        out.append(n & 127 | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def metric(name: str, value: float, seconds: int | None = None, nanos: int = 0) -> bytes:
    """The encoded Metric (without the request's field-1 tag and length); seconds None means no time."""
    encoded = name.encode("utf-8")
    out = b"\x12" + varint(len(encoded)) + encoded if encoded else b""
    v = _DOUBLE(value)
    if v != _ZERO:
        out += b"\x19" + v
    if seconds is not None:
        ts = (b"\x08" + varint(seconds) if seconds else b"") + (b"\x10" + varint(nanos) if nanos else b"")
        out = b"\x0a" + varint(len(ts)) + ts + out
    return out


def options_field(options: pb.DetectOptions | None) -> bytes:
    """Field 2 of OutliersRequest holding `options`, or nothing for None."""
    if options is None:
        return b""
    body = options.SerializeToString()
    return b"\x12" + varint(len(body)) + body


class RequestBuilder:
    """Appends Metrics to a growing OutliersRequest; `size` is its length so far, `take()` returns it and starts
    a new one. Memory: the encoded bytes (25-40 bytes a metric) and a few thousand names' encodings."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._names: dict[str, bytes] = {}
        self.size = 0
        self.count = 0

    def add(self, name: str, value: float, seconds: int | None = None, nanos: int = 0) -> None:
        field = self._names.get(name)
        if field is None:
            encoded = name.encode("utf-8")
            field = b"\x12" + varint(len(encoded)) + encoded if encoded else b""
            if len(self._names) >= _NAME_CACHE:
                self._names.clear()
            self._names[name] = field
        v = _DOUBLE(value)
        body = field + b"\x19" + v if v != _ZERO else field
        if seconds is not None:
            ts = (b"\x08" + varint(seconds) if seconds else b"") + (b"\x10" + varint(nanos) if nanos else b"")
            body = b"\x0a" + _SMALL[len(ts)] + ts + body  # a Timestamp is at most 22 bytes
        n = len(body)
        out = b"\x0a" + (_SMALL[n] if n < 128 else varint(n)) + body
        self._buf.write(out)
        self.size += len(out)
        self.count += 1

    def take(self, tail: bytes = b"") -> bytes:
        """The request so far, followed by `tail` (e.g. options_field(...)); the builder starts empty again."""
        if tail:
            self._buf.write(tail)
        out = self._buf.getvalue()  # no copy: the buffer is handed over, not duplicated
        self._buf = io.BytesIO()
        self.size = self.count = 0
        return out


__all__ = ["RequestBuilder", "metric", "options_field", "varint"]
