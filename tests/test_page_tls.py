"""The page over HTTPS: with the TLS flags `streamer serve` (its own process) serves --http-port over TLS only
(a plaintext request gets no page), and with --tls-client-ca only to clients with a certificate of that CA."""
from __future__ import annotations

import http.client
import json
import ssl

import pytest

from test_page import free_port
from test_tls import pki  # noqa: F401 (the fixture)


def _get(port: int, context: ssl.SSLContext | None, path: str = "/api/sessions"):
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=context) if context
            else http.client.HTTPConnection("127.0.0.1", port, timeout=30))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_the_page_is_https_only_with_the_tls_flags_and_asks_for_client_certificates(cli_server, pki):  # noqa: F811
    port = free_port()
    cli_server("--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"), "--http-port", str(port))
    trusting = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    status, body = _get(port, trusting)
    assert status == 200 and "sessions" in json.loads(body)
    assert _get(port, trusting, "/")[0] == 200
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine)):
        _get(port, None)  # plaintext HTTP to the TLS port: no page
    with pytest.raises(ssl.SSLCertVerificationError):
        _get(port, ssl.create_default_context(cafile=str(pki / "other-ca.pem")))

    port = free_port()
    cli_server("--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
               "--tls-client-ca", str(pki / "ca.pem"), "--http-port", str(port))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get(port, trusting)  # no client certificate
    with_cert = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with_cert.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    assert _get(port, with_cert)[0] == 200
