"""Log formats of `streamer serve`: text lines for people, or JSON lines (`--log-format json`) for a pipeline.

A JSON line carries time (RFC 3339, UTC), level, logger, message, and the fields a record was given with
`extra=` among FIELDS (peer, session, batch, code, reason, method, duration_ms); a traceback goes in `exc`.
Hand-written rather than a library: it is one json.dumps of a few attributes per record, nowhere near a hot path
(nothing is logged per batch at INFO).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys

FORMATS = ("text", "json")
FIELDS = ("peer", "session", "batch", "code", "reason", "method", "duration_ms")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the FIELDS a record carries, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exc"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str = "info", fmt: str = "text", stream=None) -> None:
    """Send every logger's records (grpc's Python loggers too) to `stream` (stderr) in `fmt`, from `level` up.
    grpc's C core writes its own few lines to stderr directly, in its own format."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
