"""Server lifecycle: compile the kernels, register the services, start, report health, stop gracefully."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from streamer import detector, kernels, series, wire
from streamer.service import SERVICE_NAME, OutliersService
from streamer.state import SessionRegistry
from streamer.store import StoreError, open_store

log = logging.getLogger("streamer")

STORE_HEALTH = "streamer.store"  # a health service name: NOT_SERVING while snapshots cannot be written


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything `streamer serve` takes; every field has the default the CLI shows."""

    host: str = "[::]"
    port: int = 9999
    defaults: detector.Defaults = detector.Defaults()
    max_message_mb: int = 64
    grace_seconds: float = 5.0
    drain_seconds: float = 0.0
    session_ttl: float = 600.0
    max_sessions: int = 10_000
    store: str = "sqlite:///state/streamer.db"  # relative to the working directory (shared/DECISIONS.md)
    snapshot_seconds: float = 5.0
    lease_seconds: float = 10.0

    @property
    def max_message_bytes(self) -> int:
        """The largest request grpc takes and the largest answer it sends."""
        return self.max_message_mb * 1024 * 1024


class StreamerServer:
    """A grpc.aio server with Outliers, health and reflection; `start()` returns once it answers."""

    def __init__(self, config: Config = Config(), clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        # One limit for both directions: grpc refuses to send a larger answer, so the pipeline checks it first
        # (and does not apply a stream batch it cannot answer).
        self.defaults = dataclasses.replace(config.defaults, max_response_bytes=config.max_message_bytes)
        self.sessions: SessionRegistry | None = None  # made in start(), once the store is open
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task] = []
        self.service: OutliersService | None = None

    async def start(self) -> int:
        limit = self.config.max_message_bytes
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),  # larger requests: RESOURCE_EXHAUSTED
            ("grpc.max_send_message_length", limit),
            # Ping idle connections so a collector that vanished without closing frees its session within
            # ~15 s (it gets ALREADY_EXISTS until then, and retries).
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        addr = f"{self.config.host}:{self.config.port}"
        try:  # bind first: a busy port fails at once, not after the compile
            self.port = server.add_insecure_port(addr)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {addr}: {exc}") from None
        try:  # then the store: a bad one fails at once too
            store = open_store(self.config.store)
        except StoreError as exc:
            raise OSError(f"store: {exc}") from None
        loop = asyncio.get_running_loop()

        def store_health(ok: bool) -> None:  # called from the store's writer thread
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            asyncio.run_coroutine_threadsafe(self.health.set(STORE_HEALTH, status), loop)

        self.sessions = SessionRegistry(self.config.session_ttl, self.config.max_sessions,
                                        self.config.defaults.max_series, clock=self.clock, store=store,
                                        lease_seconds=self.config.lease_seconds, on_store_health=store_health)
        self.service = OutliersService(self.defaults, self.sessions)
        server.add_generic_rpc_handlers((self.service.handler(),))
        # Compile before serving: the first request must not pay seconds of JIT, and health must not say
        # SERVING before the kernels can run. Nothing is accepted until server.start().
        kernels.compile_all()
        wire.compile_all()
        series.compile_all()
        await server.start()
        self._server = server
        for service in ("", SERVICE_NAME, STORE_HEALTH):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._tasks = [
            asyncio.create_task(self._every(min(max(self.config.session_ttl / 4, 0.05), 30.0), self._sweep)),
            asyncio.create_task(self._every(self.config.snapshot_seconds, self.sessions.snapshot_open)),
            asyncio.create_task(self._every(self.config.lease_seconds / 3, self.sessions.renew_leases)),
        ]
        return self.port

    @staticmethod
    async def _every(seconds: float, work: Callable[[], object]) -> None:
        """Run `work` (quick: it only queues store jobs) every `seconds` until cancelled."""
        while True:
            await asyncio.sleep(seconds)
            work()

    def _sweep(self) -> None:
        dropped = self.sessions.sweep()
        if dropped:
            log.info("dropped %d idle session(s) after %.0f s", dropped, self.config.session_ttl)

    async def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """The shutdown sequence (shared/DECISIONS.md): health turns NOT_SERVING; for `drain` seconds new calls
        are still taken, so load balancers can follow; then every open stream is ended with UNAVAILABLE once
        the requests it has read are answered, new calls are refused, and unary calls in flight get `grace`
        seconds to finish before they are cancelled; last, every session is snapshotted and its lease
        released."""
        if self._server is None:
            return
        grace = self.config.grace_seconds if grace is None else grace
        drain = self.config.drain_seconds if drain is None else drain
        await self.health.enter_graceful_shutdown()
        if drain > 0:
            await asyncio.sleep(drain)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        streams = self.service.end_streams()
        if streams:
            log.info("ending %d open stream(s) with UNAVAILABLE; clients reconnect", streams)
        await self._server.stop(grace)
        self._server = None
        # every stream has detached (queuing its snapshot and lease release): write them all, close the store
        await asyncio.to_thread(self.sessions.close)


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before start: a signal during the compile stops cleanly too
        loop.add_signal_handler(sig, stop.set)
    server = StreamerServer(config)
    port = await server.start()
    log.info("streamer ready on %s:%d (threshold %g, warmup %d, mode %s)", config.host, port,
             config.defaults.threshold, config.defaults.warmup, detector.MODE_NAMES[config.defaults.mode])
    await stop.wait()
    log.info("stopping: health NOT_SERVING; %sopen streams end with UNAVAILABLE, unary calls in flight have "
             "%.1f s to finish", f"after {config.drain_seconds:g} s of drain, " if config.drain_seconds else "",
             config.grace_seconds)
    await server.stop()
    log.info("stopped")
