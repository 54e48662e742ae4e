"""The page's backtest is the stream: a backtest of a generated file, uploaded to a real `streamer serve` (its own
process), equals flag for flag and episode for episode a DetectStream of the same rows with the same options sent
to that server through the Python client, for option sets with a cooldown, the likelihood score, min_deviation,
exclusion with a limit and a direction."""
from __future__ import annotations

import csv
import http.client
import io
import json
import random
import threading
import time
import urllib.parse


from streamer.client import Client
from streamer.pb import outliers_pb2 as pb
from test_page import free_port

SEED = 2112
START = 1764580000
OPTION_SETS = [
    {"label": "cooldown", "threshold": 3, "cooldown": 5, "resolve_after": 4},
    {"label": "likelihood", "score": "likelihood", "likelihood_learning": 60, "likelihood_short": 5,
     "likelihood_threshold": 0.01, "likelihood_window": 200, "resolve_after": 3},
    {"label": "min_deviation", "threshold": 2, "min_deviation": 0.05, "min_relative_deviation": 0.001,
     "direction": "up", "resolve_after": 2},
    {"label": "exclude_limit", "mode": "exponential", "alpha": 0.05, "threshold": 3, "exclude_outliers": True,
     "exclude_limit": 20, "resolve_after": 5},
    {"label": "down", "threshold": 2.5, "warmup": 30, "direction": "down", "cooldown": 2, "exclude_outliers": True},
]
PROTO = {  # the same option sets as DetectOptions
    "cooldown": pb.DetectOptions(threshold=3, cooldown=5, resolve_after=4),
    "likelihood": pb.DetectOptions(score=pb.SCORE_LIKELIHOOD, likelihood_learning=60, likelihood_short=5,
                                   likelihood_threshold=0.01, likelihood_window=200, resolve_after=3),
    "min_deviation": pb.DetectOptions(threshold=2, min_deviation=0.05, min_relative_deviation=0.001,
                                      direction=pb.DIRECTION_UP, resolve_after=2),
    "exclude_limit": pb.DetectOptions(mode=pb.MODE_EXPONENTIAL, alpha=0.05, threshold=3, exclude_outliers=True,
                                      exclude_limit=20),
    "down": pb.DetectOptions(threshold=2.5, warmup=30, direction=pb.DIRECTION_DOWN, cooldown=2,
                             exclude_outliers=True),
}
PROTO["exclude_limit"].resolve_after = 5


def rows(n: int = 900):
    """Three series a second apart: "spiky" (bursts of spikes, for the cooldown and episodes), "shift" (a level
    shift at n/2, for the exclusion limit), "fine" (tiny noise around 5, for min_deviation)."""
    rng = random.Random(SEED)
    out = []
    for i in range(n):
        spike = i % 97 in (50, 52, 55) or i % 211 == 7
        out.append((START + i, "spiky", rng.gauss(10, 1) + (rng.choice((-8, 9)) if spike else 0)))
        out.append((START + i, "shift", rng.gauss(20 if i > n // 2 else 10, 1)))
        out.append((START + i, "fine", 5 + rng.gauss(0, 0.01) + (0.3 if i % 150 == 149 else 0)))
    return out


def _request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(method, path, body=body)
    r = conn.getresponse()
    return r.status, r.read()


def _stream(addr: str, data, options: pb.DetectOptions, sizes):
    """DetectStream of the rows in batches of varying sizes: (flags {row: (mean, stddev, zscore)} from the answers,
    {episode id: its last event} filled by a thread reading a Watch of episodes, the Watch, the thread, the
    client)."""
    got: dict[str, pb.EpisodeEvent] = {}
    c = Client(addr)  # closed by the caller once the Watch has every event (closing it ends the Watch)
    watch = c.watch(kinds=pb.WATCH_EPISODES)

    def read():
        for e in watch:
            if e.HasField("dropped"):
                got["dropped"] = e.dropped
            else:
                got[e.episode.episode] = e.episode
    reader = threading.Thread(target=read)
    reader.start()
    batches, starts, i, j = [], [], 0, 0
    while i < len(data):
        n = sizes[j % len(sizes)]
        starts.append(i)
        batches.append([pb.Metric(name=name, value=v, time={"seconds": t}) for t, name, v in data[i:i + n]])
        i, j = i + n, j + 1
    flags = {}
    for start, answer in zip(starts, c.stream(batches, options=options)):
        for o in answer.outliers:
            flags[start + o.index] = (o.mean, o.stddev, o.zscore)
    return flags, got, watch, reader, c


def test_a_backtest_equals_detectstream_flag_for_flag_and_episode_for_episode(cli_server):
    port = free_port()
    srv = cli_server("--http-port", str(port), "--episodes", "on", "--episode-update-seconds", "0.000001")
    data = rows()
    body = ("time,name,value\n" + "".join(f"{t},{n},{v!r}\n" for t, n, v in data)).encode()
    status, raw = _request(port, "POST", "/api/backtest?" + urllib.parse.urlencode(
        {"filename": "gen.csv", "sets": json.dumps(OPTION_SETS)}), body)
    assert status == 200, raw
    summary = json.loads(raw)
    bid = summary["id"]
    flagged_csv = list(csv.DictReader(io.StringIO(_request(port, "GET", f"/api/backtest/{bid}/flagged.csv")[1]
                                                  .decode())))
    episodes_csv = list(csv.DictReader(io.StringIO(_request(port, "GET", f"/api/backtest/{bid}/episodes.csv")[1]
                                                   .decode())))
    charts = {s: json.loads(_request(port, "GET", f"/api/backtest/{bid}/chart?series={s}")[1])
              for s in ("spiky", "shift", "fine")}
    row_of = {}  # (series, j-th value of it) -> file row
    seen: dict[str, int] = {}
    for r, (_, name, _) in enumerate(data):
        row_of[(name, seen.get(name, 0))] = r
        seen[name] = seen.get(name, 0) + 1
    for k, s in enumerate(OPTION_SETS):
        label = s["label"]
        flags, got, watch, reader, client = _stream(srv.addr, data, PROTO[label], (1, 7, 64, 300, 2))
        want = {int(f["row"]) - 1: (float(f["mean"]), float(f["stddev"]), float(f["zscore"]))
                for f in flagged_csv if f["option_set"] == label}
        assert flags, f"{label}: the stream flagged nothing, so the comparison says nothing"
        assert want == flags, label  # flag for flag, with the band each was judged against, bit for bit
        assert summary["sets"][k]["flagged"] == len(flags)
        # episodes: the backtest's (id, series, start, end, count, peak) are the stream's, once every change of
        # the stream's episodes has arrived over Watch (waited for with a deadline)
        mine = {e["episode"]: e for e in episodes_csv if e["option_set"] == label}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = {i: e for i, e in dict(got).items()}
            if set(done) == set(mine) and all(
                    (e.kind == pb.EpisodeEvent.RESOLVED) == bool(mine[i]["resolved_row"])
                    and e.count == int(mine[i]["count"]) for i, e in done.items()):
                break
            time.sleep(0.05)
        watch.cancel()
        reader.join(30)
        client.close()
        assert label == "down" or mine, f"{label}: no episodes, so the comparison says nothing"
        assert "dropped" not in got, f"{label}: the Watch subscriber missed events: the comparison is void"
        assert set(got) == set(mine), label
        for i, e in got.items():
            m = mine[i]
            assert e.series == m["series"] and e.count == int(m["count"]), (label, i)
            assert e.started.seconds == float(m["started"])
            assert (e.ended.seconds if e.kind == pb.EpisodeEvent.RESOLVED else "") == (
                float(m["ended"]) if m["ended"] else "")
            assert (e.peak_value, e.peak_zscore) == (float(m["peak_value"]), float(m["peak_zscore"]))
            if e.kind == pb.EpisodeEvent.RESOLVED:
                # the resolving (normal) value's band, as the stream judged it, is the chart's at that row
                chart = charts[e.series]
                j = next(j for j in range(len(chart["x"])) if row_of[(e.series, j)] == int(m["resolved_row"]) - 1)
                assert (chart["sets"][k]["mean"][j], chart["sets"][k]["stddev"][j]) == (e.mean, e.stddev)
        # the chart: each flagged value's band is the one the stream reported
        for series, chart in charts.items():
            for j, f in enumerate(chart["sets"][k]["flagged"]):
                r = row_of[(series, j)]
                assert f == (r in flags)
                if f:
                    assert (chart["sets"][k]["mean"][j], chart["sets"][k]["stddev"][j]) == flags[r][:2]
    assert len({s["flagged"] for s in summary["sets"]}) > 2  # the option sets differ
