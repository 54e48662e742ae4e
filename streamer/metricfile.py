"""`streamer detect`'s input, read a row at a time: CSV with a header naming time,name,value, or JSON lines.

Rows come out as (name, value, seconds, nanos), seconds None for a row without a time; every problem is a
FileError whose message names the file, the line and what is wrong. No protobuf or grpc here.
"""
from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import os
import re
import stat
import sys
from typing import BinaryIO, Iterator

Row = tuple  # (name: str, value: float, seconds: int | None, nanos: int)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_DECIMAL = re.compile(r"([+-]?)(\d+)(?:\.(\d*))?\Z")
# The fraction of an RFC 3339 time, taken apart so nanoseconds survive (datetime keeps microseconds only).
_FRACTION = re.compile(r"([T ]\d\d:\d\d:\d\d)\.(\d+)", re.I)


class FileError(Exception):
    """The input cannot be read as metrics; str() is one line: `FILE:LINE: problem` (or `FILE: problem`)."""


def parse_time(text) -> tuple[int, int] | None:
    """(seconds, nanos) since the epoch of an RFC 3339 / ISO 8601 time or of a number of seconds; None if
    empty. A time without an offset is UTC. Raises ValueError."""
    if text is None or text == "":
        return None
    if isinstance(text, bool):
        raise ValueError(text)
    if isinstance(text, (int, float)):
        return _from_float(float(text))
    if not isinstance(text, str):
        raise TypeError(text)
    text = text.strip()
    number = _DECIMAL.match(text)
    if number:  # exact: "1764580000.123456789" keeps every digit, which a float would not
        sign, whole, fraction = number.groups()
        nanos = int((fraction or "").ljust(9, "0")[:9])
        seconds = int(whole)
        if sign == "-":
            seconds, nanos = (-seconds - 1, 1_000_000_000 - nanos) if nanos else (-seconds, 0)
        return seconds, nanos
    if ":" not in text:
        try:
            return _from_float(float(text))  # 1.76458e9
        except ValueError:
            pass  # a date without a time of day, 2026-11-23
    fraction = _FRACTION.search(text)
    nanos = 0
    if fraction:
        nanos = int(fraction.group(2).ljust(9, "0")[:9])
        text = text[:fraction.start()] + fraction.group(1) + text[fraction.end():]
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    delta = when - _EPOCH
    return delta.days * 86_400 + delta.seconds, nanos


def _from_float(seconds: float) -> tuple[int, int]:
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(seconds)
    whole = int(seconds // 1)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return whole, nanos


def _value(raw, where: str) -> float:
    if isinstance(raw, bool) or raw is None:
        raise FileError(f"{where}: value {json.dumps(raw)} is not a number")
    if raw == "":
        raise FileError(f"{where}: the value is empty")
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise FileError(f"{where}: value {raw!r} is not a number") from None


def _time(raw, where: str) -> tuple[int, int] | None:
    try:
        return parse_time(raw)
    except (TypeError, ValueError, OverflowError):
        raise FileError(f"{where}: time {raw!r} is neither an RFC 3339 time (2026-11-23T10:00:00Z) nor "
                        f"seconds since the epoch") from None


class MetricFile:
    """An open input file (or stdin, as "-"). `rows()` yields its rows once; `line` is the line being read,
    `bytes_read` and `size` (None when unknown, as for a pipe) are for a progress report."""

    def __init__(self, path: str):
        self.label = "<stdin>" if path == "-" else path
        self.size: int | None = None
        self.line = 0
        self.bytes_read = 0
        if path == "-":
            self._file: BinaryIO = sys.stdin.buffer
            self._owned = False
            return
        try:
            self._file = open(path, "rb")
        except FileNotFoundError:
            raise FileError(f"{path}: no such file") from None
        except OSError as exc:
            raise FileError(f"{path}: {(exc.strerror or str(exc)).lower()}") from None
        self._owned = True
        info = os.fstat(self._file.fileno())
        if stat.S_ISDIR(info.st_mode):  # open() succeeds on a directory on some systems
            self.close()
            raise FileError(f"{path}: is a directory")
        if stat.S_ISREG(info.st_mode):
            self.size = info.st_size

    def close(self) -> None:
        if self._owned:
            self._file.close()

    def __enter__(self) -> "MetricFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _lines(self) -> Iterator[str]:
        """The file's lines as text, strict UTF-8 (a leading byte order mark is dropped)."""
        label = self.label
        for raw in self._file:
            self.line += 1
            self.bytes_read += len(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                column = len(raw[:exc.start].decode("utf-8")) + 1
                raise FileError(f"{label}:{self.line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                f"{column}); save the file as UTF-8") from None
            except OSError as exc:  # e.g. a read error on the device
                raise FileError(f"{label}:{self.line}: {exc}") from None
            if self.line == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield text

    def rows(self) -> Iterator[Row]:
        """(name, value, seconds | None, nanos) per metric: JSON lines if the first non-blank line starts with
        '{', else CSV."""
        lines = self._lines()
        try:
            for first in lines:
                if first.strip():
                    break
            else:
                raise FileError(f"{self.label}: the file is empty; expected a CSV header (time,name,value) "
                                f"or JSON lines ({{\"name\": ..., \"value\": ...}})")
        except OSError as exc:
            raise FileError(f"{self.label}: {exc}") from None
        if first.lstrip().startswith("{"):
            return self._json(itertools.chain([first], lines))
        return self._csv(first, lines)

    def _csv(self, header_line: str, lines: Iterator[str]) -> Iterator[Row]:
        header = [h.strip().lower() for h in next(csv.reader([header_line]))]  # Time,Name,Value will do
        missing = [c for c in ("name", "value") if c not in header]
        if missing:
            raise FileError(f"{self.label}:{self.line}: the CSV header {','.join(header)!r} lacks "
                            f"{' and '.join(missing)}; it must name time,name,value (time may be left out)")
        width = len(header)
        i_name, i_value = header.index("name"), header.index("value")
        i_time = header.index("time") if "time" in header else None
        shape = ",".join(header)
        label = self.label
        reader = csv.reader(lines)
        try:
            for row in reader:
                if len(row) != width:
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue  # a blank line
                    raise FileError(f"{label}:{self.line}: the row has {len(row)} field(s), the header "
                                    f"{shape} has {width}")
                value = row[i_value]
                try:
                    value = float(value)
                except ValueError:
                    value = _value(value, f"{label}:{self.line}")
                if i_time is None or not row[i_time]:
                    yield row[i_name], value, None, 0
                else:
                    seconds, nanos = _time(row[i_time], f"{label}:{self.line}")
                    yield row[i_name], value, seconds, nanos
        except csv.Error as exc:
            raise FileError(f"{label}:{self.line}: not valid CSV ({exc})") from None

    def _json(self, lines: Iterator[str]) -> Iterator[Row]:
        label = self.label
        for text in lines:
            if not text.strip():
                continue
            where = f"{label}:{self.line}"
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FileError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise FileError(f"{where}: not a JSON object; each line must be like "
                                f"{{\"time\": \"2026-11-23T10:00:00Z\", \"name\": \"cpu\", \"value\": 1.5}}")
            if "value" not in obj:
                raise FileError(f"{where}: the object has no \"value\"")
            if "name" not in obj:
                raise FileError(f"{where}: the object has no \"name\"")
            name = obj["name"]
            if not isinstance(name, str):
                raise FileError(f"{where}: \"name\" must be a string, got {json.dumps(name)}")
            value = obj["value"]
            value = float(value) if type(value) in (float, int) else _value(value, where)
            when = obj.get("time")
            if when is None or when == "":
                yield name, value, None, 0
            else:
                seconds, nanos = _time(when, where)
                yield name, value, seconds, nanos


__all__ = ["FileError", "MetricFile", "parse_time"]
