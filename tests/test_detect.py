"""Unary Detect through a real server and channel: the original rule, per-name grouping, details, edges."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import pathlib

import numpy as np
import pytest

from streamer.client import Client
from streamer.pb import outliers_pb2 as pb

DATA = pathlib.Path(__file__).parent / "data"


def classic_sample(seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).uniform(0, 40, 1000)
    values[[7, 113, 835]] = [97.3, 92.1, 93.2]
    return values


def test_classic_sample(server):
    with Client(server.addr) as client:
        result = client.detect(values=classic_sample(), name="CPU")
    assert result.indices == [7, 113, 835]
    assert [o.index for o in result.outliers] == [7, 113, 835]
    values = classic_sample()
    for o in result.outliers:
        assert o.name == "CPU" and o.value == values[o.index]
        assert o.mean == pytest.approx(values.mean(), rel=1e-12)
        assert o.stddev == pytest.approx(values.std(), rel=1e-12)
        assert o.zscore == pytest.approx((o.value - values.mean()) / values.std(), rel=1e-9)


def test_client_built_from_the_original_proto(server, tmp_path):
    out = subprocess.run([sys.executable, str(DATA / "original_client.py"), server.addr, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [7, 113, 835]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_groups_by_name_against_numpy(server, seed):
    rng = np.random.default_rng(seed)
    names = [f"host{i}.cpu" for i in range(5)]
    picked = rng.integers(0, len(names), 3000)
    values = rng.normal(50, 10, 3000) + 1e3 * picked
    values[rng.integers(0, 3000, 30)] = rng.choice([np.nan, np.inf, -np.inf], 30)
    values[rng.integers(0, 3000, 20)] += rng.choice([-1, 1], 20) * 60
    metrics = [(names[p], v) for p, v in zip(picked, values)]
    with Client(server.addr) as client:
        result = client.detect(metrics)
    expected = []
    for i, (p, v) in enumerate(zip(picked, values)):
        series = values[(picked == p) & np.isfinite(values)]
        if np.isfinite(v) and abs(v - series.mean()) > 2 * series.std():
            expected.append(i)
    print("seed", seed, "expected", len(expected), "outliers")
    assert expected, "the sample must contain outliers for the test to mean anything"
    assert result.indices == expected


def test_threshold_option(server):
    values = np.random.default_rng(4).normal(0, 1, 2000)
    with Client(server.addr) as client:
        at2 = client.detect(values=values).indices
        at3 = client.detect(values=values, threshold=3.0).indices
    assert at2 == np.flatnonzero(np.abs(values - values.mean()) > 2 * values.std()).tolist()
    assert at3 == np.flatnonzero(np.abs(values - values.mean()) > 3 * values.std()).tolist()
    assert set(at3) < set(at2)


def test_empty_batch_is_ok(stub):
    response = stub.Detect(pb.OutliersRequest(), timeout=10)
    assert list(response.indices) == [] and list(response.outliers) == []


def test_non_finite_values_never_flagged_nor_counted(server):
    values = [1.0, 2.0, 1.5, float("nan"), float("inf"), float("-inf"), 1.2, 1.1, 1.3, 1.4, 1.6, 9.0]
    with Client(server.addr) as client:
        result = client.detect(values=values)
    finite = np.array([v for v in values if math.isfinite(v)])
    expected = [i for i, v in enumerate(values)
                if math.isfinite(v) and abs(v - finite.mean()) > 2 * finite.std()]
    assert expected == [11]
    assert result.indices == expected


def test_constant_batch_has_no_outliers(server):
    with Client(server.addr) as client:
        assert client.detect(values=[3.0] * 50).indices == []
