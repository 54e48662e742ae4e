"""`streamer admin ...`: the admin API (protos/admin.proto) from the command line, as tables or JSON."""
from __future__ import annotations

import argparse
import datetime
import json
import sys

# grpc and the generated modules are imported where the calls are made (run), not here: every `streamer` command
# builds this verb's parser (add_parser), and only `streamer admin` needs them (tests/test_cli_startup.py)


def add_parser(sub, path_type) -> None:
    """The `admin` verb and its commands, on cli.py's subparsers."""
    a = sub.add_parser("admin", help="list, show, reset and delete sessions; reload the config file (admin API)",
                       description="Drive the server's admin API (streamer.admin.v1.Admin). Under [tenants] (mTLS) "
                                   "the client certificate must have the admin role.")
    common = argparse.ArgumentParser(add_help=False)  # every command's flags, after the command's name
    common.add_argument("--addr", "--target", dest="addr", default="localhost:9999", help="server address host:port")
    common.add_argument("--json", action="store_true", help="print the answer as JSON (protobuf's JSON mapping)")
    common.add_argument("--timeout", type=float, default=30.0, help="deadline of the call in seconds")
    tg = common.add_argument_group("TLS (a server started with --tls-cert)")
    tg.add_argument("--tls", action="store_true", help="connect over TLS, trusting the system's CAs")
    tg.add_argument("--tls-ca", type=path_type, default=None, help="PEM file of the CA of the server's certificate")
    tg.add_argument("--tls-cert", type=path_type, default=None, help="PEM file of this client's certificate (mTLS)")
    tg.add_argument("--tls-key", type=path_type, default=None, help="PEM file of the client certificate's key")
    cmd = a.add_subparsers(dest="admin_command", required=True)
    s = cmd.add_parser("sessions", parents=[common],
                       help="every session and OTLP source: tenant, series, last activity, lease")
    s.add_argument("--prefix", default="", help="only names starting with this (otlp: for the OTLP sources)")
    g = cmd.add_parser("series", parents=[common], help="one series' state (count, mean, stddev, ...)")
    g.add_argument("session")
    g.add_argument("key", help="the series key")
    r = cmd.add_parser("reset", parents=[common], help="forget a session's series (all, or the one KEY): they start "
                                                       "afresh")
    r.add_argument("session")
    r.add_argument("key", nargs="?", default=None, help="only this series")
    d = cmd.add_parser("delete", parents=[common], help="remove a session from memory and the store")
    d.add_argument("session")
    cmd.add_parser("reload", parents=[common], help="reload the server's config file (as SIGHUP)")


def _when(ts) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    t = datetime.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, datetime.timezone.utc)
    return t.isoformat(timespec="seconds").replace("+00:00", "Z")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _sessions(resp) -> str:
    """A ListSessionsResponse as a table."""
    from streamer.pb import admin_pb2 as pb
    kinds = {pb.SESSION_KIND_STREAM: "stream", pb.SESSION_KIND_OTLP: "otlp"}
    rows = [["NAME", "KIND", "TENANT", "SERIES", "LAST ACTIVITY", "LEASE", "HERE"]]
    for s in resp.sessions:
        lease = "-" if not s.lease_owner else ("this process" if s.lease_owner == resp.process else s.lease_owner)
        here = "open" if s.open_here else "held" if s.held_here else "-"
        rows.append([s.name, kinds.get(s.kind, "?"), s.tenant or "-", str(s.series), _when(s.last_activity), lease,
                     here])
    return _table(rows) + f"\n{len(resp.sessions)} session(s)"


def _series(resp) -> str:
    """A GetSeriesResponse as lines."""
    lines = [f"session  {resp.session}", f"series   {resp.series}", f"mode     {resp.mode}",
             f"count    {resp.count}", f"mean     {resp.mean!r}", f"stddev   {resp.stddev!r}",
             f"spread   {resp.spread!r}", f"seen     {_when(resp.last_seen)}"]
    lines += [f"{k:<8} {v!r}" for k, v in sorted(resp.state.items())]
    return "\n".join(lines + [f"(from {resp.source})"])


def run(args: argparse.Namespace) -> int:
    """The admin verb on parsed flags; the exit status (1 with the server's message on a refused call)."""
    import grpc
    from google.protobuf import json_format

    from streamer.ops.tls import TLSError, channel_credentials
    from streamer.pb import admin_pb2 as pb
    from streamer.pb import admin_pb2_grpc
    try:
        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key) if (
            args.tls or args.tls_ca or args.tls_cert) else None
    except TLSError as exc:
        print(f"streamer admin: {exc}", file=sys.stderr)
        return 1
    channel = grpc.secure_channel(args.addr, credentials) if credentials else grpc.insecure_channel(args.addr)
    stub = admin_pb2_grpc.AdminStub(channel)
    c = args.admin_command
    try:
        if c == "sessions":
            resp = stub.ListSessions(pb.ListSessionsRequest(prefix=args.prefix), timeout=args.timeout)
            text = _sessions(resp)
        elif c == "series":
            resp = stub.GetSeries(pb.GetSeriesRequest(session=args.session, series=args.key), timeout=args.timeout)
            text = _series(resp)
        elif c == "reset":
            if args.key is None:
                resp = stub.ResetSession(pb.ResetSessionRequest(session=args.session), timeout=args.timeout)
            else:
                resp = stub.ResetSeries(pb.ResetSeriesRequest(session=args.session, series=args.key),
                                        timeout=args.timeout)
            text = f"session {args.session!r}: {resp.series_reset} series reset ({resp.how})"
        elif c == "delete":
            resp = stub.DeleteSession(pb.DeleteSessionRequest(session=args.session), timeout=args.timeout)
            text = f"session {args.session!r} deleted ({resp.series} series)"
        else:
            resp = stub.Reload(pb.ReloadRequest(), timeout=args.timeout)
            text = resp.message or "reloaded"
    except grpc.RpcError as exc:
        print(f"streamer admin {c}: {args.addr}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    if args.json:
        text = json.dumps(json_format.MessageToDict(resp, preserving_proto_field_name=True,
                                                    always_print_fields_with_no_presence=True))
    print(text)
    return 0
