"""The decoder's fast path (streamer/wire/layout.py) against the protobuf library: the usual layout and every
near miss of it (each field of it changed, moved, repeated, cut short or corrupted) read as upb reads them,
whichever of the two paths reads them. Runs in the checked build too (Makefile WIRE_TESTS)."""
from __future__ import annotations

import random
import struct

import pytest

from oracle import same_as_protobuf
from test_wire import varint

from streamer.pb import outliers_pb2 as pb


def record(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + varint(len(payload)) + payload


def timestamp(seconds: int | None, nanos: int | None) -> bytes:
    return ((b"\x08" + varint(seconds) if seconds is not None else b"")
            + (b"\x10" + varint(nanos) if nanos is not None else b""))


def metric(name: bytes | None = b"cpu.user", value: float | None = 1.5, time: bytes | None = None) -> bytes:
    """A Metric's bytes in field order: time, name, value (None: the field left out)."""
    return ((record(0x0A, time) if time is not None else b"") + (record(0x12, name) if name is not None else b"")
            + (b"\x19" + struct.pack("<d", value) if value is not None else b""))


def request(*metrics: bytes, tail: bytes = b"") -> bytes:
    return b"".join(record(0x0A, m) for m in metrics) + tail


TIMES = [None, timestamp(1_700_000_000, 123_456_789), timestamp(1_700_000_000, None), timestamp(None, 5),
         timestamp(0, 0), timestamp(-1, 7), timestamp(1, -1), timestamp(2 ** 63 - 1, 999_999_999), b"",
         timestamp(1, 2) + timestamp(3, None), timestamp(None, 2) + timestamp(1, None), b"\x08\x80\x80"]
NAMES = [b"a", b"cpu.user", b"host0001.disk.io.read_bytes", "héllo/δ".encode(), b"x" * 7, b"y" * 8, b"z" * 9,
         b"n" * 100, b"n" * 127, b"n" * 128, b"", None, b"\xff", b"ok\xc0\xaf", b"\xed\xa0\x80"]
VALUES = [1.5, None, 0.0, -0.0, float("nan"), float("inf"), 5e-324]


def test_the_usual_layout_and_its_variants_read_as_protobuf_reads_them():
    accepted = 0
    for t in TIMES:
        for name in NAMES:
            for value in VALUES:
                m = metric(name, value, t)
                for buf in (request(m), request(m, m), request(metric(), m, metric(b"b", 2.0, TIMES[1]))):
                    accepted += same_as_protobuf(buf)
    assert accepted > 1000  # most are valid: the comparison is of what was read, not only of errors


def test_a_metric_as_the_library_writes_it_ends_the_buffer_at_every_length():
    # the last metric's loads (its name's tail word, the value) near the end of the buffer, at every offset
    for k in range(1, 40):
        req = pb.OutliersRequest()
        req.metrics.add(name="m" * k, value=2.5).time.seconds = 1_700_000_000 + k
        req.metrics.add(name="s" * (k % 9 + 1), value=-1.0).time.nanos = k
        assert same_as_protobuf(req.SerializeToString())


@pytest.mark.parametrize("m", [
    metric(value=None) + b"\x19" + bytes(8),                    # the value twice
    record(0x12, b"a") + record(0x0A, timestamp(1, 2)) + b"\x19" + bytes(8),  # time after the name
    b"\x19" + bytes(8) + record(0x12, b"a"),                    # value before the name
    metric() + b"\x20\x01",                                     # an unknown field after the value
    metric() + record(0x12, b"b"),                              # the name twice: the last one counts
    b"\x12\x81\x00a" + b"\x19" + bytes(8),                      # a two-byte name length (overlong)
    record(0x0A, b"\x08\x81\x00") + metric(),                   # an overlong seconds varint
    record(0x0A, b"\x10\x01\x08\x01") + metric(),               # nanos before seconds
    record(0x0A, timestamp(1, 2) + b"\x18\x01") + metric(),     # an unknown field in the time
    b"\x0a\x0b" + timestamp(1_700_000_000, 1) + metric(),       # the time's length one short
    b"\x0a\x0d" + timestamp(1_700_000_000, 1) + metric(),       # ... and one long
    b"\x12\x02a",                                               # the name runs past the metric
    b"\x12\x01a\x19" + bytes(7),                                # the value cut short
    b"\x12\x01a\x1a" + bytes(8),                                # field 3 with the wrong wire type
])
def test_near_misses_of_the_layout_read_as_protobuf_reads_them(m):
    for buf in (request(m), request(metric(), m), request(m, metric())):
        same_as_protobuf(buf)
        for cut in range(len(buf)):  # and every truncation
            same_as_protobuf(buf[:cut])


def test_random_corruptions_of_collector_requests_read_as_protobuf_reads_them():
    rnd = random.Random(23)
    req = pb.OutliersRequest()
    for i in range(40):
        m = req.metrics.add(name=f"host{i % 7:04d}.cpu{i % 3}", value=rnd.gauss(20, 3))
        m.time.seconds, m.time.nanos = 1_700_000_000 + i, rnd.randrange(10 ** 9)
    req.options.threshold = 3.0
    base = req.SerializeToString()
    accepted = 0
    for _ in range(1500):
        buf = bytearray(base)
        for _ in range(rnd.randint(1, 3)):
            buf[rnd.randrange(len(buf))] = rnd.choice([0x00, 0x0A, 0x08, 0x10, 0x12, 0x19, 0x80, 0xFF,
                                                       rnd.randrange(256)])
        accepted += same_as_protobuf(bytes(buf[:rnd.randint(len(buf) - 60, len(buf))]))
    assert 0 < accepted < 1500
