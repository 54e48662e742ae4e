"""Exact resume through real server processes: sequence numbers, duplicates, durable acknowledgements, and the
Python client's session_stream across SIGKILL and SIGTERM of its server (the Go client's twin test is
go/client/exact_test.go)."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from conftest import CliServer
from test_durable import key

from streamer.answers import KEEP_BATCHES
from streamer.client import Client, ClientError
from streamer.pb import outliers_pb2 as pb
from streamer.pb import outliers_pb2_grpc

FLAGS = ("--lease-seconds", "2", "--snapshot-seconds", "0.2")


def serve(db, *args) -> CliServer:
    return CliServer("--store", f"sqlite:///{db}", *FLAGS, *args)


def stored(db, session):
    out = subprocess.run([sys.executable, "-m", "streamer", "session", "--store", f"sqlite:///{db}", session],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _stats(state):
    return [{k: v for k, v in series.items() if k != "last_seen"} for series in state["series"]]


def batch(rng, n=30, seq=0, session="", spike=False):
    req = pb.OutliersRequest(seq=seq, session=session)
    for i in range(n):
        req.metrics.add(name=f"s{i % 7}", value=rng.gauss(50, 5) + (200 if spike and i == 3 else 0))
    return req


class Raw:
    """One DetectStream through the generated stub: send a request, read its answer, in lock step."""

    def __init__(self, addr):
        self.channel = grpc.insecure_channel(addr)
        self.requests: list = []
        self.cv = threading.Condition()
        self.done = False

        def gen():
            i = 0
            while True:
                with self.cv:
                    self.cv.wait_for(lambda: i < len(self.requests) or self.done)
                    if i >= len(self.requests):
                        return
                    req = self.requests[i]
                i += 1
                yield req
        self.answers = outliers_pb2_grpc.OutliersStub(self.channel).DetectStream(gen(), timeout=60)

    def send(self, req) -> pb.OutliersResponse:
        with self.cv:
            self.requests.append(req)
            self.cv.notify_all()
        return next(self.answers)

    def close(self):
        with self.cv:
            self.done = True
            self.cv.notify_all()
        for _ in self.answers:
            pass
        self.channel.close()


def test_a_duplicate_is_not_applied_and_gets_its_first_answer(tmp_path, cli_server):
    db = tmp_path / "s.db"
    server = cli_server("--store", f"sqlite:///{db}", *FLAGS)
    rng = random.Random(1)
    raw = Raw(server.addr)
    hello = raw.send(pb.OutliersRequest(session="d"))
    assert (hello.applied_seq, hello.durable_seq, hello.duplicate, hello.ephemeral) == (0, 0, False, False)
    warm = [raw.send(batch(rng, seq=n)) for n in range(1, 11)]
    assert [a.applied_seq for a in warm] == list(range(1, 11)) and not any(a.duplicate for a in warm)
    spike = batch(rng, seq=11, spike=True)
    first = raw.send(spike)
    assert 3 in first.indices
    again = raw.send(spike)  # sent on purpose a second time
    assert again.duplicate and not again.forgotten and again.applied_seq == 11
    assert (list(again.indices), list(again.outliers)) == (list(first.indices), list(first.outliers))
    older = raw.send(batch(rng, seq=5))  # a number below the last: applied long ago, not again
    assert older.duplicate and key([older]) == key([warm[4]])
    raw.close()
    server.terminate()
    state = stored(db, "d")
    assert state["seq"] == 11
    assert sum(s["count"] for s in state["series"]) == 11 * 30  # eleven batches, each once


def test_the_kept_answers_outlive_a_restart_and_the_oldest_are_forgotten(tmp_path, cli_server):
    db = tmp_path / "s.db"
    server = cli_server("--store", f"sqlite:///{db}", *FLAGS)
    rng = random.Random(2)
    raw = Raw(server.addr)
    answers = [raw.send(batch(rng, n=3, seq=n, session="k" if n == 1 else "", spike=n % 100 == 0))
               for n in range(1, KEEP_BATCHES + 51)]
    raw.close()
    server.terminate()
    server = cli_server("--store", f"sqlite:///{db}", *FLAGS)
    raw = Raw(server.addr)
    hello = raw.send(pb.OutliersRequest(session="k"))
    last = KEEP_BATCHES + 50
    assert (hello.applied_seq, hello.durable_seq) == (last, last)  # SIGTERM wrote everything
    kept = raw.send(batch(rng, n=3, seq=last - 50))
    assert kept.duplicate and not kept.forgotten and list(kept.outliers) == list(answers[last - 51].outliers)
    gone = raw.send(batch(rng, n=3, seq=50))  # more than KEEP_BATCHES numbered batches ago
    assert gone.duplicate and gone.forgotten and not gone.indices
    new = raw.send(batch(rng, n=3, seq=last + 1))
    assert not new.duplicate and new.applied_seq == last + 1
    raw.close()


def test_the_durable_number_advances_while_a_stream_is_busy(tmp_path, cli_server):
    server = cli_server("--store", f"sqlite:///{tmp_path / 's.db'}", *FLAGS)
    rng = random.Random(3)
    raw = Raw(server.addr)
    raw.send(pb.OutliersRequest(session="busy"))
    durable, seq, start = [], 0, time.monotonic()
    while time.monotonic() - start < 2.0:  # ten snapshot intervals of sending without a pause
        seq += 1
        a = raw.send(batch(rng, seq=seq))
        assert a.durable_seq <= a.applied_seq == seq
        durable.append(a.durable_seq)
    raw.close()
    steps = sorted(set(durable))
    assert len(steps) >= 4, f"durable_seq took the values {steps} over {seq} batches in 2 s"


def test_without_sequence_numbers_a_stream_works_as_before(cli_server):
    server = cli_server()  # memory://
    rng = random.Random(4)
    raw = Raw(server.addr)
    first = raw.send(batch(rng, session="old"))  # an old client: no seq
    assert (first.applied_seq, first.duplicate, first.ephemeral) == (0, False, True)
    again = raw.send(batch(rng))
    assert not again.duplicate and again.batch == 1
    raw.close()
    private = Raw(server.addr)
    plain = private.send(batch(rng))  # no session, no seq: the answer has no sequence fields at all
    bare = pb.OutliersResponse(indices=plain.indices, outliers=plain.outliers)
    assert plain.SerializeToString() == bare.SerializeToString()
    numbered = private.send(batch(rng, seq=7))
    assert (numbered.applied_seq, numbered.ephemeral) == (7, True)
    assert private.send(batch(rng, seq=7)).duplicate
    private.close()


def batches_for(n, seed=5):
    rng = random.Random(seed)
    return [[(f"host-{rng.randrange(12)}", rng.gauss(100, 10) + (90 if rng.random() < 0.02 else 0))
             for _ in range(25)] for _ in range(n)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_session_stream_is_exact_across_restarts(tmp_path, sig):
    """The Python client's session_stream while its server is killed (or stopped) and started again
    on the same port and store (three times; the Go twin test does it five times each way): answers and stored
    state equal those of a server that never stopped."""
    data = batches_for(400)
    ref_db = tmp_path / "ref.db"
    ref = serve(ref_db)
    try:
        with Client(ref.addr) as c:
            want = list(c.session_stream(data, "exact"))
        ref.terminate()
    finally:
        ref.close()
    want_state = stored(ref_db, "exact")
    assert want_state["seq"] == len(data) and sum(len(r.indices) for r in want) > 20

    db = tmp_path / "s.db"
    servers = [serve(db)]
    port = servers[0].port
    rng = random.Random(int(sig))
    kill_at = sorted(rng.sample(range(20, len(data) - 20), 3))
    got = []

    def paced():
        for b in data:
            yield b
            time.sleep(0.001)

    try:
        with Client(servers[0].addr) as c:
            for result in c.session_stream(paced(), "exact", retries=-1, backoff=(0.02, 0.5)):
                got.append(result)
                if kill_at and len(got) == kill_at[0]:
                    kill_at.pop(0)
                    time.sleep(rng.random() * 0.3)  # before or after a snapshot
                    servers[-1].terminate(sig)
                    servers.append(serve(db, "--port", str(port)))
        servers[-1].terminate()
    finally:
        for s in servers:
            s.close()
    assert len(servers) == 4 and not kill_at
    assert [r.batch for r in got] == list(range(len(data)))
    assert key(got) == key(want)
    state = stored(db, "exact")
    # the statistics' floats compared exactly; last_seen is each series' arrival time, so it differs by run
    assert state["seq"] == want_state["seq"] and _stats(state) == _stats(want_state)


def test_session_stream_keeps_at_most_max_kept_bytes(tmp_path, cli_server):
    """On a durable store the batches are kept until durable: with a small bound, reading the caller's batches
    waits for the server's snapshots, and the stream still ends with every batch answered once."""
    server = cli_server("--store", f"sqlite:///{tmp_path / 's.db'}", *FLAGS)
    data = batches_for(60, seed=6)
    answered_when_pulled, got = [], []

    def source():
        for b in data:
            answered_when_pulled.append(len(got))
            yield b

    with Client(server.addr) as c:
        for r in c.session_stream(source(), "bounded", max_kept_bytes=4000):  # about six batches
            got.append(r)
    assert len(got) == len(data)
    lag = max(i - a for i, a in enumerate(answered_when_pulled))
    assert lag <= 12, f"the client read {lag} batches ahead of the answers with a 4000-byte bound"


def test_session_stream_needs_a_session_and_reports_rejections(cli_server):
    server = cli_server()
    with Client(server.addr) as c:
        with pytest.raises(ValueError):
            c.session_stream([[("a", 1.0)]], "")
        with pytest.raises(ClientError) as err:
            list(c.session_stream([[("a", 1.0)], [("x" * 1025, 1.0)]], "rejected"))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "1025 bytes" in err.value.details
