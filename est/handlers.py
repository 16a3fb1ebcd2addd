"""The five EST operations of one tenant (RFC 7030 §4.1, §4.2, §4.4, §4.5).

The RFC 7030 CA label is the tenant slug (§3.2.2). An unknown label and a
tenant that is suspended answer the same plain 404, so labels cannot be used
to enumerate tenants. Errors are short text/plain answers with the status the
RFC names; nothing here renders ACME problem documents.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_mt.authority.enrollment import EnrollmentRefused, EnrollmentService
from acme_mt.errors import TenantUnavailable
from acme_mt.log import tenant_var
from acme_mt.tenancy.context import TenantContext
from acme_mt.tenancy.directory import TenantDirectory
from est.auth import ClientCertificateTrust, authenticate
from est.csrattrs import csr_attributes
from est.wire import (
    CSRATTRS,
    PKCS7_CERTS_ONLY,
    PKCS8,
    PKCS10,
    EstError,
    base64_response,
    certs_only,
    multipart_response,
    read_body,
    read_csr,
    require_content_type,
)

logger = logging.getLogger(__name__)

EST_TENANTS = web.AppKey("est_tenants", TenantDirectory)
EST_ENROLLMENT = web.AppKey("est_enrollment", EnrollmentService)
EST_TRUST = web.AppKey("est_trust", ClientCertificateTrust)

TenantHandler = Callable[[web.Request, TenantContext], Awaitable[web.Response]]


def not_found() -> web.Response:
    """The one answer for an unknown label and a tenant the caller may not see."""
    return web.Response(status=404, text="Not Found")


def unavailable() -> web.Response:
    """A tenant whose store or keys fail; other tenants go on, and the client may retry."""
    return EstError(503, "the service is temporarily unavailable", {"Retry-After": "5"}).response()


def endpoint(handler: TenantHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Resolve the label to a tenant, run the operation, answer failures as EST does."""

    @functools.wraps(handler)
    async def run(request: web.Request) -> web.Response:
        try:
            tenant = await request.app[EST_TENANTS].resolve(request.match_info["label"])
        except TenantUnavailable:
            return unavailable()
        if tenant is None:
            return not_found()
        tenant_var.set(tenant.slug)
        trust = request.app.get(EST_TRUST)
        if trust is not None:
            trust.add_tenant(tenant)
        try:
            return await handler(request, tenant)
        except EstError as exc:
            return exc.response()
        except EnrollmentRefused as exc:
            logger.info("EST request refused: %s", exc.detail)
            return EstError(400, exc.detail).response()
        except TenantUnavailable:
            return unavailable()

    return run


async def _csr_body(request: web.Request) -> x509.CertificateSigningRequest:
    """The PKCS#10 body of an enrollment (§4.2.1), after its media type is checked."""
    require_content_type(request, PKCS10)
    return read_csr(await read_body(request))


@endpoint
async def cacerts(request: web.Request, tenant: TenantContext) -> web.Response:
    """§4.1: the tenant CA and the provider root, anonymous, as certs-only PKCS#7."""
    issuer = tenant.issuer
    return base64_response(certs_only([issuer.certificate, issuer.root]), PKCS7_CERTS_ONLY)


@endpoint
async def simpleenroll(request: web.Request, tenant: TenantContext) -> web.Response:
    """§4.2.1: a certificate for the client's CSR under the tenant's policy."""
    enrollment = request.app[EST_ENROLLMENT]
    client = await authenticate(request, tenant, enrollment)
    csr = await _csr_body(request)
    certificate = await enrollment.enroll(tenant, csr, client.actor)
    return base64_response(certs_only([certificate]), PKCS7_CERTS_ONLY)


@endpoint
async def simplereenroll(request: web.Request, tenant: TenantContext) -> web.Response:
    """§4.2.2: renew the certificate the client authenticated with."""
    enrollment = request.app[EST_ENROLLMENT]
    client = await authenticate(request, tenant, enrollment, certificate_only=True)
    current = client.certificate
    if current is None:  # authenticate never returns one without, with certificate_only
        raise EstError(403, "simplereenroll needs the current certificate")
    csr = await _csr_body(request)
    certificate = await enrollment.reenroll(tenant, csr, current, client.actor)
    return base64_response(certs_only([certificate]), PKCS7_CERTS_ONLY)


@endpoint
async def serverkeygen(request: web.Request, tenant: TenantContext) -> web.Response:
    """§4.4: a server-made key (PKCS#8, unencrypted over TLS) and its certificate."""
    enrollment = request.app[EST_ENROLLMENT]
    client = await authenticate(request, tenant, enrollment)
    csr = await _csr_body(request)
    key, certificate = await enrollment.enroll_server_key(tenant, csr, client.actor)
    key_der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return multipart_response([(PKCS8, key_der), (PKCS7_CERTS_ONLY, certs_only([certificate]))])


@endpoint
async def csrattrs(request: web.Request, tenant: TenantContext) -> web.Response:
    """§4.5: what the tenant's default profile asks of a CSR, anonymous."""
    profile = tenant.policy.profile(None) or tenant.policy.all_profiles()[0]
    return base64_response(csr_attributes(profile), CSRATTRS)
