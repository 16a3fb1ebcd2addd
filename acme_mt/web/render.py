"""JSON views of ACME objects (RFC 8555 §7.1.2-7.1.6)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from acme_mt.models import Account, Authorization, Challenge, Order, rfc3339
from acme_mt.urls import AcmeUrls


def json_response(
    body: dict[str, Any],
    *,
    status: int = 200,
    location: str | None = None,
    links: tuple[str, ...] = (),
    retry_after: int | None = None,
) -> web.Response:
    response = web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )
    if location:
        response.headers["Location"] = location
    for link in links:
        response.headers.add("Link", link)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def account_json(urls: AcmeUrls, account: Account) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": account.status,
        "contact": list(account.contact),
        "orders": urls.account_orders(account.id),
        "createdAt": rfc3339(account.created),
    }
    if account.eab_kid:
        body["externalAccountBinding"] = {"kid": account.eab_kid}
    return body


def order_json(urls: AcmeUrls, order: Order) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": order.status,
        "expires": rfc3339(order.expires),
        "identifiers": [i.to_json() for i in order.identifiers],
        "authorizations": [urls.authorization(a) for a in order.authorization_ids],
        "finalize": urls.finalize(order.id),
    }
    if order.not_before:
        body["notBefore"] = rfc3339(order.not_before)
    if order.not_after:
        body["notAfter"] = rfc3339(order.not_after)
    if order.error:
        body["error"] = order.error
    if order.certificate_serial and order.status == "valid":
        body["certificate"] = urls.certificate(order.certificate_serial)
    if order.profile:
        body["profile"] = order.profile
    if order.replaces:
        body["replaces"] = order.replaces
    return body


def challenge_json(urls: AcmeUrls, authorization_id: str, challenge: Challenge) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": challenge.type,
        "url": urls.challenge(authorization_id, challenge.id),
        "token": challenge.token,
        "status": challenge.status,
    }
    if challenge.validated:
        body["validated"] = rfc3339(challenge.validated)
    if challenge.error:
        body["error"] = challenge.error
    return body


def authorization_json(urls: AcmeUrls, authorization: Authorization) -> dict[str, Any]:
    body: dict[str, Any] = {
        "identifier": authorization.identifier.to_json(),
        "status": authorization.status,
        "expires": rfc3339(authorization.expires),
        "challenges": [challenge_json(urls, authorization.id, c) for c in authorization.challenges],
    }
    if authorization.wildcard:
        body["wildcard"] = True
    return body
