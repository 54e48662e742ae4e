"""The baseline: the original approach, a thread-pool sync gRPC server reading per-metric attributes.

Run as `python -m benchmarks.baseline_server --port 0`; prints `baseline ready on HOST:PORT` to stderr.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc
import numpy as np

from streamer.pb import outliers_pb2 as pb
from streamer.pb import outliers_pb2_grpc

THRESHOLD = 2.0  # the original rule: beyond 2 population standard deviations of the batch's values


def outlier_indices(request: pb.OutliersRequest) -> np.ndarray:
    """Positions of the values beyond THRESHOLD population stddevs of the whole batch (names ignored)."""
    # The per-metric attribute read is the point: it is what the original service did and what costs.
    values = np.array([m.value for m in request.metrics], dtype=np.float64)
    if values.size == 0:
        return values.astype(np.int32)
    mean = values.mean()
    std = values.std()
    return np.flatnonzero(np.abs(values - mean) > THRESHOLD * std)


class BaselineServicer(outliers_pb2_grpc.OutliersServicer):
    """Detect judges one batch; DetectStream applies the same per-batch rule to each message, no state."""

    def Detect(self, request, context):
        return pb.OutliersResponse(indices=outlier_indices(request).tolist())

    def DetectStream(self, request_iterator, context):
        for n, request in enumerate(request_iterator):
            yield pb.OutliersResponse(indices=outlier_indices(request).tolist(), batch=n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    # Each open stream holds a worker thread for its whole life, so 16 concurrent streams need 16+ workers.
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--max-message-mb", type=int, default=64)
    args = parser.parse_args(argv)

    limit = args.max_message_mb * 1024 * 1024
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers),
                         options=[("grpc.max_receive_message_length", limit),
                                  ("grpc.max_send_message_length", limit)])
    outliers_pb2_grpc.add_OutliersServicer_to_server(BaselineServicer(), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"baseline ready on {args.host}:{port}", file=sys.stderr, flush=True)
    stop.wait()
    server.stop(0).wait()


if __name__ == "__main__":
    main()
