"""Reading `serve`'s configuration again while serving (SIGHUP, StreamerServer.reload): what was read last, what
a new read changed, and which of those keys can change live.

The command line and the environment are read again with the file, so a flag keeps winning over the file at a
reload as at start. A key outside LIVE that changed refuses the whole reload, by name.
"""
from __future__ import annotations

import argparse

# The `serve` settings (argparse dests, which are the file's keys) a reload applies. The rest (ports, host,
# store, workers, limits, leases, mode, ...) is fixed while serving.
LIVE = frozenset({
    "threshold", "warmup", "alpha", "exclude_limit", "cooldown", "score", "likelihood_short", "likelihood_window",
    "likelihood_threshold", "likelihood_learning", "min_deviation", "min_relative_deviation", "direction",
    "resolve_after", "episodes", "episode_update_seconds", "series_ttl",
    "otlp_threshold", "otlp_warmup", "otlp_alpha", "otlp_exclude_outliers",
    "log_level", "alertmanager", "alert_resend_seconds", "webhook", "webhook_header", "webhook_ca",
    "tls_cert", "tls_key", "tls_client_ca", "rules",
})
# Why some keys cannot change live, when the reason is not plain (the refusal says it).
WHY = {
    "mode": "a session's state has one mode",
    "otlp_mode": "an OTLP resource's session has one mode",
    "workers": "the processes are forked at start",
    "store": "sessions are held in it",
}


class ConfigSource:
    """A `serve` command line and environment, and what they (and the --config file) gave when last read."""

    def __init__(self, argv: list[str], environ, args: argparse.Namespace, config):
        self.argv = list(argv)
        self.environ = dict(environ)
        self.args = args
        self.config = config

    @property
    def path(self) -> str | None:
        return getattr(self.args, "config", None)

    def read(self):
        """(args, Config) as read now; config_file.ConfigError when the file is refused."""
        from streamer import cli
        return cli.reread(self.argv, self.environ)

    def changes(self, args: argparse.Namespace) -> list[str]:
        """The keys whose values differ between the last read and `args`, in the flags' order."""
        from streamer import cli, config_file
        keys = [a.dest for a in config_file.flags(cli._parser().serve).values()] + ["rules"]
        return [k for k in keys if getattr(self.args, k, None) != getattr(args, k, None)]


def refused(changed: list[str]) -> list[str]:
    """The changed keys a reload cannot apply, each with why where it is not plain."""
    return [f"{k} ({WHY[k]})" if k in WHY else k for k in changed if k not in LIVE]


__all__ = ["ConfigSource", "LIVE", "refused"]
