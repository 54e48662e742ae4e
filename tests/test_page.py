"""The page's server (--http-port) without a browser: the API against a real server, the taps and the backtest
against tests/naive.py. The browser tests are in tests/test_page_browser.py."""
from __future__ import annotations

import base64
import http.client
import json
import math
import random
import socket
import threading
import urllib.parse

import numpy as np
import pytest

from streamer import detector
from streamer.client import Client
from streamer.state import MODE_CUMULATIVE, MODE_EXPONENTIAL
from streamer.web.backtest import Backtests, BacktestError
from streamer.wire import Options
import naive

SEED = 21


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def csv_file(rows) -> bytes:
    return ("time,name,value\n" + "".join(f"{t},{n},{v!r}\n" for t, n, v in rows)).encode()


def generated(seed: int = SEED, n: int = 400):
    """Two series with unit noise and spikes in "a" at rows 100 and 300."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        for name in ("a", "b"):
            v = rng.gauss(10, 1)
            if name == "a" and i in (100, 300):
                v = 30.0
            rows.append((1764580000 + i, name, v))
    return rows


def naive_flags(rows, threshold, warmup, exclude=False, mode=MODE_CUMULATIVE, alpha=0.05):
    state: dict = {}
    return naive.stream([(n, v) for _, n, v in rows], state, threshold=threshold, warmup=warmup, exclude=exclude,
                        alpha=alpha, mode="exponential" if mode == MODE_EXPONENTIAL else "cumulative")[0]


SETS = [  # (the page's option set, the naive twin's arguments)
    ({"threshold": 3}, dict(threshold=3.0)),
    ({"threshold": "2", "warmup": 20, "exclude_outliers": True}, dict(threshold=2.0, warmup=20, exclude=True,
                                                                      exclude_limit=20)),
    ({"mode": "exponential", "alpha": 0.1, "exclude_outliers": "on", "exclude_limit": 3},
     dict(exponential=True, alpha=0.1, exclude=True, exclude_limit=3)),
    ({"threshold": 2, "cooldown": 4, "resolve_after": 3}, dict(threshold=2.0, cooldown=4, resolve_after=3)),
    ({"score": "likelihood", "likelihood_learning": 40, "likelihood_short": 4, "likelihood_threshold": 0.02,
      "likelihood_window": 100}, dict(likelihood=True, learning=40, short=4, tail_threshold=0.02, window=100)),
    ({"threshold": 1.5, "min_deviation": 2.5, "direction": "up", "resolve_after": 1},
     dict(threshold=1.5, min_deviation=2.5, direction="up", resolve_after=1)),
]


def naive_backtest(rows, **kw):
    """The naive twin (tests/naive.py) one row at a time: (flagged rows, band (mean, std or None) per row,
    episode changes (row, kind, count))."""
    kw = {"warmup": 10, "resolve_after": 10, **kw}
    slots: dict[str, int] = {}
    series: list = []
    flagged, band, changes = [], [], []
    for r, (t, name, v) in enumerate(rows):
        s = slots.setdefault(name, len(slots))
        if s == len(series):
            series.append(naive.Series())
        st = series[s]
        judged = st.n >= max(kw["warmup"], 2)
        std = (st.spread if kw.get("exponential") else st.spread / max(st.n, 1)) ** 0.5
        band.append((st.mean, std) if judged else None)
        eps: list = []
        out = naive.stream_update([s], [v], series, times=[t * 10**9], episodes=eps, **kw)
        flagged += [r] * len(out[0])
        changes += [(r, kind, count) for _, kind, _, count, _, _ in eps]
    return flagged, band, changes


@pytest.mark.parametrize("options, twin", SETS, ids=[str(i) for i in range(len(SETS))])
def test_backtest_flags_band_and_episodes_are_the_naive_streams(options, twin):
    """Every rule (exclusion with a limit, cooldown, likelihood, min_deviation and direction, episodes): the
    backtest's flags, the band of every value and its episodes equal the naive twin's of the stream's rules."""
    print("seed", SEED)
    rows = generated()
    result = Backtests(detector.Defaults()).run(csv_file(rows), "gen.csv", [{"label": "x", **options}])
    s = result.sets[0]
    flagged, band, changes = naive_backtest(rows, **twin)
    assert flagged, "nothing flagged: the comparison says nothing"
    assert np.flatnonzero(s.flagged).tolist() == flagged
    for r, b in enumerate(band):
        if b is None:
            assert np.isnan(s.band_mean[r]) and np.isnan(s.band_std[r]), r
        else:
            assert (s.band_mean[r], s.band_std[r]) == pytest.approx(b, rel=1e-9, abs=1e-12), r
    opened = [(r, c) for r, kind, c in changes if kind == "opened"]
    resolved = {c_r: (r, c) for c_r, (r, kind, c) in enumerate(changes) if kind == "resolved"}
    assert [(e.opened_row, 1) for e in s.episodes] == opened
    assert sorted((e.resolved_row, e.count) for e in s.episodes if e.resolved_row is not None) == \
        sorted(resolved.values())
    chart = result.chart("a")
    rows_a = [i for i, r in enumerate(rows) if r[1] == "a"]
    assert chart["sets"][0]["flagged"] == [bool(s.flagged[r]) for r in rows_a]
    assert len(chart["sets"][0]["episodes"]) == sum(e.series == "a" for e in s.episodes)
    csv_rows = result.flagged_csv().splitlines()
    assert csv_rows[0] == "option_set,row,time,name,value,mean,stddev,zscore,tail_probability"
    assert len(csv_rows) == 1 + len(flagged)
    assert len(result.episodes_csv().splitlines()) == 1 + len(s.episodes)
    assert result.summary()["sets"][0]["episodes"] == len(s.episodes)


def test_backtest_refuses_bad_options_and_files_with_a_message():
    bt = Backtests(detector.Defaults())
    with pytest.raises(BacktestError, match=r"option set 2: options.threshold must be a finite number >= 0"):
        bt.run(csv_file(generated(n=20)), "f.csv", [{}, {"threshold": -1}])
    with pytest.raises(BacktestError, match=r"option set 1: unknown option 'bogus'"):
        bt.run(csv_file(generated(n=20)), "f.csv", [{"bogus": 1}])
    with pytest.raises(BacktestError, match=r"img.png:1: not UTF-8 text"):
        bt.run(b"\x89PNG\r\n\x1a\n\x00\x00", "img.png", [{}])
    with pytest.raises(BacktestError, match=r"f.csv"):
        bt.run(b"hello,world\n1,2\n", "f.csv", [{}])


@pytest.fixture
def page(make_server):
    port = free_port()
    srv = make_server(http_port=port, http_max_upload_mb=1)
    return srv, port


def _get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


def _post(port, path, body: bytes):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, body=body)
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def _f64(m: dict, columns: int) -> list[list]:
    """format=f64's columns of little-endian float64s, with None for what is not finite (as the page reads them)."""
    cols = np.frombuffer(base64.b64decode(m["f64"]), dtype="<f8").reshape(columns, m["n"])
    return [[x if math.isfinite(x) else None for x in c] for c in cols.tolist()]


def _f64_points(m: dict) -> list[dict]:
    """A tap's message in format=f64 as the JSON form's objects."""
    return [{"t": t, "value": v, "mean": mu, "stddev": sd, "flagged": f == 1.0, "zscore": z, "k": k}
            for t, v, mu, sd, f, z, k in zip(*_f64(m, 7))]


def _f64_events(items: list) -> list[dict]:
    """An /api/events message in format=f64 (runs of outliers as one object of columns) as the JSON form's."""
    out = []
    for m in items:
        if m.get("kind") != "outliers":
            out.append(m)
            continue
        floats = zip(*_f64(m, 5))
        out += [{"kind": "outlier", "value": v, "time": t, "mean": mu, "stddev": sd, "zscore": z, **{
            k: m[k][i] for k in ("series", "session", "source", "tenant", "rule")}}
            for i, (v, t, mu, sd, z) in enumerate(floats)]
    return out


def _sse(port, path, want: int, got: list, ready: threading.Event):
    """Read server-sent `data:` events of `path` into `got` until `want` items arrived (format=f64 messages, a
    tap's or the live list's, decoded into the JSON form's objects)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    event = ""
    while len(got) < want:
        line = r.fp.readline().decode()
        if line.startswith(": streamer"):
            ready.set()
        elif line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: "):
            if event != "ring":
                m = json.loads(line[6:])
                got.extend(_f64_points(m) if isinstance(m, dict) and "f64" in m else _f64_events(m))
            event = ""
    conn.close()


def test_the_api_serves_sessions_search_live_events_and_a_tap(page):
    srv, port = page
    status, body = _get(port, "/")
    assert status == 200 and b"<title>streamer</title>" in body
    assert _get(port, "/static/uPlot.iife.min.js")[0] == 200
    assert _get(port, "/static/../../setup.cfg")[0] == 404
    status, body = _get(port, "/api/tap?session=s1&series=cpu&format=csv")
    assert status == 400 and json.loads(body)["error"] == "format 'csv': one of json, f64"
    assert _get(port, "/api/events?format=xml")[0] == 400
    events, events_f64, points, columns = [], [], [], []
    ready_e, ready_f, ready_t, ready_c = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    te = threading.Thread(target=_sse, args=(port, "/api/events?session=s1&source=stream&prefix=cp", 1, events,
                                             ready_e))
    tf = threading.Thread(target=_sse, args=(port, "/api/events?format=f64&session=s1&source=stream&prefix=cp", 1,
                                             events_f64, ready_f))
    tt = threading.Thread(target=_sse, args=(port, "/api/tap?session=s1&series=cpu", 39, points, ready_t))
    tc = threading.Thread(target=_sse, args=(port, "/api/tap?session=s1&series=cpu&format=f64", 39, columns,
                                             ready_c))
    srv.server.service.taps.sample_seconds = 0  # every batch recorded whole (test_a_sampled_tap_...: sampled)
    te.start(), tf.start(), tt.start(), tc.start()
    assert ready_e.wait(30) and ready_f.wait(30) and ready_t.wait(30) and ready_c.wait(30)
    rng = random.Random(SEED)
    batches = [[("cpu", 100 + rng.gauss(0, 1)), ("mem", 5 + rng.gauss(0, 0.1))] for _ in range(40)]
    batches[30][0] = ("cpu", 200.0)
    with Client(srv.addr) as c:
        answers = list(c.stream(batches, session="s1"))
    te.join(60), tf.join(60), tt.join(60), tc.join(60)
    flagged_cpu = [(i, o) for i, a in enumerate(answers) for o in a.outliers if o.name == "cpu"]
    assert (30, 200.0) in [(i, o.value) for i, o in flagged_cpu]
    assert events and all(e["series"].startswith("cp") and e["session"] == "s1" for e in events)
    # the page's form (outliers_f64): the same events, exactly (each reader stops after its first message, and
    # the two subscriptions' deliveries may split the events differently: their common start is compared)
    common = min(len(events), len(events_f64))
    assert common and events_f64[:common] == events[:common]
    # the tap: every value of cpu after the first batch, each judged against the mean and stddev the stream used
    assert [p["value"] for p in points] == [b[0][1] for b in batches[1:]]
    by_value = {p["value"]: p for p in points}
    for i, o in flagged_cpu:
        p = by_value[o.value]
        assert p["flagged"] and p["mean"] == pytest.approx(o.mean, rel=1e-12)
        assert p["stddev"] == pytest.approx(o.stddev, rel=1e-12)
    assert sum(p["flagged"] for p in points) == len([1 for i, _ in flagged_cpu if i >= 1])
    assert columns == points and any(p["mean"] is None for p in points)  # the page's form: the same, exactly
    status, body = _get(port, "/api/sessions")
    held = json.loads(body)["sessions"][0]
    assert (held["name"], held["series"], held["open"]) == ("s1", 2, False)
    assert json.loads(_get(port, "/api/series?session=s1&q=me")[1])["series"] == ["mem"]
    assert json.loads(_get(port, "/api/series?session=s1&q=")[1])["series"] == ["cpu", "mem"]
    assert srv.server.service.taps.active is False  # the tap went with its viewer


def test_uploads_over_the_limit_get_413_and_bad_ones_400_and_the_server_goes_on(page):
    srv, port = page
    status, body = _post(port, "/api/backtest?filename=big.csv", b"x" * (2 << 20))
    assert status == 413 and "over the upload limit of 1 MiB (--http-max-upload-mb)" in body["error"]
    status, body = _post(port, "/api/backtest?filename=pic.png", b"\x89PNG\r\n\x1a\n")
    assert status == 400 and "pic.png:1: not UTF-8 text" in body["error"]
    status, body = _post(port, "/api/backtest?sets=" + urllib.parse.quote("[{\"threshold\": 3}]"),
                         csv_file(generated(n=100)))
    assert status == 200 and body["rows"] == 200
    assert body["sets"][0]["flagged"] == len(naive_flags(generated(n=100), 3, 10))
    status, csv_body = _get(port, f"/api/backtest/{body['id']}/flagged.csv")
    assert status == 200 and csv_body.decode().count("\n") == 1 + body["sets"][0]["flagged"]


def test_an_option_set_can_name_any_field_the_pipeline_reads():
    from streamer.web.backtest import option_fields, parse_options
    import dataclasses
    assert [f["name"] for f in option_fields()] == [f.name for f in dataclasses.fields(Options)]
    assert parse_options({"mode": "exponential", "alpha": "0.1", "exclude_outliers": "on"}, "s") == \
        Options(mode=MODE_EXPONENTIAL, alpha=0.1, exclude_outliers=True)


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("mode", ["cumulative", "exponential"])
def test_a_sampled_tap_judges_sampled_batches_as_the_stream(exclude, mode):
    """With sampling (one batch recorded whole in a long while), each whole batch (three values of the series in
    it) has the band the kernel judged it against, and its flagged values the stream's mean and stddev."""
    from streamer.pb import outliers_pb2 as pb
    from streamer.state import SessionRegistry
    from streamer.web.tap import Taps
    clock = [0.0]
    taps = Taps(sample_seconds=10.0, clock=lambda: clock[0])
    tap = taps.view("", "x")
    d = detector.StreamDetector(detector.Defaults(), SessionRegistry(600, 10, 1000))
    d.taps = taps
    rng = random.Random(SEED)
    outliers, others = [], []
    for b in range(60):
        clock[0] = 11.0 * (b in (20, 40))  # arms after batches 20 and 40: batches 21 and 41 are recorded whole
        values = [rng.gauss(0, 1) for _ in range(3)]
        if b in (15, 21, 33):
            values[1] = 50.0
        other = 9.0 * (b in (25, 26))  # a flagged value of a series nobody views: not on x's tap
        req = pb.OutliersRequest(metrics=[pb.Metric(name="x", value=v) for v in values] +
                                 [pb.Metric(name="y", value=other)])
        if b == 0:
            req.options.CopyFrom(pb.DetectOptions(exclude_outliers=exclude, alpha=0.1,
                                                  mode=pb.MODE_EXPONENTIAL if mode == "exponential" else 0))
        answer = pb.OutliersResponse.FromString(d.process(req.SerializeToString()))
        outliers += [(o.value, o.mean, o.stddev) for o in answer.outliers if o.name == "x"]
        others += [o.value for o in answer.outliers if o.name == "y"]
    ring = list(tap.ring)
    flagged = [(p[1], p[2], p[3]) for p in ring if p[4]]
    # every flagged value of x is on its tap with the stream's mean and stddev, sampled batch (21) or not (15, 33)
    assert len(outliers) >= 3 and sorted(flagged) == sorted(outliers)
    assert 9.0 in others and 9.0 not in [v for v, _, _ in flagged]
    whole = [p for p in ring if not p[4]]
    assert len(whole) >= 5  # the first batch, 21 and 41 (less their flagged values)
    # the band of the unflagged values of a whole batch: the naive stream's state before each value
    state: dict = {}
    rng = random.Random(SEED)
    expect = {}
    for b in range(60):
        values = [rng.gauss(0, 1) for _ in range(3)]
        if b in (15, 21, 33):
            values[1] = 50.0
        for v in values:
            x = state["series"][0] if state else None
            if x is not None and x.n >= 10:
                expect[v] = (x.mean, (x.spread if mode == "exponential" else x.spread / x.n) ** 0.5)
            naive.stream([("x", v)], state, threshold=2.0, warmup=10, exclude=exclude, alpha=0.1, mode=mode)
    for p in whole:
        if p[2] is not None:
            assert (p[2], p[3]) == pytest.approx(expect[p[1]], rel=1e-9)


def test_episodes_reach_the_live_list(make_server):
    """A server keeping episodes (--episodes on): the page's live stream carries an episode's opening."""
    from streamer.pb import outliers_pb2 as pb
    port = free_port()
    srv = make_server(http_port=port, defaults=detector.Defaults(episodes=True))
    events: list = []
    ready = threading.Event()
    t = threading.Thread(target=_sse, args=(port, "/api/events?session=ep", 3, events, ready))
    t.start()
    assert ready.wait(30)
    rng = random.Random(SEED)
    batches = [[("lat", 10 + rng.gauss(0, 1))] for _ in range(30)]
    batches[20] = [("lat", 100.0)]
    with Client(srv.addr) as c:
        list(c.stream(batches, session="ep", options=pb.DetectOptions(resolve_after=3)))
    t.join(60)
    kinds = [(e["kind"], e.get("state")) for e in events]
    assert ("outlier", None) in kinds and ("episode", "opened") in kinds, events
    episode = next(e for e in events if e["kind"] == "episode")
    assert episode["series"] == "lat" and episode["session"] == "ep" and episode["source"] == "stream"


def test_the_live_list_pauses_outliers_past_its_quota_but_never_episodes():
    """Once LIVE_QUOTA events wait for the page, the live list stops wanting outliers, and with nobody else
    watching the hub tells detection not to build them; episodes still come; the next delivery resumes."""
    from streamer import watch
    from streamer.sinks.episode import OPENED, EpisodeEvent
    from streamer.web.live import LIVE_QUOTA, LiveList
    hub = watch.Hub()
    live = hub.add(LiveList(hub, "", ""))
    assert hub.outliers_active
    outlier = watch.Event("cpu", 9.0, 1, 1.0, 1.0, 8.0, 1, "s")
    live.offer([outlier] * (LIVE_QUOTA - 1))
    assert hub.outliers_active and live.paused == 0
    live.offer([outlier] * 3)
    assert not hub.outliers_active and hub.active and live.paused == 1
    queued = len(live.queue)
    live.offer([outlier])  # a publisher that looked before the pause: not queued
    episode = EpisodeEvent(OPENED, "e1", 0, "cpu", "session s", 1, 1, 9.0, 1.0, 1.0, 8.0, 9.0, 8.0, session="s")
    live.offer([episode])
    assert len(live.queue) == queued + 1 and live.queue[-1] is episode
    live.queue.clear()
    live.delivered()
    assert hub.outliers_active
    other = hub.subscribe()  # someone else watching keeps outliers coming whatever the page's quota
    live.offer([outlier] * LIVE_QUOTA)
    assert hub.outliers_active
    hub.unsubscribe(other)
    assert not hub.outliers_active


def test_the_live_list_takes_a_batchs_first_outliers_up_to_its_quota():
    """A batch with more outliers than the quota has room for: the first ones the list wants (its prefix here) are
    queued, up to the quota, in batch order; the rest are neither queued nor counted as dropped; episodes all are."""
    from streamer import watch
    from streamer.sinks.episode import OPENED, EpisodeEvent
    from streamer.web.live import LIVE_QUOTA, LiveList
    hub = watch.Hub()
    live = hub.add(LiveList(hub, "", "cpu"))
    batch = [watch.Event("mem" if i % 3 == 0 else f"cpu{i}", float(i), 1, 1.0, 1.0, 8.0, 1, "s")
             for i in range(4 * LIVE_QUOTA)]
    episode = EpisodeEvent(OPENED, "e1", 0, "cpu", "session s", 1, 1, 9.0, 1.0, 1.0, 8.0, 9.0, 8.0, session="s")
    live.offer(batch[:3])
    live.offer(batch + [episode])  # a list from the bus may hold both
    wanted = [e for e in batch if e.series.startswith("cpu")]
    assert list(live.queue) == wanted[:2] + wanted[:LIVE_QUOTA - 2] + [episode]
    assert live.missed == 0 and live.paused == 1 and not hub.outliers_active


def test_the_page_needs_no_network_its_chart_library_and_licence_are_in_the_package():
    """No CDN: every script, stylesheet and request of the page is the server's own (/static, /api)."""
    import re
    from importlib import resources
    static = resources.files("streamer.web").joinpath("static")
    for name in ("index.html", "app.js", "app.css"):
        text = static.joinpath(name).read_text()
        assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", text), name
        assert not re.search(r"""(fetch|EventSource)\(\s*[`"']https?://""", text), name
    html = static.joinpath("index.html").read_text()
    assert re.findall(r'src="([^"]+)"', html) == ["/static/uPlot.iife.min.js", "/static/app.js"]
    assert "MIT" in static.joinpath("LICENSE.uPlot.txt").read_text()


def test_a_tap_follows_views_that_start_and_stop_on_an_open_stream():
    """The fused pass counts the viewed series' flagged values from slots the stream looks up again when a page
    starts or stops viewing a series: a series viewed mid-stream gets its next flagged values, one no longer viewed
    none, and the other viewed series keeps its own throughout."""
    from streamer.pb import outliers_pb2 as pb
    from streamer.state import SessionRegistry
    from streamer.web.tap import Taps
    taps = Taps(sample_seconds=1e9, clock=lambda: 1.0)
    d = detector.StreamDetector(detector.Defaults(), SessionRegistry(600, 10, 1000))
    d.taps = taps
    rng = random.Random(SEED)
    x = taps.view("", "x")
    flagged: dict = {"x": [], "y": []}
    y = None
    for b in range(60):
        if b == 30:
            y = taps.view("", "y")
        if b == 45:
            taps.unview(y)
        values = [rng.gauss(0, 1) for _ in range(4)]
        if b >= 15 and b % 5 in (0, 2):  # x's spikes, then y's in other batches
            values[b % 5 // 2] = 50.0 + b
        req = pb.OutliersRequest(metrics=[pb.Metric(name="xy"[i % 2], value=v) for i, v in enumerate(values)])
        for o in pb.OutliersResponse.FromString(d.process(req.SerializeToString())).outliers:
            flagged[o.name].append((b, o.value))
    on_x = [p[1] for p in x.ring if p[4]]
    on_y = [p[1] for p in y.ring if p[4]]
    assert on_x == [v for _, v in flagged["x"]] and {50.0 + b for b in range(15, 60, 5)} <= set(on_x)
    assert on_y == [v for b, v in flagged["y"] if 30 <= b < 45] and {82.0, 87.0, 92.0} <= set(on_y)


def test_a_tap_draws_a_ruled_series_by_its_rule():
    """With rules, a viewed series' recorded batch has the band and threshold of its own rule (alpha 0.2, k 3 here,
    on a stream whose client asked for the exponential mode), not the server's defaults (alpha 0.05, k 2): each
    value against the naive stream's state."""
    from streamer import series_rules
    from streamer.pb import outliers_pb2 as pb
    from streamer.state import SessionRegistry
    from streamer.web.tap import Taps
    rule = series_rules.Rule("fast", prefix="lat", values=(("alpha", 0.2), ("threshold", 3.0)))
    rules = series_rules.RuleSet((rule,))
    defaults = detector.Defaults()
    live = series_rules.Live(series_rules.Settings(1, defaults, rules))
    clock = [0.0]
    taps = Taps(sample_seconds=10.0, clock=lambda: clock[0])
    tap = taps.view("", "lat")
    d = detector.StreamDetector(defaults, SessionRegistry(600, 10, 1000), live=live)
    d.taps = taps
    rng = random.Random(SEED)
    sent = []
    for b in range(40):
        clock[0] = 11.0 * (b >= 30)  # arms after batch 30: batch 31 is recorded whole
        values = [rng.gauss(10, 1) for _ in range(3)]
        sent.append(values)
        req = pb.OutliersRequest(metrics=[pb.Metric(name="lat", value=v) for v in values] +
                                 [pb.Metric(name="cpu", value=rng.gauss(0, 1))])
        if b == 0:
            req.options.CopyFrom(pb.DetectOptions(mode=pb.MODE_EXPONENTIAL))  # a mode is one per stream, not a rule's
        d.process(req.SerializeToString())
    whole = [p for p in tap.ring if not p[4]]
    assert {p[1] for p in whole} >= set(sent[31]) and all(p[6] == 3.0 for p in whole)
    state: dict = {}
    expect = {}
    for values in sent:
        for v in values:
            x = state["series"][0] if state else None
            if x is not None and x.n >= 10:
                expect[v] = (x.mean, x.spread ** 0.5)
            naive.stream([("lat", v)], state, threshold=3.0, warmup=10, alpha=0.2, mode="exponential")
    for p in whole:
        if p[1] in set(sent[31]):
            assert (p[2], p[3]) == pytest.approx(expect[p[1]], rel=1e-9)


def test_a_tap_hands_a_page_what_it_has_not_sent_even_past_the_ring():
    """Tap.since: the points added after the first `added`, in order; once more were added than the ring holds,
    what the ring still holds."""
    from streamer.web.tap import Tap
    tap = Tap("", "x", limit=5)
    assert tap.since(0) == []
    tap.add([(1,), (2,), (3,)])
    assert tap.since(0) == [(1,), (2,), (3,)] and tap.since(1) == [(2,), (3,)] and tap.since(3) == []
    tap.add([(i,) for i in range(4, 10)])  # 9 added, the ring keeps the last 5
    assert tap.since(3) == [(5,), (6,), (7,), (8,), (9,)] and tap.since(7) == [(8,), (9,)]
    assert tap.since(9) == [] and tap.since(0) == list(tap.ring)


def test_a_tap_follows_its_series_not_its_slot_once_it_expired():
    """A viewed series expires (series TTL 3 s, data time) and a new series takes its slot, in the batch that swept
    it out: the tap records none of the newcomer's values; when the viewed series comes back (in another slot,
    state fresh), the tap records its values again, flagged ones included."""
    from streamer.pb import outliers_pb2 as pb
    from streamer.state import SessionRegistry
    from streamer.web.tap import Taps, find_slot
    taps = Taps(sample_seconds=1e9, clock=lambda: 1.0)
    d = detector.StreamDetector(detector.Defaults(series_ttl=3.0), SessionRegistry(600, 10, 1000))
    d.taps = taps
    tap = taps.view("", "x")
    rng = random.Random(SEED)
    sent: dict = {"x": [], "y": []}
    flagged: dict = {"x": [], "y": []}
    slots = {}
    for b in range(70):
        # x gone from 20; batch 24 sweeps it out and brings y, which takes its slot in that very batch (the stream
        # looked up the viewed slots before): y's 60 values there end in a spike, flagged, that is not x's
        name = "x" if b < 20 or b >= 40 else "y" if b >= 24 else None
        names = ["w", "w"] + ([name] * (60 if b == 24 else 2) if name else [])
        values = [rng.gauss(0, 1) for _ in names]
        if name and b in (15, 18, 33, 36, 60, 65):
            values[2] = (1000.0 if name == "y" else 50.0) + b  # y's: past the band its 500 widened
        if b == 24:
            values[-1] = 500.0
        req = pb.OutliersRequest(metrics=[pb.Metric(name=n, value=v) for n, v in zip(names, values)])
        for m in req.metrics:
            m.time.seconds = 1_700_000_000 + b
        if name:
            sent[name] += values[2:]
        for o in pb.OutliersResponse.FromString(d.process(req.SerializeToString())).outliers:
            if o.name in flagged:
                flagged[o.name].append(o.value)
        if b in (10, 30, 50):
            slots[b] = find_slot(d.state.table, b"x" if b != 30 else b"y")
    assert slots[10] == slots[30] != slots[50]  # y took x's slot; x came back in another
    assert {500.0, 1033.0, 1036.0} <= set(flagged["y"]) and {65.0, 68.0, 110.0, 115.0} <= set(flagged["x"])
    assert [p[1] for p in tap.ring if p[4]] == flagged["x"]
    assert {p[1] for p in tap.ring} <= set(sent["x"])


def test_a_tap_draws_a_series_that_came_back_from_a_fresh_state():
    """Every other batch of the viewed series recorded whole: x, around 100, expires (TTL 3 s) and comes back
    around 0; each recorded value after it came back has the band the stream judged it against, from a fresh
    state: none in the warmup (10 values), then the values since it came back, never the band from before."""
    import statistics
    from streamer.pb import outliers_pb2 as pb
    from streamer.state import SessionRegistry
    from streamer.web.tap import Taps
    taps = Taps(sample_seconds=0.0, clock=lambda: 1.0)
    d = detector.StreamDetector(detector.Defaults(series_ttl=3.0), SessionRegistry(600, 10, 1000))
    d.taps = taps
    tap = taps.view("", "x")
    rng = random.Random(SEED)
    back = []
    for b in range(60):
        here = b < 20 or b >= 40
        names = ["w", "w"] + (["x", "x"] if here else [])
        values = [rng.gauss(0, 1) for _ in names[:2]] + [rng.gauss(100 if b < 20 else 0, 1) for _ in names[2:]]
        if b >= 40:
            back += values[2:]
        req = pb.OutliersRequest(metrics=[pb.Metric(name=n, value=v) for n, v in zip(names, values)])
        for m in req.metrics:
            m.time.seconds = 1_700_000_000 + b
        d.process(req.SerializeToString())
    drawn = {p[1]: p for p in tap.ring if p[1] in back and not p[4]}
    assert len(drawn) >= 20  # about every other batch since x came back
    for j, v in enumerate(back):
        if v not in drawn:
            continue
        _, _, mu, sd, _, _, _ = drawn[v]
        if j < 10:
            assert mu is None and sd is None, j
        else:
            assert (mu, sd) == pytest.approx((statistics.fmean(back[:j]), statistics.pstdev(back[:j])), rel=1e-9), j


def test_a_backtest_draws_no_old_band_for_a_series_that_expired():
    """Series TTL 10 s (data time): "a" is silent for 170 s and comes back as a new series, so its first values
    after the gap are in the warmup (no band), and its band then follows the values since the gap only; "b", never
    silent, keeps its band throughout."""
    import statistics
    rng = random.Random(SEED)
    rows = []
    for i in range(230):
        for name in ("a", "b"):
            if name == "a" and 30 <= i < 200:
                continue
            rows.append((1764580000 + i, name, rng.gauss(10, 1)))
    result = Backtests(detector.Defaults()).run(csv_file(rows), "gap.csv",
                                                [{"series_ttl": 10, "warmup": 3, "threshold": 50}])
    s = result.sets[0]
    a = [r for r, row in enumerate(rows) if row[1] == "a"]
    after = a[30:]  # the rows of "a" from t = 200
    values = [rows[r][2] for r in after]
    for j, r in enumerate(after):
        if j < 3:
            assert np.isnan(s.band_mean[r]) and np.isnan(s.band_std[r]), j
        else:
            expect = (statistics.fmean(values[:j]), statistics.pstdev(values[:j]))
            assert (s.band_mean[r], s.band_std[r]) == pytest.approx(expect, rel=1e-9), j
    b = [r for r, row in enumerate(rows) if row[1] == "b"]
    assert not np.isnan(s.band_mean[b[3:]]).any()


def _has_ipv6_loopback() -> bool:
    """Whether this host has ::1 (without IPv6, the server binds IPv4 alone, as it should)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_on_the_default_host_the_page_answers_over_ipv4_and_ipv6(cli_server):
    """`--host [::]` (serve's default): the page, like the gRPC port, is reached at 127.0.0.1 and at ::1; asyncio
    binds "::" alone IPv6 only, which left IPv4 browsers unanswered."""
    port = free_port()
    srv = cli_server("--host", "[::]", "--http-port", str(port))
    for host in ("127.0.0.1", "::1") if _has_ipv6_loopback() else ("127.0.0.1",):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", "/")
        r = conn.getresponse()
        assert r.status == 200 and b"<html" in r.read().lower(), host
    with Client(f"127.0.0.1:{srv.port}", timeout=10) as client:  # the gRPC port too, as before
        assert client.detect(values=[1, 1, 1, 1, 1, 1, 1, 1, 1, 9], name="x").indices == [9]


def test_an_outlier_event_reads_as_the_api_documents_it():
    from streamer import watch
    from streamer.web.pageserver import event_json
    e = watch.Event("cpu", 210.5, 1_764_640_000_250_000_000, 100.25, 2.5, 44.1, watch.ORIGIN_OTLP, "s1", "t", "r")
    assert event_json(e) == {"kind": "outlier", "series": "cpu", "value": 210.5, "time": e.time_ns / 1e9,
                             "mean": 100.25, "stddev": 2.5, "zscore": 44.1, "session": "s1", "source": "otlp",
                             "tenant": "t", "rule": "r"}
