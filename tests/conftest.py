"""Fixtures: real streamer servers on free loopback ports, in-process (own event loop thread) or via the CLI."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

import grpc
import pytest

from streamer.pb import outliers_pb2_grpc
from streamer.server import Config, StreamerServer

READY = re.compile(r"ready on (\S+):(\d+)")


class FakeClock:
    """A clock for SessionRegistry / StreamerServer(clock=...) that moves only when a test advances it."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


class InProcessServer:
    """A StreamerServer running on its own asyncio loop in a background thread."""

    # start() compiles the numba kernels; on a fresh machine (empty cache, cores shared) that can take minutes
    START_TIMEOUT = 180

    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.server = StreamerServer(config, clock=clock)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self.call(self.server.start(), timeout=self.START_TIMEOUT)
        self.addr = f"127.0.0.1:{self.port}"

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 0) -> None:
        if self.loop.is_closed():  # stopped by its test already
            return
        self.call(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def make_server():
    """Factory: make_server(clock=..., **config_fields) -> a started InProcessServer on 127.0.0.1, stopped at
    the end; `clock` (default time.time) is what its session registry reads, e.g. a FakeClock."""
    servers = []

    def make(clock: Callable[[], float] = time.time, **fields) -> InProcessServer:
        fields.setdefault("host", "127.0.0.1")
        fields.setdefault("port", 0)
        fields.setdefault("store", "memory://")
        fields.setdefault("metrics_port", 0)  # auxiliary ports off unless the test is about them
        fields.setdefault("otlp_port", 0)
        fields.setdefault("http_port", 0)
        server = InProcessServer(dataclasses.replace(Config(), **fields), clock=clock)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(make_server):
    """One shared in-process server with the default settings."""
    return make_server()


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(server.addr) as ch:
        yield ch


@pytest.fixture
def stub(channel):
    return outliers_pb2_grpc.OutliersStub(channel)


class CliServer:
    """`python -m streamer serve` as a subprocess, on a free port; stderr is collected in `log`. `env` is added
    to the environment; `omit` names flags of the harness's own left out (a test whose config file sets them: a
    flag would win over the file)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, omit: tuple[str, ...] = ()):
        harness = ["--host", "127.0.0.1", "--port", "0", "--store", "memory://", "--metrics-port", "0",
                   "--otlp-port", "0", "--http-port", "0"]
        harness = [x for flag, value in zip(harness[::2], harness[1::2]) if flag not in omit for x in (flag, value)]
        self.proc = subprocess.Popen(
            # an in-memory store and no metrics port unless the test names them (a later flag wins): no test shares
            # state or a port
            [sys.executable, "-m", "streamer", "serve", *harness, *args],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.log: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            match = READY.search(line)
            if match:
                self.port = int(match.group(2))
                self.addr = f"127.0.0.1:{self.port}"
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.proc.kill()
        raise RuntimeError("streamer serve did not get ready:\n" + "".join(self.log))

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def terminate(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def cli_server():
    servers = []

    def start(*args: str, env: dict[str, str] | None = None, omit: tuple[str, ...] = ()) -> CliServer:
        s = CliServer(*args, env=env, omit=omit)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()
