"""Episodes as Prometheus Alertmanager alerts (POST /api/v2/alerts), one sink per --alertmanager URL (an HA pair
gets every alert at each member, as Prometheus sends them).

An open episode is a firing alert: posted when it opens or changes, and re-sent every `resend_seconds` with
`endsAt` four resend intervals ahead, so an alert whose server died expires by itself. A resolved episode is
posted once with `endsAt` now. Alertmanager identifies an alert by its labels, so the re-sends and a post that
was retried are the same alert, never a new one.
"""
from __future__ import annotations

import dataclasses

from streamer.config import RESEND_SECONDS
from streamer.sinks.episode import RELEASED, RESOLVED, EpisodeEvent, labels, rfc3339
from streamer.sinks.http import Poster

BATCH = 500  # alerts per POST
PENDING_LIMIT = 10_000  # resolved alerts kept while Alertmanager cannot be reached; older ones are dropped


def _annotations(event: EpisodeEvent) -> dict[str, str]:
    out = {"value": repr(event.value), "mean": repr(event.mean), "stddev": repr(event.stddev),
           "zscore": repr(event.zscore), "peak_value": repr(event.peak_value),
           "peak_zscore": repr(event.peak_zscore), "count": str(event.count), "episode": event.episode,
           "summary": f"{event.series} from {event.source}: {event.count} outlier(s), latest {event.value!r} at "
                      f"z = {event.zscore:.3g} against mean {event.mean:.6g}, stddev {event.stddev:.6g}"}
    if event.tail_probability is not None:
        out["likelihood"] = repr(1.0 - event.tail_probability)
        out["tail_probability"] = repr(event.tail_probability)
    return out


class AlertmanagerSink(Poster):
    """submit() episode events; this thread keeps the open ones and posts them as alerts."""

    kind = "alertmanager"

    def __init__(self, url: str, metrics=None, resend_seconds: float = RESEND_SECONDS, **kwargs):
        super().__init__(url, metrics, **kwargs)
        self.resend_seconds = resend_seconds
        self._open: dict[str, tuple] = {}  # open episode -> (labels, once built; its latest event; startsAt ns)
        self._seen: dict[str, float] = {}  # open episode -> when its latest event reached this sink
        self._released: set[str] = set()   # open episodes no longer re-sent from here (see RELEASED)

    def _run(self) -> None:
        # episode -> the resolved alert to post (its Resolved), or None: an open one, posted as it is then.
        # Only events are kept here; alerts are built when posted (every retry or resend), so a sink that is
        # down costs detection one dict assignment an event, never the building of alerts it cannot send.
        pending: dict[str, _Resolved | None] = {}
        resend_at = self.clock() + self.resend_seconds
        retry_at = 0.0
        while True:
            stopping = self._stopping.is_set()
            now = self.clock()
            due = min(resend_at, retry_at) if pending else resend_at
            for event in self.take(self.queue.maxsize, 0 if stopping else min(due - now, 0.5)):
                self._apply(event, pending, now)
            now = self.clock()
            if now >= resend_at:
                # An open episode is re-sent while its series is judged here: one without an event for two
                # resend intervals (its session went to another process, which sends it now, or its series
                # went quiet) is left to expire by its endsAt rather than re-fired after another resolves it.
                quiet = [e for e, seen in self._seen.items() if now - seen > 2 * self.resend_seconds]
                for e in (*quiet, *(e for e in self._released if e not in pending)):
                    self._seen.pop(e, None)
                    self._open.pop(e, None)
                    self._released.discard(e)
                pending.update(dict.fromkeys(e for e in self._open if e not in pending))
                resend_at = now + self.resend_seconds
            if pending and (now >= retry_at or stopping):
                if self._send(pending, now):
                    pending.clear()
                else:
                    retry_at = now + self.retry_delay()
            if stopping:  # one last try, then the thread ends; open alerts expire unless another server sends them
                return

    def _apply(self, event, pending: dict, now: float) -> None:
        if event.kind == RELEASED:  # the source's session may go to another owner, which re-sends these then:
            # what is pending is still posted once, but they are not re-sent from here
            self._released.update(e for e, (_, last, _) in self._open.items() if last.source == event.source)
            return
        opened = self._open.get(event.episode)
        if event.kind == RESOLVED:
            self._open.pop(event.episode, None)
            self._seen.pop(event.episode, None)
            self._released.discard(event.episode)
            pending.pop(event.episode, None)  # (re-inserted last: the oldest resolved alerts come first)
            pending[event.episode] = _Resolved(event, opened, now)
            if len(pending) > PENDING_LIMIT:  # down for long: the oldest resolved alerts go (they expire anyway)
                oldest = next(e for e, r in pending.items() if r is not None)
                del pending[oldest]
                self.metrics.dropped.labels(self.kind, self.url).inc()
        else:
            # startsAt is the data time of the first outlier, but never after the time it reached this sink:
            # Alertmanager refuses an alert that ends before it starts, as one stamped by a clock ahead of ours
            started = opened[2] if opened is not None else min(event.started_ns, int(now * 1e9))
            self._open[event.episode] = (opened[0] if opened is not None else None, event, started)
            self._seen[event.episode] = now
            self._released.discard(event.episode)  # judged here again
            pending[event.episode] = None

    def _label_set(self, event) -> dict:
        lab, collisions = labels(event)
        if collisions:
            self.metrics.collisions.labels(self.url).inc(collisions)
        return lab

    def _firing(self, episode: str, ends: float) -> dict:
        lab, event, started = self._open[episode]
        if lab is None:  # an alert is its labels: an episode keeps those it is first posted with
            lab = self._label_set(event)
            self._open[episode] = (lab, event, started)
        return _alert(lab, _annotations(event), started, ends)

    def _resolved(self, r: "_Resolved") -> dict:
        if r.opened is None:  # opened before this sink heard of it (another server, or before a restart)
            return _alert(self._label_set(r.event), _annotations(r.event), min(r.event.started_ns, int(r.at * 1e9)),
                          r.at)
        lab, last, started = r.opened
        # the alert keeps describing its outliers (value, mean, stddev, zscore of the last flagged value), not
        # the normal value that resolved it; count and peak are the episode's final ones
        notes = {**_annotations(last), **{k: v for k, v in _annotations(r.event).items()
                                          if k in ("count", "peak_value", "peak_zscore")}}
        return _alert(lab if lab is not None else self._label_set(last), notes, started, r.at)

    def _send(self, pending: dict, now: float) -> bool:
        """Post every pending alert (open ones with endsAt four resend intervals ahead), BATCH a request."""
        ends = now + 4 * self.resend_seconds
        alerts = [self._resolved(r) if r is not None else self._firing(e, ends) for e, r in pending.items()
                  if r is not None or e in self._open]
        for i in range(0, len(alerts), BATCH):
            if not self.post("/api/v2/alerts", alerts[i:i + BATCH]):
                return False
            self.delivered(len(alerts[i:i + BATCH]))
        return True


@dataclasses.dataclass(frozen=True)
class _Resolved:
    event: EpisodeEvent  # the resolution
    opened: tuple | None  # what the sink held of the open episode: (labels or None, latest event, startsAt)
    at: float             # when it reached the sink: the alert's endsAt


def _alert(lab: dict, notes: dict, started_ns: int, ends: float) -> dict:
    return {"labels": lab, "annotations": notes, "startsAt": rfc3339(started_ns), "endsAt": rfc3339(int(ends * 1e9))}
