"""The admin API on a real `streamer serve` (its own process, a SQLite store in a temporary directory), driven by
`streamer admin` in processes of its own and by grpcurl through reflection: list, show, reset and delete."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from test_reflection import grpcurl  # noqa: F401 (the fixture: bin/grpcurl at the Makefile's pin)

from streamer.client import Client
from streamer.pb import admin_pb2, admin_pb2_grpc


def admin(addr: str, *args: str, ok: bool | None = True) -> subprocess.CompletedProcess:
    """`streamer admin COMMAND ... --addr ADDR`, its own process (`ok`: whether it must succeed; None: either)."""
    command, rest = args[0], args[1:]
    out = subprocess.run([sys.executable, "-m", "streamer", "admin", command, "--addr", addr, *rest],
                         capture_output=True, text=True, timeout=60)
    assert ok is None or (out.returncode == 0) == ok, out.stdout + out.stderr
    return out


def as_json(addr: str, *args: str) -> dict:
    return json.loads(admin(addr, *args, "--json").stdout)


@pytest.fixture
def server(cli_server, tmp_path):
    return cli_server("--store", f"sqlite:///{tmp_path}/state.db", "--lease-seconds", "3")


def stream(addr: str, session: str, batches) -> list:
    with Client(addr, timeout=30) as client:
        return list(client.stream(batches, session=session, timeout=30))


def test_the_admin_cli_lists_shows_resets_deletes_and_reloads(server, tmp_path):
    rng = np.random.default_rng(22)
    cpu, mem = rng.normal(50, 5, 40), rng.normal(10, 1, 40)
    stream(server.addr, "alpha", [[("cpu", float(c)), ("mem", float(m))] for c, m in zip(cpu, mem)])
    stream(server.addr, "beta", [[("disk", 1.0)], [("disk", 2.0)]])

    listed = as_json(server.addr, "sessions")
    by_name = {s["name"]: s for s in listed["sessions"]}
    assert sorted(by_name) == ["alpha", "beta"]
    assert by_name["alpha"]["series"] == "2" and by_name["alpha"]["kind"] == "SESSION_KIND_STREAM"
    assert by_name["alpha"]["held_here"] and not by_name["alpha"]["open_here"]
    assert int(by_name["alpha"]["version"]) >= 1  # written to the store when its stream ended
    table = admin(server.addr, "sessions").stdout
    assert table.splitlines()[0].split()[:4] == ["NAME", "KIND", "TENANT", "SERIES"] and "2 session(s)" in table

    got = as_json(server.addr, "series", "alpha", "cpu")
    assert int(got["count"]) == 40 and got["mode"] == "MODE_CUMULATIVE" and got["source"] == "memory"
    assert got["mean"] == pytest.approx(cpu.mean(), rel=1e-12)
    assert got["stddev"] == pytest.approx(cpu.std(), rel=1e-9)  # the population stddev a value is judged by
    missing = admin(server.addr, "series", "alpha", "nope", ok=False)
    assert "NOT_FOUND" in missing.stderr and "'nope'" in missing.stderr and "'alpha'" in missing.stderr

    assert "1 series reset" in admin(server.addr, "reset", "alpha", "cpu").stdout
    assert "NOT_FOUND" in admin(server.addr, "series", "alpha", "cpu", ok=False).stderr
    assert int(as_json(server.addr, "series", "alpha", "mem")["count"]) == 40  # the other series kept its state
    # the reset series starts afresh: its next values warm it up again
    stream(server.addr, "alpha", [[("cpu", 1.0)], [("cpu", 3.0)]])
    again = as_json(server.addr, "series", "alpha", "cpu")
    assert int(again["count"]) == 2 and again["mean"] == 2.0
    assert as_json(server.addr, "reset", "alpha")["series_reset"] == "2"
    assert as_json(server.addr, "sessions")["sessions"][0]["series"] == "0"

    assert "deleted" in admin(server.addr, "delete", "alpha").stdout
    assert [s["name"] for s in as_json(server.addr, "sessions")["sessions"]] == ["beta"]
    gone = admin(server.addr, "series", "alpha", "mem", ok=False)
    assert "NOT_FOUND" in gone.stderr and "no session 'alpha'" in gone.stderr
    assert "NOT_FOUND" in admin(server.addr, "delete", "alpha", ok=False).stderr
    # and the store no longer holds it (read by `streamer session`, which opens the file itself)
    out = subprocess.run([sys.executable, "-m", "streamer", "session", "alpha", "--store",
                          f"sqlite:///{tmp_path}/state.db"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "holds no session 'alpha'" in out.stderr
    # Reload calls the server's reload(): this server has no --config, so it is refused with the reason
    # (a reload that applies is in tests/test_reload.py)
    out = admin(server.addr, "reload", ok=None)
    assert out.returncode == 1 and "FAILED_PRECONDITION" in out.stderr and "without --config" in out.stderr, \
        out.stderr
    assert server.terminate() == 0
    assert "Traceback" not in "".join(server.log)


def test_a_session_open_on_a_stream_is_reset_in_place_and_not_deleted(server):
    """While a stream has the session open: ResetSession changes it between two batches (the stream goes on
    from empty series) and DeleteSession is FAILED_PRECONDITION naming the lease holder (this process)."""
    release, first = threading.Event(), threading.Event()
    results = []

    def batches():
        for i in range(30):
            yield [("cpu", float(i % 5))]
        first.set()
        release.wait(60)
        yield [("cpu", 100.0)]

    def run():
        results.extend(stream(server.addr, "open", batches()))
    t = threading.Thread(target=run)
    t.start()
    try:
        assert first.wait(60)
        # the 30 batches are answered once the sessions listing says 1 series with 30 values
        for _ in range(100):
            info = as_json(server.addr, "series", "open", "cpu")
            if int(info["count"]) == 30:
                break
        listed = as_json(server.addr, "sessions")
        assert listed["sessions"][0]["open_here"] and listed["sessions"][0]["lease_owner"] == listed["process"]
        refused = admin(server.addr, "delete", "open", ok=False)
        assert "FAILED_PRECONDITION" in refused.stderr and listed["process"] in refused.stderr
        reset = as_json(server.addr, "reset", "open")
        assert reset == {"series_reset": "1", "how": "in place"}
    finally:
        release.set()
        t.join(60)
    # the value after the reset is the first of a new series: not judged (warm-up), where it would have been
    # flagged against the 30 values before
    assert len(results) == 31 and results[-1].indices == []
    assert int(as_json(server.addr, "series", "open", "cpu")["count"]) == 1
    assert server.terminate() == 0


def test_grpcurl_lists_the_admin_service_and_calls_list_sessions(grpcurl, server):  # noqa: F811
    stream(server.addr, "gamma", [[("x", 1.0)], [("x", 2.0)], [("y", 3.0)]])
    listed = subprocess.run([grpcurl, "-plaintext", server.addr, "list"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "streamer.admin.v1.Admin" in listed.stdout.split()
    described = subprocess.run([grpcurl, "-plaintext", server.addr, "describe", "streamer.admin.v1.Admin"],
                               capture_output=True, text=True, timeout=60)
    assert "rpc DeleteSession ( .streamer.admin.v1.DeleteSessionRequest )" in described.stdout
    out = subprocess.run([grpcurl, "-plaintext", "-d", '{"prefix": "gam"}', server.addr,
                          "streamer.admin.v1.Admin/ListSessions"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    sessions = json.loads(out.stdout)["sessions"]
    assert [(s["name"], s["series"]) for s in sessions] == [("gamma", "2")]
    bad = subprocess.run([grpcurl, "-plaintext", "-d", '{"session": "gamma", "series": "zzz"}', server.addr,
                          "streamer.admin.v1.Admin/GetSeries"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "NotFound" in bad.stderr and "'zzz'" in bad.stderr


def fresh_call(addr: str, method: str, request):
    """One admin call on a connection of its own (so with --workers N, any worker may answer it)."""
    with grpc.insecure_channel(addr) as channel:
        return getattr(admin_pb2_grpc.AdminStub(channel), method)(request, timeout=30)


def test_with_workers_every_call_sees_every_workers_sessions_and_a_delete_holds_everywhere(cli_server, tmp_path):
    """--workers 2 on one SQLite file: a connection lands on either worker. ListSessions reads the store, so
    every call lists every session whichever worker answers; a session deleted through one worker starts afresh
    on the other too (its copy in memory gives way to the store, which has it no more)."""
    s = cli_server("--workers", "2", "--store", f"sqlite:///{tmp_path}/state.db", "--lease-seconds", "3")
    names = [f"w{i}" for i in range(6)]
    for name in names:  # a connection each: spread over the workers
        stream(s.addr, name, [[("x", 1.0)], [("x", 2.0)], [("x", 3.0)]])
    processes = set()
    for _ in range(6):
        listed = fresh_call(s.addr, "ListSessions", admin_pb2.ListSessionsRequest())
        assert [(x.name, x.series) for x in listed.sessions] == [(n, 1) for n in names]
        processes.add(listed.process)
    fresh_call(s.addr, "DeleteSession", admin_pb2.DeleteSessionRequest(session="w0"))
    for _ in range(4):
        stream(s.addr, "w0", [[("x", 10.0)]])  # on any worker: a new session, one value
        got = fresh_call(s.addr, "GetSeries", admin_pb2.GetSeriesRequest(session="w0", series="x"))
        assert (got.count, got.mean) == (1, 10.0)
        fresh_call(s.addr, "DeleteSession", admin_pb2.DeleteSessionRequest(session="w0"))
    assert [x.name for x in fresh_call(s.addr, "ListSessions", admin_pb2.ListSessionsRequest()).sessions] == names[1:]
    assert s.terminate() == 0
    print(f"admin calls answered by {len(processes)} of 2 workers")
