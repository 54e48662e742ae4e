"""The page's backtest: a file in `streamer detect`'s formats judged under several option sets by the stream's own
pipeline (detector.StreamDetector, the code DetectStream runs: rules.stream_update with every rule and episodes),
with flags, bands and episodes per option set side by side, and the flagged rows and episodes as CSV.

Runs on a worker thread (the HTTP server hands it off the event loop). No HTTP here.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
import os
import tempfile
import threading

import numpy as np

from streamer import detector
from streamer.errors import DetectError
from streamer.metricfile import FileError, MetricFile
from streamer.pb import outliers_pb2 as pb
from streamer.request_bytes import RequestBuilder, options_field
from streamer.sinks.episode import OPENED, RESOLVED
from streamer.state import MODE_EXPONENTIAL, SessionRegistry
from streamer.store.memory import MemoryStore
from streamer.wire import Options

# rows per DetectStream request of the replay at most (the rule is per value: any size gives the same flags and
# episodes; a request never holds two values of one series, see _chunks)
BATCH_ROWS = 4096
CHART_VALUES = 20_000  # the chart of one series shows its last values up to this many
KEEP = 8             # results kept for the page to chart and download (the oldest is forgotten)
MAX_SETS = 6
# enum fields: the form offers their names
CHOICES = {"mode": detector.MODES, "score": detector.SCORES, "direction": detector.DIRECTIONS}


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
             "choices": list(CHOICES[f.name]) if f.name in CHOICES else None} for f in dataclasses.fields(Options)]


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
        if name in CHOICES and isinstance(v, str) and not v.isdigit():
            if v.lower() not in CHOICES[name]:
                raise BacktestError(f"{where}: option {name} = {v!r} is not one of {', '.join(CHOICES[name])}")
            values[name] = CHOICES[name][v.lower()]
            continue
        try:
            if _kind(f) == "bool":
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
class Episode:
    """One episode of one series as the stream's kernel kept it (rows are 0-based rows of the file)."""

    id: str
    series: str
    opened_row: int
    started_ns: int
    count: int
    peak_value: float
    peak_zscore: float
    resolved_row: int | None = None  # None: still open at the end of the file
    ended_ns: int = 0


@dataclasses.dataclass
class SetResult:
    label: str
    options: Options
    params: detector.Params
    flagged: np.ndarray              # bool per row: reported in the stream's answer
    judged: dict[int, tuple]         # row -> (mean, stddev, zscore, tail_probability or None) of each flagged row
    band_mean: np.ndarray            # per row: the mean it was judged against (NaN in the warmup)
    band_std: np.ndarray             # per row: the stddev it was judged against (NaN in the warmup)
    episodes: list[Episode]


def _nulls(a: np.ndarray) -> list:
    return [None if x != x else x for x in a.tolist()]


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
                               "flagged": [int(s.flagged[rows].sum()) for s in self.sets],
                               "episodes": [sum(e.series == name for e in s.episodes) for s in self.sets]})
        return {"id": self.id, "file": self.filename, "rows": len(self.names), "series": per_series,
                "sets": [{"label": s.label, "options": _describe(s.params), "flagged": int(s.flagged.sum()),
                          "episodes": len(s.episodes)} for s in self.sets]}

    def _x(self, r: int) -> float:
        return self.times[r] if self.times[r] is not None else float(r)

    def chart(self, series: str) -> dict:
        rows = self.series_rows.get(series)
        if rows is None:
            raise BacktestError(f"series {series!r} is not in {self.filename}")
        rows = rows[-CHART_VALUES:]
        first, last = int(rows[0]), int(rows[-1])
        out = {"series": series, "x": [self._x(r) for r in rows.tolist()],
               "data_time": self.times[first] is not None, "values": self.values[rows].tolist(), "sets": []}
        for s in self.sets:
            eps = [{"id": e.id, "start": self._x(e.opened_row),
                    "end": None if e.resolved_row is None else self._x(e.resolved_row), "count": e.count,
                    "peak_value": e.peak_value, "peak_zscore": e.peak_zscore}
                   for e in s.episodes if e.series == series and (e.resolved_row is None or e.resolved_row >= first)
                   and e.opened_row <= last]
            out["sets"].append({"label": s.label, "mean": _nulls(s.band_mean[rows]), "stddev": _nulls(s.band_std[rows]),
                                "k": s.params.threshold, "flagged": s.flagged[rows].tolist(), "episodes": eps})
        return out

    def _time(self, r) -> str:
        return "" if r is None or self.times[r] is None else repr(self.times[r])

    def flagged_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["option_set", "row", "time", "name", "value", "mean", "stddev", "zscore", "tail_probability"])
        for s in self.sets:
            for r in np.flatnonzero(s.flagged).tolist():
                mean, std, z, tail = s.judged[r]
                w.writerow([s.label, r + 1, self._time(r), self.names[r], repr(float(self.values[r])), repr(mean),
                            repr(std), repr(z), "" if tail is None else repr(tail)])
        return buf.getvalue()

    def episodes_csv(self) -> str:
        """Every episode of every option set; rows are the file's (1-based, as in flagged.csv)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["option_set", "episode", "series", "opened_row", "resolved_row", "started", "ended", "count",
                    "peak_value", "peak_zscore"])
        for s in self.sets:
            for e in s.episodes:
                w.writerow([s.label, e.id, e.series, e.opened_row + 1,
                            "" if e.resolved_row is None else e.resolved_row + 1, self._time(e.opened_row),
                            self._time(e.resolved_row), e.count, repr(e.peak_value), repr(e.peak_zscore)])
        return buf.getvalue()


def _describe(p: detector.Params) -> str:
    names = {"mode": detector.MODE_NAMES, "score": detector.SCORE_NAMES, "direction": detector.DIRECTION_NAMES}
    return ", ".join(f"{f.name}={names[f.name][getattr(p, f.name)] if f.name in names else getattr(p, f.name)}"
                     for f in dataclasses.fields(p))


def read_rows(data: bytes, filename: str):
    """(names, values, stamps) of an upload in `streamer detect`'s formats, stamps (seconds | None, nanos) per
    row; BacktestError naming the line."""
    fd, path = tempfile.mkstemp(prefix="streamer-backtest-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        names, values, stamps = [], [], []
        try:
            with MetricFile(path) as mf:
                mf.label = filename
                for name, value, seconds, nanos in mf.rows():
                    names.append(name)
                    values.append(value)
                    stamps.append((seconds, nanos))
        except FileError as exc:
            raise BacktestError(str(exc)) from None
    finally:
        os.unlink(path)
    if not names:
        raise BacktestError(f"{filename}: no rows (expected a CSV header time,name,value and rows, or JSON lines)")
    return names, np.array(values, dtype=np.float64), stamps


def _chunks(names: list[str]) -> list[tuple[int, int]]:
    """Consecutive row ranges in which no series has two values (at most BATCH_ROWS rows each): after each request
    the state holds what each of its series' next value is judged against."""
    out, seen, start = [], set(), 0
    for i, name in enumerate(names):
        if name in seen or i - start >= BATCH_ROWS:
            out.append((start, i))
            seen, start = set(), i
        seen.add(name)
    out.append((start, len(names)))
    return out


def _previous(names: list[str]) -> np.ndarray:
    """Per row, the row of the same series' previous value, or -1."""
    last: dict[str, int] = {}
    prev = np.full(len(names), -1, dtype=np.int64)
    for i, name in enumerate(names):
        prev[i] = last.get(name, -1)
        last[name] = i
    return prev


_NO_SLOT = np.array([-1], dtype=np.int64)  # a slot no series has


class _After:
    """The detector's tap hook (the shape of tap.Taps): called after every applied request with its rows' slots;
    keeps the state of each row's series after it, which is what that series' next value is judged against."""

    active = True
    version = 0
    armed_taps, due = 1, 0.0  # Taps' fast path, which the detector checks, never skips a batch here

    def __init__(self) -> None:
        self.post: tuple | None = None

    @staticmethod
    def slots(session, table) -> tuple[np.ndarray, int]:
        return _NO_SLOT, 0  # the fused pass calls observe() after a batch only when it was given slots to count

    def observe(self, session, state, params, rows, k: int = -1, flagged=None, viewed=None) -> None:
        ids = rows()[0]
        self.post = (state.count[ids], state.mean[ids], state.spread[ids])  # copies (fancy indexing)


def _run_set(names, values, stamps, chunks, prev, options: Options, params: detector.Params,
             defaults: detector.Defaults) -> SetResult:
    """Send every row through a private DetectStream pipeline (StreamDetector.process), in order, keeping its
    answers (the flags), its episode changes and the state each value was judged against (the band)."""
    registry = SessionRegistry(60.0, 1, defaults.max_series, store=MemoryStore())
    changes: list = []
    stream = detector.StreamDetector(defaults, registry, on_episodes=changes.extend)
    after = stream.taps = _After()
    n = len(names)
    flagged = np.zeros(n, dtype=bool)
    judged: dict[int, tuple] = {}
    post_count, post_mean, post_spread = np.zeros(n, dtype=np.int64), np.zeros(n), np.zeros(n)
    episodes: list[Episode] = []
    open_episodes: dict[str, Episode] = {}
    tail = options_field(_proto(options))
    likelihood = params.score == detector.SCORE_LIKELIHOOD
    try:
        for start, end in chunks:
            b = RequestBuilder()
            for i in range(start, end):
                b.add(names[i], float(values[i]), *stamps[i])
            answer = pb.OutliersResponse.FromString(stream.process(b.take(tail if start == 0 else b"")))
            for o in answer.outliers:
                r = start + o.index
                flagged[r] = True
                judged[r] = (o.mean, o.stddev, o.zscore, o.tail_probability if likelihood else None)
            post_count[start:end], post_mean[start:end], post_spread[start:end] = after.post
            if changes:
                row_of = {names[r]: r for r in range(start, end)}  # one row per series in a request
                for e in changes:
                    _note(e, row_of[e.series], episodes, open_episodes)
                changes.clear()
    except DetectError as exc:
        raise BacktestError(str(exc)) from None
    finally:
        stream.close()
        registry.close()
    band_mean, band_std = _band(prev, post_count, post_mean, post_spread, params)
    return SetResult("", options, params, flagged, judged, band_mean, band_std, episodes)


def _note(e, row: int, episodes: list[Episode], open_episodes: dict[str, Episode]) -> None:
    if e.kind == OPENED:
        ep = open_episodes[e.series] = Episode(e.episode, e.series, row, e.started_ns, e.count, e.peak_value,
                                               e.peak_zscore)
        episodes.append(ep)
        return
    ep = open_episodes[e.series]
    ep.count, ep.peak_value, ep.peak_zscore = e.count, e.peak_value, e.peak_zscore
    if e.kind == RESOLVED:
        ep.resolved_row, ep.ended_ns = row, e.ended_ns
        del open_episodes[e.series]


def _band(prev, count, mean, spread, params: detector.Params) -> tuple[np.ndarray, np.ndarray]:
    """The mean and stddev each row was judged against: its series' state after its previous value, read as
    rules.stream_update reads it (population stddev: sqrt(M2 / n) cumulative, sqrt(variance) exponential), NaN
    before the series has max(warmup, 2) values in its state. A row whose series expired since its previous value
    (series_ttl) was judged against a fresh state, so it has none: its count after it is below its count before
    (a count only falls when the series starts again; a fresh series with one value before is in the warmup)."""
    has = prev >= 0
    p = np.where(has, prev, 0)
    c, m, s = count[p], mean[p], spread[p]
    judged = has & (c >= max(int(params.warmup), 2)) & (count >= c)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(s) if params.mode == MODE_EXPONENTIAL else np.sqrt(s / np.maximum(c, 1))
    return np.where(judged, m, math.nan), np.where(judged, std, math.nan)


class Backtests:
    """The last KEEP results, by id; run() is called on a worker thread."""

    def __init__(self, defaults: detector.Defaults):
        self.use_defaults(defaults)
        self._results: dict[str, Result] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # protects _results (runs on worker threads, reads on the event loop)

    def use_defaults(self, defaults: detector.Defaults) -> None:
        """The server's defaults (at start, and after a reload), for an option set's empty fields."""
        # episodes are kept in a backtest whatever the server keeps (resolve_after 0 in an option set: none)
        self.defaults = dataclasses.replace(defaults, episodes=True)

    def run(self, data: bytes, filename: str, option_sets: list) -> Result:
        if not isinstance(option_sets, list) or not option_sets:
            raise BacktestError("give at least one option set")
        if len(option_sets) > MAX_SETS:
            raise BacktestError(f"{len(option_sets)} option sets: at most {MAX_SETS} at a time")
        parsed = []
        for i, raw in enumerate(option_sets):
            where = f"option set {i + 1}"
            options = parse_options(raw, where)
            try:
                params = detector.resolve(options, self.defaults, where)
            except DetectError as exc:
                raise BacktestError(str(exc)) from None
            parsed.append((str(raw.get("label") or where), options, params))
        names, values, stamps = read_rows(data, filename)
        chunks, prev = _chunks(names), _previous(names)
        sets = []
        for label, options, params in parsed:
            s = _run_set(names, values, stamps, chunks, prev, options, params, self.defaults)
            s.label = label
            sets.append(s)
        times = [None if sec is None else sec + nanos / 1e9 for sec, nanos in stamps]
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
