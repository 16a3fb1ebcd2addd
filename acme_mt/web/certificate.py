"""Certificate download and revocation (RFC 8555 §7.4.2, §7.6)."""

from __future__ import annotations

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from acme_mt.authority import parse_revocation
from acme_mt.authority.orders import public_key_thumbprint
from acme_mt.errors import AcmeProblem, NotFound
from acme_mt.jws import load_jwk, thumbprint
from acme_mt.models import CertificateStatus
from acme_mt.web.auth import authenticate
from acme_mt.web.keys import AUTHORITY, event_of, tenant_of

PEM_CHAIN_TYPE = "application/pem-certificate-chain"


async def certificate(request: web.Request) -> web.Response:
    """The PEM chain: leaf, tenant CA, provider root (RFC 8555 §7.4.2)."""
    signed = await authenticate(request)
    account = signed.require_account()
    tenant = tenant_of(request)
    serial = request.match_info["serial"]
    record = await tenant.store.get_certificate(serial)
    if record is None or record.der is None or record.status == CertificateStatus.ABANDONED:
        raise NotFound()
    if record.account_id != account.id:
        raise AcmeProblem("unauthorized", "The certificate belongs to another account")
    leaf = x509.load_der_x509_certificate(record.der)
    body = leaf.public_bytes(serialization.Encoding.PEM).decode() + tenant.issuer.chain_pem()
    return web.Response(body=body.encode(), content_type=PEM_CHAIN_TYPE)


async def revoke_cert(request: web.Request) -> web.Response:
    """Revoke by the ordering account (kid) or by the certificate's key (jwk)."""
    signed = await authenticate(request, use_jwk=True)
    tenant = tenant_of(request)
    der, parsed, reason = parse_revocation(signed.payload())
    revocations = request.app[AUTHORITY].revocations
    record = await revocations.find(tenant, der, parsed)
    event_of(request)["serial"] = record.serial
    by_key = False
    if signed.account is None:
        by_key = public_key_thumbprint(parsed.public_key()) == thumbprint(load_jwk(signed.jwk))
        if not by_key:
            raise AcmeProblem("unauthorized", "The JWS key is not the certificate's key")
    if record.der is None:
        raise NotFound()
    await revocations.revoke(
        tenant, record, reason, account=signed.account, by_certificate_key=by_key
    )
    return web.Response(status=200)
