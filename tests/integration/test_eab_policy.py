"""EAB keys that carry policy: suffixes, profiles, expiry, reuse and revocation."""

from __future__ import annotations

import aiohttp
import josepy as jose
import pytest

from tests.support.acme import AcmeTestClient
from tests.support.flow import random_name
from tests.support.live import LiveServer

ERR = "urn:ietf:params:acme:error:"
TENANT = "eab-policy"


@pytest.fixture(scope="module")
def tenant(live_server: LiveServer) -> str:
    live_server.create_tenant(
        TENANT,
        "[profiles.standard]\nvalidity_days = 30\n[profiles.short]\nvalidity_days = 2\n".replace(
            "[profiles", 'default_profile = "standard"\n[profiles', 1
        ),
    )
    return TENANT


def eab(live_server: LiveServer, *flags: str) -> tuple[str, bytes]:
    body = live_server.cli_json("eab", "create", TENANT, *flags)
    return body["kid"], jose.b64decode(body["hmac_key"])


async def fresh(live_server: LiveServer, session: aiohttp.ClientSession) -> AcmeTestClient:
    client = AcmeTestClient(session, live_server.directory_url(TENANT), live_server.ssl_context())
    await client.load_directory()
    return client


async def order(client: AcmeTestClient, name: str, profile: str | None = None) -> dict[str, object]:
    payload: dict[str, object] = {"identifiers": [{"type": "dns", "value": name}]}
    if profile:
        payload["profile"] = profile
    reply = await client.post(client.directory["newOrder"], payload)
    return {**reply.json(), "http": reply.status}


async def test_suffix_limited_key_orders_only_under_suffix(
    live_server: LiveServer, http_session: aiohttp.ClientSession, tenant: str
) -> None:
    client = await fresh(live_server, http_session)
    assert (await client.new_account(eab=eab(live_server, "--suffix", "example.com"))).status == 201
    refused = await order(client, "www.example.org")
    assert refused["http"] == 400
    assert refused["type"] == ERR + "rejectedIdentifier"
    assert "example.com" in str(refused["detail"])
    assert (await order(client, "www.example.com"))["http"] == 201


async def test_profile_limited_key(
    live_server: LiveServer, http_session: aiohttp.ClientSession, tenant: str
) -> None:
    client = await fresh(live_server, http_session)
    await client.new_account(eab=eab(live_server, "--profile", "short"))
    refused = await order(client, random_name(), "standard")
    assert refused["type"] == ERR + "invalidProfile"
    assert (await order(client, random_name(), "short"))["http"] == 201


async def test_expired_key_cannot_bind(
    live_server: LiveServer, http_session: aiohttp.ClientSession, tenant: str
) -> None:
    client = await fresh(live_server, http_session)
    reply = await client.new_account(eab=eab(live_server, "--expires-in-days", "0"))
    assert reply.status == 403
    assert reply.json()["type"] == ERR + "unauthorized"


async def test_reusable_key_binds_up_to_its_limit(
    live_server: LiveServer, http_session: aiohttp.ClientSession, tenant: str
) -> None:
    key = eab(live_server, "--max-accounts", "2")
    statuses = []
    for _ in range(3):
        client = await fresh(live_server, http_session)
        statuses.append((await client.new_account(eab=key)).status)
    assert statuses == [201, 201, 403]


async def test_revoked_key_stops_new_accounts_but_not_existing(
    live_server: LiveServer, http_session: aiohttp.ClientSession, tenant: str
) -> None:
    key = eab(live_server, "--max-accounts", "5")
    bound = await fresh(live_server, http_session)
    assert (await bound.new_account(eab=key)).status == 201
    live_server.cli("eab", "revoke", TENANT, key[0])
    listed = live_server.cli_json("eab", "list", TENANT)["keys"]
    assert next(k for k in listed if k["kid"] == key[0])["revoked"] is True
    late = await fresh(live_server, http_session)
    assert (await late.new_account(eab=key)).status == 403
    assert (await order(bound, random_name()))["http"] == 201


def test_eab_create_refuses_unknown_profile(live_server: LiveServer, tenant: str) -> None:
    result = live_server.cli("eab", "create", TENANT, "--profile", "nope", check=False)
    assert result.returncode != 0
    assert "nope" in result.stderr
