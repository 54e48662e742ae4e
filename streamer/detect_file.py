"""`streamer detect FILE`: a file's metrics judged by the server, read and encoded in bounded memory.

Plainly, as one Detect request (the answer equals one Detect of every row; the request is built as bytes, not
as an object per row, and may not exceed --max-message-mb). With --stream, in batches through DetectStream,
whose rule differs: each value is judged against the values of its series before it. cli.py parses the flags.
"""
from __future__ import annotations

import json
import sys
from typing import Iterator

from streamer.client import Client, ClientError, Outlier, make_options
from streamer.metricfile import FileError, MetricFile
from streamer.ops.tls import TLSError, channel_credentials
from streamer.pb import outliers_pb2 as pb
from streamer.progress import Progress
from streamer.request_bytes import RequestBuilder, options_field

PROGRESS_EVERY = 4096  # rows between progress checks: a clock read per row would cost more than the check


class Answer:
    """What the server said about the file: outliers with indices into the file's rows (0-based)."""

    def __init__(self) -> None:
        self.rows = 0
        self.batches = 0
        self.outliers: list[Outlier] = []


def _too_big(label: str, line: int, rows: int, limit_mb: int, stream: bool) -> FileError:
    if stream:
        return FileError(f"{label}:{line}: one batch reached the {limit_mb} MiB limit of a request "
                         f"(--max-message-mb) at this row; use a smaller --batch-size")
    return FileError(f"{label}:{line}: the file does not fit in one Detect request: it reached the {limit_mb} MiB "
                     f"limit (--max-message-mb) at row {rows:,}; raise --max-message-mb (at most 2047, and the "
                     f"server's --max-message-mb must allow it too), or send it in batches with --stream")


def detect_once(file: MetricFile, client: Client, options: pb.DetectOptions | None, limit_mb: int,
                timeout: float | None, progress: Progress) -> Answer:
    """Every row in one Detect request, built as bytes as the file is read."""
    limit = limit_mb * 1024 * 1024
    tail = options_field(options)
    builder = RequestBuilder()
    add = builder.add
    rows = 0
    for rows, row in enumerate(file.rows(), 1):
        add(*row)
        if rows % PROGRESS_EVERY == 0:
            if builder.size + len(tail) > limit:
                break
            progress.update(file.bytes_read, rows)
    if builder.size + len(tail) > limit:
        raise _too_big(file.label, file.line, rows, limit_mb, stream=False)
    request = builder.take(tail)
    progress.note(f"{rows:,} rows sent to Detect ({len(request) / 1e6:.1f} MB), waiting for the answer")
    answer = Answer()
    result = client.detect_bytes(request, timeout=timeout)
    del request
    answer.rows, answer.batches, answer.outliers = rows, 1, result.outliers
    return answer


def detect_stream(file: MetricFile, client: Client, options: pb.DetectOptions | None, batch_size: int,
                  limit_mb: int, timeout: float | None, progress: Progress) -> Answer:
    """The rows in batches of `batch_size` through one DetectStream (no session); indices made file-wide."""
    limit = limit_mb * 1024 * 1024
    failed: list[FileError] = []
    answer = Answer()

    def requests() -> Iterator[bytes]:
        # Runs on grpc's thread: an exception here would only cancel the call, so a bad row is kept for the
        # caller and the stream ends; grpc sends the next batch once the previous one is written.
        builder = RequestBuilder()
        tail = options_field(options)  # the first request carries the options
        rows = 0
        try:
            for rows, row in enumerate(file.rows(), 1):
                builder.add(*row)
                if builder.count == batch_size:
                    if builder.size + len(tail) > limit:
                        raise _too_big(file.label, file.line, rows, limit_mb, stream=True)
                    yield builder.take(tail)
                    tail = b""
                    progress.update(file.bytes_read, rows, "sent")
            if builder.count:
                if builder.size + len(tail) > limit:
                    raise _too_big(file.label, file.line, rows, limit_mb, stream=True)
                yield builder.take(tail)
        except FileError as exc:
            failed.append(exc)
        answer.rows = rows

    try:
        for result in client.stream_bytes(requests(), timeout=timeout):
            if failed:
                break
            offset = result.batch * batch_size  # every batch but the last has exactly batch_size rows
            answer.outliers.extend(o._replace(index=o.index + offset) for o in result.outliers)
            answer.batches += 1
    except ClientError:
        if not failed:
            raise
    if failed:  # the file's problem first: the stream may have failed only because it was cut short
        raise failed[0]
    return answer


def print_answer(answer: Answer, as_json: bool, stream: bool, batch_size: int) -> None:
    out = sys.stdout
    if as_json:  # what json.dumps({"indices": [...], "outliers": [...]}) prints, written piece by piece
        out.write('{"indices": [' + ", ".join(str(o.index) for o in answer.outliers) + '], "outliers": [')
        for i, o in enumerate(answer.outliers):
            out.write((", " if i else "") + json.dumps(o._asdict()))
        out.write("]}\n")
        return
    how = (f" (DetectStream, {answer.batches} batch(es) of up to {batch_size:,}: each value judged against "
           f"the values of its series before it)" if stream else "")
    print(f"{len(answer.outliers)} outlier(s) in {answer.rows} metric(s){how}")
    if answer.outliers:
        print(f"{'index':>7} {'name':<20} {'value':>14} {'mean':>14} {'stddev':>14} {'zscore':>9}")
    for o in answer.outliers:
        print(f"{o.index:>7} {o.name:<20} {o.value:>14.6g} {o.mean:>14.6g} {o.stddev:>14.6g} {o.zscore:>9.3f}")


def run(args) -> int:
    """The detect verb on parsed flags (see cli.py); the exit status."""
    options = make_options(threshold=args.threshold, warmup=args.warmup, mode=args.mode, alpha=args.alpha,
                           exclude_outliers=bool(args.exclude_outliers), exclude_limit=args.exclude_limit,
                           cooldown=args.cooldown, score=args.score)
    try:
        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key) if (
            args.tls or args.tls_ca or args.tls_cert) else None
        with MetricFile(args.file) as file, Progress(file.size, args.progress) as progress, \
                Client(args.addr, timeout=args.timeout, max_message_mb=args.max_message_mb,
                       credentials=credentials) as client:
            if args.stream:
                answer = detect_stream(file, client, options, args.batch_size, args.max_message_mb, args.timeout,
                                       progress)
            else:
                answer = detect_once(file, client, options, args.max_message_mb,
                                     30.0 if args.timeout is None else args.timeout, progress)
    except (FileError, TLSError) as exc:
        print(f"streamer detect: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"streamer detect: {args.addr}: {exc}", file=sys.stderr)
        return 1
    print_answer(answer, args.json, args.stream, args.batch_size)
    return 0


__all__ = ["Answer", "detect_once", "detect_stream", "print_answer", "run"]
