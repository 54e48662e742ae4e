"""series_rules: matching (glob or prefix, first match wins) and judge(), which runs a batch's rows in one kernel
call per rule; checked against tests/naive.py's per-value loop, each value under its series' rule, on seeded
random batches (NaN included, series repeated within a batch)."""
from __future__ import annotations

import numpy as np
import pytest

import naive
from streamer import detector, series_rules
from streamer.state import SeriesState
from streamer.wire import Options

RULES = series_rules.RuleSet((
    series_rules.Rule("tight", match="*_latency_*", values=(("threshold", 1.5), ("cooldown", 2))),
    series_rules.Rule("counters", prefix="http_", values=(("min_deviation", 0.5), ("direction", 2),
                                                          ("resolve_after", 0))),  # no episodes, after a rule with them
    series_rules.Rule("likely", match="q?", values=(("score", 2), ("likelihood_learning", 5),
                                                    ("likelihood_threshold", 0.2))),
    series_rules.Rule("shadowed", prefix="http_", values=(("threshold", 9.0),)),  # never: counters comes first
))
NAMES = ["api_latency_ms", "db_latency_s", "http_requests", "http_errors", "q1", "q2", "plain", "other"]
DIRECTIONS = {1: "both", 2: "up", 3: "down"}


def test_first_matching_rule_wins_and_unmatched_series_take_the_defaults():
    assert [RULES.index(n) for n in NAMES] == [0, 0, 1, 1, 2, 2, 4, 4]
    assert RULES.names[RULES.index("plain")] == "" and RULES.names[RULES.index("q1")] == "likely"


def naive_kwargs(p: detector.Params) -> dict:
    return dict(exponential=p.mode == 2, alpha=p.alpha, threshold=p.threshold, warmup=p.warmup,
                exclude=p.exclude_outliers, exclude_limit=p.exclude_limit if p.exclude_outliers else 0,
                cooldown=p.cooldown, likelihood=p.score == 2, short=p.likelihood_short, window=p.likelihood_window,
                tail_threshold=p.likelihood_threshold, learning=p.likelihood_learning, min_deviation=p.min_deviation,
                min_relative=p.min_relative_deviation, direction=DIRECTIONS[p.direction],
                resolve_after=p.resolve_after)


@pytest.mark.parametrize("seed, mode, exclude", [(0, 1, False), (1, 2, True), (2, 1, True)])
def test_judge_by_rule_groups_matches_the_naive_loop_value_by_value(seed, mode, exclude):
    rng = np.random.default_rng(seed)
    print("seed", seed)
    base = detector.Defaults(threshold=2.5, warmup=4, mode=mode, episodes=True, resolve_after=2,
                             likelihood_short=3)
    options = Options(exclude_outliers=exclude)
    params = [detector.resolve(options, r.defaults(base), "test") for r in RULES.rules]
    params.append(detector.resolve(options, base, "test"))
    state = SeriesState(mode, 100)
    for p in params:
        p.use(state)
    slots = np.arange(len(NAMES), dtype=np.int64)
    state.reserve(len(NAMES))
    rule_of_slot = np.array([RULES.index(n) for n in NAMES])
    ref = [naive.Series() for _ in NAMES]
    seen, changes = set(), 0
    for batch in range(40):
        n = 24
        ids = rng.integers(0, len(NAMES), n).astype(np.int64)  # series repeat within a batch
        values = rng.normal(10, 1, n) + np.where(rng.random(n) < 0.1, rng.choice([-6.0, 6.0], n), 0.0)
        values[rng.random(n) < 0.05] = np.nan
        times = np.full(n, 1_000 + batch, dtype=np.int64)
        out = [np.empty(n, dtype=np.int32), *(np.empty(n) for _ in range(4))]
        ev, ev_stats, ev_n = np.empty((n, 4), dtype=np.int64), np.empty((n, 5)), np.zeros(1, dtype=np.int64)
        k, rule_out, rule_ev = series_rules.judge(state, params, rule_of_slot[ids], ids, values, times, 0, *out,
                                                  ev, ev_stats, ev_n)
        want, want_ev, want_rule = ([], [], [], [], []), [], []
        for i in range(n):  # the obvious loop: each value alone, under its series' rule
            g = int(rule_of_slot[ids[i]])
            eps: list = []
            got = naive.stream_update([ids[i]], [values[i]], ref, times=[times[i]], episodes=eps,
                                      **naive_kwargs(params[g]))
            if got[0]:
                for column, v in zip(want, (i, *(c[0] for c in got[1:]))):
                    column.append(v)
                want_rule.append(g)
            want_ev += [(i, *e[1:4]) for e in eps]
        assert k == len(want[0]) and list(out[0][:k]) == want[0]
        for column, w in zip(out[1:], want[1:]):  # mean, std, z and the tail (0 where the rule has no likelihood)
            np.testing.assert_allclose(column[:k], w, rtol=1e-12, atol=1e-12)
        assert list(rule_out) == want_rule
        kinds = {0: "opened", 1: "updated", 2: "resolved"}
        e = int(ev_n[0])
        assert [(int(r[0]), kinds[int(r[1])], int(r[2]), int(r[3])) for r in ev[:e]] == want_ev
        assert len(rule_ev) == e
        seen |= set(want_rule)
        changes += e
    assert seen == {0, 1, 2, 4} and changes > 10, (seen, changes)  # every live rule flagged something
    assert np.allclose(state.mean[slots], [s.mean for s in ref], rtol=1e-12)
    assert list(state.count[slots]) == [s.n for s in ref]


def test_rule_names_are_written_as_protobuf_writes_them():
    from streamer.pb import outliers_pb2 as pb
    from streamer.wire.encode import encode_response, with_rules
    names, rules = [b"a" * 130, b"b", "é".encode()], ["latency", "", "x" * 200]  # lengths over one varint byte
    body = encode_response(0, np.array([0, 5, 300], dtype=np.int32), names, np.array([1.0, 2.0, 3.0]),
                           np.zeros(3), np.ones(3), np.array([4.0, -5.0, 6.0]))
    want = pb.OutliersResponse.FromString(body)
    for o, rule in zip(want.outliers, rules):
        o.rule = rule
    assert with_rules(body, rules) == want.SerializeToString()
    assert with_rules(body, ["", "", ""]) == body  # no rule matched: the answer without rules, byte for byte
