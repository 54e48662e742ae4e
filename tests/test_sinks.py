"""The alert sinks against real receivers: a real Alertmanager (its API and the webhook it routes to), one that
is down at first, and a webhook that fails its first posts."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from streamer.sinks import OPENED, RELEASED, RESOLVED, UPDATED, AlertmanagerSink, EpisodeEvent, WebhookSink
from streamer.sinks.episode import label_name, labels
from streamer.sinks.http import SinkMetrics
from alertmanager_server import Alertmanager, Receiver, free_port

FAST = (0.05, 0.5)  # backoff: first retry, longest wait


def event(kind=OPENED, seq=0, episode="e1", series="latency_ms", count=1, z=6.0, **kw) -> EpisodeEvent:
    fields = dict(kind=kind, episode=episode, seq=seq, series=series, source="session checkout",
                  started_ns=1_764_590_400_000_000_000, count=count, value=50.0, mean=10.0, stddev=2.0, zscore=z,
                  peak_value=50.0, peak_zscore=z)
    fields.update(kw)
    return EpisodeEvent(**fields)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def notifications(bodies, status):
    return [a for b in bodies for a in b["alerts"] if b["status"] == status or a["status"] == status]


def test_label_names_are_sanitized_and_a_collision_keeps_the_first():
    assert [label_name(n) for n in ("host.name", "k8s.pod.name", "9lives", "ok_1", "")] == \
        ["host_name", "k8s_pod_name", "_9lives", "ok_1", "_"]
    lab, collisions = labels(event(attributes=(("host.name", "a"), ("host_name", "b"), ("series", "x"))))
    assert lab == {"alertname": "StreamerOutlier", "series": "latency_ms", "source": "session checkout",
                   "host_name": "a"} and collisions == 2
    lab, _ = labels(event(rule="latency", attributes=(("rule", "x"),)))  # the config file's rule that judged it
    assert lab["rule"] == "latency" and event(rule="latency").as_json()["rule"] == "latency"


def test_an_episode_fires_in_alertmanager_and_resolves(receiver):
    am = Alertmanager(receiver.url)
    metrics = SinkMetrics()
    sink = AlertmanagerSink(am.url, metrics, resend_seconds=60, backoff=FAST)
    sink.start()
    try:
        attributes = (("host.name", "web-1"), ("state", "user"))
        sink.submit(event(attributes=attributes))
        firing = receiver.wait(lambda b: notifications(b, "firing"))
        alert = notifications(firing, "firing")[0]
        assert alert["labels"] == {"alertname": "StreamerOutlier", "series": "latency_ms",
                                   "source": "session checkout", "host_name": "web-1", "state": "user"}
        assert alert["annotations"]["zscore"] == "6.0" and alert["annotations"]["value"] == "50.0"
        assert alert["startsAt"].startswith("2025-12-01T12:00:00")
        [held] = [a for a in am.alerts() if a["labels"]["series"] == "latency_ms"]
        assert held["status"]["state"] == "active"
        sink.submit(event(UPDATED, 1, count=3, z=9.0, peak_zscore=9.0, attributes=attributes))
        sink.submit(event(RESOLVED, 2, count=3, ended_ns=1_764_590_460_000_000_000, attributes=attributes))
        resolved = receiver.wait(lambda b: notifications(b, "resolved"))
        assert notifications(resolved, "resolved")[0]["labels"]["series"] == "latency_ms"
        # one alert all along: Alertmanager told its receiver of it once firing and once resolved
        assert len({a["fingerprint"] for b in resolved for a in b["alerts"]}) == 1
    finally:
        sink.close()
        am.stop()


def test_open_episodes_are_resent_with_ends_at_ahead(receiver):
    am = Alertmanager(receiver.url)
    sink = AlertmanagerSink(am.url, resend_seconds=0.5, backoff=FAST)
    sink.start()
    delivered = sink.metrics.events.labels("alertmanager", am.url)._value.get
    try:
        for i in range(4):  # an episode that goes on (an update now and then) is re-sent between its events
            sink.submit(event(UPDATED if i else OPENED, i, count=i + 1))
            deadline = time.monotonic() + 30
            while delivered() < 2 * (i + 1):  # its event, then a re-send
                assert time.monotonic() < deadline, "the open alert was not re-sent"
                time.sleep(0.02)
        [held] = am.alerts()
        assert held["status"]["state"] == "active" and held["annotations"]["count"] == "4"
        # another episode whose session this process gave up: no longer re-sent (its next owner sends it)
        sink.submit(event(episode="e2", series="other", source="session moved"))
        sink.submit(EpisodeEvent(RELEASED, "", 0, "", "session moved", 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
        deadline = time.monotonic() + 30
        while "e2" in sink._open or "e1" not in sink._open:  # (e2 posted once, then no longer held)
            assert time.monotonic() < deadline, "the released episode is still re-sent"
            time.sleep(0.02)
    finally:
        sink.close()
        am.stop()


def test_an_alertmanager_that_is_down_at_first_gets_the_alert_when_it_comes_up(receiver):
    port = free_port()
    sink = AlertmanagerSink(f"http://127.0.0.1:{port}", resend_seconds=60, backoff=FAST)
    sink.start()
    am = None
    try:
        sink.submit(event())
        deadline = time.monotonic() + 30
        while sink.metrics.posts.labels("alertmanager", sink.url, "error")._value.get() < 2:
            assert time.monotonic() < deadline, "the sink did not retry"
            time.sleep(0.02)
        am = Alertmanager(receiver.url, port=port)
        receiver.wait(lambda b: notifications(b, "firing"))
        assert [a["labels"]["series"] for a in am.alerts()] == ["latency_ms"]
    finally:
        sink.close()
        if am:
            am.stop()


def test_a_webhook_that_fails_its_first_posts_gets_every_event_once_in_order():
    hook = Receiver(fail_first=3)
    sink = WebhookSink(hook.url, headers={"Authorization": "Bearer s3cret"}, backoff=FAST)
    sink.start()
    try:
        sent = []
        for i in range(5):  # five episodes: opened, updated, resolved each
            for seq, kind in enumerate((OPENED, UPDATED, RESOLVED)):
                sent.append(event(kind, seq, episode=f"e{i}", series=f"s{i}"))
        for e in sent:
            assert sink.submit(e)
        bodies = hook.wait(lambda b: sum(len(x["events"]) for x in b) >= len(sent))
        got = [e["id"] for b in bodies for e in b["events"]]
        assert hook.failed == 3 and got == [e.id for e in sent]
        assert all(b["version"] == 1 for b in bodies)
        assert hook.headers[0]["Authorization"] == "Bearer s3cret"
        first = bodies[0]["events"][0]
        assert first == {"id": "e0-0", "kind": "opened", "episode": "e0", "series": "s0",
                         "source": "session checkout", "started": "2025-12-01T12:00:00.000000Z", "ended": None,
                         "count": 1, "value": 50.0, "mean": 10.0, "stddev": 2.0, "zscore": 6.0,
                         "peak_value": 50.0, "peak_zscore": 6.0, "attributes": {}, "rule": ""}
    finally:
        sink.close()
        hook.close()


def test_a_full_queue_drops_and_counts_and_never_blocks():
    sink = WebhookSink(f"http://127.0.0.1:{free_port()}/", queue_limit=2, backoff=FAST)  # not started
    assert [sink.submit(event(seq=i)) for i in range(4)] == [True, True, False, False]
    assert sink.metrics.dropped.labels("webhook", sink.url)._value.get() == 2


@pytest.mark.parametrize("flags, words", [
    (["--alertmanager", "alertmanager:9093"], "argument --alertmanager: must be an http:// or https:// URL with a "
                                              "host, got 'alertmanager:9093'"),
    (["--webhook", "http://"], "argument --webhook: must be an http:// or https:// URL with a host, got 'http://'"),
    (["--webhook-ca", "/nonexistent/ca.pem"], "argument --webhook-ca: cannot load CA certificates from "
                                              "/nonexistent/ca.pem: No such file or directory"),
    (["--webhook-header", "Authorization=env:STREAMER_TEST_UNSET_TOKEN"],
     "argument --webhook-header: header Authorization names the environment variable STREAMER_TEST_UNSET_TOKEN, "
     "which is not set"),
])
def test_bad_sink_flags_stop_serve_at_start_in_one_line(flags, words):
    out = subprocess.run([sys.executable, "-m", "streamer", "serve", "--port", "0", "--store", "memory://", *flags],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr == f"streamer serve: error: {words} (see streamer serve --help)\n"
