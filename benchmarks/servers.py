"""The servers under test, each in its own process on a free loopback port: streamer, its peers, baseline, ceiling."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"ready on (\S+):(\d+)")

# name -> command (after the Python interpreter, or the Go peer's binary for GO_PEERS); every one
# listens on 127.0.0.1 with a port the OS picks and logs "... ready on HOST:PORT" to stderr once it answers.
COMMANDS = {
    "ceiling": ["-m", "benchmarks.ceiling_server", "--host", "127.0.0.1", "--port", "0"],
    "baseline": ["-m", "benchmarks.baseline_server", "--host", "127.0.0.1", "--port", "0"],
    "river": ["-m", "benchmarks.river_server", "--host", "127.0.0.1", "--port", "0"],
    "grpc-go": ["-host", "127.0.0.1", "-port", "0"],
    "tuned-go": ["-host", "127.0.0.1", "-port", "0"],
    "streamer": ["-m", "streamer", "serve", "--host", "127.0.0.1", "--port", "0", "--store", "memory://",
                 "--metrics-port", "0", "--otlp-port", "0", "--http-port", "0", "--log-level", "info"],
}
DESCRIPTIONS = {
    "ceiling": "grpc.aio, raw bytes in, b\"\" out, no parsing: what the transport and client allow",
    "baseline": "sync grpc thread pool, generated servicer, values read per metric attribute, 2-sigma rule",
    "river": "grpc.aio, generated servicer, one river.stats.Var per series: streamer's rules in plain Python",
    "grpc-go": "grpc-go, generated messages, a Go map of Welford accumulators: streamer's rules in plain Go",
    "tuned-go": "grpc-go tuned for throughput: raw-bytes codec, one-pass protowire decoder, open-addressing table, "
                "answers encoded by hand into pooled buffers",
    "streamer": "streamer serve (grpc.aio, numba wire decoder and kernels)",
}


GO_PEERS = {"grpc-go": "peerserver", "tuned-go": "tunedpeer"}  # server name -> its command in go/cmd
GO_MODULE = ROOT / "go"
_go_peer_binaries: dict[str, str] = {}  # built once per process


def go_peer_binary(name: str = "grpc-go") -> str:
    """go/cmd/<peer> built into a temporary directory (once); RuntimeError if it cannot be."""
    if name not in _go_peer_binaries:
        if shutil.which("go") is None:
            raise RuntimeError(f"`go` is not on PATH: no {name} peer")
        command = GO_PEERS[name]
        binary = Path(tempfile.mkdtemp(prefix="streamer-peer-")) / command
        build = subprocess.run(["go", "build", "-o", str(binary), f"./cmd/{command}"], cwd=GO_MODULE,
                               capture_output=True, text=True, timeout=600)
        if build.returncode != 0:
            raise RuntimeError(f"go build ./cmd/{command} failed:\n{build.stderr.strip()[-2000:]}")
        _go_peer_binaries[name] = str(binary)
    return _go_peer_binaries[name]


class ServerProcess:
    """One server subprocess; its stderr goes to a log file that is searched for the ready line.

    `args` are appended to the command and `env` added to the environment (the soak's experiments); a given
    `log_path` is kept after stop(), the default temporary log is deleted.
    """

    def __init__(self, name: str, timeout: float = 180.0, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, log_path: Path | None = None):
        self.name = name
        program = [go_peer_binary(name)] if name in GO_PEERS else [sys.executable]
        self.command = [*program, *COMMANDS[name], *args]  # a flag in `args` overrides COMMANDS' own
        self._keep_log = log_path is not None
        self.log_path = Path(log_path or tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        with open(self.log_path, "w") as log:
            # Its own session: a Ctrl-C at the terminal reaches the harness, which stops the servers itself.
            self.proc = subprocess.Popen(self.command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = READY.search(self.log_path.read_text())
            if match:
                self.addr = f"127.0.0.1:{match.group(2)}"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"{name} server did not get ready: {' '.join(self.command)}\n{tail}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful stop), then SIGKILL if it has not exited after `timeout` seconds; the exit status
        (negative: the signal that ended it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._keep_log:
            self.log_path.unlink(missing_ok=True)
        return self.proc.returncode
