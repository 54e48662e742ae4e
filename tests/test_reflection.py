"""Reflection as users meet it: `streamer serve` in its own process, described and called by grpcurl and by
Python's reflection client in another process, neither of which has the .proto or the generated code.

(The in-process test in test_server.py cannot see a missing descriptor: pytest has imported the generated
module, so the pool is full whatever the server loads.)
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import CliServer

ROOT = pathlib.Path(__file__).resolve().parent.parent
GRPCURL = ROOT / "bin" / "grpcurl"


@pytest.fixture(scope="module")
def grpcurl() -> str:
    """bin/grpcurl at the Makefile's pinned version (`make grpcurl` installs it from the Go module proxy)."""
    if shutil.which("go") is None or shutil.which("make") is None:
        message = "the go toolchain and make are needed to install grpcurl"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    subprocess.run(["make", "-s", "grpcurl"], cwd=ROOT, check=True, timeout=900)
    return str(GRPCURL)


@pytest.fixture(scope="module")
def addr():
    server = CliServer()
    yield server.addr
    assert server.terminate() == 0
    server.close()


def classic_request() -> dict:
    """The classic sample as protobuf JSON: 1000 "CPU" values in [0, 40) with spikes at 7, 113 and 835."""
    values = np.random.default_rng(0).uniform(0, 40, 1000)
    values[[7, 113, 835]] = [97.3, 92.1, 93.2]
    return {"metrics": [{"time": f"2026-11-23T10:{i // 60 % 60:02d}:{i % 60:02d}Z", "name": "CPU", "value": v}
                        for i, v in enumerate(values.tolist())],
            "options": {"threshold": 2.0}}


def _grpcurl(grpcurl: str, *args: str, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([grpcurl, "-plaintext", *args], capture_output=True, text=True, timeout=60, **kw)
    assert out.returncode == 0, out.stderr
    return out


def test_grpcurl_lists_the_services(grpcurl, addr):
    out = _grpcurl(grpcurl, addr, "list")
    assert out.stdout.split() == ["grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                                  "opentelemetry.proto.collector.metrics.v1.MetricsService", "pb.Outliers",
                                  "streamer.admin.v1.Admin"]


def test_grpcurl_describes_the_service_and_its_messages(grpcurl, addr):
    service = " ".join(_grpcurl(grpcurl, addr, "describe", "pb.Outliers").stdout.split())
    assert "pb.Outliers is a service:" in service
    assert "rpc Detect ( .pb.OutliersRequest ) returns ( .pb.OutliersResponse );" in service
    assert "rpc DetectStream ( stream .pb.OutliersRequest ) returns ( stream .pb.OutliersResponse );" in service
    assert "rpc Watch ( .pb.WatchRequest ) returns ( stream .pb.WatchEvent );" in service
    event = " ".join(_grpcurl(grpcurl, addr, "describe", "pb.WatchEvent").stdout.split())
    assert ".pb.OutlierEvent outlier = 1;" in event and ".pb.Dropped dropped = 2;" in event
    otlp = " ".join(_grpcurl(grpcurl, addr, "describe", "opentelemetry.proto.collector.metrics.v1.MetricsService")
                    .stdout.split())
    assert ("rpc Export ( .opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest ) returns "
            "( .opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceResponse );") in otlp
    metric = " ".join(_grpcurl(grpcurl, addr, "describe", "pb.Metric").stdout.split())
    for field in (".google.protobuf.Timestamp time = 1;", "string name = 2;", "double value = 3;"):
        assert field in metric
    options = _grpcurl(grpcurl, addr, "describe", "pb.DetectOptions").stdout
    assert "exclude_outliers = 5;" in options


def test_grpcurl_calls_detect_with_json(grpcurl, addr):
    out = _grpcurl(grpcurl, "-d", "@", addr, "pb.Outliers/Detect", input=json.dumps(classic_request()))
    response = json.loads(out.stdout)
    assert response["indices"] == [7, 113, 835]
    assert [o["index"] for o in response["outliers"]] == [7, 113, 835]
    assert response["outliers"][0]["name"] == "CPU" and response["outliers"][0]["value"] == 97.3


# Run in a fresh interpreter that never imports streamer: everything it knows about pb.Outliers comes from
# the server's reflection service.
REFLECTION_CLIENT = r"""
import json, sys
import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

addr, request_json = sys.argv[1], sys.stdin.read()
with grpc.insecure_channel(addr) as channel:
    db = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(db.get_services())
    pool = descriptor_pool.DescriptorPool(db)
    service = pool.FindServiceByName("pb.Outliers")
    detect = service.methods_by_name["Detect"]
    request_class = message_factory.GetMessageClass(detect.input_type)
    response_class = message_factory.GetMessageClass(detect.output_type)
    call = channel.unary_unary("/pb.Outliers/Detect", request_serializer=request_class.SerializeToString,
                               response_deserializer=response_class.FromString)
    response = call(json_format.Parse(request_json, request_class()), timeout=30)
    assert "streamer" not in sys.modules
    print(json.dumps({"services": services, "methods": [m.name for m in service.methods],
                      "client_streaming": service.methods_by_name["DetectStream"].client_streaming,
                      "indices": list(response.indices)}))
"""


def test_python_reflection_client_in_another_process(addr, tmp_path):
    out = subprocess.run([sys.executable, "-c", REFLECTION_CLIENT, addr], input=json.dumps(classic_request()),
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert {"pb.Outliers", "grpc.health.v1.Health"} <= set(seen["services"])
    assert seen["methods"] == ["Detect", "DetectStream", "Watch"] and seen["client_streaming"]
    assert seen["indices"] == [7, 113, 835]
