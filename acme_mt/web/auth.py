"""Authentication of ACME POSTs (RFC 8555 §6.2-6.5): one function every handler calls.

Checks run in this order: content type, JWS shape and algorithm, the ``url``
header against the URL actually requested, the signature (by the account of
``kid`` or by ``jwk``), and last the nonce, so a forged request burns no nonce.
Where nonces live in a shared store that reads the account in the same
round trip (PostgreSQL), a ``kid`` request's nonce is spent with that read,
before the signature is checked; its errors come in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import josepy as jose
from aiohttp import web

from acme_mt.errors import AcmeProblem
from acme_mt.jws import (
    JOSE_CONTENT_TYPE,
    ParsedJWS,
    account_key,
    load_jwk,
    parse_jws,
    verify_signature,
)
from acme_mt.models import Account, AccountStatus
from acme_mt.tenancy.nonces import AccountNonceService
from acme_mt.urls import AcmeUrls
from acme_mt.web.keys import SETTINGS, event_of, tenant_of


@dataclass(frozen=True)
class SignedRequest:
    """A verified ACME POST: its JWS, its key and (for kid requests) its account."""

    jws: ParsedJWS
    jwk: jose.JWK
    account: Account | None

    def payload(self) -> dict[str, Any]:
        return self.jws.payload_json()

    def require_account(self) -> Account:
        if self.account is None:
            raise AcmeProblem("malformed", "This request must be signed with an account kid")
        return self.account


def request_url(request: web.Request) -> str:
    """The URL the client addressed, as it must appear in the JWS ``url`` header."""
    return request.app[SETTINGS].server.https_url.rstrip("/") + request.raw_path


async def authenticate(request: web.Request, *, use_jwk: bool = False) -> SignedRequest:
    """Verify an ACME POST.

    :param use_jwk: the endpoint takes a ``jwk`` (newAccount, revokeCert) as well as a ``kid``.
    :raises AcmeProblem: malformed, badSignatureAlgorithm, badPublicKey,
        accountDoesNotExist, unauthorized or badNonce.
    """
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != JOSE_CONTENT_TYPE:
        raise AcmeProblem("malformed", f"Content-Type must be {JOSE_CONTENT_TYPE}", status=415)
    body = await request.read()
    parsed = parse_jws(body)
    header = parsed.header
    if header.url != request_url(request):
        raise AcmeProblem("unauthorized", "The JWS url header differs from the request URL")
    tenant = tenant_of(request)
    account: Account | None = None
    fresh: bool | None = None
    if header.kid is not None:
        urls = AcmeUrls(request.app[SETTINGS].server.https_url, tenant.slug)
        account_id = urls.account_id_from_kid(header.kid)
        if account_id and isinstance(tenant.nonces, AccountNonceService):
            # One round trip to a shared store; the nonce is spent before the
            # signature is checked, so a forged request there burns its nonce.
            account, fresh = await tenant.nonces.redeem_for_account(header.nonce or "", account_id)
        elif account_id:
            account = await tenant.store.get_account(account_id)
        if account is None:
            raise AcmeProblem("accountDoesNotExist", "No account exists for this kid")
        jwk = account_key(account)
    elif use_jwk:
        jwk = load_jwk(header.jwk)
    else:
        raise AcmeProblem("malformed", "This request must be signed with an account kid")
    verify_signature(parsed, jwk)
    if fresh is None:
        fresh = header.nonce is not None and await tenant.nonces.redeem(header.nonce)
    if not fresh:
        raise AcmeProblem("badNonce", "The nonce is stale, reused or missing")
    if account is not None:
        if account.status != AccountStatus.VALID:
            raise AcmeProblem("unauthorized", f"The account is {account.status}")
        event_of(request)["account"] = account.id
    return SignedRequest(parsed, jwk, account)
