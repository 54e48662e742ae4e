"""Bad input gets its exact status code, and the server keeps answering good requests right after."""
from __future__ import annotations

import gc
import os
import time
import types

import grpc
import pytest

import streamer
from streamer import service
from streamer.detector import Defaults
from streamer.pb import outliers_pb2 as pb
from streamer.pb import outliers_pb2_grpc

GOOD = pb.OutliersRequest(metrics=[pb.Metric(name="cpu", value=v) for v in [1, 2, 1, 2, 1, 2, 1, 2, 50]])


def assert_still_serving(channel):
    response = outliers_pb2_grpc.OutliersStub(channel).Detect(GOOD, timeout=10)
    assert list(response.indices) == [8]


def raw_detect(channel, payload: bytes):
    return channel.unary_unary("/pb.Outliers/Detect")(payload, timeout=10)  # no serializer: raw bytes


@pytest.mark.parametrize("payload", [
    b"\xff\xff\xff",                       # truncated varint tag
    b"\x0a\x05\x12\x03ab",                 # metric length runs past the end
    b"\x0a\x03\x12\x01\xff",               # name that is not UTF-8
    b"\x0a\x02\x19\x00",                   # value (fixed64) cut short
])
def test_malformed_bytes_are_invalid_argument(channel, payload):
    with pytest.raises(grpc.RpcError) as err:
        raw_detect(channel, payload)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert_still_serving(channel)


def test_name_over_1024_bytes(channel, stub):
    request = pb.OutliersRequest(metrics=[pb.Metric(name="ok", value=1), pb.Metric(name="x" * 1025, value=2)])
    with pytest.raises(grpc.RpcError) as err:
        stub.Detect(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metric 1" in err.value.details() and "1024" in err.value.details()
    assert_still_serving(channel)
    # exactly 1024 bytes (multi-byte characters count as bytes) is fine
    ok = pb.OutliersRequest(metrics=[pb.Metric(name="é" * 512, value=1)])
    stub.Detect(ok, timeout=10)


def test_request_over_max_message_size(make_server):
    small = make_server(max_message_mb=1)
    with grpc.insecure_channel(small.addr, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        big = pb.OutliersRequest(metrics=[pb.Metric(name="cpu", value=float(i)) for i in range(120_000)])
        assert big.ByteSize() > 1 << 20
        with pytest.raises(grpc.RpcError) as err:
            outliers_pb2_grpc.OutliersStub(channel).Detect(big, timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert_still_serving(channel)


@pytest.mark.parametrize("threshold", [-1.0, float("nan"), float("inf")])
def test_bad_threshold(channel, stub, threshold):
    request = pb.OutliersRequest(metrics=GOOD.metrics, options=pb.DetectOptions(threshold=threshold))
    with pytest.raises(grpc.RpcError) as err:
        stub.Detect(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "options.threshold" in err.value.details()
    assert_still_serving(channel)


def test_series_limit_in_detect(make_server):
    limited = make_server(defaults=Defaults(max_series=3))
    with grpc.insecure_channel(limited.addr) as channel:
        request = pb.OutliersRequest(metrics=[pb.Metric(name=f"s{i}", value=1) for i in range(4)])
        with pytest.raises(grpc.RpcError) as err:
            outliers_pb2_grpc.OutliersStub(channel).Detect(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "metric 3" in err.value.details() and "3 series" in err.value.details()
        assert_still_serving(channel)


def _streamer_frames_in_garbage(calls) -> list[str]:
    """Names of streamer's frames that `calls()` left in reference cycles (found by a full collection)."""
    package = os.path.dirname(streamer.__file__)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable goes to gc.garbage, not away
    try:
        calls()
        time.sleep(0.5)  # the server's cleanup of the last call, after its status reached us
        gc.collect()
        return sorted({o.f_code.co_name for o in gc.garbage
                       if isinstance(o, types.FrameType) and o.f_code.co_filename.startswith(package)})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


BAD_NAME = pb.Metric(name="x" * 1025, value=1)
BIG_BAD = pb.OutliersRequest(metrics=[pb.Metric(name=f"m{i}", value=1.0) for i in range(60_000)] + [BAD_NAME])


@pytest.mark.parametrize("rpc", ["detect", "stream"])
@pytest.mark.parametrize("request_size", ["small", "over 1 MiB"])
def test_a_rejected_request_leaves_no_reference_cycle(channel, rpc, request_size):
    """A rejected call is freed when it ends, not at Python's next full garbage collection: a cycle through its
    frames would keep the request bytes, its decoded arrays and its series table (megabytes) until then."""
    request = BIG_BAD if request_size != "small" else pb.OutliersRequest(metrics=[BAD_NAME])
    payload = request.SerializeToString()
    assert (len(payload) > service.OFFLOAD_BYTES) == (request_size != "small")  # the worker-thread path too
    if rpc == "detect":
        def call():
            raw_detect(channel, payload)
    else:
        def call():
            list(channel.stream_stream("/pb.Outliers/DetectStream")(iter([payload]), timeout=10))

    def calls():
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _streamer_frames_in_garbage(calls) == []
    assert_still_serving(channel)
