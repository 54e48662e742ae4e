"""The page's backtest: a file in `streamer detect`'s formats judged under several option sets by the stream's own
pipeline (detector.StreamDetector, the code DetectStream runs), with counts side by side and the flagged rows.

Runs on a worker thread (the HTTP server hands it off the event loop). No HTTP here.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import os
import tempfile
import threading

import numpy as np

from streamer import detector
from streamer.errors import DetectError
from streamer.metricfile import FileError, MetricFile
from streamer.pb import outliers_pb2 as pb
from streamer.request_bytes import RequestBuilder, options_field
from streamer.state import MODE_CUMULATIVE, MODE_EXPONENTIAL, SessionRegistry
from streamer.store.memory import MemoryStore
from streamer.web.tap import judge_series
from streamer.wire import Options

BATCH_ROWS = 4096    # rows per DetectStream request of the replay (the rule is per value: any size gives the same)
CHART_VALUES = 20_000  # the chart of one series shows its last values up to this many
KEEP = 8             # results kept for the page to chart and download (the oldest is forgotten)
MODES = {"cumulative": MODE_CUMULATIVE, "exponential": MODE_EXPONENTIAL}


class BacktestError(ValueError):
    """The upload or an option set cannot be used; str() says which and why (HTTP 400)."""


PROTO_NAMES = {"series_ttl": "series_ttl_seconds"}  # wire.Options' names that differ from DetectOptions'


def _kind(f) -> str:
    """bool, int or float: a field's type as wire.Options declares it (an optional field: `int | None`)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return next(k for k in ("bool", "int", "float") if k in text)


def option_fields() -> list[dict]:
    """The fields an option set may give: DetectOptions as the pipeline reads it (wire.Options), so a new option
    appears in the page's form without a change here."""
    return [{"name": f.name, "type": _kind(f), "default": f.default,
             "choices": list(MODES) if f.name == "mode" else None} for f in dataclasses.fields(Options)]


def _proto(options: Options) -> pb.DetectOptions:
    """The DetectOptions message of `options` (its unset optional fields left unset)."""
    return pb.DetectOptions(**{PROTO_NAMES.get(k, k): v for k, v in dataclasses.asdict(options).items()
                               if v is not None})


def parse_options(raw: dict, where: str) -> Options:
    """An Options from the form's values (strings or JSON numbers); empty or absent: the server's default."""
    if not isinstance(raw, dict):
        raise BacktestError(f"{where}: expected an object of option fields, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(Options)}
    unknown = sorted(set(raw) - set(known) - {"label"})
    if unknown:
        raise BacktestError(f"{where}: unknown option {unknown[0]!r} (known: {', '.join(known)})")
    values = {}
    for name, f in known.items():
        v = raw.get(name)
        if v is None or v == "":
            continue
        try:
            if name == "mode" and isinstance(v, str) and not v.isdigit():
                if v.lower() not in MODES:
                    raise ValueError(v)
                v = MODES[v.lower()]
            elif _kind(f) == "bool":
                v = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "on", "yes")
            elif _kind(f) == "int":
                v = int(v)
            else:
                v = float(v)
        except (TypeError, ValueError):
            raise BacktestError(f"{where}: option {name} = {v!r} is not a {_kind(f)}") from None
        values[name] = v
    return Options(**values)


@dataclasses.dataclass
class SetResult:
    label: str
    options: Options
    params: detector.Params
    flagged: np.ndarray              # bool per row
    judged: dict[int, tuple]         # row -> (mean, stddev, zscore) of each flagged row


@dataclasses.dataclass
class Result:
    id: str
    filename: str
    names: list[str]
    values: np.ndarray
    times: list                      # seconds (float) per row, None for a row without a time
    sets: list[SetResult]
    series_rows: dict[str, np.ndarray]

    def summary(self) -> dict:
        per_series = []
        for name, rows in sorted(self.series_rows.items()):
            per_series.append({"series": name, "values": int(len(rows)),
                               "flagged": [int(s.flagged[rows].sum()) for s in self.sets]})
        return {"id": self.id, "file": self.filename, "rows": len(self.names), "series": per_series,
                "sets": [{"label": s.label, "options": _describe(s.params), "flagged": int(s.flagged.sum())}
                         for s in self.sets]}

    def chart(self, series: str) -> dict:
        rows = self.series_rows.get(series)
        if rows is None:
            raise BacktestError(f"series {series!r} is not in {self.filename}")
        rows = rows[-CHART_VALUES:]
        values = self.values[rows]
        xs = [self.times[r] if self.times[r] is not None else float(r) for r in rows.tolist()]
        out = {"series": series, "x": xs, "data_time": self.times[int(rows[0])] is not None,
               "values": values.tolist(), "sets": []}
        for s in self.sets:
            # the band from the stream's kernel on this series alone (tap.judge_series); the flags are the stream's
            means, stds, _, _ = judge_series(values, s.params)
            out["sets"].append({"label": s.label, "mean": means, "stddev": stds, "k": s.params.threshold,
                                "flagged": s.flagged[rows].tolist()})
        return out

    def flagged_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["option_set", "row", "time", "name", "value", "mean", "stddev", "zscore"])
        for s in self.sets:
            for r in np.flatnonzero(s.flagged).tolist():
                mean, std, z = s.judged[r]
                w.writerow([s.label, r + 1, "" if self.times[r] is None else repr(self.times[r]), self.names[r],
                            repr(float(self.values[r])), repr(mean), repr(std), repr(z)])
        return buf.getvalue()


def _describe(p: detector.Params) -> str:
    return ", ".join(f"{f.name}={detector.MODE_NAMES[p.mode] if f.name == 'mode' else getattr(p, f.name)}"
                     for f in dataclasses.fields(p))


def read_rows(data: bytes, filename: str):
    """(names, values, times) of an upload in `streamer detect`'s formats; BacktestError naming the line."""
    fd, path = tempfile.mkstemp(prefix="streamer-backtest-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        names, values, times = [], [], []
        try:
            with MetricFile(path) as mf:
                mf.label = filename
                for name, value, seconds, nanos in mf.rows():
                    names.append(name)
                    values.append(value)
                    times.append(None if seconds is None else seconds + nanos / 1e9)
        except FileError as exc:
            raise BacktestError(str(exc)) from None
    finally:
        os.unlink(path)
    if not names:
        raise BacktestError(f"{filename}: no rows (expected a CSV header time,name,value and rows, or JSON lines)")
    return names, np.array(values, dtype=np.float64), times


def _run_set(names, values, times, options: Options, params, defaults: detector.Defaults) -> SetResult:
    """Send every row through a private DetectStream pipeline (StreamDetector.process), in order."""
    registry = SessionRegistry(60.0, 1, defaults.max_series, store=MemoryStore())
    stream = detector.StreamDetector(defaults, registry)
    flagged = np.zeros(len(names), dtype=bool)
    judged: dict[int, tuple] = {}
    tail = options_field(_proto(options))
    try:
        for start in range(0, len(names), BATCH_ROWS):
            b = RequestBuilder()
            for i in range(start, min(start + BATCH_ROWS, len(names))):
                t = times[i]
                seconds, nanos = (None, 0) if t is None else (int(t // 1), int(round((t % 1) * 1e9)) % 1_000_000_000)
                b.add(names[i], float(values[i]), seconds, nanos)
            answer = pb.OutliersResponse.FromString(stream.process(b.take(tail)))
            for o in answer.outliers:
                r = start + o.index
                flagged[r] = True
                judged[r] = (o.mean, o.stddev, o.zscore)
    except DetectError as exc:
        raise BacktestError(str(exc)) from None
    finally:
        stream.close()
        registry.close()
    return SetResult("", options, params, flagged, judged)


class Backtests:
    """The last KEEP results, by id; run() is called on a worker thread."""

    def __init__(self, defaults: detector.Defaults):
        self.defaults = defaults
        self._results: dict[str, Result] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # protects _results (runs on worker threads, reads on the event loop)

    def run(self, data: bytes, filename: str, option_sets: list) -> Result:
        if not isinstance(option_sets, list) or not option_sets:
            raise BacktestError("give at least one option set")
        if len(option_sets) > 6:
            raise BacktestError(f"{len(option_sets)} option sets: at most 6 at a time")
        parsed = []
        for i, raw in enumerate(option_sets):
            where = f"option set {i + 1}"
            options = parse_options(raw, where)
            try:
                params = detector.resolve(options, self.defaults, where)
            except DetectError as exc:
                raise BacktestError(str(exc)) from None
            parsed.append((str(raw.get("label") or where), options, params))
        names, values, times = read_rows(data, filename)
        sets = []
        for label, options, params in parsed:
            s = _run_set(names, values, times, options, params, self.defaults)
            s.label = label
            sets.append(s)
        order = np.argsort(np.array(names, dtype=object), kind="stable")
        series_rows: dict[str, np.ndarray] = {}
        sorted_names = [names[i] for i in order.tolist()]
        start = 0
        for j in range(1, len(order) + 1):
            if j == len(order) or sorted_names[j] != sorted_names[start]:
                series_rows[sorted_names[start]] = np.sort(order[start:j])
                start = j
        rid = str(next(self._ids))
        result = Result(rid, filename, names, values, times, sets, series_rows)
        with self._lock:
            self._results[rid] = result
            while len(self._results) > KEEP:
                self._results.pop(next(iter(self._results)))
        return result

    def get(self, rid: str) -> Result:
        with self._lock:
            result = self._results.get(rid)
        if result is None:
            raise BacktestError(f"no backtest {rid!r} (only the last {KEEP} are kept): upload the file again")
        return result
