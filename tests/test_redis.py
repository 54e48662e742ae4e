"""The Redis store through real processes: a real redis-server, `streamer serve --store redis://...` servers in
their own processes, sessions moving between them, and Redis lost while serving."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import CliServer
from redis_server import RedisServer, _free_port
from test_durable import key
from test_exact import Raw, _stats, batches_for

from streamer.client import Client, ClientError
from streamer.pb import outliers_pb2 as pb


@pytest.fixture
def redis_url():
    server = RedisServer()
    yield server.url, server
    server.stop()


def serve(url, *args) -> CliServer:
    return CliServer("--store", url, "--lease-seconds", "2", "--snapshot-seconds", "0.2", *args)


def stored(url, session):
    out = subprocess.run([sys.executable, "-m", "streamer", "session", "--store", url, session],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_two_servers_on_one_redis_are_one_service(redis_url):
    url, _ = redis_url
    data = batches_for(40, seed=11)
    a, b = serve(url), serve(url)
    try:
        with Client(a.addr) as c:
            holding = Raw(a.addr)  # a stream holds the session on A: B refuses it
            holding.send(pb.OutliersRequest(session="moving"))
            with Client(b.addr) as other, pytest.raises(ClientError) as err:
                list(other.stream([[("x", 1.0)]], session="moving", timeout=30))
            assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
            holding.close()
            first = list(c.session_stream(data[:25], "moving", retries=-1, backoff=(0.02, 0.2)))
        with Client(b.addr) as c:  # the stream on A ended: B continues the session from Redis
            second = list(c.session_stream(data[25:], "moving", retries=-1, backoff=(0.02, 0.2)))
        assert "resumed from the store" in "".join(b.log)
        once = serve(url)
        with Client(once.addr) as c:
            whole = list(c.session_stream(data, "uninterrupted"))
        once.terminate()
        assert key(first + second) == key(whole)
        assert _stats(stored(url, "moving")) == _stats(stored(url, "uninterrupted"))
    finally:
        a.close()
        b.close()


def test_kill_9_of_one_server_moves_its_session_to_the_other_exactly(redis_url):
    """A client given both addresses (grpc's pick_first over A then B) streams on A; A is killed; the client's
    session_stream reconnects to B, which takes the session once A's lease expires, from the last snapshot in
    Redis, and the batches after it are sent again: answers and state equal those of a run without the kill."""
    url, _ = redis_url
    data = batches_for(300, seed=12)
    a, b = serve(url), serve(url)
    got = []
    try:
        with Client(f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}") as c:
            def paced():
                for batch in data:
                    yield batch
                    time.sleep(0.002)
            for r in c.session_stream(paced(), "failover", retries=-1, backoff=(0.02, 0.5)):
                got.append(r)
                if len(got) == 120:
                    a.proc.kill()
        assert "resumed from the store" in "".join(b.log)
        b.terminate()
        once = serve(url)
        with Client(once.addr) as c:
            whole = list(c.session_stream(data, "reference"))
        once.terminate()
    finally:
        a.close()
        b.close()
    assert [r.batch for r in got] == list(range(len(data)))
    assert key(got) == key(whole)
    assert _stats(stored(url, "failover")) == _stats(stored(url, "reference"))


def test_redis_unreachable_at_start_stops_serve_with_one_line():
    port = _free_port()  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "streamer", "serve", "--port", "0", "--store",
                          f"redis://127.0.0.1:{port}/0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("streamer serve: store: redis://127.0.0.1:") and "cannot use it" in lines[-1]
    assert "Traceback" not in out.stderr


def test_redis_lost_while_serving_keeps_streams_judged_and_health_says_so(redis_url):
    url, redis = redis_url
    server = serve(url)
    try:
        channel = grpc.insecure_channel(server.addr)
        health = health_pb2_grpc.HealthStub(channel)

        def status(service):
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

        rng = random.Random(13)
        raw = Raw(server.addr)
        raw.send(pb.OutliersRequest(session="lost"))
        for n in range(1, 21):
            raw.send(pb.OutliersRequest(seq=n, metrics=[pb.Metric(name="x", value=rng.gauss(10, 1))]))
        assert status("streamer.store") == health_pb2.HealthCheckResponse.SERVING
        redis.proc.kill()
        redis.proc.wait()
        deadline = time.monotonic() + 60
        n = 20
        while status("streamer.store") != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "the store's health never turned NOT_SERVING"
            n += 1
            answer = raw.send(pb.OutliersRequest(seq=n, metrics=[pb.Metric(name="x", value=rng.gauss(10, 1))]))
            assert answer.applied_seq == n
        spike = raw.send(pb.OutliersRequest(seq=n + 1, metrics=[pb.Metric(name="x", value=1000.0)]))
        assert list(spike.indices) == [0] and spike.applied_seq == n + 1  # judged from memory
        assert spike.durable_seq < n + 1  # and not durable: the client keeps its batches
        assert status("") == health_pb2.HealthCheckResponse.SERVING  # the service as a whole still serves
        raw.close()
        channel.close()
        assert "store:" in "".join(server.log)
    finally:
        server.close()


def test_a_schema_2_store_is_moved_to_the_current_schema(redis_url):
    import redis

    from streamer.store.base import SCHEMA_VERSION
    from streamer.store.redis import _META, RedisStore
    url, _ = redis_url
    r = redis.Redis.from_url(url)
    r.hset(_META, "schema_version", "2")  # as a schema-2 streamer left it
    RedisStore(url).close()
    assert int(r.hget(_META, "schema_version")) == SCHEMA_VERSION == 3
