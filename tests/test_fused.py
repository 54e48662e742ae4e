"""The fused pass (streamer/fused.py) answers every batch byte for byte as the stage-by-stage path does, and a
batch it rejects leaves the state and the table exactly as they were. Seeded; the seed is in each test's id."""
from __future__ import annotations

import numpy as np
import pytest

from streamer import detector, fused
from streamer.errors import InvalidArgument, ResourceExhausted
from streamer.pb import outliers_pb2 as pb
from streamer.state import MODE_CUMULATIVE, MODE_EXPONENTIAL, SessionRegistry
from streamer.wire import Options


class Staged(detector.StreamDetector):
    """The same detector with the fused pass turned off: every batch through decode, intern, kernel, encode."""

    def _apply(self, buf, cols, where):
        if cols is None:
            cols = detector._decode(buf, where)
            self._check_same(cols, where)
        return super()._apply(buf, cols, where)


def _pair(max_series=100_000):
    defaults = detector.Defaults(max_series=max_series)
    registry = SessionRegistry.__new__(SessionRegistry)  # no sessions are used
    return detector.StreamDetector(defaults, registry), Staged(defaults, registry)


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
    for name in ("count", "mean", "spread"):
        np.testing.assert_array_equal(getattr(a.state, name)[:n], getattr(b.state, name)[:n])


@pytest.mark.parametrize("mode", [MODE_CUMULATIVE, MODE_EXPONENTIAL])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_answer_and_the_state_equal_the_staged_path(seed, mode):
    rng = np.random.default_rng(seed)
    print("seed", seed)
    fast, staged = _pair()
    # batches of growing size and name count: the columns, the table, the state and the answer buffer grow
    names = [f"series.{i}" + "x" * int(rng.integers(0, 40)) for i in range(3000)]
    options = pb.DetectOptions(mode=mode, warmup=3, exclude_outliers=seed == 2)
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
    with pytest.raises(error) as staged_exc:
        staged.process(bad)
    assert str(exc.value) == str(staged_exc.value)
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


def test_options_again_take_the_staged_path_and_other_options_are_rejected():
    rng = np.random.default_rng(7)
    options = pb.DetectOptions(threshold=3.0)
    fast, staged = _pair()
    first = _request(rng, 100, ["a", "b"], options=options)
    again = _request(rng, 100, ["a", "b"], options=options)  # the same options: fine
    for req in (first, again):
        assert fast.process(req) == staged.process(req)
    other = _request(rng, 100, ["a", "b"], options=pb.DetectOptions(threshold=4.0))
    with pytest.raises(InvalidArgument, match="options differ"):
        fast.process(other)
    _same_state(fast, staged)
    assert fast.options == Options(threshold=3.0)


def test_the_pass_is_answered_none_when_it_cannot_apply_a_batch():
    """Options or a session on the request, or an answer that might be too large: nothing is done."""
    from streamer.state import SeriesState
    state = SeriesState(MODE_CUMULATIVE, 100)
    run = fused.StreamPass().run
    plain = pb.OutliersRequest(metrics=[pb.Metric(name="a", value=1.0)]).SerializeToString()
    args = (state, False, 0.05, 2.0, 2, False, 1)
    for req, limit in ((plain + pb.OutliersRequest(session="s").SerializeToString(), 1 << 20),
                       (plain + pb.OutliersRequest(options=pb.DetectOptions(warmup=3)).SerializeToString(), 1 << 20),
                       (plain, 30)):
        assert run(req, *args, limit) is None
        assert len(state.table) == 0 and state.count[0] == 0
    assert run(plain, *args, 1 << 20) == b"\x18\x01" and len(state.table) == 1
