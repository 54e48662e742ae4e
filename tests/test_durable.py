"""Durable sessions through the real CLI: `streamer serve --store sqlite:///...` in its own process, restarted,
killed, shared by two processes, refused bad stores, expiring idle sessions."""
from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import CliServer
from test_store import make_read_only, writable
from test_stream import assert_matches, random_batches, reference

from streamer.client import Client, ClientError
from streamer.store import SCHEMA_VERSION
from streamer.store.sqlite import SQLiteStore

LEASE = 2.0  # seconds (shared/DECISIONS.md: tests use 2-3 s leases)


def serve(db, *args) -> CliServer:
    return CliServer("--store", f"sqlite:///{db}", "--lease-seconds", str(LEASE), "--snapshot-seconds", "0.2",
                     *args)


def key(results):
    """Everything an answer says, bit for bit."""
    return [(r.indices, [(o.name, o.value, o.mean, o.stddev, o.zscore) for o in r.outliers]) for r in results]


def stream(server, batches, session, **kw):
    with Client(server.addr) as client:
        return list(client.stream(batches, session=session, timeout=60, **kw))


def uninterrupted(batches):
    """The answers of one stream over all the batches, on a server that is never stopped."""
    server = CliServer()
    try:
        return stream(server, batches, "once")
    finally:
        server.terminate()


def test_sigterm_and_restart_mid_session_changes_no_answer(tmp_path):
    db = tmp_path / "state" / "streamer.db"
    batches = random_batches(41, n_batches=12)
    a = serve(db)
    first = stream(a, batches[:7], "host-1")
    assert a.terminate() == 0
    b = serve(db)
    second = stream(b, batches[7:], "host-1")
    assert b.terminate() == 0
    assert "resumed from the store" in "".join(b.log)
    expected = reference(batches)
    assert sum(len(e[0]) for e in expected[7:]) > 3, "the resumed part must flag outliers to mean anything"
    assert_matches(first, expected[:7])
    second_expected = expected[7:]
    for n, r in enumerate(second):  # batch numbers restart with the new stream
        assert r.batch == n
    assert [r.indices for r in second] == [e[0] for e in second_expected]
    np.testing.assert_allclose([o.zscore for r in second for o in r.outliers],
                               [z for e in second_expected for z in e[3]], rtol=1e-12)
    assert key(first + second) == key(uninterrupted(batches))  # exactly: the snapshot is the state's bytes


PROBE = 1e12  # a value every series flags with a tiny threshold: its answer shows the series' mean and stddev


def probe(server, session, names):
    """The state of each series of the session, read from outside: (mean, stddev) by name."""
    with Client(server.addr) as client:
        [r] = client.stream([[(n, PROBE) for n in names]], session=session, timeout=60,
                            options=_tiny_threshold())
    return {o.name: (o.mean, o.stddev) for o in r.outliers}


def _tiny_threshold():
    from streamer.client import make_options
    return make_options(threshold=1e-300, warmup=2)


def state_after(batches, j, names):
    """(mean, stddev) by name after the first j batches, from the naive reference (None if a name is new),
    and how many values the series had taken in by then."""
    state: dict = {}
    reference(batches[:j], state=state)
    slots = state.get("slots", {})
    if any(n not in slots for n in names):
        return None, 0
    series = [state["series"][slots[n]] for n in names]
    out = {n: (s.mean, (s.spread / s.n) ** 0.5) for n, s in zip(names, series)}
    return out, sum(s.n for s in state["series"])


def test_kill_9_mid_stream_resumes_from_a_whole_batch_at_or_after_the_last_snapshot(tmp_path):
    db = tmp_path / "state" / "streamer.db"
    batches = random_batches(43, n_batches=40, size=100)
    names = sorted({n for b in batches[:2] for n, _ in b})
    a = serve(db, "--log-level", "debug")
    sent = 0
    with Client(a.addr) as client:
        def paced():
            nonlocal sent
            for batch in batches:
                yield batch
                sent += 1
                time.sleep(0.02)
        for r in client.stream(paced(), session="host-9", timeout=60):
            if r.batch == 30:
                a.proc.kill()  # SIGKILL: no shutdown, no last snapshot
                break
    a.proc.wait(10)
    logged = [int(v) for v in re.findall(r"session 'host-9': snapshot version \d+: \d+ series, (\d+) values",
                                         "".join(a.log))]
    assert logged, "the server logged no snapshot before it was killed"
    b = serve(db)
    try:
        deadline = time.monotonic() + 10 * LEASE
        while True:  # the dead server's lease must expire first
            try:
                state = probe(b, "host-9", names)
                break
            except ClientError as exc:
                assert exc.code.name == "ALREADY_EXISTS" and time.monotonic() < deadline, exc
                time.sleep(0.2)
    finally:
        assert b.terminate() == 0
    after = [state_after(batches, j, names) for j in range(sent + 1)]
    # exactly the state after one whole batch j (never part of one) ...
    matches = [j for j, (s, _) in enumerate(after) if s == state]
    assert len(matches) == 1, matches
    # ... at or after the last snapshot the server logged (which holds as many values as after batch j_snap)
    j_snap = [j for j, (_, values) in enumerate(after) if values == logged[-1]]
    assert len(j_snap) == 1 and j_snap[0] <= matches[0] <= sent, (j_snap, matches, sent)


def test_a_second_process_on_the_same_file_waits_for_the_lease(tmp_path):
    db = tmp_path / "shared.db"
    a, b = serve(db), serve(db)
    batches = random_batches(47, n_batches=3)
    try:
        with Client(a.addr) as ca, Client(b.addr) as cb:
            gate = __import__("threading").Event()

            def held():
                yield batches[0]
                gate.wait(30)
            answers = ca.stream(held(), session="shared", timeout=60)
            next(answers)  # a holds the session now
            with pytest.raises(ClientError) as err:
                list(cb.stream(batches[1:2], session="shared", timeout=30))
            assert err.value.code.name == "ALREADY_EXISTS" and "another server process" in str(err.value)
            gate.set()
            assert list(answers) == []
            # a's stream ended OK, so its snapshot is written and its lease released: b takes it at once
            resumed = list(cb.stream(batches[1:], session="shared", timeout=30))
        expected = reference(batches)
        assert [r.indices for r in resumed] == [e[0] for e in expected[1:]]  # b continued a's baselines
    finally:
        assert a.terminate() == 0 and b.terminate() == 0


def test_a_stream_ends_ok_only_once_its_session_is_in_the_store(tmp_path):
    """The status of a half-closed stream goes out after the session's snapshot is written: whatever the client
    does next (another worker, another replica, the admin API) sees the stream's state. Here the test holds the
    SQLite file's write lock as the stream ends: the stream waits for it."""
    db = tmp_path / "state.db"
    s = serve(db, "--snapshot-seconds", "600")
    answered, locked, ended = threading.Semaphore(0), threading.Event(), threading.Event()
    got = []

    def batches():
        yield [("x", 1.0)]
        yield [("x", 3.0)]
        locked.wait(30)

    def run():
        with Client(s.addr) as client:
            for r in client.stream(batches(), session="held", timeout=60):
                got.append(r)
                answered.release()
        ended.set()
    caller = threading.Thread(target=run, daemon=True)
    try:
        caller.start()
        assert answered.acquire(timeout=60) and answered.acquire(timeout=60)
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        locked.set()  # the client half-closes; the server's snapshot waits for the lock
        assert not ended.wait(1.0), "the stream ended before its session was written"
        lock.execute("ROLLBACK")
        lock.close()
        assert ended.wait(60)
        caller.join(10)
        snap = SQLiteStore(str(db)).load("held")  # read at once: no waiting, no retry
        assert snap is not None and int(snap.arrays["count"].sum()) == 2 and len(got) == 2
    finally:
        locked.set()
        assert s.terminate() == 0


def start_fails(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer", "serve", "--host", "127.0.0.1", "--port", "0",
                           "--metrics-port", "0", "--otlp-port", "0", "--http-port", "0", *args],
                          capture_output=True, text=True, timeout=120)


def test_bad_stores_stop_serve_at_start_with_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database, just bytes " * 200)
    newer = tmp_path / "newer.db"
    SQLiteStore(str(newer)).close()
    with sqlite3.connect(newer) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    ro = tmp_path / "ro"
    ro.mkdir()
    make_read_only(ro)
    try:
        cases = {f"sqlite:///{corrupt}": "cannot use it as a store",
                 f"sqlite:///{newer}": "newer streamer",
                 f"sqlite:///{ro}/state/s.db": "cannot open",
                 "redis-ish://x": "unknown store"}
        for url, words in cases.items():
            out = start_fails("--store", url)
            assert out.returncode != 0, url
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and words in lines[0] and "store" in lines[0], (url, out.stderr)
            assert "ready" not in out.stderr and "Traceback" not in out.stderr
    finally:
        writable(ro)


def test_an_idle_session_expires_from_the_store(tmp_path):
    db = tmp_path / "ttl.db"
    a = serve(db, "--session-ttl", "0.5")
    try:
        stream(a, random_batches(53, n_batches=2), "brief")
        with sqlite3.connect(db) as conn:
            rows = lambda: conn.execute("SELECT count(*) FROM sessions WHERE name='brief'").fetchone()[0]  # noqa
            deadline = time.monotonic() + 10
            while rows() == 0 and time.monotonic() < deadline:  # written when the stream ended
                time.sleep(0.05)
            assert rows() == 1
            while rows() == 1 and time.monotonic() < deadline + 20:
                time.sleep(0.1)
            assert rows() == 0
    finally:
        assert a.terminate() == 0
    assert "dropped 1 idle session" in "".join(a.log)


def test_make_serve_default_store_is_sqlite_under_state(tmp_path):
    # no --store: the file under ./state/ of the working directory (what `make serve` uses)
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--metrics-port", "0", "--otlp-port", "0", "--http-port", "0"], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "ready on" not in (line := proc.stderr.readline()):
            assert line, "the server exited"
        assert (tmp_path / "state" / "streamer.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def store_health(addr: str):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {name: stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
                for name in ("", "pb.Outliers", "streamer.store")}


def test_a_store_that_fails_while_serving_is_logged_retried_and_never_stops_a_stream(tmp_path):
    from grpc_health.v1 import health_pb2
    from test_store import make_read_only as freeze, writable as thaw
    SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    directory = tmp_path / "state"
    db = directory / "streamer.db"
    a = serve(db)
    batches = random_batches(59, n_batches=60, size=50)
    frozen = []
    try:
        with Client(a.addr) as client:
            def paced():
                for i, batch in enumerate(batches):
                    if i == 10:  # the store's files can no longer be written (as on a full or failing disk);
                        # not the -shm index, which SQLite maps into memory: a write fault there is a SIGBUS
                        for f in sorted(directory.iterdir()):
                            if not f.name.endswith("-shm"):
                                freeze(f)
                                frozen.append(f)
                    if i == 30:
                        assert store_health(a.addr) == {"": SERVING, "pb.Outliers": SERVING,
                                                        "streamer.store": NOT_SERVING}
                        for f in frozen:
                            thaw(f)
                        frozen.clear()
                    yield batch
                    time.sleep(0.05)
            results = list(client.stream(paced(), session="disk", timeout=60))
        assert [r.indices for r in results] == [e[0] for e in reference(batches)]  # detection went on
        deadline = time.monotonic() + 20
        while store_health(a.addr)["streamer.store"] != SERVING:  # the next snapshot succeeded
            assert time.monotonic() < deadline, "".join(a.log)
            time.sleep(0.1)
    finally:
        for f in frozen:
            thaw(f)
        code = a.terminate()
    assert code == 0
    log = "".join(a.log)
    assert re.search(r"store: session 'disk': snapshot of \d+ series failed; retrying", log), log
    assert "store: writing again" in log and "Traceback" not in log
    b = serve(db)  # and what was written after the store came back is there
    try:
        with Client(b.addr) as client:
            [r] = client.stream([[("series-0", PROBE)]], session="disk", timeout=60, options=_tiny_threshold())
        assert r.indices == [0]
    finally:
        assert b.terminate() == 0
