"""Service hygiene: health, reflection, graceful shutdown on SIGTERM/SIGINT, all on real servers."""
from __future__ import annotations

import signal
import threading

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from streamer.pb import outliers_pb2 as pb
from streamer.pb import outliers_pb2_grpc


@pytest.mark.parametrize("service", ["", "pb.Outliers"])
def test_health_is_serving(channel, service):
    request = health_pb2.HealthCheckRequest(service=service)
    response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as err:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_service(channel):
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {"pb.Outliers", "grpc.health.v1.Health"} <= services
    pool = descriptor_pool.DescriptorPool(db)
    outliers = pool.FindServiceByName("pb.Outliers")
    assert [m.name for m in outliers.methods] == ["Detect", "DetectStream"]
    assert outliers.methods_by_name["DetectStream"].client_streaming


def _slow_stream(addr: str, results: list, sent_second: threading.Event, may_send: threading.Event):
    """A stream that sends one batch, waits until told, then sends a second; records both answers."""
    def requests():
        yield pb.OutliersRequest(metrics=[pb.Metric(name="a", value=1.0)])
        may_send.wait(30)
        sent_second.set()
        yield pb.OutliersRequest(metrics=[pb.Metric(name="a", value=2.0)])
    with grpc.insecure_channel(addr) as channel:
        try:
            for response in outliers_pb2_grpc.OutliersStub(channel).DetectStream(requests(), timeout=60):
                results.append(response.batch)
        except grpc.RpcError as exc:
            results.append(exc.code())


def _wait_for(predicate, what: str, tries: int = 300):
    for _ in range(tries):
        if predicate():
            return
        threading.Event().wait(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def _health(addr: str):
    """The health status of service "" via a new channel, or the status code the Check failed with."""
    with grpc.insecure_channel(addr) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                             timeout=5).status
        except grpc.RpcError as exc:
            return exc.code()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_the_call_in_flight_finish_then_exits_0(cli_server, sig):
    server = cli_server("--grace-seconds", "20")
    results: list = []
    sent_second, may_send = threading.Event(), threading.Event()
    caller = threading.Thread(target=_slow_stream, args=(server.addr, results, sent_second, may_send))
    caller.start()
    try:
        _wait_for(lambda: results, "the stream's first answer")  # the stream is open
        assert results == [0]
        assert _health(server.addr) == health_pb2.HealthCheckResponse.SERVING
        server.proc.send_signal(sig)
        _wait_for(lambda: "stopping" in "".join(server.log), "the server to log 'stopping'")
        # The server logs "stopping", flips health to NOT_SERVING, then grpc closes the listener and sends
        # GOAWAY: from then on, for the whole grace period, a health Check fails UNAVAILABLE. (The first two
        # steps are a moment apart, which a busy machine can stretch, so poll rather than check once.)
        seen = []
        _wait_for(lambda: seen.append(_health(server.addr)) or seen[-1] == grpc.StatusCode.UNAVAILABLE,
                  "health to be refused")
        assert set(seen) <= {health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING,
                             grpc.StatusCode.UNAVAILABLE}, seen
        with grpc.insecure_channel(server.addr) as channel:  # a new call on a new channel is refused
            with pytest.raises(grpc.RpcError) as err:
                outliers_pb2_grpc.OutliersStub(channel).Detect(
                    pb.OutliersRequest(metrics=[pb.Metric(name="a", value=1.0)]), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # ... while the call in flight is still open, waiting for its second batch, and the server still up
        assert results == [0] and not sent_second.is_set() and server.proc.poll() is None
        assert "stopped" not in "".join(server.log)
    finally:
        may_send.set()
        caller.join(30)
    assert results == [0, 1], results   # the call in flight was answered in full
    assert server.proc.wait(30) == 0
    log = "".join(server.log)
    assert "stopping" in log and "stopped" in log


def test_new_calls_are_refused_after_shutdown(make_server):
    s = make_server()
    addr = s.addr
    s.call(s.server.stop(0))
    with grpc.insecure_channel(addr) as channel:
        with pytest.raises(grpc.RpcError) as err:
            outliers_pb2_grpc.OutliersStub(channel).Detect(pb.OutliersRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
