"""EST client authentication per tenant (RFC 7030 §3.2.3, §3.3.2).

A client proves itself with a TLS client certificate that this tenant's CA
issued and that is still valid and unrevoked, or with an enrollment credential
of this tenant over HTTP Basic. The HTTPS listener asks for a client
certificate without requiring one; Python's ``ssl`` then checks at handshake
that a presented certificate chains to a CA it trusts, so the listener's trust
store must hold every tenant CA: ``ClientCertificateTrust`` keeps it so. Each
request then checks the certificate against its own tenant only.

Limitation: tls-unique channel binding (RFC 7030 §3.5) is not checked; it is
undefined for TLS 1.3 and Python's ``ssl`` exposes no exporter.
"""

from __future__ import annotations

import base64
import binascii
import logging
import ssl
from dataclasses import dataclass, field

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from acme_mt.authority.enrollment import EnrollmentDenied, EnrollmentService
from acme_mt.storage.base import RegistryStore
from acme_mt.tenancy.context import TenantContext
from est.wire import EstError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EstClient:
    """Who is enrolling: an audit actor, and the client certificate when that was the proof."""

    actor: str
    certificate: x509.Certificate | None = None


@dataclass
class ClientCertificateTrust:
    """Loads tenant CA certificates into the live listener context as tenants appear.

    ``load_verify_locations`` on a serving context applies to new handshakes.
    """

    context: ssl.SSLContext
    _loaded: set[bytes] = field(default_factory=set)
    _tenant_ids: set[str] = field(default_factory=set)

    def knows(self, tenant_id: str) -> bool:
        """Whether the tenant's CA is trusted already."""
        return tenant_id in self._tenant_ids

    def add_tenant(self, tenant: TenantContext) -> None:
        """Trust a served tenant's CA; after the first call per tenant this is a set look-up."""
        if tenant.id not in self._tenant_ids:
            self.add(tenant.issuer.certificate)
            self._tenant_ids.add(tenant.id)

    def add(self, certificate: x509.Certificate) -> None:
        fingerprint = certificate.fingerprint(hashes.SHA256())
        if fingerprint in self._loaded:
            return
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        self.context.load_verify_locations(cadata=pem)
        self._loaded.add(fingerprint)
        logger.debug("client certificates of %s are now accepted at handshake", certificate.subject)

    async def add_registry(self, registry: RegistryStore) -> None:
        """Load the CA of every tenant the registry knows."""
        for record in await registry.list_tenants():
            try:
                self.add(x509.load_pem_x509_certificate(record.ca_certificate_pem.encode()))
            except ValueError:
                logger.error("tenant %s has an unreadable CA certificate", record.slug)
                continue
            self._tenant_ids.add(record.id)


def peer_certificate(request: web.Request) -> bytes | None:
    """The DER client certificate of the request's TLS connection, if one was presented."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der


def _basic_credentials(request: web.Request, tenant: TenantContext) -> tuple[str, str] | None:
    """The (username, password) of an RFC 7617 Authorization header, UTF-8 as announced."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    try:
        if scheme.lower() != "basic":
            raise ValueError(scheme)
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error):
        raise _unauthorized(tenant, "the Authorization header is not HTTP Basic") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise _unauthorized(tenant, "the Basic credentials have no password")
    return username, password


def _unauthorized(tenant: TenantContext, reason: str) -> EstError:
    """RFC 7030 §3.2.3: a 401 that asks for HTTP Basic credentials."""
    challenge = f'Basic realm="EST {tenant.slug}", charset="UTF-8"'
    return EstError(401, reason, {"WWW-Authenticate": challenge})


async def authenticate(
    request: web.Request,
    tenant: TenantContext,
    enrollment: EnrollmentService,
    *,
    certificate_only: bool = False,
) -> EstClient:
    """Identify the client by its certificate of this tenant, else by Basic credentials.

    With ``certificate_only`` (simplereenroll) only the certificate counts.

    :raises EstError: 401 without acceptable credentials, 403 for a reenroll without
        an acceptable certificate.
    """
    der = peer_certificate(request)
    refused = "no client certificate was presented"
    if der is not None:
        try:
            certificate = await enrollment.authenticate_certificate(tenant, der)
        except EnrollmentDenied as exc:
            refused = exc.detail
        else:
            actor = f"est-certificate:{certificate.serial_number:x}"
            return EstClient(actor, certificate)

    if certificate_only:
        raise EstError(403, f"simplereenroll needs the current certificate: {refused}")
    credentials = _basic_credentials(request, tenant)
    if credentials is None:
        raise _unauthorized(tenant, f"send enrollment credentials; {refused}")
    username, password = credentials
    try:
        actor = await enrollment.authenticate_password(tenant, username, password)
    except EnrollmentDenied as exc:
        logger.info("EST Basic authentication failed for %r", username)
        raise _unauthorized(tenant, exc.detail) from None
    return EstClient(actor)
