"""Request bytes -> columns, and flagged rows -> response bytes.

Columns carry no per-metric Python object: names are (start, length) spans into the request's own bytes,
values float64, times int64 nanoseconds. What the columns mean is decided elsewhere (detector.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from google.protobuf.message import DecodeError

from streamer.pb import outliers_pb2 as pb


class WireError(ValueError):
    """The bytes are not a valid OutliersRequest."""


@dataclasses.dataclass(frozen=True)
class Options:
    """DetectOptions as sent; zero fields mean "the server's default" (resolved in detector.py)."""

    threshold: float = 0.0
    warmup: int = 0
    mode: int = 0
    alpha: float = 0.0
    exclude_outliers: bool = False


@dataclasses.dataclass
class Columns:
    """One decoded OutliersRequest."""

    buf: bytes               # the bytes that name_start / name_len point into
    name_start: np.ndarray   # int64[n]
    name_len: np.ndarray     # int64[n]
    values: np.ndarray       # float64[n]
    times: np.ndarray        # int64[n], nanoseconds since the epoch (0 when absent)
    options: Options | None  # None when the request carries no options field
    session: str

    def __len__(self) -> int:
        return len(self.values)


def decode_request(buf: bytes) -> Columns:
    """Decode an OutliersRequest; raise WireError on bytes the protobuf library would reject."""
    try:
        req = pb.OutliersRequest.FromString(buf)
    except DecodeError as exc:
        raise WireError(f"request is not a valid OutliersRequest: {exc}") from None
    names = [m.name.encode() for m in req.metrics]
    name_len = np.fromiter((len(b) for b in names), dtype=np.int64, count=len(names))
    name_start = np.zeros(len(names), dtype=np.int64)
    np.cumsum(name_len[:-1], out=name_start[1:])
    values = np.fromiter((m.value for m in req.metrics), dtype=np.float64, count=len(names))
    times = np.fromiter((m.time.seconds * 1_000_000_000 + m.time.nanos for m in req.metrics),
                        dtype=np.int64, count=len(names))
    options = None
    if req.HasField("options"):
        o = req.options
        options = Options(o.threshold, o.warmup, o.mode, o.alpha, o.exclude_outliers)
    return Columns(b"".join(names), name_start, name_len, values, times, options, req.session)


def encode_response(batch: int, index: np.ndarray, names: list[bytes], values: np.ndarray,
                    mean: np.ndarray, std: np.ndarray, z: np.ndarray) -> bytes:
    """Encode an OutliersResponse: `index` ascending, the other columns aligned with it."""
    resp = pb.OutliersResponse(batch=batch, indices=index.tolist())
    resp.outliers.extend(
        pb.Outlier(index=int(i), name=n.decode(), value=v, mean=m, stddev=s, zscore=zs)
        for i, n, v, m, s, zs in zip(index.tolist(), names, values.tolist(), mean.tolist(),
                                     std.tolist(), z.tolist())
    )
    return resp.SerializeToString()
