"""The wire path in numba: request bytes -> columns (decode.py), flagged rows -> response bytes (encode.py),
over the byte primitives both share with the series table (primitives.py). Nothing here imports the series table.
"""
from __future__ import annotations

import numpy as np

from streamer.wire.primitives import CHECKED, HASH_SEED, WireBug, name_hash, utf8_valid
from streamer.wire.decode import Columns, Options, WireError, decode_request
from streamer.wire.encode import TRAILER_BYTES, _encoded, encode_flagged, encode_response, encode_trailer


def compile_all() -> None:
    """Compile (or load from numba's cache) every jitted entry point of the decoder and the encoder.

    Call once at server start, before reporting SERVING: the first request then pays no compile time.
    """
    metric = b"\x0a\x04\x08\x01\x10\x02\x12\x01a\x19" + bytes(8)
    request = (b"\x0a" + bytes([len(metric)]) + metric + b"\x12\x02\x28\x01\x1a\x01s"
               + b"\x4b\x08\x01\x4c")  # a metric with a time, options, session, an unknown group
    decode_request(request)
    for bad in (request[:-3], b"\x00"):
        try:
            decode_request(bad)
        except WireError:
            pass
    zeros, index = np.zeros(1, dtype=np.float64), np.zeros(1, dtype=np.int32)
    encode_response(1, index, [b"a"], zeros, zeros, zeros, zeros)
    # encode_flagged's signature: rows are the int32 indices, names come from a series table's arrays
    slots, arena = np.zeros(1, dtype=np.int64), np.zeros(9, dtype=np.uint8)
    _encoded(1, index, index, slots, zeros, zeros, zeros, zeros, arena, slots, slots + 1)


__all__ = ["CHECKED", "HASH_SEED", "TRAILER_BYTES", "Columns", "Options", "WireBug", "WireError", "compile_all",
           "decode_request", "encode_flagged", "encode_response", "encode_trailer", "name_hash", "utf8_valid"]
