"""`streamer serve --workers N`: N server processes on one port, so a machine's every core serves.

grpc's Python server runs its handlers under one GIL, so one process uses one core. As grpc's
examples/python/multiprocessing does, the parent forks the workers before any grpc object exists (grpc is not
fork-safe once it has started), and each binds the same port with SO_REUSEPORT; the kernel spreads the
connections among them. Sessions move between workers through the store (its leases say which worker holds
one), so `memory://` is refused with N > 1.

The parent resolves the port once (port 0 included) and keeps it reserved with a bound, non-listening socket
of its own; starts worker 0 first, which compiles the kernels into numba's cache, then the others, which load
them from it; logs `streamer ready on HOST:PORT with N workers` once every worker answers; replaces a worker
that dies; and on SIGTERM or SIGINT passes the signal to every worker (each runs the usual shutdown sequence)
and exits 0 when the last one has. A worker whose parent dies (kill -9) gets SIGTERM from the kernel
(PR_SET_PDEATHSIG) and stops too. Worker i logs with a `worker i:` prefix and serves its metrics, if on, on
--metrics-port + i. Watch subscribers see every worker's outliers over the bus of streamer/bus.py: a unix
socket per worker in a directory the parent makes (on a Redis store, Redis pub/sub instead).
"""
from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time

log = logging.getLogger("streamer")

PR_SET_PDEATHSIG = 1   # prctl(2): the signal a process gets when its parent dies
CRASH_LOOP = 5         # workers dying within CRASH_SECONDS of their start, in a row, before the parent gives up
CRASH_SECONDS = 10.0


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to host:port with SO_REUSEPORT, as grpc's will be: it fixes port 0's
    number for every worker and keeps the port this server's while workers come and go."""
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    family, kind, proto, _, addr = socket.getaddrinfo(name or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6 and addr[0] == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(addr)
    return sock


class _Prefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.prefix + str(record.msg)
        return True


class Supervisor:
    def __init__(self, config, n: int):
        from streamer.server import _check_bindable
        if n > 1 and config.store.startswith("memory:"):
            raise OSError(f"--workers {n} needs a store the workers share (sqlite:///PATH or redis://...): with "
                          f"memory:// a session could not move between workers")
        _check_bindable(config.host, config.port, reuse_port=False)  # no other server on it
        if config.metrics_port:
            for i in range(n):
                _check_bindable(config.host, config.metrics_port + i, reuse_port=False)
        if config.otlp_port:
            _check_bindable(config.host, config.otlp_port, reuse_port=False)
        self.holder = _reserve(config.host, config.port)
        self.otlp_holder = _reserve(config.host, config.otlp_port) if config.otlp_port else None
        # The Watch bus between the workers (a Redis store has its own, which every worker joins).
        from streamer.bus import WorkerBus
        redis = config.store.startswith(("redis://", "rediss://"))
        self.bus_dir = None if redis else tempfile.mkdtemp(prefix="streamer-watch-")
        self.bus_page = None if redis else WorkerBus.page(n)
        port = self.holder.getsockname()[1]
        self.config = dataclasses.replace(config, port=port, reuse_port=True)
        self.n = n
        self.pids: dict[int, int] = {}      # pid -> worker index
        self.ready: dict[int, int] = {}     # read end of a worker's ready pipe -> pid
        self.started: dict[int, float] = {}
        self.stopping = False
        self.crashes = 0

    def _spawn(self, i: int) -> int:
        """Fork worker i; the read end of its ready pipe."""
        from streamer.server import serve
        r, w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                # If the parent dies without passing a signal on (kill -9), its workers stop too, gracefully,
                # rather than hold the port as orphans.
                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
                if os.getppid() != parent:  # it died before prctl
                    os._exit(0)
                os.close(r)
                self.holder.close()
                if self.otlp_holder is not None:
                    self.otlp_holder.close()
                for fd in self.ready:
                    os.close(fd)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until serve() reloads on it (default: exit)
                for handler in logging.getLogger().handlers:
                    handler.addFilter(_Prefix(f"worker {i}: "))
                if self.config.pin_cpus:
                    log.info("pinned to CPU %d", pin(i))
                config = dataclasses.replace(self.config, metrics_port=self.config.metrics_port + i
                                             if self.config.metrics_port else 0,
                                             max_total_series=-(-self.config.max_total_series // self.n),
                                             http_port=self.config.http_port + i if self.config.http_port else 0)
                from streamer.bus import WorkerBus
                bus = WorkerBus(i, self.n, self.bus_dir, self.bus_page) if self.bus_dir else None
                # A reload() called in this worker (the admin API) applies here, then asks the parent to pass
                # SIGHUP to every worker: they all read the file again (this one finds nothing more changed).
                asyncio.run(serve(config, on_ready=lambda: os.write(w, b"r"), bus=bus,
                                  peers_reload=lambda: os.kill(parent, signal.SIGHUP)))
                code = 0
            except OSError as exc:
                log.error("streamer serve: %s", exc)
            except BaseException:
                log.exception("worker %d failed", i)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(w)
        self.pids[pid] = i
        self.ready[r] = pid
        self.started[pid] = time.monotonic()
        log.info("worker %d started (pid %d)", i, pid)
        return r

    def _wait_ready(self, fds: list[int], timeout: float | None) -> None:
        """Wait until each worker behind fds has said it is ready (or has exited: its pipe closes)."""
        pending = set(fds)
        while pending and not self.stopping and self.pids:
            readable, _, _ = select.select(list(pending), [], [], 0.2 if timeout is None else min(timeout, 0.2))
            for fd in readable:
                os.read(fd, 1)  # b"r", or b"" if it exited (then _reap sees it)
                pending.discard(fd)
            self._reap()
            pending &= set(self.ready)

    def _signal(self, signum, frame) -> None:
        if not self.stopping:
            log.info("stopping: passing %s to %d worker(s)", signal.Signals(signum).name, len(self.pids))
        self.stopping = True
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _hangup(self, signum, frame) -> None:
        """SIGHUP (from outside, or from a worker whose reload() applied): every worker reloads."""
        log.info("reloading: passing SIGHUP to %d worker(s)", len(self.pids))
        self._reread()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    def _reread(self) -> None:
        """Take what a reload applies into the config later workers are forked with (one replacing a worker that
        died must not start with the old rules). A refused file changes nothing: the workers log why."""
        from streamer.config_file import ConfigError
        from streamer.reload import applied, refused
        source = self.config.source
        if source is None:
            return
        try:
            args, new = source.read()
        except ConfigError:
            return
        if not refused(source.changes(args)):
            self.config = applied(self.config, new)
            source.args, source.config = args, new

    def _reap(self) -> None:
        """Collect exited workers; replace them unless stopping (or dying in a loop)."""
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            i = self.pids.pop(pid)
            for fd, p in list(self.ready.items()):
                if p == pid:
                    os.close(fd)
                    del self.ready[fd]
            if self.stopping:
                continue
            if not self.up:  # it never served: the same would happen again (a bad store, say)
                log.error("worker %d (pid %d) exited before serving; stopping", i, pid)
                self.failed = True
                self._signal(signal.SIGTERM, None)
                continue
            how = f"signal {signal.Signals(-os.waitstatus_to_exitcode(status)).name}" \
                if os.WIFSIGNALED(status) else f"status {os.waitstatus_to_exitcode(status)}"
            quick = time.monotonic() - self.started.pop(pid) < CRASH_SECONDS
            self.crashes = self.crashes + 1 if quick else 0
            if self.crashes >= CRASH_LOOP:
                log.error("worker %d (pid %d) exited with %s: %d workers in a row died within %g s of their "
                          "start; stopping", i, pid, how, self.crashes, CRASH_SECONDS)
                self._signal(signal.SIGTERM, None)
                self.failed = True
                continue
            log.warning("worker %d (pid %d) exited with %s; starting another", i, pid, how)
            self._spawn(i)

    def run(self) -> int:
        self.failed, self.up = False, False
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        signal.signal(signal.SIGHUP, self._hangup)
        self._wait_ready([self._spawn(0)], None)  # it compiles into numba's cache; the others load from it
        if not self.stopping and self.pids:
            self._wait_ready([self._spawn(i) for i in range(1, self.n)], None)
        if not self.stopping and len(self.pids) == self.n:
            self.up = True
            log.info("streamer ready on %s:%d with %d workers", self.config.host, self.config.port, self.n)
        deadline = None
        while self.pids:
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.config.drain_seconds + self.config.grace_seconds + 5
            if deadline is not None and time.monotonic() > deadline:
                for pid in self.pids:
                    log.error("worker %d (pid %d) did not stop in time: killed", self.pids[pid], pid)
                    os.kill(pid, signal.SIGKILL)
                deadline = float("inf")
            for fd in select.select(list(self.ready), [], [], 0.1)[0]:
                if os.read(fd, 1) == b"" and fd in self.ready:  # the worker exited; _reap collects it
                    os.close(fd)
                    del self.ready[fd]
            self._reap()
        self.holder.close()
        if self.otlp_holder is not None:
            self.otlp_holder.close()
        if self.bus_dir is not None:
            shutil.rmtree(self.bus_dir, ignore_errors=True)
        log.info("stopped (%d workers)", self.n)
        return 1 if self.failed else 0


def pin(i: int) -> int:
    """Bind every thread of this process (and so the threads it starts) to the i-th CPU, round-robin, of the set
    it may run on; that CPU's number."""
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[i % len(cpus)]
    pin_threads(os.getpid(), cpu)
    return cpu


def pin_threads(pid: int, cpu: int) -> None:
    """Bind every thread of process `pid` to `cpu` (as `taskset -a -p`)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def run(config, workers: int) -> int:
    """Serve with `workers` processes (0: one per CPU this process may run on); the exit status."""
    n = workers or len(os.sched_getaffinity(0))
    if n == 1:
        from streamer.server import serve
        if config.pin_cpus:
            log.info("pinned to CPU %d", pin(0))
        asyncio.run(serve(config))
        return 0
    sys.stderr.flush()
    return Supervisor(config, n).run()
