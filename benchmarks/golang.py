"""The Go load generator (go/cmd/loadgen), when the Go module has one and `go` is installed: build, run, read.

It is the second client: where the Python client itself is the bottleneck, a faster client shows how far
each server goes.
"""
from __future__ import annotations

import json
import re
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
    """Builds go/cmd/loadgen once into `workdir` and runs it once per measurement."""

    def __init__(self, workdir: Path):
        self.binary = Path(workdir) / "loadgen"
        build = subprocess.run(["go", "build", "-o", str(self.binary), "./cmd/loadgen"], cwd=GO_MODULE,
                               capture_output=True, text=True, timeout=600)
        if build.returncode != 0:
            raise RuntimeError(f"go build ./cmd/loadgen failed:\n{build.stderr.strip()[-2000:]}")
        version = subprocess.run(["go", "version"], capture_output=True, text=True)
        self.version = version.stdout.strip().removeprefix("go version ")  # "go1.26.8 linux/amd64"
        usage = subprocess.run([str(self.binary), "-h"], capture_output=True, text=True, timeout=30)
        text = usage.stderr + usage.stdout
        self.flags = set(re.findall(r"^\s+-(\w+)", text, re.M))
        # `-duration duration` (flag.Duration: "2.5s") or `-duration float` (seconds): read it from -h.
        kind = re.search(r"-duration\s+(\w+)", text)
        self._seconds_flag = bool(kind and kind.group(1) in ("float", "float64", "int", "uint"))

    def _seconds(self, value: float) -> str:
        return f"{value:g}" if self._seconds_flag else f"{value:g}s"

    def command(self, addr: str, scenario, duration: float, warmup: float = 0.0) -> list[str]:
        """The flags for one measurement; optional flags only when this build of the tool has them."""
        command = [str(self.binary), "-addr", addr, "-mode", scenario.rpc, "-batch", str(scenario.batch),
                   "-series", str(scenario.series), "-streams", str(scenario.streams),
                   "-duration", self._seconds(duration),
                   f"-pipelined={'true' if scenario.load == 'pipelined' else 'false'}", "-json"]
        if "warmup" in self.flags:
            command += ["-warmup", self._seconds(warmup)]
        if "window" in self.flags and scenario.load == "pipelined":
            command += ["-window", str(scenario.window)]
        if "timestamps" in self.flags:
            command.append("-timestamps=true")  # the Python client's requests carry times too: same bytes
        return command

    def run(self, addr: str, scenario, duration: float, warmup: float) -> dict:
        """One measurement (after a warm-up of the same load), read into the Python client's figures."""
        try:
            if warmup > 0 and "warmup" not in self.flags:
                subprocess.run(self.command(addr, scenario, warmup), capture_output=True, timeout=warmup + 120)
            done = subprocess.run(self.command(addr, scenario, duration, warmup), capture_output=True, text=True,
                                  timeout=warmup + duration + 120)
        except subprocess.TimeoutExpired:
            return {"error": "the Go load generator did not finish in time"}
        result = normalize(done.stdout, scenario.batch, latency=scenario.load == "lockstep")
        if done.returncode != 0 and "error" not in result:
            result = {"error": f"go loadgen exited {done.returncode}: {done.stderr.strip()[-500:]}"}
        return result


def _last_json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _flatten(obj, prefix: str = "") -> dict[str, float]:
    out = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}.".lower()))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = float(obj)
    return out


_RATE = r"(_|\.)?(per_?s(ec(ond)?)?|/s|_s|ps|rate|throughput)$"
_UNITS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "micros": 1e-3, "ms": 1.0, "millis": 1.0, "s": 1e3, "sec": 1e3}


def _latency_ms(flat: dict[str, float], quantile: str) -> float | None:
    for key, value in flat.items():
        if re.search(rf"(^|[._]){quantile}($|[._])", key):
            unit = re.findall(r"(?:^|[._])(ns|us|µs|micros|ms|millis|s|sec)(?=$|[._])", key)
            return value * _UNITS[unit[-1] if unit else "ms"]
    return None


def normalize(stdout: str, batch: int, latency: bool = True) -> dict:
    """The Go tool's JSON as {metrics_per_s, batches_per_s, latency_ms: {p50, p99}}; `raw` keeps all of it.

    Latency is kept only when `latency` (lock-step loads: pipelined answers wait in a queue, not a server).
    """
    raw = _last_json(stdout)
    if not isinstance(raw, dict):
        return {"error": f"go loadgen printed no JSON object: {stdout.strip()[-300:]}"}
    if raw.get("error"):
        return {"error": f"go loadgen: {raw['error']}"}
    flat = _flatten(raw)
    metrics = next((v for k, v in flat.items() if re.search(r"metrics?" + _RATE, k)), None)
    batches = next((v for k, v in flat.items()
                    if re.search(r"(batch(es)?|requests?|messages?|responses?|calls?|rpcs?)" + _RATE, k)), None)
    if metrics is None and batches is not None:
        metrics = batches * batch
    if batches is None and metrics is not None:
        batches = metrics / batch
    if not metrics:
        return {"error": f"no metrics/s figure in the Go load generator's JSON: {sorted(flat)}"}
    result = {"metrics_per_s": metrics, "batches_per_s": batches, "raw": raw}
    p50, p99 = _latency_ms(flat, "p50"), _latency_ms(flat, "p99")
    if latency and p50 and p99:
        result["latency_ms"] = {"p50": p50, "p99": p99}
    return result
