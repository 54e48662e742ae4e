"""Coverage-guided fuzzing of the request decoder (atheris, libFuzzer), with the protobuf library as the oracle.

    python tests/fuzz/fuzz_decode.py [libFuzzer flags] [CORPUS_DIR ...]     (`make fuzz` runs it)

The decoder runs as plain Python (NUMBA_DISABLE_JIT=1, set below before numba loads), with the checked
twins of the load intrinsics: atheris instruments its bytecode, so the fuzzer sees the decoder's own branches,
and any read outside the buffer raises WireBug. For each input it asserts that the decoder accepts exactly
what the library accepts and, when both do, reads the same names, values, times, options and session. Give
libFuzzer `-timeout=N` so that a hang is a finding too. Findings (crash-*, timeout-*) are confirmed against
the compiled decoder by tests/test_fuzz.py, once copied into tests/fuzz/regressions/.
"""
from __future__ import annotations

import os
import random
import sys

os.environ["NUMBA_DISABLE_JIT"] = "1"
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_TESTS, os.path.dirname(_TESTS)]  # tests/ (oracle.py) and the checkout whose decoder this is

import atheris  # noqa: E402

with atheris.instrument_imports(include=["streamer.wire"]):
    import streamer.wire  # noqa: E402,F401

from hostile import METRIC_TAGS, OPTIONS_TAGS, TIMESTAMP_TAGS, TOP_TAGS  # noqa: E402
from oracle import ours, reference  # noqa: E402

KNOWN_TAGS = TOP_TAGS + METRIC_TAGS + OPTIONS_TAGS + TIMESTAMP_TAGS + [0x4B, 0x4C]  # and a group's start, end


def test_one_input(data: bytes) -> None:
    expected = reference(data)
    got = ours(data)
    if got != expected:
        raise AssertionError(f"decoder disagrees with protobuf on {data.hex()}:\n"
                             f" ours:     {got}\n protobuf: {expected}")


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    """libFuzzer's own mutations, and one in four times an overlong tag or varint whose low bits are a known
    field's tag, written over or into the input: coverage alone does not lead there, since the decoder reads
    every message's tags with the same code (the class of input that once made it spin)."""
    rnd = random.Random(seed)
    if not data or rnd.random() < 0.75:
        return atheris.Mutate(data, max_size)
    junk = bytes([rnd.choice(KNOWN_TAGS) | 0x80]) + b"\x80" * rnd.randint(0, 6) + rnd.choice([b"", b"\x00", b"\x01"])
    at = rnd.randrange(len(data) + 1)
    end = at + len(junk) if rnd.random() < 0.5 else at  # overwrite (lengths around it stay right) or insert
    return (data[:at] + junk + data[end:])[:max_size]


def main() -> None:
    atheris.Setup(sys.argv, test_one_input, custom_mutator=mutate)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
