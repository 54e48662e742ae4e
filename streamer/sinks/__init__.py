"""Where episodes go: Prometheus Alertmanager (alertmanager.py) and JSON webhooks (webhook.py).

Each sink is a thread with a bounded queue: detection hands it an EpisodeEvent and never waits; what does not
fit is dropped and counted. Failed posts are retried with backoff (http.py). Nothing here knows grpc or the
kernels. An episode is posted by the process that judges its series (one owner at a time, by the session's
lease), so a fleet posts each episode once, not once per worker.
"""
from __future__ import annotations

import os
import re
import ssl
import urllib.parse

from streamer.config import SinkConfig  # plain data with the server's Config (the CLI reads it without sinks)
from streamer.sinks.alertmanager import AlertmanagerSink
from streamer.sinks.episode import OPENED, RELEASED, RESOLVED, UPDATED, EpisodeEvent
from streamer.sinks.http import SinkMetrics
from streamer.sinks.webhook import WebhookSink

__all__ = ["OPENED", "RELEASED", "RESOLVED", "UPDATED", "EpisodeEvent", "AlertmanagerSink", "WebhookSink", "SinkConfig",
           "Sinks", "check_url", "parse_header"]

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)


def check_url(text: str) -> str:
    """An http:// or https:// URL with a host, else ValueError saying so."""
    url = urllib.parse.urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {text!r}")
    try:
        url.port
    except ValueError:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {text!r} (a bad port)") from None
    return text


def parse_header(text: str, environ=os.environ) -> tuple[str, str]:
    """NAME=VALUE, where VALUE `env:VAR` is the environment variable VAR (for secrets), else ValueError."""
    name, eq, value = text.partition("=")
    if not eq or not _TOKEN.match(name):
        raise ValueError(f"must be NAME=VALUE with NAME a header name, got {text!r}")
    if value.startswith("env:"):
        var = value[4:]
        if var not in environ:
            raise ValueError(f"header {name} names the environment variable {var}, which is not set")
        value = environ[var]
    if "\n" in value or "\r" in value:
        raise ValueError(f"header {name}: the value has a line break")
    return name, value


def check_ca(path: str) -> str:
    """A PEM file of CA certificates ssl can load, else ValueError saying why."""
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load CA certificates from {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    return path


class Sinks:
    """Every sink of a server: submit() fans an event out to each; none blocks."""

    def __init__(self, config: SinkConfig, metrics: SinkMetrics | None = None):
        metrics = metrics if metrics is not None else SinkMetrics()
        self.metrics = metrics  # kept: a reload's new Sinks counts on the same metrics
        self.alertmanagers = [AlertmanagerSink(url, metrics, resend_seconds=config.resend_seconds)
                              for url in config.alertmanagers]
        self.webhooks = [WebhookSink(url, metrics, headers=dict(config.webhook_headers), ca_file=config.webhook_ca)
                         for url in config.webhooks]
        self.all = [*self.alertmanagers, *self.webhooks]

    def start(self) -> None:
        for sink in self.all:
            sink.start()

    def submit(self, event: EpisodeEvent) -> None:
        for sink in self.all:
            sink.submit(event)

    def close(self, timeout: float = 2.0) -> None:
        """One last try at what is queued, within `timeout` in all."""
        for sink in self.all:
            sink.stop_soon()
        for sink in self.all:
            sink.join(timeout / max(len(self.all), 1))
