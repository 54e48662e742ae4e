"""The checked build of the wire primitives catches what the normal build would silently get wrong.

Each case runs in a fresh interpreter with the switch set, since the build is chosen at import.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# A planted bug of the class issue 17 found: a reader's error position (-2 for a too-long varint) used as
# a position without checking it. The normal build would load the byte before the buffer.
PLANTED = textwrap.dedent("""
    import numpy as np
    from numba import njit
    from streamer.wire import primitives as w

    @njit(**dict(w.HOT, cache=False))
    def buggy(b):
        t, p = w.varint32(b, 0, len(b))
        return w.byte_at(b, p)  # p is -2 here: the error is not checked

    @njit(**dict(w.HOT, cache=False))
    def stuck(b):
        return w.advanced(3, 3, "stuck_loop")

    @njit(**dict(w.HOT, cache=False))
    def tail(b):
        return w.load_i64(b, len(b) - 4)

    print("checked", w.CHECKED, "jit", w.JIT)
    for f in (buggy, stuck, tail):
        try:
            f(bytes.fromhex("9a8080808000"))
        except w.WireBug as exc:
            print(f.__name__, "WireBug", exc.args)
        else:
            print(f.__name__, "no error")
""")


def run(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", PLANTED], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("env", [{"STREAMER_WIRE_CHECKED": "1"}, {"NUMBA_DISABLE_JIT": "1"}],
                         ids=["checked", "pure-python"])
def test_checked_builds_catch_a_planted_out_of_bounds_read_and_a_stalled_loop(env):
    out = run(env)
    assert "checked True" in out
    assert "buggy WireBug ('byte_at', -2, 6)" in out
    assert "stuck WireBug ('stuck_loop', 3, 3)" in out
    assert "tail WireBug ('load_i64', 2, 6)" in out


def test_the_normal_build_rejects_a_stalled_loop_instead_of_spinning():
    from streamer.wire import primitives as w
    if w.CHECKED:
        pytest.skip("this process runs the checked build; the checked cases above cover it")
    assert w.advanced(3, 3, "loop") == -w.E_STALLED
    assert w.advanced(3, 4, "loop") == 4
    assert w.advanced(3, -w.E_VARINT, "loop") == -w.E_VARINT
