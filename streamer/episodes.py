"""Episodes from the kernels to the people who watch: rules.stream_update's rows of episode changes as
EpisodeEvents (sinks/episode.py), and the throttle that lets an episode's updates out at most once per
--episode-update-seconds. The episode state itself is per-series state (state.py), kept by the kernels."""
from __future__ import annotations

import hashlib
import math
import threading
import time
from typing import Callable

import numpy as np

from streamer import rules
from streamer.config import UPDATE_SECONDS
from streamer.series import SeriesTable
from streamer.sinks.episode import OPENED, RELEASED, RESOLVED, UPDATED, EpisodeEvent

_KINDS = {rules.EPISODE_OPENED: OPENED, rules.EPISODE_UPDATED: UPDATED, rules.EPISODE_RESOLVED: RESOLVED}


def events(ev: np.ndarray, stats: np.ndarray, ids: np.ndarray, values: np.ndarray, times: np.ndarray,
           table: SeriesTable, source: str, session: str = "", origin: int = 1,
           attributes: Callable[[str], tuple] | None = None, tenant: str = "",
           rule: list[str] | None = None) -> list[EpisodeEvent]:
    """The episode changes a batch made (rules.stream_update's ev and ev_stats rows) as events. An episode's id
    is a hash of its source, series and start, so it is the same after a restart; its events are numbered by
    its count of flagged values (opened 0, updated count - 1, resolved count), so each id is unique and a
    batch replayed after a restart gives the same ids, which receivers drop. `attributes(series)` gives an
    OTLP series' attributes (for Alertmanager's labels); rule[j]: the rule that judged change j (None: none)."""
    out = []
    now = time.time_ns()
    for j, ((row, kind, start, count), (peak_z, peak_value, mu, std, z)) in enumerate(zip(ev.tolist(),
                                                                                          stats.tolist())):
        series = table.name(int(ids[row])).decode("utf-8", "replace")
        episode = hashlib.blake2b(f"{source}\0{series}\0{start}".encode(), digest_size=8).hexdigest()
        seq = 0 if kind == rules.EPISODE_OPENED else count - 1 if kind == rules.EPISODE_UPDATED else count
        out.append(EpisodeEvent(_KINDS[kind], episode, seq, series, source, start, count,
                                float(values[row]), mu, std, z, peak_value, peak_z,
                                ended_ns=int(times[row]) or now if kind == rules.EPISODE_RESOLVED else 0,
                                attributes=attributes(series) if attributes else (), session=session,
                                origin=origin, tenant=tenant, rule=rule[j] if rule is not None else ""))
    return out


def released(source: str) -> EpisodeEvent:
    """A notice for the sinks that this process no longer owns `source`'s series (its session's lease went):
    they stop re-sending its open episodes, which the next owner sends from the state it loads."""
    return EpisodeEvent(RELEASED, "", 0, "", source, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class Throttle:
    """Lets through every opening and resolution, and an episode's updates at most once per `seconds`. Called
    from the event loop and from the threads that run large batches: the lock guards `_last`."""

    def __init__(self, seconds: float = UPDATE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self._last: dict[str, float] = {}  # open episodes: when an event of each was last let through
        self._lock = threading.Lock()

    def __call__(self, events: list[EpisodeEvent]) -> list[EpisodeEvent]:
        with self._lock:
            return self._filter(events)

    def _filter(self, events: list[EpisodeEvent]) -> list[EpisodeEvent]:
        now = self.clock()
        out = []
        for e in events:
            if e.kind == RELEASED:
                pass
            elif e.kind == UPDATED:
                if now - self._last.get(e.episode, -math.inf) < self.seconds:
                    continue
                self._last[e.episode] = now
            elif e.kind == OPENED:
                self._last[e.episode] = now
            else:
                self._last.pop(e.episode, None)
            out.append(e)
        return out
