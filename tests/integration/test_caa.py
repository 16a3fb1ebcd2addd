"""CAA (RFC 8659) and its account and method parameters (RFC 8657), through a test DNS server."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.support.acme import AcmeTestClient
from tests.support.flow import dns01_value, random_name, wait_status
from tests.support.live import Http01Responder, LiveServer

ERR = "urn:ietf:params:acme:error:"
IDENTITY = "ca.caa-tenant.test"


@pytest.fixture(scope="module")
def caa_tenant(live_server: LiveServer) -> str:
    live_server.create_tenant(
        "caa-tenant", f'require_eab = false\ncaa_identities = ["{IDENTITY}"]\n'
    )
    return "caa-tenant"


def publish_caa(records: Path, name: str, entries: list[list[object]]) -> None:
    path = records / "caa.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current[name] = entries
    path.write_text(json.dumps(current))


async def attempt(
    client: AcmeTestClient,
    responder: Http01Responder,
    records: Path,
    name: str,
    method: str = "http-01",
) -> dict[str, object]:
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
    )
    authz_url = reply.json()["authorizations"][0]
    authz = (await client.post(authz_url)).json()
    challenge = next(c for c in authz["challenges"] if c["type"] == method)
    from acme_mt.jws import thumbprint

    if method == "http-01":
        responder.tokens[challenge["token"]] = f"{challenge['token']}.{thumbprint(client.key)}"
    else:
        (records / f"_acme-challenge.{name}.txt").write_text(
            dns01_value(client, challenge["token"])
        )
    await client.post(challenge["url"], {})
    final: dict[str, object] = await wait_status(client, authz_url, {"valid", "invalid"})
    return final


def caa_error(authz: dict[str, object]) -> dict[str, object] | None:
    for challenge in authz["challenges"]:  # type: ignore[attr-defined]
        if challenge.get("error"):
            return challenge["error"]  # type: ignore[no-any-return]
    return None


async def new_client(
    live_server: LiveServer, session: aiohttp.ClientSession, slug: str
) -> AcmeTestClient:
    client = AcmeTestClient(session, live_server.directory_url(slug), live_server.ssl_context())
    await client.load_directory()
    await client.new_account()
    return client


async def test_caa_for_another_ca_forbids(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    dns_records: Path,
    caa_tenant: str,
) -> None:
    client = await new_client(live_server, http_session, caa_tenant)
    name = random_name("caa.test")
    publish_caa(dns_records, name, [[0, "issue", "other-ca.example"]])
    authz = await attempt(client, http01_responder, dns_records, name)
    assert authz["status"] == "invalid"
    error = caa_error(authz)
    assert error and error["type"] == ERR + "caa"
    assert IDENTITY in str(error["detail"])


async def test_caa_on_parent_naming_this_tenant_allows(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    dns_records: Path,
    caa_tenant: str,
) -> None:
    client = await new_client(live_server, http_session, caa_tenant)
    parent = random_name("caa.test")
    publish_caa(dns_records, parent, [[0, "issue", "other-ca.example"], [0, "issue", IDENTITY]])
    authz = await attempt(client, http01_responder, dns_records, f"www.{parent}")
    assert authz["status"] == "valid", authz


async def test_caa_accounturi_of_another_account_forbids(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    dns_records: Path,
    caa_tenant: str,
) -> None:
    client = await new_client(live_server, http_session, caa_tenant)
    other = await new_client(live_server, http_session, caa_tenant)
    name = random_name("caa.test")
    publish_caa(dns_records, name, [[0, "issue", f"{IDENTITY}; accounturi={other.kid}"]])
    authz = await attempt(client, http01_responder, dns_records, name)
    assert authz["status"] == "invalid"
    assert "accounturi" in str(caa_error(authz))
    allowed = await attempt(other, http01_responder, dns_records, name)
    assert allowed["status"] == "valid"


async def test_caa_validationmethods_allows_only_dns01(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    dns_records: Path,
    caa_tenant: str,
) -> None:
    client = await new_client(live_server, http_session, caa_tenant)
    name = random_name("caa.test")
    publish_caa(dns_records, name, [[0, "issue", f"{IDENTITY}; validationmethods=dns-01"]])
    refused = await attempt(client, http01_responder, dns_records, name, "http-01")
    assert refused["status"] == "invalid"
    assert "validationmethods" in str(caa_error(refused))
    allowed = await attempt(client, http01_responder, dns_records, name, "dns-01")
    assert allowed["status"] == "valid", allowed
