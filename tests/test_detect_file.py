"""`streamer detect` on a large file, through the real CLI against a real server: the answer equals one plain
Detect of every row (or, with --stream, a DetectStream of the same batches); the size limit is named; the
progress line appears only when asked for or on a terminal after a while."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import CliServer
from streamer.client import Client

ROWS = 300_000
SEED = 7
STREAMER = [sys.executable, "-m", "streamer"]


def run(*args, **kw):
    return subprocess.run([*STREAMER, *args], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def addr():
    server = CliServer()
    yield server.addr
    assert server.terminate() == 0
    server.close()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """ROWS rows over 5 series (normal noise, some spikes, a NaN), every row with a time: CSV, and its rows."""
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    names = [f"host-{i}.cpu" for i in range(5)]
    series = rng.integers(0, 5, ROWS)
    values = rng.normal(50, 10, ROWS) + series * 100
    values[rng.integers(0, ROWS, 200)] += 500
    values[12345] = np.nan
    seconds = 1764580000 + np.arange(ROWS) // 10
    nanos = (np.arange(ROWS) % 10) * 100_000_000
    path = tmp_path_factory.mktemp("big") / "metrics.csv"
    columns = zip(series.tolist(), values.tolist(), seconds.tolist(), nanos.tolist())
    rows = [(names[s], v, t, n) for s, v, t, n in columns]
    with open(path, "w") as f:
        f.write("time,name,value\n")
        f.writelines(f"{t}.{n // 100_000_000},{name},{v!r}\n" for name, v, t, n in rows)
    return path, rows


def _metrics(rows):
    from streamer.pb import outliers_pb2 as pb
    out = []
    for name, value, seconds, nanos in rows:
        m = pb.Metric(name=name, value=value)
        m.time.seconds, m.time.nanos = seconds, nanos
        out.append(m)
    return out


def test_detect_equals_one_plain_detect_of_every_row(addr, big_file):
    path, rows = big_file
    out = run("detect", str(path), "--addr", addr, "--json")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # no progress line: stderr is not a terminal
    got = json.loads(out.stdout)
    with Client(addr, timeout=120) as client:
        expected = client.detect(_metrics(rows))
    assert len(expected.indices) > 200
    assert got["indices"] == expected.indices
    assert got["outliers"] == [o._asdict() for o in expected.outliers]


def test_stream_equals_detectstream_of_the_same_batches(addr, big_file):
    path, rows = big_file
    batch = 25_000
    out = run("detect", str(path), "--addr", addr, "--json", "--stream", "--batch-size", str(batch),
              "--warmup", "20", "--mode", "exponential", "--alpha", "0.1")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    from streamer.client import make_options
    metrics = _metrics(rows)
    expected = []
    with Client(addr, timeout=120) as client:
        batches = [metrics[i:i + batch] for i in range(0, len(metrics), batch)]
        for r in client.stream(batches, options=make_options(warmup=20, mode=2, alpha=0.1)):
            expected.extend(o._replace(index=o.index + r.batch * batch)._asdict() for o in r.outliers)
    assert got["outliers"] == expected and got["indices"] == [o["index"] for o in expected]
    # a different rule from Detect's: each value against its series before it
    table = run("detect", str(path), "--addr", addr, "--stream", "--batch-size", str(batch))
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].endswith(
        f"in {ROWS} metric(s) (DetectStream, 12 batch(es) of up to 25,000: each value judged against the values "
        f"of its series before it)")


def test_a_file_over_the_request_limit_is_refused_naming_the_limit(addr, big_file):
    path, _ = big_file  # about 12 MB encoded
    out = run("detect", str(path), "--addr", "127.0.0.1:1", "--max-message-mb", "2")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"streamer detect: {path}:")
    assert "the file does not fit in one Detect request: it reached the 2 MiB limit (--max-message-mb)" in out.stderr
    assert "--stream" in out.stderr
    batch = run("detect", str(path), "--addr", addr, "--max-message-mb", "1", "--stream",
                "--batch-size", "100000")
    assert batch.returncode == 1
    assert "one batch reached the 1 MiB limit of a request (--max-message-mb)" in batch.stderr
    assert "smaller --batch-size" in batch.stderr


def test_server_limit_is_reported_in_one_line(cli_server, big_file):
    path, _ = big_file
    server = cli_server("--max-message-mb", "1")
    out = run("detect", str(path), "--addr", server.addr)
    assert out.returncode == 1
    assert out.stderr.startswith(f"streamer detect: {server.addr}: RESOURCE_EXHAUSTED") and \
        out.stderr.count("\n") == 1, out.stderr


def test_progress_on_writes_a_line_to_stderr(addr, tmp_path):
    path = tmp_path / "small.csv"
    path.write_text("time,name,value\n" + "".join(f",a,{i % 7}\n" for i in range(10_000)))
    out = run("detect", str(path), "--addr", addr, "--progress", "on")
    assert out.returncode == 0, out.stderr
    assert "streamer detect: [" in out.stderr and "rows read" in out.stderr and out.stderr.endswith("\n")
    assert "waiting for the answer" in out.stderr
    assert run("detect", str(path), "--addr", addr, "--progress", "off").stderr == ""


def test_progress_on_a_terminal_once_the_run_is_slow(addr):
    """stderr on a pseudo-terminal, stdin fed in two parts 2.5 s apart once the CLI reads (past the 1.5 s
    delay): the line is drawn in place and erased at the end, and stdout has the answer."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*STREAMER, "detect", "-", "--addr", addr], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = bytearray()

    def read_tty():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other end is closed
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read_tty, daemon=True)
    reader.start()
    rows = [f",a,{i % 7}\n".encode() for i in range(60_000)]
    # The first part is several pipe buffers long, so its write returns once the CLI is reading (its start-up,
    # a second or more on a loaded machine, does not count against the pause), then the pause makes it slow.
    proc.stdin.write(b"time,name,value\n" + b"".join(rows[:40_000]))
    proc.stdin.flush()
    time.sleep(2.5)
    proc.stdin.write(b"".join(rows[40_000:]))
    proc.stdin.close()
    stdout = proc.stdout.read().decode()
    assert proc.wait(60) == 0
    reader.join(10)
    os.close(master)
    text = seen.decode()
    assert "streamer detect: " in text and "rows read" in text, text
    assert text.endswith("\r"), text  # erased: the terminal is left clean
    assert stdout.startswith("0 outlier(s) in 60000 metric(s)")
