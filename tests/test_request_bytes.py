"""The hand-written Metric encoding of streamer.request_bytes against the protobuf library, on seeded random
rows: the same bytes, and a request the library parses back to the same message."""
from __future__ import annotations

import math
import random

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from streamer.pb import outliers_pb2 as pb
from streamer.request_bytes import RequestBuilder, metric, options_field, varint

SEED = 20261123


def _library_metric(name, value, seconds, nanos) -> pb.Metric:
    m = pb.Metric(name=name, value=value)
    if seconds is not None:
        m.time.seconds, m.time.nanos = seconds, nanos
    return m


def _random_rows(rng: random.Random, n: int):
    names = ["", "cpu", "ü-naïve", "x" * 200, "名前", "a,b", "\x00"]
    specials = [0.0, -0.0, math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, -1.5]
    for _ in range(n):
        if rng.random() < 0.7:
            name = rng.choice(names)
        else:
            name = "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
        value = rng.choice(specials) if rng.random() < 0.2 else rng.uniform(-1e6, 1e6)
        kind = rng.random()
        if kind < 0.3:
            seconds, nanos = None, 0
        elif kind < 0.4:
            seconds, nanos = 0, 0
        else:
            seconds = rng.choice([rng.randrange(-62135596800, 253402300799), -1, 1, 2**31, 1764580000])
            nanos = rng.choice([0, 1, 999_999_999, rng.randrange(0, 10**9)])
        yield name, value, seconds, nanos


@pytest.mark.parametrize("n", [1, 127, 128, 300, 16383, 16384, 2**31 - 1, 2**63 - 1, -1, -(2**63)])
def test_varint_matches_the_library(n):
    # Timestamp.seconds is an int64: field 1, then the library's varint (two's complement when negative)
    assert b"\x08" + varint(n) == Timestamp(seconds=n).SerializeToString()


def test_varint_of_zero():
    assert varint(0) == b"\x00"


def test_metrics_are_the_library_bytes():
    rng = random.Random(SEED)
    print("seed", SEED)
    builder = RequestBuilder()
    expected = pb.OutliersRequest()
    for row in _random_rows(rng, 5000):
        library = _library_metric(*row)
        assert metric(*row) == library.SerializeToString(), row
        builder.add(*row)
        expected.metrics.append(library)
    options = pb.DetectOptions(threshold=3.5, warmup=7, mode=pb.MODE_EXPONENTIAL, alpha=0.25,
                               exclude_outliers=True)
    expected.options.CopyFrom(options)
    assert builder.count == 5000
    encoded = builder.take(options_field(options))
    assert encoded == expected.SerializeToString()
    parsed = pb.OutliersRequest.FromString(encoded)
    assert len(parsed.metrics) == 5000 and parsed.options == options
    assert builder.size == 0 and builder.take() == b""


def test_many_distinct_names_keep_their_encoding_right():
    builder = RequestBuilder()
    names = [f"series-{i}" for i in range(10_000)]  # more than the builder's cache of name encodings
    for name in names + names[:10]:
        builder.add(name, 1.0)
    parsed = pb.OutliersRequest.FromString(builder.take())
    assert [m.name for m in parsed.metrics] == names + names[:10]


def test_no_options_no_field():
    assert options_field(None) == b""
