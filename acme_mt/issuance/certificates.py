"""Leaf certificates of a tenant's issuing CA (RFC 5280 §4.1, §4.2).

The leaf profile: a serial of 127 random bits (RFC 5280 §4.1.2.2), the CSR's
subject only when its CN is one of the names issued (otherwise an empty subject
and a critical subjectAltName, §4.2.1.6), AKI and SKI (§4.2.1.1-2),
basicConstraints CA false (§4.2.1.9), keyUsage digitalSignature, plus
keyEncipherment for RSA keys (§4.2.1.3), serverAuth and clientAuth EKU
(§4.2.1.12), AIA with OCSP and caIssuers (§4.2.2.1), and the CRL distribution
point of the shard that holds the serial (§4.2.1.13).

Checklist for a new profile field: add it to ``Issuer.issue_leaf``, document it
above, and test it in tests/unit/test_issuance.py.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from acme_mt.issuance.signer import sign
from acme_mt.keystores.base import SigningKey

logger = logging.getLogger(__name__)

SERIAL_BITS = 128
DEFAULT_EXTENDED_KEY_USAGES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


def new_serial() -> int:
    """A fresh serial: 128 random bits with the top bit cleared, so positive and 16 octets."""
    while True:
        serial = secrets.randbits(SERIAL_BITS) & ~(1 << (SERIAL_BITS - 1))
        if serial:
            return serial


def shard_for_serial(serial: int, shards: int) -> int:
    """The CRL shard of a serial, taken from its random low 64 bits."""
    if shards < 1:
        raise ValueError("shards must be at least 1")
    return (serial & 0xFFFF_FFFF_FFFF_FFFF) % shards


def key_usage(
    *, digital_signature: bool = False, key_encipherment: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    """A keyUsage value (RFC 5280 §4.2.1.3); ``cert_sign`` sets keyCertSign and cRLSign."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def access_description(method: x509.ObjectIdentifier, url: str) -> x509.AccessDescription:
    """One AIA entry (RFC 5280 §4.2.2.1) pointing at ``url``."""
    return x509.AccessDescription(method, x509.UniformResourceIdentifier(url))


def crl_distribution_points(url: str) -> x509.CRLDistributionPoints:
    """A CRL distribution point extension with one full URL (RFC 5280 §4.2.1.13)."""
    point = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )
    return x509.CRLDistributionPoints([point])


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI naming ``issuer``: its own SKI, or one computed from its key (§4.2.1.2)."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def check_key_pair(key: SigningKey, certificate: x509.Certificate) -> None:
    """Refuse to sign with a key that does not belong to the issuer certificate.

    :raises ValueError: the public keys differ.
    """
    encoding = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(encoding, spki)
    theirs = certificate.public_key().public_bytes(encoding, spki)
    if ours != theirs:
        raise ValueError("the issuer key does not match the issuer certificate")


def _general_name(kind: str, value: str) -> x509.GeneralName:
    if kind == "dns":
        return x509.DNSName(value)
    if kind == "ip":
        return x509.IPAddress(ipaddress.ip_address(value))
    raise ValueError(f"unsupported identifier type {kind!r}")


def _same_name(common_name: str, sans: Sequence[tuple[str, str]]) -> bool:
    """Whether a CN names one of the identifiers being issued."""
    try:
        address = ipaddress.ip_address(common_name)
    except ValueError:
        return any(k == "dns" and v.lower() == common_name.lower() for k, v in sans)
    return any(k == "ip" and ipaddress.ip_address(v) == address for k, v in sans)


@dataclass(frozen=True, eq=False)
class Issuer:
    """A tenant's issuing CA: the one object that signs that tenant's leaves."""

    slug: str
    certificate: x509.Certificate
    key: SigningKey
    root: x509.Certificate
    http_url: str
    executor: Executor | None = None

    def __post_init__(self) -> None:
        check_key_pair(self.key, self.certificate)

    @property
    def base_url(self) -> str:
        return f"{self.http_url.rstrip('/')}/{self.slug}"

    @property
    def ca_issuers_url(self) -> str:
        return f"{self.base_url}/ca.crt"

    @property
    def ocsp_url(self) -> str:
        return f"{self.base_url}/ocsp"

    def crl_url(self, shard: int) -> str:
        return f"{self.base_url}/crl/{shard}.crl"

    def chain_pem(self) -> str:
        """The tenant CA then the root, as PEM, for ``ca.pem`` and certificate chains."""
        return self._chain_pem

    @cached_property
    def _chain_pem(self) -> str:
        return b"".join(
            cert.public_bytes(serialization.Encoding.PEM) for cert in (self.certificate, self.root)
        ).decode()

    @cached_property
    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        return authority_key_identifier(self.certificate)

    async def issue_leaf(
        self,
        csr: x509.CertificateSigningRequest,
        sans: Sequence[tuple[str, str]],
        not_before: datetime,
        not_after: datetime,
        serial: int,
        shard: int,
        ocsp: bool,
        extended_key_usages: Sequence[x509.ObjectIdentifier] = DEFAULT_EXTENDED_KEY_USAGES,
    ) -> x509.Certificate:
        """Build and sign a leaf for identifiers the caller has already authorized.

        ``sans`` are ("dns" | "ip", value) pairs; DNS names go in exactly as given.
        The CSR must already have passed ``check_csr``; this stores and audits nothing.

        :raises ValueError: no identifiers, an unknown type, a bad serial or validity.
        """
        if not sans:
            raise ValueError("a leaf needs at least one identifier")
        if not 0 < serial < 1 << 159:
            raise ValueError("serial must be positive and at most 20 octets")
        if shard < 0:
            raise ValueError("shard must not be negative")
        if not_after <= not_before:
            raise ValueError("not_after must come after not_before")
        if not_after > self.certificate.not_valid_after_utc:
            raise ValueError("not_after must not pass the issuing CA's expiry")
        names = [_general_name(kind, value) for kind, value in sans]

        common_names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        keep_subject = bool(common_names) and all(
            _same_name(str(attribute.value), sans) for attribute in common_names
        )
        subject = csr.subject if keep_subject else x509.Name([])
        public_key = csr.public_key()
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)  # RFC 8813 §3 for EC keys

        access = []
        if ocsp:
            access.append(access_description(AuthorityInformationAccessOID.OCSP, self.ocsp_url))
        access.append(
            access_description(AuthorityInformationAccessOID.CA_ISSUERS, self.ca_issuers_url)
        )

        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=not keep_subject)
            .add_extension(self._authority_key_identifier, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                key_usage(digital_signature=True, key_encipherment=is_rsa), critical=True
            )
            .add_extension(x509.AuthorityInformationAccess(access), critical=False)
            .add_extension(crl_distribution_points(self.crl_url(shard)), critical=False)
        )
        if extended_key_usages:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage(list(extended_key_usages)), critical=False
            )

        certificate = await sign(builder, self.key, self.executor)
        logger.debug("signed leaf %x for %d identifier(s)", serial, len(names))
        return certificate
