"""The admin API (protos/admin.proto, streamer.admin.v1.Admin): list, show, reset and delete sessions and OTLP
sources, and reload the config file. Thin, as the Outliers servicer: the sessions' own rules (leases, the
store's versions) do the work, through SessionRegistry.

What a call sees with `--workers N` or several replicas on one store: ListSessions reads the store, so it lists
every process's sessions (those written at least once, and those leased now), with this process's counts for
the ones it holds. GetSeries answers from this process's memory when it holds the session, else from the
store's last snapshot (up to --snapshot-seconds old while another process streams into it). A reset or a
delete takes the session's lease like a stream would, loads the newest state, changes it and writes it back;
so it works from any process while no stream has the session open. A session open on a stream of THIS
process is reset in place (the stream goes on from empty series); one open elsewhere, or a delete of an open
session, is FAILED_PRECONDITION naming the lease holder (end that stream, or call the process holding it).
Every other process's idle copy gives way at its next attach: the store's newer version wins, and a deleted
session starts afresh there.
"""
from __future__ import annotations

import asyncio
import logging
import math
from typing import Awaitable, Callable

import grpc
import numpy as np

from streamer import tenants
from streamer.otlp import OtlpState
from streamer.pb import admin_pb2 as pb
from streamer.pb import admin_pb2_grpc
from streamer.state import MODE_CUMULATIVE, MODE_NAMES, SeriesState, Session, SessionError, SessionRegistry

log = logging.getLogger(__name__)

SERVICE_NAME = "streamer.admin.v1.Admin"
_PLAIN = ("count", "mean", "spread", "last_seen")  # typed fields of GetSeriesResponse; the rest go in `state`


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _stamp(ts, seconds: float) -> None:
    if seconds > 0:
        ts.seconds, ts.nanos = int(seconds), int((seconds % 1) * 1e9)


def _kind(name: str) -> int:
    return pb.SESSION_KIND_OTLP if name.startswith(("otlp:", "otlp@")) else pb.SESSION_KIND_STREAM


def _find(names: bytes, lengths: np.ndarray, key: bytes) -> int:
    """The index of `key` among names packed in order with these lengths, or -1."""
    offsets = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1], out=offsets[1:])
    for i in np.flatnonzero(lengths == len(key)).tolist():
        if names[offsets[i]:offsets[i] + len(key)] == key:
            return i
    return -1


def forget(state: SeriesState, slots: np.ndarray) -> int:
    """Remove the series at `slots` from the state (the caller holds the session's lock): their next value
    starts them afresh, as after their TTL. How many went."""
    if not len(slots):
        return 0
    marks = np.zeros(state.table.slots, dtype=np.float64)
    marks[slots] = 1.0  # "last seen at 1": only these are before the cutoff of 2 (0 means never seen: kept)
    freed = state.table.expire(marks, 2.0)
    if len(freed):
        state.reset_slots(freed)
        state.last_seen[freed] = 0.0
        state.budget.release(len(freed))
    return len(freed)


def _stddev(mode: int, count: float, spread: float) -> float:
    if mode == MODE_CUMULATIVE:
        return math.sqrt(spread / count) if count > 0 else 0.0
    return math.sqrt(spread) if spread > 0 else 0.0


def _fresh(session: Session, stored_version: int | None, durable: bool) -> bool:
    """Whether this process's copy of a session is its newest state: open here, the store keeps none (memory://),
    or the store's version is the copy's (another worker's later write, or a delete, makes an idle copy stale
    until its next attach)."""
    if session.open or not durable:
        return not session.lost
    return (session.version == 0) if stored_version is None else stored_version == session.version


class AdminService(admin_pb2_grpc.AdminServicer):
    """The Admin servicer. `caller(context)` says who calls (tenants.Caller); `reload` is the server's reload
    coroutine (StreamerServer.reload; None where the servicer is used without a server: UNIMPLEMENTED)."""

    def __init__(self, sessions: SessionRegistry, caller: Callable[[grpc.aio.ServicerContext], tenants.Caller],
                 reload: Callable[[], Awaitable[str]] | None = None):
        self.sessions = sessions
        self.caller = caller
        self.reload = reload

    def add_to(self, server: grpc.aio.Server) -> None:
        admin_pb2_grpc.add_AdminServicer_to_server(self, server)

    async def _guard(self, rpc: str, context, work):
        """Check the admin role, run `work()`, and map a refusal to its status (logged)."""
        caller = self.caller(context)
        try:
            tenants.check_admin(caller)
            return await work()
        except tenants.Denied as exc:
            code, message = grpc.StatusCode.PERMISSION_DENIED, str(exc)
        except _Refused as exc:
            code, message = exc.code, str(exc)
        log.info("admin %s from %s (%s) refused: %s: %s", rpc, context.peer(), caller.identity or "-", code.name,
                 message)
        await context.abort(code, message)

    async def ListSessions(self, request: pb.ListSessionsRequest, context) -> pb.ListSessionsResponse:
        return await self._guard("ListSessions", context, lambda: self._list(request.prefix))

    async def GetSeries(self, request: pb.GetSeriesRequest, context) -> pb.GetSeriesResponse:
        return await self._guard("GetSeries", context, lambda: asyncio.to_thread(self._series, request))

    async def ResetSeries(self, request: pb.ResetSeriesRequest, context) -> pb.ResetResponse:
        return await self._guard("ResetSeries", context,
                                 lambda: asyncio.to_thread(self._reset, request.session, request.series))

    async def ResetSession(self, request: pb.ResetSessionRequest, context) -> pb.ResetResponse:
        return await self._guard("ResetSession", context,
                                 lambda: asyncio.to_thread(self._reset, request.session, None))

    async def DeleteSession(self, request: pb.DeleteSessionRequest, context) -> pb.DeleteSessionResponse:
        return await self._guard("DeleteSession", context, lambda: asyncio.to_thread(self._delete, request.session))

    async def Reload(self, request: pb.ReloadRequest, context) -> pb.ReloadResponse:
        async def work():
            if self.reload is None:
                raise _Refused(grpc.StatusCode.UNIMPLEMENTED, "this server has no reload")
            from streamer.config_file import ConfigError
            try:
                return pb.ReloadResponse(message=await self.reload())
            except ConfigError as exc:
                raise _Refused(grpc.StatusCode.FAILED_PRECONDITION, f"reload refused; the running configuration "
                                                                    f"stays: {exc}") from None
        return await self._guard("Reload", context, work)

    # --- the work, off the event loop where it waits for the store ---------------------------------------

    async def _list(self, prefix: str) -> pb.ListSessionsResponse:
        now = self.sessions.clock()
        try:
            stored = await asyncio.to_thread(self.sessions.store.sessions, now)
        except Exception as exc:
            raise _Refused(grpc.StatusCode.UNAVAILABLE, f"the store cannot be read ({exc}); retry") from None
        held = {s.name: s for s in self.sessions.held_sessions()}
        versions = {s.name: s.version or None for s in stored}
        out = {}
        for s in stored:
            info = pb.SessionInfo(name=s.name, kind=_kind(s.name), tenant=s.tenant, series=s.series,
                                  lease_owner=s.lease_owner, version=s.version,
                                  mode=MODE_NAMES.get(s.mode, ""))
            _stamp(info.last_activity, s.last_used)
            _stamp(info.lease_expires, s.lease_expires)
            out[s.name] = info
        for name, session in held.items():
            if not _fresh(session, versions.get(name), self.sessions.store.durable):
                continue  # stale here: the store's summary stands
            info = out.setdefault(name, pb.SessionInfo(name=name, kind=_kind(name)))
            info.tenant, info.series = session.tenant, len(session.state.table)
            info.mode, info.held_here, info.open_here = MODE_NAMES[session.state.mode], True, session.open
            last = now if session.open else session.last_used
            if last > info.last_activity.seconds + info.last_activity.nanos / 1e9:
                _stamp(info.last_activity, last)
        return pb.ListSessionsResponse(sessions=[out[n] for n in sorted(out) if n.startswith(prefix)],
                                       process=self.sessions.owner)

    def _series(self, request: pb.GetSeriesRequest) -> pb.GetSeriesResponse:
        name, key = request.session, request.series.encode()
        if not name or not key:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "GetSeries needs a session and a series")
        out = pb.GetSeriesResponse(session=name, series=request.series)
        session = self.sessions.held(name)
        store = self.sessions.store
        if session is not None and not session.open and store.durable:
            try:
                if not _fresh(session, store.version(name), True):
                    session = None  # another process changed or deleted it since: the store's state stands
            except Exception:
                pass  # the store is down: this copy is the best there is
        if session is not None and not session.lost:
            with session.lock:
                state = session.state
                names, lengths, slots = state.table.live()
                i = _find(names, lengths, key)
                if i < 0:
                    raise _Refused(grpc.StatusCode.NOT_FOUND, f"session {name!r} holds no series {request.series!r}")
                slot = int(slots[i])
                values = {k: getattr(state, k)[slot] for k in state.per_series if getattr(state, k).ndim == 1}
                mode = state.mode
            out.source = "memory"
        else:
            try:
                snap = self.sessions.store.load(name)
            except Exception as exc:
                raise _Refused(grpc.StatusCode.UNAVAILABLE, f"the store cannot be read ({exc}); retry") from None
            if snap is None:
                raise _Refused(grpc.StatusCode.NOT_FOUND, f"no session {name!r}: neither this server process nor "
                                                          f"the store holds it")
            i = _find(snap.names, snap.name_lengths, key)
            if i < 0:
                raise _Refused(grpc.StatusCode.NOT_FOUND, f"session {name!r} holds no series {request.series!r}")
            values = {k: a[i] for k, a in snap.arrays.items() if a.dtype.kind != "V"}
            mode = snap.mode
            out.source = "store"
        out.mode = MODE_NAMES.get(mode, str(mode))
        out.count, out.mean, out.spread = int(values["count"]), float(values["mean"]), float(values["spread"])
        out.stddev = _stddev(mode, out.count, out.spread)
        _stamp(out.last_seen, float(values.get("last_seen", 0.0)))
        for k, v in values.items():
            if k not in _PLAIN:
                out.state[k] = float(v)
        return out

    def _holder(self, name: str) -> str:
        try:
            lease = [s for s in self.sessions.store.sessions(self.sessions.clock()) if s.name == name]
        except Exception:
            lease = []
        return lease[0].lease_owner if lease and lease[0].lease_owner else "another server process"

    def _borrow(self, name: str) -> Session:
        """Attach `name` as an admin (any tenant, any mode; it must exist), for one change; detach it after."""
        if not name:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "a session name is needed")
        state_class = OtlpState if _kind(name) == pb.SESSION_KIND_OTLP else SeriesState
        try:
            return self.sessions.attach(name, None, None, state_class=state_class, tenant=None)
        except SessionError as exc:
            if exc.kind == "busy":
                raise _Refused(grpc.StatusCode.FAILED_PRECONDITION,
                               f"session {name!r} has an open stream on server process {self._holder(name)} (its "
                               f"lease holder); end that stream, or reset it through that process") from None
            code = {"missing": grpc.StatusCode.NOT_FOUND, "store": grpc.StatusCode.UNAVAILABLE,
                    "full": grpc.StatusCode.RESOURCE_EXHAUSTED}.get(exc.kind, grpc.StatusCode.FAILED_PRECONDITION)
            raise _Refused(code, str(exc)) from None

    def _slots(self, session: Session, name: str, series: str | None) -> np.ndarray:
        names, lengths, slots = session.state.table.live()
        if series is None:
            return slots
        i = _find(names, lengths, series.encode())
        if i < 0:
            raise _Refused(grpc.StatusCode.NOT_FOUND, f"session {name!r} holds no series {series!r}")
        return slots[i:i + 1]

    def _reset(self, name: str, series: str | None) -> pb.ResetResponse:
        if series is not None and not series:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, "ResetSeries needs a series")
        session = self.sessions.held(name)
        if session is not None and session.open and not session.lost:
            # open on a stream of this process: changed in place between two of its batches
            with session.lock:
                n = forget(session.state, self._slots(session, name, series))
                session.changed = True
            log.info("admin: session %r: %d series reset in place (its stream goes on)", name, n)
            return pb.ResetResponse(series_reset=n, how="in place")
        session = self._borrow(name)
        try:
            with session.lock:
                n = forget(session.state, self._slots(session, name, series))
                session.changed = session.changed or n > 0
        finally:
            self.sessions.detach(session).result()  # written through and released
        log.info("admin: session %r: %d series reset", name, n)
        return pb.ResetResponse(series_reset=n, how="through the store")

    def _delete(self, name: str) -> pb.DeleteSessionResponse:
        session = self.sessions.held(name)
        if session is not None and session.open and not session.lost:
            raise _Refused(grpc.StatusCode.FAILED_PRECONDITION,
                           f"session {name!r} has an open stream on this server process ({self.sessions.owner}, its "
                           f"lease holder); end that stream first (ResetSession works while it is open)")
        session = self._borrow(name)
        n = len(session.state.table)
        try:
            deleted = self.sessions.on_writer(self.sessions.store.delete, name, self.sessions.owner)
        except Exception as exc:
            self.sessions.detach(session)
            raise _Refused(grpc.StatusCode.UNAVAILABLE, f"session {name!r}: the store cannot delete it ({exc}); "
                                                        f"retry") from None
        self.sessions.detach(session, forget=True).result()
        log.info("admin: session %r deleted (%d series%s)", name, n,
                 "" if deleted else "; the store had lost its lease")
        return pb.DeleteSessionResponse(series=n)
