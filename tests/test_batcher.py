"""streamer.batcher against a real server: each add gets exactly its own outliers (indices within the add),
a lone metric is sent by the linger, messages respect their size limits, a refused stream fails its adds."""
from __future__ import annotations

import random
import threading

import grpc
import pytest

from streamer.client import Batcher, BatcherClosed, Client, ClientError, make_options


def caller_metrics(caller: int, n: int) -> list[tuple[str, float]]:
    rng = random.Random(caller)
    out = []
    for _ in range(n):
        x = rng.gauss(50, 5) + (60 if rng.random() < 0.025 else 0)
        out.append((f"caller-{caller}/series-{rng.randrange(3)}", x))
    return out


def test_each_add_gets_its_own_outliers(server):
    callers, each = 4, 400
    with Client(server.addr) as client:
        # alone, on a stream of its own: a series' state depends only on the order of its own values, which
        # the batcher keeps (one caller's adds stay in order), so coalescing must change nothing
        want = [next(iter(client.stream([caller_metrics(k, each)]))).outliers for k in range(callers)]
        assert all(want), "nothing flagged: the test would show nothing"
        got: list[list] = [[] for _ in range(callers)]
        errors = []
        with client.batcher(max_metrics=64, linger=1.0) as batcher:
            def run(k: int) -> None:
                metrics, rng, futures, i = caller_metrics(k, each), random.Random(-k), [], 0
                while i < len(metrics):
                    n = min(rng.randint(1, 5), len(metrics) - i)
                    futures.append((i, n, batcher.add(metrics[i:i + n])))
                    i += n
                for start, n, future in futures:
                    for o in future.result(timeout=60):
                        if not (0 <= o.index < n and o.value == metrics[start + o.index][1]):
                            errors.append(f"caller {k}: {o} is not among the add's metrics")
                        got[k].append(o._replace(index=o.index + start))

            threads = [threading.Thread(target=run, args=(k,)) for k in range(callers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, errors[:3]
        assert batcher.metrics == callers * each and batcher.messages >= callers * each // 64
        assert got == want


def test_linger_sends_a_lone_metric(server):
    with Client(server.addr) as client, client.batcher(linger=0.02) as batcher:
        for i in range(3):
            # 10 000 metrics a message never fill: only the linger sends this (a generous deadline, not a timing)
            assert batcher.add_one("lone", float(i)).result(timeout=30) == []
            assert batcher.messages == i + 1
    with pytest.raises(BatcherClosed):
        batcher.add_one("late", 1.0)


def test_messages_keep_to_their_limits(server):
    with Client(server.addr) as client:
        with client.batcher(max_metrics=50, linger=5.0) as batcher:
            futures = [batcher.add_one(f"s{i % 7}", float(i % 13)) for i in range(500)]
            assert all(f.result(timeout=60) is not None for f in futures)
        assert (batcher.messages, batcher.metrics) == (10, 500)
        # each metric here is 19 bytes encoded (tag and length, the name's 8, the value's 9): 100 hold 5
        with client.batcher(max_bytes=100, linger=5.0) as batcher:
            futures = [batcher.add_one("abcdef", 1.0 + i) for i in range(60)]
            for f in futures:
                f.result(timeout=60)
        assert (batcher.messages, batcher.metrics) == (12, 60)


def test_a_refused_stream_fails_its_adds(server):
    with Client(server.addr) as client:
        batcher = Batcher(client, options=make_options(threshold=-1.0))
        future = batcher.add([("x", 1.0)])
        with pytest.raises(ClientError) as info:
            future.result(timeout=30)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        batcher.close()
        with pytest.raises(ValueError):
            Batcher(client, linger=-1)


@pytest.mark.parametrize("first", ["streamer.batcher", "streamer.client"])
def test_either_module_imports_first(first):
    """streamer.client re-exports the Batcher of streamer/batcher.py, which imports streamer.client: a program may
    import either first (a fresh interpreter each)."""
    import subprocess
    import sys
    code = f"import {first}; from streamer.client import Batcher; from streamer.batcher import Batcher as B; " \
           "assert Batcher is B; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
