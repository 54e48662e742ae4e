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
