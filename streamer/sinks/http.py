"""One sink's thread: a bounded queue, posts of JSON over HTTP(S) with retries and backoff, counted, and a
failure logged once per run of failures."""
from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("streamer.sinks")

QUEUE_LIMIT = 10_000      # events a sink holds before newer ones are dropped (and counted)
TIMEOUT_SECONDS = 5.0     # one POST
BACKOFF = (0.25, 30.0)    # first retry after 0.25 s, doubling up to 30 s


class SinkMetrics:
    """The sinks' counters, in the server's registry (or a new one): labels are the sink's kind and URL, a set
    fixed by the flags."""

    def __init__(self, registry: CollectorRegistry | None = None):
        registry = registry if registry is not None else CollectorRegistry()
        labels = ("sink", "url")
        self.posts = Counter("streamer_sink_posts_total", "POSTs to alert sinks, by result (ok, error, refused).",
                             labels + ("result",), registry=registry)
        self.events = Counter("streamer_sink_events_total", "Episode events delivered to alert sinks.", labels,
                              registry=registry)
        self.dropped = Counter("streamer_sink_events_dropped_total", "Episode events a sink dropped because its "
                               "queue was full.", labels, registry=registry)
        self.queued = Gauge("streamer_sink_queue_events", "Episode events waiting in a sink's queue.", labels,
                            registry=registry)
        self.collisions = Counter("streamer_alert_label_collisions_total", "OTLP attributes left out of an "
                                  "alert's labels: their sanitized name was taken.", ("url",), registry=registry)


class Poster(threading.Thread):
    """A daemon thread that takes events from a bounded queue and delivers them with `deliver(events)`, which the
    subclass implements with post(). `wake` is how long it may sleep with nothing to do."""

    kind = "sink"

    def __init__(self, url: str, metrics: SinkMetrics | None = None, headers: dict[str, str] | None = None,
                 ca_file: str | None = None, queue_limit: int = QUEUE_LIMIT, backoff=BACKOFF,
                 clock: Callable[[], float] = time.time):
        super().__init__(name=f"{self.kind} {url}", daemon=True)
        self.url = url
        self.metrics = metrics if metrics is not None else SinkMetrics()
        self.headers = {"Content-Type": "application/json", "User-Agent": "streamer", **(headers or {})}
        self.context = ssl.create_default_context(cafile=ca_file) if url.startswith("https:") else None
        self.queue: queue.Queue = queue.Queue(queue_limit)
        self.backoff = backoff
        self.clock = clock
        self._stopping = threading.Event()
        self._failures = 0
        self._labels = (self.kind, url)

    def run(self) -> None:
        """The sink's loop (_run). A bug in it is logged and the loop starts again, rather than ending the thread
        and every alert after it: the open episodes a subclass keeps survive (an Alertmanager sink re-sends them),
        a failed batch in flight may be lost."""
        while True:
            try:
                self._run()
                return
            except Exception:
                log.exception("%s %s: the sink failed; it starts again", self.kind, self.url)
                self.metrics.posts.labels(*self._labels, "error").inc()
                if self._stopping.wait(self.retry_delay()):
                    return

    def _run(self) -> None:
        raise NotImplementedError

    def submit(self, event) -> bool:
        """Queue an event; never blocks. False (and counted) when the queue is full."""
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self.metrics.dropped.labels(*self._labels).inc()
            return False
        return True  # (the queue's gauge is set by the sink's thread: this path stays a queue put)

    def stop_soon(self) -> None:
        """Ask the thread to end after one last try to deliver what is queued."""
        self._stopping.set()

    def close(self, timeout: float = 2.0) -> None:
        """Stop after one last try to deliver what is queued (waiting at most `timeout`)."""
        self.stop_soon()
        if self.is_alive():
            self.join(timeout)

    def take(self, limit: int, wait: float) -> list:
        """Up to `limit` queued events, waiting at most `wait` seconds for the first."""
        out = []
        try:
            out.append(self.queue.get(timeout=max(wait, 0.0)) if wait > 0 else self.queue.get_nowait())
            while len(out) < limit:
                out.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        self.metrics.queued.labels(*self._labels).set(self.queue.qsize())
        return out

    def post(self, path: str, body) -> bool:
        """POST `body` as JSON to url + path (the URL as given when path is empty); True on a 2xx answer, and on
        a 4xx other than 408 and 429 (the receiver refuses this body: sending it again cannot help, so it is
        dropped, counted as refused and logged). Another failure is logged on the first of a run of failures,
        and when delivery works again."""
        url = self.url.rstrip("/") + path if path else self.url
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=self.context) as answer:
                answer.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code not in (408, 429):
                self.metrics.posts.labels(*self._labels, "refused").inc()
                log.warning("%s %s: refused (HTTP %d: %s); those events are dropped", self.kind, self.url,
                            exc.code, exc.read()[:200].decode("utf-8", "replace").strip())
                return True
            if isinstance(exc, urllib.error.HTTPError):
                why = f"HTTP {exc.code}"
            else:
                why = str(getattr(exc, "reason", exc))
            self.metrics.posts.labels(*self._labels, "error").inc()
            self._failures += 1
            if self._failures == 1:
                log.warning("%s %s: cannot deliver (%s); retrying with backoff", self.kind, self.url, why)
            return False
        self.metrics.posts.labels(*self._labels, "ok").inc()
        if self._failures:
            log.warning("%s %s: delivering again after %d failed attempt(s)", self.kind, self.url, self._failures)
            self._failures = 0
        return True

    def retry_delay(self) -> float:
        """How long to wait after the current run of failures."""
        first, most = self.backoff
        return min(most, first * 2 ** max(self._failures - 1, 0))

    def delivered(self, n: int) -> None:
        self.metrics.events.labels(*self._labels).inc(n)
