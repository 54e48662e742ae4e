"""Tenants by client certificate on a real `streamer serve` under mTLS (a CA, the server's and four clients'
certificates made at test time with trustme): a tenant's client cannot attach or watch another tenant's session
(PERMISSION_DENIED naming the session), while that tenant's own client can; Watch without a filter sees only the
caller's tenant; OTLP sources are per tenant; the admin API needs the admin role; an unmapped identity is refused.
And the [tenants] table's checks."""
from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
import sys

import grpc
import pytest
import trustme
from test_reflection import grpcurl  # noqa: F401 (the fixture: bin/grpcurl at the Makefile's pin)
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as otlp_service

from streamer.client import Client, ClientError, tls_credentials
from streamer.pb import admin_pb2, admin_pb2_grpc

CLIENTS = {"a": "collector-a.streamer.test", "b": "collector-b.streamer.test", "ops": "ops.streamer.test",
           "stranger": "stranger.streamer.test"}
CONFIG = """
lease_seconds = 3

[tenants]
identity = "san"
admin = ["ops.streamer.test"]

[[tenants.map]]
identity = "collector-a.streamer.test"
tenant = "team-a"

[[tenants.map]]
identity = "collector-b.streamer.test"
tenant = "team-b"
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    for who, san in CLIENTS.items():  # one DNS subject alternative name each, the identity [tenants] maps
        leaf = ca.issue_cert(san, common_name=f"cn-{who}")
        leaf.cert_chain_pems[0].write_to_path(str(d / f"{who}.crt"))
        leaf.private_key_pem.write_to_path(str(d / f"{who}.key"))
    return d


def creds(pki, who: str):
    return tls_credentials(str(pki / "ca.pem"), str(pki / f"{who}.crt"), str(pki / f"{who}.key"))


def tls_args(pki, who: str) -> list[str]:
    return ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / f"{who}.crt"),
            "--tls-key", str(pki / f"{who}.key")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(pki, tmp_path_factory):
    from conftest import CliServer
    d = tmp_path_factory.mktemp("tenants")
    (d / "streamer.toml").write_text(CONFIG)
    s = CliServer("--config", str(d / "streamer.toml"), "--store", f"sqlite:///{d}/state.db",
                  "--http-port", str(free_port()),
                  "--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
                  "--tls-client-ca", str(pki / "ca.pem"))
    yield s
    assert s.terminate() == 0
    assert "Traceback" not in "".join(s.log)
    s.close()


def stream(server, pki, who: str, session: str, batches) -> list:
    with Client(server.addr, timeout=30, credentials=creds(pki, who)) as client:
        return list(client.stream(batches, session=session, timeout=30))


def refused(fn) -> ClientError | grpc.RpcError:
    with pytest.raises((ClientError, grpc.RpcError)) as err:
        fn()
    return err.value


def code(exc) -> grpc.StatusCode:
    return exc.code if isinstance(exc, ClientError) else exc.code()


def export(server, pki, who: str, value: float) -> None:
    """One OTLP gauge point of the resource service.name=api, over the mTLS channel of `who`."""
    req = otlp_service.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    kv = rm.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "api"
    m = rm.scope_metrics.add().metrics.add()
    m.name = "latency"
    p = m.gauge.data_points.add()
    p.time_unix_nano, p.as_double = 1_700_000_000_000_000_000, value
    with grpc.secure_channel(server.addr, creds(pki, who)) as channel:
        channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                            request_serializer=otlp_service.ExportMetricsServiceRequest.SerializeToString,
                            response_deserializer=otlp_service.ExportMetricsServiceResponse.FromString)(
            req, timeout=30)


def list_sessions(server, pki, who: str) -> admin_pb2.ListSessionsResponse:
    with grpc.secure_channel(server.addr, creds(pki, who)) as channel:
        return admin_pb2_grpc.AdminStub(channel).ListSessions(admin_pb2.ListSessionsRequest(), timeout=30)


def test_a_tenant_cannot_attach_or_watch_another_tenants_session_but_its_owner_can(server, pki):
    assert "tenants by client certificate san: 2 identities in 2 tenant(s)" in "".join(server.log)
    stream(server, pki, "b", "b-session", [[("cpu", float(i % 3))] for i in range(10)])
    denied = refused(lambda: stream(server, pki, "a", "b-session", [[("cpu", 1.0)]]))
    assert code(denied) == grpc.StatusCode.PERMISSION_DENIED
    assert "'b-session'" in str(denied) and "team-b" not in str(denied)  # names the session, not its tenant
    with Client(server.addr, timeout=30, credentials=creds(pki, "a")) as client:
        watched = refused(lambda: client.watch(session="b-session"))
    assert code(watched) == grpc.StatusCode.PERMISSION_DENIED and "'b-session'" in str(watched)
    # B's own client continues its session: ten values in, the eleventh judged against them
    again = stream(server, pki, "b", "b-session", [[("cpu", 50.0)]])
    assert again[0].indices == [0]
    with Client(server.addr, timeout=30, credentials=creds(pki, "b")) as client:
        client.watch(session="b-session").cancel()  # B may watch its own session


def test_watch_without_a_filter_sees_only_the_callers_tenant(server, pki):
    with Client(server.addr, credentials=creds(pki, "a")) as ca, Client(server.addr, credentials=creds(pki, "b")) as cb:
        wa, wb = ca.watch(timeout=60), cb.watch(timeout=60)
        try:
            flat = [[("load", 1.0), ("load", 1.0)]] * 8  # past the warm-up
            # B's outlier first, then A's: A's first event must be its own (B's would have come first)
            stream(server, pki, "b", "b-watch", flat + [[("load", 99.0)]])
            stream(server, pki, "a", "a-watch", flat + [[("load", 77.0)]])
            first_a, first_b = next(iter(wa)), next(iter(wb))
        finally:
            wa.cancel()
            wb.cancel()
    assert (first_a.outlier.session, first_a.outlier.value) == ("a-watch", 77.0)
    assert (first_b.outlier.session, first_b.outlier.value) == ("b-watch", 99.0)


def test_otlp_sources_are_per_tenant_and_an_admin_lists_every_tenants_sessions(server, pki):
    stream(server, pki, "a", "a-session", [[("mem", 1.0)]])
    export(server, pki, "a", 1.0)
    export(server, pki, "b", 2.0)
    listed = list_sessions(server, pki, "ops")
    tenants = {s.name: s.tenant for s in listed.sessions}
    assert tenants['otlp@team-a:{service.name="api"}'] == "team-a"
    assert tenants['otlp@team-b:{service.name="api"}'] == "team-b"
    assert tenants["a-session"] == "team-a" and tenants["b-session"] == "team-b"
    # the admin CLI over mTLS, with the admin's certificate
    out = subprocess.run([sys.executable, "-m", "streamer", "admin", "sessions", "--addr", server.addr,
                          *tls_args(pki, "ops")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "b-session" in out.stdout and "team-b" in out.stdout and "team-a" in out.stdout


def test_the_admin_api_needs_the_admin_role(server, pki):
    for who in ("a", "stranger"):
        denied = refused(lambda: list_sessions(server, pki, who))
        assert code(denied) == grpc.StatusCode.PERMISSION_DENIED
        assert CLIENTS[who] in denied.details() and "admin role" in denied.details()
    out = subprocess.run([sys.executable, "-m", "streamer", "admin", "reset", "b-session", "--addr", server.addr,
                          *tls_args(pki, "a")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "PERMISSION_DENIED" in out.stderr
    assert "b-session" in [s.name for s in list_sessions(server, pki, "ops").sessions]  # the admin still can


def test_an_identity_the_map_does_not_name_is_refused(server, pki):
    with Client(server.addr, timeout=30, credentials=creds(pki, "stranger")) as client:
        denied = refused(lambda: client.detect(values=[1.0, 2.0], name="x"))
        assert code(denied) == grpc.StatusCode.PERMISSION_DENIED and CLIENTS["stranger"] in str(denied)
        assert code(refused(lambda: list(client.stream([[("x", 1.0)]], session="s", timeout=30)))) == \
            grpc.StatusCode.PERMISSION_DENIED
        assert code(refused(lambda: client.watch())) == grpc.StatusCode.PERMISSION_DENIED
    # the admin identity has no tenant: the data plane refuses it too
    with Client(server.addr, timeout=30, credentials=creds(pki, "ops")) as client:
        assert code(refused(lambda: client.detect(values=[1.0, 2.0], name="x"))) == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("table, message", [
    ('[tenants]\nidentity = "email"\n[[tenants.map]]\nidentity = "x"\ntenant = "t"\n',
     'line 2, key tenants.identity: must be one of "subject", "san"'),
    ('[tenants]\nadmin = "ops"\n[[tenants.map]]\nidentity = "x"\ntenant = "t"\n',
     "line 2, key tenants.admin: must be an array"),
    ('[tenants]\nidentity = "san"\n\n[[tenants.map]]\nidentity = "x"\ntenant = "t"\n\n[[tenants.map]]\n'
     'identity = "y"\ntenant = "has space"\n', "line 8, key tenants.map[1]: tenant must be a name"),
    ('[tenants]\nidentity = "san"\n', "maps no identity to a tenant"),
    ('[tenants]\nroles = 1\n[[tenants.map]]\nidentity = "x"\ntenant = "t"\n', "line 2, key tenants.roles: unknown"),
])
def test_a_bad_tenants_table_is_refused_with_its_line_and_key(tmp_path, table, message):
    path = tmp_path / "bad.toml"
    path.write_text(table)
    out = subprocess.run([sys.executable, "-m", "streamer", "config", "check", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_tenants_without_client_certificates_stop_serve_at_start(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[tenants]\n[[tenants.map]]\nidentity = "x"\ntenant = "t"\n')
    out = subprocess.run([sys.executable, "-m", "streamer", "serve", "--config", str(path), "--port", "0",
                          "--store", "memory://", "--metrics-port", "0", "--otlp-port", "0", "--http-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "needs --tls-cert, --tls-key and --tls-client-ca" in out.stderr


def test_grpcurl_with_the_admins_certificate_lists_and_calls_the_admin_api(grpcurl, server, pki):  # noqa: F811
    def run(who: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([grpcurl, "-cacert", str(pki / "ca.pem"), "-cert", str(pki / f"{who}.crt"),
                               "-key", str(pki / f"{who}.key"), *args], capture_output=True, text=True, timeout=60)
    listed = run("ops", server.addr, "list")
    assert listed.returncode == 0 and "streamer.admin.v1.Admin" in listed.stdout.split(), listed.stderr
    called = run("ops", "-d", '{"prefix": "b-"}', server.addr, "streamer.admin.v1.Admin/ListSessions")
    assert called.returncode == 0, called.stderr
    assert {s["tenant"] for s in json.loads(called.stdout)["sessions"]} == {"team-b"}
    denied = run("b", "-d", "{}", server.addr, "streamer.admin.v1.Admin/ListSessions")
    assert denied.returncode != 0 and "PermissionDenied" in denied.stderr and "admin role" in denied.stderr


def test_config_check_prints_the_tenants_table_as_a_file_that_reads_back(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(CONFIG)
    out = subprocess.run([sys.executable, "-m", "streamer", "config", "check", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '[[tenants.map]]\nidentity = "collector-b.streamer.test"\ntenant = "team-b"' in out.stdout
    again = tmp_path / "again.toml"
    again.write_text(out.stdout)
    second = subprocess.run([sys.executable, "-m", "streamer", "config", "check", str(again)], capture_output=True,
                            text=True, timeout=60)
    tail = out.stdout[out.stdout.index("[tenants]"):]
    assert second.returncode == 0 and second.stdout[second.stdout.index("[tenants]"):] == tail


def test_the_identity_is_the_subject_cn_or_the_first_mapped_alternative_name():
    from streamer.tenants import Tenants
    t = Tenants("subject", (("cn-a", "team-a"),), ("cn-ops",))
    assert t.caller({"x509_common_name": [b"cn-a"]}) == tenants_caller("cn-a", "team-a", False, True)
    assert t.caller({"x509_common_name": [b"cn-ops"]}) == tenants_caller("cn-ops", "", True, False)
    assert not t.caller({}).known  # no certificate identity at all
    s = Tenants("san", (("b.example", "team-b"),), ())
    auth = {"x509_common_name": [b"b.example"], "x509_subject_alternative_name": [b"other", b"b.example"]}
    assert s.caller(auth) == tenants_caller("b.example", "team-b", False, True)
    assert Tenants("san", (), (), default="shared").caller({"x509_subject_alternative_name": [b"z"]}) == \
        tenants_caller("z", "shared", False, True)


def tenants_caller(*fields):
    from streamer.tenants import Caller
    return Caller(*fields)


def test_under_tenants_the_page_shows_a_tenant_its_own_sessions_and_events_and_an_admin_all(server, pki):
    port = int(re.search(r"page on https://[^:]+:(\d+)/", "".join(server.log)).group(1))

    def get(who: str, path: str):
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        context.load_cert_chain(str(pki / f"{who}.crt"), str(pki / f"{who}.key"))
        return urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=context, timeout=30)

    def forbidden(who: str, path: str) -> str:
        with pytest.raises(urllib.error.HTTPError) as err:
            get(who, path)
        assert err.value.code == 403
        return err.value.read().decode()

    def names(who: str) -> set[str]:
        with get(who, "/api/sessions") as resp:
            return {s["name"] for s in json.loads(resp.read())["sessions"]}

    flat = [[("disk", 1.0), ("disk", 1.0)]] * 8  # past the warm-up
    stream(server, pki, "a", "a-page", flat)
    stream(server, pki, "b", "b-page", flat)
    assert {"a-page", "b-page"} <= names("ops")
    assert "a-page" in names("a") and not {n for n in names("a") if n.startswith("b-")}
    with get("a", "/api/series?session=a-page&q=dis") as resp:
        assert json.loads(resp.read())["series"] == ["disk"]
    for path in ("/api/series?session=b-page&q=", "/api/tap?session=b-page&series=disk",
                 "/api/events?session=b-page"):
        assert "'b-page' belongs to another tenant" in forbidden("a", path)
    assert "private streams" in forbidden("a", "/api/tap?series=disk")
    assert "no session 'c-page' of this tenant yet" in forbidden("a", "/api/tap?session=c-page&series=disk")
    assert CLIENTS["stranger"] in forbidden("stranger", "/api/sessions")
    # A's live list without a filter: B's spike first, then A's; the first event A is sent must be its own
    with get("a", "/api/events") as events:
        stream(server, pki, "b", "b-page", [[("disk", 90.0)]])
        stream(server, pki, "a", "a-page", [[("disk", 70.0)]])
        line = b""
        while not line.startswith(b"data: "):
            line = events.readline()
    first = json.loads(line[len(b"data: "):])[0]
    assert (first["session"], first["value"]) == ("a-page", 70.0), first
