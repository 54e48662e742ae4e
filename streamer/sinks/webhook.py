"""Episode events as JSON to a webhook (--webhook URL): batched, in order, one request in flight, retried with
backoff until the receiver answers 2xx. Each event carries an id, so a receiver drops what a retry repeats.

The body (README: "Webhook JSON"): {"version": 1, "events": [EpisodeEvent.as_json(), ...]}.
"""
from __future__ import annotations

from streamer.sinks.episode import RELEASED
from streamer.sinks.http import Poster

BATCH = 100  # events per POST


class WebhookSink(Poster):
    kind = "webhook"

    def _run(self) -> None:
        batch: list = []
        retry_at = 0.0
        while True:
            stopping = self._stopping.is_set()
            if len(batch) < BATCH:  # a failed batch is re-sent as it was, with what came after it behind it
                now = self.clock()
                wait = 0 if stopping else (min(retry_at - now, 0.5) if batch else 0.5)
                batch.extend(e for e in self.take(BATCH - len(batch), wait) if e.kind != RELEASED)
            now = self.clock()
            if batch and (now >= retry_at or stopping):
                if self.post("", {"version": 1, "events": [e.as_json() for e in batch]}):
                    self.delivered(len(batch))
                    batch = []
                else:
                    retry_at = now + self.retry_delay()
            elif batch and not stopping:
                self._stopping.wait(min(retry_at - now, 0.5))
            if stopping:
                return
