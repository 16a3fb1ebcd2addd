"""The plain-HTTP listener's provider resources: CA certificates, health, metrics.

Relying parties fetch CA certificates over plain HTTP (RFC 5280 §4.2.2.1 caIssuers);
OCSP and CRL routes register themselves beside these.
"""

from __future__ import annotations

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_mt.tenancy.context import SLUG_PATTERN
from acme_mt.web.keys import TENANTS, tenant_of

ROOT_CERTIFICATE_KEY = web.AppKey("root_certificate_der", bytes)

PKIX_CERT = "application/pkix-cert"
PEM_FILE = "application/x-pem-file"


async def root_crt(request: web.Request) -> web.Response:
    return web.Response(body=request.app[ROOT_CERTIFICATE_KEY], content_type=PKIX_CERT)


async def root_pem(request: web.Request) -> web.Response:
    pem = _der_to_pem(request.app[ROOT_CERTIFICATE_KEY])
    return web.Response(body=pem, content_type=PEM_FILE)


async def tenant_ca_crt(request: web.Request) -> web.Response:
    """The tenant CA in DER, the target of its certificates' AIA caIssuers."""
    issuer = tenant_of(request).issuer
    return web.Response(
        body=issuer.certificate.public_bytes(serialization.Encoding.DER), content_type=PKIX_CERT
    )


async def tenant_ca_pem(request: web.Request) -> web.Response:
    """The tenant CA and the root, PEM."""
    return web.Response(body=tenant_of(request).issuer.chain_pem().encode(), content_type=PEM_FILE)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "tenants_loaded": len(request.app[TENANTS].loaded())})


def _der_to_pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def public_routes() -> list[web.RouteDef]:
    tenant = "/{tenant:" + SLUG_PATTERN + "}"
    return [
        web.get("/root.crt", root_crt),
        web.get("/root.pem", root_pem),
        web.get(f"{tenant}/ca.crt", tenant_ca_crt),
        web.get(f"{tenant}/ca.pem", tenant_ca_pem),
        web.get("/healthz", healthz),
    ]
