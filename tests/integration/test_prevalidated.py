"""Verified tenant domains and pre-validated EAB accounts."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import josepy as jose
import pytest

from tests.support.acme import AcmeTestClient, make_csr
from tests.support.flow import random_name
from tests.support.live import LiveServer

TENANT = "prevalid"


@pytest.fixture(scope="module")
def verified_domain(live_server: LiveServer, dns_records: Path) -> str:
    live_server.create_tenant(TENANT)
    domain = random_name("verified.test")
    first = live_server.cli("domain", "verify", TENANT, domain, "--json", check=False)
    assert first.returncode == 3
    asked = json.loads(first.stdout)
    assert asked["record"] == f"_acme-mt-verify.{domain}" and asked["verified"] is None
    (dns_records / f"{asked['record']}.txt").write_text(asked["value"] + "\n")
    second = live_server.cli("domain", "verify", TENANT, domain, "--json", check=False)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["verified"]
    return domain


async def account(
    live_server: LiveServer, session: aiohttp.ClientSession, *flags: str
) -> AcmeTestClient:
    body = live_server.cli_json("eab", "create", TENANT, *flags)
    client = AcmeTestClient(session, live_server.directory_url(TENANT), live_server.ssl_context())
    await client.load_directory()
    reply = await client.new_account(eab=(body["kid"], jose.b64decode(body["hmac_key"])))
    assert reply.status == 201
    return client


async def test_prevalidated_account_skips_challenges_under_verified_domain(
    live_server: LiveServer, http_session: aiohttp.ClientSession, verified_domain: str
) -> None:
    client = await account(live_server, http_session, "--pre-validated")
    name = f"www.{verified_domain}"
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
    )
    order = reply.json()
    assert order["status"] == "ready"
    authz = (await client.post(order["authorizations"][0])).json()
    assert authz["status"] == "valid"
    (challenge,) = authz["challenges"]
    assert challenge["type"] == "verified-domain"
    assert challenge["status"] == "valid" and challenge["validated"]
    csr, _ = make_csr([name])
    done = await client.post(order["finalize"], {"csr": jose.b64encode(csr).decode()})
    assert done.json()["status"] == "valid"
    audit = live_server.cli("audit", "verify", TENANT)
    assert "intact" in audit.stdout


async def test_prevalidated_account_outside_verified_domain_gets_challenges(
    live_server: LiveServer, http_session: aiohttp.ClientSession, verified_domain: str
) -> None:
    client = await account(live_server, http_session, "--pre-validated")
    reply = await client.post(
        client.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": random_name("elsewhere.test")}]},
    )
    assert reply.json()["status"] == "pending"


async def test_ordinary_account_gets_challenges_under_verified_domain(
    live_server: LiveServer, http_session: aiohttp.ClientSession, verified_domain: str
) -> None:
    client = await account(live_server, http_session)
    reply = await client.post(
        client.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": f"api.{verified_domain}"}]},
    )
    assert reply.json()["status"] == "pending"


async def test_caa_still_applies_to_prevalidated_names(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    verified_domain: str,
    dns_records: Path,
) -> None:
    client = await account(live_server, http_session, "--pre-validated")
    name = f"caa-blocked.{verified_domain}"
    path = dns_records / "caa.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current[name] = [[0, "issue", "someone-else.example"]]
    path.write_text(json.dumps(current))
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
    )
    assert reply.json()["status"] == "pending"
