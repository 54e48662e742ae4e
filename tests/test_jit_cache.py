"""numba's cache directory is keyed by every compiled module's contents (streamer/jit_cache.py), so a change in a
file whose code another inlines can never load stale machine code."""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

from streamer import jit_cache

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streamer"


def test_every_module_with_compiled_code_is_in_the_key():
    compiled = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                if p.name != "jit_cache.py" and re.search(r"@(numba\.)?njit|@intrinsic|numba\.njit\(", p.read_text())}
    assert compiled == set(jit_cache.COMPILED)


def test_a_change_in_any_compiled_module_or_the_build_changes_the_directory(tmp_path):
    copy = tmp_path / "streamer"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    key = jit_cache.sources_key(str(copy))
    assert key == jit_cache.sources_key(str(PACKAGE))
    assert jit_cache.sources_key(str(copy), checked=True) != key
    for name in ("wire/primitives.py", "kernels.py"):  # inlined into the fused pass from other files
        path = copy / name
        text = path.read_text()
        path.write_text(text + "\n# changed\n")
        assert jit_cache.sources_key(str(copy)) != key, name
        path.write_text(text)
        assert jit_cache.sources_key(str(copy)) == key


def test_every_compiled_function_caches_in_the_keyed_directory():
    """Each module imported alone, in a fresh process: its dispatchers' cache lies in jit_cache's directory (a
    module that decorated before importing jit_cache would cache beside its source, with the stale-code risk)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "STREAMER_WIRE_CHECKED")}
    want = os.path.join(str(PACKAGE), "__pycache__", "streamer-" + jit_cache.sources_key())
    cached = []
    for name in jit_cache.COMPILED:
        module = "streamer." + name[:-3].replace("/", ".")
        code = f"""
import importlib, json
from numba.core.registry import CPUDispatcher
module = importlib.import_module({module!r})
print(json.dumps(sorted({{v._cache._cache_path for v in vars(module).values() if isinstance(v, CPUDispatcher)
                          and v.__module__ == {module!r} and getattr(v._cache, "_cache_path", None)}})))
"""
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        paths = json.loads(done.stdout.strip().splitlines()[-1])
        assert all(path.startswith(want + os.sep) for path in paths), (module, paths)
        cached += [module] * bool(paths)
    assert {"streamer.fused", "streamer.kernels", "streamer.rates", "streamer.wire.decode"} <= set(cached)
