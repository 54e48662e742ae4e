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
