"""An answer larger than --max-message-mb: RESOURCE_EXHAUSTED naming the batch and the limit, nothing applied
(issue 17, point 7). Real servers on loopback ports, and the staged rollback of StreamDetector in process."""
from __future__ import annotations

import time
import uuid

import grpc
import numpy as np
import pytest

from streamer import detector
from streamer.client import Client, ClientError, make_options, to_metrics
from streamer.detector import Defaults, StreamDetector
from streamer.errors import ResourceExhausted
from streamer.pb import outliers_pb2 as pb
from streamer.state import SessionRegistry

CUM, EXP = pb.MODE_CUMULATIVE, pb.MODE_EXPONENTIAL
MIB = 1024 * 1024
NAMES = [f"dc1.rack07.host-{i:04d}.cpu.user" for i in range(100)]  # 29 bytes each
# Every series alternates 0, 1, 0, 1, ...: with a tiny threshold each value after the warmup is flagged.
TINY = dict(threshold=1e-6, warmup=2)
WARM = [(name, float(v)) for v in (0, 1) for name in NAMES]
PROBE = [(name, 0.5 + 0.01 * i) for i, name in enumerate(NAMES[:20])] + [(NAMES[0], 40.0)]


def alternating(n: int, names=NAMES):
    return [(names[i % len(names)], float((i // len(names)) % 2)) for i in range(n)]


BIG = alternating(20_000)  # ~0.84 MiB to send, ~1.33 MiB to answer (every metric flagged)


def _stream_until_error(client, batches, **kw):
    results = []
    with pytest.raises(ClientError) as err:
        for r in client.stream(batches, timeout=60, **kw):
            results.append(r)
    return results, err.value


def _retry_stream(client, batches, session, **kw):
    """The server frees a session when it sees the previous stream end, which can lag the client by a moment."""
    for _ in range(100):
        try:
            return list(client.stream(batches, session=session, timeout=30, **kw))
        except ClientError as exc:
            if exc.code != grpc.StatusCode.ALREADY_EXISTS:
                raise
            time.sleep(0.05)
    raise AssertionError("session never freed")


def _snapshot(server, session):
    state = server.server.sessions._sessions[session].state
    n = len(state.table)
    return (state.table.names(range(n)), state.count[:n].copy(), state.mean[:n].copy(),
            state.spread[:n].copy())


def _assert_same_state(a, b):
    assert a[0] == b[0]
    for x, y in zip(a[1:], b[1:]):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def small(make_server):
    return make_server(max_message_mb=1)


@pytest.mark.parametrize("new_names", [0, 50], ids=["known-names", "new-names"])
def test_stream_batch_with_too_large_an_answer_is_not_applied(small, new_names):
    """Rejected with the batch number and the limit; the session is then exactly as if it was never sent."""
    tag = uuid.uuid4().hex[:8]
    fresh = [f"new-{tag}-{i:03d}.mem.rss.bytes" for i in range(new_names)]
    rejected = BIG + [(name, 1.0) for name in fresh]
    probe = PROBE + [(name, 2.0) for name in fresh] + [(name, 3.0) for name in fresh]
    opts = make_options(**TINY)
    hit, clean = f"hit-{tag}", f"clean-{tag}"
    assert pb.OutliersRequest(metrics=to_metrics(rejected)).ByteSize() < MIB  # the request itself fits
    with Client(small.addr) as client:
        results, err = _stream_until_error(client, [WARM, rejected, PROBE], session=hit, options=opts)
        assert [r.batch for r in results] == [0]  # the warm-up batch was answered
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert err.details.startswith("batch 1: the answer is 1.3"), err.details
        assert f"{len(BIG)} outliers" in err.details
        assert "over the limit of 1 MiB (--max-message-mb)" in err.details
        assert err.details.endswith("the batch was not applied")
        # the same batches without the rejected one, on a session that never saw it
        list(client.stream([WARM], session=clean, options=opts, timeout=30))
        _assert_same_state(_snapshot(small, hit), _snapshot(small, clean))
        assert len(small.server.sessions._sessions[hit].state.table) == len(NAMES)  # no name of the batch kept
        after = _retry_stream(client, [probe], hit, options=opts)
        expected = _retry_stream(client, [probe], clean, options=opts)
    assert after == expected  # indices, means, stddevs, z-scores, names: all equal
    assert len(after[0].indices) > 10
    _assert_same_state(_snapshot(small, hit), _snapshot(small, clean))


def test_stream_batch_that_might_be_too_large_but_is_not_is_applied(small):
    """A batch whose answer could exceed the limit (so it is staged) but does not is answered and kept."""
    batches = [WARM, alternating(20_000), PROBE]  # the default threshold 2: nothing of the big batch is flagged
    opts = make_options(warmup=2)
    session = f"fits-{uuid.uuid4().hex[:8]}"
    with Client(small.addr) as client:
        results = list(client.stream(batches, session=session, options=opts, timeout=60))
    assert [r.batch for r in results] == [0, 1, 2]
    state = small.server.sessions._sessions[session].state
    assert state.count[:len(NAMES)].tolist() == [2 + 200 + 1 * (i < 20) + (i == 0) for i in range(len(NAMES))]


def test_unary_detect_with_too_large_an_answer(small):
    with Client(small.addr) as client:
        with pytest.raises(ClientError) as err:
            client.detect(BIG, threshold=1e-6, timeout=60)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = err.value.details
        assert details.startswith("request: the answer is 1.3") and f"{len(BIG)} outliers" in details, details
        assert "over the limit of 1 MiB (--max-message-mb)" in details
        assert "Sent message larger than max" not in details
        # the same batch with the default threshold has a small answer: answered
        assert client.detect(BIG, timeout=60).indices == []
        assert client.detect(values=[1, 2, 1, 2, 1, 2, 1, 2, 50]).indices == [8]


def _batch_answered_in(extra: int):
    """7543 two-value series and one of three values, all flagged: an answer of 1 MiB + 2 * extra - 226 bytes."""
    names = [f"dc1.rack07.host-{i:05d}.cpu.usr" for i in range(7543)]
    names[0] += "x" * extra
    return [(n, float(v)) for n in names for v in (0, 1)] + [("tt", 0.0), ("tt", 0.0), ("tt", 1.0)]


def test_an_answer_of_exactly_the_limit_is_sent(small):
    """The check agrees with grpc's, which refuses only answers larger than grpc.max_send_message_length."""
    fits, over = _batch_answered_in(113), _batch_answered_in(114)
    tiny = pb.DetectOptions(threshold=1e-6)
    assert len(detector.detect(_request(fits, options=tiny), Defaults())) == MIB  # 2 bytes more for `over`
    with Client(small.addr) as client:
        assert len(client.detect(fits, threshold=1e-6, timeout=60).indices) == len(fits)
        with pytest.raises(ClientError) as err:
            client.detect(over, threshold=1e-6, timeout=60)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"({MIB + 2} bytes, {len(over)} outliers), over the limit of 1 MiB" in err.value.details


def test_no_traceback_in_the_log_after_a_too_large_answer(cli_server):
    s = cli_server("--max-message-mb", "1")
    session = f"log-{uuid.uuid4().hex[:8]}"
    with Client(s.addr) as client:
        _, err = _stream_until_error(client, [WARM, BIG], session=session, options=make_options(**TINY))
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "batch 1" in err.details
        with pytest.raises(ClientError) as unary:
            client.detect(BIG, threshold=1e-6, timeout=60)
        assert unary.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # the server goes on: the session resumes, and a small Detect is answered
        assert len(_retry_stream(client, [PROBE], session)) == 1
        assert client.detect(values=[1, 2, 1, 2, 1, 2, 1, 2, 50]).indices == [8]
    assert s.terminate() == 0
    log = "".join(s.log)
    assert "Traceback" not in log and "ERROR" not in log, log
    assert "RESOURCE_EXHAUSTED: batch 1: the answer is" in log  # the stream's end, at INFO


# --- the staged rollback, in process ----------------------------------------------------------------------

def _request(batch, session: str = "", options: pb.DetectOptions | None = None) -> bytes:
    req = pb.OutliersRequest(metrics=to_metrics(batch), session=session)
    if options is not None:
        req.options.CopyFrom(options)
    return req.SerializeToString()


def _state(stream: StreamDetector):
    s = stream.state
    n = len(s.table)
    # the whole arrays: slots past the table must stay as they were (zeros) for the series added next
    return s.table.names(range(n)), s.count.copy(), s.mean.copy(), s.spread.copy()


@pytest.mark.parametrize("mode", [CUM, EXP])
@pytest.mark.parametrize("exclude", [False, True])
def test_staged_rollback_restores_the_state_and_the_table(mode, exclude):
    rng = np.random.default_rng(1701)
    opts = make_options(mode=mode, alpha=0.2 if mode == EXP else None, exclude_outliers=exclude, **TINY)
    names = NAMES[:30]
    fresh = [f"fresh-{i}" for i in range(40)]
    warm = [(names[i % 30], float(rng.normal())) for i in range(300)]
    # known names, repeated, then new names (some of them repeated too) between them
    big = [(name if rng.random() < 0.8 else fresh[rng.integers(0, 40)], float(rng.integers(0, 2)))
           for name in rng.choice(names, 3000)]
    probe = [(names[i % 30], float(rng.normal())) for i in range(90)] + [(name, 1.0) for name in fresh[:5]]

    free = StreamDetector(Defaults(), SessionRegistry(600, 10, 1000))
    free.process(_request(warm, options=opts))
    answer = free.process(_request(big))
    size, k = len(answer), len(pb.OutliersResponse.FromString(answer).indices)
    assert detector._answer_bound(len(_request(big)), len(big)) > size > 60_000, "the staged path, a big answer"

    def run(limit, session=""):
        stream = StreamDetector(Defaults(max_response_bytes=limit), SessionRegistry(600, 10, 1000))
        stream.process(_request(warm, session=session, options=opts))
        return stream

    exact = run(size)  # an answer of exactly the limit is sent (grpc refuses only larger ones) and applied
    assert exact.process(_request(big)) == answer
    _assert_same_arrays(_state(exact), _state(free))

    limited, reference = run(size - 1, session="s"), run(size - 1, session="t")
    with_trailer = size + 2  # a session's answer also says its state is in no durable store (ephemeral, field 7)
    before = _state(limited)
    for _ in range(2):  # twice: a rollback leaves everything as the next batch (or rollback) expects it
        with pytest.raises(ResourceExhausted) as err:
            limited.process(_request(big))
        assert str(err.value) == (f"batch 1: the answer is {with_trailer / MIB:.2f} MiB ({with_trailer} bytes, "
                                  f"{k} outliers), "
                                  f"over the limit of {(size - 1) / MIB:g} MiB (--max-message-mb); "
                                  f"the batch was not applied")
        assert limited.batch == 1
        _assert_same_arrays(_state(limited), before)
    assert limited.process(_request(probe)) == reference.process(_request(probe))  # batch 1 of both
    _assert_same_arrays(_state(limited), _state(reference))


def _assert_same_arrays(got, expected):
    """Same names; equal arrays, where the longer one (grown by a batch) holds only zeros past the other."""
    assert got[0] == expected[0]
    for a, b in zip(got[1:], expected[1:]):
        n = min(len(a), len(b))
        np.testing.assert_array_equal(a[:n], b[:n])
        assert not a[n:].any() and not b[n:].any()


def test_unary_detect_checks_the_answer_size_in_process():
    batch = alternating(3000, NAMES[:30])
    answer = detector.detect(_request(batch, options=pb.DetectOptions(threshold=1e-6)), Defaults())
    assert len(pb.OutliersResponse.FromString(answer).indices) == 3000
    exact = Defaults(max_response_bytes=len(answer))
    assert detector.detect(_request(batch, options=pb.DetectOptions(threshold=1e-6)), exact) == answer
    with pytest.raises(ResourceExhausted, match=rf"^request: the answer is .* \({len(answer)} bytes, 3000 "
                                                r"outliers\), over the limit of .* MiB \(--max-message-mb\)$"):
        detector.detect(_request(batch, options=pb.DetectOptions(threshold=1e-6)),
                        Defaults(max_response_bytes=len(answer) - 1))
