"""Hostile bytes against a real server in its own process: each gets INVALID_ARGUMENT under a deadline, and
health, other calls and SIGTERM keep working, also while the server chews on the costliest requests."""
from __future__ import annotations

import random
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import CliServer
from hostile import FROZE_THE_SERVER, METRIC_TAGS, OPTIONS_TAGS, TIMESTAMP_TAGS, TOP_TAGS, length_prefixed, overlong
from oracle import reference

from streamer.pb import outliers_pb2 as pb
from streamer.pb import outliers_pb2_grpc

DEADLINE = 20  # seconds: generous on a loaded machine; a spinning server never answers at all


@pytest.fixture(scope="module")
def server():
    s = CliServer()
    yield s
    assert s.terminate() == 0
    assert "Traceback" not in "".join(s.log)


def serving(channel) -> bool:
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=DEADLINE).status
    return status == health_pb2.HealthCheckResponse.SERVING


def rejected_requests() -> list[bytes]:
    """The three requests that froze the server, their metric, options and timestamp variants, and random
    overlong tags (fixed seed), all of which protobuf rejects."""
    cases = list(FROZE_THE_SERVER)
    for k in (5, 6, 7):
        for t in METRIC_TAGS:
            cases.append(length_prefixed(0x0A, overlong(t, k, True)))
        for t in OPTIONS_TAGS:
            cases.append(length_prefixed(0x12, overlong(t, k, True)))
        for t in TIMESTAMP_TAGS:
            cases.append(length_prefixed(0x0A, length_prefixed(0x0A, overlong(t, k, True))))
    rnd = random.Random(17)
    for _ in range(40):
        t = rnd.choice(TOP_TAGS + METRIC_TAGS + OPTIONS_TAGS + TIMESTAMP_TAGS)
        cases.append(overlong(t, rnd.randint(5, 9), rnd.random() < 0.8) + rnd.randbytes(rnd.randint(0, 6)))
    cases = [c for c in dict.fromkeys(cases) if reference(c) is None]
    assert len(cases) > 40
    return cases


REJECTED = rejected_requests()


@pytest.mark.parametrize("payload", REJECTED, ids=bytes.hex)
def test_unary_detect_answers_invalid_argument_and_health_keeps_answering(server, payload):
    with grpc.insecure_channel(server.addr) as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/pb.Outliers/Detect")(payload, timeout=DEADLINE)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "not a valid OutliersRequest" in err.value.details()
        assert serving(channel)


@pytest.mark.parametrize("payload", FROZE_THE_SERVER + REJECTED[3::7], ids=bytes.hex)
def test_a_stream_batch_answers_invalid_argument_after_the_good_batches(server, payload):
    good = pb.OutliersRequest(metrics=[pb.Metric(name="cpu", value=1.0)]).SerializeToString()
    with grpc.insecure_channel(server.addr) as channel:
        call = channel.stream_stream("/pb.Outliers/DetectStream")(iter([good, good, payload]), timeout=DEADLINE)
        answers = []
        with pytest.raises(grpc.RpcError) as err:
            for answer in call:
                answers.append(answer)
        assert len(answers) == 2
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("batch 2: request is not a valid OutliersRequest")
        assert serving(channel)


def costliest_requests() -> list[bytes]:
    """Requests that make the decoder do the most work per byte: a byte-sized unknown field after another
    (one loop iteration a byte), deeply nested groups, and tiny metrics; under and over the 1 MiB above which
    the server decodes off its event loop."""
    out = []
    for size in (900_000, 3_000_000):
        out.append(b"\x48\x00" * (size // 2))                          # unknown varint fields, 2 bytes each
        nest = b"\x4b" * 99 + b"\x4c" * 99                               # 99 nested groups (the limit is 100)
        out.append(nest * (size // len(nest)))
        out.append(b"\x0a\x00" * (size // 2))                          # empty metrics: a column row each
    return out


def test_the_costliest_requests_do_not_stop_health_other_calls_or_sigterm():
    server = CliServer("--max-message-mb", "8", "--grace-seconds", "5")
    stop = threading.Event()
    errors: list = []

    def flood():
        with grpc.insecure_channel(server.addr, options=[("grpc.max_send_message_length", 8 << 20)]) as ch:
            detect = ch.unary_unary("/pb.Outliers/Detect")
            while not stop.is_set():
                for payload in costliest_requests():
                    try:
                        detect(payload, timeout=60)
                    except grpc.RpcError as exc:
                        # Only once SIGTERM is on its way may a call fail: refused (UNAVAILABLE), or one that grpc
                        # had taken just as the server began to stop, cancelled (CANCELLED; seen once in CI).
                        ending = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                        if exc.code() not in ending or not stop.is_set():
                            errors.append(exc)
    threads = [threading.Thread(target=flood) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        with grpc.insecure_channel(server.addr) as channel:
            stub = outliers_pb2_grpc.OutliersStub(channel)
            classic = pb.OutliersRequest(metrics=[pb.Metric(name="cpu", value=v) for v in [1, 2, 1, 2, 1, 2, 50]])
            for _ in range(20):
                assert serving(channel)
                assert list(stub.Detect(classic, timeout=DEADLINE).indices) == [6]
    finally:
        stop.set()
        code = server.terminate(timeout=30)
        for t in threads:
            t.join(60)
    assert code == 0
    assert not errors, errors[:3]
    assert "Traceback" not in "".join(server.log)
