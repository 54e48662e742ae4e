"""The README's Python example runs as written (against a real server) and prints what it says."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no Python example"
    return blocks[0]


def test_python_example_runs_and_prints_its_comments(server):
    code = python_example().replace("localhost:9999", server.addr)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    promised = [c.strip() for c in re.findall(r"print\(.*?\)\s*#(.*)", code)]
    assert promised and out.stdout.splitlines() == promised


def test_session_stream_example_runs(server):
    """The second Python example: session_stream prints each batch's number and indices once, in order."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = blocks[1].replace("localhost:9999", server.addr)
    assert "session_stream" in code
    out = subprocess.run([sys.executable, "-c", "from streamer.client import Client\n" + code], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == [str(i) for i in range(100)]
    assert all(line.split(" ", 1)[1] == "[]" for line in lines)  # three values repeating: nothing stands out


def test_batcher_example_runs(server):
    """The third Python example: the Batcher hands the last add its own outlier, at index 0 of that add."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = blocks[2].replace("localhost:9999", server.addr)
    assert "batcher" in code
    out = subprocess.run([sys.executable, "-c", "from streamer.client import Client\n" + code], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("[Outlier(index=0, name='cpu', value=400.0, "), out.stdout
