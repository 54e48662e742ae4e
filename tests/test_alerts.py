"""Alerts end to end with real parts: `streamer serve` in its own process posting episodes to a real
Alertmanager (Debian's prometheus-alertmanager) that routes them to a webhook receiver this test runs; the
spike comes from the Go collector, the level shift from the Python client."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

from alertmanager_server import Alertmanager, Receiver, free_port
from streamer.client import Client

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def alerts_of(bodies, status, series):
    return [a for b in bodies for a in b["alerts"] if a["status"] == status and a["labels"]["series"] == series]


def go_collector(addr: str, *args: str) -> subprocess.CompletedProcess:
    if shutil.which("go") is None:
        if os.environ.get("CI"):
            pytest.fail("the go toolchain is needed")
        pytest.skip("the go toolchain is needed")
    return subprocess.run(["go", "run", "./cmd/collector", "-addr", addr, *args], cwd=ROOT / "go",
                          capture_output=True, text=True, timeout=600)


def test_a_spike_from_the_go_collector_fires_in_alertmanager_and_resolves(cli_server, receiver):
    am = Alertmanager(receiver.url)
    try:
        server = cli_server("--alertmanager", am.url, "--resolve-after", "5")
        # 32 batches of three synthetic series, 10 ms apart; batch 30 spikes synthetic.latency_ms up to 210,
        # and one normal value follows: the episode is open. (Uniform noise is never 3 stddevs out once the
        # warmup of 20 has settled the statistics: nothing else is flagged.)
        judged = ("-threshold", "3", "-warmup", "20")
        done = go_collector(server.addr, "-synthetic", "-count", "32", "-spike-every", "30", "-interval", "10ms",
                            "-session", "alerts-go", *judged)
        assert done.returncode == 0, done.stderr
        assert "synthetic.latency_ms" in done.stdout  # the collector printed the outlier it was answered

        def spike(status):
            return [a for a in alerts_of(receiver.bodies, status, "synthetic.latency_ms")
                    if a["annotations"]["value"] == "210.0"]

        receiver.wait(lambda b: spike("firing"))
        [firing] = spike("firing")
        assert firing["labels"] == {"alertname": "StreamerOutlier", "series": "synthetic.latency_ms",
                                    "source": "session alerts-go"}
        assert float(firing["annotations"]["zscore"]) > 5 and firing["annotations"]["count"] == "1"
        [held] = [a for a in am.alerts() if a["labels"]["series"] == "synthetic.latency_ms"]
        assert held["status"]["state"] == "active" and held["labels"] == firing["labels"]
        # ten more normal batches in the same session: the fifth normal value resolves the episode
        done = go_collector(server.addr, "-synthetic", "-count", "10", "-spike-every", "0", "-interval", "10ms",
                            "-session", "alerts-go", "-seed", "2", *judged)
        assert done.returncode == 0, done.stderr
        receiver.wait(lambda b: spike("resolved"))
        assert not [a for a in am.alerts() if a["labels"]["series"] == "synthetic.latency_ms"
                    and a["status"]["state"] == "active"]
    finally:
        am.stop()
    assert server.terminate() == 0 and "Traceback" not in "".join(server.log)


def level_shift(n_before: int = 2000, n_shift: int = 600, seed: int = 4):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(9, 11, n_before), rng.uniform(29, 31, n_shift), rng.uniform(9, 11, 20)])


def test_a_level_shift_of_600_values_is_one_alert(cli_server, receiver):
    am = Alertmanager(receiver.url)
    try:
        server = cli_server("--alertmanager", am.url, "--resolve-after", "10")
        values = level_shift()
        with Client(server.addr, timeout=30) as client:
            results = list(client.stream([[("checkout.latency", float(v))] for v in values], session="shift"))
        flagged = sum(len(r.indices) for r in results)
        assert flagged >= 100  # hundreds of flags (cumulative statistics follow the new level slowly)...
        bodies = receiver.wait(lambda b: alerts_of(b, "resolved", "checkout.latency"))
        # ...but one alert: Alertmanager heard of one episode, fired it once and resolved it once
        assert len({a["fingerprint"] for b in bodies for a in b["alerts"]}) == 1
        assert len(alerts_of(bodies, "firing", "checkout.latency")) == 1
        [resolved] = alerts_of(bodies, "resolved", "checkout.latency")
        assert int(resolved["annotations"]["count"]) == flagged
    finally:
        am.stop()


def test_an_alertmanager_down_at_first_gets_the_alert_and_streams_are_answered_meanwhile(cli_server, receiver):
    port = free_port()
    server = cli_server("--alertmanager", f"http://127.0.0.1:{port}", "--resolve-after", "3")
    values = [10.0, 11.0, 9.0, 10.0, 11.0, 9.0, 10.0, 11.0, 9.0, 10.0, 11.0, 90.0]
    with Client(server.addr, timeout=30) as client:
        results = list(client.stream([[("orders.rate", v)] for v in values], session="down-first"))
        assert results[-1].indices == [0]  # the spike is answered while no Alertmanager listens
    am = Alertmanager(receiver.url, port=port)
    try:
        bodies = receiver.wait(lambda b: alerts_of(b, "firing", "orders.rate"))
        assert alerts_of(bodies, "firing", "orders.rate")[0]["labels"]["source"] == "session down-first"
    finally:
        am.stop()
    assert server.terminate() == 0
    assert any("cannot deliver" in line for line in server.log)  # the failure run was logged once
    assert sum("cannot deliver" in line for line in server.log) == 1


def test_watch_delivers_episodes_to_those_who_ask_and_outliers_to_the_rest(make_server):
    from streamer.detector import Defaults
    from streamer.pb import outliers_pb2 as pb
    from test_otlp import Watcher, marker
    server = make_server(defaults=Defaults(episodes=True, resolve_after=3))
    everything, plain = Watcher(server.addr, kinds=pb.WATCH_ALL), Watcher(server.addr)
    try:
        values = [10.0, 11.0, 9.0, 10.0, 11.0, 9.0, 10.0, 11.0, 9.0, 10.0, 11.0, 90.0, 10.0, 11.0, 9.0]
        with Client(server.addr, timeout=30) as client:
            list(client.stream([[("pay.latency", v)] for v in values], session="w1"))
        marker(server.addr)  # a private stream's outlier: after it, everything before has arrived
        got = everything.until(lambda ev: any(e.outlier.series == "zz.marker" for e in ev))
        rest = plain.until(lambda ev: any(e.outlier.series == "zz.marker" for e in ev))
    finally:
        everything.close()
        plain.close()
    episodes = [e.episode for e in got if e.WhichOneof("event") == "episode" and e.episode.series == "pay.latency"]
    assert [e.kind for e in episodes] == [pb.EpisodeEvent.OPENED, pb.EpisodeEvent.RESOLVED]
    opened, resolved = episodes
    assert (opened.source, opened.session, opened.count, opened.value, opened.peak_value) == \
        ("session w1", "w1", 1, 90.0, 90.0)
    assert opened.episode == resolved.episode and opened.id != resolved.id and resolved.value == 9.0
    assert resolved.ended.ToNanoseconds() >= opened.started.ToNanoseconds() > 0
    assert not [e for e in rest if e.WhichOneof("event") == "episode"]
    assert [e.outlier.value for e in rest if e.outlier.series == "pay.latency"] == [90.0]


def test_an_otlp_spike_fires_with_its_attributes_as_labels(cli_server, receiver):
    import grpc
    from test_otlp import EXPORT, gauge, request, svc
    am = Alertmanager(receiver.url)
    try:
        server = cli_server("--alertmanager", am.url, "--resolve-after", "3", "--otlp-warmup", "5")
        with grpc.insecure_channel(server.addr) as ch:
            export = ch.unary_unary(EXPORT, request_serializer=svc.ExportMetricsServiceRequest.SerializeToString,
                                    response_deserializer=svc.ExportMetricsServiceResponse.FromString)
            for i in range(16):
                value = 50.0 + (1 if i % 2 else -1) + (500 if i == 12 else 0)
                export(request(gauge("room.temp", value, i, room="a"), service="spiky"), timeout=30)
        series = 'room.temp{host.name="h1",room="a",service.name="spiky"}'
        bodies = receiver.wait(lambda b: alerts_of(b, "resolved", series))
        alert = alerts_of(bodies, "resolved", series)[0]
        assert alert["labels"] == {"alertname": "StreamerOutlier", "series": series,
                                   "source": 'otlp:{host.name="h1",service.name="spiky"}', "host_name": "h1",
                                   "room": "a", "service_name": "spiky"}
        assert alert["annotations"]["value"] == "549.0"
    finally:
        am.stop()


def test_an_open_episode_outlives_a_restart_and_resolves_after_it(cli_server, tmp_path):
    from streamer.pb import outliers_pb2 as pb
    from test_otlp import Watcher
    store = f"sqlite:///{tmp_path / 'episodes.db'}"
    flags = ("--store", store, "--episodes", "on", "--resolve-after", "3")
    first = cli_server(*flags)
    w = Watcher(first.addr, kinds=pb.WATCH_EPISODES)
    try:
        with Client(first.addr, timeout=30) as client:
            values = [5.0, 6.0, 5.0, 6.0, 5.0, 6.0, 5.0, 6.0, 5.0, 6.0, 5.0, 90.0]
            list(client.stream([[("disk.busy", v)] for v in values], session="r1"))
        [opened] = [e.episode for e in w.until(lambda ev: ev)]
    finally:
        w.close()
    assert opened.kind == pb.EpisodeEvent.OPENED and first.terminate() == 0  # open when the server stops
    second = cli_server(*flags)
    w = Watcher(second.addr, kinds=pb.WATCH_EPISODES)
    try:
        with Client(second.addr, timeout=30) as client:
            list(client.stream([[("disk.busy", v)] for v in [5.0, 6.0, 5.0]], session="r1"))
        [resolved] = [e.episode for e in w.until(lambda ev: ev)]
    finally:
        w.close()
    # the same episode, not a new one: its id, start and count came back with the session's state
    assert resolved.kind == pb.EpisodeEvent.RESOLVED and resolved.episode == opened.episode
    assert resolved.started == opened.started and resolved.count == 1 and resolved.peak_value == 90.0


def test_streamer_watch_prints_episodes(cli_server):
    import subprocess
    import sys
    server = cli_server("--episodes", "on", "--resolve-after", "2")
    watch = subprocess.Popen([sys.executable, "-m", "streamer", "watch", "--addr", server.addr, "--kinds", "all",
                              "--count", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "watching" in watch.stderr.readline()  # the subscription is in place
        with Client(server.addr, timeout=30) as client:
            values = [3.0, 4.0, 3.0, 4.0, 3.0, 4.0, 3.0, 4.0, 3.0, 4.0, 50.0, 3.0, 4.0]
            list(client.stream([[("q.depth", v)] for v in values], session="cli"))
        out, _ = watch.communicate(timeout=60)
    finally:
        watch.kill()
    lines = out.splitlines()
    assert len(lines) == 3 and "q.depth value=50" in lines[0]
    assert " episode opened q.depth count=1 peak=50 " in lines[1] and "(session cli, " in lines[1]
    assert " episode resolved q.depth count=1 " in lines[2]
