"""An episode event (what a sink receives) and the label names Alertmanager accepts."""
from __future__ import annotations

import dataclasses
import datetime
import re

OPENED, UPDATED, RESOLVED = "opened", "updated", "resolved"
RELEASED = "released"  # not an episode's change: this process gave up the source's series (sinks only)


@dataclasses.dataclass(frozen=True)
class EpisodeEvent:
    """One change of an episode of outliers of one series: opened at its first flagged value, updated while it
    stays open, resolved after enough normal values (or when its series expired).

    `episode` is the episode's stable id; `seq` numbers its events from 0 (the opening), so `id`, the pair, is
    unique and a receiver can drop a duplicate. Times are data times (Metric.time, or the time the value was
    judged when it had none), in nanoseconds since the epoch; `ended_ns` is 0 while the episode is open. The
    value, mean, stddev, zscore and tail_probability are those of the latest flagged value; peak_* of the one
    with the largest |z|.
    """

    kind: str
    episode: str
    seq: int
    series: str
    source: str                     # "session NAME", "stream" (a private DetectStream) or "otlp:..." (a resource)
    started_ns: int
    count: int                      # flagged values in the episode so far
    value: float
    mean: float
    stddev: float
    zscore: float
    peak_value: float
    peak_zscore: float
    ended_ns: int = 0
    tail_probability: float | None = None  # SCORE_LIKELIHOOD only
    attributes: tuple[tuple[str, str], ...] = ()  # an OTLP series' attributes (resource's and point's), sorted
    session: str = ""  # the session ("" for a private stream; an OTLP resource's session)
    origin: int = 1    # ORIGIN_STREAM (1) or ORIGIN_OTLP (2), as Watch's Origin
    tenant: str = ""   # the tenant whose stream or source it is (Watch is scoped by it; streamer/tenants.py)
    rule: str = ""     # the config file's rule that judged the value ("": none matched, the server's defaults)

    @property
    def id(self) -> str:
        return f"{self.episode}-{self.seq}"

    def as_json(self) -> dict:
        """The event as the webhook sends it (README: "Webhook JSON")."""
        out = {"id": self.id, "kind": self.kind, "episode": self.episode, "series": self.series,
               "source": self.source, "started": rfc3339(self.started_ns),
               "ended": rfc3339(self.ended_ns) if self.ended_ns else None, "count": self.count,
               "value": _number(self.value), "mean": _number(self.mean), "stddev": _number(self.stddev),
               "zscore": _number(self.zscore), "peak_value": _number(self.peak_value),
               "peak_zscore": _number(self.peak_zscore), "attributes": dict(self.attributes), "rule": self.rule}
        if self.tail_probability is not None:
            out["tail_probability"] = self.tail_probability
        return out


def _number(x: float):
    """JSON has no Infinity or NaN: as strings, the way Go's and Prometheus's JSON write them."""
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "+Inf" if x > 0 else "-Inf"
    return x


def rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 in UTC, to the microsecond (what Alertmanager reads)."""
    t = datetime.datetime.fromtimestamp(ns // 1000 / 1e6, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def label_name(name: str) -> str:
    """A name as a Prometheus label name, [a-zA-Z_][a-zA-Z0-9_]*: every other character becomes an underscore
    (dots too, as Prometheus's OTLP translation writes them), and a leading digit gets one in front."""
    out = _INVALID.sub("_", name)
    return "_" + out if not out or out[0].isdigit() else out


def labels(event: EpisodeEvent) -> tuple[dict[str, str], int]:
    """The alert's labels, and how many attributes were left out because their sanitized name collided with an
    earlier one (the first keeps it). The fixed labels come first, so an attribute never replaces them."""
    out = {"alertname": "StreamerOutlier", "series": event.series, "source": event.source}
    if event.rule:  # the rule that judged it (none: the server's defaults, no label)
        out["rule"] = event.rule
    collisions = 0
    for name, value in event.attributes:
        key = label_name(name)
        if key in out:
            collisions += 1
            continue
        out[key] = value
    return out, collisions
