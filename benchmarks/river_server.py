"""The Python peer: streamer's rules with one `river.stats.Var` per series, what a data scientist would write.

Run as `python -m benchmarks.river_server --port 0`; prints `river ready on HOST:PORT` to stderr. grpc.aio with
the generated servicer (protobuf messages, read a metric at a time). Detect: per name, a Var over the batch's
finite values, then each value judged against its name's mean and population stddev. DetectStream: a Var per
name for the stream, each value scored before it is added, flagged once its name has max(warmup, 2) values;
exclude_outliers keeps flagged values out, as streamer does (not at stddev 0, nor after max(warmup, 2) excluded in a
row until a normal one). Defaults as streamer's (threshold 2, warmup 10); sessions, MODE_EXPONENTIAL and the
options past exclude_outliers (fields 6-17) are refused with UNIMPLEMENTED (the benchmarks never ask).
"""
from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys

import grpc
from river import stats

from streamer.pb import outliers_pb2 as pb
from streamer.pb import outliers_pb2_grpc

THRESHOLD, WARMUP = 2.0, 10


def _outlier(i: int, m: pb.Metric, mean: float, std: float) -> pb.Outlier:
    d = m.value - mean
    z = d / std if std > 0 else math.copysign(math.inf, d)
    return pb.Outlier(index=i, name=m.name, value=m.value, mean=mean, stddev=std, zscore=z)


class RiverServicer(outliers_pb2_grpc.OutliersServicer):

    async def Detect(self, request, context):
        k = request.options.threshold or THRESHOLD
        batch: dict[str, stats.Var] = {}
        for m in request.metrics:
            if math.isfinite(m.value):
                batch.setdefault(m.name, stats.Var(ddof=0)).update(m.value)
        resp = pb.OutliersResponse()
        for i, m in enumerate(request.metrics):
            if math.isfinite(m.value):
                var = batch[m.name]
                mean, std = var.mean.get(), math.sqrt(var.get())
                if abs(m.value - mean) > k * std:
                    resp.indices.append(i)
                    resp.outliers.append(_outlier(i, m, mean, std))
        return resp

    async def DetectStream(self, request_iterator, context):
        series: dict[str, stats.Var] = {}
        excluded: dict[str, int] = {}  # excluded values in a row since the series' last normal one
        n = 0
        async for request in request_iterator:
            if n == 0:
                o = request.options
                optional = ("exclude_limit", "cooldown", "score", "likelihood_short", "likelihood_window",
                            "likelihood_threshold", "likelihood_learning", "series_ttl_seconds", "min_deviation",
                            "min_relative_deviation", "direction", "resolve_after")
                if request.session or o.mode == pb.MODE_EXPONENTIAL or any(o.HasField(f) for f in optional):
                    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the river peer keeps no sessions, only "
                                        "MODE_CUMULATIVE and no options past exclude_outliers")
                k, need, exclude = o.threshold or THRESHOLD, max(o.warmup or WARMUP, 2), o.exclude_outliers
            resp = pb.OutliersResponse(batch=n)
            for i, m in enumerate(request.metrics):
                x = m.value
                if not math.isfinite(x):
                    continue
                var = series.get(m.name)
                if var is None:
                    var = series[m.name] = stats.Var(ddof=0)
                flagged, std = False, 0.0
                if var.mean.n >= need:
                    mean, std = var.mean.get(), math.sqrt(var.get())
                    if abs(x - mean) > k * std:
                        flagged = True
                        resp.indices.append(i)
                        resp.outliers.append(_outlier(i, m, mean, std))
                if flagged and exclude and std > 0 and excluded.get(m.name, 0) < need:
                    excluded[m.name] = excluded.get(m.name, 0) + 1
                    continue
                if not flagged:
                    excluded[m.name] = 0
                var.update(x)
            n += 1
            yield resp


async def serve(host: str, port: int, max_message_mb: int) -> None:
    limit = max_message_mb * 1024 * 1024
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit)])
    outliers_pb2_grpc.add_OutliersServicer_to_server(RiverServicer(), server)
    port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"river ready on {host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--max-message-mb", type=int, default=64)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.max_message_mb))


if __name__ == "__main__":
    main()
