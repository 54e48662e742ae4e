"""OTLP sources on the page: a real OTLP export (MetricsService/Export over gRPC, as tests/test_otlp.py sends it)
to a real server with --http-port; the page's API lists the resource's session with its series count, its
search finds the series keys, and a tap on one of them charts its values with the band they were judged against."""
from __future__ import annotations

import json
import random
import threading
import time

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as svc

from streamer.wire import Options
from test_otlp import EXPORT, gauge, request
from test_page import SEED, _get, _sse, free_port


def test_otlp_sources_are_listed_searched_and_tapped(make_server):
    port = free_port()
    srv = make_server(http_port=port, otlp_options=Options(warmup=5, threshold=4.0))
    srv.server.service.taps.sample_seconds = 0  # every export recorded whole
    rng = random.Random(SEED)
    values = [50 + rng.gauss(0, 1) for _ in range(40)]
    values[30] = 90.0
    with grpc.insecure_channel(srv.addr) as ch:
        call = ch.unary_unary(EXPORT, request_serializer=svc.ExportMetricsServiceRequest.SerializeToString,
                              response_deserializer=svc.ExportMetricsServiceResponse.FromString)
        send = lambda i: call(request(gauge("http.latency", values[i], i, route="/pay"),  # noqa: E731
                                      gauge("queue.depth", 3.0 + i % 2, i)), timeout=30)
        send(0)
        sessions = json.loads(_get(port, "/api/sessions")[1])["sessions"]
        otlp = [s for s in sessions if s["source"] == "otlp"]
        assert len(otlp) == 1 and otlp[0]["name"].startswith("otlp:{") and otlp[0]["series"] == 2, sessions
        session = otlp[0]["name"]
        assert "checkout" in session and "4242" not in session  # named by the identifying attributes only
        q = urllib_quote(session)
        keys = json.loads(_get(port, f"/api/series?session={q}&q=latency")[1])["series"]
        assert len(keys) == 1 and keys[0].startswith("http.latency") and "/pay" in keys[0], keys
        key = keys[0]
        assert len(json.loads(_get(port, f"/api/series?session={q}&q=")[1])["series"]) == 2
        points: list = []
        ready = threading.Event()
        t = threading.Thread(target=_sse, args=(port, f"/api/tap?session={q}&series={urllib_quote(key)}",
                                                len(values) - 2, points, ready), daemon=True)
        t.start()
        assert ready.wait(30)
        for i in range(1, len(values)):
            send(i)
        t.join(60)
    assert not t.is_alive(), f"{len(points)} values reached the tap"
    # the first export after the tap opened arms it (its state is copied), every later one is recorded
    assert [p["value"] for p in points] == values[2:]
    flagged = [p["value"] for p in points if p["flagged"]]
    assert flagged == [90.0]
    for j, p in enumerate(points, start=2):  # the band: the mean and stddev of the values before (warmup 5)
        before = values[:j]
        if j < 5:
            assert p["mean"] is None
            continue
        mean = sum(before) / j
        std = (sum((v - mean) ** 2 for v in before) / j) ** 0.5
        assert (p["mean"], p["stddev"]) == (pytest.approx(mean, rel=1e-9), pytest.approx(std, rel=1e-9)), j
        if j > 30:
            break  # past the spike the state holds it too; checked up to it
    deadline = time.monotonic() + 30  # the tap goes once the server reads the page's connection end
    while srv.server.service.taps.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.server.service.taps.active is False


def urllib_quote(s: str) -> str:
    import urllib.parse
    return urllib.parse.quote(s, safe="")
