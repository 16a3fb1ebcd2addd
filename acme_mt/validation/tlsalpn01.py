"""tls-alpn-01 validation (RFC 8737 §3), for names and IP addresses (RFC 8738 §6).

The validator opens TLS 1.2 or later to ``<address>:<tlsalpn01_port>`` with
SNI set to the name (for an IP address, its reverse-DNS name) and offers only
``acme-tls/1``. The peer's certificate is not verified as a chain; instead it
must carry exactly the one identifier in its subjectAltName and a critical
acmeIdentifier extension holding SHA-256 of the key authorization.

Outcomes: the name cannot be resolved → ``dns``; no connection or a timeout
→ ``connection``; a failed handshake, ``acme-tls/1`` not negotiated or no
certificate → ``tls``; a certificate that does not prove the key
authorization → ``incorrectResponse``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import ssl

from asn1crypto import core
from cryptography import x509

from acme_mt.errors import AcmeProblem
from acme_mt.models import Identifier
from acme_mt.validation.http01 import bracket_ipv6, os_error_reason
from acme_mt.validation.resolver import Deadline, Resolver

logger = logging.getLogger(__name__)

ACME_TLS_1 = "acme-tls/1"

#: id-pe-acmeIdentifier (RFC 8737 §6.1).
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")

#: What ``cryptography`` raises for certificates it cannot read.
_UNREADABLE = (
    ValueError,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


def server_name(identifier: Identifier) -> str:
    """The SNI: the DNS name, or an IP address's reverse-DNS name (RFC 8738 §6)."""
    if identifier.type == "ip":
        return ipaddress.ip_address(identifier.value).reverse_pointer
    return identifier.value


def expected_san(identifier: Identifier) -> x509.GeneralName:
    """The single subjectAltName entry the certificate must carry."""
    if identifier.type == "ip":
        return x509.IPAddress(ipaddress.ip_address(identifier.value))
    return x509.DNSName(identifier.value.lower())


def client_context() -> ssl.SSLContext:
    """TLS 1.2+, ``acme-tls/1`` only, no chain or name checks (RFC 8737 §3)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_1])
    return context


def _san_entries(certificate: x509.Certificate) -> list[x509.GeneralName]:
    """The subjectAltName entries, DNS names in lower case."""
    extensions = certificate.extensions
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [x509.DNSName(n.value.lower()) if isinstance(n, x509.DNSName) else n for n in san.value]


def _digest(extension: x509.Extension[x509.ExtensionType]) -> bytes:
    """The digest an acmeIdentifier extension holds (an ASN.1 OCTET STRING)."""
    if not extension.critical:
        detail = "the acmeIdentifier extension is not critical"
        raise AcmeProblem("incorrectResponse", detail)

    # cryptography has no type for this extension; asn1crypto parses it.
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        detail = "the acmeIdentifier extension cannot be read"
        raise AcmeProblem("incorrectResponse", detail)
    try:
        digest: bytes = core.OctetString.load(value.value, strict=True).native
    except ValueError:
        detail = "the acmeIdentifier extension is not a DER OCTET STRING"
        raise AcmeProblem("incorrectResponse", detail) from None
    return digest


def check_certificate(der: bytes, identifier: Identifier, key_authorization: str) -> None:
    """RFC 8737 §3: one SAN entry, the identifier, and a critical digest.

    :raises AcmeProblem: ``incorrectResponse`` naming what is wrong.
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
        entries = _san_entries(certificate)
        extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound:
        detail = "the certificate has no acmeIdentifier extension"
        raise AcmeProblem("incorrectResponse", detail) from None
    except _UNREADABLE as exc:
        detail = f"the certificate cannot be parsed: {exc}"
        raise AcmeProblem("incorrectResponse", detail) from None

    wanted = expected_san(identifier)
    if entries != [wanted]:
        seen = ", ".join(str(entry.value) for entry in entries) or "none"
        detail = (
            f"the certificate's subjectAltName must hold exactly {wanted.value}, but holds {seen}"
        )
        raise AcmeProblem("incorrectResponse", detail)

    digest = _digest(extension)
    if digest != hashlib.sha256(key_authorization.encode("ascii")).digest():
        detail = (
            f"the acmeIdentifier extension holds {digest.hex()[:64]}, not "
            "SHA-256 of the key authorization of this challenge"
        )
        raise AcmeProblem("incorrectResponse", detail)


class TlsAlpn01Validator:
    """Performs the tls-alpn-01 handshake and checks the certificate."""

    def __init__(self, resolver: Resolver, port: int) -> None:
        self._resolver = resolver
        self._port = port
        self._context = client_context()

    async def validate(
        self, identifier: Identifier, key_authorization: str, deadline: Deadline
    ) -> None:
        """Connect, check the negotiated protocol, then the certificate.

        :raises AcmeProblem: as the module docstring lists.
        """
        sni = server_name(identifier)
        if identifier.type == "ip":
            address = identifier.value
        else:
            remaining = deadline.remaining()
            address = await self._resolver.first_address(sni, remaining)
        peer = f"{bracket_ipv6(address)}:{self._port} (SNI {sni})"

        protocol, der = await self._handshake(address, sni, peer, deadline)
        if protocol != ACME_TLS_1:
            detail = (
                f"{peer} did not negotiate ALPN {ACME_TLS_1} (negotiated {protocol or 'nothing'})"
            )
            raise AcmeProblem("tls", detail)
        if not der:
            raise AcmeProblem("tls", f"{peer} sent no certificate")
        try:
            check_certificate(der, identifier, key_authorization)
        except AcmeProblem as exc:
            raise AcmeProblem(exc.type, f"{peer}: {exc.detail}") from None

    async def _handshake(
        self, address: str, sni: str, peer: str, deadline: Deadline
    ) -> tuple[str | None, bytes | None]:
        """The negotiated ALPN protocol and the peer's certificate."""
        logger.debug("tls-alpn-01: handshake with %s", peer)
        try:
            async with asyncio.timeout(deadline.remaining()):
                _reader, writer = await asyncio.open_connection(
                    address, self._port, ssl=self._context, server_hostname=sni
                )
        except ssl.SSLError as exc:
            # OpenSSL's reasons read like WRONG_VERSION_NUMBER: say it in words.
            reason = exc.reason.replace("_", " ").lower() if exc.reason else exc
            detail = f"TLS handshake with {peer} failed: {reason}"
            raise AcmeProblem("tls", detail) from None
        except TimeoutError:
            limit = f"validation limit {deadline.seconds:g} s"
            detail = f"TLS connection to {peer} timed out ({limit})"
            raise AcmeProblem("connection", detail) from None
        except OSError as exc:
            detail = f"cannot connect to {peer}: {os_error_reason(exc)}"
            raise AcmeProblem("connection", detail) from None

        ssl_object = writer.get_extra_info("ssl_object")
        try:
            protocol = ssl_object.selected_alpn_protocol()
            return protocol, ssl_object.getpeercert(binary_form=True)
        finally:
            # Nothing more is said here, so no close_notify is waited for.
            writer.transport.abort()
