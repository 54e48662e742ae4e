"""The real CLI, end to end: `streamer serve` as a subprocess and `streamer detect FILE` against it; flags out
of range and bad input files, each one line on stderr."""
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


def test_detect_reads_crlf_a_byte_order_mark_and_a_capitalised_header(cli_addr, tmp_path):
    path = tmp_path / "excel.csv"
    rows = "".join(f"{t},{n},{v!r}\r\n" for t, n, v in classic_rows())
    path.write_bytes(b"\xef\xbb\xbf" + f"Time,Name,Value\r\n{rows}".encode())
    out = run("detect", str(path), "--addr", cli_addr, "--json")
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
    assert out.returncode == 1
    assert out.stderr == f"streamer detect: {path}:1: the CSV header '1,cpu,2' lacks name and value; it must " \
                         f"name time,name,value (time may be left out)\n"


# Each bad file: exactly one line on stderr, `streamer detect: FILE[:LINE]: problem`, exit status 1, and no
# connection attempted (the address is a closed port).
BAD_FILES = [
    # (file name, bytes, line, what the message must say)
    ("short.csv", b"time,name,value\n,a,1\n,b\n", 3, "the row has 2 field(s), the header time,name,value has 3"),
    ("long.csv", b"time,name,value\n,a,1,2\n", 2, "the row has 4 field(s)"),
    ("novalue.jsonl", b'{"name": "a", "value": 1}\n{"name": "a"}\n', 2, 'the object has no "value"'),
    ("noname.jsonl", b'{"value": 1}\n', 1, 'the object has no "name"'),
    ("empty.csv", b"", None, "the file is empty"),
    ("blank.csv", b"\n  \n", None, "the file is empty"),
    ("latin1.csv", b"time,name,value\n,caf\xe9,1\n", 2, "not UTF-8 text (byte 0xe9 at column 5)"),
    ("latin1.jsonl", b'{"name": "caf\xe9", "value": 1}\n', 1, "not UTF-8 text (byte 0xe9"),
    ("word.csv", b"time,name,value\n,a,1\n,a,lots\n", 3, "value 'lots' is not a number"),
    ("novalue.csv", b"time,name,value\n,a,\n", 2, "the value is empty"),
    ("badtime.csv", b"time,name,value\nyesterday,a,1\n", 2, "time 'yesterday' is neither an RFC 3339 time"),
    ("null.jsonl", b'{"name": "a", "value": null}\n', 1, "value null is not a number"),
    ("string.jsonl", b'{"name": "a", "value": "x1"}\n', 1, "value 'x1' is not a number"),
    ("broken.jsonl", b'{"name": "a", "value": 1\n', 1, "not valid JSON"),
    ("list.jsonl", b'{"name": "a", "value": 1}\n[1, 2]\n', 2, "not a JSON object"),
    ("objtime.jsonl", b'{"name": "a", "value": 1, "time": {"s": 1}}\n', 1, "time {'s': 1} is neither"),
]


@pytest.mark.parametrize("name,content,line,problem", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_detect_bad_file_is_one_line_naming_file_line_and_problem(tmp_path, name, content, line, problem):
    path = tmp_path / name
    path.write_bytes(content)
    out = run("detect", str(path), "--addr", "127.0.0.1:1")
    assert out.returncode == 1, out
    where = f"{path}:{line}" if line else f"{path}"
    assert out.stderr.startswith(f"streamer detect: {where}: ") and out.stderr.count("\n") == 1, out.stderr
    assert problem in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_detect_unreadable_path_is_one_line(tmp_path, kind):
    path = tmp_path / "nothere.csv" if kind == "missing" else tmp_path
    out = run("detect", str(path), "--addr", "127.0.0.1:1")
    assert out.returncode == 1
    assert out.stderr == f"streamer detect: {path}: {'no such file' if kind == 'missing' else 'is a directory'}\n"


def test_detect_bad_stdin_names_stdin(tmp_path):
    out = run("detect", "-", "--addr", "127.0.0.1:1", input="time,name,value\n,a\n")
    assert out.returncode == 1
    assert out.stderr == "streamer detect: <stdin>:2: the row has 2 field(s), the header time,name,value has 3\n"


# Flags out of range: exit status 2 and one line naming the flag and its range.
BAD_FLAGS = [
    ("serve", ["--port", "70000"], "argument --port: must be an integer from 0 to 65535, got 70000"),
    ("serve", ["--port", "-1"], "argument --port: must be an integer from 0 to 65535, got -1"),
    ("serve", ["--port", "http"], "argument --port: must be an integer from 0 to 65535, got 'http'"),
    ("serve", ["--host", ""], "argument --host: must be a non-empty string"),
    ("serve", ["--threshold", "0"], "argument --threshold: must be a finite number > 0, got 0"),
    ("serve", ["--threshold", "inf"], "argument --threshold: must be a finite number > 0, got inf"),
    ("serve", ["--warmup", "-5"], "argument --warmup: must be an integer from 0 to 4294967295, got -5"),
    ("serve", ["--warmup", "4294967296"], "argument --warmup: must be an integer from 0 to 4294967295"),
    ("serve", ["--mode", "median"], "argument --mode: invalid choice: 'median'"),
    ("serve", ["--alpha", "0"], "argument --alpha: must be a number in (0, 1], got 0"),
    ("serve", ["--alpha", "1.5"], "argument --alpha: must be a number in (0, 1], got 1.5"),
    ("serve", ["--max-series", "0"], "argument --max-series: must be an integer from 1 to 2147483647, got 0"),
    ("serve", ["--session-ttl", "-1"], "argument --session-ttl: must be a finite number > 0, got -1"),
    ("serve", ["--session-ttl", "nan"], "argument --session-ttl: must be a finite number > 0, got nan"),
    ("serve", ["--max-sessions", "0"], "argument --max-sessions: must be an integer >= 1, got 0"),
    ("serve", ["--max-message-mb", "5000"], "argument --max-message-mb: must be an integer from 1 to 2047, got 5000"),
    ("serve", ["--max-message-mb", "0"], "argument --max-message-mb: must be an integer from 1 to 2047, got 0"),
    ("serve", ["--grace-seconds", "-1"], "argument --grace-seconds: must be a finite number >= 0, got -1"),
    ("serve", ["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
    ("detect", ["f.csv", "--addr", ""], "argument --addr: must be a non-empty string"),
    ("detect", ["f.csv", "--threshold", "-2"], "argument --threshold: must be a finite number > 0, got -2"),
    ("detect", ["f.csv", "--timeout", "0"], "argument --timeout: must be a finite number > 0, got 0"),
    ("detect", ["f.csv", "--max-message-mb", "2048"], "argument --max-message-mb: must be an integer from 1 to 2047"),
    ("detect", ["f.csv", "--progress", "maybe"], "argument --progress: invalid choice: 'maybe'"),
    ("detect", ["f.csv", "--stream", "--batch-size", "0"], "argument --batch-size: must be an integer from 1 to"),
    ("detect", ["f.csv", "--stream", "--alpha", "2"], "argument --alpha: must be a number in (0, 1], got 2"),
    ("detect", ["f.csv", "--warmup", "5"], "argument --warmup: only with --stream"),
    ("detect", ["f.csv", "--batch-size", "5"], "argument --batch-size: only with --stream"),
]


@pytest.mark.parametrize("command,args,message", BAD_FLAGS, ids=[" ".join([c, *a]) for c, a, _ in BAD_FLAGS])
def test_flag_out_of_range_is_one_line_and_status_2(command, args, message):
    out = run(command, *args)
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"streamer {command}: error: {message}"), out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize("command", ["serve", "detect"])
def test_help_explains_every_flag_and_its_range(command):
    out = run(command, "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    flags = {"serve": ["--host", "--port", "--threshold", "--warmup", "--mode", "--alpha", "--max-series",
                       "--session-ttl", "--max-sessions", "--max-message-mb", "--grace-seconds", "--log-level"],
             "detect": ["--addr", "--threshold", "--timeout", "--max-message-mb", "--json", "--progress", "--stream",
                        "--batch-size", "--warmup", "--mode", "--alpha", "--exclude-outliers"]}[command]
    for flag in flags:
        assert flag in text
    ranges = {"serve": ["0-65535", "a finite number > 0", "0-4294967295", "0 < alpha <= 1", "1-2147483647",
                        "(finite, > 0)", ">= 1", "1-2047", "(finite, >= 0)", "{cumulative,exponential}",
                        "{debug,info,warning,error}"],
              "detect": ["a finite number > 0", "(finite, > 0)", "1-2047", "{auto,on,off}", "1-1000000",
                         "0-4294967295", "0 < alpha <= 1"]}[command]
    for rule in ranges:
        assert rule in text, rule


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
