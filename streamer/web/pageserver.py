"""The page's HTTP server (--http-port): the page, its static files, and a JSON and server-sent-events API.

A small HTTP/1.1 server on the event loop (asyncio streams), one request per connection, HTTPS when the TLS
flags are set. Live events come from the Watch Hub (streamer/watch.py), a viewed series' values from the taps
(tap.py); searches and backtests run on worker threads. Not the /metrics server (prometheus_client's own, on
--metrics-port).
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import math

import numpy as np
import ssl
import urllib.parse
from importlib import resources

from streamer import detector, watch
from streamer.web.backtest import BacktestError, Backtests, option_fields
from streamer.web.live import LIVE_QUOTA, LiveList
from streamer.web.tap import DELIVER_SECONDS, Taps, points_f64, points_json

log = logging.getLogger("streamer.web")

STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8", "uPlot.iife.min.js": "text/javascript; charset=utf-8",
          "uPlot.min.css": "text/css; charset=utf-8", "LICENSE.uPlot.txt": "text/plain; charset=utf-8"}
HEADER_LIMIT = 64 * 1024
SEARCH_LIMIT = 200
ORIGINS = {"stream": 1, "otlp": 2}
ORIGIN_NAMES = {v: k for k, v in ORIGINS.items()}
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
           413: "Payload Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error"}


def _finite(o):
    """JSON has no NaN or Infinity: they become null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json(o) -> bytes:
    try:
        return json.dumps(o, allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(o), allow_nan=False).encode()


def event_json(e) -> dict:
    """A Hub event as the page shows it: an outlier (watch.Event), an episode (a dataclass with a `kind`
    opened/updated/resolved, from the alerts work), or a notice of dropped events."""
    if type(e) is watch.Event:  # the live list's many: built directly, not through _asdict() and pops
        return {"series": e.series, "value": e.value, "time": e.time_ns / 1e9, "mean": e.mean, "stddev": e.stddev,
                "zscore": e.zscore, "session": e.session, "tenant": e.tenant, "rule": e.rule, "kind": "outlier",
                "source": ORIGIN_NAMES.get(e.origin, "stream")}
    if dataclasses.is_dataclass(e):  # sinks/episode.py EpisodeEvent
        d = dataclasses.asdict(e)
        d["state"] = d.pop("kind", "")
        d["kind"] = "episode"
        d["id"] = d.get("episode", "")
        where = str(d.get("source", ""))
        d["session"] = getattr(e, "session", where[8:] if where.startswith("session ") else "")
        d["source"] = "otlp" if where.startswith("otlp") else "stream"
        d["source_name"] = where
        return d
    return {"kind": "dropped", "count": getattr(e, "count", 0), "total": getattr(e, "total", 0)}


# /api/tap?format=: a list of JSON objects, or the columns the page reads; each gives a message's bytes
TAP_FORMATS = {"json": lambda points: _json(points_json(points)), "f64": points_f64}


def outliers_f64(events: list) -> dict:
    """Outlier events (watch.Event) as /api/events?format=f64 sends them, the page's form: one object of columns,
    {"kind": "outliers", "n": n, "f64": base64 of 5 columns of n little-endian float64s (value, time in seconds,
    mean, stddev, zscore), and lists of n "series", "session", "source", "tenant", "rule"}. A float's shortest repr
    costs about 1.5 us, most of an event's JSON: the live list sends 160 outliers a second."""
    cols = np.array([(e.value, e.time_ns / 1e9, e.mean, e.stddev, e.zscore) for e in events], dtype="<f8")
    return {"kind": "outliers", "n": len(events), "f64": base64.b64encode(cols.T.tobytes()).decode("ascii"),
            "series": [e.series for e in events], "session": [e.session for e in events],
            "source": [ORIGIN_NAMES.get(e.origin, "stream") for e in events],
            "tenant": [e.tenant for e in events], "rule": [e.rule for e in events]}


class PageServer:
    """Serves the page on host:port; start() binds (OSError says why), close() ends every connection."""

    def __init__(self, service, defaults: detector.Defaults, max_upload_bytes: int, taps: Taps):
        self.service = service  # OutliersService: its sessions, streams and Hub
        self.defaults = defaults
        self.max_upload = max_upload_bytes
        self.taps = taps
        self.backtests = Backtests(defaults)
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task] = set()
        self.port: int | None = None
        self._tls: ssl.SSLContext | None = None  # the TLS settings of new connections (use_tls)

    @staticmethod
    def tls_context(tls_cert: str, tls_key: str, tls_client_ca: str | None = None) -> ssl.SSLContext:
        """The page's TLS settings from the serve TLS files (OSError or ssl.SSLError when they do not load)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert, tls_key)
        if tls_client_ca:  # as on the gRPC port: only clients with a certificate this CA signed
            context.load_verify_locations(tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def use_defaults(self, defaults: detector.Defaults) -> None:
        """A reload's detection defaults: what the option form shows and a backtest's empty fields take."""
        self.defaults = defaults
        self.backtests.use_defaults(defaults)

    def use_tls(self, context: ssl.SSLContext) -> None:
        """Serve new connections with `context` (a reload's new certificate files); open ones keep theirs."""
        self._tls = context

    def _pick_tls(self, sslobj, server_name, context) -> None:
        # OpenSSL calls this in every handshake (with or without SNI): switch to the current settings
        sslobj.context = self._tls

    async def start(self, host: str, port: int, tls_cert=None, tls_key=None, tls_client_ca=None) -> int:
        context = None
        if tls_cert:
            context = self._tls = self.tls_context(tls_cert, tls_key, tls_client_ca)
            context.sni_callback = self._pick_tls
        name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        # "::" (the default --host) means every address of both families, as on the gRPC port; asyncio would bind
        # it IPv6 only (IPV6_V6ONLY), so IPv4 clients could not reach the page: None binds 0.0.0.0 and :: both
        self._server = await asyncio.start_server(self._connection, None if name in ("", "::") else name, port,
                                                  ssl=context, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("page: request failed")
            try:
                await self._send(writer, 500, {"error": "internal error (see the server's log)"})
            except Exception:
                pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _handle(self, reader, writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return await self._send(writer, 431, {"error": "request headers over 64 KiB"})
        except asyncio.IncompleteReadError:
            return
        if len(head) > HEADER_LIMIT:
            return await self._send(writer, 431, {"error": "request headers over 64 KiB"})
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            return await self._send(writer, 400, {"error": "not an HTTP request line"})
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        url = urllib.parse.urlsplit(target)
        path = url.path
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        scope = None  # whose data the caller sees: None every tenant's (no [tenants], or the admin role)
        tenancy = getattr(self.service, "tenancy", None)
        if tenancy is not None:  # [tenants]: a tenant's certificate sees its own tenant's sessions and events only
            caller = tenancy.caller_from_peercert(writer.get_extra_info("peercert"))
            if not caller.admin:
                if not caller.known:
                    return await self._send(writer, 403, {"error": f"client certificate identity {caller.identity!r} "
                                                                   f"names no tenant"})
                scope = caller.tenant
                denied = await self._out_of_scope(q.get("session", ""), scope, path)
                if denied:
                    return await self._send(writer, 403, {"error": denied})
        if method == "POST" and path == "/api/backtest":
            return await self._backtest(reader, writer, headers, q)
        if method != "GET":
            return await self._send(writer, 405, {"error": f"{method} {path}: only GET (and POST /api/backtest)"})
        if path == "/" or path.startswith("/static/"):
            return await self._static(writer, "index.html" if path == "/" else path[len("/static/"):])
        if path == "/api/sessions":
            return await self._send(writer, 200, self._sessions(scope))
        if path == "/api/series":
            found = await asyncio.to_thread(self._search, q.get("session", ""), q.get("q", ""),
                                            min(int(q.get("limit") or 50), SEARCH_LIMIT), scope)
            return await self._send(writer, 200, {"series": found})
        if path == "/api/options":
            return await self._send(writer, 200, {"fields": option_fields(), "max_upload_bytes": self.max_upload,
                                                  "defaults": dataclasses.asdict(self.defaults)})
        if path == "/api/events":
            return await self._events(reader, writer, q, scope)
        if path == "/api/tap":
            return await self._tap(reader, writer, q)
        if path.startswith("/api/backtest/"):
            return await self._backtest_get(writer, path, q)
        return await self._send(writer, 404, {"error": f"no such page: {path}"})

    async def _send(self, writer, status: int, body, ctype: str = "application/json", extra: str = "") -> None:
        data = body if isinstance(body, bytes) else _json(body)
        writer.write((f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(data)}\r\nCache-Control: no-store\r\n{extra}Connection: close\r\n\r\n")
                     .encode() + data)
        await writer.drain()

    async def _static(self, writer, name: str) -> None:
        if name not in STATIC:
            return await self._send(writer, 404, {"error": f"no such file: {name}"})
        data = resources.files("streamer.web").joinpath("static", name).read_bytes()
        await self._send(writer, 200, data, STATIC[name])

    async def _out_of_scope(self, session: str, tenant: str, path: str) -> str | None:
        """Why a tenant's caller may not use `path` for `session` (None: it may)."""
        if path == "/api/tap" and not session:
            return "under [tenants] a tenant views the series of one of its sessions (private streams: admin role)"
        if session and path in ("/api/tap", "/api/series", "/api/events"):
            owner = await asyncio.to_thread(self.service.sessions.tenant_of, session)
            if owner is not None and owner != tenant:
                return f"session {session!r} belongs to another tenant"
            if owner is None and path == "/api/tap":  # a tap has no tenant: it would see whoever makes the session
                return f"no session {session!r} of this tenant yet: view it once it exists"
        return None

    def _sessions(self, scope: str | None = None) -> dict:
        reg = self.service.sessions
        with reg._lock:
            held = [s for s in reg._sessions.values() if scope is None or s.tenant == scope]
        out = [{"name": s.name, "source": "otlp" if s.name.startswith(("otlp:", "otlp@")) else "session",
                "series": len(s.state.table), "open": s.open, "options": s.options} for s in held]
        private = [d for d in self._private(scope) if d.state]
        out.sort(key=lambda s: s["name"])
        return {"sessions": out, "private_streams": len(private),
                "private_series": sum(len(d.state.table) for d in private)}

    def _private(self, scope: str | None):
        """The detectors of the private streams open now (of tenant `scope` only, unless it is None)."""
        return [d for d in (s.detector for s in list(self.service._streams))
                if d.session is None and (scope is None or d.tenant == scope)]

    def _tables(self, session: str, scope: str | None = None):
        reg = self.service.sessions
        if session:
            with reg._lock:
                s = reg._sessions.get(session)
            return [s.state.table] if s is not None and (scope is None or s.tenant == scope) else []
        return [d.state.table for d in self._private(scope) if d.state is not None]

    def _search(self, session: str, text: str, limit: int, scope: str | None = None) -> list[str]:
        """Series keys of `session` (empty: the private streams) containing `text`, at most `limit`."""
        found: list[str] = []
        key = text.encode("utf-8")
        for table in self._tables(session, scope):
            arena, offsets, lengths = table.name_arrays()
            n = len(table)
            if n == 0:
                continue
            offs, lens = offsets[:n].copy(), lengths[:n].copy()
            data = arena[:int(offs[-1] + lens[-1])].tobytes()
            if not key:
                slots = range(min(n, limit - len(found)))
            else:

                slots, pos = [], data.find(key)
                while pos >= 0 and len(slots) < limit - len(found):
                    s = int(np.searchsorted(offs, pos, side="right")) - 1
                    if pos + len(key) <= offs[s] + lens[s]:
                        slots.append(s)
                        pos = int(offs[s] + lens[s])  # the next series
                    else:
                        pos += 1
                    pos = data.find(key, pos)
            found += [data[int(offs[s]):int(offs[s] + lens[s])].decode("utf-8", "replace") for s in slots]
            if len(found) >= limit:
                break
        return sorted(set(found))[:limit]

    async def _sse_head(self, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                     b"Connection: close\r\n\r\n: streamer\n\n")
        await writer.drain()

    @staticmethod
    async def _wait(waiter, gone: asyncio.Future):
        """Wait for `waiter` (a coroutine) up to 15 s: (False, None) once the page has gone (its connection read
        EOF), else (True, the waiter's result or None after 15 s)."""
        task = asyncio.ensure_future(waiter)
        await asyncio.wait({task, gone}, timeout=15.0, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            return not gone.done(), None
        return True, task.result()

    async def _events(self, reader, writer, q: dict, scope: str | None = None) -> None:
        """Server-sent events: the Hub's outliers (and episodes) matching session, source and series prefix."""
        source = q.get("source", "")
        if source and source not in ORIGINS:
            return await self._send(writer, 400, {"error": f"source {source!r}: one of {', '.join(ORIGINS)}"})
        form = q.get("format") or "json"
        if form not in ("json", "f64"):
            return await self._send(writer, 400, {"error": f"format {form!r}: one of json, f64"})
        columns = form == "f64"  # outliers as outliers_f64's columns, each run of them in the queue one object
        hub = self.service.hub
        sub = hub.add(LiveList(hub, q.get("session", ""), q.get("prefix", ""), scope))
        gone = asyncio.ensure_future(reader.read(1))  # a page sends nothing more: EOF when it goes away
        try:
            await self._sse_head(writer)
            while not sub.closed:
                batch, run = [], []
                while sub.queue:
                    item = sub.queue.popleft()
                    if columns and type(item) is watch.Event:
                        if not source or ORIGIN_NAMES.get(item.origin, "stream") == source:
                            run.append(item)
                        continue
                    if run:
                        batch.append(outliers_f64(run))
                        run = []
                    e = event_json(item)
                    if not source or e.get("source") == source:
                        batch.append(e)
                if run:
                    batch.append(outliers_f64(run))
                if sub.missed:
                    batch.append({"kind": "dropped", "count": sub.missed, "total": sub.total_missed})
                    sub.missed = 0
                if sub.paused:
                    batch.append({"kind": "sampled", "pauses": sub.paused, "quota": LIVE_QUOTA / DELIVER_SECONDS})
                    sub.paused = 0
                sub.delivered()
                if batch:
                    writer.write(b"data: " + _json(batch) + b"\n\n")
                    await writer.drain()
                    # one message a DELIVER_SECONDS at most: what arrives meanwhile waits in the queue, and what
                    # overflows it is counted (and shown as dropped) at the cost of a comparison
                    await asyncio.wait({gone}, timeout=DELIVER_SECONDS)
                    continue
                sub.wake.clear()
                if not (await self._wait(sub.wake.wait(), gone))[0]:
                    return
                if not sub.wake.is_set():
                    writer.write(b": ping\n\n")  # keeps proxies from closing an idle stream
                    await writer.drain()
        finally:
            gone.cancel()
            hub.unsubscribe(sub)

    async def _tap(self, reader, writer, q: dict) -> None:
        """Server-sent events: a series' recent judged values (the ring first), then what is new every
        DELIVER_SECONDS: the tap's sampled batches and every flagged value of the series (tap.py), in one message
        per DELIVER_SECONDS at most whatever the batch rate; as JSON objects or, with format=f64, as the page reads
        them (tap.points_f64)."""
        series = q.get("series", "")
        if not series:
            return await self._send(writer, 400, {"error": "give the series key (series=...)"})
        encode = TAP_FORMATS.get(q.get("format") or "json")
        if encode is None:
            return await self._send(writer, 400, {"error": f"format {q['format']!r}: one of {', '.join(TAP_FORMATS)}"})
        tap = self.taps.view(q.get("session", ""), series)
        gone = asyncio.ensure_future(reader.read(1))
        try:
            await self._sse_head(writer)
            sent = tap.added
            writer.write(b"event: ring\ndata: " + encode(list(tap.ring)) + b"\n\n")
            await writer.drain()
            quiet = 0.0
            while not gone.done():
                await asyncio.wait({gone}, timeout=DELIVER_SECONDS)
                new, sent = tap.since(sent), tap.added
                if new:
                    new.sort(key=lambda p: p[0])
                    writer.write(b"data: " + encode(new) + b"\n\n")
                    quiet = 0.0
                else:
                    quiet += DELIVER_SECONDS
                    if quiet < 15.0:
                        continue
                    writer.write(b": ping\n\n")
                    quiet = 0.0
                await writer.drain()
        finally:
            gone.cancel()
            self.taps.unview(tap)

    async def _backtest(self, reader, writer, headers: dict, q: dict) -> None:
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            return await self._send(writer, 411, {"error": "the upload needs a Content-Length"})
        length = int(length)
        if length > self.max_upload:
            limit_mb = self.max_upload / 2**20
            message = (f"the file is {length / 2**20:.1f} MiB, over the upload limit of {limit_mb:g} MiB "
                       f"(--http-max-upload-mb); backtest a part of it, or run `streamer detect` on it")
            # read what the browser sends (up to 16 times the limit) so it sees the answer, not a reset
            left = length if length <= 16 * self.max_upload else 0
            while left > 0:
                chunk = await reader.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
            return await self._send(writer, 413, {"error": message})
        data = await reader.readexactly(length)
        try:
            sets = json.loads(q.get("sets") or "[{}]")
            result = await asyncio.to_thread(self.backtests.run, data, q.get("filename") or "upload", sets)
        except json.JSONDecodeError as exc:
            return await self._send(writer, 400, {"error": f"sets: not JSON ({exc})"})
        except BacktestError as exc:
            return await self._send(writer, 400, {"error": str(exc)})
        await self._send(writer, 200, result.summary())

    async def _backtest_get(self, writer, path: str, q: dict) -> None:
        parts = path.split("/")  # /api/backtest/<id>/<what>
        if len(parts) != 5:
            return await self._send(writer, 404, {"error": f"no such page: {path}"})
        try:
            result = self.backtests.get(parts[3])
            if parts[4] == "chart":
                return await self._send(writer, 200, await asyncio.to_thread(result.chart, q.get("series", "")))
            if parts[4] in ("flagged.csv", "episodes.csv"):
                what = parts[4][:-4]
                body = (await asyncio.to_thread(getattr(result, f"{what}_csv"))).encode()
                return await self._send(writer, 200, body, "text/csv; charset=utf-8",
                                        f"Content-Disposition: attachment; filename=\"{what}-{result.id}.csv\"\r\n")
        except BacktestError as exc:
            return await self._send(writer, 400, {"error": str(exc)})
        return await self._send(writer, 404, {"error": f"no such page: {path}"})
