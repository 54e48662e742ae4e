"""The benchmark harness: a --tiny run with real servers checked for shape and positive figures (no timing)."""
from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import grpc
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks/ is not an installed package; `python -m benchmarks` runs from ROOT

from benchmarks import golang  # noqa: E402
from benchmarks.baseline_server import outlier_indices  # noqa: E402
from benchmarks.loadgen import encode_requests  # noqa: E402
from streamer.pb import outliers_pb2 as pb  # noqa: E402

SERVERS = {"ceiling", "baseline", "river", "grpc-go", "tuned-go", "streamer"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return out, done, json.loads((out / "latest.json").read_text())


def _numbers(obj, path=""):
    """(path, value) of every number in a nested JSON value, bools excluded."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _numbers(value, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def test_writes_json_markdown_png_and_prints_the_table(tiny_run):
    out, done, _ = tiny_run
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(out.glob("bench-*-tiny.json"))) == 1
    md = (out / "latest.md").read_text()
    assert "| scenario | server | client | metrics/s |" in md
    assert "| scenario | server | client | metrics/s |" in done.stdout
    assert "[  1/" in done.stderr  # progress lines


def test_the_quality_script_writes_its_table_json_and_png(tiny_run):
    out, done, doc = tiny_run
    from benchmarks.quality_bench import KINDS, OPTION_SETS
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| options | spike |" in (out / "quality.md").read_text() and "| options | spike |" in done.stdout
    results = doc["quality"]["results"]
    assert {(r["options"], r["kind"]) for r in results} == {(o, k) for o in OPTION_SETS for k in KINDS}
    spikes = [r for r in results if r["kind"] == "spike"]
    assert all(r["detected"] + r["missed"] == 4 * doc["quality"]["series_per_kind"] for r in spikes)
    assert any(r["detected"] > 0 for r in spikes) and any(r["false_alarms"] > 0 for r in results)


def test_machine_versions_and_settings(tiny_run):
    _, _, doc = tiny_run
    assert doc["mode"] == "tiny"
    machine = doc["machine"]
    assert isinstance(machine["cpu_model"], str) and machine["cpu_model"]
    assert machine["cores"] >= 1
    assert len(machine["load_average_start"]) == 3 and min(machine["load_average_start"]) >= 0
    for name in ("python", "numpy", "numba", "grpcio", "protobuf"):
        assert isinstance(doc["versions"][name], str) and doc["versions"][name][0].isdigit(), name
    assert set(doc["settings"]) >= {"duration", "warmup", "repeats"}
    assert set(doc["servers"]) == SERVERS


def test_every_scenario_measured_against_every_server(tiny_run):
    _, _, doc = tiny_run
    assert doc["scenarios"]
    python = [r for r in doc["results"] if r["loadgen"] == "python"]
    measured = sorted((r["scenario"]["name"], r["server"]) for r in python)
    assert measured == sorted((s["name"], server) for s in doc["scenarios"] for server in SERVERS)
    for r in python:
        assert set(r["scenario"]) >= {"rpc", "load", "batch", "series", "streams"}
        assert "error" not in r, r["error"]


def test_every_figure_is_positive(tiny_run):
    _, _, doc = tiny_run
    for r in doc["results"]:
        assert set(r) >= {"metrics_per_s", "batches_per_s", "ratio_to_ceiling", "ratio_to_baseline"}
        if r["scenario"]["load"] == "lockstep":
            assert r["latency_ms"]["p99"] >= r["latency_ms"]["p50"] > 0
        assert r["metrics_per_s"] == pytest.approx(r["batches_per_s"] * r["scenario"]["batch"])
        for path, value in _numbers(r, r["scenario"]["name"] + "/" + r["server"]):
            # cpu.* are CPU seconds per wall second read at 10 ms tick resolution: a tiny run may read 0.
            if ".cpu." not in path:
                assert value > 0 and math.isfinite(value), (path, value)
    kernels = doc["kernels"]["results"]
    assert {k["method"] for k in kernels} >= {"welford_update", "ewm_update", "python_welford", "numpy_recompute"}
    for path, value in _numbers(kernels, "kernels"):
        assert value > 0 and math.isfinite(value), (path, value)
    if (ROOT / "benchmarks" / "wire_bench.py").exists():
        assert "error" not in doc["wire"], doc["wire"]
        for path, value in _numbers(doc["wire"], "wire"):
            assert math.isfinite(value), (path, value)
        for path, value in _numbers(doc["wire"].get("results", []), "wire"):
            if not path.endswith("outliers_per_batch"):  # a count, which may be 0
                assert value > 0, (path, value)


def test_baseline_flags_the_classic_sample():
    values = np.random.default_rng(0).uniform(0, 40, 1000)
    values[[7, 113, 835]] = [97.3, 92.1, 93.2]
    request = pb.OutliersRequest(metrics=[pb.Metric(name="CPU", value=v) for v in values])
    assert outlier_indices(request).tolist() == [7, 113, 835]


def test_load_generator_requests_cycle_through_the_series():
    requests = [pb.OutliersRequest.FromString(b) for b in encode_requests(batch=100, series=250, seed=3)]
    names = [m.name for r in requests for m in r.metrics]
    assert all(len(r.metrics) == 100 for r in requests)
    assert set(names) == {f"metric-{j}" for j in range(250)}
    assert all(r.metrics[0].time.seconds > 0 for r in requests)


def test_go_output_is_read():
    stdout = ('{"mode": "stream", "batches": 10, "metrics": 10000, "batches_per_s": 500, "metrics_per_s": 5e5, '
              '"p50_ms": 1.25, "p99_ms": 4, "mean_ms": 1.5, "errors": 0, "error": ""}\n')
    got = golang.normalize(stdout)
    assert (got["metrics_per_s"], got["batches_per_s"], got["latency_ms"]["p50"], got["latency_ms"]["p99"]) == \
        pytest.approx((5e5, 500, 1.25, 4))


def test_go_output_without_a_rate_is_an_error():
    assert "error" in golang.normalize('{"batches": 12}')
    assert "error" in golang.normalize("not json")
    assert "refused" in golang.normalize('{"metrics_per_s": 0, "error": "connection refused"}')["error"]


def test_go_latency_is_dropped_for_pipelined_loads():
    got = golang.normalize('{"metrics_per_s": 5e5, "batches_per_s": 500, "p50_ms": 1, "p99_ms": 2}', latency=False)
    assert "latency_ms" not in got


def test_the_river_peer_answers_as_streamer(channel):
    """The Python peer of the table is honest: streamer's answers on a seeded stream and batch (statistics to
    rounding: river keeps its mean and variance its own way)."""
    from benchmarks.servers import ServerProcess
    from streamer.pb import outliers_pb2_grpc

    rng = np.random.default_rng(11)
    batches = []
    for b in range(6):
        names = rng.integers(0, 5, 400)
        values = names * 10.0 + rng.normal(0.0, 1.0, 400)
        values[rng.random(400) < 0.02] += 25.0
        values[rng.random(400) < 0.01] = np.nan
        req = pb.OutliersRequest(metrics=[pb.Metric(name=f"s{n}", value=v) for n, v in zip(names, values)])
        if b == 0:
            req.options.warmup = 3
        batches.append(req)
    river = ServerProcess("river")
    try:
        with grpc.insecure_channel(river.addr) as peer_channel:
            answers = []
            for ch in (channel, peer_channel):
                stub = outliers_pb2_grpc.OutliersStub(ch)
                answers.append((list(stub.DetectStream(iter(batches), timeout=30)),
                                [stub.Detect(req, timeout=30) for req in batches[:2]]))
    finally:
        river.stop()
    (want_stream, want_detect), (got_stream, got_detect) = answers
    flagged = 0
    for want, got in zip(want_stream + want_detect, got_stream + got_detect):
        assert list(want.indices) == list(got.indices) and want.batch == got.batch
        for w, g in zip(want.outliers, got.outliers):
            assert (w.index, w.name, w.value) == (g.index, g.name, g.value)
            assert (g.mean, g.stddev, g.zscore) == pytest.approx((w.mean, w.stddev, w.zscore), rel=1e-9)
        flagged += len(want.indices)
    assert flagged > 10
