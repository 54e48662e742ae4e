"""Real clients: the OpenTelemetry Python SDK and its OTLP gRPC exporter (gzip) send a gauge and a counter with
one spike to `streamer serve` in its own process, on --otlp-port; a Watch subscriber gets exactly that spike.
Also: a fleet of exports spread over `--workers 2` is judged on one state and seen by one subscriber."""
from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as svc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from conftest import CliServer
from redis_server import RedisServer
from streamer.client import Client
from test_otlp import EXPORT, counter, gauge, request

SPIKE = 12   # the collection that carries the spike (after the warmup of 5)
RATE = 1000  # the counter's increase per second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instrumented:
    """An application instrumented with the SDK: an observable gauge and counter, read at every collection
    (every 100 ms). The counter grows by RATE a second of real time, with +-20 of noise, and by 10**6 once."""

    def __init__(self, endpoint: str):
        self.collections = 0
        self.done = threading.Event()
        self.t0 = time.monotonic()
        exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True, compression=Compression.Gzip)
        self.reader = PeriodicExportingMetricReader(exporter, export_interval_millis=100)
        resource = Resource.create({"service.name": "shop", "host.name": "web-1"})  # and process.pid, sdk.*
        self.provider = MeterProvider(resource=resource, metric_readers=[self.reader])
        meter = self.provider.get_meter("test")
        meter.create_observable_gauge("queue.depth", [self._gauge])
        meter.create_observable_counter("orders", [self._counter])

    def _gauge(self, options: CallbackOptions):
        i = self.collections
        yield Observation(50.0 + (1 if i % 2 else -1) + (500 if i == SPIKE else 0), {"queue": "main"})

    def _counter(self, options: CallbackOptions):
        i = self.collections
        self.collections += 1
        if self.collections >= SPIKE + 4:
            self.done.set()
        total = RATE * (time.monotonic() - self.t0) + (20 if i % 2 else 0) + (10**6 if i >= SPIKE else 0)
        yield Observation(int(total), {"kind": "web"})

    def run(self, timeout: float = 60) -> None:
        assert self.done.wait(timeout), f"only {self.collections} collections"
        self.provider.shutdown()


def watch_until_marker(addr: str, run, marker_addr: str | None = None) -> list:
    """Subscribe at addr, run(), then send a marker outlier through a private stream (to marker_addr, default
    addr): everything found before the marker there has reached the subscriber when the marker does."""
    with Client(addr) as c:
        events = []
        watch = c.watch()

        def read():
            for e in watch:
                if e.outlier.series == "zz.marker":
                    return watch.cancel()
                events.append(e)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        run()
        with Client(marker_addr or addr) as m:
            list(m.stream([[("zz.marker", x) for x in [1.0, 2.0] * 6 + [100.0]]]))
        reader.join(30)
        assert not reader.is_alive(), events
        return events


def test_the_python_sdk_exporter_gets_its_spikes_reported_on_watch(cli_server):
    port = free_port()
    server = cli_server("--otlp-port", str(port), "--otlp-threshold", "6", "--otlp-warmup", "5")
    assert f"also on 127.0.0.1:{port}" in "".join(server.log)
    app = Instrumented(f"127.0.0.1:{port}")
    events = watch_until_marker(server.addr, app.run)
    got = {e.outlier.series: e.outlier for e in events}
    assert set(got) == {'queue.depth{host.name="web-1",queue="main",service.name="shop"}',
                        'orders{host.name="web-1",kind="web",service.name="shop"}'}, events
    depth = got['queue.depth{host.name="web-1",queue="main",service.name="shop"}']
    assert depth.value in (549.0, 551.0) and depth.session == 'otlp:{host.name="web-1",service.name="shop"}'
    orders = got['orders{host.name="web-1",kind="web",service.name="shop"}']
    assert orders.value > 10**6 / 1.0 and orders.mean == pytest.approx(RATE, rel=0.5)  # per second, ~0.1 s


def test_exports_spread_over_two_workers_share_one_state_and_one_watch(cli_server, tmp_path):
    server = cli_server("--workers", "2", "--store", f"sqlite:///{tmp_path}/w.db", "--otlp-warmup", "5",
                        "--otlp-threshold", "4", "--lease-seconds", "3")

    def run():
        total = 0
        for i in range(16):
            total += 100 + (i % 2) * 10 + (100_000 if i == 12 else 0)
            # a new connection each time: the kernel spreads them over the workers (SO_REUSEPORT)
            with grpc.insecure_channel(server.addr) as ch:
                call = ch.unary_unary(EXPORT, request_serializer=svc.ExportMetricsServiceRequest.SerializeToString,
                                      response_deserializer=svc.ExportMetricsServiceResponse.FromString)
                for r in range(4):  # four resources, one spike each
                    resp = call(request(counter("jobs", total, i), gauge("load", 1.0 + i % 2, i),
                                        service=f"svc{r}"), timeout=30)
                    assert not resp.HasField("partial_success")

    events = watch_until_marker(server.addr, run)
    got = sorted((e.outlier.session, e.outlier.series.split("{")[0], e.outlier.value) for e in events)
    assert got == [(f'otlp:{{host.name="h1",service.name="svc{r}"}}', "jobs", pytest.approx(100_100 / 0.1))
                   for r in range(4)]
    assert server.terminate() == 0


def test_replicas_on_one_redis_see_each_others_outliers_and_share_the_otlp_state():
    redis = RedisServer()
    try:
        args = ("--store", redis.url, "--lease-seconds", "2", "--otlp-warmup", "5", "--otlp-threshold", "4")
        a, b = CliServer(*args), CliServer(*args)
        try:
            def run():
                total = 0
                for i in range(16):  # alternately to each replica: one state for the resource, in Redis
                    total += 100 + (i % 2) * 10 + (100_000 if i == 13 else 0)
                    with grpc.insecure_channel((a, b)[i % 2].addr) as ch:
                        call = ch.unary_unary(EXPORT,
                                              request_serializer=svc.ExportMetricsServiceRequest.SerializeToString,
                                              response_deserializer=svc.ExportMetricsServiceResponse.FromString)
                        call(request(counter("jobs", total, i), service="fleet"), timeout=30)
                with Client(b.addr) as c:  # and a session's outlier on B
                    list(c.stream([[("b.cpu", x) for x in [1.0, 2.0] * 6 + [90.0]]], session="on-b"))

            events = watch_until_marker(a.addr, run, marker_addr=b.addr)  # watching A only
        finally:
            a.close()
            b.close()
    finally:
        redis.stop()
    got = [(e.outlier.series, e.outlier.session, e.outlier.value) for e in events]
    assert got == [('jobs{host.name="h1",service.name="fleet"}', 'otlp:{host.name="h1",service.name="fleet"}',
                    pytest.approx(100_110 / 0.1)), ("b.cpu", "on-b", 90.0)]  # the spike was exported to B
