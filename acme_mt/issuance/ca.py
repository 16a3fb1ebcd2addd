"""The provider root, each tenant's issuing CA, and the HTTPS listener's certificate.

Profiles follow RFC 5280 §4.2: CA certificates carry a critical basicConstraints
(§4.2.1.9) and a critical keyUsage with keyCertSign and cRLSign (§4.2.1.3), plus
SKI (§4.2.1.2); a tenant CA adds pathLenConstraint 0 and the root's key
identifier as AKI (§4.2.1.1). CA keys are generated in a key partition and
never leave it, except the listener's key, which Python's ``ssl`` reads from a
file.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from acme_mt.issuance.certificates import (
    access_description,
    authority_key_identifier,
    check_key_pair,
    crl_distribution_points,
    key_usage,
    new_serial,
)
from acme_mt.issuance.signer import sign
from acme_mt.keystores.base import KeyPartition, SigningKey
from acme_mt.models import utcnow

logger = logging.getLogger(__name__)

ROOT_LABEL = "root"
CA_LABEL = "ca"
ROOT_YEARS = 20
TENANT_CA_YEARS = 10
TLS_DAYS = 365
#: CA certificates start a little in the past so clients with slow clocks accept them.
BACKDATE = timedelta(hours=1)


def _years_after(moment: datetime, years: int) -> datetime:
    """The same day and time ``years`` later (28 February for a 29 February start)."""
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:
        return moment.replace(year=moment.year + years, day=28)


async def create_root_ca(
    partition: KeyPartition, key_type: str, common_name: str
) -> x509.Certificate:
    """Make the provider's self-signed root, its key labelled ``root`` in ``partition``.

    :raises acme_mt.errors.KeyStoreError: the partition already holds a root key.
    """
    key = await partition.generate(ROOT_LABEL, key_type)
    now = utcnow()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(_years_after(now, ROOT_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    certificate = await sign(builder, key)
    logger.info("created root CA %r in partition %r", common_name, partition.name)
    return certificate


async def create_tenant_ca(
    root_key: SigningKey,
    root_cert: x509.Certificate,
    tenant_partition: KeyPartition,
    slug: str,
    key_type: str,
    provider_name: str,
    *,
    http_url: str | None = None,
) -> x509.Certificate:
    """Make a tenant's issuing CA under the root, its key labelled ``ca`` in its partition.

    With ``http_url`` the certificate also points at the root's certificate
    (AIA caIssuers, ``/root.crt``) and CRL (``/root.crl``).

    :raises acme_mt.errors.KeyStoreError: the partition already holds a CA key.
    """
    check_key_pair(root_key, root_cert)
    key = await tenant_partition.generate(CA_LABEL, key_type)
    now = utcnow()
    not_after = min(_years_after(now, TENANT_CA_YEARS), root_cert.not_valid_after_utc)
    public_key = key.public_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{provider_name} {slug} CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root_cert.subject)
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        # digitalSignature lets the CA sign OCSP responses itself (RFC 6960 §4.2.2.2).
        .add_extension(key_usage(digital_signature=True, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(authority_key_identifier(root_cert), critical=False)
    )
    if http_url:
        base = http_url.rstrip("/")
        root_issuer = access_description(
            AuthorityInformationAccessOID.CA_ISSUERS, f"{base}/root.crt"
        )
        builder = builder.add_extension(
            x509.AuthorityInformationAccess([root_issuer]), critical=False
        ).add_extension(crl_distribution_points(f"{base}/root.crl"), critical=False)
    certificate = await sign(builder, root_key)
    logger.info("created the issuing CA of tenant %r", slug)
    return certificate


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    """Write a file under a temporary name created with ``mode``, then rename it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


async def create_tls_certificate(
    root_key: SigningKey,
    root_cert: x509.Certificate,
    hostnames: Sequence[str],
    ips: Sequence[str],
    cert_path: Path,
    key_path: Path,
) -> x509.Certificate:
    """Issue the HTTPS listener's certificate from the root, for localhost and 127.0.0.1.

    ``cert_path`` receives the chain (leaf, then root) and ``key_path`` the
    unencrypted P-256 key, mode 0600, because ``ssl.SSLContext`` loads it from a file.
    """
    check_key_pair(root_key, root_cert)
    dns_names = list(dict.fromkeys(["localhost", *(h.lower() for h in hostnames)]))
    addresses = list(dict.fromkeys(ipaddress.ip_address(ip) for ip in ["127.0.0.1", *ips]))
    key = ec.generate_private_key(ec.SECP256R1())
    now = utcnow()
    not_after = min(now + timedelta(days=TLS_DAYS), root_cert.not_valid_after_utc)

    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(address) for address in addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(new_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(authority_key_identifier(root_cert), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    certificate = await sign(builder, root_key)

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (certificate, root_cert))
    _replace_file(Path(key_path), key_pem, 0o600)
    _replace_file(Path(cert_path), chain, 0o644)
    logger.info("issued the HTTPS certificate for %s", ", ".join(dns_names))
    return certificate
