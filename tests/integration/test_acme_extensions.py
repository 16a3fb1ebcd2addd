"""ACME beyond RFC 8555: profiles, renewal information (RFC 9773) and IP identifiers (RFC 8738)."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
import josepy as jose
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from acme_mt.authority.renewal import cert_id
from tests.support.acme import AcmeTestClient
from tests.support.flow import authorize_http01, issue, random_name, wait_status
from tests.support.live import Http01Responder, LiveServer

ERR = "urn:ietf:params:acme:error:"
POLICY = """
require_eab = false
default_profile = "standard"

[profiles.standard]
description = "TLS server, 30 days"
validity_days = 30

[profiles.short]
validity_days = 2
extended_key_usages = ["clientAuth"]
allow_ip = true
"""


@pytest.fixture(scope="module")
def profiled(live_server: LiveServer) -> str:
    live_server.create_tenant("ext-profiles", POLICY)
    return "ext-profiles"


async def new_client(
    live_server: LiveServer, session: aiohttp.ClientSession, slug: str
) -> AcmeTestClient:
    client = AcmeTestClient(session, live_server.directory_url(slug), live_server.ssl_context())
    await client.load_directory()
    await client.new_account()
    return client


def leaf_of(chain: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(chain.encode())[0]


async def test_directory_lists_profiles_and_renewal_info(
    live_server: LiveServer, http_session: aiohttp.ClientSession, profiled: str
) -> None:
    client = await new_client(live_server, http_session, profiled)
    assert client.directory["meta"]["profiles"] == {
        "standard": "TLS server, 30 days",
        "short": "2-day certificates",
    }
    assert client.directory["renewalInfo"].endswith(f"/{profiled}/acme/renewal-info")


async def test_profile_sets_validity_and_key_usage(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    profiled: str,
) -> None:
    client = await new_client(live_server, http_session, profiled)
    name = random_name()
    reply = await client.post(
        client.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": name}], "profile": "short"},
    )
    assert reply.json()["profile"] == "short"
    order = reply.json()
    await authorize_http01(client, http01_responder, order["authorizations"][0])
    from tests.support.acme import make_csr

    csr, _ = make_csr([name])
    await client.post(order["finalize"], {"csr": jose.b64encode(csr).decode()})
    done = await wait_status(client, reply.location, {"valid"})
    leaf = leaf_of((await client.post(done["certificate"])).body.decode())
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days <= 2
    ekus = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(ekus) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # Without a profile, the tenant's default applies.
    _o, _u, chain = await issue(client, http01_responder, [random_name()])
    default_leaf = leaf_of(chain)
    assert (default_leaf.not_valid_after_utc - default_leaf.not_valid_before_utc).days == 30


async def test_unknown_profile_is_invalid_profile(
    live_server: LiveServer, http_session: aiohttp.ClientSession, profiled: str
) -> None:
    client = await new_client(live_server, http_session, profiled)
    reply = await client.post(
        client.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": random_name()}], "profile": "nope"},
    )
    assert reply.status == 400
    body = reply.json()
    assert body["type"] == ERR + "invalidProfile"
    assert "standard" in body["detail"] and "short" in body["detail"]


async def test_ip_identifier_only_where_profile_allows(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
    profiled: str,
) -> None:
    client = await new_client(live_server, http_session, profiled)
    refused = await client.post(
        client.directory["newOrder"], {"identifiers": [{"type": "ip", "value": "127.0.0.1"}]}
    )
    assert refused.status == 400
    assert refused.json()["type"] == ERR + "rejectedIdentifier"
    assert "allow" in refused.json()["detail"]
    reply = await client.post(
        client.directory["newOrder"],
        {"identifiers": [{"type": "ip", "value": "127.0.0.1"}], "profile": "short"},
    )
    assert reply.status == 201, reply.body
    order = reply.json()
    authz = (await client.post(order["authorizations"][0])).json()
    assert authz["identifier"] == {"type": "ip", "value": "127.0.0.1"}
    assert sorted(c["type"] for c in authz["challenges"]) == ["http-01", "tls-alpn-01"]
    await authorize_http01(client, http01_responder, order["authorizations"][0])
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    der = csr.public_bytes(serialization.Encoding.DER)
    final = await client.post(order["finalize"], {"csr": jose.b64encode(der).decode()})
    assert final.status == 200, final.body
    leaf = leaf_of((await client.post(final.json()["certificate"])).body.decode())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


async def test_ip_in_dns_identifier_is_rejected(
    live_server: LiveServer, http_session: aiohttp.ClientSession, profiled: str
) -> None:
    client = await new_client(live_server, http_session, profiled)
    reply = await client.post(
        client.directory["newOrder"],
        {"identifiers": [{"type": "dns", "value": "127.0.0.1"}], "profile": "short"},
    )
    assert reply.json()["type"] == ERR + "rejectedIdentifier"


async def test_renewal_info_window_replaces_and_advance(
    live_server: LiveServer,
    http_session: aiohttp.ClientSession,
    http01_responder: Http01Responder,
) -> None:
    live_server.create_tenant("ext-ari", "require_eab = false\n")
    client = await new_client(live_server, http_session, "ext-ari")
    name = random_name()
    _order, _url, chain = await issue(client, http01_responder, [name])
    leaf = leaf_of(chain)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier
    ident = cert_id(aki.key_identifier, leaf.serial_number)
    url = f"{client.directory['renewalInfo']}/{ident}"
    async with http_session.get(url, ssl=client.ssl_context) as resp:
        assert resp.status == 200
        assert int(resp.headers["Retry-After"]) > 0
        window = (await resp.json())["suggestedWindow"]
    start = datetime.fromisoformat(window["start"].replace("Z", "+00:00"))
    assert start > datetime.now(UTC)
    # Pull the window forward for the whole tenant.
    live_server.cli("ari", "advance", "ext-ari")
    moved = None
    for _ in range(60):
        async with http_session.get(url, ssl=client.ssl_context) as resp:
            moved = (await resp.json())["suggestedWindow"]
        if datetime.fromisoformat(moved["end"].replace("Z", "+00:00")) < datetime.now(UTC):
            break
        import asyncio

        await asyncio.sleep(0.25)
    assert moved and datetime.fromisoformat(moved["end"].replace("Z", "+00:00")) < datetime.now(UTC)
    # replaces: once, by the owning account.
    payload = {"identifiers": [{"type": "dns", "value": name}], "replaces": ident}
    first = await client.post(client.directory["newOrder"], payload)
    assert first.status == 201, first.body
    assert first.json()["replaces"] == ident
    second = await client.post(client.directory["newOrder"], payload)
    assert second.status == 409
    assert second.json()["type"] == ERR + "alreadyReplaced"


@pytest.mark.parametrize("bad", ["nodot", "a.b.c", "!!.AQ", "AQ.gA", "AQ==.AQ"])
async def test_malformed_cert_ids(
    live_server: LiveServer, http_session: aiohttp.ClientSession, bad: str
) -> None:
    url = f"{live_server.https_url}/default/acme/renewal-info/{bad}"
    async with http_session.get(url, ssl=live_server.ssl_context()) as resp:
        assert resp.status in (400, 404)
        body = await resp.json(content_type=None)
        assert body["type"] == ERR + "malformed"


async def test_renewal_info_of_other_tenant_is_not_found(
    live_server: LiveServer, http_session: aiohttp.ClientSession, http01_responder: Http01Responder
) -> None:
    client = await new_client(live_server, http_session, "default")
    _o, _u, chain = await issue(client, http01_responder, [random_name()])
    leaf = leaf_of(chain)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ident = cert_id(aki.key_identifier, leaf.serial_number)
    live_server.create_tenant("ext-other", "require_eab = false\n")
    url = f"{live_server.https_url}/ext-other/acme/renewal-info/{ident}"
    async with http_session.get(url, ssl=live_server.ssl_context()) as resp:
        assert resp.status == 404
