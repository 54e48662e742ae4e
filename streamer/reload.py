"""Reading `serve`'s configuration again while serving (SIGHUP, StreamerServer.reload): what was read last, what
a new read changed, and which of those keys can change live.

The command line and the environment are read again with the file, so a flag keeps winning over the file at a
reload as at start. A key outside LIVE that changed refuses the whole reload, by name.
"""
from __future__ import annotations

import argparse
import logging
import ssl

log = logging.getLogger("streamer")

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
    "tenants": "who may reach which session is fixed while serving",
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
        return getattr(self.args, "config", None) or self.environ.get("STREAMER_CONFIG") or None

    def read(self):
        """(args, Config) as read now; config_file.ConfigError when the file is refused."""
        from streamer import cli
        return cli.reread(self.argv, self.environ)

    def changes(self, args: argparse.Namespace) -> list[str]:
        """The keys whose values differ between the last read and `args`, in the flags' order."""
        from streamer import cli, config_file
        keys = [a.dest for a in config_file.flags(cli._parser().serve).values()] + ["rules", "tenants"]
        return [k for k in keys if getattr(self.args, k, None) != getattr(args, k, None)]


def applied(config, new):
    """`config` (a server.Config) with the settings of `new` that a reload applies."""
    import dataclasses
    return dataclasses.replace(config, defaults=new.defaults, rules=new.rules, otlp_options=new.otlp_options,
                               alerts=new.alerts, tls_cert=new.tls_cert, tls_key=new.tls_key,
                               tls_client_ca=new.tls_client_ca, episode_update_seconds=new.episode_update_seconds)


def refused(changed: list[str]) -> list[str]:
    """The changed keys a reload cannot apply, each with why where it is not plain."""
    return [f"{k} ({WHY[k]})" if k in WHY else k for k in changed if k not in LIVE]


def reload_server(server) -> str:
    """StreamerServer.reload() in one process: read the configuration again, check everything (a refusal raises
    ConfigError, logged, and nothing changes), then apply rules, detection defaults, OTLP options, sinks, log
    level and TLS files; the one-line summary. The caller holds the server's reload lock."""
    import dataclasses
    import threading

    from streamer.config_file import ConfigError
    from streamer.ops import tls
    from streamer.sinks import Sinks

    source = server.config.source
    try:
        if source is None:
            raise ConfigError("this server was not started by `streamer serve`: there is no configuration "
                              "to read again")
        if source.path is None:
            raise ConfigError("serve was started without --config: there is no file to read again (the command "
                              "line and the environment do not change)")
        args, new = source.read()
        changed = source.changes(args)
        fixed = refused(changed)
        if fixed:
            raise ConfigError(f"config file {source.path}: {', '.join(fixed)} cannot change while "
                              f"serving (restart to change {'them' if len(fixed) > 1 else 'it'})")
        material = None
        if (new.tls_cert is None) != (server.tls is None):
            raise ConfigError(f"config file {source.path}: tls_cert cannot turn TLS on or off while "
                              f"serving (the port was opened {'with' if server.tls else 'without'} it); "
                              f"restart to change it")
        if server.tls is not None:
            try:
                material = server.tls.read(new.tls_cert, new.tls_key, new.tls_client_ca)
            except tls.TLSError as exc:
                raise ConfigError(f"config file {source.path}: tls: {exc}") from None
        page_tls = None
        if server.page is not None and new.tls_cert is not None:
            try:
                page_tls = server.page.tls_context(new.tls_cert, new.tls_key, new.tls_client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"config file {source.path}: tls (the page): {exc}") from None
    except ConfigError as exc:
        log.error("reload refused, the running configuration stays: %s", exc)
        raise
    # Checked: from here on nothing can fail, so the reload is applied whole.
    if material is not None and server.tls.update(material):
        changed.append("tls certificate files (contents)")
    if page_tls is not None:  # the page's HTTPS takes the same files, for its new connections
        server.page.use_tls(page_tls)
    rules = f"; {len(new.rules)} rule(s): {', '.join(r.name for r in new.rules.rules)}" if new.rules else ""
    if not changed:  # streams keep their resolved options: the settings' version stays
        log.info("reloaded %s: nothing changed%s", source.path, rules)
        return f"reloaded {source.path}: nothing changed{rules}"
    defaults = dataclasses.replace(new.defaults, max_response_bytes=server.config.max_message_bytes)
    server.live.replace(defaults=defaults, rules=new.rules, otlp_options=new.otlp_options)
    server.sessions.series_ttl = defaults.series_ttl  # new sessions' (streams set theirs from the live defaults)
    if server.page is not None:  # the page's option form and the backtests' empty fields
        server.page.use_defaults(defaults)
    if new.alerts != server.config.alerts:
        old, server.sinks = server.sinks, Sinks(new.alerts, server.sinks.metrics)
        server.sinks.start()
        threading.Thread(target=old.close, name="streamer-sinks-close", daemon=True).start()
    if server.throttle is not None:
        server.throttle.seconds = new.episode_update_seconds
    logging.getLogger().setLevel(args.log_level.upper())
    server.config = applied(server.config, new)
    source.args, source.config = args, new
    summary = f"reloaded {source.path}: {', '.join(changed)} changed{rules}"
    log.info("%s", summary)
    return summary


__all__ = ["ConfigSource", "LIVE", "applied", "refused", "reload_server"]
