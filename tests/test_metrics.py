"""Prometheus metrics scraped from a real `streamer serve` (its own process, --metrics-port on a free port) after
real calls: every gRPC and detector metric with the exact count of what was done, bounded labels."""
from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from streamer.client import Client, ClientError, make_options

STREAM = {"grpc_service": "pb.Outliers", "grpc_method": "DetectStream", "grpc_type": "BIDI_STREAMING"}
DETECT = {"grpc_service": "pb.Outliers", "grpc_method": "Detect", "grpc_type": "UNARY"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scrape:
    """One GET /metrics, parsed with prometheus_client's own parser."""

    def __init__(self, port: int):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            self.text = r.read().decode()
        self.samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                        for family in text_string_to_metric_families(self.text) for s in family.samples}

    def __call__(self, name: str, **labels) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(predicate, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
    return result


class HeldStream:
    """A stream that sends one batch, and ends only when told."""

    def __init__(self, addr: str, batch, session: str = ""):
        self.answers, self.error = [], None
        self.answered, self.release = threading.Event(), threading.Event()

        def requests():
            yield batch
            self.release.wait(60)

        def run():
            with Client(addr) as client:
                results = client.stream(requests(), session=session)
                try:
                    for r in results:
                        self.answers.append(r)
                        self.answered.set()
                except ClientError as exc:
                    self.error = exc
                    self.answered.set()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.answered.wait(60), "the held stream got no answer"

    def end(self):
        self.release.set()
        self.thread.join(60)


def test_a_scrape_after_real_calls_counts_each_of_them(cli_server, tmp_path):
    port = free_port()
    server = cli_server("--metrics-port", str(port), "--store", f"sqlite:///{tmp_path}/m.db", "--snapshot-seconds",
                        "0.2", "--log-level", "debug")
    flagged_stream = judged_stream = 0
    with Client(server.addr, timeout=30) as client:
        # Detect: 2 answered (10 metrics and 1 outlier each), 1 rejected
        for spike in (9.0, 50.0):
            assert client.detect(values=[1.0] * 9 + [spike], name="cpu").indices == [9]
        with pytest.raises(ClientError) as err:
            client.detect(values=[1.0, 2.0], threshold=-1)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        # a session stream of 3 batches, answered and ended
        batches = [[("a", 1.0), ("b", 5.0), ("a", 1.1), ("b", 5.1), ("a", 0.9)] for _ in range(2)]
        batches.append([("a", 1.0), ("b", 500.0), ("a", 1.0)])
        results = list(client.stream(batches, session="m1", options=make_options(warmup=2)))
        judged_stream += sum(map(len, batches))
        flagged_stream += sum(len(r.indices) for r in results)
        assert flagged_stream >= 1
        # a private stream whose second batch is rejected: its first batch counts
        with pytest.raises(ClientError) as err:
            list(client.stream([[("p", 1.0)] * 4, [("x" * 2000, 1.0)]]))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        judged_stream += 4
    # two streams held open: one on session "held" (3 series), one private (2 series)
    held = HeldStream(server.addr, [("x", 1.0), ("y", 1.0), ("z", 1.0)], session="held")
    private = HeldStream(server.addr, [("p1", 1.0), ("p2", 1.0)])
    judged_stream += 5
    # a second stream on "held": ALREADY_EXISTS
    busy = HeldStream(server.addr, [("x", 1.0)], session="held")
    busy.end()
    assert busy.error.code == grpc.StatusCode.ALREADY_EXISTS
    # a health check, and a method that does not exist (its name must not become a label)
    with grpc.insecure_channel(server.addr) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as unknown:
            channel.unary_unary("/pb.Outliers/NoSuchMethod")(b"", timeout=10)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED

    m = wait_for(lambda: (s := Scrape(port))("grpc_server_handled_total", grpc_code="ALREADY_EXISTS", **STREAM)
                 and s, "the busy stream to be counted")
    assert m("grpc_server_started_total", **DETECT) == 3
    assert m("grpc_server_handled_total", grpc_code="OK", **DETECT) == 2
    assert m("grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **DETECT) == 1
    assert m("grpc_server_msg_received_total", **DETECT) == 3
    assert m("grpc_server_msg_sent_total", **DETECT) == 2
    assert m("grpc_server_handling_seconds_count", **DETECT) == 3
    assert m("grpc_server_handling_seconds_bucket", le="+Inf", **DETECT) == 3
    # streams: m1, rejected, held, private, busy (a stream the client cancels, or whose deadline passes, while the
    # server waits for its next request is not counted exactly: see ops/metrics.py's _code)
    assert m("grpc_server_started_total", **STREAM) == 5
    for code, n in {"OK": 1, "INVALID_ARGUMENT": 1, "ALREADY_EXISTS": 1}.items():
        assert m("grpc_server_handled_total", grpc_code=code, **STREAM) == n, code
    assert m("grpc_server_msg_received_total", **STREAM) == 3 + 2 + 1 + 1 + 1
    assert m("grpc_server_msg_sent_total", **STREAM) == 3 + 1 + 1 + 1 + 0
    assert m("grpc_server_handling_seconds_count", **STREAM) == 3  # the two held ones are still open
    health = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check", "grpc_type": "UNARY"}
    assert m("grpc_server_handled_total", grpc_code="OK", **health) == 1
    assert "NoSuchMethod" not in m.text
    # the detector's own
    assert m("streamer_metrics_judged_total", rpc="Detect") == 20
    assert m("streamer_outliers_flagged_total", rpc="Detect") == 2
    assert m("streamer_metrics_judged_total", rpc="DetectStream") == judged_stream
    assert m("streamer_outliers_flagged_total", rpc="DetectStream") == flagged_stream + sum(
        len(r.indices) for s in (held, private) for r in s.answers)
    assert m("streamer_batches_rejected_total", rpc="Detect", code="INVALID_ARGUMENT") == 1
    assert m("streamer_batches_rejected_total", rpc="DetectStream", code="INVALID_ARGUMENT") == 1
    assert m("streamer_batches_rejected_total", rpc="DetectStream", code="ALREADY_EXISTS") == 1
    assert m("streamer_open_streams") == 2
    assert m("streamer_sessions_held") == 2  # m1 (idle) and held
    assert m("streamer_series_held") == 2 + 3 + 2  # m1's a and b, held's x y z, the private stream's p1 p2

    held.end()
    private.end()
    m = wait_for(lambda: (s := Scrape(port))("streamer_open_streams") == 0 and s, "the held streams to end")
    assert m("grpc_server_handled_total", grpc_code="OK", **STREAM) == 3
    assert m("streamer_sessions_held") == 2 and m("streamer_series_held") == 5  # the private state is gone
    # each successful snapshot write is logged (at debug) and observed once; none failed
    m = wait_for(lambda: (s := Scrape(port))("streamer_snapshot_seconds_count") >= 2 and s, "m1's and held's snapshots")
    assert server.terminate() == 0
    writes = len(re.findall(r"session '(m1|held)': snapshot version \d+", "".join(server.log)))
    assert writes >= m("streamer_snapshot_seconds_count") >= 2
    assert m("streamer_snapshot_failures_total") == 0
    # no label takes a value from a request: only these label names, and none of the session or metric names
    labels = {k for (_, ls) in m.samples for k, _ in ls}
    assert labels <= {"grpc_type", "grpc_service", "grpc_method", "grpc_code", "rpc", "code", "le"}, labels
    values = {v for (_, ls) in m.samples for _, v in ls}
    assert not values & {"m1", "held", "a", "b", "x", "p1", "cpu"}


def test_failed_snapshots_are_counted(cli_server, tmp_path):
    from test_store import make_read_only, writable
    port = free_port()
    directory = tmp_path / "state"
    server = cli_server("--metrics-port", str(port), "--store", f"sqlite:///{directory}/f.db", "--snapshot-seconds",
                        "0.2")
    frozen, go_on, done = [], threading.Event(), threading.Event()
    answers = []

    def requests():
        yield [("a", 1.0)]
        go_on.wait(60)
        yield [("a", 2.0)]  # changes the session while its store cannot be written
        done.wait(60)

    def run():
        with Client(server.addr, timeout=60) as client:
            answers.extend(client.stream(requests(), session="warm"))
    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    try:
        wait_for(lambda: Scrape(port)("streamer_snapshot_seconds_count") >= 1, "the first snapshot")
        for f in sorted(directory.iterdir()):
            if not f.name.endswith("-shm"):  # see test_durable: a write fault in the mapped index is a SIGBUS
                make_read_only(f)
                frozen.append(f)
        go_on.set()
        wait_for(lambda: Scrape(port)("streamer_snapshot_failures_total") >= 2, "failed snapshots (retried)")
    finally:
        for f in frozen:
            writable(f)
        go_on.set()
        done.set()
    caller.join(60)
    assert len(answers) == 2
    wait_for(lambda: Scrape(port)("streamer_snapshot_seconds_count") >= 2, "a snapshot once the store is back")
    failed = Scrape(port)("streamer_snapshot_failures_total")
    assert server.terminate() == 0
    logged = len(re.findall(r"store: session 'warm': snapshot of \d+ series failed; retrying", "".join(server.log)))
    assert logged == failed >= 2


def test_metrics_port_zero_serves_nothing_and_a_busy_one_fails_at_start(cli_server):
    from conftest import CliServer
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match=rf"metrics \(--metrics-port\): cannot listen on 127.0.0.1:{taken}: "
                                               rf"the port is in use"):
            CliServer("--metrics-port", str(taken))
    server = cli_server()  # the harness's --metrics-port 0
    assert "metrics off" in "".join(server.log)
