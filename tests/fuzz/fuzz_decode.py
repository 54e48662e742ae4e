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
import sys

os.environ["NUMBA_DISABLE_JIT"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for oracle.py

import atheris  # noqa: E402

with atheris.instrument_imports(include=["streamer.wire"]):
    import streamer.wire  # noqa: E402,F401

from oracle import ours, reference  # noqa: E402


def test_one_input(data: bytes) -> None:
    expected = reference(data)
    got = ours(data)
    if got != expected:
        raise AssertionError(f"decoder disagrees with protobuf on {data.hex()}:\n"
                             f" ours:     {got}\n protobuf: {expected}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
