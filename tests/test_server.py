"""Service hygiene: health, reflection, graceful shutdown on SIGTERM/SIGINT, all on real servers."""
from __future__ import annotations

import signal
import threading
import time

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
    assert [m.name for m in outliers.methods] == ["Detect", "DetectStream", "Watch"]
    assert outliers.methods_by_name["DetectStream"].client_streaming
    assert outliers.methods_by_name["Watch"].server_streaming and not outliers.methods_by_name["Watch"].client_streaming
    assert "opentelemetry.proto.collector.metrics.v1.MetricsService" in services


def _slow_stream(addr: str, results: list, sent_second: threading.Event, may_send: threading.Event):
    """A stream that sends one batch, waits until told, then sends a second; records the answers' batch
    numbers, then the status code it ended with (or "ok")."""
    def requests():
        yield pb.OutliersRequest(metrics=[pb.Metric(name="a", value=1.0)])
        may_send.wait(60)
        sent_second.set()
        yield pb.OutliersRequest(metrics=[pb.Metric(name="a", value=2.0)])
    with grpc.insecure_channel(addr) as channel:
        try:
            for response in outliers_pb2_grpc.OutliersStub(channel).DetectStream(requests(), timeout=60):
                results.append(response.batch)
            results.append("ok")
        except grpc.RpcError as exc:
            results.append(exc.code())
            results.append(exc.details())


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


def _slow_detect(addr: str, results: list):
    """A unary Detect of a request big enough to take a moment; records how it ended."""
    request = pb.OutliersRequest(metrics=[pb.Metric(name=f"s{i % 1000}", value=float(i)) for i in range(400_000)])
    with grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        try:
            outliers_pb2_grpc.OutliersStub(channel).Detect(request, timeout=60)
            results.append("ok")
        except grpc.RpcError as exc:
            results.append(exc.code())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_open_streams_with_unavailable_at_once_then_exits_0(cli_server, sig):
    # A long grace: the open stream must not wait for it (shared/DECISIONS.md, one shutdown sequence). The drain
    # has its own test below.
    server = cli_server("--grace-seconds", "30")
    results: list = []
    sent_second, may_send = threading.Event(), threading.Event()
    caller = threading.Thread(target=_slow_stream, args=(server.addr, results, sent_second, may_send))
    caller.start()
    try:
        _wait_for(lambda: results, "the stream's first answer")  # the stream is open, waiting to send more
        assert results == [0]
        assert _health(server.addr) == health_pb2.HealthCheckResponse.SERVING
        signalled = time.monotonic()
        server.proc.send_signal(sig)
        _wait_for(lambda: "stopping" in "".join(server.log), "the server to log 'stopping'")
        # the open stream is ended with UNAVAILABLE, without waiting for the 30 s grace
        _wait_for(lambda: len(results) > 1, "the stream to be ended")
        assert results[1] == grpc.StatusCode.UNAVAILABLE, results
        assert "shutting down" in results[2]
        assert not sent_second.is_set()
    finally:
        may_send.set()
        caller.join(30)
    assert server.proc.wait(30) == 0
    assert time.monotonic() - signalled < 1 + 30 + 1
    log = "".join(server.log)
    assert "stopping" in log and "stopped" in log and "ending 1 open stream" in log
    assert "Traceback" not in log and "ERROR" not in log


class _LockstepStream:
    """A stream on its own thread that sends a batch each time `send()` is called and records its answers' batch
    numbers, then the status it ended with."""

    def __init__(self, addr: str, session: str = ""):
        self.outcome: list = []
        self._next = threading.Semaphore(0)
        self._answers = threading.Semaphore(0)
        self._closed = False

        def requests():
            n = 0
            while True:
                self._next.acquire()
                if self._closed:
                    return
                yield pb.OutliersRequest(metrics=[pb.Metric(name="a", value=float(n))],
                                         session=session if n == 0 else "")
                n += 1

        def run():
            with grpc.insecure_channel(addr) as channel:
                try:
                    for response in outliers_pb2_grpc.OutliersStub(channel).DetectStream(requests(), timeout=120):
                        self.outcome.append(response.batch)
                        self._answers.release()
                    self.outcome.append("ok")
                except grpc.RpcError as exc:
                    self.outcome += [exc.code(), exc.details()]
                self._answers.release()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def send(self) -> None:
        """Send one batch and wait for its answer (or for the stream's end)."""
        self._next.release()
        assert self._answers.acquire(timeout=60), "no answer"

    def close(self) -> None:
        self._closed = True
        self._next.release()
        self.thread.join(60)


def test_during_the_drain_health_is_not_serving_and_new_calls_are_answered(cli_server):
    """shared/DECISIONS.md, one shutdown sequence, steps 1-3: on SIGTERM health turns NOT_SERVING at once; for
    --drain-seconds, new calls (unary, and new streams) and the open streams' new batches are answered; then the
    streams end with UNAVAILABLE, and the process exits 0."""
    drain = 10  # long enough for the checks below on a loaded machine; the test waits for events, not for time
    server = cli_server("--drain-seconds", str(drain), "--grace-seconds", "5")
    old, new = _LockstepStream(server.addr, session="before"), None
    old.send()
    assert old.outcome == [0]
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    _wait_for(lambda: _health(server.addr) == health_pb2.HealthCheckResponse.NOT_SERVING, "health NOT_SERVING")
    try:
        with grpc.insecure_channel(server.addr) as channel:
            answer = outliers_pb2_grpc.OutliersStub(channel).Detect(
                pb.OutliersRequest(metrics=[pb.Metric(name="a", value=v) for v in [1.0] * 9 + [9.0]]), timeout=10)
        assert list(answer.indices) == [9]
        new = _LockstepStream(server.addr, session="during")
        new.send()
        new.send()
        old.send()
        assert new.outcome == [0, 1] and old.outcome == [0, 1], (new.outcome, old.outcome)
        assert server.proc.poll() is None and "ending" not in "".join(server.log)
        still_draining = time.monotonic() - signalled < drain
        # then both streams are ended with UNAVAILABLE (each has had every answer), and the process exits 0
        for stream in (old, new):
            _wait_for(lambda: len(stream.outcome) > 2, "the stream to be ended", tries=600)
            assert stream.outcome[2] == grpc.StatusCode.UNAVAILABLE and "shutting down" in stream.outcome[3]
        assert server.proc.wait(30) == 0
        assert time.monotonic() - signalled >= drain - 0.5  # the streams were not ended before the drain was over
    finally:
        for stream in (old, new):
            if stream is not None:
                stream.close()
    assert still_draining, "the checks took longer than the drain: raise `drain`"
    log = "".join(server.log)
    assert "after 10 s of drain" in log and "ending 2 open stream(s)" in log and "Traceback" not in log


def test_unary_calls_in_flight_get_the_grace_period_and_the_exit_has_no_traceback(cli_server):
    server = cli_server("--grace-seconds", "20")
    results: list = []
    callers = [threading.Thread(target=_slow_detect, args=(server.addr, results)) for _ in range(2)]
    for c in callers:
        c.start()
    time.sleep(0.5)  # the calls are on their way (a 6 MB request each)
    server.proc.send_signal(signal.SIGTERM)
    for c in callers:
        c.join(60)
    assert server.proc.wait(30) == 0
    # each call either finished within the grace period, or had not reached the server before it stopped
    assert results and set(results) <= {"ok", grpc.StatusCode.UNAVAILABLE}, results
    log = "".join(server.log)
    assert "Traceback" not in log and "ERROR" not in log, log


def test_a_stream_cancelled_at_the_end_of_the_grace_period_logs_no_traceback(cli_server):
    # A stream that is busy with a batch when the grace period ends is cancelled by grpc: quietly.
    server = cli_server("--grace-seconds", "0")
    results: list = []
    sent_second, may_send = threading.Event(), threading.Event()
    caller = threading.Thread(target=_slow_stream, args=(server.addr, results, sent_second, may_send))
    caller.start()
    _wait_for(lambda: results, "the stream's first answer")
    assert server.terminate() == 0
    may_send.set()
    caller.join(30)
    assert results[0] == 0 and results[1] == grpc.StatusCode.UNAVAILABLE, results
    log = "".join(server.log)
    assert "Traceback" not in log and "ERROR" not in log, log


def test_new_calls_are_refused_after_shutdown(make_server):
    s = make_server()
    addr = s.addr
    s.call(s.server.stop(0))
    with grpc.insecure_channel(addr) as channel:
        with pytest.raises(grpc.RpcError) as err:
            outliers_pb2_grpc.OutliersStub(channel).Detect(pb.OutliersRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
