"""Server lifecycle: compile the kernels, register the services (and the metrics), listen (plaintext or TLS),
start, report health, drain and stop gracefully."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import signal
import socket
import threading
import time
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
# grpcio-reflection (1.85) provides only grpc.reflection.v1alpha; grpcurl and grpc-go's reflection client ask
# for v1 first and fall back to v1alpha when v1 is UNIMPLEMENTED. Serve v1 too once the library has it.
from grpc_reflection.v1alpha import reflection

from streamer import admin, detector, fused, kernels, otlp, rates, rules, series, wire
from streamer.bus import open_bus
from streamer.config import Config
from streamer.ops import tls
from streamer.ops.metrics import Metrics, MetricsInterceptor
# The Outliers methods are registered as raw-bytes handlers (service.py), so nothing else loads the generated
# module; reflection answers from the default descriptor pool, which holds pb.Outliers only once this import
# has run. Without it, `grpcurl describe pb.Outliers` from another process gets "Symbol not found".
from streamer.pb import outliers_pb2
from streamer.service import SERVICE_NAME, OutliersService
from streamer.episodes import Throttle
from streamer.sinks import RELEASED, Sinks
from streamer.sinks.http import SinkMetrics
from streamer.state import SeriesBudget, SessionRegistry
from streamer.store import StoreError, open_store
from streamer.series_rules import Live, Settings
from streamer.watch import Hub

log = logging.getLogger("streamer")

STORE_HEALTH = "streamer.store"  # a health service name: NOT_SERVING while snapshots cannot be written


def _check_bindable(host: str, port: int, reuse_port: bool) -> None:
    """Raise OSError saying why, if grpc could not listen on host:port, or could only on some of its addresses.

    grpc reports a failed bind only as "Failed to bind" (after a log line of its own on stderr), and binds a
    name like localhost when any one of its addresses is free. A plain socket per resolved address, with the
    options grpc uses (SO_REUSEADDR, and SO_REUSEPORT only when asked for), says what is wrong, and an address
    in use anywhere is an error: a second server must not share this one's name.
    """
    if port == 0:
        return
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    where = f"cannot listen on {host}:{port}"
    try:
        infos = socket.getaddrinfo(name or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"{where}: {exc.strerror}") from None
    errors, tried = [], 0
    for family, kind, proto, _, addr in infos:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:  # e.g. no IPv6 on this host: grpc's [::] falls back to 0.0.0.0, so let grpc decide
            continue
        tried += 1
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and addr[0] == "::":
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # grpc's [::] takes IPv4 too
            try:
                probe.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(f"{where}: the port is in use on {addr[0]} (is another server running "
                                  f"on it?)") from None
                errors.append(exc)
    if tried and len(errors) == tried:
        raise OSError(f"{where}: {errors[0].strerror.lower()}") from None


def _jit_functions() -> list:
    """Every numba function of the pipeline (for the compile's cache statistics)."""
    from numba.core.dispatcher import Dispatcher

    modules = (kernels, rules, series, wire.decode, wire.encode, wire.options, wire.primitives, fused, rates)
    found = {id(v): v for m in modules for v in vars(m).values() if isinstance(v, Dispatcher)}
    return list(found.values())


def _compile_kernels() -> tuple[int, int]:
    """Compile every kernel of the pipeline, or load it from numba's cache: (signatures loaded, compiled)."""
    kernels.compile_all()
    rules.compile_all()
    wire.compile_all()
    series.compile_all()
    fused.compile_all()
    rates.compile_all()
    stats = [f.stats for f in _jit_functions()]
    return sum(sum(s.cache_hits.values()) for s in stats), sum(sum(s.cache_misses.values()) for s in stats)


class StreamerServer:
    """A grpc.aio server with Outliers, health and reflection; `start()` returns once it answers."""

    def __init__(self, config: Config = Config(), clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, bus=None):
        self.config = config
        self.clock = clock
        # Counting happens only when the metrics are served (or a test hands its own Metrics in).
        self.metrics = metrics if metrics is not None else Metrics() if config.metrics_port else None
        self._metrics_http = None
        # One limit for both directions: grpc refuses to send a larger answer, so the pipeline checks it first
        # (and does not apply a stream batch it cannot answer).
        self.defaults = dataclasses.replace(config.defaults, max_response_bytes=config.max_message_bytes)
        self.sessions: SessionRegistry | None = None  # made in start(), once the store is open
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task] = []
        self.service: OutliersService | None = None
        # the alert sinks: threads started with the server, which detection hands episodes to without waiting
        self.sinks = Sinks(config.alerts, SinkMetrics(self.metrics.registry) if self.metrics is not None else None)
        self.bus = bus  # to other workers of this server (workers.py gives it); a Redis store makes its own
        self.otlp_port: int | None = None
        self.page = None  # streamer/web/pageserver.PageServer when --http-port is set
        self.http_port: int | None = None
        # What reload() replaces for detection: the defaults, the rules and the OTLP options (series_rules.Live),
        # read by each stream at its next batch and by each export.
        self.live = Live(Settings(0, self.defaults, config.rules, config.otlp_options))
        self.tls: tls.ReloadableCredentials | None = None  # the gRPC ports' certificates (reload replaces them)
        self.throttle: Throttle | None = None
        # With --workers N (workers.py): called after a reload() that applied, to make every other worker reload
        self.peers_reload: Callable[[], None] | None = None
        self._reloading = threading.Lock()  # one reload at a time (SIGHUP and the admin call may overlap)

    async def start(self, stop: asyncio.Event | None = None) -> int | None:
        """Bind, open the store, compile the kernels, start serving; the port, or None if `stop` was set during
        the compile."""
        limit = self.config.max_message_bytes
        credentials = None
        if self.config.tls_cert:  # read and checked first: a wrong file fails at once, in one line
            try:
                self.tls = tls.ReloadableCredentials(self.config.tls_cert, self.config.tls_key,
                                                     self.config.tls_client_ca)
                credentials = self.tls.credentials
            except tls.TLSError as exc:
                raise OSError(f"tls: {exc}") from None
        if self.config.tenants is not None and not self.config.tls_client_ca:
            raise OSError("tenants: [tenants] in the config file names tenants by client certificate, so it needs "
                          "--tls-cert, --tls-key and --tls-client-ca (mutual TLS)")
        interceptors = [MetricsInterceptor(self.metrics)] if self.metrics is not None else []
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", limit),  # larger requests: RESOURCE_EXHAUSTED
            ("grpc.max_send_message_length", limit),
            # grpc sets SO_REUSEPORT unless told not to; see Config.reuse_port.
            ("grpc.so_reuseport", int(self.config.reuse_port)),
            # Ping idle connections so a collector that vanished without closing frees its session within
            # ~15 s (it gets ALREADY_EXISTS until then, and retries).
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        assert outliers_pb2.DESCRIPTOR.services_by_name["Outliers"].full_name == SERVICE_NAME
        reflection.enable_server_reflection(
            (SERVICE_NAME, otlp.SERVICE_NAME, admin.SERVICE_NAME,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
        addr = f"{self.config.host}:{self.config.port}"
        # Bind first: a busy port fails at once, not after the compile.
        _check_bindable(self.config.host, self.config.port, self.config.reuse_port)
        try:
            self.port = server.add_secure_port(addr, credentials) if credentials else server.add_insecure_port(addr)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {addr}: {exc}") from None
        if self.config.otlp_port:  # the same server (every service) on a second port: exporters' default
            otlp_addr = f"{self.config.host}:{self.config.otlp_port}"
            try:
                _check_bindable(self.config.host, self.config.otlp_port, self.config.reuse_port)
                self.otlp_port = (server.add_secure_port(otlp_addr, credentials) if credentials
                                  else server.add_insecure_port(otlp_addr))
            except (OSError, RuntimeError) as exc:
                raise OSError(f"otlp (--otlp-port): {exc}") from None
        if self.config.metrics_port:
            try:
                _check_bindable(self.config.host, self.config.metrics_port, reuse_port=False)
            except OSError as exc:
                raise OSError(f"metrics (--metrics-port): {exc}") from None
        try:  # then the store: a bad one fails at once too
            store = open_store(self.config.store, self.config.session_ttl)
        except StoreError as exc:
            raise OSError(f"store: {exc}") from None
        loop = asyncio.get_running_loop()

        def store_health(ok: bool) -> None:  # called from the store's writer thread
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            asyncio.run_coroutine_threadsafe(self.health.set(STORE_HEALTH, status), loop)

        self.sessions = SessionRegistry(self.config.session_ttl, self.config.max_sessions,
                                        self.config.defaults.max_series, clock=self.clock, store=store,
                                        lease_seconds=self.config.lease_seconds, on_store_health=store_health,
                                        snapshot_seconds=self.config.snapshot_seconds,
                                        on_snapshot=self.metrics.snapshot if self.metrics else lambda s, ok: None,
                                        series_ttl=self.config.defaults.series_ttl,
                                        budget=SeriesBudget(self.config.max_total_series))
        params = detector.resolve(self.config.otlp_options, self.config.defaults, "--otlp-* options")
        bus = self.bus if self.bus is not None else open_bus(self.config.store, self.sessions.owner)
        hub = Hub(bus)
        throttle = self.throttle = Throttle(self.config.episode_update_seconds)

        def on_episodes(events) -> None:  # from a batch or an export: announce, never wait
            events = throttle(events)
            for event in events:
                self.sinks.submit(event)
            watched = [e for e in events if e.kind != RELEASED]
            if watched and hub.active:
                hub.publish(watched)

        ingest = otlp.OtlpIngest(self.sessions, params, self.config.defaults.max_series,
                                 self.config.otlp_resource_attributes, hub,
                                 self.metrics.batch_counter("Export") if self.metrics else detector.uncounted,
                                 on_episodes, live=self.live)

        self.service = OutliersService(self.defaults, self.sessions, self.metrics, hub, ingest, on_episodes,
                                       self.config.tenants, live=self.live)
        server.add_generic_rpc_handlers(self.service.handlers())
        # the admin API (streamer/admin.py); its Reload calls this server's reload()
        admin.AdminService(self.sessions, self.service.caller, self.reload).add_to(server)
        if self.metrics is not None:
            self.metrics.watch(self.service.open_streams, self.sessions.__len__, self.service.series_held,
                               lambda: self.sessions.budget.expired)
        if self.config.metrics_port:
            try:
                self._metrics_http = self.metrics.serve(self.config.host, self.config.metrics_port)
            except OSError as exc:
                await asyncio.to_thread(self.sessions.close)
                raise OSError(f"metrics (--metrics-port): cannot listen on {self.config.host}:"
                              f"{self.config.metrics_port}: {exc.strerror or exc}") from None
        # Compile before serving: the first request must not pay seconds of JIT, and health must not say
        # SERVING before the kernels can run. Nothing is accepted until server.start().
        if not await self._compile(stop):
            await asyncio.to_thread(self.sessions.close)
            self._stop_metrics()
            return None
        if self.config.http_port:
            await self._start_page(hub)
        await server.start()
        hub.start(loop)
        self._server = server
        self.sinks.start()
        for service in ("", SERVICE_NAME, STORE_HEALTH):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._tasks = [
            asyncio.create_task(self._every(min(max(self.config.session_ttl / 4, 0.05), 30.0), self._sweep)),
            asyncio.create_task(self._every(self.config.snapshot_seconds, self.sessions.snapshot_open)),
            asyncio.create_task(self._every(self.config.lease_seconds / 3, self.sessions.renew_leases)),
        ]
        return self.port

    async def _start_page(self, hub: Hub) -> None:
        """The page (streamer/web/) on --http-port: its HTTP server shares the event loop, and the detectors
        hand it the values of the series it views (the taps)."""
        from streamer.web import tap
        from streamer.web.pageserver import PageServer
        from streamer.web.tap import Taps

        await asyncio.to_thread(tap.compile_all)

        self.service.taps = Taps()
        if self.service.ingest is not None:
            self.service.ingest.taps = self.service.taps  # OTLP series can be viewed too
        self.page = PageServer(self.service, self.defaults, int(self.config.http_max_upload_mb * 2**20),
                               self.service.taps)
        try:
            self.http_port = await self.page.start(self.config.host, self.config.http_port, self.config.tls_cert,
                                                   self.config.tls_key, self.config.tls_client_ca)
        except OSError as exc:
            await asyncio.to_thread(self.sessions.close)
            self._stop_metrics()
            raise OSError(f"page (--http-port): cannot listen on {self.config.host}:{self.config.http_port}: "
                          f"{exc.strerror or exc}") from None

    async def _compile(self, stop: asyncio.Event | None) -> bool:
        """Compile (or load from numba's cache) on a thread, so a signal meanwhile is acted on at once.

        False if `stop` was set first. The thread cannot be interrupted: it is a daemon, left to the process's
        exit. (asyncio.to_thread would not do: asyncio.run waits for its executor's threads at the end.)
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def finish(outcome) -> None:
            if not done.done():
                done.set_result(outcome)

        def work() -> None:
            try:
                outcome = _compile_kernels()
            except BaseException as exc:  # handed to the event loop, raised there
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped meanwhile
                loop.call_soon_threadsafe(finish, outcome)

        cache = _jit_functions()[0].stats.cache_path
        log.info("compiling the kernels, or loading them from numba's cache in %s: tens of seconds the first "
                 "time, about a second on later starts", cache)
        started = time.perf_counter()
        threading.Thread(target=work, name="streamer-compile", daemon=True).start()
        waiters = [done] if stop is None else [done, asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters[1:]:
            waiter.cancel()
        if not done.done():
            return False
        outcome = done.result()
        if isinstance(outcome, BaseException):
            raise outcome
        loaded, compiled = outcome
        seconds = time.perf_counter() - started
        if compiled:
            log.info("compiled %d kernel signature(s) in %.1f s (%d loaded from the cache); numba cached them "
                     "for the next start", compiled, seconds, loaded)
        else:
            log.info("loaded the kernels from numba's cache in %.1f s", seconds)
        return True

    async def reload(self) -> str:
        """Read the configuration again (the --config file, the environment and the command line, which still
        wins) and apply what changed: rules, detection defaults, the OTLP options, sinks, log level, TLS
        certificate files. A one-line summary of what changed; ConfigError (logged, nothing applied) when the
        file is refused or a key that cannot change live (port, store, workers, ...) changed. Series keep their
        state; streams take the new settings at their next batch. With --workers N every worker reloads."""
        summary = await asyncio.to_thread(self._reload)
        if self.peers_reload is not None:
            self.peers_reload()
        return summary

    def _reload(self) -> str:
        """reload() for this process only (a thread: it reads files); streamer/reload.py does it."""
        from streamer.reload import reload_server
        with self._reloading:
            return reload_server(self)

    @staticmethod
    async def _every(seconds: float, work: Callable[[], object]) -> None:
        """Run `work` (quick: it only queues store jobs) every `seconds` until cancelled; a failure is logged
        and the next round runs (a stopped renewal would let every lease expire)."""
        while True:
            await asyncio.sleep(seconds)
            try:
                work()
            except Exception:
                log.exception("periodic %s failed; trying again in %g s", getattr(work, "__name__", work), seconds)

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
        streams = self.service.end_streams()
        if streams:
            log.info("ending %d open stream(s) with UNAVAILABLE; clients reconnect", streams)
        await self._server.stop(grace)
        self._server = None
        if self.page is not None:  # its live streams ended with the Hub's; now its connections
            await self.page.close()
        for task in self._tasks:  # only now: leases are renewed while calls may still run
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # every stream has detached (queuing its snapshot and lease release): write them all, close the store
        await asyncio.to_thread(self.sessions.close)
        await asyncio.to_thread(self.sinks.close)  # one last try at the queued episode events
        self._stop_metrics()  # last: the drain and the final snapshots can be watched

    def _stop_metrics(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None


async def serve(config: Config, on_ready: Callable[[], object] | None = None, bus=None,
                peers_reload: Callable[[], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully; reload on SIGHUP. A worker of `--workers N`
    (streamer/workers.py) passes `on_ready`, called once it answers, and logs "serving on" (the parent says
    "ready" for all), and `peers_reload`, which makes the other workers reload after a reload() call."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before start: a signal during the compile stops cleanly too
        loop.add_signal_handler(sig, stop.set)
    server = StreamerServer(config, bus=bus)
    server.peers_reload = peers_reload

    def hangup() -> None:  # SIGHUP: reload this process (a worker's parent sends it to every worker)
        task = asyncio.ensure_future(asyncio.to_thread(server._reload))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # refusals are logged by _reload

    loop.add_signal_handler(signal.SIGHUP, hangup)
    port = await server.start(stop)
    if port is None:
        log.info("stopped by a signal during the compile, before serving")
        return
    if config.tenants is not None:  # before the ready line, which tests and scripts wait for
        log.info("%s", config.tenants.describe())
    log.info("streamer %s on %s:%d, %s (threshold %g, warmup %d, mode %s); metrics %s; OTLP %s; page %s",
             "ready" if on_ready is None else "serving", config.host, port,
             config.security(), config.defaults.threshold, config.defaults.warmup,
             detector.MODE_NAMES[config.defaults.mode],
             f"on {config.host}:{config.metrics_port}/metrics" if config.metrics_port else "off",
             f"also on {config.host}:{server.otlp_port}" if server.otlp_port else "on this port only",
             f"on {'https' if config.tls_cert else 'http'}://{config.host}:{server.http_port}/" if server.http_port
             else "off")
    if on_ready is not None:
        on_ready()
    await stop.wait()
    log.info("stopping: health NOT_SERVING; %sopen streams end with UNAVAILABLE, unary calls in flight have "
             "%.1f s to finish", f"after {config.drain_seconds:g} s of drain, " if config.drain_seconds else "",
             config.grace_seconds)
    await server.stop()
    log.info("stopped")
