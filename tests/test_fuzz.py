"""The decoder's fuzz target in a short fixed-seed run, and every saved fuzz input against the compiled decoder.

`make fuzz` is the long run (tests/fuzz/fuzz_decode.py); its crash-* and timeout-* inputs are written to
tests/fuzz/regressions/, which this replays on every `make test`, so a finding stays a regression case.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from fuzz.replay import disagreements, inputs

FUZZ = Path(__file__).parent / "fuzz"


def test_a_short_fixed_seed_fuzz_run_finds_nothing(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    out = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_decode.py"), "-seed=1", "-runs=30000", "-timeout=10",
         f"-dict={FUZZ / 'outliers.dict'}", f"-artifact_prefix={tmp_path}/", str(corpus), str(FUZZ / "corpus")],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    done = re.search(r"#(\d+)\s+DONE\s+cov: (\d+)", out.stderr)
    assert done and int(done.group(1)) >= 30000, out.stderr[-2000:]
    assert int(done.group(2)) > 100, "the decoder's branches are not instrumented"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))]


def test_the_corpus_and_every_regression_read_as_protobuf_reads_them():
    dirs = [FUZZ / "corpus", FUZZ / "regressions"]
    assert len(inputs(dirs)) >= 17
    assert disagreements(dirs) == []
