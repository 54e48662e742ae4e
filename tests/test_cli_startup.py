"""The client verbs of the real CLI (detect, watch, admin, config check, --help, --version) start without numba or
the detection pipeline: only `streamer serve` loads them; those that make no call load no grpc either. Checked
from outside, in the modules `python -X importtime -m streamer ...` reports, so an import at module level
anywhere on these paths fails here."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

# numba and what it brings, and the pipeline's modules (each of which imports numba today)
PIPELINE = ("numba", "llvmlite", "streamer.detector", "streamer.server", "streamer.kernels", "streamer.fused",
            "streamer.wire", "streamer.series", "streamer.rules")


@pytest.fixture(scope="module")
def refused():
    """host:port of a loopback socket that is bound but not listening: a connection to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def imported(*args: str, cwd=None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime -m streamer ARGS`: the finished process and the names of the modules it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "streamer", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)
    names = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, names


@pytest.mark.parametrize("verb", ["--version", "detect --help", "serve --help", "detect", "detect --stream", "watch",
                                  "admin sessions", "config check"])
def test_client_verbs_load_no_numba(verb, refused, tmp_path):
    (tmp_path / "m.csv").write_text("time,name,value\n1,a,1.0\n2,a,2.0\n")
    (tmp_path / "c.toml").write_text('threshold = 3.0\nmode = "exponential"\n\n[[rules]]\nname = "cpu"\n'
                                     'prefix = "cpu."\nscore = "likelihood"\ndirection = "up"\n')
    args = {"detect": ["detect", "m.csv", "--addr", refused, "--timeout", "5"],
            "detect --stream": ["detect", "m.csv", "--stream", "--mode", "exponential", "--addr", refused],
            "watch": ["watch", "--addr", refused, "--count", "1"],
            "admin sessions": ["admin", "sessions", "--addr", refused, "--timeout", "5"],
            "config check": ["config", "check", "c.toml"]}.get(verb, verb.split())
    done, names = imported(*args, cwd=tmp_path)
    if verb in ("detect", "detect --stream", "watch", "admin sessions"):  # the call ran, and found no server
        assert done.returncode == 1 and "UNAVAILABLE" in done.stderr, done.stderr[-2000:]
    else:
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout
    assert "streamer.cli" in names and "streamer.ops.logs" in names  # the listing is the run's, read right
    loaded = sorted(p for p in PIPELINE if any(n == p or n.startswith(p + ".") for n in names))
    assert not loaded, f"`streamer {verb}` imports {loaded}"
    if verb in ("--version", "detect --help", "serve --help", "config check"):  # no call: no grpc either
        assert "grpc" not in names
