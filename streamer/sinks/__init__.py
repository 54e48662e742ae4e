"""Where episodes go: Prometheus Alertmanager (alertmanager.py) and JSON webhooks (webhook.py).

Each sink is a thread with a bounded queue: detection hands it an EpisodeEvent and never waits; what does not
fit is dropped and counted. Failed posts are retried with backoff (http.py). Nothing here knows grpc or the
kernels.
"""
from streamer.sinks.episode import OPENED, RESOLVED, UPDATED, EpisodeEvent
from streamer.sinks.alertmanager import AlertmanagerSink
from streamer.sinks.webhook import WebhookSink

__all__ = ["OPENED", "RESOLVED", "UPDATED", "EpisodeEvent", "AlertmanagerSink", "WebhookSink"]
