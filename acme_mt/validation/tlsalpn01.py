"""tls-alpn-01 validation (RFC 8737 §3), for DNS names and IP addresses (RFC 8738 §6).

The validator opens TLS 1.2 or later to ``<address>:<tlsalpn01_port>`` with SNI
set to the name (for an IP address, its reverse-DNS name) and offers only the
``acme-tls/1`` protocol. The peer's certificate is not verified as a chain: it
must instead carry exactly the one identifier in its subjectAltName and a
critical acmeIdentifier extension holding SHA-256 of the key authorization.

Outcomes: the name cannot be resolved → ``dns``; no connection or a timeout →
``connection``; a failed handshake, ``acme-tls/1`` not negotiated or no
certificate → ``tls``; a certificate that does not prove the key authorization
→ ``incorrectResponse``.
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
from acme_mt.validation.http01 import host_header, os_error_reason
from acme_mt.validation.resolver import Deadline, Resolver

logger = logging.getLogger(__name__)

ACME_TLS_1 = "acme-tls/1"

#: id-pe-acmeIdentifier (RFC 8737 §6.1).
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def server_name(identifier: Identifier) -> str:
    """The SNI value: the DNS name, or an IP address's reverse-DNS name (RFC 8738 §6)."""
    if identifier.type == "ip":
        return ipaddress.ip_address(identifier.value).reverse_pointer
    return identifier.value


def expected_san(identifier: Identifier) -> x509.GeneralName:
    """The single subjectAltName entry the certificate must carry."""
    if identifier.type == "ip":
        return x509.IPAddress(ipaddress.ip_address(identifier.value))
    return x509.DNSName(identifier.value.lower())


def client_context() -> ssl.SSLContext:
    """TLS 1.2+, ``acme-tls/1`` only, and no chain or name verification (RFC 8737 §3)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ACME_TLS_1])
    return context


def _san_entries(certificate: x509.Certificate) -> list[x509.GeneralName]:
    """The subjectAltName entries, with DNS names lowered for comparison."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [
        x509.DNSName(name.value.lower()) if isinstance(name, x509.DNSName) else name
        for name in names.value
    ]


def check_certificate(der: bytes, identifier: Identifier, key_authorization: str) -> None:
    """RFC 8737 §3: one SAN entry for the identifier and a critical acmeIdentifier digest.

    :raises AcmeProblem: ``incorrectResponse`` naming what is wrong.
    """
    wanted = expected_san(identifier)
    try:
        certificate = x509.load_der_x509_certificate(der)
        entries = _san_entries(certificate)
        extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound:
        raise AcmeProblem(
            "incorrectResponse", "the certificate has no acmeIdentifier extension"
        ) from None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise AcmeProblem("incorrectResponse", f"the certificate cannot be parsed: {exc}") from None

    if entries != [wanted]:
        seen = ", ".join(str(entry.value) for entry in entries) or "none"
        raise AcmeProblem(
            "incorrectResponse",
            f"the certificate's subjectAltName must hold exactly {wanted.value}, but holds {seen}",
        )
    if not extension.critical:
        raise AcmeProblem("incorrectResponse", "the acmeIdentifier extension is not critical")

    # cryptography has no type for this extension; asn1crypto parses its DER.
    raw = extension.value
    if not isinstance(raw, x509.UnrecognizedExtension):
        raise AcmeProblem("incorrectResponse", "the acmeIdentifier extension cannot be read")
    try:
        digest = core.OctetString.load(raw.value, strict=True).native
    except ValueError:
        raise AcmeProblem(
            "incorrectResponse", "the acmeIdentifier extension is not a DER OCTET STRING"
        ) from None
    if digest != hashlib.sha256(key_authorization.encode("ascii")).digest():
        raise AcmeProblem(
            "incorrectResponse",
            f"the acmeIdentifier extension holds {digest.hex()[:64]}, not SHA-256 of the key "
            "authorization of this challenge",
        )


class TlsAlpn01Validator:
    """Performs the tls-alpn-01 handshake and checks the certificate it yields."""

    def __init__(self, resolver: Resolver, port: int) -> None:
        self._resolver = resolver
        self._port = port
        self._context = client_context()

    async def validate(
        self, identifier: Identifier, key_authorization: str, deadline: Deadline
    ) -> None:
        """Connect, check the negotiated protocol, then check the certificate.

        :raises AcmeProblem: as the module docstring lists.
        """
        sni = server_name(identifier)
        if identifier.type == "ip":
            address = identifier.value
        else:
            address = await self._resolver.first_address(identifier.value, deadline.remaining())
        where = f"{host_header(address)}:{self._port}"

        protocol, der = await self._handshake(address, sni, where, deadline)
        if protocol != ACME_TLS_1:
            raise AcmeProblem(
                "tls",
                f"{where} (SNI {sni}) did not negotiate ALPN {ACME_TLS_1} "
                f"(negotiated {protocol or 'nothing'})",
            )
        if not der:
            raise AcmeProblem("tls", f"{where} (SNI {sni}) sent no certificate")
        try:
            check_certificate(der, identifier, key_authorization)
        except AcmeProblem as exc:
            raise AcmeProblem(exc.type, f"{where} (SNI {sni}): {exc.detail}") from None

    async def _handshake(
        self, address: str, sni: str, where: str, deadline: Deadline
    ) -> tuple[str | None, bytes | None]:
        """The negotiated ALPN protocol and the peer's certificate, after one handshake."""
        logger.debug("tls-alpn-01: handshake with %s, SNI %s", where, sni)
        try:
            async with asyncio.timeout(deadline.remaining()):
                _reader, writer = await asyncio.open_connection(
                    address, self._port, ssl=self._context, server_hostname=sni
                )
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            raise AcmeProblem(
                "tls", f"TLS handshake with {where} (SNI {sni}) failed: {reason}"
            ) from None
        except TimeoutError:
            raise AcmeProblem(
                "connection",
                f"TLS connection to {where} (SNI {sni}) timed out "
                f"(validation limit {deadline.seconds:g} s)",
            ) from None
        except OSError as exc:
            raise AcmeProblem(
                "connection", f"cannot connect to {where}: {os_error_reason(exc)}"
            ) from None

        ssl_object = writer.get_extra_info("ssl_object")
        try:
            return ssl_object.selected_alpn_protocol(), ssl_object.getpeercert(binary_form=True)
        finally:
            # Nothing more is said on this connection, so no close_notify is awaited.
            writer.transport.abort()
