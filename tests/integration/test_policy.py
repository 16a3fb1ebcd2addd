"""Tenant policy at newOrder and finalize: the error names the rule that failed."""

from __future__ import annotations

import aiohttp
import josepy as jose
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.acme import AcmeTestClient, make_csr
from tests.support.flow import authorize_http01, random_name
from tests.support.live import Http01Responder, LiveServer

POLICY = """
require_eab = false
allowed_suffixes = ["corp.test"]
key_types = ["ec-p256"]
max_validity_days = 30
"""


@pytest.fixture(scope="module")
def strict_tenant(live_server: LiveServer) -> str:
    live_server.create_tenant("policy-strict", POLICY)
    return "policy-strict"


async def test_identifier_outside_allowed_suffixes_is_rejected(
    live_server: LiveServer, http_session: aiohttp.ClientSession, strict_tenant: str
) -> None:
    client = AcmeTestClient(
        http_session, live_server.directory_url(strict_tenant), live_server.ssl_context()
    )
    await client.load_directory()
    await client.new_account()
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": "www.other.test"}]}
    )
    assert reply.status == 400
    body = reply.json()
    assert body["type"] == "urn:ietf:params:acme:error:rejectedIdentifier"
    assert "allowed_suffixes" in body["detail"]


async def test_disallowed_key_type_fails_finalize_naming_key_types(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    strict_tenant: str,
) -> None:
    client = AcmeTestClient(
        http_session, live_server.directory_url(strict_tenant), live_server.ssl_context()
    )
    await client.load_directory()
    await client.new_account()
    name = random_name("corp.test")
    reply = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "dns", "value": name}]}
    )
    order = reply.json()
    await authorize_http01(client, http01_responder, order["authorizations"][0])
    csr, _ = make_csr([name], key=rsa.generate_private_key(65537, 2048))
    bad = await client.post(order["finalize"], {"csr": jose.b64encode(csr).decode()})
    assert bad.status == 400
    assert bad.json()["type"] == "urn:ietf:params:acme:error:badCSR"
    assert "key_types" in bad.json()["detail"]
    good, _ = make_csr([name])
    ok = await client.post(order["finalize"], {"csr": jose.b64encode(good).decode()})
    assert ok.status == 200 and ok.json()["status"] == "valid"
    chain = (await client.post(ok.json()["certificate"])).body
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(chain)[0]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime.days <= 30


def test_unknown_policy_field_is_refused_by_name(live_server: LiveServer) -> None:
    path = live_server.data_dir / "bad-policy.toml"
    path.write_text("max_validity = 10\n")
    result = live_server.cli("tenant", "create", "policy-bad", "--policy", str(path), check=False)
    assert result.returncode != 0
    assert "max_validity" in result.stderr
    assert live_server.cli("tenant", "show", "policy-bad", check=False).returncode != 0
