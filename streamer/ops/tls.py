"""TLS and mutual TLS credentials from PEM files, for the server (--tls-cert, --tls-key, --tls-client-ca) and
for clients (--tls-ca, and a client certificate and key under mTLS).

The files are read and checked here with the standard library's ssl module first (does the key match the
certificate, is the CA file a certificate), so a wrong file stops `serve` at start with one line instead of
failing every handshake later with grpc's generic errors.
"""
from __future__ import annotations

import ssl

import grpc


class TLSError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file and the problem."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise TLSError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TLSError(f"the {what} {path} is not a PEM file (no -----BEGIN line)")
    return data


def _check_pair(cert: str, key: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        raise TLSError(f"the certificate {cert} and the key {key} cannot be used together (is the key that of the "
                       f"certificate, and unencrypted?): {exc.reason or exc}") from None


def _check_ca(path: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSError(f"the CA file {path} holds no usable certificate: {exc.reason or exc}") from None


def channel_credentials(ca: str | None = None, cert: str | None = None,
                        key: str | None = None) -> grpc.ChannelCredentials:
    """A client's TLS: trust `ca` (None: the system's roots); present `cert` and `key` when the server asks
    (mTLS); both or neither."""
    if (cert is None) != (key is None):
        raise TLSError("a client certificate needs its key, and a key its certificate")
    roots = None
    if ca is not None:
        roots = _read(ca, "CA file")
        _check_ca(ca)
    chain = private = None
    if cert is not None:
        chain, private = _read(cert, "client certificate"), _read(key, "client key")
        _check_pair(cert, key)
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=private, certificate_chain=chain)


def _material(cert: str, key: str, client_ca: str | None) -> tuple[bytes, bytes, bytes | None]:
    """The PEM bytes of a server's files, checked: `cert` (the chain, leaf first) and its `key`; with
    `client_ca`, the CA whose certificates every client must present (mTLS)."""
    chain, private = _read(cert, "certificate"), _read(key, "key")
    _check_pair(cert, key)
    roots = None
    if client_ca is not None:
        roots = _read(client_ca, "client CA file")
        _check_ca(client_ca)
    return chain, private, roots


class ReloadableCredentials:
    """Server credentials whose certificate, key and client CA can be replaced while serving (a reload): grpc's
    dynamic SSL credentials, whose fetcher grpc calls at each new connection's handshake; it hands over a new
    configuration once after update(), else None (keep the current one). Connections already open keep the
    certificate they were made with. Whether client certificates are required is fixed at creation."""

    def __init__(self, cert: str, key: str, client_ca: str | None = None):
        self.material = _material(cert, key, client_ca)
        self.require_client_auth = client_ca is not None
        self._pending = None  # a configuration update() made, until grpc's fetcher takes it
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(self.material), self._fetch, require_client_authentication=self.require_client_auth)

    @staticmethod
    def _configuration(material) -> grpc.ServerCertificateConfiguration:
        chain, private, roots = material
        return grpc.ssl_server_certificate_configuration([(private, chain)], root_certificates=roots)

    def _fetch(self):  # from grpc's core, at each handshake: one attribute swap, no I/O
        pending, self._pending = self._pending, None
        return pending

    def read(self, cert: str, key: str, client_ca: str | None):
        """The files' contents, checked (TLSError says what is wrong); nothing changes yet."""
        if (client_ca is not None) != self.require_client_auth:
            raise TLSError("tls_client_ca cannot be turned on or off while serving (whether clients must present "
                           "a certificate is fixed when the port opens); restart to change it")
        return _material(cert, key, client_ca)

    def update(self, material) -> bool:
        """Serve `material` (from read()) to the next handshakes; whether it differs from the current one."""
        if material == self.material:
            return False
        self.material = material
        self._pending = self._configuration(material)
        return True
