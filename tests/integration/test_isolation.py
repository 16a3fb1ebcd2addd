"""Cross-tenant isolation on every ACME endpoint: tenant A's kids, URLs, nonces,
EAB keys and certificates used at tenant B fail as if they did not exist, and an
unknown tenant answers exactly like one the caller may not see."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import josepy as jose
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support.acme import AcmeTestClient
from tests.support.flow import issue, random_name
from tests.support.live import Http01Responder, LiveServer

NOT_FOUND = {
    "type": "urn:ietf:params:acme:error:malformed",
    "detail": "No such resource",
    "status": 404,
}


@dataclass
class TenantWorld:
    """One tenant with an account that has an order, an authorization and a certificate."""

    slug: str
    client: AcmeTestClient
    order_url: str
    order: dict[str, Any]
    authz_url: str
    challenge_url: str
    certificate_url: str
    certificate_der: bytes


@pytest.fixture(scope="module")
def tenants(live_server: LiveServer) -> tuple[str, str]:
    live_server.create_tenant("iso-alpha", "require_eab = false\n")
    live_server.create_tenant("iso-beta", "require_eab = false\n")
    live_server.create_tenant("iso-hidden", "require_eab = false\n")
    live_server.cli("tenant", "suspend", "iso-hidden")
    return "iso-alpha", "iso-beta"


async def build_world(
    live_server: LiveServer, session: aiohttp.ClientSession, responder: Http01Responder, slug: str
) -> TenantWorld:
    client = AcmeTestClient(session, live_server.directory_url(slug), live_server.ssl_context())
    await client.load_directory()
    assert (await client.new_account()).status == 201
    order, order_url, chain = await issue(client, responder, [random_name()])
    authz_url = order["authorizations"][0]
    authz = (await client.post(authz_url)).json()
    der = x509.load_pem_x509_certificates(chain.encode())[0].public_bytes(Encoding.DER)
    return TenantWorld(
        slug,
        client,
        order_url,
        order,
        authz_url,
        authz["challenges"][0]["url"],
        order["certificate"],
        der,
    )


def at_tenant(url: str, source: str, target: str) -> str:
    """The same path at another tenant."""
    return url.replace(f"/{source}/acme/", f"/{target}/acme/", 1)


async def test_resource_urls_of_a_at_b_are_not_found(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    tenants: tuple[str, str],
) -> None:
    a_slug, b_slug = tenants
    a = await build_world(live_server, http_session, http01_responder, a_slug)
    b = await build_world(live_server, http_session, http01_responder, b_slug)
    urls = {
        "order": a.order_url,
        "finalize": a.order["finalize"],
        "authz": a.authz_url,
        "challenge": a.challenge_url,
        "certificate": a.certificate_url,
        "orders": a.client.kid + "/orders",
    }
    for name, url in urls.items():
        moved = at_tenant(url, a_slug, b_slug)
        reply = await b.client.post(moved, {} if name == "challenge" else None)
        assert reply.status == 404, (name, reply.body)
        assert reply.json() == NOT_FOUND, name
        assert reply.headers["Replay-Nonce"]
    # A's account URL at B, signed by B's account, is not B's account.
    reply = await b.client.post(at_tenant(a.client.kid, a_slug, b_slug))
    assert reply.status in (403, 404)


async def test_kid_of_a_at_b_is_account_does_not_exist(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    tenants: tuple[str, str],
) -> None:
    a_slug, b_slug = tenants
    a = await build_world(live_server, http_session, http01_responder, a_slug)
    b = AcmeTestClient(http_session, live_server.directory_url(b_slug), live_server.ssl_context())
    await b.load_directory()
    # B's endpoints, A's key and kid.
    intruder = AcmeTestClient(
        http_session, b.directory_url, b.ssl_context, key=a.client.key, kid=a.client.kid
    )
    intruder.directory = b.directory
    payloads: dict[str, Any] = {
        "newOrder": {"identifiers": [{"type": "dns", "value": random_name()}]},
        "newAuthz": {"identifier": {"type": "dns", "value": random_name()}},
        "revokeCert": {"certificate": jose.b64encode(a.certificate_der).decode()},
        "keyChange": {},
    }
    for resource, payload in payloads.items():
        reply = await intruder.post(b.directory[resource], payload)
        assert reply.status == 400, (resource, reply.body)
        assert reply.json()["type"] == "urn:ietf:params:acme:error:accountDoesNotExist", resource
    moved_account = at_tenant(a.client.kid, a_slug, b_slug)
    reply = await intruder.post(moved_account)
    assert reply.json()["type"] == "urn:ietf:params:acme:error:accountDoesNotExist"


async def test_certificate_of_a_cannot_be_revoked_at_b(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    tenants: tuple[str, str],
) -> None:
    a_slug, b_slug = tenants
    a = await build_world(live_server, http_session, http01_responder, a_slug)
    b = await build_world(live_server, http_session, http01_responder, b_slug)
    payload = {"certificate": jose.b64encode(a.certificate_der).decode(), "reason": 1}
    reply = await b.client.post(b.client.directory["revokeCert"], payload)
    assert reply.status == 404
    # Still revocable at its own tenant: nothing happened at A.
    assert (await a.client.post(a.client.directory["revokeCert"], payload)).status == 200


async def test_nonce_of_a_is_bad_at_b(
    live_server: LiveServer, http_session: aiohttp.ClientSession, tenants: tuple[str, str]
) -> None:
    a_slug, b_slug = tenants
    a = AcmeTestClient(http_session, live_server.directory_url(a_slug), live_server.ssl_context())
    b = AcmeTestClient(http_session, live_server.directory_url(b_slug), live_server.ssl_context())
    await a.load_directory()
    await b.load_directory()
    nonce = await a.nonce()
    body = b.sign(b.directory["newAccount"], {}, nonce, use_jwk=True)
    reply = await b.post_raw(b.directory["newAccount"], json.dumps(body).encode())
    assert reply.status == 400
    assert reply.json()["type"] == "urn:ietf:params:acme:error:badNonce"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "directory"),
        ("HEAD", "new-nonce"),
        ("GET", "new-nonce"),
        ("POST", "new-account"),
        ("POST", "new-order"),
        ("POST", "order/abc"),
        ("POST", "cert/abc"),
    ],
)
async def test_unknown_and_hidden_tenants_answer_alike(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    tenants: tuple[str, str],
    method: str,
    path: str,
) -> None:
    answers = []
    for slug in ("iso-nobody", "iso-hidden"):
        url = f"{live_server.https_url}/{slug}/acme/{path}"
        async with http_session.request(
            method,
            url,
            data=b"{}",
            headers={"Content-Type": "application/jose+json"},
            ssl=live_server.ssl_context(),
        ) as resp:
            body = await resp.read()
            answers.append(
                (
                    resp.status,
                    resp.headers.get("Content-Type"),
                    body,
                    "Replay-Nonce" in resp.headers,
                )
            )
    assert answers[0] == answers[1]
    assert answers[0][0] == 404


async def test_eab_key_of_a_cannot_bind_at_b(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    live_server.create_tenant("eab-alpha")
    live_server.create_tenant("eab-beta")
    kid, hmac_key = live_server.create_eab("eab-alpha")
    key = jose.b64decode(hmac_key)
    b = AcmeTestClient(
        http_session, live_server.directory_url("eab-beta"), live_server.ssl_context()
    )
    await b.load_directory()
    assert b.directory["meta"]["externalAccountRequired"] is True
    reply = await b.new_account(eab=(kid, key))
    assert reply.status == 403
    assert reply.json()["type"] == "urn:ietf:params:acme:error:unauthorized"
    a = AcmeTestClient(
        http_session, live_server.directory_url("eab-alpha"), live_server.ssl_context()
    )
    await a.load_directory()
    assert (await a.new_account(eab=(kid, key))).status == 201


async def test_eab_required_and_single_use(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    live_server.create_tenant("eab-gamma")
    client = AcmeTestClient(
        http_session, live_server.directory_url("eab-gamma"), live_server.ssl_context()
    )
    await client.load_directory()
    missing = await client.new_account()
    assert missing.status == 400
    assert missing.json()["type"] == "urn:ietf:params:acme:error:externalAccountRequired"
    kid, hmac_key = live_server.create_eab("eab-gamma")
    key = jose.b64decode(hmac_key)
    assert (await client.new_account(eab=(kid, key))).status == 201
    second = AcmeTestClient(http_session, client.directory_url, client.ssl_context)
    second.directory = client.directory
    reused = await second.new_account(eab=(kid, key))
    assert reused.status == 403
    wrong_mac = AcmeTestClient(http_session, client.directory_url, client.ssl_context)
    wrong_mac.directory = client.directory
    kid2, _ = live_server.create_eab("eab-gamma")
    forged = await wrong_mac.new_account(eab=(kid2, b"x" * 32))
    assert forged.status == 403
    # The forged attempt did not consume the key.
    right = await wrong_mac.new_account(eab=(kid2, jose.b64decode(_)))
    assert right.status == 201
