"""OTLP ingest on a real in-process server: keys, rates, histograms, partial_success, bad input, gzip, the
state kept in the store; and the rates kernel against its naive twin."""
from __future__ import annotations

import math
import threading

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as svc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

import naive
from streamer import rates
from streamer.client import Client
from streamer.detector import Defaults
from streamer.store import open_store
from streamer.wire import Options

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
T0 = 1_800_000_000 * 10**9  # ns
STEP = 10**8                 # 100 ms between points


def attrs(target, **pairs) -> None:
    for k, v in pairs.items():
        value = common_pb2.AnyValue(int_value=v) if isinstance(v, int) else common_pb2.AnyValue(string_value=v)
        target.add(key=k.replace("_", "."), value=value)


def request(*metrics, service="checkout", host="h1", pid=4242) -> svc.ExportMetricsServiceRequest:
    req = svc.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    attrs(rm.resource.attributes, service_name=service, host_name=host, process_pid=pid)
    rm.scope_metrics.add().metrics.extend(metrics)
    return req


def gauge(name, value, i, **point_attrs) -> metrics_pb2.Metric:
    m = metrics_pb2.Metric(name=name)
    p = m.gauge.data_points.add(time_unix_nano=T0 + i * STEP)
    if value is not None:
        p.as_double = value
    attrs(p.attributes, **point_attrs)
    return m


def counter(name, total, i, start=T0, **point_attrs) -> metrics_pb2.Metric:
    m = metrics_pb2.Metric(name=name)
    m.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    m.sum.is_monotonic = True
    p = m.sum.data_points.add(as_int=total, start_time_unix_nano=start, time_unix_nano=T0 + i * STEP)
    attrs(p.attributes, **point_attrs)
    return m


@pytest.fixture(scope="module")
def otlp_server(make_server):
    return make_server(otlp_options=Options(warmup=5, threshold=4.0))


@pytest.fixture
def export(otlp_server):
    with grpc.insecure_channel(otlp_server.addr) as ch:
        call = ch.unary_unary(EXPORT, request_serializer=svc.ExportMetricsServiceRequest.SerializeToString,
                              response_deserializer=svc.ExportMetricsServiceResponse.FromString)
        yield lambda req, **kw: call(req, timeout=30, **kw)


class Watcher:
    """A Watch subscriber collecting events on a thread."""

    def __init__(self, addr, **filters):
        self.client = Client(addr)
        self.watch = self.client.watch(**filters)
        self.events: list = []
        self.cv = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        for e in self.watch:
            with self.cv:
                self.events.append(e)
                self.cv.notify_all()

    def until(self, pred, timeout=30):
        with self.cv:
            assert self.cv.wait_for(lambda: pred(self.events), timeout), self.events
            return list(self.events)

    def close(self):
        self.watch.cancel()
        self.client.close()


def marker(addr, name="zz.marker"):
    """A private DetectStream whose last value is flagged: its event comes after every earlier one."""
    with Client(addr) as c:
        list(c.stream([[(name, float(x)) for x in [1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 100]]]))


def outliers(events, name="zz.marker"):
    return [e.outlier for e in events if e.WhichOneof("event") == "outlier" and e.outlier.series != name]


def test_a_gauge_and_a_counter_spike_reach_watch_with_keys_from_the_attributes(otlp_server, export):
    w = Watcher(otlp_server.addr)
    try:
        total = 0
        for i in range(20):
            total += 100 + (10 if i % 2 else 0) + (100_000 if i == 12 else 0)
            resp = export(request(gauge("room.temp", 50.0 + (1 if i % 2 else -1) + (500 if i == 12 else 0), i,
                                        room="a"),
                                  counter("http.requests", total, i, route="/pay"), service="spiky"))
            assert not resp.HasField("partial_success")
        marker(otlp_server.addr)
        events = w.until(lambda ev: any(e.outlier.series == "zz.marker" for e in ev))
    finally:
        w.close()
    flagged = {o.series: o for o in outliers(events)}
    assert set(flagged) == {'room.temp{host.name="h1",room="a",service.name="spiky"}',
                            'http.requests{host.name="h1",route="/pay",service.name="spiky"}'}
    temp = flagged['room.temp{host.name="h1",room="a",service.name="spiky"}']
    assert temp.value == 549.0 and temp.mean == pytest.approx(50.0, abs=0.2) and temp.zscore > 100
    assert temp.time.ToNanoseconds() == T0 + 12 * STEP and temp.origin == 2  # ORIGIN_OTLP
    assert temp.session == 'otlp:{host.name="h1",service.name="spiky"}'  # process.pid is not identifying
    rate = flagged['http.requests{host.name="h1",route="/pay",service.name="spiky"}']
    assert rate.value == pytest.approx(100_100 / 0.1)  # the increase per second, over 100 ms


def test_a_counter_reset_or_a_new_start_time_starts_over_without_a_flag(otlp_server, export):
    w = Watcher(otlp_server.addr, prefix="reset.")
    try:
        totals = [100 * i for i in range(10)] + [5, 105, 205]  # the process restarted: its counter too
        for i, t in enumerate(totals):
            export(request(counter("reset.requests", t, i), service="resets"))
        # a new start time (a new counter, larger than the old one): also starts over
        for i, t in enumerate([10**9, 10**9 + 100, 10**9 + 200], start=13):
            export(request(counter("reset.requests", t, i, start=T0 + 13 * STEP - 1), service="resets"))
        export(request(counter("reset.requests", 10**9 + 200 + 10_000, 16, start=T0 + 13 * STEP - 1),
                       service="resets"))  # a real spike: 100x the usual increase
        marker(otlp_server.addr, "reset.zz")
        events = w.until(lambda ev: any(e.outlier.series == "reset.zz" for e in ev))
    finally:
        w.close()
    assert [(o.series, o.value) for o in outliers(events, "reset.zz")] == \
        [('reset.requests{host.name="h1",service.name="resets"}', pytest.approx(10_000 / 0.1))]


def test_delta_sums_per_second_and_histograms_by_their_mean(otlp_server, export):
    w = Watcher(otlp_server.addr, prefix="latency")
    try:
        for i in range(12):
            delta = metrics_pb2.Metric(name="latency.bytes")
            delta.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
            delta.sum.data_points.add(as_double=20.0 + (i % 2) + (1000 if i == 10 else 0),
                                      start_time_unix_nano=T0 + i * STEP, time_unix_nano=T0 + (i + 1) * STEP)
            hist = metrics_pb2.Metric(name="latency.ms")
            hist.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
            # cumulative: 10 requests an interval, of 5 or 6 ms each, then one interval of 10 at 501 ms on average
            count, total = 10 * (i + 1), sum(10 * (5 + j % 2) for j in range(i + 1)) + (4950 if i >= 11 else 0)
            hist.histogram.data_points.add(count=count, sum=float(total), start_time_unix_nano=T0,
                                           time_unix_nano=T0 + (i + 1) * STEP)
            assert not export(request(delta, hist, service="lat")).HasField("partial_success")
        marker(otlp_server.addr, "latency.zz")
        events = w.until(lambda ev: any(e.outlier.series == "latency.zz" for e in ev))
    finally:
        w.close()
    got = sorted((o.series.split("{")[0], o.value) for o in outliers(events, "latency.zz"))
    assert got == [("latency.bytes", pytest.approx(1020.0 / 0.1)), ("latency.ms", pytest.approx(501.0))]


def test_unsupported_points_nan_and_missing_values_are_counted_in_partial_success(otlp_server, export):
    summary = metrics_pb2.Metric(name="rpc.summary")
    summary.summary.data_points.add(count=1, sum=2.0)
    summary.summary.data_points.add(count=1, sum=2.0)
    expo = metrics_pb2.Metric(name="rpc.expo")
    expo.exponential_histogram.data_points.add(count=1)
    resp = export(request(gauge("ok.gauge", 1.0, 0), gauge("nan.gauge", math.nan, 0), gauge("missing.gauge", None, 0),
                          summary, expo, service="bad"))
    ps = resp.partial_success
    assert ps.rejected_data_points == 5
    assert "2 data point(s) of type summary are not judged" in ps.error_message and "'rpc.summary'" in ps.error_message
    assert "1 data point(s) of type exponential_histogram" in ps.error_message
    assert "2 data point(s) had no value, or NaN" in ps.error_message and "'nan.gauge'" in ps.error_message


def test_points_over_the_series_limit_or_with_long_keys_are_rejected_not_dropped(make_server):
    server = make_server(defaults=Defaults(max_series=3))
    with grpc.insecure_channel(server.addr) as ch:
        call = ch.unary_unary(EXPORT, request_serializer=svc.ExportMetricsServiceRequest.SerializeToString,
                              response_deserializer=svc.ExportMetricsServiceResponse.FromString)
        first = call(request(*[gauge(f"g{j}", 1.0, 0) for j in range(5)], service="limited"), timeout=30)
        assert first.partial_success.rejected_data_points == 2
        assert "over the series limit of 3 series (--max-series)" in first.partial_success.error_message
        assert "'g3{" in first.partial_success.error_message
        # the known series are still judged; new ones still rejected; a key over 1024 bytes too
        again = call(request(gauge("g0", 2.0, 1), gauge("g9", 2.0, 1), gauge("x" * 1100, 1.0, 1),
                             service="limited"), timeout=30)
        assert again.partial_success.rejected_data_points == 2
        assert "series key over 1024 bytes" in again.partial_success.error_message


def test_malformed_export_bytes_are_invalid_argument(export, otlp_server):
    with grpc.insecure_channel(otlp_server.addr) as ch:
        raw = ch.unary_unary(EXPORT)  # bytes as they are
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\x0a\xff\xff\xff\x0f", timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not an ExportMetricsServiceRequest" in err.value.details()


def test_a_gzip_compressed_export_is_accepted(otlp_server, export):
    w = Watcher(otlp_server.addr, prefix="zipped")
    try:
        for i in range(10):
            resp = export(request(gauge("zipped", 5.0 + i % 2 + (100 if i == 9 else 0), i), service="gz"),
                          compression=grpc.Compression.Gzip)
            assert not resp.HasField("partial_success")
        events = w.until(lambda ev: len(outliers(ev)) >= 1)
    finally:
        w.close()
    assert [o.value for o in outliers(events)] == [106.0]  # 5 + 1 + 100


def test_the_otlp_state_is_in_the_store_and_a_restarted_server_goes_on_from_it(make_server, tmp_path):
    url = f"sqlite:///{tmp_path}/otlp.db"
    options = Options(warmup=5, threshold=4.0)
    first = make_server(store=url, otlp_options=options)
    total = 0
    with grpc.insecure_channel(first.addr) as ch:
        call = ch.unary_unary(EXPORT, request_serializer=svc.ExportMetricsServiceRequest.SerializeToString,
                              response_deserializer=svc.ExportMetricsServiceResponse.FromString)
        for i in range(8):
            total += 100 + i % 2
            call(request(counter("kept.requests", total, i), service="kept"), timeout=30)
    first.stop()
    store = open_store(url, 600)
    snap = store.load('otlp:{host.name="h1",service.name="kept"}')
    store.close()
    assert snap is not None and list(snap.arrays["count"]) == [7]  # 8 points, 7 rates
    assert list(snap.arrays["last_value"]) == [total] and list(snap.arrays["last_time"]) == [T0 + 7 * STEP]
    second = make_server(store=url, otlp_options=options)
    w = Watcher(second.addr, prefix="kept.")
    try:
        with grpc.insecure_channel(second.addr) as ch:
            call = ch.unary_unary(EXPORT, request_serializer=svc.ExportMetricsServiceRequest.SerializeToString,
                                  response_deserializer=svc.ExportMetricsServiceResponse.FromString)
            call(request(counter("kept.requests", total + 10_000, 8), service="kept"), timeout=30)
        events = w.until(lambda ev: len(outliers(ev)) >= 1)
    finally:
        w.close()
    # judged as a rate from the point before the restart, against its 7 rates: past the warmup
    assert [o.value for o in outliers(events)] == [pytest.approx(10_000 / 0.1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rates_kernel_matches_its_naive_twin(seed):
    rng = np.random.default_rng(seed)
    print("seed", seed)
    n, series = 400, 7
    kind = rng.integers(0, 5, n)
    ids = rng.integers(0, series, n)
    kind = np.array([int(rng.integers(0, 5)) if s < 2 else (1 if s < 5 else 4) for s in ids])  # per series
    value = np.cumsum(rng.uniform(0, 10, n)) * np.where(rng.uniform(size=n) < 0.05, 0.1, 1)  # some resets
    count = np.cumsum(rng.integers(0, 3, n)).astype(np.float64)
    time = T0 + np.cumsum(rng.integers(0, 3, n)) * STEP  # repeats included
    start = np.where(rng.uniform(size=n) < 0.03, T0 + 1, T0).astype(np.int64)
    last = [np.zeros(series), np.zeros(series), np.zeros(series, dtype=np.int64), np.zeros(series, dtype=np.int64)]
    out = np.empty(n)
    rates.derive(kind, ids, value, count, time, start, *last, out)
    want, memory = naive.derive(kind.tolist(), ids.tolist(), value.tolist(), count.tolist(), time.tolist(),
                                start.tolist(), {})
    assert [None if math.isnan(x) else x for x in out.tolist()] == [pytest.approx(x) if x is not None else None
                                                                    for x in want]
    for s, (v, c, t, st) in memory.items():
        assert (last[0][s], last[1][s], last[2][s], last[3][s]) == (v, c, t, st)


def test_a_rule_judges_the_otlp_series_it_matches_and_names_itself(make_server):
    from streamer.series_rules import Rule, RuleSet
    rules = RuleSet((Rule("rooms", prefix="room.", values=(("threshold", 1.5),)),))  # wins over --otlp-threshold
    server = make_server(otlp_options=Options(warmup=5, threshold=4.0), rules=rules)
    w = Watcher(server.addr)
    try:
        with grpc.insecure_channel(server.addr) as ch:
            call = ch.unary_unary(EXPORT, request_serializer=svc.ExportMetricsServiceRequest.SerializeToString,
                                  response_deserializer=svc.ExportMetricsServiceResponse.FromString)
            for i in range(11):  # mean 50, stddev 1; then 52.5: z 2.5 (about: the 11th value moves them)
                x = 52.5 if i == 10 else 50.0 + (1 if i % 2 else -1)
                call(request(gauge("room.temp", x, i), gauge("cpu.load", x, i), service="ruled"), timeout=30)
        marker(server.addr)
        events = w.until(lambda ev: any(e.outlier.series == "zz.marker" for e in ev))
    finally:
        w.close()
    got = [(o.series.split("{")[0], o.rule) for o in outliers(events)]
    assert got == [("room.temp", "rooms")]  # cpu.load matches no rule: --otlp-threshold 4 leaves it normal
