"""The page's live list as a Watch subscriber with a quota (see LiveList); pageserver.py sends what it queues."""
from __future__ import annotations

from streamer import watch
from streamer.pb import outliers_pb2 as pb

LIVE_QUOTA = 16  # outliers a page's live list is sent per DELIVER_SECONDS at most (160 a second; see LiveList)


class LiveList(watch.Subscriber):
    """The page's live list: a Watch subscriber that takes LIVE_QUOTA outliers at most (a batch's first ones) and
    then stops wanting outliers until the page has been sent them (every DELIVER_SECONDS). While it does not want
    them, and nobody else watches, detection builds no outlier events at all (Hub.outliers_active), so a busy
    server with a page open pays for 160 outliers a second, not for every one; episodes always reach it. `paused`
    counts the pauses since the last message (the page says the list is sampled). Touched only on the event loop's
    thread."""

    def __init__(self, hub: watch.Hub, session: str, prefix: str, tenant: str | None = None):
        # room for episodes beyond the quota; `tenant`: that tenant's events only (None: every event)
        super().__init__(session, prefix, LIVE_QUOTA + 4 * LIVE_QUOTA, pb.WATCH_ALL, tenant)
        self.hub = hub
        self.paused = 0
        self._outliers = 0  # events queued since the last delivery

    def offer(self, events, lost: int = 0) -> None:
        room = LIVE_QUOTA - self._outliers
        if self.outliers and len(events) > room:
            # a batch's outliers past the quota are not queued (nor counted as dropped): the list is sampled;
            # episodes (the bus may bring them in the same list) all are
            kept = []
            for e in events:
                if type(e) is watch.Event:
                    if room <= 0 or not self.wants(e):
                        continue
                    room -= 1
                kept.append(e)
            events = kept
        before = len(self.queue)
        super().offer(events, lost)
        if self.outliers:
            self._outliers += len(self.queue) - before  # episodes among them too: they are few
            if self._outliers >= LIVE_QUOTA:
                self.outliers = False
                self.paused += 1
                self.hub.refresh()

    def delivered(self) -> None:
        self._outliers = 0
        if not self.outliers:
            self.outliers = True
            self.hub.refresh()
