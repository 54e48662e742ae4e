"""The bus that carries outliers to Watch subscribers in other processes: the workers of one server (a unix
datagram socket per worker, and a shared page of subscriber counts) or a fleet on one Redis (pub/sub).

A process sends only when some other process has subscribers (the counts page, or PUBSUB NUMSUB polled), so
nobody watching costs nothing. What a bus cannot deliver (a full socket, a lost connection) is counted and
told to the receiving side's subscribers as missed. Events travel as JSON lists of Event's fields.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import mmap
import os
import queue
import socket
import struct
import threading

from streamer.sinks.episode import EpisodeEvent
from streamer.watch import Event

log = logging.getLogger(__name__)

CHUNK = 200          # events per datagram or message (a datagram stays well under the socket's buffer)
CHANNEL = "streamer:watch"
POLL_SECONDS = 0.2   # how often remote subscriber counts are read


def _pack(events: list, lost: int, origin: str = "") -> bytes:
    # an outlier as the list of its fields, an episode event as the object of its fields
    items = [list(e) if type(e) is Event else dataclasses.asdict(e) for e in events]
    return json.dumps({"o": origin, "lost": lost, "e": items}).encode()


def _episode(fields: dict) -> EpisodeEvent:
    return EpisodeEvent(**{**fields, "attributes": tuple(tuple(a) for a in fields["attributes"])})


def _unpack(data: bytes) -> tuple[str, int, list]:
    msg = json.loads(data)
    return msg["o"], int(msg["lost"]), [Event(*e) if type(e) is list else _episode(e) for e in msg["e"]]


class _Bus:
    """What watch.Hub calls: start(hub), local_watchers(n), remote_watchers(), send(events), close();
    `settle`: seconds after a new subscription until every other process has seen it."""

    settle = 2.5 * POLL_SECONDS

    def _refresh_loop(self, stop: threading.Event) -> None:
        last = -1
        while not stop.wait(POLL_SECONDS):
            try:
                now = self._count_remote()
            except Exception as exc:  # the bus is down: nobody else is reachable
                log.debug("watch bus: cannot count subscribers elsewhere: %s", exc)
                now = 0
            self._remote = now
            if now != last and self._hub is not None:
                last = now
                self._hub.refresh()


class WorkerBus(_Bus):
    """The workers of one `serve --workers N`: worker i reads datagrams on DIR/w<i>.sock and writes its
    subscriber count in slot i of a page the parent mapped (MAP_SHARED) before forking."""

    def __init__(self, index: int, n: int, directory: str, counts: mmap.mmap):
        self.index, self.n, self.directory, self.counts = index, n, directory, counts
        self._hub = None
        self._remote = 0
        self._lost = [0] * n
        self._lock = threading.Lock()  # protects _lost (send runs on any thread)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None

    @staticmethod
    def page(n: int) -> mmap.mmap:
        """The shared page of subscriber counts, made by the parent before it forks."""
        return mmap.mmap(-1, max(8 * n, mmap.PAGESIZE))

    def _path(self, i: int) -> str:
        return os.path.join(self.directory, f"w{i}.sock")

    def _count(self, i: int) -> int:
        return struct.unpack_from("<q", self.counts, 8 * i)[0]

    def _count_remote(self) -> int:
        return sum(self._count(i) for i in range(self.n) if i != self.index)

    def remote_watchers(self) -> int:
        return self._remote

    def start(self, hub) -> None:
        import asyncio
        self._hub = hub
        self._stop = threading.Event()
        struct.pack_into("<q", self.counts, 8 * self.index, 0)
        path = self._path(self.index)
        if os.path.exists(path):
            os.unlink(path)  # a worker this one replaces
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read)
        threading.Thread(target=self._refresh_loop, args=(self._stop,), name="streamer-watch-bus",
                         daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                _, lost, events = _unpack(data)
            except (ValueError, KeyError, TypeError) as exc:  # not from a worker of this server
                log.warning("watch bus: a datagram that is not a batch of events was dropped: %s", exc)
                continue
            self._hub.receive(events, lost)

    def local_watchers(self, n: int) -> None:
        struct.pack_into("<q", self.counts, 8 * self.index, n)

    def send(self, events: list[Event]) -> None:
        if self._sock is None:
            return
        for i in range(self.n):
            if i == self.index or self._count(i) <= 0:
                continue
            for c in range(0, len(events), CHUNK):
                chunk = events[c:c + CHUNK]
                with self._lock:
                    lost, self._lost[i] = self._lost[i], 0
                try:
                    self._sock.sendto(_pack(chunk, lost), self._path(i))
                except OSError:  # its buffer is full, or it is being replaced: counted, told with the next
                    with self._lock:
                        self._lost[i] += lost + len(chunk)

    def close(self) -> None:
        self._stop.set()
        struct.pack_into("<q", self.counts, 8 * self.index, 0)
        if self._sock is not None:
            import asyncio
            try:
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            except RuntimeError:
                pass
            self._sock.close()
            self._sock = None


class RedisBus(_Bus):
    """A fleet on one Redis: a process with subscribers SUBSCRIBEs to CHANNEL; others PUBLISH to it (from
    a thread, off the detection path) while PUBSUB NUMSUB says someone other than themselves listens."""

    def __init__(self, url: str, owner: str):
        import redis
        self.url, self.owner = url, owner
        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._hub = None
        self._remote = 0
        self._subscribed = False
        self._pubsub = None
        self._listener = None
        self._lock = threading.Lock()  # protects the subscription's state
        self._outbox: queue.Queue = queue.Queue(maxsize=1024)
        self._lost = 0  # events the outbox could not take (told to the receivers with the next message)
        self._stop = threading.Event()

    def _count_remote(self) -> int:
        (_, n), = self._redis.pubsub_numsub(CHANNEL)
        return max(int(n) - int(self._subscribed), 0)

    def remote_watchers(self) -> int:
        return self._remote

    def start(self, hub) -> None:
        self._hub = hub
        threading.Thread(target=self._refresh_loop, args=(self._stop,), name="streamer-watch-redis",
                         daemon=True).start()
        threading.Thread(target=self._publisher, name="streamer-watch-publish", daemon=True).start()

    def local_watchers(self, n: int) -> None:
        with self._lock:
            if n and not self._subscribed:
                self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                try:
                    self._pubsub.subscribe(**{CHANNEL: self._message})
                except Exception as exc:
                    log.error("watch: cannot subscribe to Redis (%s): outliers of other replicas are not seen",
                              exc)
                    return
                self._listener = self._pubsub.run_in_thread(sleep_time=0.05, daemon=True)
                self._subscribed = True
            elif not n and self._subscribed:
                self._listener.stop()
                self._pubsub.close()
                self._subscribed = False

    def _message(self, message) -> None:
        origin, lost, events = _unpack(message["data"])
        if origin != self.owner:  # this process's own outliers reached its subscribers directly
            self._hub.receive(events, lost)

    def send(self, events: list[Event]) -> None:
        if self._remote <= 0:
            return
        for c in range(0, len(events), CHUNK):
            try:
                self._outbox.put_nowait(events[c:c + CHUNK])
            except queue.Full:
                self._lost += len(events[c:c + CHUNK])

    def _publisher(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self._outbox.get(timeout=0.5)
            except queue.Empty:
                continue
            lost, self._lost = self._lost, 0
            try:
                self._redis.publish(CHANNEL, _pack(chunk, lost, self.owner))
            except Exception as exc:
                self._lost += lost + len(chunk)
                log.warning("watch: cannot publish outliers to Redis: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self.local_watchers(0)


def open_bus(store: str, owner: str):
    """The bus for a server on `store` without a worker bus: Redis pub/sub on a Redis store, else none."""
    if store.startswith(("redis://", "rediss://")):
        return RedisBus(store, owner)
    return None
