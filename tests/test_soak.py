"""The soak harness: a short fixed-seed slice against a real server, checked for every call's status code and
for well-formed output (no timing, no speed, no tight memory bound); and its summary arithmetic alone."""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks/ is not an installed package; `python -m benchmarks.soak` runs from ROOT

from benchmarks import soak, soak_load, soak_report  # noqa: E402

SEED = 7
BAD_CASES = {case: expected for case, expected, _ in soak_load._bad_cases(None)}


@pytest.fixture(scope="module")
def slice_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("soak")
    command = [sys.executable, "-m", "benchmarks.soak", "--minutes", "0.25", "--idle-minutes", "0.05",
               "--settle-seconds", "1", "--seed", str(SEED), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return out, done, json.loads((out / "soak.json").read_text())


@pytest.mark.timeout(600)
def test_every_call_got_the_status_it_should(slice_run):
    _, _, doc = slice_run
    cases = doc["calls"]["cases"]
    assert doc["calls"]["unexpected"] == 0
    for case, expected in {**BAD_CASES, "session-stream": "OK", "short-stream": "OK"}.items():
        assert case in cases, f"{case} never ran"
        assert cases[case]["expected"] == expected
        assert cases[case]["codes"] == {expected: cases[case]["calls"]}, (case, cases[case])
    detects = {c for c in cases if c.startswith("detect-") and c[7:].isdigit()}
    assert len(detects) >= 3, detects
    for case in detects:
        assert cases[case]["codes"] == {"OK": cases[case]["calls"]}, (case, cases[case])
    assert doc["calls"]["total"] == sum(c["calls"] for c in cases.values())


def test_the_server_ran_through_and_stopped_cleanly(slice_run):
    out, _, doc = slice_run
    server = doc["server"]
    assert server["exit_status"] == 0 and server["alive_at_end"] and server["tracebacks"] == 0
    assert "Traceback" not in (out / "server.log").read_text()
    assert "--port 0" in server["command"] and server["pid"] > 0


def test_samples_cover_every_phase(slice_run):
    _, _, doc = slice_run
    phases = doc["phases"]
    assert phases["start"] < phases["load"] < phases["idle"] < phases["end"]
    samples = doc["samples"]
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    assert {s["phase"] for s in samples} == {"start", "load", "idle", "end"}
    for s in samples:
        assert s["rss_mib"] > 0 and s["anon_mib"] > 0 and s["threads"] >= 1 and s["cpu_s"] >= 0, s
    assert doc["maps"] and all(m["file"] > 0 for m in doc["maps"])
    assert doc["settings"]["seed"] == SEED


def test_summary_and_plot(slice_run):
    out, done, doc = slice_run
    s = doc["summary"]
    for key in ("rss_start_mib", "rss_load_end_mib", "rss_idle_end_mib", "rss_peak_mib",
                "slope_second_half_mib_per_min"):
        assert isinstance(s[key], float) and math.isfinite(s[key]), key
    assert s["rss_after_1min_mib"] is None  # the slice is shorter than a minute
    assert s["rss_peak_mib"] >= max(s["rss_start_mib"], s["rss_load_end_mib"], s["rss_idle_end_mib"])
    # Against unbounded growth only: a 15 s slice that grew by a GiB has a runaway, not a high-water mark.
    assert s["rss_peak_mib"] < s["rss_start_mib"] + 1024
    assert "RSS MiB: start" in done.stdout and "slope over the second half" in done.stdout
    assert (out / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _samples(rss_by_minute: list[float], phase_of) -> list[dict]:
    return [{"t": 60.0 * i, "phase": phase_of(i), "rss_mib": r, "anon_mib": r / 2, "threads": 9, "cpu_s": i}
            for i, r in enumerate(rss_by_minute)]


def test_summary_tells_growth_from_a_plateau():
    phase = lambda i: "start" if i == 0 else "load" if i <= 10 else "idle"  # noqa: E731
    phases = {"start": 0.0, "load": 0.0, "idle": 600.0}
    growing = soak_report.summarize(_samples([160] + [200 + 3 * i for i in range(1, 11)] + [230] * 3, phase),
                                    phases, [])
    assert growing["slope_second_half_mib_per_min"] == pytest.approx(3.0)
    assert growing["rss_start_mib"] == 160 and growing["rss_after_1min_mib"] == 203
    flat = soak_report.summarize(_samples([160] + [290] * 10 + [290] * 3, phase), phases, [])
    assert flat["slope_second_half_mib_per_min"] == pytest.approx(0.0, abs=1e-9)
    assert flat["rss_idle_end_mib"] == 290 and flat["slope_idle_mib_per_min"] == pytest.approx(0.0, abs=1e-9)


def test_smaps_of_this_process():
    kinds = soak.read_smaps(os.getpid())
    assert set(kinds) == set(soak.MAP_KINDS)
    assert kinds["file"] > 0 and sum(kinds.values()) > 0
    status = soak.read_status(os.getpid())
    assert status["rss_mib"] > 0 and status["threads"] >= 1
