"""The Go load generator (go/cmd/loadgen), when the Go module has one and `go` is installed: build, run, read.

It is the second client: where the Python client itself is the bottleneck, a faster client shows how far
each server goes.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from benchmarks.servers import ROOT

GO_MODULE = ROOT / "go"
LOADGEN = GO_MODULE / "cmd" / "loadgen"


def unavailable() -> str | None:
    """Why the Go load generator cannot run here, or None if it can."""
    if not LOADGEN.is_dir():
        return f"{LOADGEN.relative_to(ROOT)} does not exist yet"
    if shutil.which("go") is None:
        return "`go` is not on PATH"
    return None


class GoLoadGenerator:
    """Builds go/cmd/loadgen once into `workdir` and runs it once per measurement.

    Its flags and JSON fields are fixed and documented in go/README.md (a Go test keeps them in step).
    """

    def __init__(self, workdir: Path):
        self.binary = Path(workdir) / "loadgen"
        build = subprocess.run(["go", "build", "-o", str(self.binary), "./cmd/loadgen"], cwd=GO_MODULE,
                               capture_output=True, text=True, timeout=600)
        if build.returncode != 0:
            raise RuntimeError(f"go build ./cmd/loadgen failed:\n{build.stderr.strip()[-2000:]}")
        version = subprocess.run(["go", "version"], capture_output=True, text=True)
        self.version = version.stdout.strip().removeprefix("go version ")  # "go1.26.8 linux/amd64"

    def command(self, addr: str, scenario, duration: float, warmup: float = 0.0, server_pid: int = 0) -> list[str]:
        """The flags for one measurement."""
        command = [str(self.binary), "-addr", addr, "-mode", scenario.rpc, "-batch", str(scenario.batch),
                   "-series", str(scenario.series), "-streams", str(scenario.streams),
                   "-duration", f"{duration:g}s", "-warmup", f"{warmup:g}s",
                   f"-pipelined={'true' if scenario.load == 'pipelined' else 'false'}",
                   "-timestamps=true",  # the Python client's requests carry times too: same bytes
                   "-json"]
        if scenario.load == "pipelined":
            command += ["-window", str(scenario.window)]
        if server_pid:  # the server's CPU time over the measured window, for metrics per server CPU-second
            command += ["-server-pid", str(server_pid)]
        return command

    def run(self, addr: str, scenario, duration: float, warmup: float, server_pid: int = 0) -> dict:
        """One measurement (after a warm-up of the same load), read into the Python client's figures."""
        try:
            done = subprocess.run(self.command(addr, scenario, duration, warmup, server_pid), capture_output=True,
                                  text=True,
                                  timeout=warmup + duration + 120)
        except subprocess.TimeoutExpired:
            return {"error": "the Go load generator did not finish in time"}
        result = normalize(done.stdout, latency=scenario.load == "lockstep")
        if done.returncode != 0 and "error" not in result:
            result = {"error": f"go loadgen exited {done.returncode}: {done.stderr.strip()[-500:]}"}
        return result


def normalize(stdout: str, latency: bool = True) -> dict:
    """The Go tool's JSON line as {metrics_per_s, batches_per_s, latency_ms: {p50, p99}}; `raw` keeps all of it.

    Latency is kept only when `latency` (lock-step loads: pipelined answers wait in a queue, not a server).
    """
    try:
        raw = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"go loadgen printed no JSON object: {stdout.strip()[-300:]}"}
    if raw.get("error"):
        return {"error": f"go loadgen: {raw['error']}"}
    if not raw.get("metrics_per_s"):
        return {"error": f"no metrics_per_s in the Go load generator's JSON: {sorted(raw)}"}
    result = {"metrics_per_s": raw["metrics_per_s"], "batches_per_s": raw["batches_per_s"], "raw": raw}
    if latency:
        result["latency_ms"] = {"p50": raw["p50_ms"], "p99": raw["p99_ms"]}
    if raw.get("server_cpu_s") and raw.get("duration_s"):
        result["cpu"] = {"server_cores": raw["server_cpu_s"] / raw["duration_s"]}
    return result
