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


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS with `cert` (the chain, leaf first) and `key`; with `client_ca`, every client must present a certificate
    signed by it (mTLS), and a client without one, or with one of another CA, fails its handshake."""
    chain, private = _read(cert, "certificate"), _read(key, "key")
    _check_pair(cert, key)
    roots = None
    if client_ca is not None:
        roots = _read(client_ca, "client CA file")
        _check_ca(client_ca)
    return grpc.ssl_server_credentials([(private, chain)], root_certificates=roots,
                                       require_client_auth=roots is not None)


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
