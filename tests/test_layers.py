"""The modules' one direction of travel (STYLE.md): the wire package never needs the series table or anything
above it, the series table needs only the wire package's primitives, and no module passes ~400 lines."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module, forbidden", [
    ("streamer.wire", ("streamer.series", "streamer.fused", "streamer.detector", "streamer.kernels")),
    ("streamer.series", ("streamer.fused", "streamer.detector", "streamer.kernels", "streamer.state")),
])
def test_imports_go_one_way(module, forbidden):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('streamer')))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "NUMBA_DISABLE_JIT": "1", "PATH": ""})
    assert done.returncode == 0, done.stderr
    loaded = set(eval(done.stdout))
    assert not loaded & set(forbidden), f"importing {module} loads {sorted(loaded & set(forbidden))}"


def test_no_wire_module_over_400_lines():
    for path in sorted((ROOT / "streamer" / "wire").glob("*.py")) + [ROOT / "streamer" / "fused.py"]:
        assert len(path.read_text().splitlines()) <= 400, path
