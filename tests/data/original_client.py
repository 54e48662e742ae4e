"""Call Detect with a client generated from the ORIGINAL proto; print the indices as JSON.

Run in its own process: the original messages share full names with the current ones, so both sets cannot
live in one descriptor pool. Usage: original_client.py ADDR OUTDIR
"""
import json
import pathlib
import sys

import grpc_tools
import numpy as np
from grpc_tools import protoc

addr, out = sys.argv[1], pathlib.Path(sys.argv[2])
here = pathlib.Path(__file__).resolve().parent / "original"
include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
rc = protoc.main(["protoc", f"-I{here}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
                  "outliers.proto"])
assert rc == 0, rc
sys.path.insert(0, str(out))

import grpc  # noqa: E402
import outliers_pb2  # noqa: E402
import outliers_pb2_grpc  # noqa: E402

# The classic sample of the original service's README.
values = np.random.default_rng(0).uniform(0, 40, 1000)
values[[7, 113, 835]] = [97.3, 92.1, 93.2]
request = outliers_pb2.OutliersRequest(metrics=[outliers_pb2.Metric(name="CPU", value=v) for v in values])
request.metrics[0].time.GetCurrentTime()
with grpc.insecure_channel(addr) as channel:
    response = outliers_pb2_grpc.OutliersStub(channel).Detect(request, timeout=30)
print(json.dumps(list(response.indices)))
