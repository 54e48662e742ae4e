"""`python -m benchmarks.soak --minutes 30 --out DIR`: the server's memory under a long mixed load, then idle.

Starts `streamer serve` in its own process, lets it settle, drives benchmarks/soak_load.py's mixed load (named
sessions that reconnect, short streams, unary Detects of many sizes, bad input) for --minutes, then sends
nothing for the idle tail. Every second it samples the server's RSS and thread count from /proc/PID/status,
every 10 s it splits the RSS by kind of mapping from /proc/PID/smaps. It writes soak.json and soak.png to
--out, prints a summary, and exits 1 if any call got another status code than it should or the server failed.

A leak shows as RSS growing through the second half of the load (the slope); a high-water mark as RSS flat
after the warm-up and not falling when idle. --gdb-probe asks the allocators themselves, with gdb: glibc's
malloc_stats() and CPython's pymalloc statistics (what is held and what is in use) before the load and in the
idle tail, and malloc_trim(0) in the idle tail (what glibc gives back when asked); --gdb-gc adds a full
garbage collection before the trim (what was garbage in reference cycles).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import report, soak_load, soak_report
from benchmarks.servers import ROOT, ServerProcess

MIB = 1024 * 1024
ARENA_HEAP = 64 * MIB  # glibc's HEAP_MAX_SIZE on 64-bit: a thread arena's heaps are mmapped at this alignment
MAPS_EVERY = 10        # seconds between two /proc/PID/smaps breakdowns


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def read_status(pid: int) -> dict:
    """VmRSS, RssAnon, RssFile, VmHWM (MiB) and Threads of a process, and its CPU seconds so far."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
            elif key == "Threads":
                out[key] = int(value)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return {"rss_mib": out["VmRSS"], "anon_mib": out["RssAnon"], "file_mib": out["RssFile"],
            "hwm_mib": out["VmHWM"], "threads": out["Threads"], "cpu_s": out["cpu_s"]}


MAP_KINDS = ("main_heap", "thread_arenas", "other_anon", "file", "stack")


def read_smaps(pid: int) -> dict:
    """The RSS (MiB) of each kind of mapping: the main arena's brk heap ([heap]); thread arenas' heaps
    (anonymous, read-write, starting at a 64 MiB boundary, as glibc maps them); other anonymous memory
    (pymalloc arenas, blocks malloc mmapped on their own, thread stacks, JIT code); files (libraries)."""
    kb = dict.fromkeys(MAP_KINDS, 0)
    kind = None
    header = re.compile(r"^([0-9a-f]+)-[0-9a-f]+ (\S+) \S+ \S+ \S+\s*(.*)$")
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = header.match(line)
            if m:
                start, perms, path = int(m.group(1), 16), m.group(2), m.group(3).strip()
                if path == "[heap]":
                    kind = "main_heap"
                elif path == "[stack]":
                    kind = "stack"
                elif path.startswith("/"):
                    kind = "file"
                elif not path and perms.startswith("rw") and start % ARENA_HEAP == 0:
                    kind = "thread_arenas"
                else:
                    kind = "other_anon"
            elif line.startswith("Rss:") and kind:
                kb[kind] += int(line.split()[1])
    return {k: v / 1024 for k, v in kb.items()}


class Sampler(threading.Thread):
    """Samples the server every `interval` seconds, tagging each sample with the phase it was taken in."""

    def __init__(self, pid: int, tally: soak_load.Tally, interval: float = 1.0, progress_every: float = 60.0):
        super().__init__(daemon=True)
        self.pid, self.tally, self.interval, self.progress_every = pid, tally, interval, progress_every
        self.t0 = time.monotonic()
        self.phase = "start"
        self.phases = {"start": 0.0}
        self.samples: list[dict] = []
        self.maps: list[dict] = []
        self.error: str | None = None
        self._done = threading.Event()
        self._next_maps = 0.0
        self._next_progress = progress_every

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.phases[phase] = self.now()
        self.sample()

    def sample(self) -> dict | None:
        t = self.now()
        try:
            s = {"t": round(t, 3), "phase": self.phase, **read_status(self.pid), "calls": self.tally.total}
            if t >= self._next_maps:
                self.maps.append({"t": round(t, 3), "phase": self.phase, **read_smaps(self.pid)})
                self._next_maps = t + MAPS_EVERY
        except (OSError, ValueError, IndexError, KeyError) as exc:
            self.error = self.error or f"reading /proc/{self.pid} at {t:.0f} s: {exc}"
            return None
        self.samples.append(s)
        if t >= self._next_progress:
            self._next_progress += self.progress_every
            log(f"[{_clock(t)} {self.phase}] RSS {s['rss_mib']:.1f} MiB, {s['threads']} threads, "
                f"{self.tally.total} calls, {self.tally.unexpected} unexpected")
        return s

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._done.is_set():
            self.sample()
            next_at += self.interval
            self._done.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._done.set()
        self.join(10)


# ---- glibc, asked from outside (gdb attaches for a moment; used only in the idle tail) ----

MALLOC_STATS = re.compile(r"system bytes\s*=\s*(\d+)\s*\n\s*in use bytes\s*=\s*(\d+)")
PYMALLOC_STATS = {"pymalloc_arenas": re.compile(r"# arenas allocated current\s*=\s*([\d,]+)"),
                  "pymalloc_arenas_highwater": re.compile(r"# arenas highwater mark\s*=\s*([\d,]+)"),
                  "pymalloc_in_use_mib": re.compile(r"# bytes in allocated blocks\s*=\s*([\d,]+)")}


def gdb_call(pid: int, *expressions: str, timeout: float = 120.0) -> str:
    """`call EXPRESSION` for each expression in the process with gdb; gdb's output (e.g. `$1 = 1`)."""
    command = ["gdb", "-p", str(pid), "-batch", "-nx"]
    for expression in expressions:
        command += ["-ex", f"call {expression}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    return (done.stdout + done.stderr).strip()


def _gdb_value(output: str) -> str:
    """The `$1 = ...` line of gdb's output (what the call returned), or its last line."""
    values = [line for line in output.splitlines() if line.startswith("$1 = ")]
    return values[0] if values else output.splitlines()[-1] if output else ""


def heap_stats(server: ServerProcess) -> dict:
    """glibc's malloc_stats() and CPython's _PyObject_DebugMallocStats() in the server (both print to its
    stderr, i.e. its log), parsed. glibc: bytes held from the system and in use, over its arenas and in total
    (the total includes blocks mmapped on their own). pymalloc (Python objects up to 512 bytes, in 1 MiB
    arenas of their own, outside malloc): arenas now and at most, and bytes in live blocks."""
    before = server.log_path.stat().st_size
    gdb_call(server.pid, "(void)malloc_stats()", "(int)_PyObject_DebugMallocStats(*(void**)&stderr)")
    time.sleep(0.5)
    with open(server.log_path, errors="replace") as f:
        f.seek(before)
        text = f.read()
    pairs = [(int(a) / MIB, int(b) / MIB) for a, b in MALLOC_STATS.findall(text)]
    if not pairs:
        return {"error": f"no malloc_stats output in the log: {text[-300:]!r}"}
    *arenas, total = pairs
    out = {"arenas": len(arenas), "arena_system_mib": round(sum(a for a, _ in arenas), 2),
           "arena_in_use_mib": round(sum(b for _, b in arenas), 2),
           "total_system_mib": round(total[0], 2), "total_in_use_mib": round(total[1], 2)}
    for key, pattern in PYMALLOC_STATS.items():
        m = pattern.search(text)
        if m:
            value = int(m.group(1).replace(",", ""))
            out[key] = round(value / MIB, 2) if key.endswith("_mib") else value
    return out


class Prober:
    """The allocators' view of the server's heap, asked with gdb (heap_stats): before the load, every `every`
    seconds of the load when `every` > 0, and in the idle tail heap_stats, (with `gc`: a full gc.collect(),
    heap_stats,) malloc_trim(0), heap_stats again."""

    def __init__(self, server: ServerProcess, sampler: Sampler, every: float = 0.0, gc: bool = False):
        self.server, self.sampler, self.every, self.gc = server, sampler, every, gc
        self.probes: list[dict] = []
        self._lock = threading.Lock()  # one gdb at a time
        self._load_done = threading.Event()
        self._thread: threading.Thread | None = None

    def probe(self, action: str) -> dict:
        with self._lock:
            before = read_status(self.server.pid)["rss_mib"]
            t = self.sampler.now()
            if action == "malloc_trim":
                result = _gdb_value(gdb_call(self.server.pid, "(int)malloc_trim(0)"))
                time.sleep(1.0)
            elif action == "gc_collect":
                # A full collection of Python's cyclic garbage, holding the GIL (the server is idle: no thread
                # holds it); the value is the number of unreachable objects found.
                out = gdb_call(self.server.pid, "(int)PyGILState_Ensure()", "(long)PyGC_Collect()",
                               "(void)PyGILState_Release($1)")
                result = next((line for line in out.splitlines() if line.startswith("$2 = ")), out[-300:])
                time.sleep(1.0)
            else:
                result = heap_stats(self.server)
            after = read_status(self.server.pid)["rss_mib"]
            # t: when gdb was started; t_done: when the call had returned (gdb takes a second or two to attach)
            entry = {"t": round(t, 3), "t_done": round(self.sampler.now(), 3), "phase": self.sampler.phase,
                     "action": action, "rss_before_mib": before, "rss_after_mib": after, "result": result}
            log(f"  {action}: RSS {before:.1f} -> {after:.1f} MiB; {result}")
            self.probes.append(entry)
            return entry

    def start_load(self) -> None:
        if self.every > 0:
            self._thread = threading.Thread(target=self._during_load, daemon=True)
            self._thread.start()

    def _during_load(self) -> None:
        while not self._load_done.wait(self.every):
            self.probe("heap_stats")

    def end_load(self) -> None:
        self._load_done.set()
        if self._thread is not None:
            self._thread.join(300)

    def idle(self, idle_s: float) -> None:
        start = time.monotonic()
        time.sleep(max(0.0, min(5.0, 0.1 * idle_s)))
        self.probe("heap_stats")
        time.sleep(max(0.0, start + 0.5 * idle_s - time.monotonic()))
        if self.gc:
            self.probe("gc_collect")
            self.probe("heap_stats")
        self.probe("malloc_trim")
        self.probe("heap_stats")


# ---- the run ----

def _parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = soak_load.LoadConfig()
    p.add_argument("--minutes", type=float, default=30.0, help="minutes of load (default 30)")
    p.add_argument("--idle-minutes", type=float, help="minutes of idle tail after the load (default: 10%% of "
                                                      "--minutes, at least 1)")
    p.add_argument("--settle-seconds", type=float, default=10.0,
                   help="seconds sampled after the server is ready, before the load (default 10)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak",
                   help="output directory: soak.json, soak.png, server.log (default benchmarks/results/soak)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sessions", type=int, default=d.sessions, help=f"steady named sessions ({d.sessions})")
    p.add_argument("--series", type=int, default=d.series, help=f"series per steady session ({d.series})")
    p.add_argument("--reconnect-every", type=int, default=d.reconnect_every,
                   help=f"batches per steady stream before it reconnects to its session ({d.reconnect_every})")
    p.add_argument("--pace", type=float, default=1.0,
                   help="multiplies every pause between calls: 2 = half the load, 0.5 = twice (default 1)")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="add to the server's environment, e.g. MALLOC_ARENA_MAX=2 (repeatable)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="append to `streamer serve ...`, e.g. --server-arg=--session-ttl=60 (repeatable)")
    p.add_argument("--gdb-probe", action="store_true",
                   help="call glibc's malloc_stats() in the server with gdb before the load and in the idle "
                        "tail, and malloc_trim(0) in the middle of the idle tail")
    p.add_argument("--gdb-gc", action="store_true",
                   help="with --gdb-probe: a full Python garbage collection in the idle tail, before malloc_trim")
    p.add_argument("--gdb-every", type=float, default=0.0, metavar="SECONDS",
                   help="with --gdb-probe: malloc_stats() every SECONDS of the load too (gdb stops the server "
                        "for a second or two each time)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    idle_minutes = args.idle_minutes if args.idle_minutes is not None else max(1.0, 0.1 * args.minutes)
    pace = args.pace
    pauses = ("session_pause", "short_pause", "unary_pause", "bad_pause")
    cfg = soak_load.LoadConfig(
        sessions=args.sessions, series=args.series, reconnect_every=args.reconnect_every, seed=args.seed,
        **{f: getattr(soak_load.LoadConfig, f) * pace for f in pauses})
    env = dict(kv.split("=", 1) for kv in args.server_env)
    if args.gdb_probe and not shutil.which("gdb"):
        raise SystemExit("--gdb-probe needs gdb on the PATH")
    args.out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    doc = {"schema": 1, "command": "python -m benchmarks.soak " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
           "started": started.isoformat(timespec="seconds"), "machine": report.machine(),
           "versions": report.versions(),
           "settings": {"minutes": args.minutes, "idle_minutes": idle_minutes, "settle_seconds": args.settle_seconds,
                        "pace": pace, "gdb_probe": args.gdb_probe, "gdb_every": args.gdb_every,
                        "gdb_gc": args.gdb_gc, **vars(cfg)}}
    log(f"soak: {args.minutes:g} min of load + {idle_minutes:g} min idle, seed {args.seed}; "
        f"{doc['machine']['cores']} cores, load average {doc['machine']['load_average_start'][0]:.2f}")
    log("encoding the requests ...")
    requests = soak_load.Requests(cfg)
    log("starting streamer serve ...")
    server = ServerProcess("streamer", args=tuple(args.server_arg), env=env, log_path=args.out / "server.log")
    doc["server"] = {"command": " ".join(server.command), "env": env, "addr": server.addr, "pid": server.pid}
    log(f"  ready on {server.addr} (pid {server.pid}); env {env or '-'}")
    tally = soak_load.Tally()
    sampler = Sampler(server.pid, tally)
    prober = Prober(server, sampler, args.gdb_every, args.gdb_gc) if args.gdb_probe else None
    interrupted = False
    sampler.start()
    try:
        time.sleep(args.settle_seconds)
        if prober:
            prober.probe("heap_stats")
        sampler.mark("load")
        log(f"load for {args.minutes:g} min ...")
        if prober:
            prober.start_load()
        try:
            asyncio.run(soak_load.run(server.addr, requests, cfg, args.minutes * 60, tally))
        finally:
            if prober:
                prober.end_load()
        sampler.mark("idle")
        log(f"idle for {idle_minutes:g} min ...")
        idle_end = time.monotonic() + idle_minutes * 60
        if prober:
            prober.idle(idle_minutes * 60)
        time.sleep(max(0.0, idle_end - time.monotonic()))
        sampler.mark("end")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: writing what was measured")
    finally:
        sampler.stop()
        alive = server.alive()
        exit_status = server.stop()
    log_text = server.log_path.read_text(errors="replace")
    doc["server"].update(exit_status=exit_status, alive_at_end=alive, tracebacks=log_text.count("Traceback"),
                         log_tail=log_text.splitlines()[-5:])
    doc["phases"] = sampler.phases
    doc["samples"] = sampler.samples
    doc["maps"] = sampler.maps
    doc["probes"] = prober.probes if prober else []
    doc["calls"] = tally.as_dict()
    doc["summary"] = soak_report.summarize(sampler.samples, sampler.phases, doc["probes"])
    doc["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    notes = doc["notes"] = []
    if sampler.error:
        notes.append(sampler.error)
    if interrupted:
        notes.append("Interrupted before the end.")
    (args.out / "soak.json").write_text(json.dumps(doc, indent=1))
    try:
        soak_report.plot(doc, args.out / "soak.png")
    except ImportError as exc:
        log(f"no plot: {exc} (pip install -e '.[bench]')")
    print(soak_report.format_summary(doc))
    log(f"wrote {args.out / 'soak.json'}, {args.out / 'soak.png'}, {args.out / 'server.log'}")
    failed = (tally.unexpected or not alive or exit_status != 0 or doc["server"]["tracebacks"] or sampler.error
              or interrupted)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
