"""`streamer serve --workers N` through the real CLI: N processes on one port, sessions moving between them
through the store, a killed worker replaced, SIGTERM to the parent stopping every worker."""
from __future__ import annotations

import os
import re
import signal
import threading
import time

import grpc
import pytest

from conftest import CliServer
from test_durable import key
from test_exact import batches_for

from streamer.client import Client, ClientError

FLAGS = ("--lease-seconds", "2", "--snapshot-seconds", "0.2")


def workers(db, n=2, *args) -> CliServer:
    return CliServer("--workers", str(n), "--store", f"sqlite:///{db}", *FLAGS, *args)


def pids(server) -> dict[int, int]:
    """worker index -> pid of its latest process, from the parent's log."""
    return {int(i): int(p) for i, p in re.findall(r"worker (\d+) started \(pid (\d+)\)", "".join(server.log))}


def test_sessions_move_between_workers_and_every_answer_is_exact(tmp_path):
    server = workers(tmp_path / "s.db")
    reference = CliServer()
    try:
        sessions = {f"host-{i}": batches_for(12, seed=100 + i) for i in range(20)}
        got = {name: [] for name in sessions}
        for part in range(3):  # each part of each session on a new connection: the kernel picks a worker
            for name, data in sessions.items():
                with Client(server.addr) as c:
                    got[name] += c.session_stream(data[4 * part:4 * part + 4], name, retries=-1,
                                                  backoff=(0.02, 0.2))
        with Client(reference.addr) as c:
            for name, data in sessions.items():
                assert key(got[name]) == key(list(c.session_stream(data, name))), name
        log = "".join(server.log)
        moved = {w: len(re.findall(rf"worker {w}: session 'host-\d+': resumed from the store", log))
                 for w in (0, 1)}
        assert moved[0] and moved[1], f"sessions resumed per worker: {moved}"  # both workers served sessions
    finally:
        server.close()
        reference.close()


def test_a_killed_worker_is_replaced_while_the_other_serves(tmp_path):
    server = workers(tmp_path / "s.db")
    try:
        data = batches_for(200, seed=7)
        got, errors = [], []

        def run():
            try:
                with Client(server.addr) as c:
                    def paced():
                        for b in data:
                            yield b
                            time.sleep(0.005)
                    got.extend(c.session_stream(paced(), "under-load", retries=-1, backoff=(0.02, 0.5)))
            except Exception as exc:  # reported below
                errors.append(exc)

        stream = threading.Thread(target=run)
        stream.start()
        while len(got) < 50:
            time.sleep(0.01)
        victim = pids(server)[0]
        os.kill(victim, signal.SIGKILL)
        # The other worker answers: a connection the kernel had queued on the dead worker's socket is reset
        # (UNAVAILABLE, which clients retry), new ones go to the live worker.
        with Client(server.addr) as c:
            for attempt in range(50):
                try:
                    assert c.detect(values=[1.0, 1.0, 1.0, 50.0], threshold=1.0).indices == [3]
                    break
                except ClientError as exc:
                    assert exc.code == grpc.StatusCode.UNAVAILABLE and attempt < 49, exc
                    time.sleep(0.1)
        stream.join(120)
        assert not errors and len(got) == len(data)
        deadline = time.monotonic() + 60
        while pids(server)[0] == victim:
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.1)
        assert re.search(rf"worker 0 \(pid {victim}\) exited with signal SIGKILL; starting another",
                         "".join(server.log))
        reference = CliServer()
        try:
            with Client(reference.addr) as c:
                assert key(got) == key(list(c.session_stream(data, "under-load")))
        finally:
            reference.close()
        assert server.terminate() == 0
    finally:
        server.close()


def test_sigterm_to_the_parent_stops_every_worker_gracefully(tmp_path):
    server = workers(tmp_path / "s.db", 0)  # one per CPU it may run on
    assert f"with {len(os.sched_getaffinity(0))} workers" in "".join(server.log)
    with Client(server.addr) as c:
        list(c.session_stream(batches_for(5), "closing"))
    assert server.terminate() == 0
    log = "".join(server.log)
    for i in range(len(os.sched_getaffinity(0))):
        assert f"worker {i}: stopped" in log
    assert "Traceback" not in log


def cpus_of_threads(pid: int) -> set[str]:
    """The CPU lists the threads of process `pid` may run on, one entry per distinct list."""
    return {re.search(r"Cpus_allowed_list:\s*(\S+)", open(f"/proc/{pid}/task/{tid}/status").read()).group(1)
            for tid in os.listdir(f"/proc/{pid}/task")}


def test_pin_cpus_binds_each_worker_and_every_thread_it_starts_to_one_cpu(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    server = workers(tmp_path / "s.db", 2, "--pin-cpus")
    try:
        with Client(server.addr) as c:  # grpc's and the store's threads exist by now
            list(c.session_stream(batches_for(3), "pinned"))
        for i, pid in pids(server).items():
            assert cpus_of_threads(pid) == {str(cpus[i % len(cpus)])}, i
            assert f"worker {i}: pinned to CPU {cpus[i % len(cpus)]}" in "".join(server.log)
        assert server.terminate() == 0
    finally:
        server.close()
    one = CliServer("--pin-cpus")  # one process: pinned as worker 0
    try:
        with Client(one.addr) as c:
            list(c.stream(batches_for(2)))
        assert cpus_of_threads(one.proc.pid) == {str(cpus[0])}
        assert len(os.listdir(f"/proc/{one.proc.pid}/task")) > 1  # threads started after the pin follow it
    finally:
        one.close()
    unpinned = CliServer()
    try:
        assert cpus_of_threads(unpinned.proc.pid) == {_cpu_list(cpus)}  # without the flag: as started
    finally:
        unpinned.close()


def _cpu_list(cpus: list[int]) -> str:
    """Linux's form of a CPU list ("0-3,6")."""
    runs, start = [], cpus[0]
    for a, b in zip(cpus, cpus[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}-{a}" if a > start else f"{a}")
            start = b
    return ",".join(runs)


def test_workers_need_a_shared_store():
    with pytest.raises(RuntimeError, match=r"--workers 2 needs a store the workers share"):
        CliServer("--workers", "2")  # conftest's memory://


def test_workers_stop_when_their_parent_is_killed(tmp_path):
    server = workers(tmp_path / "s.db")
    children = list(pids(server).values())
    server.proc.kill()  # SIGKILL: the parent cannot pass anything on
    server.proc.wait()
    deadline = time.monotonic() + 30
    for pid in children:
        while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
            assert time.monotonic() < deadline, f"worker {pid} outlived its parent"
            time.sleep(0.05)
