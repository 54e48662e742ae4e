"""The real CLI, end to end: `streamer serve` as a subprocess and `streamer detect FILE` against it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

STREAMER = [sys.executable, "-m", "streamer"]


def run(*args, **kw):
    return subprocess.run([*STREAMER, *args], capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def cli_addr():
    from conftest import CliServer
    server = CliServer("--threshold", "2.0")
    yield server.addr
    assert server.terminate() == 0
    server.close()


def classic_rows():
    values = np.random.default_rng(0).uniform(0, 40, 1000)
    values[[7, 113, 835]] = [97.3, 92.1, 93.2]
    return [(f"2026-11-23T10:{i // 60 % 60:02d}:{i % 60:02d}Z", "CPU", v) for i, v in enumerate(values.tolist())]


def test_detect_csv(cli_addr, tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("time,name,value\n" + "".join(f"{t},{n},{v!r}\n" for t, n, v in classic_rows()))
    out = run("detect", str(path), "--addr", cli_addr, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["indices"] == [7, 113, 835]
    table = run("detect", str(path), "--addr", cli_addr)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0] == "3 outlier(s) in 1000 metric(s)"
    assert "97.3" in table.stdout


def test_detect_jsonl_from_stdin(cli_addr):
    lines = "".join(json.dumps({"time": t, "name": n, "value": v}) + "\n" for t, n, v in classic_rows())
    out = run("detect", "-", "--addr", cli_addr, "--json", input=lines)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["indices"] == [7, 113, 835]


def test_detect_reports_server_errors(cli_addr, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("time,name,value\n," + "x" * 2000 + ",1\n")
    out = run("detect", str(path), "--addr", cli_addr)
    assert out.returncode == 1
    assert "INVALID_ARGUMENT" in out.stderr and "metric 0" in out.stderr


def test_detect_rejects_a_file_without_the_header(tmp_path):
    path = tmp_path / "nohead.csv"
    path.write_text("1,CPU,2\n")
    out = run("detect", str(path), "--addr", "127.0.0.1:1")
    assert out.returncode != 0 and "header" in out.stderr


@pytest.mark.parametrize("command", ["serve", "detect"])
def test_help_explains_every_flag(command):
    out = run(command, "--help")
    assert out.returncode == 0
    flags = {"serve": ["--host", "--port", "--threshold", "--warmup", "--mode", "--alpha", "--max-series",
                       "--session-ttl", "--max-message-mb", "--grace-seconds", "--log-level"],
             "detect": ["--addr", "--threshold", "--timeout", "--json"]}[command]
    for flag in flags:
        assert flag in out.stdout


def test_console_script_is_installed():
    exe = shutil.which("streamer", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the `streamer` console script is not installed next to this Python"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("streamer ")


def test_serve_on_a_busy_port_fails_at_once_with_a_message():
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run("serve", "--host", "127.0.0.1", "--port", str(port))
    assert out.returncode == 1
    assert out.stderr == (f"streamer serve: cannot listen on 127.0.0.1:{port}: the port is in use on 127.0.0.1 "
                          f"(is another server running on it?)\n")


@pytest.mark.parametrize("host", ["127.0.0.1", "[::]"])
def test_a_second_server_on_the_same_port_fails_at_once(cli_server, host):
    """grpc sets SO_REUSEPORT unless told not to, which would let a second server share the port (and split the
    connections between two session tables): the second one must fail, before it compiles anything."""
    first = cli_server()
    out = run("serve", "--host", host, "--port", str(first.port))
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"streamer serve: cannot listen on {host}:{first.port}: the port is in use "
                                       f"on {'127.0.0.1' if host == '127.0.0.1' else '::'} (is another server "
                                       f"running on it?)"], out.stderr
    # the first server is undisturbed and answers
    from streamer.client import Client
    with Client(first.addr, timeout=10) as client:
        assert client.detect(values=[1, 1, 1, 1, 1, 1, 1, 1, 1, 9], name="x").indices == [9]
    assert first.proc.poll() is None
