"""The pipeline: request bytes -> columns -> series state -> kernels -> response bytes.

Validation happens before any state is touched, so a rejected batch leaves the state exactly as it was; a
batch whose answer might be too large to send is staged, and undone if it is. No grpc here: failures are
DetectError subclasses, mapped to status codes by service.py.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
from typing import Callable

import numpy as np

from streamer import episodes, fused, kernels, rules, series_rules, watch
from streamer.errors import (AlreadyExists, DetectError, FailedPrecondition, InvalidArgument, PermissionDenied,
                             ResourceExhausted, Unavailable)
from streamer.series import SeriesLimitError, SeriesTable
from streamer.sinks.episode import EpisodeEvent
from streamer import expiry
# the option enums and the server's Defaults live in defaults.py (no numba: the CLI reads them); re-exported here
from streamer.defaults import (DIRECTION_BOTH, DIRECTION_DOWN, DIRECTION_NAMES, DIRECTION_UP, DIRECTIONS,  # noqa: F401
                               MAX_LIKELIHOOD_SHORT, MODE_CUMULATIVE, MODE_EXPONENTIAL, MODE_NAMES, MODES,
                               SCORE_LIKELIHOOD, SCORE_NAMES, SCORE_ZSCORE, SCORES, Defaults)
from streamer.state import SeriesState, Session, SessionError, SessionRegistry, TotalSeriesLimitError
from streamer.wire import (TRAILER_BYTES, Columns, Options, WireError, encode_flagged,
                           encode_trailer)
from streamer.wire.encode import with_rules

MAX_NAME_BYTES = fused.MAX_NAME_BYTES
_KERNEL_DIRECTION = {DIRECTION_BOTH: 0, DIRECTION_UP: 1, DIRECTION_DOWN: 2}  # rules.stream_update's codes

# Bytes an answer can take per metric if every metric is flagged, besides the name's own bytes: the Outlier's
# tag and length (1 + 2: an Outlier is under 16 KiB), index (1 + 5), name tag and length (1 + 2: names are
# at most MAX_NAME_BYTES), five doubles (5 * 9: tail_probability too), and its entry in the packed indices (5);
# per answer, the packed field's tag and length (1 + 5) and the batch number (1 + 10).
_ANSWER_BYTES_PER_METRIC = 62
_ANSWER_BYTES_FIXED = 17 + TRAILER_BYTES  # and the sequence fields after the batch number


@dataclasses.dataclass(frozen=True)
class Params:
    """DetectOptions with the defaults filled in and checked."""

    threshold: float
    warmup: int
    mode: int
    alpha: float
    exclude_outliers: bool
    exclude_limit: int = 0
    cooldown: int = 0
    score: int = SCORE_ZSCORE
    likelihood_short: int = 10
    likelihood_window: int = 8640
    likelihood_threshold: float = 1e-5
    likelihood_learning: int = 300
    min_deviation: float = 0.0
    min_relative_deviation: float = 0.0
    direction: int = DIRECTION_BOTH
    resolve_after: int = 0  # 0: no episodes (the server keeps none, or the stream asked for none)
    series_ttl: float = 0.0

    def rules(self) -> fused.Rules:
        """The kernels' arguments for the rules beyond the first five options (made once: a stream's batches
        all take them)."""
        made = self.__dict__.get("_rules")
        if made is None:
            made = self._make_rules()
            object.__setattr__(self, "_rules", made)
        return made

    def _make_rules(self) -> fused.Rules:
        return fused.Rules(self.exclude_limit if self.exclude_outliers else 0, self.cooldown,
                           self.score == SCORE_LIKELIHOOD, self.likelihood_window, self.likelihood_threshold,
                           self.likelihood_learning,
                           (self.min_deviation, self.min_relative_deviation, float(_KERNEL_DIRECTION[self.direction])),
                           self.resolve_after)

    def use(self, state: SeriesState) -> None:
        """Give `state` the arrays these options' rules keep."""
        rules = self.rules()
        state.use(rules.exclude_limit > 0, rules.cooldown > 0, self.likelihood_short if rules.likelihood else 0,
                  episodes=rules.resolve_after > 0)


def resolve(options: Options | None, defaults: Defaults, where: str) -> Params:
    """Fill zero fields from `defaults`; raise InvalidArgument naming the field for values out of range."""
    o = options or Options()
    if math.isnan(o.threshold) or o.threshold < 0 or math.isinf(o.threshold):
        raise InvalidArgument(f"{where}: options.threshold must be a finite number >= 0, got {o.threshold}")
    if o.mode not in (0, MODE_CUMULATIVE, MODE_EXPONENTIAL):
        raise InvalidArgument(f"{where}: options.mode {o.mode} is not a known Mode")
    if o.alpha != 0 and not 0 < o.alpha <= 1:  # also rejects NaN
        raise InvalidArgument(f"{where}: options.alpha must be in (0, 1], got {o.alpha}")
    if o.score is not None and o.score not in (0, SCORE_ZSCORE, SCORE_LIKELIHOOD):
        raise InvalidArgument(f"{where}: options.score {o.score} is not a known Score")
    if o.likelihood_short is not None and not 1 <= o.likelihood_short <= MAX_LIKELIHOOD_SHORT:
        raise InvalidArgument(f"{where}: options.likelihood_short must be in 1-{MAX_LIKELIHOOD_SHORT}, "
                              f"got {o.likelihood_short}")
    if o.likelihood_window is not None and o.likelihood_window < 1:
        raise InvalidArgument(f"{where}: options.likelihood_window must be >= 1, got {o.likelihood_window}")
    if o.likelihood_threshold is not None and not 0 < o.likelihood_threshold < 1:  # also rejects NaN
        raise InvalidArgument(f"{where}: options.likelihood_threshold must be in (0, 1), "
                              f"got {o.likelihood_threshold}")
    for name in ("min_deviation", "min_relative_deviation"):
        value = getattr(o, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InvalidArgument(f"{where}: options.{name} must be a finite number >= 0, got {value}")
    if o.direction is not None and o.direction not in (0, *DIRECTION_NAMES):
        raise InvalidArgument(f"{where}: options.direction {o.direction} is not a known Direction")
    ttl = defaults.series_ttl if o.series_ttl is None else o.series_ttl
    if math.isnan(ttl) or ttl < 0 or math.isinf(ttl):
        raise InvalidArgument(f"{where}: options.series_ttl_seconds must be a finite number >= 0, got {ttl}")
    warmup = o.warmup or defaults.warmup

    def given(value, default):
        return default if value is None else value

    return Params(threshold=o.threshold or defaults.threshold,
                  warmup=warmup,
                  mode=o.mode or defaults.mode,
                  alpha=o.alpha or defaults.alpha,
                  exclude_outliers=o.exclude_outliers,
                  exclude_limit=given(o.exclude_limit, given(defaults.exclude_limit, max(warmup, 2))),
                  cooldown=given(o.cooldown, defaults.cooldown),
                  score=o.score or defaults.score,
                  likelihood_short=given(o.likelihood_short, defaults.likelihood_short),
                  likelihood_window=given(o.likelihood_window, defaults.likelihood_window),
                  likelihood_threshold=given(o.likelihood_threshold, defaults.likelihood_threshold),
                  likelihood_learning=given(o.likelihood_learning, defaults.likelihood_learning),
                  min_deviation=given(o.min_deviation, defaults.min_deviation),
                  min_relative_deviation=given(o.min_relative_deviation, defaults.min_relative_deviation),
                  direction=o.direction or defaults.direction,
                  resolve_after=given(o.resolve_after, defaults.resolve_after) if defaults.episodes else 0,
                  series_ttl=ttl)


def _decode_pass(fast: fused.StreamPass, buf: bytes, where: str) -> fused.Head:
    try:
        return fast.decode(buf)
    except WireError as exc:
        raise InvalidArgument(f"{where}: {exc}") from None
    except fused.NameTooLong as exc:
        raise _name_too_long(where, exc.index, exc.length) from None


def _name_too_long(where: str, i: int, length: int) -> InvalidArgument:
    return InvalidArgument(f"{where}, metric {i}: name is {length} bytes, over the limit of {MAX_NAME_BYTES} bytes")


def _series_limit(where: str, exc: SeriesLimitError | TotalSeriesLimitError) -> ResourceExhausted:
    if isinstance(exc, TotalSeriesLimitError):
        return ResourceExhausted(f"{where}, metric {exc.index}: the server's limit of {exc.limit} series in all "
                                 f"sessions and streams (--max-total-series) is reached: it holds {exc.held}; "
                                 f"the batch was not applied")
    return ResourceExhausted(f"{where}, metric {exc.index}: the series limit of {exc.limit} series "
                             f"(--max-series) is reached; the batch was not applied")


def _answer_bound(request_bytes: int, metrics: int) -> int:
    """Bytes the answer to a request of `metrics` metrics takes at most, whatever is flagged.

    The names are disjoint spans of the request, so their bytes sum to less than the request's: no pass over
    the batch is needed.
    """
    return request_bytes + _ANSWER_BYTES_PER_METRIC * metrics + _ANSWER_BYTES_FIXED


def _too_large(where: str, size: int, outliers: int, limit: int) -> str:
    return (f"{where}: the answer is {size / 2**20:.2f} MiB ({size} bytes, {outliers} outliers), over the limit "
            f"of {limit / 2**20:g} MiB (--max-message-mb)")


def _intern(table: SeriesTable, cols: Columns, where: str, out: np.ndarray | None = None) -> np.ndarray:
    try:
        return table.intern(cols.buf, cols.name_start, cols.name_len, cols.name_hash, out=out)
    except SeriesLimitError as exc:
        raise _series_limit(where, exc) from None


class _Scratch:
    """Output buffers for the kernels, grown as batches grow and reused across a stream's batches."""

    def __init__(self) -> None:
        self.resize(0)

    def resize(self, n: int) -> None:
        self.idx = np.empty(n, dtype=np.int32)
        self.mean = np.empty(n, dtype=np.float64)
        self.std = np.empty(n, dtype=np.float64)
        self.z = np.empty(n, dtype=np.float64)
        self.tail = np.empty(n, dtype=np.float64)
        self.ev = np.empty((n, 4), dtype=np.int64)  # episode changes (rules.stream_update)
        self.ev_stats = np.empty((n, 5), dtype=np.float64)
        self.ev_n = np.zeros(1, dtype=np.int64)

    def ensure(self, n: int) -> None:
        if len(self.idx) < n:
            self.resize(max(n, 2 * len(self.idx)))

    def encode(self, batch: int, k: int, cols: Columns, ids: np.ndarray, table: SeriesTable,
               tails: bool = False) -> bytes:
        return encode_flagged(batch, self.idx[:k], ids, cols.values, self.mean, self.std, self.z, table,
                              self.tail if tails else self.tail[:0])


def unannounced(events: list[EpisodeEvent]) -> None:
    """The default `on_episodes`: nobody is told (a server that keeps no episodes never calls it)."""


def uncounted(metrics: int, outliers: int) -> None:
    """The default `on_batch`: nothing counts the batches (the server without --metrics-port)."""


def detect(buf: bytes, defaults: Defaults, on_batch: Callable[[int, int], None] = uncounted) -> bytes:
    """Unary Detect: judge one batch on its own, per metric name, against that name's batch mean and stddev.
    `on_batch(metrics, outliers)` is called once the answer can be sent (the server's metrics)."""
    where = "request"
    fast = fused.detect_pass(len(buf))  # the thread's buffers (fused.py says why)
    head = _decode_pass(fast, buf, where)
    cols = fast.columns()
    # Only the threshold applies to a single batch; the stream options are ignored, as the README says.
    threshold = resolve(Options(threshold=head.options.threshold) if head.options else None, defaults,
                        where).threshold
    table = fused.detect_table(defaults.max_series, len(cols), len(buf))
    ids = _intern(table, cols, where, fast.slots())  # the thread's last slots: tried first
    scratch = _Scratch()
    scratch.ensure(len(cols))
    k = kernels.detect_batch(ids, cols.values, len(table), threshold,
                             scratch.idx, scratch.mean, scratch.std, scratch.z)
    out = scratch.encode(0, k, cols, ids, table)
    if len(out) > defaults.max_response_bytes:  # grpc would fail to send it, with a traceback in the log
        raise ResourceExhausted(_too_large(where, len(out), k, defaults.max_response_bytes))
    on_batch(len(cols), k)
    return out


def _describe(params: Params) -> str:
    """The options a session was judged with, as the store keeps them (for people reading it)."""
    return ", ".join(f"{f.name}={getattr(params, f.name)}" for f in dataclasses.fields(params))


class StreamDetector:
    """One DetectStream call: its options, its state (private or a session's) and its batch counter.

    Options and session come from the first request. A later request may repeat them or leave them out; one
    that names other options or another session is rejected, since a stream's state is judged by one rule.
    """

    def __init__(self, defaults: Defaults, sessions: SessionRegistry,
                 on_batch: Callable[[int, int], None] = uncounted,
                 on_episodes: Callable[[list[EpisodeEvent]], None] = unannounced,
                 live: series_rules.Live | None = None):
        self.defaults = defaults  # its limits (max_series, max_response_bytes); the detection defaults are live's
        # the server's settings a reload replaces (series_rules.Live): read at the first request and again at the
        # first request after they changed
        self.live = live if live is not None else series_rules.Live(series_rules.Settings(0, defaults))
        self._settings: series_rules.Settings | None = None
        self._ruled: list[Params] | None = None  # with rules: each rule's Params, then the no-rule one
        self.sessions = sessions
        self.on_batch = on_batch  # (metrics, outliers) of each applied batch: the server's metrics
        self.on_episodes = on_episodes  # the episode changes of each applied batch (Watch, the alert sinks)
        self.batch = 0
        self.options: Options | None = None
        self.params: Params | None = None
        self.session: Session | None = None
        self.state: SeriesState | None = None
        self._session_name = ""
        self._made_session = False
        self._scratch = _Scratch()
        self._seq = 0  # a private stream's applied seq (a session keeps its own)
        self._ephemeral = not sessions.store.durable  # a session's answers: its state is in no durable store
        self._pass = fused.StreamPass()
        self.watch: watch.Hub | None = None  # where its outliers go when someone watches (service.py sets it)
        self.taps = None  # the page's viewed series (streamer/web/tap.py Taps; service.py sets it)
        self._tapped_key: tuple = (-1, None, -1, 0)  # what _tapped()'s slots were looked up for
        self._tapped_slots = fused.NO_TAPS
        self.tenant = ""  # the caller's tenant (streamer/tenants.py; service.py sets it): its sessions only

    def process(self, buf: bytes) -> bytes:
        """Answer one request of the stream; raise DetectError (state untouched) if it cannot be applied.

        A numbered request (seq > 0) at or below the state's applied seq was applied before: it is answered
        as `duplicate` (with its first answer when the session still keeps it) and changes nothing.
        """
        where = f"batch {self.batch}"
        cols = self._decode(buf, where)
        if self.state is None:
            self._start(cols, where)
        else:
            if self.live.current is not self._settings:  # a reload: new defaults and rules from this batch on
                self._use(self.live.current, self.options, where)
            self._check_same(cols, where)
        seq, session = cols.seq, self.session
        if session is None:
            if not seq:  # the stream as it always was: no sequence fields in the answer
                out = self._apply(buf, cols, where, self.batch)
            elif seq <= self._seq:
                out = encode_trailer(self.batch, self._seq, 0, True, duplicate=True, forgotten=True)
            else:
                trailer = encode_trailer(self.batch, seq, 0, True)
                out = self._apply(buf, cols, where, 0, trailer)
                self._seq = seq
            self.batch += 1
            return out
        if session.lost:
            raise Unavailable(f"{where}: session {self._session_name!r} was taken over by another server process "
                              f"(its lease expired); reconnect to continue from that process's state")
        if seq and seq <= session.seq:
            body = session.answers.get(seq)
            out = (body or b"") + encode_trailer(self.batch, session.seq, session.durable_seq, self._ephemeral,
                                                 duplicate=True, forgotten=body is None)
            self.batch += 1
            return out
        trailer = encode_trailer(self.batch, seq or session.seq, session.durable_seq, self._ephemeral)
        with session.lock:  # a snapshot never sees half a batch
            out = self._apply(buf, cols, where, 0, trailer)
            if len(cols) or seq:
                session.changed = True
            if seq:
                session.seq = seq
                session.answers.add(seq, out[:len(out) - len(trailer)])
        self.sessions.after_batch(session)
        self.batch += 1
        return out

    def _decode(self, buf: bytes, where: str) -> fused.Head:
        return _decode_pass(self._pass, buf, where)

    def _apply(self, buf: bytes, cols: fused.Head, where: str, batch: int, trailer: bytes = b"") -> bytes:
        """Apply the batch to the state; its answer: the outliers, `batch` as its number (0: none written),
        then `trailer` (the sequence fields)."""
        state, params = self.state, self.params
        # The kernels update the state in place, and only the encoded answer tells whether grpc can send it.
        # When even an answer flagging every metric fits (nearly every batch), nothing is staged: the fused
        # pass interns, judges and encodes in one compiled call. Otherwise the stages run one by one, with the
        # table's length and the batch's slots saved, to be restored if the answer turns out too large.
        limit = self.defaults.max_response_bytes
        if self._ruled is None and _answer_bound(len(buf), len(cols)) <= limit:
            try:
                tapped = self._tapped() if self.taps is not None and self.taps.active else fused.NO_TAPS
                out = self._pass.apply(state, params.mode == MODE_EXPONENTIAL, params.alpha, params.threshold,
                                       params.warmup, params.exclude_outliers, batch, params.rules(),
                                       self.sessions.clock(), tapped)
            except (SeriesLimitError, TotalSeriesLimitError) as exc:
                raise _series_limit(where, exc) from None
            k = self._pass.flagged()
            self.on_batch(len(cols), k)
            if k and self.watch is not None and self.watch.outliers_active:
                self._publish(*self._pass.flagged_rows())
            if params.resolve_after:
                ev, stats = self._pass.episodes()
                if len(ev):
                    c = self._pass.columns()
                    self._announce(ev, stats, self._pass.slots(), c.values, c.times)
            if len(tapped):
                taps = self.taps  # observe's fast path, checked here: most batches have nothing for the page
                if self._pass.tapped_count() or taps.armed_taps or taps.clock() >= taps.due:
                    self._tap(self._pass.flagged_rows, k, viewed=self._pass.tapped())
            elif self._tapped_key[2] >= 0 and tapped is self._tapped_slots and len(self._tapped()):
                self._tap(self._pass.flagged_rows, k)  # the batch brought a missing viewed series: flags not counted
            return out + trailer if trailer else out
        cols = self._pass.columns()
        now = self.sessions.clock()
        ids = self._intern_staged(state, cols, now, where)
        self._scratch.ensure(len(cols))
        s = self._scratch
        saved = state.take(ids)  # copies (fancy indexing)
        reset = np.empty(len(ids), dtype=np.int64)
        expired = expiry.touch(ids, cols.times, now, state.ttl, state.clock, state.last_seen, reset)
        state.reset_slots(reset[:expired])
        r = params.rules()
        if self._ruled is not None:
            return self._apply_ruled(cols, ids, saved, expired, now, where, batch, trailer)
        k = rules.stream_update(ids, cols.values, state.count, state.mean, state.spread,
                                params.mode == MODE_EXPONENTIAL, params.alpha, params.threshold, params.warmup,
                                params.exclude_outliers, r.exclude_limit, r.cooldown, state.streak, state.hold,
                                r.likelihood, r.window, r.tail_threshold, r.learning, state.lcount, state.lmean,
                                state.lvar, state.ring, s.idx, s.mean, s.std, s.z, s.tail if r.likelihood
                                else s.tail[:0], r.suppress_array, r.resolve_after,
                                *((cols.times, int(now * 1e9), state.ep_run, state.ep_start, state.ep_count,
                                   state.ep_peak_z, state.ep_peak_value, s.ev, s.ev_stats, s.ev_n)
                                  if r.resolve_after else rules.NO_EPISODES))
        out = s.encode(batch, k, cols, ids, state.table, r.likelihood)
        return self._finish(out + trailer, cols, ids, saved, expired, where, k, int(s.ev_n[0]) if r.resolve_after
                            else 0)

    def _apply_ruled(self, cols: Columns, ids: np.ndarray, saved, expired: int, now: float, where: str,
                     batch: int, trailer: bytes) -> bytes:
        """The staged path's judging and answer when rules are configured: each rule's rows judged with its
        Params (series_rules.judge), each outlier and episode change naming its rule."""
        state, s, names = self.state, self._scratch, self._settings.rules.names
        rule_of = series_rules.rule_of_rows(state, self._settings.rules, self._settings.version, ids,
                                            cols.name_hash)
        k, rule_out, rule_ev = series_rules.judge(state, self._ruled, rule_of, ids, cols.values, cols.times,
                                                  int(now * 1e9), s.idx, s.mean, s.std, s.z, s.tail, s.ev,
                                                  s.ev_stats, s.ev_n)
        tails = any(p.score == SCORE_LIKELIHOOD for p in self._ruled)
        out_rules = [names[g] for g in rule_out.tolist()]
        out = with_rules(s.encode(0, k, cols, ids, state.table, tails), out_rules) + encode_trailer(batch, 0, 0, False)
        e = int(s.ev_n[0])
        return self._finish(out + trailer, cols, ids, saved, expired, where, k, e, out_rules,
                            [names[g] for g in rule_ev.tolist()] if e else None,
                            series_rules.params_of(self._ruled, ids, rule_of))

    def _finish(self, out: bytes, cols: Columns, ids: np.ndarray, saved, expired: int, where: str, k: int, e: int,
                rule: list[str] | None = None, ev_rule: list[str] | None = None, params_of=None) -> bytes:
        """The staged path's end: undo the batch if its answer `out` is too large for grpc, else count it and hand
        its k outliers and e episode changes (in the scratch arrays; `rule`, `ev_rule`: each one's rule) to
        Watch, the sinks and the page's taps (`params_of`: each series' Params, with rules)."""
        state, s = self.state, self._scratch
        limit = self.defaults.max_response_bytes
        if len(out) > limit:
            # Repeated ids restore the same saved values; new series go back to the zeros they had.
            state.put(ids, saved)
            added = state.table.born()
            state.table.rollback()
            state.budget.release(added)
            raise ResourceExhausted(f"{_too_large(where, len(out), k, limit)}; the batch was not applied")
        state.budget.release(0, expired)
        self.on_batch(len(cols), k)
        if k and self.watch is not None and self.watch.outliers_active:
            self._publish(ids, cols.values, cols.times, s.idx[:k], s.mean, s.std, s.z, rule)
        if e:
            self._announce(s.ev[:e], s.ev_stats[:e], ids, cols.values, cols.times, ev_rule)
        if self.taps is not None and self.taps.active:
            self._tap(lambda: (ids, cols.values, cols.times, s.idx[:k], s.mean, s.std, s.z), k, lambda: (ids, s.idx),
                      params=params_of)
        return out

    def _tap(self, rows, k: int, flagged=None, viewed=None, params=None) -> None:
        """Tell the page's taps a batch was applied (streamer/web/tap.py; only called while a page views a series);
        rows() gives its (ids, values, times, idx, mean, std, z) when a tap records it; `params`: as Taps.observe
        takes them (None: the stream's)."""
        self.taps.observe(self.session.name if self.session is not None else "", self.state, params or self.params,
                          rows, k, flagged, viewed)

    def _tapped(self) -> np.ndarray:
        """The slots of this stream's series that a page views, for the fused pass to copy their flagged rows:
        looked up again when a page starts or stops viewing a series, when series were removed from the table
        (expired: a slot may have gone to another series), and while one of them is not in the table, when the
        table has grown."""
        taps, table, key = self.taps, self.state.table, self._tapped_key
        if key[0] != taps.version or key[1] is not table or (key[2] >= 0 and key[2] != len(table)) or \
                key[3] != table.removals:
            session = self.session.name if self.session is not None else ""
            self._tapped_slots, missing = taps.slots(session, table)
            self._tapped_key = (taps.version, table, len(table) if missing else -1, table.removals)
        return self._tapped_slots

    def _publish(self, ids, values, times, idx, mean, std, z, rule: list[str] | None = None) -> None:
        """Hand the batch's outliers to Watch (only called when someone watches); `rule`: each one's rule."""
        session = self.session.name if self.session is not None else ""
        self.watch.publish(watch.flagged(self.state.table, ids, values, times, idx, mean, std, z,
                                         watch.ORIGIN_STREAM, session, self.tenant, rule))

    def _source(self) -> str:
        """Where this stream's episodes come from, as sinks and Watch name it."""
        return f"session {self._session_name}" if self._session_name else "stream"

    def _announce(self, ev, stats, ids, values, times, rule: list[str] | None = None) -> None:
        self.on_episodes(episodes.events(ev, stats, ids, values, times, self.state.table, self._source(),
                                         self._session_name, tenant=self.tenant, rule=rule))

    @staticmethod
    def _intern_staged(state: SeriesState, cols: Columns, now: float, where: str) -> np.ndarray:
        """The batch's slots, its new series counted in the budget; as the fused pass, a batch over a limit
        sweeps out expired series and is tried once more."""
        state.sweep()
        n = len(cols)
        for again in (False, True):
            room = state.budget.grant(n)
            try:
                ids = state.table.intern(cols.buf, cols.name_start, cols.name_len, cols.name_hash, room=room)
            except SeriesLimitError as exc:
                state.budget.settle(room, 0)
                if again or not state.make_room(cols.times, now):
                    raise _series_limit(where, state.limit_error(exc.index, room)) from None
                continue
            state.budget.settle(room, state.table.born())
            state.table.settle()
            state.reserve(state.table.slots)
            return ids

    def _use(self, settings: series_rules.Settings, options: Options | None, where: str) -> Params:
        """Resolve the stream's options with `settings` (its defaults, and each rule's), give the state the
        arrays they need, and keep them: the next batches are judged with them. The Params without a rule."""
        params = resolve(options, settings.defaults, where)
        ruled = None
        if settings.rules:
            ruled = [resolve(options, rule.defaults(settings.defaults), where) for rule in settings.rules.rules]
            ruled.append(params)
        if self.state is not None:
            with self.session.lock if self.session is not None else contextlib.nullcontext():
                self.state.ttl = params.series_ttl
                for p in ruled or (params,):
                    p.use(self.state)
        self._settings, self.params, self._ruled = settings, params, ruled
        return params

    def _start(self, cols: fused.Head, where: str) -> None:
        settings = self.live.current
        params = resolve(cols.options, settings.defaults, where)
        if len(cols.session.encode()) > MAX_NAME_BYTES:
            raise InvalidArgument(f"{where}: session name is {len(cols.session.encode())} bytes, over the "
                                  f"limit of {MAX_NAME_BYTES} bytes")
        if cols.session:
            try:
                self.session = self.sessions.attach(cols.session, params.mode, _describe(params), tenant=self.tenant)
            except SessionError as exc:
                error = {"busy": AlreadyExists, "mode": FailedPrecondition, "full": ResourceExhausted,
                         "store": Unavailable, "tenant": PermissionDenied}[exc.kind]
                raise error(f"{where}: {exc}") from None
            self.state = self.session.state
            with self.session.lock:  # a snapshot may be copying the arrays use() adds to
                self.state.ttl = params.series_ttl
                params.use(self.state)
        else:
            self.state = SeriesState(params.mode, self.defaults.max_series, ttl=params.series_ttl,
                                     budget=self.sessions.budget)
            params.use(self.state)
        self.options, self._session_name = cols.options, cols.session
        self._use(settings, cols.options, where)
        self._made_session = self.session is not None and len(self.state.table) == 0

    def _check_same(self, cols: fused.Head, where: str) -> None:
        if cols.options is not None and resolve(cols.options, self._settings.defaults, where) != self.params:
            raise InvalidArgument(f"{where}: options differ from the stream's first request ({self.options}); "
                                  f"a stream keeps one set of options, open a new stream to change them")
        if cols.session and cols.session != self._session_name:
            raise InvalidArgument(f"{where}: session {cols.session!r} differs from the stream's session "
                                  f"{self._session_name!r}")

    def close(self) -> concurrent.futures.Future | None:
        """Detach from the session (it stays for its TTL) or drop the private state. For a session: a future
        done once its snapshot is in the store and its lease released."""
        done = None
        if self.session is not None:
            # A session this stream made but never filled (its first batch was rejected) is not kept.
            forget = self._made_session and len(self.session.state.table) == 0
            done = self.sessions.detach(self.session, forget=forget)
            if self.params is not None and self.params.resolve_after:
                # its lease is released: the next owner (any worker or replica) sends its open episodes now
                self.on_episodes([episodes.released(self._source())])
            self.session = None
        elif self.state is not None:
            self.state.drop()
        self.state = None
        return done


__all__ = ["Defaults", "Params", "StreamDetector", "detect", "resolve", "DetectError", "MODE_NAMES", "SCORE_NAMES"]
