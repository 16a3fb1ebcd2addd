"""Bad input on ACME endpoints gets a 4xx problem document of the RFC's type,
never a 500, never a stack trace, never a half-written record."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import josepy as jose
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.acme import AcmeTestClient, make_csr
from tests.support.flow import authorize_http01, random_name
from tests.support.live import Http01Responder, LiveServer

ERR = "urn:ietf:params:acme:error:"


async def account_client(live_server: LiveServer, session: aiohttp.ClientSession) -> AcmeTestClient:
    client = AcmeTestClient(
        session, live_server.directory_url("default"), live_server.ssl_context()
    )
    await client.load_directory()
    await client.new_account()
    return client


def assert_problem(reply: Any, status: int, kind: str) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = reply.json()
    assert body["type"] == ERR + kind, body
    assert body["status"] == status
    assert "Traceback" not in body["detail"]
    return body


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"not json", "malformed"),
        (b"[]", "malformed"),
        (b'{"protected": "x", "payload": "", "signature": ""}', "malformed"),
        (b'{"signatures": []}', "malformed"),
        (b"{}", "malformed"),
    ],
)
async def test_malformed_jws_bodies(
    live_server: LiveServer, http_session: aiohttp.ClientSession, body: bytes, kind: str
) -> None:
    client = await account_client(live_server, http_session)
    reply = await client.post_raw(client.directory["newOrder"], body)
    assert_problem(reply, 400, kind)


async def test_wrong_content_type_is_415(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await account_client(live_server, http_session)
    body = client.sign(client.directory["newOrder"], {}, await client.nonce())
    reply = await client.post_raw(
        client.directory["newOrder"], json.dumps(body).encode(), "application/json"
    )
    assert_problem(reply, 415, "malformed")


async def test_url_header_must_match_request(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await account_client(live_server, http_session)
    body = client.sign(client.directory["newAuthz"], {}, await client.nonce())
    reply = await client.post_raw(client.directory["newOrder"], json.dumps(body).encode())
    assert_problem(reply, 403, "unauthorized")


async def test_mac_algorithm_is_bad_signature_algorithm(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await account_client(live_server, http_session)
    url = client.directory["newOrder"]
    from tests.support.acme import AcmeJWS

    signed = AcmeJWS.sign(
        b"{}",
        key=jose.JWKOct(key=b"k" * 32),
        alg=jose.HS256,
        include_jwk=False,
        kid=client.kid,
        url=url,
        nonce=await client.nonce(),
        protect=frozenset({"alg", "kid", "url", "nonce"}),
    )
    reply = await client.post_raw(url, json.dumps(signed.to_partial_json()).encode())
    body = assert_problem(reply, 400, "badSignatureAlgorithm")
    assert "ES256" in body["detail"]


async def test_missing_and_reused_nonce_are_bad_nonce(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await account_client(live_server, http_session)
    url = client.directory["newOrder"]
    no_nonce = client.sign(url, {}, None)
    assert_problem(await client.post_raw(url, json.dumps(no_nonce).encode()), 400, "badNonce")
    nonce = await client.nonce()
    payload = {"identifiers": [{"type": "dns", "value": random_name()}]}
    first = client.sign(url, payload, nonce)
    assert (await client.post_raw(url, json.dumps(first).encode())).status == 201
    again = await client.post_raw(url, json.dumps(client.sign(url, payload, nonce)).encode())
    body = assert_problem(again, 400, "badNonce")
    assert again.headers["Replay-Nonce"]
    assert body["detail"]


async def test_bad_signature_is_malformed_and_burns_no_nonce(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await account_client(live_server, http_session)
    url = client.directory["newOrder"]
    nonce = await client.nonce()
    body = client.sign(url, {}, nonce)
    body["signature"] = jose.b64encode(b"\x00" * 64).decode()
    assert_problem(await client.post_raw(url, json.dumps(body).encode()), 400, "malformed")
    good = client.sign(url, {"identifiers": [{"type": "dns", "value": random_name()}]}, nonce)
    assert (await client.post_raw(url, json.dumps(good).encode())).status == 201


async def test_weak_rsa_account_key_is_bad_public_key(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    weak = jose.JWKRSA(key=rsa.generate_private_key(65537, 1024))
    client = AcmeTestClient(
        http_session, live_server.directory_url("default"), live_server.ssl_context(), key=weak
    )
    await client.load_directory()
    assert_problem(await client.new_account(), 400, "badPublicKey")


async def test_oversized_body_is_413(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await account_client(live_server, http_session)
    reply = await client.post_raw(client.directory["newOrder"], b"{" + b" " * 200_000 + b"}")
    assert_problem(reply, 413, "malformed")


@pytest.mark.parametrize(
    ("identifiers", "status", "kind"),
    [
        ([], 400, "malformed"),
        ("example.test", 400, "malformed"),
        ([{"type": "email", "value": "a@example.test"}], 400, "unsupportedIdentifier"),
        ([{"type": "dns", "value": "192.0.2.1"}], 400, "rejectedIdentifier"),
        ([{"type": "dns", "value": "bad_label.example.test"}], 400, "rejectedIdentifier"),
        ([{"type": "dns", "value": "a.*.example.test"}], 400, "rejectedIdentifier"),
        ([{"type": "dns"}], 400, "malformed"),
        (
            [{"type": "dns", "value": f"h{i}.example.test"} for i in range(101)],
            400,
            "rejectedIdentifier",
        ),
    ],
)
async def test_bad_identifiers(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    identifiers: Any,
    status: int,
    kind: str,
) -> None:
    client = await account_client(live_server, http_session)
    reply = await client.post(client.directory["newOrder"], {"identifiers": identifiers})
    assert_problem(reply, status, kind)


async def test_several_bad_identifiers_give_subproblems(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await account_client(live_server, http_session)
    identifiers = [
        {"type": "dns", "value": "192.0.2.1"},
        {"type": "dns", "value": "ok.example.test"},
        {"type": "email", "value": "a@example.test"},
    ]
    reply = await client.post(client.directory["newOrder"], {"identifiers": identifiers})
    body = assert_problem(reply, 400, "rejectedIdentifier")
    assert [s["identifier"] for s in body["subproblems"]] == [identifiers[0], identifiers[2]]
    assert [s["type"] for s in body["subproblems"]] == [
        ERR + "rejectedIdentifier",
        ERR + "unsupportedIdentifier",
    ]


@pytest.mark.parametrize(
    "csr",
    ["!!!", jose.b64encode(b"garbage").decode(), 42],
)
async def test_bad_csr(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    csr: Any,
) -> None:
    client = await account_client(live_server, http_session)
    name = random_name()
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
    )
    order = reply.json()
    await authorize_http01(client, http01_responder, order["authorizations"][0])
    bad = await client.post(order["finalize"], {"csr": csr})
    assert bad.status == 400
    assert bad.json()["type"] in (ERR + "badCSR", ERR + "malformed")
    assert (await client.post(reply.location)).json()["status"] == "ready"


async def test_csr_with_broken_signature(
    live_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    client = await account_client(live_server, http_session)
    name = random_name()
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
    )
    order = reply.json()
    await authorize_http01(client, http01_responder, order["authorizations"][0])
    der, _ = make_csr([name])
    broken = der[:-4] + bytes(b ^ 0xFF for b in der[-4:])
    bad = await client.post(order["finalize"], {"csr": jose.b64encode(broken).decode()})
    assert_problem(bad, 400, "badCSR")


async def test_payload_must_be_an_object(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await account_client(live_server, http_session)
    reply = await client.post(client.directory["newOrder"], ["x"])
    assert_problem(reply, 400, "malformed")


async def test_get_on_post_endpoint_is_405_problem(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await account_client(live_server, http_session)
    async with http_session.get(client.directory["newOrder"], ssl=client.ssl_context) as resp:
        assert resp.status == 405
        assert (await resp.json(content_type=None))["type"] == ERR + "malformed"


async def test_bad_not_after_names_the_policy_rule(
    live_server: LiveServer, http_session: aiohttp.ClientSession
) -> None:
    client = await account_client(live_server, http_session)
    reply = await client.post(
        client.directory["newOrder"],
        {
            "identifiers": [{"type": "dns", "value": random_name()}],
            "notAfter": "2099-01-01T00:00:00Z",
        },
    )
    body = assert_problem(reply, 400, "malformed")
    assert "max_validity_days" in body["detail"]
