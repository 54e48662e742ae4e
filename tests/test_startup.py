"""Start-up of the real `streamer serve`: it says when it compiles (and that numba caches the result), and a
signal during a cold compile stops it at once, without ever saying ready."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from conftest import READY

COMPILING = "compiling the kernels, or loading them from numba's cache in "


def test_start_logs_the_compile_then_ready(cli_server):
    server = cli_server()
    log = "".join(server.log)
    lines = [line for line in log.splitlines() if "streamer:" in line]
    assert COMPILING in lines[0] and "later starts" in lines[0]
    # warm or cold, the line after it says which, before ready
    assert "loaded the kernels from numba's cache in" in lines[1] or (
        "kernel signature(s) in" in lines[1] and "numba cached them for the next start" in lines[1]), lines
    assert READY.search(lines[2])


def test_sigterm_during_a_cold_compile_stops_without_ready(tmp_path):
    """An empty NUMBA_CACHE_DIR forces a cold compile (tens of seconds); SIGTERM as soon as it has begun must
    end the process with status 0 before the compile would have finished: no "ready", no compile result."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "serve", "--host", "127.0.0.1", "--port", "0",
                             "--metrics-port", "0", "--otlp-port", "0", "--http-port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env)
    log: list[str] = []
    compiling = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            log.append(line)
            if COMPILING in line:
                compiling.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert compiling.wait(120), "".join(log)
        assert str(tmp_path / "numba-cache") in "".join(log)  # it names where the cache goes
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(log)
    assert "stopped by a signal during the compile, before serving" in text
    assert "ready on" not in text and "Traceback" not in text
    assert "kernel signature(s) in" not in text and "loaded the kernels" not in text  # it did not wait for it
