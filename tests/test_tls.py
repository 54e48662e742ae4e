"""TLS and mutual TLS on a real `streamer serve` (its own process), with a CA, server and client certificates made
at test time (trustme): a TLS client works, a plaintext one fails, under mTLS a client without a certificate or
with one of another CA is refused; `streamer detect` over TLS; bad files stop serve at start in one line."""
from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamer.client import Client, ClientError, tls_credentials

SAMPLE = [1.0] * 9 + [9.0]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """PEM files: ca (the server's and clients' CA), server.pem/.key, client.pem/.key, and a client of another CA."""
    d = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_pem.write_to_path(str(d / "other-ca.pem"))
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(d / "server.crt"))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    for name, issuer in (("client", ca), ("stranger", other)):
        leaf = issuer.issue_cert(f"{name}@streamer.test")
        leaf.cert_chain_pems[0].write_to_path(str(d / f"{name}.crt"))
        leaf.private_key_pem.write_to_path(str(d / f"{name}.key"))
    return d


def detect(addr: str, credentials) -> list[int]:
    with Client(addr, timeout=10, credentials=credentials) as client:
        return client.detect(values=SAMPLE, name="cpu").indices


def refused(addr: str, credentials) -> grpc.StatusCode:
    with pytest.raises(ClientError) as err:
        detect(addr, credentials)
    return err.value.code


def plaintext_detect(addr: str) -> grpc.StatusCode:
    with Client(addr, timeout=10) as client:
        with pytest.raises(ClientError) as err:
            client.detect(values=SAMPLE, name="cpu")
    return err.value.code


def test_tls_client_works_plaintext_and_untrusting_clients_fail(cli_server, pki):
    server = cli_server("--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"))
    assert "ready on 127.0.0.1:" in "".join(server.log) and ", TLS (" in "".join(server.log)
    assert detect(server.addr, tls_credentials(ca=str(pki / "ca.pem"))) == [9]
    # the same TLS channel reaches health and reflection
    with grpc.secure_channel(server.addr, tls_credentials(ca=str(pki / "ca.pem"))) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert plaintext_detect(server.addr) == grpc.StatusCode.UNAVAILABLE
    assert refused(server.addr, tls_credentials(ca=str(pki / "other-ca.pem"))) == grpc.StatusCode.UNAVAILABLE
    # a client certificate is not asked for without --tls-client-ca, and does no harm
    assert detect(server.addr, tls_credentials(str(pki / "ca.pem"), str(pki / "client.crt"),
                                               str(pki / "client.key"))) == [9]
    assert server.terminate() == 0


def test_mtls_refuses_clients_without_a_certificate_of_its_ca(cli_server, pki):
    server = cli_server("--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
                        "--tls-client-ca", str(pki / "ca.pem"))
    assert "TLS, client certificates required" in "".join(server.log)
    ca = str(pki / "ca.pem")
    assert detect(server.addr, tls_credentials(ca, str(pki / "client.crt"), str(pki / "client.key"))) == [9]
    assert refused(server.addr, tls_credentials(ca)) == grpc.StatusCode.UNAVAILABLE
    assert refused(server.addr, tls_credentials(ca, str(pki / "stranger.crt"), str(pki / "stranger.key"))) \
        == grpc.StatusCode.UNAVAILABLE
    assert plaintext_detect(server.addr) == grpc.StatusCode.UNAVAILABLE
    # and a stream over mTLS
    with Client(server.addr, timeout=10, credentials=tls_credentials(ca, str(pki / "client.crt"),
                                                                     str(pki / "client.key"))) as client:
        assert [r.batch for r in client.stream([[("a", 1.0)], [("a", 2.0)]], timeout=30)] == [0, 1]
    assert server.terminate() == 0
    assert "Traceback" not in "".join(server.log)


def run_detect(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer", "detect", *args], capture_output=True, text=True,
                          timeout=120)


def test_streamer_detect_over_tls_and_mtls(cli_server, pki, tmp_path):
    data = tmp_path / "m.csv"
    data.write_text("name,value\n" + "".join(f"cpu,{v}\n" for v in SAMPLE))
    server = cli_server("--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
                        "--tls-client-ca", str(pki / "ca.pem"))
    ok = run_detect(str(data), "--addr", server.addr, "--json", "--tls-ca", str(pki / "ca.pem"),
                    "--tls-cert", str(pki / "client.crt"), "--tls-key", str(pki / "client.key"))
    assert ok.returncode == 0, ok.stderr
    assert '"indices": [9]' in ok.stdout
    no_cert = run_detect(str(data), "--addr", server.addr, "--tls-ca", str(pki / "ca.pem"))
    assert no_cert.returncode == 1 and "UNAVAILABLE" in no_cert.stderr, no_cert.stderr
    half = run_detect(str(data), "--addr", server.addr, "--tls-cert", str(pki / "client.crt"))
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr
    missing = run_detect(str(data), "--addr", server.addr, "--tls-ca", str(tmp_path / "nope.pem"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"streamer detect: cannot read the CA file {tmp_path / 'nope.pem'}: No such " \
                                     f"file or directory"
    assert server.terminate() == 0


def start_fails(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamer", "serve", "--host", "127.0.0.1", "--port", "0",
                           "--metrics-port", "0", "--otlp-port", "0", "--http-port", "0", "--store", "memory://",
                           *args],
                          capture_output=True, text=True, timeout=120)


def test_bad_tls_flags_and_files_stop_serve_at_start_in_one_line(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cert, key = str(pki / "server.crt"), str(pki / "server.key")
    usage = {("--tls-cert", cert): "--tls-cert and --tls-key go together",
             ("--tls-key", key): "--tls-cert and --tls-key go together",
             ("--tls-client-ca", str(pki / "ca.pem")): "--tls-client-ca: needs --tls-cert and --tls-key"}
    for args, words in usage.items():
        out = start_fails(*args)
        assert out.returncode == 2 and words in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    files = {("--tls-cert", str(tmp_path / "none.crt"), "--tls-key", key): "cannot read the certificate",
             ("--tls-cert", str(garbage), "--tls-key", key): "is not a PEM file",
             ("--tls-cert", cert, "--tls-key", str(pki / "client.key")): "cannot be used together",
             ("--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(garbage)): "client CA file"}
    for args, words in files.items():
        out = start_fails(*args)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("streamer serve: tls: ") \
            and words in lines[0], (args, out.stderr)
        assert "ready" not in out.stderr and "Traceback" not in out.stderr
