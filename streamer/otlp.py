"""OTLP metrics ingest: an ExportMetricsServiceRequest's data points -> series keys -> the stream pipeline.

Each resource's series are one session, named by the resource's identifying attributes ("otlp:" and their
canonical text), judged with the --otlp-* options in stream semantics by the same kernels as a DetectStream,
and kept in the store like any session. Each export takes the session's lease, loads the stored state when it
is newer, judges, writes the state through and releases the lease, so any worker or replica can take the
next export. Keys and values are described in the README ("OTLP ingest").
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Callable

import numpy as np
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as otlp_service
from opentelemetry.proto.metrics.v1 import metrics_pb2

from streamer import episodes, expiry, rates, rules, series_rules, tenants
from streamer.config import DEFAULT_RESOURCE_ATTRIBUTES
from streamer.detector import MAX_NAME_BYTES, Params, resolve
from streamer.errors import InvalidArgument, Unavailable
from streamer.series import SeriesLimitError, lazy_zeros
from streamer.state import MODE_EXPONENTIAL, SeriesState, SessionError, SessionRegistry
from streamer.watch import ORIGIN_OTLP, flagged

SERVICE_NAME = "opentelemetry.proto.collector.metrics.v1.MetricsService"
KEY_CACHE = 200_000  # series keys remembered (about 300 bytes each); past it the cache starts again
LEASE_WAIT = 5.0  # seconds an export waits for its resource's session, held by another export, before UNAVAILABLE
_DELTA, _CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA, metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
_NO_RECORDED_VALUE = metrics_pb2.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK


class OtlpState(SeriesState):
    """A session's SeriesState plus the last cumulative point of each series (for rates and histogram means).
    Bytes per series: 32 more than a stream's (last value, count, time and start time)."""

    ARRAYS = SeriesState.ARRAYS + ("last_value", "last_count", "last_time", "last_start")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        n = len(self.count)
        self.last_value = lazy_zeros(n, np.float64)
        self.last_count = lazy_zeros(n, np.float64)
        self.last_time = lazy_zeros(n, np.int64)
        self.last_start = lazy_zeros(n, np.int64)


def _text(v) -> str:
    """An AnyValue in the key's text form: strings quoted (\\, " and newlines escaped), numbers and booleans
    as written in JSON, arrays and maps in brackets and braces."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return '"' + v.string_value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    if kind == "int_value":
        return str(v.int_value)
    if kind == "double_value":
        return repr(v.double_value)
    if kind == "bytes_value":
        return '"' + v.bytes_value.hex() + '"'
    if kind == "array_value":
        return "[" + ",".join(_text(x) for x in v.array_value.values) + "]"
    if kind == "kvlist_value":
        pairs = sorted(v.kvlist_value.values, key=lambda kv: kv.key)
        return "{" + ",".join(f"{kv.key}={_text(kv.value)}" for kv in pairs) + "}"
    return '""'


def labels(pairs: dict[str, str]) -> str:
    """`{a="1",b="x"}` from key -> text, sorted by key; "" when there are none."""
    return "{" + ",".join(f"{k}={pairs[k]}" for k in sorted(pairs)) + "}" if pairs else ""


_PAIR = re.compile(r'([^{},=]+)=("(?:[^"\\]|\\.)*"|[^,{}\[\]]*)(?:,|}$)')


def attributes_of(key: str) -> tuple[tuple[str, str], ...]:
    """The (name, value) pairs of a series key `metric{a="x",b=1}` (strings unquoted), for alert labels; a value
    that is an array or a map is left out."""
    brace = key.find("{")
    if brace < 0 or not key.endswith("}"):
        return ()
    out = []
    for name, text in _PAIR.findall(key[brace + 1:]):
        if text.startswith('"'):
            text = text[1:-1].replace('\\n', "\n").replace('\\"', '"').replace("\\\\", "\\")
        out.append((name, text))
    return tuple(out)


def resource_identity(resource, keys: tuple[str, ...]) -> dict[str, str]:
    wanted = set(keys)
    return {kv.key: _text(kv.value) for kv in resource.attributes if kv.key in wanted}


def series_key(metric: str, resource: dict[str, str], attributes) -> str:
    """metric{attr="v",...}: the point's attributes and the resource's identifying ones, sorted (a point's
    attribute wins over a resource's of the same name)."""
    pairs = dict(resource)
    for kv in attributes:
        pairs[kv.key] = _text(kv.value)
    return metric + labels(pairs)


@dataclasses.dataclass
class _Resource:
    """The points of one resource, as columns."""

    session: str
    keys: list = dataclasses.field(default_factory=list)
    kind: list = dataclasses.field(default_factory=list)
    value: list = dataclasses.field(default_factory=list)
    count: list = dataclasses.field(default_factory=list)
    time: list = dataclasses.field(default_factory=list)
    start: list = dataclasses.field(default_factory=list)
    encoded: list = dataclasses.field(default_factory=list)  # the keys' UTF-8, once checked
    keep: list = dataclasses.field(default_factory=list)     # positions of the keys within the length limit


class _Rejected:
    """What partial_success reports: the points not judged, by reason, with the first metric of each."""

    def __init__(self) -> None:
        self.reasons: dict[str, list] = {}

    def add(self, reason: str, metric: str, n: int = 1) -> None:
        entry = self.reasons.setdefault(reason, [0, metric])
        entry[0] += n

    @property
    def count(self) -> int:
        return sum(n for n, _ in self.reasons.values())

    def message(self) -> str:
        return "; ".join(f"{n} data point(s) {reason} (first: metric {metric!r})"
                         for reason, (n, metric) in self.reasons.items())


class OtlpIngest:
    """MetricsService/Export over raw request bytes: returns the ExportMetricsServiceResponse's bytes."""

    def __init__(self, sessions: SessionRegistry, params: Params, max_series: int,
                 resource_attributes: tuple[str, ...] = DEFAULT_RESOURCE_ATTRIBUTES, hub=None,
                 on_batch: Callable[[int, int], None] = lambda metrics, outliers: None,
                 on_episodes: Callable[[list], None] = lambda events: None,
                 live: series_rules.Live | None = None):
        self.sessions = sessions
        self.params = params
        # the server's settings a reload replaces: with them, params (and each rule's) follow the live settings
        self.live = live
        # (settings, params, each rule's Params then params or None, series key -> rule index): replaced whole,
        # so an export on another thread reads one consistent set
        self._judging = (live.current if live is not None else None, params, None, {})
        if live is not None:
            self._use(live.current)
        self.max_series = max_series
        self.resource_attributes = tuple(resource_attributes)
        self.hub = hub
        self.on_batch = on_batch
        self.on_episodes = on_episodes  # each export's episode changes (the server's throttle, sinks, Watch)
        self.taps = None  # the page's viewed series (streamer/web/tap.py Taps; server.py sets it with --http-port)
        self._keys: dict = {}  # (session, metric, attribute bytes) -> series key; see _key_cache
        self.options = ", ".join(f"{f.name}={getattr(params, f.name)}" for f in dataclasses.fields(params))

    def _use(self, settings: series_rules.Settings) -> None:
        """Judge the next exports with `settings`: the --otlp-* options over its defaults; for a series a rule
        matches, the rule's keys win over both (they are the most specific)."""
        where = "--otlp-* options"
        options = settings.otlp_options
        base = resolve(options, settings.defaults, where) if options is not None else self.params
        ruled = None
        if settings.rules:
            ruled = []
            for rule in settings.rules.rules:
                set_here = {k for k, _ in rule.values} & {"threshold", "warmup", "alpha"}
                mine = dataclasses.replace(options, **{k: 0 for k in set_here}) if options is not None else None
                ruled.append(resolve(mine, rule.defaults(settings.defaults), where))
            ruled.append(base)
        self.params, self._judging = base, (settings, base, ruled, {})
        self.options = ", ".join(f"{f.name}={getattr(base, f.name)}" for f in dataclasses.fields(base))

    def export(self, request: bytes, tenant: str = "") -> bytes:
        """`tenant`: the caller's (streamer/tenants.py): its sources are sessions of their own, otlp@TENANT:{...}."""
        if self.live is not None and self.live.current is not self._judging[0]:  # a reload
            self._use(self.live.current)
        try:
            req = otlp_service.ExportMetricsServiceRequest.FromString(request)
        except DecodeError as exc:
            raise InvalidArgument(f"Export: the request is not an ExportMetricsServiceRequest ({exc})") from None
        rejected = _Rejected()
        resources = [r for r in self._columns(req, rejected, tenant) if self._checked(r, rejected)]
        events = self._judge(resources, rejected, tenant)
        if events and self.hub is not None and self.hub.active:
            self.hub.publish(events)
        resp = otlp_service.ExportMetricsServiceResponse()
        if rejected.count:
            resp.partial_success.rejected_data_points = rejected.count
            resp.partial_success.error_message = rejected.message()
        return resp.SerializeToString()

    def _columns(self, req, rejected: _Rejected, tenant: str = "") -> list[_Resource]:
        by_session: dict[str, _Resource] = {}
        for rm in req.resource_metrics:
            identity = resource_identity(rm.resource, self.resource_attributes)
            name = tenants.otlp_session(tenant, "otlp:" + (labels(identity) or "{}"))
            res = by_session.setdefault(name, _Resource(name))
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    self._points(m, identity, res, rejected, self._key_cache(name, identity))
        return [r for r in by_session.values() if r.keys]

    def _key_cache(self, session: str, identity: dict[str, str]) -> Callable:
        """key(metric, attributes) for one resource: series_key, remembered by the attributes' bytes (an
        exporter sends the same label sets every interval, and building the text is most of an export's cost)."""
        cache = self._keys
        if len(cache) > KEY_CACHE:
            cache.clear()

        def key(metric: str, attributes) -> str:
            raw = (session, metric, b"".join([kv.SerializeToString() for kv in attributes]))
            text = cache.get(raw)
            if text is None:
                text = cache[raw] = series_key(metric, identity, attributes)
            return text
        return key

    @staticmethod
    def _points(m, identity: dict[str, str], res: _Resource, rejected: _Rejected, key: Callable) -> None:
        data = m.WhichOneof("data")
        if data in ("gauge", "sum"):
            points = getattr(m, data).data_points
            kind = rates.GAUGE
            if data == "sum":
                temporality = m.sum.aggregation_temporality
                if temporality == _DELTA:
                    kind = rates.DELTA
                elif temporality != _CUMULATIVE:
                    rejected.add("of a Sum without an aggregation temporality are not judged", m.name,
                                 len(points))
                    return
                elif m.sum.is_monotonic:
                    kind = rates.CUMULATIVE
            for p in points:
                which = p.WhichOneof("value")
                x = p.as_double if which == "as_double" else float(p.as_int) if which == "as_int" else math.nan
                if which is None or p.flags & _NO_RECORDED_VALUE or not math.isfinite(x):
                    rejected.add("had no value, or NaN or an infinity, and were skipped", m.name)
                    continue
                if kind == rates.DELTA and not 0 < p.start_time_unix_nano < p.time_unix_nano:
                    rejected.add("of a delta Sum had no interval (start time at or after the time) and were "
                                 "skipped", m.name)
                    continue
                res.keys.append(key(m.name, p.attributes))
                res.kind.append(kind)
                res.value.append(x)
                res.count.append(0.0)
                res.time.append(p.time_unix_nano)
                res.start.append(p.start_time_unix_nano)
        elif data == "histogram":
            temporality = m.histogram.aggregation_temporality
            if temporality not in (_DELTA, _CUMULATIVE):
                rejected.add("of a Histogram without an aggregation temporality are not judged", m.name,
                             len(m.histogram.data_points))
                return
            kind = rates.HIST_DELTA if temporality == _DELTA else rates.HIST_CUMULATIVE
            for p in m.histogram.data_points:
                if not p.HasField("sum") or p.flags & _NO_RECORDED_VALUE or not math.isfinite(p.sum):
                    rejected.add("of a Histogram had no sum, or NaN, and were skipped", m.name)
                    continue
                if kind == rates.HIST_DELTA and p.count == 0:
                    continue  # nothing was observed in the interval: no value, nothing wrong
                res.keys.append(key(m.name, p.attributes))
                res.kind.append(kind)
                res.value.append(p.sum)
                res.count.append(float(p.count))
                res.time.append(p.time_unix_nano)
                res.start.append(p.start_time_unix_nano)
        elif data is not None:
            n = len(getattr(m, data).data_points)
            rejected.add(f"of type {data} are not judged (only Gauge, Sum and Histogram are)", m.name, n)

    @staticmethod
    def _checked(res: _Resource, rejected: _Rejected) -> bool:
        """Drop the keys over the length limit (counted); False when nothing of the resource is left."""
        if len(res.session.encode()) > MAX_NAME_BYTES:
            rejected.add(f"had a resource whose session name is over {MAX_NAME_BYTES} bytes", res.keys[0],
                         len(res.keys))
            return False
        res.encoded = [k.encode() for k in res.keys]
        res.keep = [i for i, k in enumerate(res.encoded) if len(k) <= MAX_NAME_BYTES]
        if len(res.keep) < len(res.encoded):
            first = next(res.keys[i] for i, k in enumerate(res.encoded) if len(k) > MAX_NAME_BYTES)
            rejected.add(f"had a series key over {MAX_NAME_BYTES} bytes", first[:80], len(res.encoded) - len(res.keep))
        return bool(res.keep)

    def _judge(self, resources: list[_Resource], rejected: _Rejected, tenant: str = "") -> list:
        """Judge every resource's points on its session: take every lease (in name order, so two exports never
        wait on each other) and load what is newer, judge, write through, release. A lease that cannot be had
        fails the whole export with UNAVAILABLE before anything is judged (the exporter sends it again)."""
        attached = []
        try:
            for res in sorted(resources, key=lambda r: r.session):
                session = self._attach(res.session, rejected, len(res.keys), tenant)
                if session is not None:
                    attached.append((res, session))
        except BaseException:
            for _, session in attached:
                self.sessions.detach(session)
            raise
        events: list = []
        done = []
        try:
            for res, session in attached:
                with session.lock:  # a snapshot never sees half an export
                    events += self._apply(session.state, res, [res.encoded[i] for i in res.keep], res.keep,
                                          rejected, tenant)
                    session.changed = True
        finally:
            for _, session in attached:
                done.append(self.sessions.detach(session))
        for future in done:
            future.result()  # written through and released: the next export may go to any worker or replica
        return events

    def _attach(self, name: str, rejected: _Rejected, n: int, tenant: str = ""):
        deadline = time.monotonic() + LEASE_WAIT
        while True:
            try:
                return self.sessions.attach(name, self.params.mode, self.options, state_class=OtlpState, tenant=tenant)
            except SessionError as exc:
                if exc.kind == "busy" and time.monotonic() < deadline:
                    time.sleep(0.005)  # another export of this resource is being judged: it takes milliseconds
                    continue
                if exc.kind in ("busy", "store"):
                    raise Unavailable(f"Export: {exc}") from None
                rejected.add(f"were not judged: {exc}", name, n)
                return None

    def _apply(self, state: OtlpState, res: _Resource, encoded: list[bytes], keep: list[int],
               rejected: _Rejected, tenant: str = "") -> list:
        lengths = np.fromiter((len(k) for k in encoded), dtype=np.int64, count=len(encoded))
        starts = np.zeros(len(encoded), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        buf = b"".join(encoded)
        state.sweep()
        before = len(state.table)
        room = state.budget.grant(len(encoded))
        try:
            ids, accepted = _intern_within_limit(state.table, buf, starts, lengths, room)
        finally:
            state.budget.settle(room, len(state.table) - before)
            state.table.settle()
        if len(accepted) < len(keep):
            rejected.add(f"were over the series limit of {state.table.limit} series (--max-series) of their "
                         f"resource", res.keys[keep[int(np.flatnonzero(ids < 0)[0])]], len(keep) - len(accepted))
        rows = np.asarray(keep, dtype=np.int64)[accepted]
        ids = ids[accepted]
        state.reserve(len(state.table))
        kind = np.asarray(res.kind, dtype=np.int64)[rows]
        value = np.asarray(res.value, dtype=np.float64)[rows]
        count = np.asarray(res.count, dtype=np.float64)[rows]
        times = np.asarray(res.time, dtype=np.int64)[rows]
        start = np.asarray(res.start, dtype=np.int64)[rows]
        # series TTL (expiry.py), in data time: a series back after expiring starts fresh
        reset = np.empty(len(ids), dtype=np.int64)
        expired = expiry.touch(ids, times, self.sessions.clock(), state.ttl, state.clock, state.last_seen, reset)
        state.reset_slots(reset[:expired])
        judged = np.empty(len(ids), dtype=np.float64)
        rates.derive(kind, ids, value, count, times, start, state.last_value, state.last_count, state.last_time,
                     state.last_start, judged)
        n = len(ids)
        idx, mean, std, z, tail = (np.empty(n, dtype=np.int32), np.empty(n), np.empty(n), np.empty(n), np.empty(n))
        settings, p, ruled, key_rule = self._judging
        r = p.rules()
        for q in ruled or (p,):
            q.use(state)  # the arrays of the rules the options turn on (episodes too)
        if ruled is not None:
            return self._apply_ruled(state, res, rows, ids, judged, times, settings.rules, ruled, key_rule, tenant)
        if r.resolve_after:
            ev, ev_stats, ev_n = np.empty((n, 4), dtype=np.int64), np.empty((n, 5)), np.zeros(1, dtype=np.int64)
            kept = (times, time.time_ns(), state.ep_run, state.ep_start, state.ep_count, state.ep_peak_z,
                    state.ep_peak_value, ev, ev_stats, ev_n)
        else:
            kept = rules.NO_EPISODES
        # every DetectStream rule (streamer/rules.py), on the values the points give (rates.derive)
        k = rules.stream_update(ids, judged, state.count, state.mean, state.spread, p.mode == MODE_EXPONENTIAL,
                                p.alpha, p.threshold, p.warmup, p.exclude_outliers, r.exclude_limit, r.cooldown,
                                state.streak, state.hold, r.likelihood, r.window, r.tail_threshold, r.learning,
                                state.lcount, state.lmean, state.lvar, state.ring, idx, mean, std, z,
                                tail if r.likelihood else tail[:0], r.suppress_array, r.resolve_after, *kept)
        self.on_batch(n, k)
        if self.taps is not None and self.taps.active:  # the page views a series (streamer/web/tap.py)
            self.taps.observe(res.session, state, p, lambda: (ids, judged, times, idx[:k], mean, std, z), k)
        if r.resolve_after and ev_n[0]:
            e = int(ev_n[0])
            self.on_episodes(episodes.events(ev[:e], ev_stats[:e], ids, judged, times, state.table, res.session,
                                             res.session, ORIGIN_OTLP, attributes_of, tenant))
        if not k or self.hub is None or not self.hub.outliers_active:
            return []
        return flagged(state.table, ids, judged, times, idx[:k], mean, std, z, ORIGIN_OTLP, res.session, tenant)

    def _apply_ruled(self, state: OtlpState, res: _Resource, rows: np.ndarray, ids: np.ndarray,
                     judged: np.ndarray, times: np.ndarray, ruleset: series_rules.RuleSet, ruled: list[Params],
                     cache: dict[str, int], tenant: str = "") -> list:
        """_apply's judging with rules: each point under its series' rule (series_rules.judge)."""
        if len(cache) > KEY_CACHE:
            cache.clear()
        rule_of = np.empty(len(ids), dtype=np.int64)
        for j, i in enumerate(rows.tolist()):
            key = res.keys[i]
            g = cache.get(key)
            if g is None:
                g = cache[key] = ruleset.index(key)
            rule_of[j] = g
        n = len(ids)
        idx, mean, std, z, tail = (np.empty(n, dtype=np.int32), np.empty(n), np.empty(n), np.empty(n), np.zeros(n))
        ev, ev_stats, ev_n = np.empty((n, 4), dtype=np.int64), np.empty((n, 5)), np.zeros(1, dtype=np.int64)
        k, rule_out, rule_ev = series_rules.judge(state, ruled, rule_of, ids, judged, times, time.time_ns(),
                                                  idx, mean, std, z, tail, ev, ev_stats, ev_n)
        self.on_batch(n, k)
        if self.taps is not None and self.taps.active:  # the band drawn is each series' rule's
            self.taps.observe(res.session, state, series_rules.params_of(ruled, ids, rule_of),
                              lambda: (ids, judged, times, idx[:k], mean, std, z), k)
        names = ruleset.names
        e = int(ev_n[0])
        if e:
            self.on_episodes(episodes.events(ev[:e], ev_stats[:e], ids, judged, times, state.table, res.session,
                                             res.session, ORIGIN_OTLP, attributes_of, tenant,
                                             rule=[names[g] for g in rule_ev.tolist()]))
        if not k or self.hub is None or not self.hub.outliers_active:
            return []
        return flagged(state.table, ids, judged, times, idx[:k], mean, std, z, ORIGIN_OTLP, res.session, tenant,
                       [names[g] for g in rule_out.tolist()])


def _intern_within_limit(table, buf: bytes, starts: np.ndarray, lengths: np.ndarray, room: int | None = None):
    """Slots of every key (-1 for those past the table's limit, or past `room` new series: the server-wide
    limit's share), and the positions of the accepted ones. Keys of series the table knows are always
    accepted; new ones while there is room, in order."""
    before = len(table)
    try:
        ids = table.intern(buf, starts, lengths, room=room)
        return ids, np.arange(len(ids))
    except SeriesLimitError as exc:
        first = exc.index
    ids = np.full(len(starts), -1, dtype=np.int64)
    if first:
        ids[:first] = table.intern(buf, starts[:first], lengths[:first], room=room)
    for i in range(first, len(starts)):  # the table is full: only known keys get a slot (rare, and per key)
        left = None if room is None else max(0, room - (len(table) - before))
        try:
            ids[i] = table.intern(buf, starts[i:i + 1], lengths[i:i + 1], room=left)[0]
        except SeriesLimitError:
            pass
    return ids, np.flatnonzero(ids >= 0)
