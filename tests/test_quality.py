"""Issue 15's rules through a real server: cooldown, exclude_limit and the likelihood score against the naive
reference (tail_probability included), server defaults from flags, proto3 presence (0 means off), bad
options, and the rules' per-series state across a snapshot and a restart on SQLite."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

import naive
from streamer.client import Client, make_options
from streamer.detector import Defaults
from streamer.pb import outliers_pb2 as pb
from streamer.state import SeriesState
from streamer.store import open_store
from test_durable import serve
from test_store import redis_server, store  # noqa: F401 (fixtures: every store backend)
from test_stream import _stream_until_error

CUM, EXP = pb.MODE_CUMULATIVE, pb.MODE_EXPONENTIAL
LIKELIHOOD = pb.SCORE_LIKELIHOOD


def quality_batches(seed: int, n_batches: int = 10, size: int = 400):
    """Batches of (name, value): spiky noise, a level shift, a flat start, a sustained excursion, NaN/Inf."""
    rng = np.random.default_rng(seed)
    batches, t = [], 0
    for _ in range(n_batches):
        which = rng.integers(0, 5, size)
        step = t + np.arange(size)
        values = rng.normal(0, 1, size) * (1 + which)
        spikes = rng.random(size) < 0.03
        values[spikes] += rng.choice([-1, 1], spikes.sum()) * 10 * (1 + which[spikes])
        values[(which == 1) & (step > 1500)] += 30.0
        values[(which == 2) & (step < 1200)] = 4.0
        values[(which == 3) & (step > 2000) & (step < 2300)] += 12.0
        values[rng.random(size) < 0.01] = np.nan
        values[rng.random(size) < 0.005] = -np.inf
        batches.append([(f"q-{w}", float(v)) for w, v in zip(which, values)])
        t += size
    return batches


CASES = [
    dict(mode=CUM, cooldown=1), dict(mode=EXP, alpha=0.02, cooldown=3),
    dict(mode=CUM, exclude=True), dict(mode=EXP, alpha=0.01, exclude=True, exclude_limit=0),
    dict(mode=EXP, alpha=0.01, exclude=True, exclude_limit=5, cooldown=1),
    dict(mode=CUM, score=LIKELIHOOD, learning=100, tail_threshold=1e-3),
    dict(mode=EXP, alpha=0.05, score=LIKELIHOOD, short=4, window=300, learning=50, tail_threshold=1e-2, cooldown=2),
]


def send_options(case) -> pb.DetectOptions | None:
    return make_options(mode=case["mode"], alpha=case.get("alpha"), exclude_outliers=case.get("exclude", False),
                        exclude_limit=case.get("exclude_limit"), cooldown=case.get("cooldown"),
                        score=case.get("score"), likelihood_short=case.get("short"),
                        likelihood_window=case.get("window"), likelihood_threshold=case.get("tail_threshold"),
                        likelihood_learning=case.get("learning"))


def expected(batches, case, **defaults):
    kw = dict(mode="cumulative" if case["mode"] == CUM else "exponential", alpha=case.get("alpha", 0.05),
              exclude=case.get("exclude", False), exclude_limit=case.get("exclude_limit"),
              cooldown=case.get("cooldown", 0), score="likelihood" if case.get("score") == LIKELIHOOD else "zscore")
    for key in ("short", "window", "tail_threshold", "learning"):
        if key in case:
            kw[key] = case[key]
    kw.update(defaults)
    state: dict = {}
    return [naive.stream(batch, state, **kw) for batch in batches]


def assert_matches(results, want):
    assert len(results) == len(want)
    for n, (got, (idx, mean, std, z, tail)) in enumerate(zip(results, want)):
        assert got.indices == idx, f"batch {n}"
        np.testing.assert_allclose([o.mean for o in got.outliers], mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose([o.stddev for o in got.outliers], std, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose([o.zscore for o in got.outliers], z, rtol=1e-7)
        np.testing.assert_allclose([o.tail_probability for o in got.outliers], tail, rtol=1e-7, atol=1e-300)


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("seed", [31, 32])
def test_the_rules_through_the_server_match_the_naive_reference(server, case, seed):
    batches = quality_batches(seed)
    with Client(server.addr) as client:
        results = list(client.stream(batches, options=send_options(case), timeout=60))
    want = expected(batches, case)
    assert sum(len(w[0]) for w in want) >= 3, "the stream must contain outliers to mean anything"
    assert_matches(results, want)
    if case.get("score") == LIKELIHOOD:
        assert all(0 < o.tail_probability < case["tail_threshold"] for r in results for o in r.outliers)
    else:
        assert all(o.tail_probability == 0 for r in results for o in r.outliers)


def test_server_defaults_come_from_flags_and_zero_turns_them_off(make_server):
    s = make_server(defaults=Defaults(cooldown=2, exclude_limit=3, score=LIKELIHOOD, likelihood_short=5,
                                      likelihood_window=500, likelihood_threshold=1e-2, likelihood_learning=60))
    batches = quality_batches(41, n_batches=6)
    with Client(s.addr) as client:
        results = list(client.stream(batches, options=make_options(exclude_outliers=True), timeout=60))
        off = list(client.stream(batches, options=make_options(exclude_outliers=True, cooldown=0,
                                                               exclude_limit=0), timeout=60))
    assert_matches(results, expected(batches, dict(mode=CUM, exclude=True), cooldown=2, exclude_limit=3,
                                     score="likelihood", short=5, window=500, tail_threshold=1e-2, learning=60))
    assert_matches(off, expected(batches, dict(mode=CUM, exclude=True), cooldown=0, exclude_limit=0,
                                 score="likelihood", short=5, window=500, tail_threshold=1e-2, learning=60))


def test_the_cli_takes_the_rules_flags(cli_server):
    s = cli_server("--cooldown", "1", "--score", "likelihood", "--likelihood-learning", "40",
                   "--likelihood-threshold", "0.01", "--likelihood-short", "3", "--likelihood-window", "100")
    batches = quality_batches(43, n_batches=4)
    with Client(s.addr) as client:
        results = list(client.stream(batches, timeout=60))
    assert_matches(results, expected(batches, dict(mode=CUM), cooldown=1, score="likelihood", short=3, window=100,
                                     tail_threshold=0.01, learning=40))


@pytest.mark.parametrize("options,field", [
    (pb.DetectOptions(score=9), "options.score"), (pb.DetectOptions(likelihood_short=0), "options.likelihood_short"),
    (pb.DetectOptions(likelihood_short=5000), "options.likelihood_short"),
    (pb.DetectOptions(likelihood_window=0), "options.likelihood_window"),
    (pb.DetectOptions(likelihood_threshold=0), "options.likelihood_threshold"),
    (pb.DetectOptions(likelihood_threshold=1.5), "options.likelihood_threshold"),
    (pb.DetectOptions(likelihood_threshold=math.nan), "options.likelihood_threshold"),
])
def test_bad_rule_options_are_invalid_argument(server, options, field):
    with Client(server.addr) as client:
        results, err = _stream_until_error(client, [[("a", 1.0)]], options=options)
    assert results == [] and err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch 0" in err.details and field in err.details


def test_other_rule_options_later_in_the_stream_are_invalid_argument(server):
    first = pb.OutliersRequest(metrics=[pb.Metric(name="a", value=1.0)], options=pb.DetectOptions(cooldown=1))
    later = pb.OutliersRequest(metrics=[pb.Metric(name="a", value=1.0)], options=pb.DetectOptions(cooldown=2))
    same = pb.OutliersRequest(metrics=[pb.Metric(name="a", value=1.0)], options=pb.DetectOptions(cooldown=1))
    with Client(server.addr) as client:
        results, err = _stream_until_error(client, [first, same, later])
    assert len(results) == 2 and err.code == grpc.StatusCode.INVALID_ARGUMENT and "batch 2" in err.details


def test_the_rules_state_survives_a_restart_on_sqlite(tmp_path):
    db = tmp_path / "q.db"
    case = dict(mode=EXP, alpha=0.05, exclude=True, exclude_limit=4, cooldown=2, score=LIKELIHOOD, short=4,
                window=300, learning=50, tail_threshold=1e-2)
    batches = quality_batches(47, n_batches=8)
    got = []
    for part in (batches[:4], batches[4:]):  # a server process each: the second resumes from the store
        s = serve(db)
        try:
            with Client(s.addr) as client:
                got += list(client.stream(part, session="q", options=send_options(case), timeout=60))
        finally:
            assert s.terminate() == 0
    assert "resumed from the store" in "".join(s.log)
    want = expected(batches, case)
    assert sum(len(w[0]) for w in want[4:]) >= 2, "the resumed part must flag outliers to mean anything"
    assert [r.indices for r in got] == [w[0] for w in want]
    np.testing.assert_allclose([o.tail_probability for r in got for o in r.outliers],
                               [t for w in want for t in w[4]], rtol=1e-7)
    opened = open_store(f"sqlite:///{db}")
    try:
        snap = opened.load("q")
    finally:
        opened.close()
    assert set(snap.arrays) == {"count", "mean", "spread", "last_seen", "streak", "hold", "lcount", "lmean", "lvar",
                                "ring"}
    assert SeriesState.from_snapshot(snap, 100).ring.shape[1] == 4
    shown = subprocess.run([sys.executable, "-m", "streamer", "session", "q", "--store", f"sqlite:///{db}"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    series = json.loads(shown.stdout)["series"]
    assert all(len(s["ring"]) == 4 and 0 <= min(s["ring"]) <= max(s["ring"]) <= 1 for s in series)
    assert {"streak", "hold", "lcount", "lmean", "lvar"} <= set(series[0])


def test_snapshot_round_trip_keeps_every_optional_array(store):  # noqa: F811 (test_store's fixture)
    from streamer.state import Session
    state = SeriesState(EXP, 100)
    state.use(True, True, 7)
    ids = state.table.intern(b"abc", np.array([0, 1, 2]), np.array([1, 1, 1]))
    state.reserve(len(state.table))
    rng = np.random.default_rng(0)
    for key in ("count", "mean", "spread", "streak", "hold", "lcount", "lmean", "lvar", "ring"):
        a = getattr(state, key)
        a[:3] = rng.integers(0, 100, a[:3].shape) if a.dtype == np.int64 else rng.normal(size=a[:3].shape)
    snap = Session("s", state).snapshot(1.0)
    assert store.acquire("s", "me", 10, 1.0) is None and store.save(snap, "me")
    loaded = SeriesState.from_snapshot(store.load("s"), 100)
    assert sorted(loaded.optional) == sorted(state.optional) and len(ids) == 3
    for key in ("count", "mean", "spread", *state.optional):
        np.testing.assert_array_equal(getattr(loaded, key)[:3], getattr(state, key)[:3], err_msg=key)
    plain = SeriesState(CUM, 100)  # the default options keep no optional arrays, and snapshot none
    arrays = set(Session("p", plain).snapshot(1.0).arrays)
    assert plain.optional == [] and arrays == {"count", "mean", "spread", "last_seen"}


def test_a_session_stored_before_the_rules_resumes_with_them(make_server, tmp_path):
    """tests/data/store-v2.db.gz was written by the code before these rules (schema 2, no rule arrays): a
    MODE_EXPONENTIAL session of three series (counts 40, 400, 4000; means 10, 50, 200; variances 1, 4, 25).
    The layout is unchanged (the rules' arrays are extra columns), so it opens as it is and resumes with the
    rules' state starting from zeros, as the naive reference started from the stored statistics says."""
    import gzip
    path = tmp_path / "v2.db"
    path.write_bytes(gzip.decompress((Path(__file__).parent / "data" / "store-v2.db.gz").read_bytes()))
    s = make_server(store=f"sqlite:///{path}")
    rng = np.random.default_rng(53)
    names, centre, sd = ["cpu", "mem", "disk.io"], [10.0, 50.0, 200.0], [1.0, 2.0, 5.0]
    batches = []
    for b in range(6):
        which = rng.integers(0, 3, 300)
        values = np.array([rng.normal(centre[w], sd[w]) for w in which])
        spikes = rng.random(300) < 0.03
        values[spikes] += 15 * np.array(sd)[which[spikes]]
        if b >= 3:
            values[which == 0] += 6.0  # cpu shifts by 6 of its stddevs
        batches.append([(names[w], float(v)) for w, v in zip(which, values)])
    options = make_options(mode=EXP, exclude_outliers=True, cooldown=1, score=LIKELIHOOD, likelihood_learning=20,
                           likelihood_threshold=1e-2)
    with Client(s.addr) as client:
        got = list(client.stream(batches, session="v2-session", options=options, timeout=60))
    series = [naive.Series() for _ in names]
    for st, n, m, v in zip(series, [40, 400, 4000], centre, [1.0, 4.0, 25.0]):
        st.n, st.mean, st.spread = n, m, v
    state = {"slots": {n: i for i, n in enumerate(names)}, "series": series}
    want = [naive.stream(batch, state, mode="exponential", exclude=True, cooldown=1, score="likelihood",
                         learning=20, tail_threshold=1e-2) for batch in batches]
    assert sum(len(w[0]) for w in want) >= 1, "the stream must flag something to mean anything"
    assert_matches(got, want)


def test_the_rules_flags_parse_and_refuse_bad_values(capsys):
    from streamer import cli
    parser = cli._parser()
    args = parser.parse_args(["serve"])
    assert (args.exclude_limit, args.cooldown, args.score, args.likelihood_short) == ("warmup", 0, "zscore", 10)
    assert parser.parse_args(["serve", "--exclude-limit", "0"]).exclude_limit == 0
    for flag, bad, words in (("--exclude-limit", "x", "must be `warmup` or an integer from 0 to 4294967295"),
                             ("--likelihood-threshold", "1", "must be a number in (0, 1)"),
                             ("--likelihood-short", "0", "must be an integer from 1 to 1024"),
                             ("--score", "median", "invalid choice")):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["serve", flag, bad])
        assert exit_.value.code == 2 and words in capsys.readouterr().err
