"""Command line: `streamer serve` runs the service, `streamer detect FILE` sends a file's metrics to Detect,
`streamer watch` prints the outliers the server finds, `streamer proto` prints the contract.

Every flag is checked here, with its range in --help; a bad one is one line on stderr and exit status 2. Every
`serve` flag can also come from the environment as STREAMER_<FLAG> (a flag on the command line wins).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys

# Nothing imported here loads numba or the pipeline (tests/test_cli_startup.py checks it): the client verbs start in a
# fraction of the time; `serve` imports the server (and with it the kernels) when it runs.
from streamer import __version__
from streamer.config import Config
from streamer.defaults import DIRECTIONS, MAX_LIKELIHOOD_SHORT, MODES, SCORES, Defaults, Options
from streamer.ops import logs
from streamer.progress import MODES as PROGRESS_MODES
from streamer.rule_set import NO_RULES

MAX_MESSAGE_MB = 2047  # grpc's message limits are int32 byte counts: 2047 MiB is the most that fits
MAX_UINT32 = 2**32 - 1
MAX_INT32 = 2**31 - 1


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (the flag and its rule) instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _checked(kind, ok, rule: str):
    """An argparse type: `kind(text)` that must satisfy `ok`, else an error saying `rule`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text if kind is not str else repr(text)}")
        return value
    parse.kind, parse.rule = kind, rule  # what a config file's value must be (config_file.py)
    return parse


def _int_range(low: int, high: int):
    return _checked(int, lambda v: low <= v <= high, f"an integer from {low} to {high}")


def _int_at_least(low: int):
    return _checked(int, lambda v: v >= low, f"an integer >= {low}")


def _finite_above(low: float, inclusive: bool = False):
    sign = ">=" if inclusive else ">"
    return _checked(float, lambda v: math.isfinite(v) and (v >= low if inclusive else v > low),
                    f"a finite number {sign} {low:g}")


PORT = _int_range(0, 65535)
THRESHOLD = _finite_above(0)
WARMUP = _int_range(0, MAX_UINT32)
ALPHA = _checked(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
TAIL = _checked(float, lambda v: 0 < v < 1, "a number in (0, 1)")
_LIMIT = _int_range(0, MAX_UINT32)


def _exclude_limit(text: str):
    """--exclude-limit: `warmup` (the stream's warmup, at least 2) or an integer 0-4294967295."""
    if text == "warmup":
        return text
    try:
        return _LIMIT(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be `warmup` or an integer from 0 to {MAX_UINT32}, got {text!r}") \
            from None


MESSAGE_MB = _int_range(1, MAX_MESSAGE_MB)
SECONDS = _finite_above(0)
NOT_EMPTY = _checked(str, lambda v: v.strip() != "", "a non-empty string")
PATH = NOT_EMPTY


def _url(text: str) -> str:
    from streamer.sinks import check_url
    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


URL = _url

ENV_PREFIX = "STREAMER_"
# Variables streamer or its test harnesses read that are no `serve` flag: never warned about.
ENV_SWITCHES = ("STREAMER_WIRE_CHECKED", "STREAMER_BIN")
ENV_HELP = ("Every flag can also be set in the environment as STREAMER_<FLAG>, the flag's name in capitals with "
            "dashes as underscores (STREAMER_PORT=9999, STREAMER_STORE=memory://, STREAMER_TLS_CERT=server.pem), "
            "and in the TOML file of --config as a key, the flag's name with dashes as underscores (port = 9999, "
            "tls_cert = \"server.pem\"). A flag on the command line wins over the environment, which wins over "
            "the file, which wins over the default. An unknown STREAMER_ variable is warned about at start; an "
            "unknown key, a wrong type or a value out of range in the file stops serve (streamer config check "
            "FILE checks a file). The file may also hold [[rules]]: option sets for the series whose key matches "
            "a glob (match) or a prefix, the first that matches winning. SIGHUP reads the file again and applies "
            "rules, detection defaults, sinks, log level and TLS files, or refuses it whole (logged).")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamer",
                     description="Outliers in metric streams: run the gRPC service (serve), send a file of metrics "
                                 "to it (detect), print the outliers it finds (watch), print its contract (proto).")
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = Defaults()
    s = sub.add_parser("serve", help="run the gRPC service",
                       description="Run the Outliers gRPC service (Detect, DetectStream, Watch) and OTLP metrics "
                                   "ingest, with health and reflection, until SIGTERM or SIGINT.", epilog=ENV_HELP,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--host", type=NOT_EMPTY, default="[::]",
                   help="address or name to listen on ([::] = every interface, IPv4 and IPv6)")
    s.add_argument("--port", type=PORT, default=9999,
                   help="port to listen on, 0-65535; 0 picks a free one (the log says which). The port is "
                        "exclusive: a second server on it fails at start")
    s.add_argument("--threshold", type=THRESHOLD, default=d.threshold,
                   help="k, a finite number > 0: flag |x - mean| > k * stddev when a request leaves "
                        "options.threshold 0")
    s.add_argument("--warmup", type=WARMUP, default=d.warmup,
                   help=f"DetectStream: values a series must have seen before it can be flagged, 0-{MAX_UINT32} "
                        f"(below 2 acts as 2: a deviation needs two values)")
    s.add_argument("--mode", choices=sorted(MODES), default="cumulative",
                   help="DetectStream: running statistics when a request leaves options.mode unset")
    s.add_argument("--alpha", type=ALPHA, default=d.alpha,
                   help="exponential mode: weight of the newest value, 0 < alpha <= 1")
    s.add_argument("--exclude-limit", type=_exclude_limit, default="warmup",
                   help="with options.exclude_outliers: after this many excluded values in a row a series takes "
                        "its flagged values in again until one is judged normal (a new level is learned), "
                        f"0-{MAX_UINT32}, 0 = no limit, or `warmup`: the stream's warmup (at least 2); when a "
                        "request leaves options.exclude_limit unset")
    s.add_argument("--cooldown", type=WARMUP, default=d.cooldown,
                   help="DetectStream: after a flag, values of the series in a row judged normal before it can "
                        "be flagged again (0 = off, 1 = the first of each run of outliers), when a request "
                        "leaves options.cooldown unset")
    s.add_argument("--score", choices=sorted(SCORES), default="zscore",
                   help="DetectStream: what flags a value when a request leaves options.score unset: the "
                        "z-score, or the anomaly likelihood (Ahmad et al. 2017)")
    s.add_argument("--likelihood-short", type=_int_range(1, MAX_LIKELIHOOD_SHORT), default=d.likelihood_short,
                   help="likelihood score: raw scores averaged (options.likelihood_short)")
    s.add_argument("--likelihood-window", type=_int_range(1, MAX_UINT32), default=d.likelihood_window,
                   help="likelihood score: averages the long-term mean and variance weigh "
                        "(options.likelihood_window)")
    s.add_argument("--likelihood-threshold", type=TAIL, default=d.likelihood_threshold,
                   help="likelihood score: flag when the tail probability is below this, in (0, 1) "
                        "(options.likelihood_threshold)")
    s.add_argument("--likelihood-learning", type=WARMUP, default=d.likelihood_learning,
                   help="likelihood score: values a series takes in before it can be flagged "
                        "(options.likelihood_learning)")
    s.add_argument("--min-deviation", type=_finite_above(0, inclusive=True), default=d.min_deviation,
                   help="DetectStream: a flagged value stays flagged only if also |x - mean| >= this (in the "
                        "value's unit; 0 = off), when a request leaves options.min_deviation unset")
    s.add_argument("--min-relative-deviation", type=_finite_above(0, inclusive=True),
                   default=d.min_relative_deviation,
                   help="DetectStream: ... and |x - mean| >= this * |mean| (0 = off; "
                        "options.min_relative_deviation)")
    s.add_argument("--direction", choices=sorted(DIRECTIONS), default="both",
                   help="DetectStream: the side of the mean a value may be flagged on (options.direction)")
    s.add_argument("--episodes", choices=("auto", "on", "off"), default="auto",
                   help="keep episodes of outliers per series (40 bytes a series), for Watch and the alert "
                        "sinks: auto = on when --alertmanager or --webhook is set")
    s.add_argument("--resolve-after", type=_int_range(1, MAX_UINT32), default=d.resolve_after,
                   help="episodes: normal values in a row that resolve a series' open episode, when a request "
                        "leaves options.resolve_after unset")
    s.add_argument("--episode-update-seconds", type=SECONDS, default=Config.episode_update_seconds,
                   help="seconds (finite, > 0): an open episode's changes are announced at most this often")
    s.add_argument("--max-series", type=_int_range(1, MAX_INT32), default=d.max_series,
                   help=f"live series one stream, session or Detect request may hold, 1-{MAX_INT32} (expired "
                        f"ones do not count: --series-ttl); more is "
                        f"RESOURCE_EXHAUSTED")
    s.add_argument("--series-ttl", type=_finite_above(0, inclusive=True), default=d.series_ttl,
                   help="DetectStream: seconds (finite, >= 0; 0: never) a series may go without a value before "
                        "it is dropped (slot reused, state gone from the next snapshot; it comes back fresh), "
                        "when a request leaves options.series_ttl_seconds unset. Counted in data time "
                        "(Metric.time) when metrics carry one, arrival time otherwise")
    s.add_argument("--max-total-series", type=_int_range(0, 2 ** 62), default=Config.max_total_series,
                   help="series the server holds in all sessions and streams (0: no limit); a batch that would "
                        "add more is RESOURCE_EXHAUSTED. With --workers N each worker holds a 1/N share")
    s.add_argument("--session-ttl", type=SECONDS, default=Config.session_ttl,
                   help="seconds (finite, > 0) an idle session (no open stream) keeps its baselines, in memory "
                        "and in the store, before it is dropped")
    s.add_argument("--max-sessions", type=_int_at_least(1), default=Config.max_sessions,
                   help="sessions the server keeps at once, >= 1; a new one past this is RESOURCE_EXHAUSTED")
    s.add_argument("--max-message-mb", type=MESSAGE_MB, default=Config.max_message_mb,
                   help=f"largest request or response in MiB, 1-{MAX_MESSAGE_MB} (grpc counts bytes in an "
                        f"int32); a larger request or answer is RESOURCE_EXHAUSTED")
    s.add_argument("--grace-seconds", type=_finite_above(0, inclusive=True), default=Config.grace_seconds,
                   help="on SIGTERM/SIGINT, seconds (finite, >= 0) unary calls in flight may take to finish "
                        "before they are cancelled (open streams end at once, their received batches answered)")
    s.add_argument("--drain-seconds", type=_finite_above(0, inclusive=True), default=Config.drain_seconds,
                   help="on SIGTERM/SIGINT, seconds (finite, >= 0) during which health says NOT_SERVING but new "
                        "calls are still taken, so load balancers can follow; then open streams end with "
                        "UNAVAILABLE")
    s.add_argument("--workers", type=_int_range(0, 1024), default=1,
                   help="server processes on the port, 0-1024 (0: one per CPU streamer may run on): grpc's Python "
                        "server uses one core a process; sessions move between workers through the store, so "
                        "memory:// is refused with more than one")
    s.add_argument("--pin-cpus", action="store_true",
                   help="bind each server process to one CPU (worker i to the i-th of the CPUs streamer may run "
                        "on, round-robin; see taskset): its threads hand work to each other on one core, which "
                        "costs less CPU a message; for hosts that give streamer its cores to itself")
    s.add_argument("--store", default=Config.store,
                   help="where sessions outlive the process: sqlite:///PATH (relative to the working directory; "
                        "sqlite:////PATH is absolute), redis://HOST:PORT/DB (shared by a fleet of servers; rediss:// "
                        "for TLS) or memory:// (nothing written)")
    s.add_argument("--snapshot-seconds", type=SECONDS, default=Config.snapshot_seconds,
                   help="seconds (finite, > 0): while a stream is open, how often its session is written to the "
                        "store if it changed (also when the stream ends, and on SIGTERM/SIGINT)")
    s.add_argument("--lease-seconds", type=SECONDS, default=Config.lease_seconds,
                   help="seconds (finite, > 0) of a session's lease in the store, renewed every third of it while "
                        "its stream is open; a server that died leaves its sessions to others after this long")
    s.add_argument("--metrics-port", type=PORT, default=Config.metrics_port,
                   help="port of the Prometheus /metrics endpoint (plaintext HTTP, on --host), 0-65535; 0: not "
                        "served")
    s.add_argument("--http-port", type=PORT, default=Config.http_port,
                   help="port of the page (live outliers, series, backtest) and its JSON/SSE API, on --host, HTTPS "
                        "with the TLS flags; 0-65535; 0: not served (with --workers N, worker i uses port + i)")
    s.add_argument("--http-max-upload-mb", type=SECONDS, default=Config.http_max_upload_mb,
                   help="MiB (> 0): the largest file the page's backtest takes (larger: HTTP 413)")
    o = s.add_argument_group("OTLP (opentelemetry.proto.collector.metrics.v1.MetricsService/Export, also on --port)")
    o.add_argument("--otlp-port", type=PORT, default=Config.otlp_port,
                   help="a second port for OTLP exporters' default endpoint (every service is on it), 0-65535; "
                        "0: only --port")
    o.add_argument("--otlp-resource-attributes", type=NOT_EMPTY, default=",".join(Config.otlp_resource_attributes),
                   help="comma-separated resource attributes that name a source: they join each series key and "
                        "name the resource's session (others, like process.pid, are left out)")
    o.add_argument("--otlp-threshold", type=THRESHOLD, default=None, help="k for OTLP points (default: --threshold)")
    o.add_argument("--otlp-warmup", type=WARMUP, default=None, help="warmup for OTLP series (default: --warmup)")
    o.add_argument("--otlp-mode", choices=sorted(MODES), default=None,
                   help="statistics for OTLP series (default: --mode)")
    o.add_argument("--otlp-alpha", type=ALPHA, default=None, help="exponential mode's alpha for OTLP series "
                                                                  "(default: --alpha)")
    o.add_argument("--otlp-exclude-outliers", action="store_true", help="flagged OTLP values do not update their "
                                                                        "series' state")
    s.add_argument("--tls-cert", type=PATH, default=None,
                   help="PEM file of the server's certificate (its chain, leaf first): the port then speaks TLS "
                        "only; needs --tls-key")
    s.add_argument("--tls-key", type=PATH, default=None,
                   help="PEM file of the certificate's private key (unencrypted)")
    s.add_argument("--tls-client-ca", type=PATH, default=None,
                   help="PEM file of the CA(s) whose client certificates are accepted: every client must present "
                        "one (mutual TLS); needs --tls-cert")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (logs go to stderr)")
    s.add_argument("--log-format", default="text", choices=logs.FORMATS,
                   help="text lines, or JSON lines (time, level, logger, message, and peer, session, batch, "
                        "code, reason, duration_ms where they apply)")
    a = s.add_argument_group("alerts (episodes of outliers, see the README's Alerts)")
    a.add_argument("--alertmanager", type=URL, action="append", default=[], metavar="URL",
                   help="a Prometheus Alertmanager to post episodes to as alerts (POST URL/api/v2/alerts); "
                        "repeat for each member of an HA pair, as Prometheus does")
    a.add_argument("--alert-resend-seconds", type=SECONDS, default=Config.alerts.resend_seconds,
                   help="seconds (finite, > 0) between re-sends of an open episode's alert, whose endsAt is four "
                        "of these ahead (an alert whose server died expires by itself)")
    a.add_argument("--webhook", type=URL, action="append", default=[], metavar="URL",
                   help="a URL to POST episode events to as JSON (batched, in order, retried; repeatable)")
    a.add_argument("--webhook-header", action="append", default=[], metavar="NAME=VALUE",
                   help="an HTTP header of every webhook POST (repeatable); VALUE env:VAR takes the environment "
                        "variable VAR, for secrets")
    a.add_argument("--webhook-ca", type=PATH, default=None, metavar="FILE",
                   help="PEM file of the CA(s) an https:// webhook's certificate is checked against (default: the "
                        "system's)")
    s.add_argument("--config", type=PATH, default=None, metavar="FILE",
                   help="TOML file of serve settings, one key per flag (see below); a flag or STREAMER_<FLAG> "
                        "wins over it")
    s.set_defaults(subparser=s)
    parser.serve = s  # main() sets its defaults from the environment

    t = sub.add_parser("detect", help="send a CSV or JSON-lines file of metrics to Detect, print the outliers",
                       description="Send the metrics of FILE (CSV with a header time,name,value, or JSON "
                                   "lines {\"time\":..., \"name\":..., \"value\":...}; '-' reads stdin) as "
                                   "one Detect request, built in bounded memory (the answer is that of one "
                                   "Detect of every row), and print each outlier. With --stream, the file goes "
                                   "through DetectStream in batches instead, whose rule differs: each value "
                                   "is judged against the values of its series before it.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("file", help="path of the CSV or JSON-lines file (JSON lines if its first line starts with "
                                "'{'); '-' for stdin")
    t.add_argument("--addr", type=NOT_EMPTY, default="localhost:9999", help="server address host:port")
    t.add_argument("--threshold", type=THRESHOLD, default=None,
                   help="k for this request, a finite number > 0 (default: the server's)")
    t.add_argument("--timeout", type=SECONDS, default=None,
                   help="deadline in seconds (finite, > 0) of the Detect call, or with --stream of the whole "
                        "stream (default: 30 for Detect, none for --stream)")
    t.add_argument("--max-message-mb", type=MESSAGE_MB, default=Config.max_message_mb,
                   help=f"largest request in MiB, 1-{MAX_MESSAGE_MB}; a file that does not fit in one Detect "
                        f"request is refused with a message (the server's --max-message-mb must allow it too)")
    t.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    t.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                   help="a progress line on stderr: auto = on a terminal, once the run has taken 1.5 s")
    tg = t.add_argument_group("TLS (a server started with --tls-cert)")
    tg.add_argument("--tls", action="store_true",
                    help="connect over TLS, trusting the system's CAs (implied by the other --tls flags)")
    tg.add_argument("--tls-ca", type=PATH, default=None,
                    help="PEM file of the CA that signed the server's certificate")
    tg.add_argument("--tls-cert", type=PATH, default=None,
                    help="PEM file of this client's certificate, for a server with --tls-client-ca (mTLS); needs "
                         "--tls-key")
    tg.add_argument("--tls-key", type=PATH, default=None, help="PEM file of the client certificate's key")
    g = t.add_argument_group("DetectStream (--stream)")
    g.add_argument("--stream", action="store_true",
                   help="send the file through DetectStream in batches (no session): each value is judged "
                        "against the values of its series before it, with a warm-up, not against the whole "
                        "file's mean")
    g.add_argument("--batch-size", type=_int_range(1, 1_000_000), default=None,
                   help="--stream: rows per request, 1-1000000 (default 10000)")
    g.add_argument("--warmup", type=WARMUP, default=None,
                   help=f"--stream: options.warmup, 0-{MAX_UINT32} (default and 0: the server's)")
    g.add_argument("--mode", choices=sorted(MODES), default=None,
                   help="--stream: options.mode (default: the server's)")
    g.add_argument("--alpha", type=ALPHA, default=None,
                   help="--stream, exponential mode: options.alpha, 0 < alpha <= 1 (default: the server's)")
    g.add_argument("--exclude-outliers", action="store_true", default=None,
                   help="--stream: flagged values do not update their series' state")
    g.add_argument("--exclude-limit", type=WARMUP, default=None,
                   help="--stream: options.exclude_limit (default: the server's)")
    g.add_argument("--cooldown", type=WARMUP, default=None,
                   help="--stream: options.cooldown (default: the server's)")
    g.add_argument("--score", choices=sorted(SCORES), default=None,
                   help="--stream: options.score (default: the server's)")
    t.set_defaults(subparser=t)

    q = sub.add_parser("session", help="print a session as the store holds it, as JSON",
                       description="Print the stored snapshot of session NAME as one JSON object: its mode, "
                                   "version, applied sequence number (seq), options, and per series the name, "
                                   "count, mean and spread (M2, or the exponential variance). Reads the store "
                                   "only; safe while servers use it.")
    q.add_argument("name", metavar="NAME", help="the session's name")
    q.add_argument("--store", default="sqlite:///state/streamer.db",
                   help="the store to read, as `streamer serve --store` (default: %(default)s)")

    c = sub.add_parser("config", help="check a config file (serve --config) and print the configuration",
                       description="Work with the TOML file of `streamer serve --config`.")
    csub = c.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="check FILE and print the configuration serve would run with",
                            description="Check FILE as `streamer serve --config FILE` would (unknown keys, "
                                        "types, ranges; exit status 2 and one line naming the line and key if "
                                        "it is refused) and print the effective configuration as TOML: every "
                                        "key, with the file's value, a STREAMER_<FLAG> variable's (which wins "
                                        "over the file) or the default, and which it is.")
    check.add_argument("file", metavar="FILE", help="the TOML file")
    parser.config_check = check
    w = sub.add_parser("watch", help="print every outlier the server finds from now on, one line each",
                       description="Subscribe to Watch: print each outlier any DetectStream or OTLP export of the "
                                   "server (its every worker, and on a shared Redis every replica) finds from now "
                                   "on, and each notice of outliers missed because this reader was too slow.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w.add_argument("--addr", type=NOT_EMPTY, default="localhost:9999", help="server address host:port")
    w.add_argument("--session", default="", help="only this session's outliers (OTLP: otlp:{...})")
    w.add_argument("--prefix", default="", help="only series whose key starts with this")
    w.add_argument("--json", action="store_true", help="one JSON object a line")
    w.add_argument("--kinds", choices=("outliers", "episodes", "all"), default="outliers",
                   help="which events: every outlier, episodes opening, growing and resolving (a server with "
                        "--episodes), or both")
    w.add_argument("--count", type=_int_at_least(1), default=None,
                   help="exit 0 after this many outliers (and episode events)")
    wg = w.add_argument_group("TLS (a server started with --tls-cert)")
    wg.add_argument("--tls", action="store_true", help="connect over TLS, trusting the system's CAs")
    wg.add_argument("--tls-ca", type=PATH, default=None, help="PEM file of the CA of the server's certificate")
    wg.add_argument("--tls-cert", type=PATH, default=None, help="PEM file of this client's certificate (mTLS)")
    wg.add_argument("--tls-key", type=PATH, default=None, help="PEM file of the client certificate's key")

    from streamer import admin_cli
    admin_cli.add_parser(sub, PATH)

    sub.add_parser("proto", help="print the service's contract, protos/outliers.proto (also in the wheel)",
                   description="Print protos/outliers.proto, the contract of the Outliers service, as shipped "
                               "in the package: hand it to grpcurl -proto, or generate a client from it.")
    return parser


def _environment(parser: argparse.ArgumentParser, environ, sources: dict[str, str] | None = None) -> list[str]:
    """Take the `serve` flags' defaults from STREAMER_<FLAG> variables, checked as the flag would be (a bad one is
    a usage error naming the variable); returns the STREAMER_ variables that are neither a flag nor a known
    switch. Repeatable flags would take a comma-separated list. `sources` gets "environment NAME" by dest."""
    known = set(ENV_SWITCHES)
    for action in parser._actions:
        flags = [o for o in action.option_strings if o.startswith("--")]
        if not flags or action.dest in ("help", "version"):
            continue
        name = ENV_PREFIX + flags[0][2:].upper().replace("-", "_")
        known.add(name)
        if name not in environ:
            continue
        text = environ[name]
        try:
            if isinstance(action, argparse._StoreTrueAction):
                if text.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
                    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
                value = text.lower() in ("1", "true", "yes", "on")
            elif isinstance(action, argparse._AppendAction):
                value = [action.type(v) if action.type else v for v in text.split(",") if v]
            else:
                value = action.type(text) if action.type else text
                if action.choices is not None and value not in action.choices:
                    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                                     f"{', '.join(map(str, action.choices))})")
        except argparse.ArgumentTypeError as exc:
            parser.error(f"environment variable {name} (for {flags[0]}): {exc}")
        parser.set_defaults(**{action.dest: value})
        if sources is not None:
            sources[action.dest] = f"environment {name}"
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)


def _check_tls_pair(parser: argparse.ArgumentParser, args) -> None:
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("argument --tls-cert: --tls-cert and --tls-key go together")


def _check_serve(parser: argparse.ArgumentParser, args) -> None:
    _check_tls_pair(parser, args)
    from streamer import sinks
    try:
        for header in args.webhook_header:  # read again in main(): a secret is never printed (config check)
            sinks.parse_header(header)
    except ValueError as exc:
        parser.error(f"argument --webhook-header: {exc}")
    if args.webhook_ca is not None:
        try:
            sinks.check_ca(args.webhook_ca)
        except ValueError as exc:
            parser.error(f"argument --webhook-ca: {exc}")
    if args.tls_client_ca is not None and args.tls_cert is None:
        parser.error("argument --tls-client-ca: needs --tls-cert and --tls-key (client certificates are checked "
                     "only over TLS)")


def _check_detect(parser: argparse.ArgumentParser, args) -> None:
    """Flags that only DetectStream reads are refused without --stream, rather than silently ignored."""
    if not args.stream:
        for flag in ("batch_size", "warmup", "mode", "alpha", "exclude_outliers", "exclude_limit", "cooldown",
                     "score"):
            if getattr(args, flag) is not None:
                parser.error(f"argument --{flag.replace('_', '-')}: only with --stream (Detect judges a batch "
                             f"by its own mean and stddev, with --threshold only)")
    _check_tls_pair(parser, args)
    if args.batch_size is None:
        args.batch_size = 10_000
    if args.mode is not None:
        args.mode = MODES[args.mode]
    if args.score is not None:
        args.score = SCORES[args.score]


def _print_session(url: str, name: str) -> int:
    import json

    import numpy as np

    from streamer.store import StoreError, open_store
    if url.startswith("sqlite:///") and not os.path.exists(url[len("sqlite:///"):]):
        raise SystemExit(f"streamer session: {url}: no such file")  # rather than make an empty store
    try:
        store = open_store(url)
        try:
            snap = store.load(name)
        finally:
            store.close()
    except StoreError as exc:
        raise SystemExit(f"streamer session: {exc}") from None
    if snap is None:
        raise SystemExit(f"streamer session: {url} holds no session {name!r}")
    names, offsets = [], 0
    for n in snap.name_lengths.tolist():
        names.append(snap.names[offsets:offsets + n].decode())
        offsets += n
    # the likelihood ring is a row of raw scores per series, stored as one opaque item each (state.py)
    arrays = {k: (a.view(np.float64).reshape(len(a), -1) if a.dtype.kind == "V" else a).tolist()
              for k, a in snap.arrays.items()}
    series = [dict(name=n, **{k: arrays[k][i] for k in arrays}) for i, n in enumerate(names)]
    # floats as repr: exact round trip
    json.dump(dict(session=snap.name, tenant=snap.tenant, mode=snap.mode, version=snap.version, seq=snap.seq,
                   options=snap.options, last_used=snap.last_used, series=series), sys.stdout)
    sys.stdout.write("\n")
    return 0


def _config_path(argv: list[str], environ) -> str | None:
    """The --config of a `serve` command line (read before the rest: the file sets the flags' defaults), else
    STREAMER_CONFIG."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    path = pre.parse_known_args(argv)[0].config
    return path if path is not None else environ.get(ENV_PREFIX + "CONFIG") or None


def _layers(serve: argparse.ArgumentParser, path: str | None, environ, sources: dict[str, str],
            refuse: argparse.ArgumentParser | None = None) -> list[str]:
    """Set the `serve` flags' defaults from the config file at `path` (if any), then from the environment, which
    wins; record where each came from in `sources`. Returns the unknown STREAMER_ variables. A refused file is a
    usage error of `refuse` (default: serve) naming its line and key."""
    from streamer import config_file
    if path is not None:
        try:
            values = config_file.load(path, serve)
        except config_file.ConfigError as exc:
            (refuse or serve).error(str(exc))
        serve.set_defaults(**values)
        sources.update((dest, f"file {path}") for dest in values)
    return _environment(serve, environ, sources)


def _check_config(parser: argparse.ArgumentParser, path: str, environ) -> int:
    """`streamer config check FILE`: refuse the file as serve would, or print the configuration it gives."""
    from streamer import config_file
    sources: dict[str, str] = {}
    _layers(parser.serve, path, environ, sources, refuse=parser.config_check)
    args = parser.serve.parse_args([])
    _check_serve(parser.config_check, args)
    sys.stdout.write(f"# streamer serve --config {path} runs with this (a flag on its command line wins over "
                     f"each)\n" + config_file.effective(parser.serve, args, sources))
    return 0


def _config(args) -> Config:
    """The server's Config from parsed `serve` arguments."""
    from streamer import sinks
    defaults = Defaults(threshold=args.threshold, warmup=args.warmup, mode=MODES[args.mode], alpha=args.alpha,
                        exclude_limit=None if args.exclude_limit == "warmup" else args.exclude_limit,
                        cooldown=args.cooldown, score=SCORES[args.score],
                        likelihood_short=args.likelihood_short, likelihood_window=args.likelihood_window,
                        likelihood_threshold=args.likelihood_threshold,
                        likelihood_learning=args.likelihood_learning, max_series=args.max_series,
                        series_ttl=args.series_ttl,
                        min_deviation=args.min_deviation, min_relative_deviation=args.min_relative_deviation,
                        direction=DIRECTIONS[args.direction], resolve_after=args.resolve_after,
                        episodes=args.episodes == "on" or args.episodes == "auto" and bool(
                            args.alertmanager or args.webhook))
    config = Config(host=args.host, port=args.port, defaults=defaults, max_message_mb=args.max_message_mb,
                    grace_seconds=args.grace_seconds, drain_seconds=args.drain_seconds,
                    session_ttl=args.session_ttl, store=args.store, snapshot_seconds=args.snapshot_seconds,
                    lease_seconds=args.lease_seconds, max_sessions=args.max_sessions, pin_cpus=args.pin_cpus,
                    max_total_series=args.max_total_series,
                    metrics_port=args.metrics_port, tls_cert=args.tls_cert, tls_key=args.tls_key,
                    tls_client_ca=args.tls_client_ca, episode_update_seconds=args.episode_update_seconds,
                    alerts=sinks.SinkConfig(tuple(args.alertmanager), tuple(args.webhook),
                                            tuple(sinks.parse_header(h) for h in args.webhook_header),
                                            args.webhook_ca, args.alert_resend_seconds),
                    otlp_port=args.otlp_port, http_port=args.http_port,
                    http_max_upload_mb=args.http_max_upload_mb,
                    otlp_resource_attributes=tuple(a.strip() for a in args.otlp_resource_attributes.split(",")
                                                   if a.strip()),
                    rules=getattr(args, "rules", None) or NO_RULES,
                    tenants=getattr(args, "tenants", None),  # the config file's [tenants] (no flag)
                    otlp_options=Options(threshold=args.otlp_threshold or 0.0, warmup=args.otlp_warmup or 0,
                                         mode=MODES[args.otlp_mode] if args.otlp_mode else 0,
                                         alpha=args.otlp_alpha or 0.0, exclude_outliers=args.otlp_exclude_outliers))
    return config


def reread(argv: list[str], environ) -> tuple[argparse.Namespace, Config]:
    """Read a `serve` command line, its environment and its --config file again, as main() did at start (a
    reload): the arguments and the Config, or config_file.ConfigError with the message serve would have
    stopped with."""
    from streamer.config_file import ConfigError

    def refuse(message: str):
        raise ConfigError(message)

    parser = _parser()
    parser.error = parser.serve.error = refuse
    path = _config_path(argv[1:], environ)
    _layers(parser.serve, path, environ, {})
    args = parser.parse_args(argv)
    _check_serve(args.subparser, args)
    return args, _config(args)


def main(argv: list[str] | None = None, environ=None) -> int:
    parser = _parser()
    environ = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else argv
    # only `serve` reads the config file and the environment: its parser's defaults are set from them before the
    # command line is parsed, so a flag wins over the environment, which wins over the file
    sources: dict[str, str] = {}
    config = _config_path(argv[1:], environ) if argv[:1] == ["serve"] else None
    unknown = _layers(parser.serve, config, environ, sources) if argv[:1] == ["serve"] else []
    args = parser.parse_args(argv)
    if args.command == "config":
        return _check_config(parser, args.file, environ)
    if args.command == "proto":
        from importlib import resources
        sys.stdout.write(resources.files("streamer.pb").joinpath("outliers.proto").read_text(encoding="utf-8"))
        return 0
    if args.command == "session":
        return _print_session(args.store, args.name)
    if args.command == "admin":
        _check_tls_pair(parser, args)
        from streamer import admin_cli as admin_verb
        return admin_verb.run(args)
    if args.command == "watch":
        _check_tls_pair(parser, args)
        from streamer import watch_cli
        return watch_cli.run(args)
    if args.command == "detect":
        _check_detect(args.subparser, args)
        from streamer import detect_file
        try:
            sys.exit(detect_file.run(args))
        except KeyboardInterrupt:
            sys.exit(130)
        except BrokenPipeError:  # `streamer detect FILE | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
    _check_serve(args.subparser, args)
    logs.configure(args.log_level, args.log_format)
    if unknown:
        logging.getLogger("streamer").warning(
            "ignoring environment variable(s) %s: no `streamer serve` flag has that name (see streamer serve "
            "--help)", ", ".join(unknown))
    from streamer.reload import ConfigSource
    config = _config(args)
    config = dataclasses.replace(config, source=ConfigSource(argv, environ, args, config))
    try:
        from streamer import workers
        return workers.run(config, args.workers)
    except OSError as exc:
        raise SystemExit(f"streamer serve: {exc}") from None
