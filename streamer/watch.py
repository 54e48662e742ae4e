"""Outlier fan-out for Watch: one bounded queue per subscriber, what a slow one misses counted and told to it.

The detectors build and publish outlier events only when `Hub.outliers_active` is true (a plain attribute:
someone here wants outliers now, or a bus says someone watches in another worker or replica), and episodes
while `Hub.active` is, so detection pays one attribute read per batch with outliers when nobody watches.
Publishing may happen on any thread (large batches and OTLP exports run on worker threads); subscribers are
served on the event loop. The bus to other workers and replicas is in
streamer/bus.py.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Iterable, NamedTuple

import numpy as np

from streamer.pb import outliers_pb2 as pb
from streamer.sinks.episode import EpisodeEvent

ORIGIN_STREAM = pb.ORIGIN_STREAM
ORIGIN_OTLP = pb.ORIGIN_OTLP
QUEUE_LIMIT = 1024  # events a subscriber may have unsent before newer ones are dropped (and counted)


class Event(NamedTuple):
    """One flagged value (OutlierEvent's fields)."""

    series: str
    value: float
    time_ns: int   # the value's time, nanoseconds since the epoch
    mean: float
    stddev: float
    zscore: float
    origin: int
    session: str
    tenant: str = ""  # whose stream or OTLP source found it: Watch is scoped by it (streamer/tenants.py)
    rule: str = ""  # the config file's rule that judged it ("": none matched, the server's defaults)

    def message(self) -> pb.WatchEvent:
        o = pb.OutlierEvent(series=self.series, value=self.value, mean=self.mean, stddev=self.stddev,
                            zscore=self.zscore, origin=self.origin, session=self.session, rule=self.rule)
        o.time.seconds, o.time.nanos = divmod(int(self.time_ns), 1_000_000_000)
        return pb.WatchEvent(outlier=o)


_EPISODE_KINDS = {"opened": pb.EpisodeEvent.OPENED, "updated": pb.EpisodeEvent.UPDATED,
                  "resolved": pb.EpisodeEvent.RESOLVED}


def _stamp(ts, ns: int) -> None:
    ts.seconds, ts.nanos = divmod(int(ns), 1_000_000_000)


def episode_message(e: EpisodeEvent) -> pb.WatchEvent:
    """An episode event (streamer/sinks/episode.py) as Watch sends it."""
    m = pb.EpisodeEvent(kind=_EPISODE_KINDS[e.kind], id=e.id, episode=e.episode, series=e.series, source=e.source,
                        session=e.session, origin=e.origin, rule=e.rule, count=e.count, value=e.value, mean=e.mean,
                        stddev=e.stddev, zscore=e.zscore, peak_value=e.peak_value, peak_zscore=e.peak_zscore)
    _stamp(m.started, e.started_ns)
    if e.ended_ns:
        _stamp(m.ended, e.ended_ns)
    return pb.WatchEvent(episode=m)


def flagged(table, ids, values, times, idx, mean, std, z, origin: int, session: str, tenant: str = "",
            rule: list[str] | None = None) -> list[Event]:
    """Events of the flagged rows idx[:k] of a batch (the kernels' outputs mean/std/z are per flagged row);
    `table`: the SeriesTable of the batch's slots `ids`; a time of 0 becomes now; rule[j]: outlier j's rule (None:
    none)."""
    now = time.time_ns()
    rows = np.asarray(idx)
    names = table.names_of(np.asarray(ids)[rows])
    ts = np.asarray(times)[rows].tolist()
    vs = np.asarray(values)[rows].tolist()
    k = len(rows)
    ms, ds, zs = np.asarray(mean)[:k].tolist(), np.asarray(std)[:k].tolist(), np.asarray(z)[:k].tolist()
    out = [Event(name.decode("utf-8", "replace"), v, t or now, m, d, zz, origin, session, tenant)
           for name, v, t, m, d, zz in zip(names, vs, ts, ms, ds, zs)]
    if rule is not None:
        out = [e._replace(rule=r) for e, r in zip(out, rule)]
    return out


class _Dropped:
    __slots__ = ("count", "total")

    def __init__(self, count: int, total: int):
        self.count = count
        self.total = total


class Subscriber:
    """One Watch call: its filter and its queue. Touched only on the event loop's thread."""

    def __init__(self, session: str = "", prefix: str = "", limit: int = QUEUE_LIMIT, kinds: int = 0,
                 tenant: str | None = None):
        self.session = session
        self.tenant = tenant  # only this tenant's events (None: every event: a server without tenants)
        self.prefix = prefix
        self.outliers = kinds != pb.WATCH_EPISODES  # WatchKinds: outliers (0), episodes (1) or all (2)
        self.episodes = kinds != pb.WATCH_OUTLIERS
        self.limit = limit
        self.queue: collections.deque = collections.deque()
        self.missed = 0        # dropped since the last notice was queued
        self.total_missed = 0  # since the subscription began
        self.wake = asyncio.Event()
        self.closed = False

    def wants(self, e: Event | EpisodeEvent) -> bool:
        if not (self.outliers if type(e) is Event else self.episodes):
            return False
        return (not self.session or e.session == self.session) and e.series.startswith(self.prefix) and \
            (self.tenant is None or e.tenant == self.tenant)

    def offer(self, events: Iterable[Event], lost: int = 0) -> None:
        """Queue what this subscriber wants of `events`; `lost`: events the bus lost (told as missed)."""
        self.missed += lost
        self.total_missed += lost
        added = False
        for e in events:
            if not self.wants(e):
                continue
            if len(self.queue) >= self.limit:
                self.missed += 1
                self.total_missed += 1
                continue
            if self.missed:  # the notice goes where the gap is
                self.queue.append(_Dropped(self.missed, self.total_missed))
                self.missed = 0
            self.queue.append(e)
            added = True
        if added or lost:
            self.wake.set()

    async def messages(self):
        """The stream's messages (serialized WatchEvents), until close()."""
        while True:
            while self.queue:
                item = self.queue.popleft()
                if isinstance(item, _Dropped):
                    yield self._notice(item.count, item.total)
                elif type(item) is Event:
                    yield item.message().SerializeToString()
                else:
                    yield episode_message(item).SerializeToString()
            if self.missed:
                count, self.missed = self.missed, 0
                yield self._notice(count, self.total_missed)
                continue
            if self.closed:
                return
            self.wake.clear()
            await self.wake.wait()

    @staticmethod
    def _notice(count: int, total: int) -> bytes:
        return pb.WatchEvent(dropped=pb.Dropped(count=count, total=total)).SerializeToString()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class Hub:
    """The subscribers of one server process, and the bus (streamer/bus.py) to the others."""

    def __init__(self, bus=None):
        self._subs: set[Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self.bus = bus
        self.active = False   # someone watches, here or (the bus says) elsewhere: detectors check this first
        self.outliers_active = False  # ... and someone here wants outliers (or watches elsewhere): for outliers
        self._lock = threading.Lock()  # protects `active`'s recomputation from the bus's thread and the loop's

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        if self.bus is not None:
            self.bus.start(self)

    def __len__(self) -> int:
        return len(self._subs)

    def refresh(self) -> None:
        """Recompute `active` and `outliers_active` (the bus calls this when the count of remote watchers
        changes; a subscriber, when it stops or starts wanting outliers)."""
        with self._lock:
            remote = self.bus is not None and self.bus.remote_watchers() > 0
            self.active = bool(self._subs) or remote
            # a subscriber may stop wanting outliers for a while (the page's live list, when its quota is full)
            self.outliers_active = remote or any(s.outliers for s in self._subs)

    def subscribe(self, session: str = "", prefix: str = "", limit: int = QUEUE_LIMIT, kinds: int = 0,
                  tenant: str | None = None) -> Subscriber:
        return self.add(Subscriber(session, prefix, limit, kinds, tenant))

    def add(self, sub: Subscriber) -> Subscriber:
        """Subscribe `sub`, made by the caller (a Subscriber subclass: the page's live list, web/pageserver.py)."""
        self._subs.add(sub)
        self._changed()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)
        self._changed()

    def _changed(self) -> None:
        if self.bus is not None:
            self.bus.local_watchers(len(self._subs))
        self.refresh()

    def publish(self, events: list[Event | EpisodeEvent]) -> None:
        """Hand `events` (outliers, episode events) to every subscriber here and to the bus; any thread."""
        if not events:
            return
        if self.bus is not None:
            self.bus.send(events)
        self.receive(events)

    def receive(self, events: list[Event], lost: int = 0) -> None:
        """Deliver to this process's subscribers (from publish, or from the bus); any thread."""
        if not self._subs or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._deliver(events, lost)
        else:
            try:
                self._loop.call_soon_threadsafe(self._deliver, events, lost)
            except RuntimeError:  # the loop is closed: the server has stopped
                pass

    def _deliver(self, events: list[Event], lost: int) -> None:
        for sub in list(self._subs):
            sub.offer(events, lost)

    def close(self) -> int:
        """Shutdown: end every Watch stream (each sends what it has queued first); returns how many."""
        for sub in list(self._subs):
            sub.close()
        if self.bus is not None:
            self.bus.close()
        return len(self._subs)
