"""An EST client for tests (RFC 7030): PKCS#10 requests, POSTs with Basic
credentials or a client certificate, and the certs-only answers read back."""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from tests.support.live import LiveServer

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Any
    body: bytes

    def certificates(self) -> list[x509.Certificate]:
        assert self.status == 200, self.body
        assert self.headers["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
        assert b"\n" not in self.body
        return pkcs7.load_der_pkcs7_certificates(base64.b64decode(self.body))


async def est_post(
    session: aiohttp.ClientSession,
    server: LiveServer,
    url: str,
    body: bytes,
    *,
    auth: str | None = None,
    client_tls: ssl.SSLContext | None = None,
    content_type: str | None = "application/pkcs10",
) -> Answer:
    headers = {} if content_type is None else {"Content-Type": content_type}
    if auth is not None:
        headers["Authorization"] = auth
    async with session.post(
        url,
        data=body,
        headers=headers,
        skip_auto_headers=["Content-Type"] if content_type is None else None,
        ssl=client_tls or server.ssl_context(),
    ) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


def make_csr(
    names: list[str], *, key: Key | None = None, common_name: str | None = None
) -> tuple[bytes, Key]:
    """A base64 DER CSR, wrapped at 64 columns as openssl writes it, and its key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = [] if common_name is None else [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    if names:
        san = x509.SubjectAlternativeName([x509.DNSName(n) for n in names])
        builder = builder.add_extension(san, critical=False)
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    encoded = base64.b64encode(der)
    return b"\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64)) + b"\n", key


def client_context(
    server: LiveServer, tmp_path: Path, cert: x509.Certificate, key: Key
) -> ssl.SSLContext:
    """A TLS client context presenting ``cert`` (the leaf alone) with ``key``."""
    cert_file = tmp_path / f"client-{cert.serial_number:x}.pem"
    key_file = tmp_path / f"client-{cert.serial_number:x}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = server.ssl_context()
    context.load_cert_chain(cert_file, key_file)
    return context
