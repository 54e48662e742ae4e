"""The fused pass (streamer/fused.py) answers every batch byte for byte as the stages one by one do, and a batch
it rejects leaves the state and the table exactly as they were. Seeded; the seed is in each test's id."""
from __future__ import annotations

import numpy as np
import pytest

from streamer import detector, fused, kernels, rules
from streamer.errors import InvalidArgument, ResourceExhausted
from streamer.pb import outliers_pb2 as pb
from streamer.series import SeriesTable
from streamer.state import MODE_CUMULATIVE, MODE_EXPONENTIAL, SeriesState, SessionRegistry
from streamer.wire import Options, decode_request, encode_flagged


class Staged:
    """The reference: the stages one by one (decode_request, SeriesTable.intern, the kernel, encode_flagged)."""

    def __init__(self, defaults):
        self.defaults, self.state, self.params, self.batch = defaults, None, None, 0

    def process(self, buf):
        cols = decode_request(buf)
        if self.state is None:
            self.params = detector.resolve(cols.options, self.defaults, "")
            self.state = SeriesState(self.params.mode, self.defaults.max_series)
            self.params.use(self.state)
        p, state = self.params, self.state
        ids = state.table.intern(cols.buf, cols.name_start, cols.name_len, cols.name_hash)
        state.reserve(len(state.table))
        n = len(cols)
        idx, mean, std, z, tail = np.empty(n, np.int32), np.empty(n), np.empty(n), np.empty(n), np.empty(n)
        r = p.rules()
        k = rules.stream_update(ids, cols.values, state.count, state.mean, state.spread,
                                p.mode == MODE_EXPONENTIAL, p.alpha, p.threshold, p.warmup, p.exclude_outliers,
                                r.exclude_limit, r.cooldown, state.streak, state.hold, r.likelihood, r.window,
                                r.tail_threshold, r.learning, state.lcount, state.lmean, state.lvar, state.ring,
                                idx, mean, std, z, tail, r.suppress_array, 0, *rules.NO_EPISODES)
        self.batch += 1
        return encode_flagged(self.batch - 1, idx[:k], ids, cols.values, mean, std, z, state.table,
                              tail if r.likelihood else tail[:0])


def _pair(max_series=100_000):
    defaults = detector.Defaults(max_series=max_series)
    registry = SessionRegistry(600, 10, max_series)  # no sessions are used
    return detector.StreamDetector(defaults, registry), Staged(defaults)


def _request(rng, n, names, with_time=True, options=None):
    req = pb.OutliersRequest()
    values = rng.normal(10.0, 2.0, n)
    values[rng.random(n) < 0.05] *= 8
    values[rng.random(n) < 0.01] = np.nan
    values[rng.random(n) < 0.005] = np.inf
    for x in values.tolist():
        m = req.metrics.add(name=names[rng.integers(len(names))], value=x)
        if with_time:
            m.time.seconds = int(rng.integers(2 ** 31))
            m.time.nanos = int(rng.integers(10 ** 9))
    if options is not None:
        req.options.CopyFrom(options)
    return req.SerializeToString()


def _same_state(a, b):
    assert len(a.state.table) == len(b.state.table)
    assert a.state.table.names(range(len(a.state.table))) == b.state.table.names(range(len(b.state.table)))
    n = len(a.state.table)
    assert a.state.optional == b.state.optional
    for name in ("count", "mean", "spread", *a.state.optional):
        np.testing.assert_array_equal(getattr(a.state, name)[:n], getattr(b.state, name)[:n])


RULES = {1: {}, 2: dict(exclude_outliers=True), 3: dict(cooldown=1),
         4: dict(score=pb.SCORE_LIKELIHOOD, likelihood_learning=20, likelihood_threshold=0.01, exclude_outliers=True,
                 exclude_limit=4, cooldown=2)}


@pytest.mark.parametrize("mode", [MODE_CUMULATIVE, MODE_EXPONENTIAL])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_every_answer_and_the_state_equal_the_staged_path(seed, mode):
    rng = np.random.default_rng(seed)
    print("seed", seed)
    fast, staged = _pair()
    # batches of growing size and name count: the columns, the table, the state and the answer buffer grow
    names = [f"series.{i}" + "x" * int(rng.integers(0, 40)) for i in range(3000)]
    options = pb.DetectOptions(mode=mode, warmup=3, **RULES[seed])
    shapes = [(5, 3), (200, 10), (1000, 4), (3000, 900), (50, 3000), (20_000, 3000), (0, 1), (7, 2)]
    for b, (n, k) in enumerate(shapes):
        req = _request(rng, n, names[:k], with_time=b % 2 == 0, options=options if b == 0 else None)
        assert fast.process(req) == staged.process(req), f"batch {b}"
        _same_state(fast, staged)
    assert fast.batch == staged.batch == len(shapes)


def test_tiny_metrics_grow_the_columns_mid_request():
    fast, staged = _pair()
    first = pb.OutliersRequest(metrics=[pb.Metric(name="a", value=1.0)]).SerializeToString()
    # metrics of 2 bytes (no name, no value): far more of them than the 24 bytes a metric room was made for
    tiny = b"\x0a\x00" * 5000 + pb.OutliersRequest(metrics=[pb.Metric(name="a", value=9.0)]).SerializeToString()
    for req in (first, tiny, tiny):
        assert fast.process(req) == staged.process(req)
    _same_state(fast, staged)


def _rejected_leaves_state(fast, staged, good, bad, error, text):
    for req in good:
        assert fast.process(req) == staged.process(req)
    before = (len(fast.state.table), fast.state.count.copy(), fast.state.mean.copy(), fast.state.spread.copy())
    with pytest.raises(error) as exc:
        fast.process(bad)
    assert text in str(exc.value)
    assert len(fast.state.table) == before[0]
    for now, then in zip((fast.state.count, fast.state.mean, fast.state.spread), before[1:]):
        np.testing.assert_array_equal(now[:before[0]], then[:before[0]])
    _same_state(fast, staged)
    for req in good:  # and the stream goes on as if the bad batch had never come
        assert fast.process(req) == staged.process(req)
    _same_state(fast, staged)


def test_a_malformed_request_after_new_names_is_rejected_whole():
    rng = np.random.default_rng(4)
    good = [_request(rng, 300, ["a", "b", "c"]), _request(rng, 300, ["a", "b", "c"])]
    bad = _request(rng, 300, [f"new{i}" for i in range(50)]) + b"\x0a\x05\x12\x03ab"  # truncated last metric
    _rejected_leaves_state(*_pair(), good, bad, InvalidArgument, "batch 2: request is not a valid OutliersRequest")


def test_a_name_over_the_limit_is_rejected_whole():
    rng = np.random.default_rng(5)
    good = [_request(rng, 100, ["a", "b"]), _request(rng, 100, ["a", "b"])]
    bad = _request(rng, 100, ["new1", "new2"]) + pb.OutliersRequest(
        metrics=[pb.Metric(name="n" * 1025, value=1.0)]).SerializeToString()
    _rejected_leaves_state(*_pair(), good, bad, InvalidArgument, "metric 100: name is 1025 bytes")


def test_the_series_limit_is_rejected_whole():
    rng = np.random.default_rng(6)
    good = [_request(rng, 100, ["a", "b"]), _request(rng, 100, ["a", "b"])]
    bad = _request(rng, 100, ["a"] + [f"new{i}" for i in range(20)])
    _rejected_leaves_state(*_pair(max_series=10), good, bad, ResourceExhausted, "the series limit of 10 series")


def test_options_again_are_checked_and_other_options_rejected():
    rng = np.random.default_rng(7)
    options = pb.DetectOptions(threshold=3.0)
    fast, staged = _pair()
    first = _request(rng, 100, ["a", "b"], options=options)
    again = _request(rng, 100, ["a", "b"], options=options)  # the same options: fine
    for req in (first, again):
        assert fast.process(req) == staged.process(req)
    other = _request(rng, 100, ["a", "b"], options=pb.DetectOptions(threshold=4.0))
    with pytest.raises(InvalidArgument, match="batch 2: options differ"):
        fast.process(other)
    _same_state(fast, staged)
    assert fast.options == Options(threshold=3.0)


def test_the_pass_reads_options_and_session_and_gives_the_columns():
    pass_ = fused.StreamPass()
    req = (pb.OutliersRequest(metrics=[pb.Metric(name="a", value=1.5)], session="s\u00e9",
                              options=pb.DetectOptions(warmup=3, exclude_outliers=True)).SerializeToString())
    head = pass_.decode(req)
    assert (len(head), head.session, head.options) == (1, "s\u00e9", Options(warmup=3, exclude_outliers=True))
    cols, want = pass_.columns(), decode_request(req)
    for name in ("name_start", "name_len", "values", "times", "name_hash"):
        np.testing.assert_array_equal(getattr(cols, name), getattr(want, name))
    assert fused.StreamPass().decode(b"").options is None


def _ordered(rng, n, names, t0):
    """A collector's request: the names in their fixed order, again and again, each metric with a time."""
    req = pb.OutliersRequest()
    for i, x in enumerate(rng.normal(10.0, 2.0, n).tolist()):
        m = req.metrics.add(name=names[i % len(names)], value=x if i % 97 else 10 * x)
        m.time.seconds, m.time.nanos = t0, i
    return req.SerializeToString()


def test_a_fixed_order_of_series_and_its_changes_give_the_staged_answers():
    # intern tries each position's slot of the last batch first: same order, a rotated one, renamed positions,
    # names that are new, a batch shorter and one longer than the last
    rng = np.random.default_rng(5)
    fast, staged = _pair()
    names = [f"host{i:03d}.cpu" for i in range(50)]
    orders = [names, names, names[7:] + names[:7], names[:10] + ["new.a", "new.b"] + names[12:], names[::-1],
              names[:5], names + [f"more{i}" for i in range(30)], names]
    for t, order in enumerate(orders):
        buf = _ordered(rng, 3 * len(order) + 1, order, 1_700_000_000 + t)
        assert fast.process(buf) == staged.process(buf)
    _same_state(fast, staged)


def test_detect_reuses_its_threads_buffers_and_answers_as_a_fresh_call():
    rng = np.random.default_rng(6)
    defaults = detector.Defaults(max_series=60)
    a = _ordered(rng, 400, [f"a{i}" for i in range(40)], 1)
    b = _ordered(rng, 300, [f"b{i % 7}.x{i}" for i in range(50)], 2)
    over = _ordered(rng, 100, [f"c{i}" for i in range(61)], 3)
    first = detector.detect(a, defaults)
    assert detector.detect(b, defaults) != first
    with pytest.raises(ResourceExhausted, match="series limit of 60"):
        detector.detect(over, defaults)
    with pytest.raises(InvalidArgument):
        detector.detect(a[:-3], defaults)
    assert detector.detect(a, defaults) == first == _detect_fresh(a)
    assert detector.detect(b, detector.Defaults(max_series=70)) == _detect_fresh(b)  # another limit: a new table


def _detect_fresh(buf, threshold=2.0):
    """Detect as it was before buffers were kept: new columns, a new table, the kernel, the encoder."""
    cols = decode_request(buf)
    table = SeriesTable(100)
    ids = table.intern(cols.buf, cols.name_start, cols.name_len, cols.name_hash)
    n = len(cols)
    idx, mean, std, z = np.empty(n, np.int32), np.empty(n), np.empty(n), np.empty(n)
    k = kernels.detect_batch(ids, cols.values, len(table), threshold, idx, mean, std, z)
    return encode_flagged(0, idx[:k], ids, cols.values, mean, std, z, table)
