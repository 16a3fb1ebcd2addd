"""The listener's client-certificate trust for EST (RFC 7030 §3.3.2): tenant CAs
loaded into a live ``ssl`` context reach new handshakes; a leaf whose tenant CA is
not loaded fails the handshake, which is why every tenant CA must be there."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from acme_mt.storage.base import RegistryStore, TenantRecord
from acme_mt.tenancy.context import TenantContext
from est.auth import ClientCertificateTrust

NOW = datetime.now(UTC)


@dataclass
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def issue(
    name: str,
    issuer: Issued | None,
    *,
    ca: bool,
    eku: x509.ObjectIdentifier | None = None,
    dns: str | None = None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if dns is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False
        )
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def write_pair(directory: Path, name: str, issued: Issued) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_text(pem(issued.certificate))
    key.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


class FakeRegistry:
    def __init__(self, cas: list[x509.Certificate]) -> None:
        self._records = [
            TenantRecord(f"id-{i}", f"t{i}", "active", {}, pem(ca), "ca", NOW)
            for i, ca in enumerate(cas)
        ]

    async def list_tenants(self) -> list[TenantRecord]:
        return self._records


def tenant_with(ca: x509.Certificate, tenant_id: str) -> TenantContext:
    stub: Any = SimpleNamespace(id=tenant_id, issuer=SimpleNamespace(certificate=ca))
    return cast(TenantContext, stub)


async def test_add_registry_then_add_tenant_trust_every_tenant_ca() -> None:
    root = issue("root", None, ca=True)
    cas = [issue(f"tenant {i}", root, ca=True).certificate for i in range(3)]
    trust = ClientCertificateTrust(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))

    await trust.add_registry(cast(RegistryStore, FakeRegistry(cas[:2])))
    trust.add_tenant(tenant_with(cas[2], "id-2"))

    names = sorted(c["subject"][0][0][1] for c in trust.context.get_ca_certs())
    assert names == ["tenant 0", "tenant 1", "tenant 2"]


async def _handshake(port: int, client: ssl.SSLContext) -> bytes:
    """What the server sends after the handshake, or b"" when the handshake fails."""
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        return await asyncio.wait_for(reader.read(16), 10)
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tenant_ca_added_to_live_context_reaches_new_handshakes(
    tmp_path: Path, tls_version: ssl.TLSVersion
) -> None:
    root = issue("root", None, ca=True)
    server_cert = issue(
        "server", root, ca=False, eku=ExtendedKeyUsageOID.SERVER_AUTH, dns="localhost"
    )
    tenant_ca = issue("tenant CA", root, ca=True)
    client = issue("device", tenant_ca, ca=False, eku=ExtendedKeyUsageOID.CLIENT_AUTH)

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(*write_pair(tmp_path, "server", server_cert))
    server_context.verify_mode = ssl.CERT_OPTIONAL
    server_context.load_verify_locations(cadata=pem(root.certificate))
    client_context = ssl.create_default_context(cadata=pem(root.certificate))
    client_context.minimum_version = client_context.maximum_version = tls_version
    client_context.load_cert_chain(*write_pair(tmp_path, "device", client))  # the leaf alone
    anonymous = ssl.create_default_context(cadata=pem(root.certificate))

    async def greet(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        before = await _handshake(port, client_context)
        anonymous_answer = await _handshake(port, anonymous)
        ClientCertificateTrust(server_context).add(tenant_ca.certificate)
        after = await _handshake(port, client_context)
    finally:
        server.close()
        await server.wait_closed()

    assert (before, anonymous_answer, after) == (b"", b"hello", b"hello")
