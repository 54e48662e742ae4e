"""The server's configuration: Config, everything `streamer serve` takes, with the defaults its flags show, and
SinkConfig, its alert sinks' part.

Plain data, no numpy, no numba, no HTTP client: the CLI builds its parser and a Config from these without
loading the pipeline or the sinks, which only `serve` does (server.py and sinks/ re-export Config, SinkConfig).
"""
from __future__ import annotations

import dataclasses

from streamer.defaults import Defaults, Options
from streamer.rule_set import NO_RULES, RuleSet

# Defaults of parts the server configures, defined here so the CLI shows them without importing those parts:
UPDATE_SECONDS = 10.0  # episodes.Throttle: an open episode's changes are announced at most this often
RESEND_SECONDS = 60.0  # sinks.AlertmanagerSink: an open episode's alert is sent again this often
# otlp.OtlpState: the resource attributes that name a series' source; the others (process.pid,
# telemetry.sdk.version, ...) change with every restart or upgrade and would reset every baseline
# (shared/DECISIONS.md).
DEFAULT_RESOURCE_ATTRIBUTES = ("service.namespace", "service.name", "host.name", "k8s.pod.name", "container.name")


@dataclasses.dataclass(frozen=True)
class SinkConfig:
    """The sink flags of `streamer serve`, checked (check_url, parse_header, the CA file readable)."""

    alertmanagers: tuple[str, ...] = ()
    webhooks: tuple[str, ...] = ()
    webhook_headers: tuple[tuple[str, str], ...] = ()  # values already read from the environment
    webhook_ca: str | None = None
    resend_seconds: float = RESEND_SECONDS


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything `streamer serve` takes; every field has the default the CLI shows."""

    host: str = "[::]"
    port: int = 9999
    defaults: Defaults = Defaults()
    max_message_mb: int = 64
    grace_seconds: float = 5.0
    drain_seconds: float = 0.0
    session_ttl: float = 600.0
    max_sessions: int = 10_000
    # series held by the process in all sessions and streams (0: no limit); with --workers N, each worker's
    # share is max_total_series / N
    max_total_series: int = 10_000_000
    store: str = "sqlite:///state/streamer.db"  # relative to the working directory (shared/DECISIONS.md)
    snapshot_seconds: float = 5.0
    lease_seconds: float = 10.0
    metrics_port: int = 9464  # Prometheus /metrics on --host; 0: not served (shared/DECISIONS.md)
    tls_cert: str | None = None       # PEM files; with both, the port speaks TLS only
    tls_key: str | None = None
    tls_client_ca: str | None = None  # with it, clients must present a certificate this CA signed (mTLS)
    alerts: SinkConfig = SinkConfig()  # where episodes are posted (Alertmanager, webhooks); none by default
    episode_update_seconds: float = UPDATE_SECONDS  # an open episode's changes are announced at most this often
    # SO_REUSEPORT. Off: the port is this process's alone, so a second server on it fails at start instead of
    # silently sharing the connections (and its sessions) with the first. On only for several workers of one
    # server that bind the same port (a future --workers N).
    reuse_port: bool = False
    # --pin-cpus: each server process (worker i of --workers N) runs on one CPU of the set it was started with
    pin_cpus: bool = False
    # OTLP: MetricsService/Export is served on `port` and, unless 0, on otlp_port too (4317: exporters' default)
    otlp_port: int = 4317
    otlp_resource_attributes: tuple[str, ...] = DEFAULT_RESOURCE_ATTRIBUTES  # those that name a series
    otlp_options: Options = Options()  # --otlp-threshold, ...: how OTLP points are judged; zero: `defaults`
    http_port: int = 9470  # the page and its API (streamer/web/) on --host; 0: not served
    http_max_upload_mb: float = 32.0  # the page's backtest upload limit (413 above it)
    rules: RuleSet = NO_RULES  # the config file's [[rules]]: option sets by series key (rule_set.py)
    # where reload() reads the configuration again (streamer/reload.py ConfigSource: the command line, the
    # environment and the --config file); None: a server made in code, which has nothing to re-read
    source: object = dataclasses.field(default=None, compare=False, repr=False)
    tenants: object = None  # streamer.tenants.Tenants from the config file's [tenants] (needs tls_client_ca)

    @property
    def max_message_bytes(self) -> int:
        """The largest request grpc takes and the largest answer it sends."""
        return self.max_message_mb * 1024 * 1024

    def security(self) -> str:
        """How the gRPC port is reached, for the ready line."""
        if not self.tls_cert:
            return "plaintext"
        return "TLS, client certificates required" if self.tls_client_ca else "TLS"
