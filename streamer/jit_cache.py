"""Where numba caches streamer's compiled code: one directory per content of the modules that hold it.

numba keys a cached function by its own source file's stamp only (numba/numba#8396 would have widened that, and
was closed), while a compiled function here carries code it inlined and constants it froze from other files: the
fused pass holds the decoder, the kernels and the series table. After an edit or a checkout that changed only
wire/primitives.py, fused.py's cache would still load the old decoder. So the cache directory is named by a hash of
the contents of every module with compiled code (COMPILED, checked by tests/test_jit_cache.py) and by the build
(normal or the wire package's checked one): any change there starts a fresh directory, and switching back finds the
old one. It lies in the user's NUMBA_CACHE_DIR if set, else in streamer's __pycache__. Directories of other
contents are left as they are (about 6 MB each).

Imported for its effect by the modules that compile (wire/loads.py, kernels.py, rates.py; the others import one
of those first): it must set numba.config.CACHE_DIR before their first @njit(cache=True), as numba picks the
directory when it decorates. That setting is the process's: numba code of others decorated later in the same
process caches there too.
"""
from __future__ import annotations

import hashlib
import os

import numba

PACKAGE = os.path.dirname(os.path.abspath(__file__))
COMPILED = ("expiry.py", "fused.py", "kernels.py", "rates.py", "rules.py", "series.py", "series_index.py",
            "web/tap.py", "wire/decode.py", "wire/encode.py", "wire/layout.py", "wire/loads.py", "wire/options.py",
            "wire/primitives.py")


def sources_key(root: str = PACKAGE, checked: bool = False) -> str:
    """A hash of the COMPILED modules' contents under `root` (and the build)."""
    digest = hashlib.sha256(b"checked" if checked else b"normal")
    for name in COMPILED:
        with open(os.path.join(root, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:16]


# The wire package's build (wire/loads.py takes it from here): the checked one compiles other code from the same
# sources, which numba's cache key cannot tell apart. The pure-Python build (no JIT) is checked too.
CHECKED = os.environ.get("STREAMER_WIRE_CHECKED", "") not in ("", "0") or bool(numba.config.DISABLE_JIT)

BASE = numba.config.CACHE_DIR or os.path.join(PACKAGE, "__pycache__")
CACHE_DIR = os.path.join(BASE, "streamer-" + sources_key(checked=CHECKED))
numba.config.CACHE_DIR = CACHE_DIR
