"""Command line: `streamer serve` runs the service, `streamer detect FILE` sends a file's metrics to Detect."""
from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import logging
import sys
from typing import Iterator

from streamer import __version__
from streamer.detector import Defaults
from streamer.server import Config, serve
from streamer.state import MODE_CUMULATIVE, MODE_EXPONENTIAL

MODES = {"cumulative": MODE_CUMULATIVE, "exponential": MODE_EXPONENTIAL}


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = Defaults()
    s = sub.add_parser("serve", help="run the gRPC service",
                       description="Run the Outliers gRPC service (Detect, DetectStream), with health and "
                                   "reflection, until SIGTERM or SIGINT.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--host", default="[::]", help="address to listen on ([::] = every interface)")
    s.add_argument("--port", type=int, default=9999, help="port to listen on; 0 picks a free one")
    s.add_argument("--threshold", type=_positive(float), default=d.threshold,
                   help="k: flag |x - mean| > k * stddev when a request leaves options.threshold 0")
    s.add_argument("--warmup", type=int, default=d.warmup,
                   help="DetectStream: values a series must have seen before it can be flagged (at least 2)")
    s.add_argument("--mode", choices=sorted(MODES), default="cumulative",
                   help="DetectStream: running statistics when a request leaves options.mode unset")
    s.add_argument("--alpha", type=float, default=d.alpha,
                   help="exponential mode: weight of the newest value, 0 < alpha <= 1")
    s.add_argument("--max-series", type=_positive(int), default=d.max_series,
                   help="series one stream, session or Detect request may hold; more is RESOURCE_EXHAUSTED")
    s.add_argument("--session-ttl", type=_positive(float), default=Config.session_ttl,
                   help="seconds an idle session (no open stream) keeps its baselines before it is dropped")
    s.add_argument("--max-sessions", type=_positive(int), default=Config.max_sessions,
                   help="sessions the server keeps at once; a new one past this is RESOURCE_EXHAUSTED")
    s.add_argument("--max-message-mb", type=_positive(int), default=Config.max_message_mb,
                   help="largest request or response in MiB; a larger request is RESOURCE_EXHAUSTED")
    s.add_argument("--grace-seconds", type=float, default=Config.grace_seconds,
                   help="on SIGTERM/SIGINT, how long unary calls in flight may take to finish before they are "
                        "cancelled (open streams end at once, their received batches answered)")
    s.add_argument("--store", default=Config.store,
                   help="where sessions outlive the process: sqlite:///PATH (relative to the working directory; "
                        "sqlite:////PATH is absolute) or memory:// (nothing written)")
    s.add_argument("--snapshot-seconds", type=_positive(float), default=Config.snapshot_seconds,
                   help="while a stream is open, how often its session is written to the store if it changed "
                        "(also when the stream ends and on SIGTERM/SIGINT)")
    s.add_argument("--lease-seconds", type=_positive(float), default=Config.lease_seconds,
                   help="a session's lease in the store, renewed every third of it while its stream is open; a "
                        "server that died leaves its sessions to others after this long")
    s.add_argument("--drain-seconds", type=float, default=Config.drain_seconds,
                   help="on SIGTERM/SIGINT, seconds during which health says NOT_SERVING but new calls are still "
                        "taken, so load balancers can follow; then open streams end with UNAVAILABLE")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (logs go to stderr)")

    t = sub.add_parser("detect", help="send a CSV or JSON-lines file of metrics to Detect, print the outliers",
                       description="Send the metrics of FILE (CSV with a header time,name,value, or JSON "
                                   "lines {\"time\":..., \"name\":..., \"value\":...}; '-' reads stdin) as "
                                   "one Detect request and print each outlier.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("file", help="path of the CSV (.csv) or JSON-lines file; '-' for stdin")
    t.add_argument("--addr", default="localhost:9999", help="server address host:port")
    t.add_argument("--threshold", type=_positive(float), default=None,
                   help="k for this request (default: the server's)")
    t.add_argument("--timeout", type=_positive(float), default=30.0, help="deadline of the call, seconds")
    t.add_argument("--json", action="store_true", help="print the response as one JSON object")
    return parser


def _parse_time(text) -> dt.datetime | None:
    """RFC 3339 / ISO 8601 text, or seconds since the epoch; empty means no time."""
    if text in (None, ""):
        return None
    if isinstance(text, (int, float)) or text.replace(".", "", 1).lstrip("-").isdigit():
        return dt.datetime.fromtimestamp(float(text), tz=dt.timezone.utc)
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def read_metrics(lines: Iterator[str], path: str) -> list[tuple[str, float, dt.datetime | None]]:
    """(name, value, time) of every row; JSON lines when the first non-blank character is '{', else CSV."""
    lines = list(lines)
    first = next((line.strip() for line in lines if line.strip()), "")
    rows = []
    if first.startswith("{"):
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                    rows.append((str(obj["name"]), float(obj["value"]), _parse_time(obj.get("time"))))
                except (ValueError, KeyError, TypeError) as exc:
                    raise SystemExit(f"{path}:{n}: not a metric object ({exc})") from None
    else:
        reader = csv.DictReader(lines)
        missing = {"name", "value"} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{path}: the CSV header must name time,name,value; missing {sorted(missing)}")
        for n, row in enumerate(reader, 2):
            try:
                rows.append((row["name"], float(row["value"]), _parse_time(row.get("time"))))
            except (ValueError, TypeError) as exc:
                raise SystemExit(f"{path}:{n}: bad row ({exc})") from None
    return rows


def _detect(args) -> int:
    from streamer.client import Client, ClientError

    if args.file == "-":
        rows = read_metrics(sys.stdin, "<stdin>")
    else:
        with open(args.file, newline="") as f:
            rows = read_metrics(f, args.file)
    try:
        with Client(args.addr, timeout=args.timeout) as client:
            result = client.detect(rows, threshold=args.threshold)
    except ClientError as exc:
        print(f"streamer detect: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"indices": result.indices,
                          "outliers": [o._asdict() for o in result.outliers]}))
    else:
        print(f"{len(result.indices)} outlier(s) in {len(rows)} metric(s)")
        if result.outliers:
            print(f"{'index':>7} {'name':<20} {'value':>14} {'mean':>14} {'stddev':>14} {'zscore':>9}")
        for o in result.outliers:
            print(f"{o.index:>7} {o.name:<20} {o.value:>14.6g} {o.mean:>14.6g} {o.stddev:>14.6g} "
                  f"{o.zscore:>9.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "detect":
        sys.exit(_detect(args))
    if not 0 < args.alpha <= 1:
        raise SystemExit(f"--alpha must be in (0, 1], got {args.alpha}")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    defaults = Defaults(threshold=args.threshold, warmup=args.warmup, mode=MODES[args.mode], alpha=args.alpha,
                        max_series=args.max_series)
    config = Config(host=args.host, port=args.port, defaults=defaults, max_message_mb=args.max_message_mb,
                    grace_seconds=args.grace_seconds, drain_seconds=args.drain_seconds,
                    session_ttl=args.session_ttl, store=args.store, snapshot_seconds=args.snapshot_seconds,
                    lease_seconds=args.lease_seconds,
                    max_sessions=args.max_sessions)
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        raise SystemExit(f"streamer serve: {exc}") from None
    return 0
