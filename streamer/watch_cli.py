"""`streamer watch`: print the outliers a server finds, as they are found (a Watch subscriber)."""
from __future__ import annotations

import datetime
import json
import math
import sys

from streamer.client import Client, ClientError
from streamer.ops.tls import TLSError, channel_credentials
from streamer.pb import outliers_pb2 as pb

ORIGINS = {pb.ORIGIN_STREAM: "stream", pb.ORIGIN_OTLP: "otlp"}
KINDS = {"outliers": pb.WATCH_OUTLIERS, "episodes": pb.WATCH_EPISODES, "all": pb.WATCH_ALL}
EPISODE_KINDS = {pb.EpisodeEvent.OPENED: "opened", pb.EpisodeEvent.UPDATED: "updated",
                 pb.EpisodeEvent.RESOLVED: "resolved"}


def _stamp(ts) -> str:
    when = datetime.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(x: float):
    return x if math.isfinite(x) else repr(x)  # JSON has no Infinity: "inf", "-inf", "nan" as strings


def line(event: pb.WatchEvent, as_json: bool) -> str | None:
    kind = event.WhichOneof("event")
    if kind == "dropped":
        d = event.dropped
        if as_json:
            return json.dumps({"dropped": d.count, "dropped_total": d.total})
        return f"-- {d.count} outlier(s) missed: this reader was too slow ({d.total} since it started)"
    if kind == "episode":
        e = event.episode
        what = EPISODE_KINDS.get(e.kind, "unknown")
        if as_json:
            return json.dumps({"episode": e.episode, "id": e.id, "kind": what, "series": e.series, "source": e.source,
                               "started": _stamp(e.started), "ended": _stamp(e.ended) if e.HasField("ended") else None,
                               "count": e.count, "value": _number(e.value), "peak_value": _number(e.peak_value),
                               "peak_zscore": _number(e.peak_zscore)})
        return (f"{_stamp(e.ended if e.HasField('ended') else e.started)} episode {what} {e.series} "
                f"count={e.count} peak={e.peak_value:.6g} |z|={e.peak_zscore:.3f} ({e.source}, {e.episode})")
    if kind != "outlier":
        return None  # a kind of event this version does not know
    o = event.outlier
    stamp = _stamp(o.time)
    if as_json:
        return json.dumps({"time": stamp, "series": o.series, "value": _number(o.value), "mean": _number(o.mean),
                           "stddev": _number(o.stddev), "zscore": _number(o.zscore),
                           "origin": ORIGINS.get(o.origin, "unknown"), "session": o.session})
    return (f"{stamp} {o.series} value={o.value:.6g} mean={o.mean:.6g} stddev={o.stddev:.6g} "
            f"z={o.zscore:.3f} ({ORIGINS.get(o.origin, 'unknown')} {o.session or '-'})")


def run(args) -> int:
    """The watch verb on parsed flags (see cli.py); the exit status."""
    try:
        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key) if (
            args.tls or args.tls_ca or args.tls_cert) else None
        seen = 0
        with Client(args.addr, credentials=credentials) as client, \
                client.watch(session=args.session, prefix=args.prefix, kinds=KINDS[args.kinds]) as watch:
            print(f"watching {args.addr}" + (f", session {args.session!r}" if args.session else "")
                  + (f", series starting {args.prefix!r}" if args.prefix else ""), file=sys.stderr, flush=True)
            for event in watch:
                text = line(event, args.json)
                if text is not None:
                    print(text, flush=True)
                if event.WhichOneof("event") in ("outlier", "episode"):
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        return 0
    except TLSError as exc:
        print(f"streamer watch: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"streamer watch: {args.addr}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"streamer watch: {args.addr}: the server ended the stream", file=sys.stderr)
    return 1
