"""The soak's mixed load: named-session streams that reconnect, short streams, unary Detects of many sizes and
bad input, every call checked against the status code it should get. grpc.aio, raw bytes both ways.

No timing here: the load is paced (a pause between calls), so it runs beside the server on a shared machine
for half an hour without saturating it; benchmarks/soak.py measures the server while this runs.
"""
from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from typing import Awaitable, Callable

import grpc
import numpy as np

from benchmarks.loadgen import EPOCH, MAX_MESSAGE, PATHS, SPIKE_RATE
from streamer.pb import outliers_pb2 as pb

DEADLINE = 60.0  # seconds any call may take before it counts as hung (DEADLINE_EXCEEDED, unexpected)
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
DETECT_SIZES = (0, 1, 10, 100, 1_000, 10_000, 100_000)  # metrics per unary Detect (100 000: over 1 MiB, offloaded)
DETECT_WEIGHTS = (1, 3, 3, 3, 3, 2, 1)
MALFORMED = (b"\xff\xff\xff",            # truncated varint tag
             b"\x0a\x05\x12\x03ab",      # metric length runs past the end
             b"\x0a\x03\x12\x01\xff",    # name that is not UTF-8
             b"\x0a\x02\x19\x00")        # value (fixed64) cut short


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """What the load does; every pause is the time a worker waits between two of its calls (or batches)."""

    sessions: int = 8              # steady named sessions, one stream open on each at a time
    series: int = 100              # series per steady session
    batch: int = 1000              # metrics per steady batch (batch / series values of each series)
    reconnect_every: int = 20      # batches per steady stream; then it closes and reopens the same session
    session_pause: float = 0.1     # between two batches of one steady stream
    short_pause: float = 0.1       # between two short streams (1-5 batches, 1-50 series, half on a session)
    unary_pause: float = 0.1       # between two unary Detects
    bad_pause: float = 0.1         # between two bad-input calls
    channel_every: int = 25        # short, unary and bad calls: a new channel (TCP connection) after this many
    seed: int = 1


class Tally:
    """Calls per case and status code. A code other than the case's expected one is counted as unexpected and
    its first details are kept. Only the event loop thread writes; the sampler thread reads `total`."""

    def __init__(self) -> None:
        self.cases: dict[str, dict] = {}
        self.total = 0
        self.unexpected = 0

    def record(self, case: str, expected: str, got: str, detail: str = "") -> None:
        c = self.cases.setdefault(case, {"expected": expected, "calls": 0, "codes": {}, "unexpected": 0,
                                         "examples": []})
        c["calls"] += 1
        c["codes"][got] = c["codes"].get(got, 0) + 1
        self.total += 1
        if got != expected:
            c["unexpected"] += 1
            self.unexpected += 1
            if len(c["examples"]) < 5:
                c["examples"].append(f"{got}: {detail}"[:300])

    def as_dict(self) -> dict:
        return {"total": self.total, "unexpected": self.unexpected, "cases": self.cases}


# ---- requests, encoded once before the load starts (the client should cost the machine little) ----

def _metrics(rng: np.random.Generator, names: list[str], n: int, first: int = 0) -> list[pb.Metric]:
    """n metrics cycling through `names`, values uniform in [0, 40) with spikes, as benchmarks.loadgen's."""
    values = rng.uniform(0.0, 40.0, n)
    spikes = rng.random(n) < SPIKE_RATE
    values[spikes] = rng.uniform(100.0, 1000.0, int(spikes.sum()))
    out = []
    for k, value in enumerate(values.tolist()):
        m = pb.Metric(name=names[(first + k) % len(names)], value=value)
        m.time.seconds = EPOCH + (first + k) // 1000
        m.time.nanos = ((first + k) % 1000) * 1_000_000
        out.append(m)
    return out


def _request(metrics=(), options: pb.DetectOptions | None = None, session: str = "") -> bytes:
    return pb.OutliersRequest(metrics=metrics, options=options, session=session).SerializeToString()


def _mode_options(mode: int, **fields) -> pb.DetectOptions:
    if mode == pb.MODE_EXPONENTIAL:
        fields.setdefault("alpha", 0.1)
    return pb.DetectOptions(mode=mode, **fields)


@dataclasses.dataclass
class SessionRequests:
    name: str
    first: bytes        # options + session + a batch
    again: bytes        # a later batch repeating the same options and session (allowed)
    batches: list[bytes]


class Requests:
    """Every request the load sends, built from one seed."""

    def __init__(self, cfg: LoadConfig):
        rng = np.random.default_rng(cfg.seed)
        pick = random.Random(cfg.seed)
        self.sessions = []
        for i in range(cfg.sessions):
            names = [f"soak-{i}-metric-{j}" for j in range(cfg.series)]
            options = _mode_options(pb.MODE_EXPONENTIAL if i % 2 else pb.MODE_CUMULATIVE)
            name = f"soak-{i}"
            self.sessions.append(SessionRequests(
                name, _request(_metrics(rng, names, cfg.batch), options, name),
                _request(_metrics(rng, names, cfg.batch), options, name),
                [_request(_metrics(rng, names, cfg.batch, k * cfg.batch)) for k in range(1, 9)]))
        # Short streams: 1-5 batches of 1-200 metrics over 1-50 series; half private, half on one of 16 pooled
        # sessions (pooled session k always in the same mode, so reopening it is never FAILED_PRECONDITION).
        self.short_streams = []
        for s in range(64):
            pooled = s % 2 == 0
            k = pick.randrange(16)
            mode = (pb.MODE_EXPONENTIAL if k % 2 else pb.MODE_CUMULATIVE) if pooled else \
                pick.choice((pb.MODE_CUMULATIVE, pb.MODE_EXPONENTIAL))
            names = [f"short-{s}-{j}" for j in range(pick.randint(1, 50))]
            n = pick.randint(1, 200)
            batches = [_metrics(rng, names, n, b * n) for b in range(pick.randint(1, 5))]
            first = _request(batches[0], _mode_options(mode, warmup=pick.randint(2, 20)),
                             f"short-{k}" if pooled else "")
            self.short_streams.append([first] + [_request(b) for b in batches[1:]])
        self.detects = {}
        for size in DETECT_SIZES:
            names = [f"detect-{j}" for j in range(max(1, min(size, 100)))]
            self.detects[size] = [_request(_metrics(rng, names, size)),
                                  _request(_metrics(rng, names, size), pb.DetectOptions(threshold=3.0))]
        self.good = _request(_metrics(rng, ["bad-case-ok"], 20))
        self.long_name = _request(_metrics(rng, ["ok"], 3) + [pb.Metric(name="x" * 1025, value=1.0)])
        self.bad_thresholds = [_request(_metrics(rng, ["cpu"], 10), pb.DetectOptions(threshold=t))
                               for t in (-1.0, math.nan, math.inf)]
        # one more distinct name than the server's default --max-series (100 000): RESOURCE_EXHAUSTED
        self.series_limit = _request([pb.Metric(name=f"lim-{j}", value=1.0) for j in range(100_001)])


# ---- calls ----

def _code(exc: grpc.aio.AioRpcError) -> tuple[str, str]:
    return exc.code().name, exc.details() or ""


async def _unary(channel: grpc.aio.Channel, request: bytes, timeout: float = DEADLINE) -> tuple[str, str]:
    try:
        await channel.unary_unary(PATHS["detect"])(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return _code(exc)
    return "OK", ""


async def _stream(channel: grpc.aio.Channel, requests: list[bytes], answers: int | None = None,
                  pause: float = 0.0, until: float = math.inf) -> tuple[str, str]:
    """One DetectStream, lock-step: write a request, read its answer. Returns the status code; a wrong number
    of answers (`answers`, default every request) or a wrong `batch` number is a code of its own."""
    expect = len(requests) if answers is None else answers
    call = channel.stream_stream(PATHS["stream"])(timeout=DEADLINE)
    loop = asyncio.get_running_loop()
    got, ended = 0, False
    try:
        for i, request in enumerate(requests):
            if i and loop.time() >= until:  # the load is over: end this stream early, normally
                expect = min(expect, i)
                break
            if i and pause:
                await asyncio.sleep(pause)
            await call.write(request)
            answer = await call.read()
            if answer is grpc.aio.EOF:
                ended = True
                break
            batch = pb.OutliersResponse.FromString(answer).batch
            if batch != i:
                call.cancel()
                return "WRONG_BATCH", f"answer {got} has batch {batch}"
            got += 1
        if not ended:
            await call.done_writing()
            if await call.read() is not grpc.aio.EOF:
                call.cancel()
                return "EXTRA_ANSWER", "more answers than requests"
        code = (await call.code()).name
        details = await call.details()
    except grpc.aio.AioRpcError as exc:
        code, details = _code(exc)
    if got != expect:
        return f"{code}/answered {got} of {expect}", details
    return code, details


async def _steady_session(channel, session: SessionRequests, cfg: LoadConfig, tally: Tally, until: float):
    """Stream after stream on one session, each `reconnect_every` batches, until the load ends."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        requests = [session.first] + [session.again if j % 5 == 0 else session.batches[j % len(session.batches)]
                                      for j in range(1, cfg.reconnect_every)]
        code, details = await _stream(channel, requests, pause=cfg.session_pause, until=until)
        tally.record("session-stream", "OK", code, details)


class _Channels:
    """A channel that is replaced (a new connection) after every `every` calls."""

    def __init__(self, addr: str, every: int):
        self.addr, self.every, self.calls, self.channel = addr, every, 0, None

    async def get(self) -> grpc.aio.Channel:
        if self.channel is None or self.calls >= self.every:
            await self.close()
            self.channel, self.calls = grpc.aio.insecure_channel(self.addr, options=CHANNEL_OPTIONS), 0
        self.calls += 1
        return self.channel

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None


async def _short_streams(addr, reqs: Requests, cfg: LoadConfig, tally: Tally, until: float):
    pick = random.Random(cfg.seed + 1)
    channels = _Channels(addr, cfg.channel_every)
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < until:
            code, details = await _stream(await channels.get(), pick.choice(reqs.short_streams))
            tally.record("short-stream", "OK", code, details)
            await asyncio.sleep(cfg.short_pause)
    finally:
        await channels.close()


async def _unary_calls(addr, reqs: Requests, cfg: LoadConfig, tally: Tally, until: float):
    pick = random.Random(cfg.seed + 2)
    channels = _Channels(addr, cfg.channel_every)
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < until:
            size = pick.choices(DETECT_SIZES, DETECT_WEIGHTS)[0]
            code, details = await _unary(await channels.get(), pick.choice(reqs.detects[size]))
            tally.record(f"detect-{size}", "OK", code, details)
            await asyncio.sleep(cfg.unary_pause)
    finally:
        await channels.close()


def _bad_cases(reqs: Requests | None) -> list[tuple[str, str, Callable[[grpc.aio.Channel, int], Awaitable]]]:
    """(case, expected code, call(channel, round)) for every bad input; each returns (code, details).
    With reqs None, only the cases and codes are of use (the tests read them)."""
    good = reqs.good if reqs is not None else b""

    def opts(**fields) -> bytes:
        # Serialized messages concatenate into one message (protobuf merges them): options + good's metrics.
        return _request(options=pb.DetectOptions(**fields)) + good

    async def busy(channel, _):
        # Hold a stream open on the session, then try a second one on it: ALREADY_EXISTS; the holder then ends OK.
        holder = channel.stream_stream(PATHS["stream"])(timeout=DEADLINE)
        try:
            await holder.write(_request(session="bad-busy") + good)
            if await holder.read() is grpc.aio.EOF:
                return (await holder.code()).name + "/holder ended", await holder.details()
            result = await _stream(channel, [_request(session="bad-busy") + good], answers=0)
            await holder.done_writing()
            await holder.read()
            holder_code = (await holder.code()).name
        except grpc.aio.AioRpcError as exc:
            return _code(exc)[0] + "/holder", exc.details() or ""
        return result if holder_code == "OK" else (holder_code + "/holder", await holder.details())

    async def wrong_mode(channel, _):
        # Refresh the cumulative session (so its TTL never runs out during a long soak), then continue it in
        # the exponential mode: FAILED_PRECONDITION.
        made = await _stream(channel, [_request(session="bad-mode") + good])
        if made[0] != "OK":
            return made[0] + "/making the session", made[1]
        return await _stream(channel, [_request(options=_mode_options(pb.MODE_EXPONENTIAL), session="bad-mode")
                                       + good], answers=0)

    async def cancelled(channel, _):
        call = channel.stream_stream(PATHS["stream"])(timeout=DEADLINE)
        await call.write(good)
        if await call.read() is grpc.aio.EOF:
            return (await call.code()).name + "/ended early", ""
        call.cancel()
        return (await call.code()).name, ""

    async def deadline(channel, _):
        call = channel.stream_stream(PATHS["stream"])(timeout=0.5)
        try:
            await call.write(good)
            await call.read()
            await call.read()  # nothing more comes: the deadline passes
        except grpc.aio.AioRpcError as exc:
            return _code(exc)
        return (await call.code()).name, await call.details()

    return [
        ("detect-malformed", "INVALID_ARGUMENT", lambda ch, r: _unary(ch, MALFORMED[r % len(MALFORMED)])),
        ("detect-long-name", "INVALID_ARGUMENT", lambda ch, r: _unary(ch, reqs.long_name)),
        ("detect-bad-threshold", "INVALID_ARGUMENT",
         lambda ch, r: _unary(ch, reqs.bad_thresholds[r % len(reqs.bad_thresholds)])),
        ("detect-series-limit", "RESOURCE_EXHAUSTED", lambda ch, r: _unary(ch, reqs.series_limit)),
        ("stream-malformed-first", "INVALID_ARGUMENT",
         lambda ch, r: _stream(ch, [MALFORMED[r % len(MALFORMED)]], answers=0)),
        ("stream-malformed-later", "INVALID_ARGUMENT",
         lambda ch, r: _stream(ch, [_request(session="bad-later") + good, good, MALFORMED[r % len(MALFORMED)]],
                               answers=2)),
        ("stream-long-name", "INVALID_ARGUMENT", lambda ch, r: _stream(ch, [good, reqs.long_name], answers=1)),
        ("stream-long-session", "INVALID_ARGUMENT",
         lambda ch, r: _stream(ch, [_request(session="s" * 1025) + good], answers=0)),
        ("stream-bad-alpha", "INVALID_ARGUMENT",
         lambda ch, r: _stream(ch, [opts(mode=pb.MODE_EXPONENTIAL, alpha=2.0)], answers=0)),
        ("stream-bad-mode", "INVALID_ARGUMENT", lambda ch, r: _stream(ch, [opts(mode=7)], answers=0)),
        ("stream-bad-threshold", "INVALID_ARGUMENT", lambda ch, r: _stream(ch, [opts(threshold=math.nan)],
                                                                           answers=0)),
        ("stream-changed-options", "INVALID_ARGUMENT",
         lambda ch, r: _stream(ch, [opts(warmup=5), opts(warmup=6)], answers=1)),
        ("stream-other-session", "INVALID_ARGUMENT",
         lambda ch, r: _stream(ch, [_request(session="bad-a") + good, _request(session="bad-b") + good],
                               answers=1)),
        ("stream-busy-session", "ALREADY_EXISTS", busy),
        ("stream-wrong-mode", "FAILED_PRECONDITION", wrong_mode),
        ("stream-cancelled", "CANCELLED", cancelled),
        ("stream-deadline", "DEADLINE_EXCEEDED", deadline),
    ]


async def _bad_input(addr, reqs: Requests, cfg: LoadConfig, tally: Tally, until: float):
    channels = _Channels(addr, cfg.channel_every)
    cases = _bad_cases(reqs)
    loop = asyncio.get_running_loop()
    rounds = 0
    try:
        while loop.time() < until:
            for case, expected, call in cases:
                if loop.time() >= until:
                    break
                code, details = await call(await channels.get(), rounds)
                tally.record(case, expected, code, details)
                await asyncio.sleep(cfg.bad_pause)
            rounds += 1
    finally:
        await channels.close()


async def run(addr: str, reqs: Requests, cfg: LoadConfig, seconds: float, tally: Tally) -> None:
    """Drive every worker for `seconds`; returns once each has finished its last call and closed its channels."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    async with grpc.aio.insecure_channel(addr, options=CHANNEL_OPTIONS) as steady:
        await asyncio.wait_for(steady.channel_ready(), 30)
        await asyncio.gather(
            *(_steady_session(steady, s, cfg, tally, until) for s in reqs.sessions),
            _short_streams(addr, reqs, cfg, tally, until),
            _unary_calls(addr, reqs, cfg, tally, until),
            _bad_input(addr, reqs, cfg, tally, until))
