"""Driving a whole ACME issuance with the test client, step by step."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import Any

import josepy as jose

from acme_mt.jws import thumbprint
from tests.support.acme import AcmeTestClient, make_csr
from tests.support.live import Http01Responder


def random_name(suffix: str = "example.test") -> str:
    return f"h{secrets.token_hex(5)}.{suffix}"


async def wait_status(client: AcmeTestClient, url: str, wanted: set[str], tries: int = 50) -> Any:
    body: Any = None
    for _ in range(tries):
        reply = await client.post(url)
        body = reply.json()
        if body["status"] in wanted:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} stayed {body['status'] if body else None}")


async def authorize_http01(
    client: AcmeTestClient, responder: Http01Responder, authz_url: str
) -> None:
    authz = (await client.post(authz_url)).json()
    if authz["status"] == "valid":
        return
    challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
    responder.tokens[challenge["token"]] = f"{challenge['token']}.{thumbprint(client.key)}"
    reply = await client.post(challenge["url"], {})
    assert reply.status == 200, reply.body
    final = await wait_status(client, authz_url, {"valid", "invalid"})
    assert final["status"] == "valid", final


def dns01_value(client: AcmeTestClient, token: str) -> str:
    digest = hashlib.sha256(f"{token}.{thumbprint(client.key)}".encode()).digest()
    return jose.b64encode(digest).decode()


async def issue(
    client: AcmeTestClient, responder: Http01Responder, names: list[str]
) -> tuple[dict[str, Any], str, str]:
    """Order, authorize over http-01, finalize, download: (order, order URL, PEM chain)."""
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": n} for n in names]}
    )
    assert reply.status == 201, reply.body
    order_url = reply.location
    assert order_url
    order = reply.json()
    for authz_url in order["authorizations"]:
        await authorize_http01(client, responder, authz_url)
    csr, _key = make_csr(names)
    reply = await client.post(order["finalize"], {"csr": jose.b64encode(csr).decode()})
    assert reply.status == 200, reply.body
    order = await wait_status(client, order_url, {"valid", "invalid"})
    assert order["status"] == "valid", order
    reply = await client.post(order["certificate"])
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/pem-certificate-chain")
    return order, order_url, reply.body.decode()
