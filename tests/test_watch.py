"""Watch: outliers of DetectStreams reach subscribers as they are found, filtered by session and prefix; a
slow subscriber's queue is bounded and what it missed is told to it; shutdown ends the stream."""
from __future__ import annotations

import asyncio
import pathlib
import re
import subprocess
import sys
import threading

import grpc
import pytest

from streamer.client import Client, ClientError
from streamer.pb import outliers_pb2 as pb
from streamer.watch import Event, Hub

NORMAL = [10.0, 11.0] * 6


def spike(addr, name, value=100.0, session=""):
    with Client(addr) as c:
        return list(c.stream([[(name, x) for x in NORMAL + [value]]], session=session))


def collect(watch, out, done, last):
    for e in watch:
        out.append(e.outlier.series)
        if e.outlier.series == last:
            break
    done.set()


def test_watch_sees_stream_and_session_outliers_filtered_by_session_and_prefix(server):
    with Client(server.addr) as c:
        watches = {"all": (c.watch(), "end"), "s1": (c.watch(session="s1"), "end"),
                   "cpu": (c.watch(prefix="cpu."), "cpu.end")}
        got = {k: [] for k in watches}
        done = {k: threading.Event() for k in watches}
        first = []
        for key, (w, last) in watches.items():
            threading.Thread(target=collect, args=(w, got[key], done[key], last), daemon=True).start()
        with Client(server.addr) as probe:  # one more subscriber, keeping whole events
            whole = probe.watch(session="s1")
            assert spike(server.addr, "cpu.user", session="s1")[0].indices == [12]
            first = next(iter(whole)).outlier
            whole.cancel()
        spike(server.addr, "mem.used", value=-50.0)
        spike(server.addr, "cpu.idle", value=70.0, session="s2")
        spike(server.addr, "cpu.end")
        spike(server.addr, "end", session="s1")
        for key in watches:
            assert done[key].wait(30), got
        for w, _ in watches.values():
            w.cancel()
    assert got == {"all": ["cpu.user", "mem.used", "cpu.idle", "cpu.end", "end"], "s1": ["cpu.user", "end"],
                   "cpu": ["cpu.user", "cpu.idle", "cpu.end"]}
    assert (first.series, first.value, first.mean, first.stddev, first.zscore) == ("cpu.user", 100.0, 10.5, 0.5,
                                                                                   179.0)
    assert first.origin == pb.ORIGIN_STREAM and first.session == "s1" and first.time.seconds > 1_700_000_000


def test_a_slow_subscriber_is_told_what_it_missed_and_detection_goes_on():
    async def run():
        hub = Hub()
        hub.start(asyncio.get_running_loop())
        assert not hub.active
        sub = hub.subscribe(limit=3)
        assert hub.active
        events = [Event(f"s{i}", float(i), 1, 0.0, 1.0, float(i), pb.ORIGIN_STREAM, "") for i in range(10)]
        hub.publish(events)   # 3 queued, 7 missed
        stream = sub.messages()
        out = [pb.WatchEvent.FromString(await stream.__anext__()) for _ in range(2)]
        hub.publish(events[:2])  # room for 2 again: the notice of 7 first, where the gap is, then s0; s1 missed
        out += [pb.WatchEvent.FromString(await stream.__anext__()) for _ in range(4)]
        hub.publish(events[:1])
        out.append(pb.WatchEvent.FromString(await stream.__anext__()))
        hub.unsubscribe(sub)
        assert not hub.active
        return out

    out = asyncio.run(run())
    assert [e.WhichOneof("event") for e in out] == ["outlier"] * 3 + ["dropped", "outlier", "dropped", "outlier"]
    assert [e.outlier.series for e in out if e.HasField("outlier")] == ["s0", "s1", "s2", "s0", "s0"]
    assert [(e.dropped.count, e.dropped.total) for e in out if e.HasField("dropped")] == [(7, 7), (1, 8)]


def test_watch_rejects_bad_requests_and_ends_with_unavailable_on_shutdown(make_server):
    server = make_server()
    with grpc.insecure_channel(server.addr) as ch:
        raw = ch.unary_stream("/pb.Outliers/Watch")
        with pytest.raises(grpc.RpcError) as err:
            list(raw(b"\x0a\x05ab", timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with Client(server.addr) as c:
        watch = c.watch()
        spike(server.addr, "before.stop")
        server.stop(grace=1)
        with pytest.raises(ClientError) as stopped:
            list(watch)
        assert stopped.value.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in stopped.value.details


def test_streamer_watch_cli_prints_the_outliers(server):
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "watch", "--addr", server.addr, "--count", "1",
                             "--prefix", "cli.", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stderr.readline().startswith("watching ")  # subscribed
        spike(server.addr, "other.series")
        spike(server.addr, "cli.spiky", value=99.0, session="cli")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    line = __import__("json").loads(out)
    assert (line["series"], line["value"], line["origin"], line["session"]) == ("cli.spiky", 99.0, "stream", "cli")


def test_the_readme_watch_example_runs_and_prints_its_comment(server):
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "client.watch(" in b)
    proc = subprocess.Popen([sys.executable, "-c", code.replace("localhost:9999", server.addr)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        hub = server.server.service.hub
        for _ in range(600):  # until it has subscribed (it has no other way to say so)
            if len(hub) or proc.poll() is not None:
                break
            threading.Event().wait(0.1)
        spike(server.addr, "other")
        spike(server.addr, "orders.eu", value=99.0)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == [re.search(r"print\(o.series.*#\s*(.*)", code).group(1).strip()]


def test_watch_and_export_are_counted_by_the_metrics_interceptor(make_server):
    import urllib.request

    from test_otlp import EXPORT, gauge, request
    from test_otlp_sdk import free_port
    port = free_port()
    server = make_server(metrics_port=port)
    with Client(server.addr) as c:
        watch = c.watch(prefix="counted")
        with grpc.insecure_channel(server.addr) as ch:
            export = ch.unary_unary(EXPORT, request_serializer=lambda r: r.SerializeToString())
            for i in range(12):
                export(request(gauge("counted", 1.0 + i % 2 + (50 if i == 11 else 0), i), service="m"), timeout=30)
        first = next(iter(watch))
        watch.cancel()
    assert first.outlier.value == 52.0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    export_line = ('grpc_server_handled_total{grpc_code="OK",grpc_method="Export",'
                   'grpc_service="opentelemetry.proto.collector.metrics.v1.MetricsService",grpc_type="UNARY"} 12.0')
    assert export_line in text
    watch_line = ('grpc_server_started_total{grpc_method="Watch",grpc_service="pb.Outliers",'
                  'grpc_type="SERVER_STREAMING"}')
    assert watch_line + " 1.0" in text
    assert 'streamer_metrics_judged_total{rpc="Export"} 12.0' in text


def test_the_worker_bus_carries_outliers_between_workers_and_counts_what_it_lost(tmp_path):
    """Two workers' buses in one process (as two forked workers have them): events reach the other worker's
    subscriber only while it has one, and what a missing socket lost is told there as Dropped."""
    from streamer.bus import WorkerBus

    async def run():
        loop = asyncio.get_running_loop()
        page = WorkerBus.page(2)
        buses = [WorkerBus(i, 2, str(tmp_path), page) for i in range(2)]
        hubs = [Hub(b) for b in buses]
        for h in hubs:
            h.start(loop)
        ev = [Event(f"w0.s{i}", float(i), 1, 0.0, 1.0, 1.0, pb.ORIGIN_STREAM, "") for i in range(3)]
        assert buses[0]._count_remote() == 0
        hubs[0].publish(ev)  # nobody watches in worker 1: nothing is sent
        sub = hubs[1].subscribe()
        assert buses[0]._count_remote() == 1
        stream = sub.messages()
        hubs[0].publish(ev[:1])
        first = pb.WatchEvent.FromString(await asyncio.wait_for(stream.__anext__(), 10))
        buses[1].close()  # worker 1 died, its socket with it; the next one has not started yet
        (tmp_path / "w1.sock").unlink()
        buses[1].local_watchers(1)  # (its slot still said it had a subscriber)
        hubs[0].publish(ev)         # lost: 3
        buses[1].start(hubs[1])     # the new worker: its socket, its slot reset; a subscriber again
        buses[1].local_watchers(1)
        hubs[0].publish(ev[2:])
        rest = [pb.WatchEvent.FromString(await asyncio.wait_for(stream.__anext__(), 10)) for _ in range(2)]
        for h in hubs:
            h.close()
        return first, rest

    first, rest = asyncio.run(run())
    assert first.outlier.series == "w0.s0"
    assert (rest[0].dropped.count, rest[0].dropped.total) == (3, 3)
    assert rest[1].outlier.series == "w0.s2"
